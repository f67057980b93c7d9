//! A relay's own calls (`/v1/relay/…`, signed with its key): who it is, where an upload goes,
//! the report mail queued for it, and what its sender did with each mail. The relay and the API
//! read and write these same types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `GET /v1/relay`: the relay as the API knows it, and the API's clock.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RelayHello {
    pub relay: super::RelayId,
    pub mailbox: Option<String>,
    /// RFC 3339, milliseconds: the relay compares its clock with it.
    pub time: String,
}

/// `POST /v1/relay/uploads`: where a raw mail of this digest and length goes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RelayUpload")]
pub struct UploadRequest {
    /// The raw mail's SHA-256, 64 hex digits.
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: String,
    /// The raw mail's length in bytes.
    #[schemars(range(min = 1, max = 67108864))]
    pub size: u64,
}

/// Its answer: the inbox key, and unless the mail is there already, a presigned `PUT` with the
/// headers it was signed for.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "RelayUploadUrl")]
pub struct UploadTicket {
    /// `inbox/relay/{relay}/{sha256}.eml`.
    pub key: String,
    /// The file is there already: send nothing.
    pub exists: bool,
    /// A presigned S3 `PUT` (without `exists`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Send these with the `PUT`: they are signed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A report mail queued for the relay: its MIME behind a presigned URL.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OutboxMail {
    pub message_id: String,
    pub from: String,
    pub recipients: Vec<String>,
    pub size: u64,
    pub queued_at: String,
    pub url: String,
}

/// `GET /v1/relay/outbox`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Outbox {
    pub mails: Vec<OutboxMail>,
}

/// `POST /v1/relay/outbox/ack`: the relay's SMTP server (or Outlook) took the mail.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MailSent {
    #[schemars(length(min = 1, max = 512))]
    pub message_id: String,
    pub smtp_reply: String,
}

/// Its answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SentRecorded {
    pub message_id: String,
    pub sent_at: Option<String>,
    pub smtp_reply: Option<String>,
}

/// `POST /v1/relay/outbox/refused`: the relay's sender refused the mail for good.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MailRefused {
    #[schemars(length(min = 1, max = 512))]
    pub message_id: String,
    /// What the sender answered (an SMTP reply, Outlook's error); control characters are
    /// dropped, at most 2000 characters kept.
    #[schemars(length(min = 1))]
    pub reason: String,
}

/// Its answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RefusalRecorded {
    pub message_id: String,
    pub refused_at: Option<String>,
    pub refusal: Option<String>,
}

/// `POST /v1/relay/outbox/deferred`: the relay's sender could not take the mail now.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MailDeferred {
    #[schemars(length(min = 1, max = 512))]
    pub message_id: String,
    /// What the sender answered (an SMTP 4xx reply); control characters are dropped, at most
    /// 2000 characters kept.
    #[schemars(length(min = 1))]
    pub answer: String,
}

/// Its answer: when the mail is offered again.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeferralRecorded {
    pub message_id: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
}
