//! Dead letters: each queue's, peeked, redriven, deleted (`/v1/dead-letters…`).

use serde::{Deserialize, Serialize};

pub use crate::ports::Letter;

/// One dead-letter queue in `GET /v1/dead-letters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterQueue {
    pub queue: String,
    /// Whether its letters can go back to a source queue (Scheduler's have none).
    pub redrivable: bool,
    pub messages: u64,
    pub oldest_sent_at: Option<String>,
}

/// `GET /v1/dead-letters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterQueues {
    pub dead_letter_queues: Vec<DeadLetterQueue>,
}

/// `GET /v1/dead-letters/{queue}`: its letters, left where they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetters {
    pub queue: String,
    pub messages: Vec<Letter>,
}

/// `POST /v1/dead-letters/{queue}/redrive`: the ids given, or all (up to `max`, 100 by
/// default).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redrive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
}

/// Its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Redriven {
    pub queue: String,
    pub moved: Vec<String>,
    pub not_found: Vec<String>,
}
