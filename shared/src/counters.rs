//! Counters by the hour: what the pipeline did (mails processed, rows stored, runs built, mails
//! sent, bounces, …) summed since any point in time, for the control API's metrics and the
//! intake's counters.
//!
//! Each counted event has a stable id (a mail, a run and its end state, a delivery, an SES
//! event), and [`StateRecords::count_once`] adds its increments in one transaction with a
//! marker for that id: a retried message, a redelivery or a second invocation counts nothing
//! twice, and a crash before the count leaves it to the retry. Buckets are one record per
//! hour (`COUNTS#{day}` / `{hour}`), so a day's counters are one query; `since` is rounded down
//! to its hour, and the answer says which hour it started from.
//!
//! A counter's name is its kind, then `/` and the dataset, report or stage it is about
//! (`rows_new/ib_calls`); [`Counts::totals`] sums each kind over them.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};

use crate::metrics;
use crate::ports::StateRecords;
use crate::status::RunStatus;

/// How long an event's marker is kept: a redelivery later than this would count again, and
/// no queue keeps a message this long (SQS: 14 days at most).
pub const KEEP_MARKERS: Duration = Duration::days(35);

/// What a counter counts: its kind, stored as a word (`rows_new`, `runs_built`, `ses_bounce`)
/// before the `/` and what it is about. The API answers counters by these words; the metrics
/// ([`metric_of`]) read them back as kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A mail ingested (its attachments read), per mailbox.
    MailsProcessed,
    /// A mail no attachment of matched a dataset.
    MailsIgnored,
    /// A raw mail (from a relay) that could not be read at all: quarantined whole.
    MailsQuarantined,
    /// A mail ingested before under another id.
    MailsDuplicate,
    /// A message a stage gave up on (sent to its dead-letter queue), per stage.
    DeadLettered,
    RowsNew,
    RowsDuplicate,
    RowsRejected,
    Attachments,
    AttachmentsQuarantined,
    /// A run that ended so, per report: built, skipped_empty, notice_sent, cancelled, failed.
    RunEnded(RunStatus),
    MailsSent,
    /// An SES event on a report's delivery, by its type lowercased: bounce, complaint,
    /// delivery, reject, send, renderingfailure, deliverydelay, …
    Ses(String),
    /// A report mail a relay's sender refused for good, per report.
    RelayRefused,
}

/// The kinds without data, with their words.
const PLAIN: [(Kind, &str); 12] = [
    (Kind::MailsProcessed, "mails_processed"),
    (Kind::MailsIgnored, "mails_ignored"),
    (Kind::MailsQuarantined, "mails_quarantined"),
    (Kind::MailsDuplicate, "mails_duplicate"),
    (Kind::DeadLettered, "dead_lettered"),
    (Kind::RowsNew, "rows_new"),
    (Kind::RowsDuplicate, "rows_duplicate"),
    (Kind::RowsRejected, "rows_rejected"),
    (Kind::Attachments, "attachments"),
    (Kind::AttachmentsQuarantined, "attachments_quarantined"),
    (Kind::MailsSent, "mails_sent"),
    (Kind::RelayRefused, "relay_refused"),
];

impl Kind {
    /// The word it is stored and answered as.
    pub fn word(&self) -> String {
        match self {
            Kind::RunEnded(status) => format!("runs_{status}"),
            Kind::Ses(event) => format!("ses_{event}"),
            plain => PLAIN
                .iter()
                .find(|(k, _)| k == plain)
                .map(|(_, w)| (*w).to_owned())
                .unwrap_or_default(),
        }
    }

    /// The kind a stored word names; `None` for a word no kind has (written by a later
    /// version, say).
    pub fn parse(word: &str) -> Option<Kind> {
        if let Some((kind, _)) = PLAIN.iter().find(|(_, w)| *w == word) {
            return Some(kind.clone());
        }
        if let Some(status) = word.strip_prefix("runs_") {
            return status.parse().ok().map(Kind::RunEnded);
        }
        word.strip_prefix("ses_")
            .filter(|e| !e.is_empty())
            .map(|e| Kind::Ses(e.to_owned()))
    }

    /// What ingest counts (the intake's counters).
    pub fn is_intake(&self) -> bool {
        matches!(
            self,
            Kind::MailsProcessed
                | Kind::MailsIgnored
                | Kind::MailsDuplicate
                | Kind::MailsQuarantined
                | Kind::Attachments
                | Kind::AttachmentsQuarantined
                | Kind::RowsNew
                | Kind::RowsDuplicate
                | Kind::RowsRejected
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.word())
    }
}

/// Counter values by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts(pub BTreeMap<String, u64>);

impl Counts {
    /// Adds `n` to `kind/about`.
    pub fn add(&mut self, kind: Kind, about: &str, n: u64) {
        if n > 0 {
            *self.0.entry(format!("{kind}/{about}")).or_default() += n;
        }
    }

    /// Each counter whose word names a kind, as (kind, what it is about, value).
    pub fn kinds(&self) -> impl Iterator<Item = (Kind, &str, u64)> {
        self.split()
            .filter_map(|(word, about, n)| Kind::parse(word).map(|k| (k, about, n)))
    }

    /// The counters as the API answers them, summed from the hour `start`.
    pub fn answer(&self, start: DateTime<Utc>) -> crate::contract::Counters {
        crate::contract::Counters {
            since: start.to_rfc3339(),
            totals: self.totals(),
            by: self.by_about(),
        }
    }

    /// Each counter as (kind, what it is about, value); a name without `/` is about nothing.
    pub fn split(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.0.iter().map(|(name, n)| {
            let (kind, about) = name.split_once('/').unwrap_or((name.as_str(), ""));
            (kind, about, *n)
        })
    }

    /// Each kind summed over what it is about.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (kind, _, n) in self.split() {
            *out.entry(kind.to_owned()).or_default() += n;
        }
        out
    }

    /// For each dataset, report, mailbox or stage, its counters by kind.
    pub fn by_about(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (kind, about, n) in self.split().filter(|(_, a, _)| !a.is_empty()) {
            out.entry(about.to_owned())
                .or_default()
                .insert(kind.to_owned(), n);
        }
        out
    }

    /// The counters about `about` (a dataset, a report, a stage), by kind.
    pub fn about(&self, about: &str) -> BTreeMap<String, u64> {
        self.by_about().remove(about).unwrap_or_default()
    }

    /// Keeps the counters whose (kind, about) `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.0.retain(|name, _| {
            let (kind, about) = name.split_once('/').unwrap_or((name.as_str(), ""));
            keep(kind, about)
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The hour bucket `at` falls in: (pk, sk).
pub fn bucket(at: DateTime<Utc>) -> (String, String) {
    (
        format!("COUNTS#{}", at.format("%Y-%m-%d")),
        at.format("%H").to_string(),
    )
}

/// Counts `counts` for `event` (a stable id) in the hour of `at`, once.
pub async fn count(
    records: &dyn StateRecords,
    event: &str,
    at: DateTime<Utc>,
    counts: &Counts,
) -> anyhow::Result<bool> {
    if counts.is_empty() {
        return Ok(false);
    }
    let (pk, sk) = bucket(at);
    let increments: Vec<(String, u64)> = counts.0.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let counted = records
        .count_once(event, (&pk, &sk), &increments, at + KEEP_MARKERS)
        .await?;
    // The same events as CloudWatch metrics, as often as they are counted: once.
    if counted {
        record_metrics(counts);
    }
    Ok(counted)
}

/// Everything counted from the hour of `since` to now, and the hour it started from.
pub async fn since(
    records: &dyn StateRecords,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> anyhow::Result<(Counts, DateTime<Utc>)> {
    let start = since
        .duration_trunc(Duration::hours(1))
        .unwrap_or(since)
        .min(now);
    let (first_pk, first_sk) = bucket(start);
    let mut out = Counts::default();
    let mut day = start.date_naive();
    while day <= now.date_naive() {
        let pk = format!("COUNTS#{day}");
        for (hour, counters) in records.counters(&pk).await? {
            if pk == first_pk && hour < first_sk {
                continue;
            }
            for (name, n) in counters {
                *out.0.entry(name).or_default() += n;
            }
        }
        day = day.succ_opt().unwrap_or(day);
        if day == chrono::NaiveDate::MAX {
            break;
        }
    }
    Ok((out, start))
}

/// The metric a kind is recorded as, with the stage that counts it and the
/// dimension its `about` fills; `None` for a kind that is not a metric.
pub fn metric_of<'a>(
    kind: &Kind,
    about: &'a str,
) -> Option<(&'a str, &'static str, Option<metrics::About<'a>>)> {
    use crate::status::RunStatus;
    let ingest = |metric, about| Some(("ingest", metric, Some(about)));
    let report = |stage, metric| Some((stage, metric, Some(metrics::About::Report(about))));
    match kind {
        Kind::MailsProcessed => ingest(
            metrics::name::MAILS_INGESTED,
            metrics::About::Mailbox(about),
        ),
        Kind::MailsIgnored => ingest(metrics::name::MAILS_IGNORED, metrics::About::Mailbox(about)),
        Kind::MailsDuplicate => ingest(
            metrics::name::MAILS_DUPLICATE,
            metrics::About::Mailbox(about),
        ),
        // Quarantined whole: counted (the intake's counters), not a metric of its own.
        Kind::MailsQuarantined => None,
        Kind::Attachments => ingest(metrics::name::ATTACHMENTS, metrics::About::Dataset(about)),
        Kind::AttachmentsQuarantined => ingest(
            metrics::name::ATTACHMENTS_QUARANTINED,
            metrics::About::Dataset(about),
        ),
        Kind::RowsNew => ingest(metrics::name::ROWS_NEW, metrics::About::Dataset(about)),
        Kind::RowsDuplicate => ingest(
            metrics::name::ROWS_DUPLICATE,
            metrics::About::Dataset(about),
        ),
        Kind::RowsRejected => ingest(metrics::name::ROWS_REJECTED, metrics::About::Dataset(about)),
        Kind::MailsSent => report("mailer", metrics::name::MAILS_SENT),
        Kind::RelayRefused => report("api", metrics::name::RELAY_MAILS_REFUSED),
        Kind::DeadLettered => Some((about, metrics::name::DEAD_LETTERED, None)),
        Kind::RunEnded(status) => {
            let metric = match status {
                RunStatus::Built => metrics::name::RUNS_BUILT,
                RunStatus::Failed => metrics::name::RUNS_FAILED,
                RunStatus::SkippedEmpty => "RunsSkippedEmpty",
                RunStatus::NoticeSent => "RunsNoticeSent",
                RunStatus::Cancelled => "RunsCancelled",
                RunStatus::Queued | RunStatus::Building | RunStatus::Retrying => return None,
            };
            report("report-builder", metric)
        }
        Kind::Ses(event) => {
            let metric = match event.as_str() {
                "bounce" => metrics::name::BOUNCES,
                "complaint" => metrics::name::COMPLAINTS,
                "delivery" => metrics::name::DELIVERIES,
                "reject" => "Rejects",
                "send" => "Sends",
                "renderingfailure" => "RenderingFailures",
                "deliverydelay" => "DeliveryDelays",
                _ => return None,
            };
            report("mailer", metric)
        }
    }
}

/// Records what was just counted as CloudWatch metrics.
fn record_metrics(counts: &Counts) {
    for (kind, about, n) in counts.kinds() {
        if let Some((stage, metric, about)) = metric_of(&kind, about) {
            metrics::count(stage, metric, about, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemoryState;
    use chrono::TimeZone;

    #[tokio::test]
    async fn an_event_counts_once_and_counters_sum_from_the_hour_of_since() {
        let state = MemoryState::default();
        let at = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0).unwrap();
        let mut mail = Counts::default();
        mail.add(Kind::MailsProcessed, "all", 1);
        mail.add(Kind::RowsNew, "ib_calls", 40);
        mail.add(Kind::RowsNew, "dials", 2);
        assert!(count(&state, "mail/a", at(9, 10), &mail).await.unwrap());
        assert!(!count(&state, "mail/a", at(9, 50), &mail).await.unwrap());
        assert!(count(&state, "mail/b", at(11, 5), &mail).await.unwrap());
        let (counts, start) = since(&state, at(9, 30), at(12, 0)).await.unwrap();
        assert_eq!(start, at(9, 0));
        assert_eq!(counts.totals()["rows_new"], 84);
        assert_eq!(counts.about("ib_calls")["rows_new"], 80);
        let (counts, _) = since(&state, at(10, 0), at(12, 0)).await.unwrap();
        assert_eq!(counts.totals()["mails_processed"], 1);
        // A later day's buckets are read too.
        let next_day = Utc.with_ymd_and_hms(2026, 12, 2, 0, 30, 0).unwrap();
        assert!(count(&state, "mail/c", next_day, &mail).await.unwrap());
        let (counts, _) = since(&state, at(0, 0), next_day).await.unwrap();
        assert_eq!(counts.totals()["mails_processed"], 3);
    }

    #[test]
    fn every_kind_reads_back_from_its_word() {
        let mut kinds: Vec<Kind> = PLAIN.iter().map(|(k, _)| k.clone()).collect();
        kinds.extend(RunStatus::ALL.iter().map(|s| Kind::RunEnded(*s)));
        kinds.push(Kind::Ses("bounce".into()));
        for kind in kinds {
            assert_eq!(Kind::parse(&kind.word()), Some(kind.clone()), "{kind:?}");
        }
        assert_eq!(
            Kind::RunEnded(RunStatus::SkippedEmpty).word(),
            "runs_skipped_empty"
        );
        assert_eq!(Kind::parse("runs_nonsense"), None);
        assert_eq!(Kind::parse("ses_"), None);
        assert_eq!(Kind::parse("later_kind"), None);
    }

    #[test]
    fn every_counter_kind_the_stages_count_is_a_metric_with_its_stage() {
        use crate::status::RunStatus;
        assert_eq!(
            metric_of(&Kind::RowsNew, "ib_calls"),
            Some((
                "ingest",
                metrics::name::ROWS_NEW,
                Some(metrics::About::Dataset("ib_calls"))
            ))
        );
        assert_eq!(
            metric_of(&Kind::MailsProcessed, "ops@contoso.example"),
            Some((
                "ingest",
                metrics::name::MAILS_INGESTED,
                Some(metrics::About::Mailbox("ops@contoso.example"))
            ))
        );
        assert_eq!(
            metric_of(&Kind::RunEnded(RunStatus::Failed), "daily"),
            Some((
                "report-builder",
                metrics::name::RUNS_FAILED,
                Some(metrics::About::Report("daily"))
            ))
        );
        assert_eq!(
            metric_of(&Kind::Ses("bounce".into()), "daily"),
            Some((
                "mailer",
                metrics::name::BOUNCES,
                Some(metrics::About::Report("daily"))
            ))
        );
        assert_eq!(
            metric_of(&Kind::DeadLettered, "mailer"),
            Some(("mailer", metrics::name::DEAD_LETTERED, None))
        );
        assert_eq!(metric_of(&Kind::RunEnded(RunStatus::Queued), "daily"), None);
    }

    #[test]
    fn counted_words_become_kinds_and_unknown_words_are_left_out() {
        use crate::status::RunStatus;
        let mut counts = Counts::default();
        counts.add(Kind::RunEnded(RunStatus::Built), "daily", 2);
        counts.0.insert("runs_unheard_of/daily".into(), 1);
        let kinds: Vec<_> = counts.kinds().collect();
        assert_eq!(kinds, vec![(Kind::RunEnded(RunStatus::Built), "daily", 2)]);
    }
}
