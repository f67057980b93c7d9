//! Intake: whether it runs, what each attachment of a day became, what was quarantined
//! (`/v1/intake…`), and the counters the intake and metrics answers carry.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happened since `since` (the start of an hour), counted once per event: `totals` by
/// kind, and `by` what they are about (a dataset, report, mailbox or stage) and kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Counters {
    pub since: String,
    pub totals: BTreeMap<String, u64>,
    pub by: BTreeMap<String, BTreeMap<String, u64>>,
}

/// `GET /v1/intake`, and the answer of pausing or resuming it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Intake")]
pub struct IntakeState {
    pub paused: bool,
    /// When it was last paused or resumed, and by whom.
    pub since: Option<String>,
    pub by: Option<String>,
    /// Mails that arrived while paused, waiting to be queued.
    pub parked: u64,
    pub counters: Counters,
    /// Of a resume: the parked mails it queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<u64>,
}

/// Row counts of an attachment, or of a day.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema)]
pub struct RowTotals {
    pub rows_total: u64,
    pub rows_new: u64,
    pub rows_duplicate: u64,
    pub rows_rejected: u64,
}

impl std::ops::AddAssign for RowTotals {
    fn add_assign(&mut self, o: RowTotals) {
        self.rows_total += o.rows_total;
        self.rows_new += o.rows_new;
        self.rows_duplicate += o.rows_duplicate;
        self.rows_rejected += o.rows_rejected;
    }
}

/// What ingest made of one attachment with rows on the day.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "Outcome")]
pub struct AttachmentOutcome {
    pub mailbox: String,
    pub message_id: String,
    pub attachment: String,
    pub dates: Vec<chrono::NaiveDate>,
    #[serde(flatten)]
    pub rows: RowTotals,
    pub raw_key: String,
    pub quarantine_reason: Option<String>,
    pub received: String,
}

/// A mail received on the day that no dataset took, with why.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct UnmatchedMail {
    pub mailbox: String,
    pub message_id: String,
    pub sender: String,
    pub subject: String,
    pub received: String,
    pub attachments: Vec<String>,
    /// Per dataset, the rule the mail failed.
    pub reasons: Vec<String>,
}

/// `GET /v1/intake/outcomes?dataset=…&date=…`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DayOutcomes {
    pub dataset: String,
    pub date: String,
    pub totals: RowTotals,
    pub outcomes: Vec<AttachmentOutcome>,
    /// Mail received on the date (UTC) that no dataset took (it matched none, or failed a
    /// dataset's sender check), with why.
    pub unmatched: Vec<UnmatchedMail>,
}

/// `quarantine/….reason.json`: why a file was quarantined, as ingest writes it beside the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct QuarantineReason {
    pub reason: String,
    pub dataset: Option<String>,
    /// Of a relay's mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    pub mailbox: Option<String>,
    pub message_id: String,
    pub attachment: Option<String>,
    pub raw_key: Option<String>,
    /// Whether the file itself was downloaded (and copied beside this).
    pub downloaded: bool,
    pub quarantined_at: String,
}

/// A quarantined file in `GET /v1/intake/quarantine` (its reason's fields are absent when the
/// reason could not be read).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct QuarantinedFile {
    pub key: String,
    pub reason: Option<String>,
    pub dataset: Option<String>,
    pub attachment: Option<String>,
    pub mailbox: Option<String>,
    pub message_id: Option<String>,
    pub downloaded: Option<bool>,
    pub quarantined_at: Option<String>,
}

/// `GET /v1/intake/quarantine`: in key order; `next_after` continues it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Quarantined {
    pub files: Vec<QuarantinedFile>,
    pub next_after: Option<String>,
}

/// A queue's depth in `GET /v1/metrics` (`depth` absent for Scheduler's, which has no source
/// queue).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct QueueCounts {
    pub depth: Option<u64>,
    pub dead_letters: u64,
}

/// `GET /v1/metrics`: counters, runs requested by status, and queue depths since a time.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Metrics {
    pub since: String,
    /// Runs by their status word.
    pub runs_by_status: BTreeMap<String, u64>,
    pub queues: BTreeMap<String, QueueCounts>,
    pub counters: Counters,
}

/// `{raw_key}.rejects.json` beside an archived attachment some of whose rows were rejected:
/// written by ingest, answered by `GET /v1/intake/rejects`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RejectsFile {
    pub attachment: String,
    pub raw_key: String,
    /// Absent from the files of versions before the line counts (read as 0).
    #[serde(default)]
    pub rows_rejected: u64,
    /// Every line of the file, by what it held.
    #[serde(default)]
    pub lines: crate::csv_ingest::LineCounts,
    /// The first rejects, in file order (`csv_ingest::MAX_REJECT_DETAILS`).
    pub rejects: Vec<crate::csv_ingest::Reject>,
}

/// `GET /v1/intake/rejects?raw_key=…`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Rejects {
    pub raw_key: String,
    pub rejects: RejectsFile,
}

/// `POST /v1/intake/poll` (202): the poller is asked to poll every folder now.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PollQueued {
    pub queued: bool,
}
