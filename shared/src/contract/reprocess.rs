//! Reprocessing a day of a dataset (`/v1/reprocess…`); the request's record is
//! `state::ReprocessRecord`, answered as it is stored.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ReprocessStatus;

pub use crate::state::ReprocessRecord;

/// `POST /v1/reprocess`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartReprocess {
    /// A dataset of reports.toml.
    pub dataset: String,
    /// The day, `yyyy-mm-dd`.
    #[schemars(extend("format" = "date"))]
    pub date: String,
}

/// Its answer (202); `GET /v1/reprocess/{request_id}` follows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReprocessQueued {
    pub request_id: String,
    pub status: ReprocessStatus,
    pub dataset: String,
    pub date: String,
}
