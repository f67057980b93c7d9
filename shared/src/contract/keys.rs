//! API keys (`/v1/keys…`, admin).

use serde::{Deserialize, Serialize};

use crate::state::ApiKeyRecord;

/// A key as listed: never its secret, nor its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    /// `read`, `operate`, `admin`.
    pub scopes: Vec<String>,
    pub created_at: String,
    pub created_by: String,
    pub revoked_at: Option<String>,
}

impl From<&ApiKeyRecord> for KeyInfo {
    fn from(k: &ApiKeyRecord) -> Self {
        KeyInfo {
            id: k.id.clone(),
            name: k.name.clone(),
            scopes: k.scopes.clone(),
            created_at: k.created_at.clone(),
            created_by: k.created_by.clone(),
            revoked_at: k.revoked_at.clone(),
        }
    }
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<String>,
}

/// Its answer (201): the key itself, this once; only its hash is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: KeyInfo,
    pub key: String,
}

/// `GET /v1/audit`: the latest state-changing calls (and refusals, downloads), newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditTrail {
    pub entries: Vec<crate::state::AuditRecord>,
}
