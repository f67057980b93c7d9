//! Report definitions and their stored workbooks (`/v1/reports…`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::definitions::{OnEmpty, TransportKind};
use crate::period::PeriodKind;
pub use crate::ports::ObjectInfo;

/// A report as defined, with when it fires next.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Report")]
pub struct ReportInfo {
    pub name: String,
    pub title: String,
    pub datasets: Vec<String>,
    /// An EventBridge Scheduler expression.
    pub schedule: String,
    pub time_zone: String,
    pub period: PeriodKind,
    pub next_run_at: Option<String>,
    /// In the report's zone, e.g. `2024-03-15 08:00 GMT`.
    pub next_run_local: Option<String>,
    pub recipients: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub transport: TransportKind,
    /// The relay whose outbox the mail goes to (transport `relay`).
    pub relay: Option<String>,
    pub on_empty: OnEmpty,
    /// Days each workbook is kept after it was built (`null`: until deleted).
    #[schemars(range(min = 1))]
    pub retain_days: Option<u32>,
    /// Each dataset's `retain_days`: days its rows, raw and quarantined files are kept after
    /// the row's day (`null`: until deleted).
    pub datasets_retain_days: BTreeMap<String, Option<u32>>,
}

/// `GET /v1/reports`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReportList {
    pub reports: Vec<ReportInfo>,
}

/// `GET /v1/reports/{report}/versions?period=…`: every stored version of the period's
/// workbook.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkbookVersions {
    pub report: String,
    pub period: String,
    pub key: String,
    pub versions: Vec<ObjectInfo>,
}
