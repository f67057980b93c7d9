//! A relay's own calls (`/v1/relay/…`, signed with its key): who it is, where an upload goes,
//! the report mail queued for it, and what its sender did with each mail. The relay and the API
//! read and write these same types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /v1/relay`: the relay as the API knows it, and the API's clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayHello {
    pub relay: super::RelayId,
    pub mailbox: Option<String>,
    /// RFC 3339, milliseconds: the relay compares its clock with it.
    pub time: String,
}

/// `POST /v1/relay/uploads`: where a raw mail of this digest and length goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// The raw mail's SHA-256, 64 hex digits.
    pub sha256: String,
    pub size: u64,
}

/// Its answer: the inbox key, and unless the mail is there already, a presigned `PUT` with the
/// headers it was signed for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadTicket {
    pub key: String,
    pub exists: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A report mail queued for the relay: its MIME behind a presigned URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxMail {
    pub message_id: String,
    pub from: String,
    pub recipients: Vec<String>,
    pub size: u64,
    pub queued_at: String,
    pub url: String,
}

/// `GET /v1/relay/outbox`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbox {
    pub mails: Vec<OutboxMail>,
}

/// `POST /v1/relay/outbox/ack`: the relay's SMTP server (or Outlook) took the mail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSent {
    pub message_id: String,
    pub smtp_reply: String,
}

/// Its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentRecorded {
    pub message_id: String,
    pub sent_at: Option<String>,
    pub smtp_reply: Option<String>,
}

/// `POST /v1/relay/outbox/refused`: the relay's sender refused the mail for good.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailRefused {
    pub message_id: String,
    pub reason: String,
}

/// Its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefusalRecorded {
    pub message_id: String,
    pub refused_at: Option<String>,
    pub refusal: Option<String>,
}

/// `POST /v1/relay/outbox/deferred`: the relay's sender could not take the mail now.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailDeferred {
    pub message_id: String,
    pub answer: String,
}

/// Its answer: when the mail is offered again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeferralRecorded {
    pub message_id: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
}
