//! Any dashboard form body, Cookie header, `since` and report period: read or refused with a
//! reason, never a panic; a since that is accepted is neither in the future nor over a month
//! back.
#![no_main]

use charlie::period::Period;
use charlie::stages::api::{cookie_value, form_fields, parse_since};
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fields = form_fields(data);
    assert!(fields.len() <= data.len() + 1);
    let text = String::from_utf8_lossy(data);
    let _ = cookie_value(&text, "charlie_session");
    let now = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
    for line in text.lines().take(4) {
        if let Ok(at) = parse_since(line, now) {
            assert!(at <= now && at >= now - chrono::Duration::days(31), "{line:?}");
        }
        let _ = Period::parse(line);
    }
});
