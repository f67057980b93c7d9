//! Mail in and out: the mailbox source (Microsoft Graph's messages, delta and subscriptions),
//! the transports that send report mail, and the store of the subscriptions' clientStates.
//! The data types keep Graph's JSON names, since Graph's shapes are the contract here.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::definitions::TransportKind;
use crate::report_mail::Recipients;
use crate::secret::Secret;

/// A failed Graph call: what Graph answered, or why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Graph answered {status} to {what}: {code}: {message}")]
    Status {
        status: u16,
        what: String,
        code: String,
        message: String,
    },
    #[error("Graph request {what} failed: {source}")]
    Transport {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Graph's answer to {what} was not of the expected shape: {source}")]
    Shape {
        what: String,
        source: serde_json::Error,
    },
    /// A link (`@odata.nextLink`, `@odata.deltaLink`, an upload URL) to a host that is not
    /// Graph's: not followed, so the token goes nowhere else.
    #[error("refused to follow {what} to {host:?}: not the configured Graph host")]
    ForeignHost { what: String, host: String },
}

impl GraphError {
    /// Permanent: a 4xx other than 408 and 429, or a link to a foreign host.
    pub fn is_permanent(&self) -> bool {
        match self {
            GraphError::ForeignHost { .. } => true,
            _ => self
                .status()
                .is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A delta link Graph no longer knows: `410 Gone`, or a `syncStateNotFound` error code.
    pub fn is_expired_sync_state(&self) -> bool {
        match self {
            GraphError::Status { status, code, .. } => {
                *status == 410
                    || code.eq_ignore_ascii_case("syncStateNotFound")
                    || code.eq_ignore_ascii_case("SyncStateInvalid")
            }
            _ => false,
        }
    }
}

/// One entry of a delta page.
#[derive(Debug, Clone, Deserialize)]
pub struct DeltaEntry {
    pub id: String,
    #[serde(default, rename = "hasAttachments")]
    pub has_attachments: bool,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default, rename = "@removed")]
    pub removed: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeltaPage {
    #[serde(default)]
    pub value: Vec<DeltaEntry>,
    #[serde(default, rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    #[serde(default, rename = "@odata.deltaLink")]
    pub delta_link: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmailAddress {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Recipient {
    #[serde(rename = "emailAddress")]
    pub email_address: EmailAddress,
}

/// A received mail's headers (Graph's `message`, the fields Charlie reads).
#[derive(Debug, Clone, Deserialize)]
pub struct MailMessage {
    pub id: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub from: Option<Recipient>,
    #[serde(default, rename = "receivedDateTime")]
    pub received: Option<DateTime<Utc>>,
    /// The RFC 5322 Message-ID: the same mail however Graph's ids for it changed.
    #[serde(default, rename = "internetMessageId")]
    pub internet_message_id: Option<String>,
    /// Transport headers (`Authentication-Results` and the like), when asked for.
    #[serde(default, rename = "internetMessageHeaders")]
    pub headers: Vec<MessageHeader>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessageHeader {
    pub name: String,
    pub value: String,
}

impl MailMessage {
    pub fn sender(&self) -> &str {
        self.from
            .as_ref()
            .and_then(|f| f.email_address.address.as_deref())
            .unwrap_or("")
    }
}

/// A file attachment with its content.
#[derive(Debug, Clone, PartialEq)]
pub struct FileAttachment {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A file attachment as listed, without its content.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
}

/// The mailboxes' mail: messages, their attachments, and delta rounds over a folder. Ids are
/// Graph's immutable ids (the same whichever path found a mail, and after it moves folder).
#[async_trait]
pub trait MailSource: Send + Sync {
    /// The mailbox's directory object id (a GUID), which change notifications name it by.
    async fn mailbox_id(&self, mailbox: &str) -> Result<String, GraphError>;
    async fn message(&self, mailbox: &str, id: &str) -> Result<MailMessage, GraphError>;
    /// The message's file attachments, without content (item and reference attachments are
    /// left out).
    async fn attachment_list(
        &self,
        mailbox: &str,
        id: &str,
    ) -> Result<Vec<AttachmentInfo>, GraphError>;
    /// One attachment's raw bytes (`/$value`: no base64 to decode).
    async fn attachment_content(
        &self,
        mailbox: &str,
        message_id: &str,
        attachment_id: &str,
    ) -> Result<Vec<u8>, GraphError>;
    /// One attachment's raw bytes as a stream (`/$value`), for attachments too large to hold:
    /// memory holds one piece at a time.
    async fn attachment_stream(
        &self,
        mailbox: &str,
        message_id: &str,
        attachment_id: &str,
    ) -> Result<super::ByteChunks, GraphError>;
    /// The first delta URL of a folder; with `since`, only mail received from then on.
    fn delta_start_url(&self, mailbox: &str, folder: &str, since: Option<DateTime<Utc>>) -> String;
    /// One page of a delta round; follow `next_link` until a page carries `delta_link`.
    async fn delta_page(&self, url: &str) -> Result<DeltaPage, GraphError>;
}

pub struct SubscriptionRequest<'a> {
    pub notification_url: &'a str,
    pub lifecycle_url: &'a str,
    /// `users/{mailbox}/mailFolders('{folder}')/messages`.
    pub resource: &'a str,
    pub expires: DateTime<Utc>,
    pub client_state: &'a Secret,
}

/// Graph's longest subscription to Outlook messages: 10,070 minutes, just under 7 days.
pub const MAX_MAIL_SUBSCRIPTION_MINUTES: i64 = 10_070;

/// A subscription as Graph returns it (the fields Charlie keeps).
#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub id: String,
    #[serde(rename = "expirationDateTime")]
    pub expires: DateTime<Utc>,
    #[serde(default)]
    pub resource: String,
}

/// Change subscriptions on mail folders.
#[async_trait]
pub trait Subscriptions: Send + Sync {
    /// Creates one; Graph first runs the validation handshake against both URLs.
    async fn create(&self, request: &SubscriptionRequest<'_>) -> Result<Subscription, GraphError>;
    /// Extends one; 404 means Graph no longer has it.
    async fn renew(&self, id: &str, expires: DateTime<Utc>) -> Result<Subscription, GraphError>;
    async fn delete(&self, id: &str) -> Result<(), GraphError>;
}

pub struct OutgoingAttachment<'a> {
    pub name: &'a str,
    pub content_type: &'a str,
    pub bytes: &'a [u8],
}

/// A report mail ready to go: each transport takes the parts it needs (SES the MIME, Graph
/// the fields).
pub struct OutgoingMail<'a> {
    pub from: &'a str,
    pub recipients: &'a Recipients,
    pub subject: &'a str,
    pub html: &'a str,
    /// The whole message as MIME, attachment encoded.
    pub mime: &'a [u8],
    /// `<…@…>`, set by Charlie so the sent mail can be found and matched to its delivery.
    pub internet_message_id: &'a str,
    pub attachment: Option<OutgoingAttachment<'a>>,
}

/// What a transport did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMail {
    /// SES's message id, or the `internetMessageId` of a Graph send (which returns none).
    pub provider_message_id: String,
    /// The draft that was sent, when Graph took the attachment through an upload session.
    pub draft_id: Option<String>,
}

/// Sends report mail (SES, Graph `sendMail`).
#[async_trait]
pub trait MailTransport: Send + Sync {
    fn kind(&self) -> TransportKind;
    async fn send(&self, mail: &OutgoingMail<'_>) -> anyhow::Result<SentMail>;
}

/// A live Graph subscription as the webhook knows it: its clientState and the mailbox it
/// watches (as its resource names it), so a notification is taken for that mailbox only.
#[derive(Clone, Debug)]
pub struct Subscribed {
    pub client_state: Secret,
    /// `None` for a subscription recorded before mailboxes were (its notifications are
    /// dropped; the poller's rounds find its mail).
    pub mailbox: Option<String>,
}

impl Subscribed {
    pub fn new(client_state: Secret, mailbox: &str) -> Self {
        Subscribed {
            client_state,
            mailbox: Some(mailbox.to_owned()),
        }
    }

    /// Whether `candidate` is this subscription's clientState (constant time).
    pub fn matches(&self, candidate: &str) -> bool {
        self.client_state.matches(candidate)
    }
}

/// Where the clientState (and mailbox) of every live subscription is kept (a secret). Writers
/// read, change and write the whole map, so they take turns (see `stages::poller`).
#[async_trait]
pub trait ClientStateStore: Send + Sync {
    /// Every subscription by id; empty while none was written.
    async fn load(&self) -> anyhow::Result<HashMap<String, Subscribed>>;
    async fn save(&self, states: &HashMap<String, Subscribed>) -> anyhow::Result<()>;
}
