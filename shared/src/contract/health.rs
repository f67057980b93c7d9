//! `GET /v1/health`: 200 when nothing is wrong, 503 with the problems when something is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RelayOverview;
use crate::breaker::BreakerState;
pub use crate::ports::QueueDepth;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Unhealthy,
}

crate::status::words!(HealthStatus {
    Ok = "ok",
    Unhealthy = "unhealthy",
});

/// Whether a store answered.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub struct Reachable {
    pub ok: bool,
}

/// A queue, its dead-letter queue, and how long its oldest message has waited (absent where it
/// could not be read, or without a source queue).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct QueueHealth {
    pub queue: String,
    pub depth: Option<QueueDepth>,
    pub dead_letters: Option<QueueDepth>,
    /// Seconds the source queue's oldest message has waited (SQS's
    /// `ApproximateAgeOfOldestMessage`, the latest figure of the last 10 minutes); `null`
    /// without a recent figure or a source queue. Over `CHARLIE_MAX_MESSAGE_AGE_SECONDS`
    /// (default 3600) makes health 503.
    pub oldest_message_age_seconds: Option<u64>,
}

/// A mail folder the poller reads: its last successful poll and its Graph subscription.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FolderHealth {
    pub folder: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_expires_at: Option<String>,
}

/// The batch sender's circuit breaker.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DownstreamHealth {
    pub breaker: BreakerState,
    /// `None`: never failed.
    pub changed_at: Option<String>,
    pub opened_at: Option<String>,
    pub recent_failures: u64,
    pub last_failure: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub status: HealthStatus,
    pub checked_at: String,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub table: Reachable,
    pub bucket: Reachable,
    pub queues: Vec<QueueHealth>,
    pub folders: Vec<FolderHealth>,
    /// The batch sender's circuit breaker (docs/downstream-api.md); `null` without a
    /// downstream API, or when its record could not be read.
    pub downstream: Option<DownstreamHealth>,
    /// Each relay with its outbox; `null` when the relays could not be read.
    pub relays: Option<Vec<RelayOverview>>,
}
