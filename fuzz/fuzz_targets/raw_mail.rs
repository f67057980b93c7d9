//! Any bytes as a mail a relay uploaded: parsed or refused with a reason, never a panic; what
//! is parsed is bounded by the input (no attachment larger than the file, no more attachments
//! than bytes), and every unreadable part says why.
#![no_main]

use charlie::raw_mail::parse;
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let uploaded = Utc.with_ymd_and_hms(2024, 3, 14, 12, 0, 0).unwrap();
    match parse(data, uploaded) {
        Ok(mail) => {
            assert!(mail.attachments.len() <= data.len());
            for (info, bytes) in &mail.attachments {
                assert!(bytes.len() <= data.len(), "{}: {} > {}", info.name, bytes.len(), data.len());
                assert!(!info.name.is_empty());
            }
            assert!(mail.unreadable.iter().all(|why| !why.is_empty()));
        }
        Err(why) => assert!(!why.to_string().is_empty()),
    }
});
