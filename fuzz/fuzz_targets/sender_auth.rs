//! Any `Authentication-Results` headers and sender: a verdict, never a panic; comments never
//! make a pass, and relay mail trusting no authserv-id never passes.
#![no_main]

use charlie::ports::MessageHeader;
use charlie::sender_auth::{Trust, authserv_id, check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first line is the sender, the rest one header value each.
    let mut lines = text.split('\n');
    let from = lines.next().unwrap_or_default();
    let headers: Vec<MessageHeader> = lines
        .map(|v| MessageHeader {
            name: "Authentication-Results".into(),
            value: v.into(),
        })
        .collect();
    for h in &headers {
        let _ = authserv_id(&h.value);
    }
    let _ = check(&headers, from, Trust::ReceivingServer);
    let trusted = ["mx.branch.example".to_owned()];
    let _ = check(&headers, from, Trust::AuthservIds(&trusted));
    assert!(check(&headers, from, Trust::AuthservIds(&[])).is_err());
    // A result inside a comment is not a result.
    let commented: Vec<MessageHeader> = headers
        .iter()
        .map(|h| MessageHeader {
            name: h.name.clone(),
            value: format!("({})", h.value.replace(['(', ')', '\\', '"'], "")),
        })
        .collect();
    assert!(check(&commented, from, Trust::ReceivingServer).is_err());
});
