//! How a relay signs its requests to the control API (`/v1/relay/…`), and how the API checks
//! them. Every relay has its own key, `chr_{relay}_{secret}`: the secret is
//! HMAC-SHA256(the deployment's relay secret, `charlie-relay-key\n{relay}\n{salt}`), so the
//! API keeps one secret and each relay's salt (its record), and a new salt is a new key.
//!
//! A request carries these headers:
//! - `X-Charlie-Relay`: the relay's id;
//! - `X-Charlie-Timestamp`: Unix seconds; refused more than [`MAX_SKEW_SECONDS`] from the
//!   API's clock;
//! - `X-Charlie-Nonce`: 16 to 64 of `[A-Za-z0-9_-]`, never used twice (the API remembers each
//!   for [`NONCE_TTL_SECONDS`], longer than a timestamp is accepted);
//! - `X-Charlie-Content-SHA256`: the body's SHA-256, hex (of nothing for a GET);
//! - `Authorization: Charlie-HMAC-SHA256 {signature}`: hex HMAC-SHA256 with the relay's
//!   secret of [`string_to_sign`].

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

pub const MAX_SKEW_SECONDS: i64 = 300;
pub const NONCE_TTL_SECONDS: i64 = 900;
pub const SCHEME: &str = "Charlie-HMAC-SHA256";

pub const RELAY_HEADER: &str = "x-charlie-relay";
pub const TIMESTAMP_HEADER: &str = "x-charlie-timestamp";
pub const NONCE_HEADER: &str = "x-charlie-nonce";
pub const CONTENT_HEADER: &str = "x-charlie-content-sha256";

type HmacSha256 = hmac::Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// A relay's secret, from the deployment's relay secret and the relay's salt.
pub fn relay_secret(master: &Secret, relay: &str, salt: &str) -> Vec<u8> {
    hmac(
        master.expose().as_bytes(),
        &[
            b"charlie-relay-key\n",
            relay.as_bytes(),
            b"\n",
            salt.as_bytes(),
        ],
    )
}

/// The key handed to the relay's operator once: `chr_{relay}_{secret as base64url}`.
pub fn relay_key(master: &Secret, relay: &str, salt: &str) -> Secret {
    use base64::Engine;
    let secret = relay_secret(master, relay, salt);
    Secret::new(format!(
        "chr_{relay}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    ))
}

/// The (relay, secret) of a relay key.
pub fn parse_key(key: &str) -> Result<(String, Vec<u8>), String> {
    use base64::Engine;
    let rest = key
        .strip_prefix("chr_")
        .ok_or("a relay key starts with chr_ (made by `charlie relay create`)")?;
    // A relay id has no `_`; the base64url secret may.
    let (relay, secret) = rest
        .split_once('_')
        .ok_or("a relay key is chr_{relay}_{secret}")?;
    if crate::ids::RelayId::parse(relay).is_err() {
        return Err(format!("{relay:?} is not a relay id"));
    }
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(secret)
        .map_err(|_| "the relay key's secret is not base64url".to_owned())?;
    if secret.len() != 32 {
        return Err("the relay key's secret is not 32 bytes".into());
    }
    Ok((relay.to_owned(), secret))
}

/// What is signed: the scheme, the method, the path (with its query, as sent), timestamp,
/// nonce and the body's SHA-256, one per line.
pub fn string_to_sign(
    method: &str,
    path: &str,
    timestamp: i64,
    nonce: &str,
    body_sha256: &str,
) -> String {
    format!(
        "{SCHEME}\n{}\n{path}\n{timestamp}\n{nonce}\n{body_sha256}",
        method.to_ascii_uppercase()
    )
}

pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The headers of a signed request (name, value), `Authorization` last.
pub fn sign(
    relay: &str,
    secret: &[u8],
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
    nonce: &str,
) -> Vec<(&'static str, String)> {
    let sha = body_sha256(body);
    let signature = hex::encode(hmac(
        secret,
        &[string_to_sign(method, path, timestamp, nonce, &sha).as_bytes()],
    ));
    vec![
        (RELAY_HEADER, relay.to_owned()),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (NONCE_HEADER, nonce.to_owned()),
        (CONTENT_HEADER, sha),
        ("authorization", format!("{SCHEME} {signature}")),
    ]
}

/// A fresh nonce: 128 random bits, hex.
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A request's signing headers, as received.
#[derive(Debug, Clone)]
pub struct Presented<'r> {
    pub relay: &'r str,
    pub timestamp: i64,
    pub nonce: &'r str,
    pub body_sha256: &'r str,
    pub signature: &'r str,
}

/// Why a signed request is refused (401): what to fix, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("missing header {0} (relay requests are signed: see docs/relay.md)")]
    Missing(&'static str),
    #[error("header {0} is malformed: {1}")]
    Malformed(&'static str, &'static str),
    #[error(
        "the timestamp is {0} s from the API's clock (at most {MAX_SKEW_SECONDS} s): check the relay machine's clock"
    )]
    Skewed(i64),
    #[error("the body's SHA-256 is not the one in x-charlie-content-sha256")]
    BodyChanged,
    #[error("the signature does not match (wrong key, or the request was changed)")]
    BadSignature,
    #[error("the nonce was used before: a replayed request")]
    Replayed,
    #[error("relay {0:?} was revoked")]
    Revoked(String),
}

/// Reads the signing headers (`header` looks one up by lower-case name).
pub fn presented<'r>(header: impl Fn(&str) -> Option<&'r str>) -> Result<Presented<'r>, Refused> {
    let relay = header(RELAY_HEADER).ok_or(Refused::Missing(RELAY_HEADER))?;
    if crate::ids::RelayId::parse(relay).is_err() {
        return Err(Refused::Malformed(RELAY_HEADER, "not a relay id"));
    }
    let timestamp = header(TIMESTAMP_HEADER)
        .ok_or(Refused::Missing(TIMESTAMP_HEADER))?
        .parse()
        .map_err(|_| Refused::Malformed(TIMESTAMP_HEADER, "Unix seconds"))?;
    let nonce = header(NONCE_HEADER).ok_or(Refused::Missing(NONCE_HEADER))?;
    if !(16..=64).contains(&nonce.len())
        || !nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Refused::Malformed(
            NONCE_HEADER,
            "16 to 64 of A-Z a-z 0-9 - _",
        ));
    }
    let body_sha256 = header(CONTENT_HEADER).ok_or(Refused::Missing(CONTENT_HEADER))?;
    let signature = header("authorization")
        .ok_or(Refused::Missing("authorization"))?
        .strip_prefix(SCHEME)
        .map(str::trim)
        .ok_or(Refused::Malformed(
            "authorization",
            "Charlie-HMAC-SHA256 {signature}",
        ))?;
    Ok(Presented {
        relay,
        timestamp,
        nonce,
        body_sha256,
        signature,
    })
}

/// Checks everything but the nonce's first use (the caller remembers nonces): clock skew, the
/// body's hash, the signature (in constant time).
pub fn verify(
    p: &Presented<'_>,
    secret: &[u8],
    method: &str,
    path: &str,
    body: &[u8],
    now: i64,
) -> Result<(), Refused> {
    // Any i64 can be presented: the skew saturates instead of overflowing.
    let skew = now.saturating_sub(p.timestamp);
    if skew.unsigned_abs() > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(Refused::Skewed(skew));
    }
    if !p.body_sha256.eq_ignore_ascii_case(&body_sha256(body)) {
        return Err(Refused::BodyChanged);
    }
    let signature = hex::decode(p.signature).map_err(|_| Refused::BadSignature)?;
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(string_to_sign(method, path, p.timestamp, p.nonce, p.body_sha256).as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| Refused::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> Secret {
        Secret::new("deployment-relay-secret")
    }

    fn check(headers: &[(&'static str, String)], body: &[u8], now: i64) -> Result<(), Refused> {
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        let p = presented(find)?;
        let secret = relay_secret(&master(), p.relay, "salt-1");
        verify(&p, &secret, "POST", "/v1/relay/uploads", body, now)
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_is_refused() {
        let key = relay_key(&master(), "branch-1", "salt-1");
        let (relay, secret) = parse_key(key.expose()).unwrap();
        assert_eq!(relay, "branch-1");
        let body = br#"{"sha256":"ab"}"#;
        let nonce = new_nonce();
        let headers = sign(
            &relay,
            &secret,
            "POST",
            "/v1/relay/uploads",
            body,
            1_000,
            &nonce,
        );
        assert_eq!(check(&headers, body, 1_000), Ok(()));
        assert_eq!(check(&headers, body, 1_000 + MAX_SKEW_SECONDS), Ok(()));
        assert_eq!(
            check(&headers, body, 1_000 + MAX_SKEW_SECONDS + 1),
            Err(Refused::Skewed(MAX_SKEW_SECONDS + 1))
        );
        assert_eq!(
            check(&headers, br#"{"sha256":"cd"}"#, 1_000),
            Err(Refused::BodyChanged)
        );
        // Another path, or a body hash swapped with the body: the signature breaks.
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        let p = presented(find).unwrap();
        assert_eq!(
            verify(&p, &secret, "POST", "/v1/relay/outbox", body, 1_000),
            Err(Refused::BadSignature)
        );
        let mut forged = headers.clone();
        forged[3].1 = body_sha256(b"other");
        assert_eq!(check(&forged, b"other", 1_000), Err(Refused::BadSignature));
        // Another relay's key (another salt) does not sign for this one.
        let other = relay_secret(&master(), "branch-1", "salt-2");
        let wrong = sign(
            "branch-1",
            &other,
            "POST",
            "/v1/relay/uploads",
            body,
            1_000,
            &nonce,
        );
        assert_eq!(check(&wrong, body, 1_000), Err(Refused::BadSignature));
    }

    #[test]
    fn a_key_whose_secret_holds_underscores_parses() {
        // Salts until the base64url secret has a `_` in it (about one in three does).
        let key = (0..200)
            .map(|n| relay_key(&master(), "branch-1", &n.to_string()))
            .find(|k| k.expose()["chr_branch-1_".len()..].contains('_'))
            .expect("some secret holds a _");
        let (relay, secret) = parse_key(key.expose()).unwrap();
        assert_eq!((relay.as_str(), secret.len()), ("branch-1", 32));
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let secret = relay_secret(&master(), "branch-1", "salt-1");
        let headers = sign("branch-1", &secret, "POST", "/p", b"", 1, "short");
        let err = check(&headers, b"", 1).unwrap_err();
        assert_eq!(
            err,
            Refused::Malformed(NONCE_HEADER, "16 to 64 of A-Z a-z 0-9 - _")
        );
        let none: Vec<(&'static str, String)> = Vec::new();
        assert_eq!(check(&none, b"", 1), Err(Refused::Missing(RELAY_HEADER)));
        assert!(parse_key("chk_0123_abc").is_err());
        assert!(
            parse_key("chr_Branch_abc")
                .unwrap_err()
                .contains("not a relay id")
        );
    }

    /// Found by the relay_auth fuzz target: a timestamp at either end of i64 overflowed the
    /// skew (a panic with overflow checks); it is refused as skewed.
    #[test]
    fn a_timestamp_at_the_end_of_the_range_is_skewed_not_an_overflow() {
        for t in [i64::MIN, i64::MAX] {
            let p = Presented {
                relay: "branch-1",
                timestamp: t,
                nonce: "nnnnnnnnnnnnnnnn",
                body_sha256: "",
                signature: "",
            };
            assert!(matches!(
                verify(&p, b"k", "GET", "/", b"", 1_700_000_000),
                Err(Refused::Skewed(_))
            ));
        }
    }
}
