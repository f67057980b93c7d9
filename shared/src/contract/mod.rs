//! The control API's contract: the types the API answers with and the CLI and the dashboard
//! read, shared by all three so a renamed field or status breaks the build, not a run.

pub mod dead_letters;
pub mod health;
pub mod intake;
pub mod keys;
pub mod problem;
pub mod relay_calls;
pub mod relays;
pub mod reports;
pub mod reprocess;
pub mod runs;

/// Ids and statuses live beside the records that hold them (`crate::ids`, `crate::status`);
/// the contract answers with them.
pub use crate::{ids, status};

pub use dead_letters::{DeadLetterQueue, DeadLetterQueues, DeadLetters, Letter, Redrive, Redriven};
pub use health::{
    DownstreamHealth, FolderHealth, Health, HealthStatus, QueueDepth, QueueHealth, Reachable,
};
pub use ids::{BadId, DatasetName, KeyId, RelayId, ReportName, RunId};
pub use intake::{
    AttachmentOutcome, Counters, DayOutcomes, IntakeState, Metrics, PollQueued, QuarantineReason,
    Quarantined, QuarantinedFile, QueueCounts, Rejects, RejectsFile, RowTotals, UnmatchedMail,
};
pub use keys::{AuditTrail, CreatedKey, KeyInfo, KeyList, NewKey};
pub use problem::Problem;
pub use relay_calls::{
    DeferralRecorded, MailDeferred, MailRefused, MailSent, Outbox, OutboxMail, RefusalRecorded,
    RelayHello, SentRecorded, UploadRequest, UploadTicket,
};
pub use relays::{CreatedRelay, NewRelay, RelayInfo, RelayList, RelayOverview, StuckMail};
pub use reports::{ObjectInfo, ReportInfo, ReportList, WorkbookVersions};
pub use reprocess::{ReprocessQueued, ReprocessRecord, StartReprocess};
pub use runs::{
    CancelRequested, Delivery, RunAnswer, RunDeliveries, RunList, RunQueued, RunSummary, StartRun,
};
pub use status::{DeliveryStatus, ReprocessStatus, RunStatus, Tone};
