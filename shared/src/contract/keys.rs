//! API keys (`/v1/keys…`, admin).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::state::ApiKeyRecord;

/// A key as listed: never its secret, nor its hash.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Key")]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    /// `read`, `operate`, `admin`.
    #[schemars(extend("items" = { "enum": ["read", "operate", "admin"] }))]
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
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    /// What the key may do: `read` (GET routes), `operate` (changing anything), `admin` (keys,
    /// relays and the audit trail).
    #[schemars(length(min = 1))]
    #[schemars(extend("items" = { "enum": ["read", "operate", "admin"] }))]
    pub scopes: Vec<String>,
}

/// Its answer (201): the key itself, this once; only its hash is kept.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The key itself, shown this once.
    pub key: String,
}

/// `GET /v1/audit`: the latest state-changing calls (and refusals, downloads), newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AuditTrail {
    pub entries: Vec<crate::state::AuditRecord>,
}
