//! Download links that last as long as the mail says: `{api}/v1/links/{token}`, where the
//! token names one run's workbook version and its expiry, signed with HMAC-SHA256 under a key
//! kept in Secrets Manager. The API checks the token and redirects to a presigned S3 URL
//! valid for minutes, so the link does not depend on the credentials of whoever made it (a
//! presigned URL dies with the role session that signed it, hours later).
//!
//! Token: `{key id} "." base64url(claims JSON) "." base64url(HMAC-SHA256(key, key id "." claims
//! part))`. Tokens from before key ids (`claims "." signature`) are checked with key `0`.
//!
//! Keys rotate without killing the links already mailed: the secret is either one key (its id
//! is `0`) or a key set, `{"current": "2", "keys": {"1": "…", "2": "…"}}`: links are signed with
//! the current key and accepted under any key of the set, so the old key stays in the set for
//! as long as links live (`CHARLIE_LINK_DAYS`) and is then dropped (docs/operations.md).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::secret::Secret;

/// What a link grants: one version of one run's workbook, until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    #[serde(rename = "run")]
    pub run_id: String,
    #[serde(rename = "key")]
    pub workbook_key: String,
    #[serde(rename = "ver", default, skip_serializing_if = "Option::is_none")]
    pub workbook_version: Option<String>,
    /// Seconds since the epoch.
    #[serde(rename = "exp")]
    pub expires: i64,
}

/// Why a token was refused (each is a 403; the page says which).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this link is not a Charlie download link (it is malformed or cut short)")]
    Malformed,
    #[error("this link's signature does not match: it was altered or not made by Charlie")]
    BadSignature,
    #[error("this link expired on {0}")]
    Expired(String),
}

fn mac(key: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
}

/// The link keys a secret holds: one key (id `0`), or a set with the current one named.
#[derive(Deserialize)]
struct KeySet {
    current: String,
    keys: std::collections::BTreeMap<String, String>,
}

/// A key id: 1 to 16 of A-Z a-z 0-9 - _ (no `.`, which ends it in a token).
fn key_id_ok(id: &str) -> bool {
    (1..=16).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl KeySet {
    fn of(secret: &Secret) -> KeySet {
        let text = secret.expose();
        match serde_json::from_str::<KeySet>(text) {
            Ok(set)
                if set.keys.contains_key(&set.current) && set.keys.keys().all(|k| key_id_ok(k)) =>
            {
                set
            }
            _ => KeySet {
                current: "0".into(),
                keys: [("0".to_owned(), text.to_owned())].into(),
            },
        }
    }
}

/// Whether the secret is a key set whose current key is among its keys (else it is read as one
/// key): for the api's and mailer's start, so a mistyped set is told, not used as a key.
pub fn check_keys(secret: &Secret) -> Result<(), String> {
    let text = secret.expose().trim_start();
    if !text.starts_with('{') {
        return Ok(());
    }
    let set: KeySet = serde_json::from_str(text)
        .map_err(|e| format!("the link key set is not {{\"current\": id, \"keys\": {{id: key}}}} (line {}, column {})", e.line(), e.column()))?;
    if !set.keys.contains_key(&set.current) {
        return Err(format!(
            "the link key set's current key {:?} is not among its keys",
            set.current
        ));
    }
    if let Some(bad) = set.keys.keys().find(|k| !key_id_ok(k)) {
        return Err(format!(
            "link key id {bad:?} is not 1 to 16 of A-Z a-z 0-9 - _"
        ));
    }
    Ok(())
}

/// Signs `claims` into a token with the current key.
pub fn sign(key: &Secret, claims: &LinkClaims) -> String {
    let set = KeySet::of(key);
    let id = &set.current;
    let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let mut m = mac(&set.keys[id]);
    m.update(format!("{id}.{body}").as_bytes());
    let sig = B64.encode(m.finalize().into_bytes());
    format!("{id}.{body}.{sig}")
}

/// Checks a token's signature (in constant time) under the key it names, and its expiry at
/// `now`.
pub fn verify(key: &Secret, token: &str, now: DateTime<Utc>) -> Result<LinkClaims, LinkError> {
    let set = KeySet::of(key);
    let parts: Vec<&str> = token.split('.').collect();
    let (id, signed, body, sig) = match parts.as_slice() {
        [id, body, sig] => (*id, format!("{id}.{body}"), *body, *sig),
        // From before key ids: key 0.
        [body, sig] => ("0", (*body).to_owned(), *body, *sig),
        _ => return Err(LinkError::Malformed),
    };
    let sig = B64.decode(sig).map_err(|_| LinkError::Malformed)?;
    // A key no longer in the set (rotated out) is a bad signature, as an altered token is.
    let secret = set.keys.get(id).ok_or(LinkError::BadSignature)?;
    let mut m = mac(secret);
    m.update(signed.as_bytes());
    m.verify_slice(&sig).map_err(|_| LinkError::BadSignature)?;
    let claims: LinkClaims = B64
        .decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(LinkError::Malformed)?;
    if claims.expires <= now.timestamp() {
        let when = DateTime::from_timestamp(claims.expires, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(|| claims.expires.to_string());
        return Err(LinkError::Expired(when));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires: i64) -> LinkClaims {
        LinkClaims {
            run_id: "r-1".into(),
            workbook_key: "reports/x/2024-03-14/x-2024-03-14.xlsx".into(),
            workbook_version: Some("v7".into()),
            expires,
        }
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let key = Secret::new("k".repeat(32));
        let now = Utc::now();
        let token = sign(&key, &claims(now.timestamp() + 60));
        assert_eq!(verify(&key, &token, now), Ok(claims(now.timestamp() + 60)));
        let later = now + chrono::Duration::seconds(61);
        assert!(matches!(
            verify(&key, &token, later),
            Err(LinkError::Expired(_))
        ));
    }

    #[test]
    fn an_altered_forged_or_cut_link_is_refused() {
        let key = Secret::new("k".repeat(32));
        let now = Utc::now();
        let token = sign(&key, &claims(now.timestamp() + 60));
        // Another run, same signature.
        let (_, sig) = token.split_once('.').unwrap();
        let mut other = claims(now.timestamp() + 60);
        other.run_id = "r-2".into();
        let altered = format!("{}.{sig}", B64.encode(serde_json::to_vec(&other).unwrap()));
        assert_eq!(verify(&key, &altered, now), Err(LinkError::BadSignature));
        // Signed with another key.
        let forged = sign(&Secret::new("x".repeat(32)), &claims(now.timestamp() + 60));
        assert_eq!(verify(&key, &forged, now), Err(LinkError::BadSignature));
        assert_eq!(verify(&key, "no-dot", now), Err(LinkError::Malformed));
        assert!(verify(&key, &token[..token.len() - 3], now).is_err());
    }

    /// Rotation: with the old key kept in the set, links signed before (under key 0 with a
    /// key id, or from before key ids) still verify, new ones are signed with the new key; once
    /// the old key is dropped its links are refused, the new ones not.
    #[test]
    fn a_rotated_key_keeps_old_links_until_it_is_dropped() {
        let now = Utc::now();
        let old = Secret::new("old-key-old-key-old-key-old-key!");
        let before = sign(&old, &claims(now.timestamp() + 60));
        assert!(before.starts_with("0."), "{before}");
        // A token of before key ids: claims.signature under the same key.
        let body = B64.encode(serde_json::to_vec(&claims(now.timestamp() + 60)).unwrap());
        let mut m = mac(old.expose());
        m.update(body.as_bytes());
        let legacy = format!("{body}.{}", B64.encode(m.finalize().into_bytes()));
        assert!(verify(&old, &legacy, now).is_ok());

        let both = Secret::new(
            r#"{"current": "1", "keys": {"0": "old-key-old-key-old-key-old-key!", "1": "the-new-key-the-new-key-the-new!"}}"#,
        );
        assert_eq!(check_keys(&both), Ok(()));
        let after = sign(&both, &claims(now.timestamp() + 60));
        assert!(after.starts_with("1."), "{after}");
        for token in [&before, &legacy, &after] {
            assert!(verify(&both, token, now).is_ok(), "{token}");
        }
        let new_only =
            Secret::new(r#"{"current": "1", "keys": {"1": "the-new-key-the-new-key-the-new!"}}"#);
        assert_eq!(
            verify(&new_only, &before, now),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&new_only, &legacy, now),
            Err(LinkError::BadSignature)
        );
        assert!(verify(&new_only, &after, now).is_ok());
        // A token naming another key id than the one it was signed with is refused.
        let swapped = format!("0{}", &after[1..]);
        assert_eq!(verify(&both, &swapped, now), Err(LinkError::BadSignature));
        assert!(check_keys(&Secret::new(r#"{"current": "2", "keys": {"1": "k"}}"#)).is_err());
        assert!(check_keys(&Secret::new(r#"{"current": "a.b", "keys": {"a.b": "k"}}"#)).is_err());
    }
}
