//! Ports: what the stages need from the world, as small traits named for what they do.
//!
//! Stages hold `Arc<dyn Port>`s and contain no SDK types. Adapters implement the ports, each in
//! the folder named for what it talks to: `adapters::aws::{dynamodb, s3, sqs, ses, secrets}`,
//! `adapters::graph`, and `adapters::memory`, which implements every port in memory for unit
//! tests. Traits use boxed futures (`async_trait`) so they can be used as trait objects.

mod mail;
mod rows;
mod state;

pub use mail::{
    AttachmentInfo, ClientStateStore, DeltaEntry, DeltaPage, EmailAddress, FileAttachment,
    GraphError, MAX_MAIL_SUBSCRIPTION_MINUTES, MailMessage, MailSource, MailTransport,
    MessageHeader, OutgoingAttachment, OutgoingMail, Recipient, SentMail, Subscribed, Subscription,
    SubscriptionRequest, Subscriptions,
};
pub use rows::{Replaced, RowStore, StoreOutcome, StoredRow};
pub use state::{Claim, Claims, CounterValues, IndexedRecord, StateRecords};

use async_trait::async_trait;

/// Bytes as a stream of pieces (an S3 body, a Graph download), read without holding them whole.
pub type ByteChunks = futures::stream::BoxStream<'static, anyhow::Result<bytes::Bytes>>;

/// Where a stored object landed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub key: String,
    pub version_id: Option<String>,
}

/// The bucket: `raw/`, `quarantine/`, `reports/`, `config/`.
#[async_trait]
pub trait Objects: Send + Sync {
    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<StoredObject>;
    /// Uploads a file without reading it whole into memory.
    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        content_type: &str,
    ) -> anyhow::Result<StoredObject>;
    /// Uploads a stream of unknown length without holding it whole: memory holds one part of
    /// a multipart upload at a time.
    async fn put_stream(
        &self,
        key: &str,
        body: ByteChunks,
        content_type: &str,
    ) -> anyhow::Result<StoredObject>;
    /// Copies an object inside the bucket (server side).
    async fn copy(&self, from: &str, to: &str) -> anyhow::Result<StoredObject>;
    async fn get(&self, key: &str, version_id: Option<&str>) -> anyhow::Result<Vec<u8>>;
    /// An object as a stream (and its size), for objects too large to hold.
    async fn get_stream(&self, key: &str) -> anyhow::Result<(ByteChunks, u64)>;
    /// A URL that downloads `key` (at `version_id`) without credentials until `expires_in`.
    async fn presigned_get(
        &self,
        key: &str,
        version_id: Option<&str>,
        expires_in: std::time::Duration,
    ) -> anyhow::Result<String>;
    /// A URL that uploads `key` with one `PUT` without credentials until `expires_in`; the
    /// upload must carry `x-amz-checksum-sha256` = `sha256_base64` (S3 refuses other bytes),
    /// `content-type` = `content_type` and `content-length` = `size` (all three signed).
    async fn presigned_put(
        &self,
        key: &str,
        content_type: &str,
        sha256_base64: &str,
        size: u64,
        expires_in: std::time::Duration,
    ) -> anyhow::Result<String>;
    /// Every version of `key`, newest first (none when there is no such key).
    async fn versions(&self, key: &str) -> anyhow::Result<Vec<ObjectInfo>>;
    /// Current objects under `prefix` in key order, after `after` (a page's last key), at
    /// most `limit`.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<ObjectInfo>>;
    /// `s3://bucket/key`, for messages.
    fn locate(&self, key: &str) -> String;
}

/// The object asked for is not in the bucket (S3's `NoSuchKey` / `NoSuchVersion`): no retry
/// brings it back.
#[derive(Debug, thiserror::Error)]
#[error("no object {0} in the bucket")]
pub struct NoSuchObject(pub String);

impl NoSuchObject {
    /// Whether `error` is (or was caused by) a missing object.
    pub fn is(error: &anyhow::Error) -> bool {
        error.chain().any(|c| c.is::<NoSuchObject>())
    }
}

/// An object (or one version of it) as a listing shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[schemars(rename = "ObjectVersion")]
pub struct ObjectInfo {
    pub key: String,
    pub version_id: Option<String>,
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
    /// The current version.
    pub latest: bool,
}

/// One message for a [`WorkQueue`]: its JSON body and the correlation id it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    pub body: String,
    pub correlation_id: String,
}

impl QueuedMessage {
    /// `message` as its JSON body, carrying `correlation_id`.
    pub fn new<T: serde::Serialize + ?Sized>(
        message: &T,
        correlation_id: impl Into<String>,
    ) -> serde_json::Result<Self> {
        Ok(QueuedMessage {
            body: serde_json::to_string(message)?,
            correlation_id: correlation_id.into(),
        })
    }
}

/// An SQS queue the stage sends work to.
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Sends every message (in batches), trying every batch whatever the others did: how many
    /// the queue took, and the first failure if any.
    async fn send_each(&self, messages: &[QueuedMessage]) -> (usize, Option<anyhow::Error>);
    /// The queue's name or URL, for messages.
    fn name(&self) -> &str;
}

impl<'a> dyn WorkQueue + 'a {
    /// Sends one message; any refusal is an error.
    pub async fn send<T: serde::Serialize + ?Sized>(
        &self,
        message: &T,
        correlation_id: &str,
    ) -> anyhow::Result<()> {
        self.send_all(&[(message, correlation_id)]).await
    }

    /// Sends every message; any refusal fails the call, naming it, so the caller's retry
    /// covers it (duplicates are harmless downstream).
    pub async fn send_all<T: serde::Serialize + ?Sized>(
        &self,
        messages: &[(&T, &str)],
    ) -> anyhow::Result<()> {
        let queued = messages
            .iter()
            .map(|(m, c)| QueuedMessage::new(*m, *c))
            .collect::<serde_json::Result<Vec<_>>>()?;
        match self.send_each(&queued).await {
            (_, Some(e)) => Err(e),
            (_, None) => Ok(()),
        }
    }

    /// Queues messages that each start their own piece of work (each gets a fresh
    /// correlation id), trying every batch: how many went, and the first failure if any.
    pub async fn send_new_work<T: serde::Serialize>(
        &self,
        messages: &[T],
    ) -> (usize, Option<anyhow::Error>) {
        if messages.is_empty() {
            return (0, None);
        }
        let queued: serde_json::Result<Vec<QueuedMessage>> = messages
            .iter()
            .map(|m| QueuedMessage::new(m, crate::invocation::new_correlation_id()))
            .collect();
        match queued {
            Ok(q) => self.send_each(&q).await,
            Err(e) => (0, Some(e.into())),
        }
    }
}

/// A message that failed for good, as its dead-letter queue keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The queue the message came from (its ARN).
    pub source_queue: String,
    pub message_id: String,
    pub body: String,
    pub correlation_id: Option<String>,
    /// Why no retry can help, as logged.
    pub cause: String,
    /// The stage that gave up on it.
    pub stage: String,
}

/// A queue's depth, as SQS approximates it.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct QueueDepth {
    /// Waiting to be received.
    pub visible: u64,
    /// Received, not yet deleted (in work).
    pub in_flight: u64,
    pub delayed: u64,
}

/// A message in a dead-letter queue, as peeked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Letter {
    pub message_id: String,
    pub body: String,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How often it was received from the dead-letter queue (peeks count).
    pub receive_count: u32,
    /// Why it is here (absent when the queue's redrive moved it without a word).
    pub cause: Option<String>,
    pub failed_stage: Option<String>,
    pub source_message_id: Option<String>,
    pub correlation_id: Option<String>,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Redriven {
    /// Message ids moved back to the source queue.
    pub moved: Vec<String>,
    /// Asked-for ids not found in the dead-letter queue.
    pub not_found: Vec<String>,
}

/// The deployment's queues and their dead-letter queues, by name (`inbound`, `mail`, …), for
/// operators: depths, and dead letters peeked, redriven and deleted.
#[async_trait]
pub trait QueueAdmin: Send + Sync {
    /// Every queue name, and whether it has a source queue (a DLQ without one, Scheduler's,
    /// can be peeked and deleted from but not redriven).
    fn queues(&self) -> Vec<(String, bool)>;
    /// The depth of the queue (`dead`: of its dead-letter queue).
    async fn depth(&self, queue: &str, dead: bool) -> anyhow::Result<QueueDepth>;
    /// Up to `max` messages of the queue's DLQ, left where they are.
    async fn peek(&self, queue: &str, max: usize) -> anyhow::Result<Vec<Letter>>;
    /// Moves the DLQ's messages `ids` (all when `None`, at most `max`) back to the queue.
    async fn redrive(
        &self,
        queue: &str,
        ids: Option<&[String]>,
        max: usize,
    ) -> anyhow::Result<Redriven>;
    /// Deletes one message from the queue's DLQ; false when it is not there.
    async fn delete(&self, queue: &str, message_id: &str) -> anyhow::Result<bool>;
    /// The age in seconds of the source queue's oldest message, as SQS last reported it
    /// (CloudWatch's `ApproximateAgeOfOldestMessage` of the last few minutes); `None` when
    /// there is no recent figure or no source queue.
    async fn oldest_age(&self, queue: &str) -> anyhow::Result<Option<u64>>;
}

/// Sends a permanently failed message to its queue's dead-letter queue at once, with its cause
/// attached, instead of letting it burn through the queue's receives.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    async fn send(&self, letter: &DeadLetter) -> anyhow::Result<()>;
    /// The consumed queues' `maxReceiveCount`, when known: a retryable failure on that
    /// receive is the message's last, and is dead-lettered with its cause.
    fn max_receives(&self) -> Option<u32> {
        None
    }
}

/// The downstream persistence API (`docs/downstream-api.md`): one `POST /batch-metadata`.
#[async_trait]
pub trait Downstream: Send + Sync {
    /// Posts one canonical batch body with its idempotency key. `Err` only when no answer came
    /// (a timeout, a refused or reset connection): every HTTP status is an answer.
    async fn post_batch(
        &self,
        body: &[u8],
        idempotency_key: &str,
        correlation_id: &str,
    ) -> Result<DownstreamReply, DownstreamError>;

    /// Reads the credentials again (after a 401: the token may have been rotated).
    async fn refresh_credentials(&self) -> anyhow::Result<()>;
}

/// An HTTP answer of the downstream API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamReply {
    pub status: u16,
    /// `Retry-After`, as a wait.
    pub retry_after: Option<std::time::Duration>,
    pub body: String,
}

/// No answer: what happened instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no answer from the downstream API: {0}")]
pub struct DownstreamError(pub String);

/// Sets how long received messages stay invisible (SQS `ChangeMessageVisibilityBatch`): a
/// consumer that knows when a retry can succeed says so, instead of the queue's default.
#[async_trait]
pub trait MessageVisibility: Send + Sync {
    /// Each (receipt handle, seconds from now, at most 12 hours).
    async fn set_visibility(&self, messages: &[(String, u32)]) -> anyhow::Result<()>;
}
