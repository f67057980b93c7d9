//! Control API keys: `chk_{id}_{secret}`, where the id (16 hex digits) finds the key's
//! record and the secret (32 random bytes, base64url) is kept only as its SHA-256, compared in
//! constant time. Scopes are `read`, `operate` (includes read) and `admin` (includes both, and
//! manages keys).

use base64::Engine;
use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::ports::StateRecords;
use crate::secret::Secret;
use crate::state::{API_KEYS_INDEX, ApiKeyRecord, RecordKey};

/// What a key may do, lowest first: each scope includes those before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Operate,
    Admin,
}

impl Scope {
    pub const NAMES: [&'static str; 3] = ["read", "operate", "admin"];

    pub fn parse(name: &str) -> Option<Scope> {
        match name {
            "read" => Some(Scope::Read),
            "operate" => Some(Scope::Operate),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// The highest scope a record grants.
pub fn granted(record: &ApiKeyRecord) -> Option<Scope> {
    record.scopes.iter().filter_map(|s| Scope::parse(s)).max()
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new key's record and the key itself (shown once, never stored).
pub fn new_key(name: &str, scopes: &[Scope], created_by: &str) -> (ApiKeyRecord, Secret) {
    let id = format!("{:016x}", rand::random::<u64>());
    let secret =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let record = ApiKeyRecord {
        id: id.clone(),
        name: name.to_owned(),
        scopes: scopes.iter().map(|s| s.name().to_owned()).collect(),
        secret_sha256: secret_hash(&secret),
        created_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        created_by: created_by.to_owned(),
        revoked_at: None,
    };
    (record, Secret::new(format!("chk_{id}_{secret}")))
}

/// Creates a key: its record is stored (on the keys index); the key is returned once.
pub async fn create(
    records: &dyn StateRecords,
    name: &str,
    scopes: &[Scope],
    created_by: &str,
) -> anyhow::Result<(ApiKeyRecord, Secret)> {
    let (record, key) = new_key(name, scopes, created_by);
    let index = format!("{}#{}", record.created_at, record.id);
    records
        .put_record(
            &RecordKey::api_key(&record.id),
            &record,
            Some((API_KEYS_INDEX, &index)),
        )
        .await?;
    Ok((record, key))
}

/// Why a presented key is refused (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Malformed,
    Unknown,
    Revoked,
}

impl Refused {
    pub fn message(&self) -> &'static str {
        match self {
            Refused::Missing => {
                "no API key: send it as Authorization: Bearer <key> (keys are made with `charlie keys create`)"
            }
            Refused::Malformed => "the API key is not a Charlie key (chk_<id>_<secret>)",
            Refused::Unknown => "the API key is not known (wrong, or from another deployment)",
            Refused::Revoked => "the API key was revoked",
        }
    }
}

/// The id part of a presented key (`chk_{id}_…`) when it has the shape of one: not a secret
/// (ids are listed by `charlie keys list`), so a refusal can say which key was refused.
pub fn presented_id(presented: &str) -> Option<&str> {
    let (id, _) = presented.strip_prefix("chk_")?.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The key's record when `presented` is a valid, unrevoked key.
pub async fn authenticate(
    records: &dyn StateRecords,
    presented: Option<&str>,
) -> anyhow::Result<Result<ApiKeyRecord, Refused>> {
    let Some(presented) = presented else {
        return Ok(Err(Refused::Missing));
    };
    let Some((id, secret)) = presented
        .strip_prefix("chk_")
        .and_then(|rest| rest.split_once('_'))
        .filter(|(id, s)| {
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !s.is_empty()
        })
    else {
        return Ok(Err(Refused::Malformed));
    };
    let Some(record) = records.get_record(&RecordKey::api_key(id)).await? else {
        return Ok(Err(Refused::Unknown));
    };
    // Both sides are 64 hex digits: the comparison takes the same time whatever matches.
    if !Secret::new(record.secret_sha256.clone()).matches(&secret_hash(secret)) {
        return Ok(Err(Refused::Unknown));
    }
    if record.revoked_at.is_some() {
        return Ok(Err(Refused::Revoked));
    }
    Ok(Ok(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemoryState;

    #[tokio::test]
    async fn a_created_key_authenticates_and_its_secret_is_not_stored() {
        let records = MemoryState::default();
        let (record, key) = create(&records, "ops", &[Scope::Operate], "test")
            .await
            .unwrap();
        let records: &dyn StateRecords = &records;
        let stored = records
            .get_record(&RecordKey::api_key(&record.id))
            .await
            .unwrap()
            .unwrap();
        let secret = key.expose().rsplit('_').next().unwrap();
        assert!(!serde_json::to_string(&stored).unwrap().contains(secret));
        let ok = authenticate(records, Some(key.expose())).await.unwrap();
        assert_eq!(ok.map(|r| granted(&r)), Ok(Some(Scope::Operate)));
    }

    #[tokio::test]
    async fn wrong_missing_malformed_and_revoked_keys_are_refused_each_with_its_reason() {
        let memory = MemoryState::default();
        let records: &dyn StateRecords = &memory;
        let (mut record, key) = create(records, "ops", &[Scope::Read], "test")
            .await
            .unwrap();
        let wrong = format!("chk_{}_{}", record.id, "A".repeat(43));
        let refused = |k: Option<&str>| {
            let k = k.map(str::to_owned);
            async move {
                authenticate(records, k.as_deref())
                    .await
                    .unwrap()
                    .unwrap_err()
            }
        };
        assert_eq!(refused(None).await, Refused::Missing);
        assert_eq!(refused(Some("hunter2")).await, Refused::Malformed);
        assert_eq!(refused(Some(&wrong)).await, Refused::Unknown);
        assert_eq!(
            refused(Some("chk_0123456789abcdef_xyz")).await,
            Refused::Unknown
        );
        record.revoked_at = Some(Utc::now().to_rfc3339());
        records
            .put_record(&RecordKey::api_key(&record.id), &record, None)
            .await
            .unwrap();
        assert_eq!(refused(Some(key.expose())).await, Refused::Revoked);
    }

    #[test]
    fn scopes_include_the_lower_ones() {
        assert!(Scope::Admin > Scope::Operate && Scope::Operate > Scope::Read);
        assert_eq!(Scope::parse("operate").map(Scope::name), Some("operate"));
        assert_eq!(Scope::parse("root"), None);
    }
}
