//! Runs: starting one, listing them, one run with its deliveries (`/v1/runs…`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DeliveryStatus, RunStatus};
use crate::state::{DeliveryEvent, RunRecord};

/// `POST /v1/runs`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// A report of reports.toml.
    pub report: String,
    /// A day (`2024-03-14`), an ISO week (`2024-W11`), a month (`2024-03`) or a range
    /// (`2024-03-01..2024-03-14`).
    pub period: String,
}

/// The answer (202) of `POST /v1/runs` and `POST /v1/runs/{run_id}/rerun`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunQueued {
    pub run_id: super::RunId,
    pub status: RunStatus,
    pub report: String,
    pub period: String,
}

/// A run in a list.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunSummary {
    pub run_id: super::RunId,
    pub report: String,
    pub period: String,
    pub status: RunStatus,
    pub rows: u64,
    pub size: u64,
    pub attempts: u32,
    pub requested_at: String,
    pub requested_by: String,
    pub started_at: String,
    pub finished_at: String,
    pub error: Option<String>,
}

impl From<&RunRecord> for RunSummary {
    fn from(run: &RunRecord) -> Self {
        RunSummary {
            run_id: run.run_id.clone(),
            report: run.report.clone(),
            period: run.period.clone(),
            status: run.status,
            rows: run.rows,
            size: run.size,
            attempts: run.attempts,
            requested_at: run.requested_at.clone(),
            requested_by: run.requested_by.clone(),
            started_at: run.started_at.clone(),
            finished_at: run.finished_at.clone(),
            error: run.error.clone(),
        }
    }
}

/// `GET /v1/runs`: newest first; `next_cursor` continues it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunList {
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// One mail of a run (one recipient group): how it went out and what its receiver said.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Delivery {
    pub group: String,
    pub transport: String,
    pub provider_message_id: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub sent_at: String,
    /// The workbook went as a download link (too large to attach).
    pub as_link: bool,
    pub link_expires: Option<String>,
    /// `sent` (the provider took it), then `delivered`, `bounced` or `complained` as SES
    /// reports; for transport relay: `queued`, then `relayed` once the relay's SMTP server took
    /// it, or `refused` when it refused it for good.
    pub status: DeliveryStatus,
    /// What set the status: SES's bounce or complaint, or for transport relay the relay and
    /// its sender's answer (`smtp_reply` when relayed, `refusal` when refused).
    pub status_detail: Option<serde_json::Value>,
    /// Every SES event, as it came.
    pub events: Vec<DeliveryEvent>,
}

impl Delivery {
    /// Why a relay's server refused it, when it did.
    pub fn refusal(&self) -> Option<&str> {
        self.status_detail.as_ref()?.get("refusal")?.as_str()
    }
}

/// `GET /v1/runs/{run_id}`: the run's record, its deliveries, and what the record alone does
/// not say.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Run")]
pub struct RunAnswer {
    #[serde(flatten)]
    pub run: RunRecord,
    pub deliveries: Vec<Delivery>,
    pub cancel_requested: bool,
    /// A build past its deadline died (timed out or crashed); the queue delivers it again.
    pub stale: bool,
}

/// `GET /v1/runs/{run_id}/deliveries`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunDeliveries {
    pub run_id: super::RunId,
    pub deliveries: Vec<Delivery>,
}

/// The answer (202) of `POST /v1/runs/{run_id}/cancel`: the builder stops before it starts or
/// at its next page.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Cancelled")]
pub struct CancelRequested {
    pub run_id: super::RunId,
    /// The run's status when the cancel was asked for.
    pub status: RunStatus,
    pub cancel_requested: bool,
}
