//! Dead letters: each queue's, peeked, redriven, deleted (`/v1/dead-letters…`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::ports::Letter;

/// One dead-letter queue in `GET /v1/dead-letters`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterQueue {
    pub queue: String,
    /// Whether its letters can go back to a source queue (Scheduler's have none).
    pub redrivable: bool,
    pub messages: u64,
    pub oldest_sent_at: Option<String>,
}

/// `GET /v1/dead-letters`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterQueues {
    pub dead_letter_queues: Vec<DeadLetterQueue>,
}

/// `GET /v1/dead-letters/{queue}`: its letters, left where they are.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetters {
    pub queue: String,
    pub messages: Vec<Letter>,
}

/// `POST /v1/dead-letters/{queue}/redrive`: the ids given, or all (up to `max`, 100 by
/// default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redrive {
    /// These letters (their `message_id`s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 128)))]
    pub message_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    /// Every letter in the queue (up to `max`).
    pub all: bool,
    /// With `all`: at most this many (100 when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max: Option<usize>,
}

/// Its answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Redriven {
    pub queue: String,
    pub moved: Vec<String>,
    pub not_found: Vec<String>,
}
