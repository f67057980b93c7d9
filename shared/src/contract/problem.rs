//! How the API says no: every 4xx and 5xx answer's body.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Error")]
pub struct Problem {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`, …
    pub error: String,
    pub message: String,
    /// The request's field at fault (of a 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Of a 429: seconds until the call may be tried again (as `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}
