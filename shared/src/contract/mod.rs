//! The control API's contract: the types the API answers with and the CLI and the dashboard
//! read, shared by all three so a renamed field or status breaks the build, not a run.

pub mod dead_letters;
pub mod health;
pub mod intake;
pub mod keys;
pub mod problem;
pub mod relays;
pub mod reports;
pub mod reprocess;
pub mod runs;
pub mod status;

pub use dead_letters::{DeadLetterQueue, DeadLetterQueues, DeadLetters, Letter, Redrive, Redriven};
pub use health::{
    DownstreamHealth, FolderHealth, Health, HealthStatus, QueueDepth, QueueHealth, Reachable,
};
pub use intake::{
    AttachmentOutcome, Counters, DayOutcomes, IntakeState, Metrics, QuarantineReason, Quarantined,
    QuarantinedFile, QueueCounts, RowTotals, UnmatchedMail,
};
pub use keys::{CreatedKey, KeyInfo, KeyList, NewKey};
pub use problem::Problem;
pub use relays::{CreatedRelay, NewRelay, RelayInfo, RelayList, RelayOverview, StuckMail};
pub use reports::{ObjectInfo, ReportInfo, ReportList, WorkbookVersions};
pub use reprocess::{ReprocessQueued, ReprocessRecord, StartReprocess};
pub use runs::{
    CancelRequested, Delivery, RunAnswer, RunDeliveries, RunList, RunQueued, RunSummary, StartRun,
};
pub use status::{DeliveryStatus, ReprocessStatus, RunStatus, Tone};
