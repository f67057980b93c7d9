//! Any bytes as a Graph notification POST body: parsed or refused, never a panic; a named mail
//! is one path segment of mailbox and a message id.
#![no_main]

use charlie::stages::webhook::{Announced, announced};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(all) = announced(data) {
        for (_, what) in all {
            if let Announced::Mail { mailbox, .. } = what {
                assert!(!mailbox.contains('/'), "{mailbox}");
            }
        }
    }
});
