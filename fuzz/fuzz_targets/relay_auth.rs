//! Any presented signing headers, body and relay key: refused with a reason or accepted,
//! never a panic; nothing but the real signature verifies.
#![no_main]

use charlie::relay_auth::{parse_key, presented, sign, verify};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = [
    "x-charlie-relay",
    "x-charlie-timestamp",
    "x-charlie-nonce",
    "x-charlie-content-sha256",
    "authorization",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_key(&text);
    // Five header values, then the body.
    let mut parts = text.splitn(6, '\n');
    let values: Vec<&str> = (0..5).map(|_| parts.next().unwrap_or_default()).collect();
    let body = parts.next().unwrap_or_default().as_bytes();
    let header = |name: &str| {
        NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| values[i])
            .filter(|v| !v.is_empty())
    };
    let secret = b"a relay's secret";
    let now = 1_700_000_000;
    if let Ok(p) = presented(header) {
        let _ = verify(&p, secret, "POST", "/v1/relay/uploads", body, now);
        // Signed for real with the presented relay, time and nonce, it verifies; the same
        // signature for another body or path does not.
        let signed = sign(p.relay, secret, "POST", "/v1/relay/uploads", body, p.timestamp, p.nonce);
        let find = |name: &str| {
            signed
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if let Ok(real) = presented(find) {
            let fresh = verify(&real, secret, "POST", "/v1/relay/uploads", body, p.timestamp);
            assert!(fresh.is_ok(), "{fresh:?}");
            assert!(verify(&real, secret, "POST", "/v1/relay/other", body, p.timestamp).is_err());
            assert!(verify(&real, b"another secret", "POST", "/v1/relay/uploads", body, p.timestamp).is_err());
        }
    }
});
