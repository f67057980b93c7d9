//! Any token at a download link: its claims or a reason, never a panic; a token verifies only
//! as signed (any change to it is refused), and never after it expires.
#![no_main]

use charlie::links::{LinkClaims, sign, verify};
use charlie::secret::Secret;
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Secret::new("k".repeat(32));
    let now = Utc.with_ymd_and_hms(2024, 3, 14, 12, 0, 0).unwrap();
    let token = String::from_utf8_lossy(data);
    let _ = verify(&key, &token, now);
    // The text as a run id in a token signed for real: it verifies, with another key it does
    // not, and a flipped character anywhere breaks it.
    let claims = LinkClaims {
        run_id: token.to_string(),
        workbook_key: "reports/x.xlsx".into(),
        workbook_version: None,
        expires: now.timestamp() + 60,
    };
    let signed = sign(&key, &claims);
    assert_eq!(verify(&key, &signed, now).as_ref(), Ok(&claims));
    assert!(verify(&Secret::new("other"), &signed, now).is_err());
    assert!(verify(&key, &signed, now + chrono::Duration::seconds(61)).is_err());
    if let Some(at) = data.first().map(|b| usize::from(*b) % signed.len()) {
        let mut changed: Vec<u8> = signed.clone().into_bytes();
        changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
        if let Ok(changed) = String::from_utf8(changed) {
            assert!(verify(&key, &changed, now).is_err() || changed == signed);
        }
    }
});
