//! Download links that last as long as the mail says: `{api}/v1/links/{token}`, where the
//! token names one run's workbook version and its expiry, signed with HMAC-SHA256 under a key
//! kept in Secrets Manager. The API checks the token and redirects to a presigned S3 URL
//! valid for minutes, so the link does not depend on the credentials of whoever made it (a
//! presigned URL dies with the role session that signed it, hours later).
//!
//! Token: `base64url(claims JSON) "." base64url(HMAC-SHA256(key, claims part))`.

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

fn mac(key: &Secret) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
}

/// Signs `claims` into a token.
pub fn sign(key: &Secret, claims: &LinkClaims) -> String {
    let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let mut m = mac(key);
    m.update(body.as_bytes());
    let sig = B64.encode(m.finalize().into_bytes());
    format!("{body}.{sig}")
}

/// Checks a token's signature (in constant time) and expiry at `now`.
pub fn verify(key: &Secret, token: &str, now: DateTime<Utc>) -> Result<LinkClaims, LinkError> {
    let (body, sig) = token.split_once('.').ok_or(LinkError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| LinkError::Malformed)?;
    let mut m = mac(key);
    m.update(body.as_bytes());
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
}
