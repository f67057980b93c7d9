//! Any text as `reports.toml`: a list of problems or definitions, never a panic; a dataset
//! that parses has a date source and an ASCII delimiter.
#![no_main]

use charlie::definitions::Definitions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(defs) = Definitions::parse(text) {
        for ds in defs.datasets.values() {
            assert!(ds.date_source().is_some());
            assert!(ds.csv.delimiter.is_none_or(|d| d.is_ascii()));
        }
    }
});
