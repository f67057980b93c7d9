//! On-prem relays as admins see them (`/v1/relays…`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RelayId;
use crate::relay_outbox::{OutboxRecord, Waiting};
use crate::state::RelayRecord;

/// A relay: never its key, nor the salt it is derived from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RelayInfo {
    pub id: RelayId,
    /// The mailbox the relay reads, when Graph may read it too: the same mail by both paths is
    /// ingested once.
    pub mailbox: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub revoked_at: Option<String>,
    /// The relay's last signed call (at most a minute stale).
    pub last_seen_at: Option<String>,
    /// Whose `Authentication-Results` are believed in the relay's mail.
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
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Relay")]
pub struct RelayOverview {
    #[serde(flatten)]
    pub relay: RelayInfo,
    /// Report mail queued for the relay (transport `relay`) and neither sent nor refused yet.
    pub outbox_waiting: u64,
    /// When the oldest of it was queued; waiting longer than
    /// `CHARLIE_RELAY_OUTBOX_STALE_MINUTES` (default 240) makes health 503.
    pub outbox_oldest_queued_at: Option<String>,
    /// The waiting mail the relay's sender deferred most often (an SMTP 4xx), with its last
    /// answer; a health warning while it waits.
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
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RelayList {
    pub relays: Vec<RelayOverview>,
}

/// `POST /v1/relays`: a new relay, or a revoked one again with a new key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRelay {
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,39}$"))]
    pub id: String,
    /// The mailbox the relay reads, when Graph may read it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 320))]
    pub mailbox: Option<String>,
    /// The authserv-ids (host names) of the mail servers whose `Authentication-Results`
    /// headers are believed in the relay's mail; none: its mail counts as unauthenticated for
    /// datasets with `require_authenticated_sender`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 10),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*$")
        )
    )]
    pub trusted_authserv_ids: Vec<String>,
}

/// Its answer (201): the relay's key, this once (derived, never stored).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CreatedRelay {
    #[serde(flatten)]
    pub relay: RelayInfo,
    /// The relay's key `chr_<relay>_<secret>`, shown this once: put it in the relay's config.
    pub key: String,
}
