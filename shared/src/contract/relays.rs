//! On-prem relays as admins see them (`/v1/relays…`).

use serde::{Deserialize, Serialize};

use super::RelayId;
use crate::relay_outbox::{OutboxRecord, Waiting};
use crate::state::RelayRecord;

/// A relay: never its key, nor the salt it is derived from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayInfo {
    pub id: RelayId,
    pub mailbox: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub revoked_at: Option<String>,
    pub last_seen_at: Option<String>,
    /// Mail servers whose `Authentication-Results` its mail may carry.
    pub trusted_authserv_ids: Vec<String>,
}

impl From<&RelayRecord> for RelayInfo {
    fn from(r: &RelayRecord) -> Self {
        RelayInfo {
            id: r.id.clone(),
            mailbox: r.mailbox.clone(),
            created_at: r.created_at.clone(),
            created_by: r.created_by.clone(),
            revoked_at: r.revoked_at.clone(),
            last_seen_at: r.last_seen_at.clone(),
            trusted_authserv_ids: r.trusted_authserv_ids.clone(),
        }
    }
}

/// The report mail its sender keeps deferring, with its last answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StuckMail {
    pub message_id: String,
    pub queued_at: String,
    pub attempts: u32,
    pub last_attempt_at: Option<String>,
    pub last_answer: Option<String>,
    pub next_attempt_at: Option<String>,
}

impl From<&OutboxRecord> for StuckMail {
    fn from(m: &OutboxRecord) -> Self {
        StuckMail {
            message_id: m.message_id.clone(),
            queued_at: m.queued_at.clone(),
            attempts: m.attempts,
            last_attempt_at: m.last_attempt_at.clone(),
            last_answer: m.last_answer.clone(),
            next_attempt_at: m.next_attempt_at.clone(),
        }
    }
}

/// A relay with its outbox: how many report mails wait for it, since when, and the one its
/// sender keeps deferring, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayOverview {
    #[serde(flatten)]
    pub relay: RelayInfo,
    pub outbox_waiting: u64,
    pub outbox_oldest_queued_at: Option<String>,
    pub outbox_stuck: Option<StuckMail>,
}

impl RelayOverview {
    pub fn new(r: &RelayRecord, w: &Waiting) -> Self {
        RelayOverview {
            relay: RelayInfo::from(r),
            outbox_waiting: w.count as u64,
            outbox_oldest_queued_at: w.oldest.map(|t| t.to_rfc3339()),
            outbox_stuck: w.stuck.as_ref().map(StuckMail::from),
        }
    }
}

/// `GET /v1/relays`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayList {
    pub relays: Vec<RelayOverview>,
}

/// `POST /v1/relays`: a new relay, or a revoked one again with a new key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRelay {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_authserv_ids: Vec<String>,
}

/// Its answer (201): the relay's key, this once (derived, never stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedRelay {
    #[serde(flatten)]
    pub relay: RelayInfo,
    pub key: String,
}
