//! CloudWatch metrics in Embedded Metric Format (EMF): stages record through the `metrics`
//! facade; in a Lambda function `metrics_cloudwatch_embedded`'s recorder collects them and
//! `charlie::lambda` writes them to stdout after each invocation, one JSON document per label
//! set, which CloudWatch Logs turns into metrics. Without a recorder (tests, the CLI) recording
//! does nothing.
//!
//! The contract the alarms and the dashboard in `infra/` are written against:
//! - namespace `CHARLIE_METRICS_NAMESPACE` (Terraform sets `Charlie/{name_prefix}`);
//! - each metric twice, once with the dimensions `[Stage]` and once with `[Stage, X]`, X being
//!   `Dataset`, `Report` or `Mailbox` (a per-stage metric such as `DeadLettered` has `[Stage]`
//!   only). Stage is the function's name without its prefix (`ingest`, `mailer`, …).
//!
//! Counted events (mails, rows, runs, deliveries, dead letters) are recorded where
//! `crate::counters` counts them, and only when it counts them: an SQS redelivery or a retry
//! after a crash records nothing twice, as it counts nothing twice.

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Metric names.
pub mod name {
    pub const MAILS_INGESTED: &str = "MailsIngested";
    pub const MAILS_IGNORED: &str = "MailsIgnored";
    pub const MAILS_DUPLICATE: &str = "MailsDuplicate";
    pub const ATTACHMENTS: &str = "Attachments";
    pub const ATTACHMENTS_QUARANTINED: &str = "AttachmentsQuarantined";
    pub const ROWS_NEW: &str = "RowsNew";
    pub const ROWS_DUPLICATE: &str = "RowsDuplicate";
    pub const ROWS_REJECTED: &str = "RowsRejected";
    pub const RUNS_BUILT: &str = "RunsBuilt";
    pub const RUNS_FAILED: &str = "RunsFailed";
    pub const RUN_DURATION: &str = "RunDuration";
    pub const WORKBOOK_BYTES: &str = "WorkbookBytes";
    pub const MAILS_SENT: &str = "MailsSent";
    pub const BOUNCES: &str = "Bounces";
    /// Report mail a relay's SMTP server (or Outlook) refused for good (the API records it).
    pub const RELAY_MAILS_REFUSED: &str = "RelayMailsRefused";
    /// How long the oldest report mail queued for a relay has waited (the poller looks).
    pub const RELAY_OUTBOX_OLDEST_AGE: &str = "RelayOutboxOldestAge";
    pub const COMPLAINTS: &str = "Complaints";
    pub const DELIVERIES: &str = "Deliveries";
    pub const GRAPH_THROTTLED: &str = "GraphThrottled";
    pub const DEAD_LETTERED: &str = "DeadLettered";
    pub const SUBSCRIPTION_SECONDS_TO_EXPIRY: &str = "SubscriptionSecondsToExpiry";
    pub const GRAPH_SECRET_SECONDS_TO_EXPIRY: &str = "GraphSecretSecondsToExpiry";
    pub const DOWNSTREAM_FAILURES: &str = "DownstreamFailures";
    pub const BREAKER_STATE: &str = "DownstreamBreakerState";
}

/// What a metric is about besides its stage: its second dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum About<'a> {
    Dataset(&'a str),
    Report(&'a str),
    Mailbox(&'a str),
}

impl About<'_> {
    fn dimension(self) -> (&'static str, String) {
        match self {
            About::Dataset(v) => ("Dataset", v.to_owned()),
            About::Report(v) => ("Report", v.to_owned()),
            About::Mailbox(v) => ("Mailbox", v.to_owned()),
        }
    }
}

/// Adds `n` to `metric` of `stage` (and of `about`, when given).
pub fn count(stage: &str, metric: &'static str, about: Option<About<'_>>, n: u64) {
    counter!(metric, "Stage" => stage.to_owned()).increment(n);
    if let Some(about) = about {
        let (dim, value) = about.dimension();
        counter!(metric, "Stage" => stage.to_owned(), dim => value).increment(n);
    }
}

/// Records one value of a distribution (a run's duration, a workbook's size).
pub fn record(stage: &str, metric: &'static str, about: Option<About<'_>>, value: f64) {
    histogram!(metric, "Stage" => stage.to_owned()).record(value);
    if let Some(about) = about {
        let (dim, v) = about.dimension();
        histogram!(metric, "Stage" => stage.to_owned(), dim => v).record(value);
    }
}

/// Sets a level (seconds to an expiry) for `stage`.
pub fn level(stage: &str, metric: &'static str, value: f64) {
    gauge!(metric, "Stage" => stage.to_owned()).set(value);
}

/// Every metric's unit, for the recorder's documents.
pub fn describe() {
    for metric in [
        name::MAILS_INGESTED,
        name::MAILS_IGNORED,
        name::MAILS_DUPLICATE,
        name::ATTACHMENTS,
        name::ATTACHMENTS_QUARANTINED,
        name::ROWS_NEW,
        name::ROWS_DUPLICATE,
        name::ROWS_REJECTED,
        name::RUNS_BUILT,
        name::RUNS_FAILED,
        "RunsSkippedEmpty",
        "RunsNoticeSent",
        "RunsCancelled",
        name::MAILS_SENT,
        name::BOUNCES,
        name::RELAY_MAILS_REFUSED,
        name::COMPLAINTS,
        name::DELIVERIES,
        "Rejects",
        "Sends",
        "RenderingFailures",
        "DeliveryDelays",
        name::GRAPH_THROTTLED,
        name::DEAD_LETTERED,
        name::DOWNSTREAM_FAILURES,
    ] {
        describe_counter!(metric, Unit::Count, "");
    }
    describe_gauge!(name::BREAKER_STATE, Unit::Count, "");
    describe_gauge!(name::RELAY_OUTBOX_OLDEST_AGE, Unit::Seconds, "");
    describe_histogram!(name::RUN_DURATION, Unit::Milliseconds, "");
    describe_histogram!(name::WORKBOOK_BYTES, Unit::Bytes, "");
    describe_gauge!(name::SUBSCRIPTION_SECONDS_TO_EXPIRY, Unit::Seconds, "");
    describe_gauge!(name::GRAPH_SECRET_SECONDS_TO_EXPIRY, Unit::Seconds, "");
}

/// The process's EMF recorder, installed once (a Lambda function is one process per stage).
#[cfg(feature = "lambda")]
pub fn install(namespace: &str) -> anyhow::Result<&'static metrics_cloudwatch_embedded::Collector> {
    static COLLECTOR: std::sync::OnceLock<&'static metrics_cloudwatch_embedded::Collector> =
        std::sync::OnceLock::new();
    if let Some(c) = COLLECTOR.get() {
        return Ok(c);
    }
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(namespace.to_owned())
        .init()
        .map_err(|e| anyhow::anyhow!("installing the EMF recorder: {e}"))?;
    describe();
    Ok(COLLECTOR.get_or_init(|| collector))
}
