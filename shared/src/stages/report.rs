//! report-builder: builds one report's workbook for one period, stores it in S3, records the
//! run and queues it for the mailer.
//!
//! - A run is claimed first (`RUN#{run id}`, the payload being its report and period): the
//!   same scheduled firing delivered twice (Scheduler is at-least-once) builds and mails once.
//! - Runs of the same report and period hold a lock (`LOCK#{report}#{period}`) while they
//!   build, so two never build at the same time; the second fails transiently and is retried.
//!   A re-run of a period writes a new S3 version and mails that one, never the old one again.
//! - Rows stream from the row store a page at a time to a writer thread (raw sheets in
//!   constant-memory mode, summaries aggregated on the fly), which saves the workbook to a
//!   temporary file and hashes it; the file goes to S3 in parts. Memory holds neither the
//!   period's rows nor the workbook's bytes, and no CPU-bound work runs on the async runtime.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tracing::{Instrument, debug, info, warn};

use crate::contract::{RunId, RunStatus};
use crate::definitions::{Definitions, OnEmpty};
use crate::failure::{FailureKind, busy, kind_of, permanent};
use crate::idempotency::{IdempotencyKey, Once, exclusive, once};
use crate::invocation::Invocation;
use crate::mail_template::{self, MailFacts};
use crate::messages::{MailRequest, ReportTrigger, RetentionSweep};
use crate::object_keys;
use crate::period::Period;
use crate::ports::{Claims, DeadLetters, Objects, RowStore, StateRecords, StoredRow, WorkQueue};
use crate::report_mail::XLSX_CONTENT_TYPE;
use crate::state::{self, RecordKey, RunRecord};
use crate::workbook::ReportWorkbook;
use aws_lambda_events::sqs::SqsMessage;

/// How long a run's claim is kept: the same firing within this time is recognised.
const KEEP_RUNS: chrono::Duration = chrono::Duration::days(400);
/// Pages on their way to the writer thread.
const PAGES_IN_FLIGHT: usize = 4;
/// How often a build looks for a cancel request between pages.
const CANCEL_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub struct ReportBuilder {
    pub definitions: Arc<Definitions>,
    pub rows: Arc<dyn RowStore>,
    pub claims: Arc<dyn Claims>,
    pub records: Arc<dyn StateRecords>,
    pub objects: Arc<dyn Objects>,
    pub mail: Arc<dyn WorkQueue>,
    pub dead_letters: Arc<dyn DeadLetters>,
}

#[cfg(feature = "report-builder")]
impl ReportBuilder {
    pub async fn from_env(env: &crate::env::Env) -> anyhow::Result<Self> {
        use super::wiring;
        let aws = crate::adapters::aws::AwsConfig::from_env(env).await;
        let objects = wiring::objects(&aws, env)?;
        let state = wiring::state(&aws, env)?;
        Ok(ReportBuilder {
            definitions: Arc::new(super::load_definitions(env, objects.as_ref()).await?),
            rows: wiring::rows(&aws, env).await?,
            claims: state.clone(),
            records: state,
            objects,
            mail: wiring::queue(&aws, env, "CHARLIE_MAIL_QUEUE_URL")?,
            dead_letters: wiring::dead_letters(&aws, env)?,
        })
    }
}

#[async_trait]
impl super::Handler for ReportBuilder {
    /// The `runs` queue's batch: every run (scheduled or requested) arrives as a message.
    async fn invoke(
        &self,
        event: serde_json::Value,
        invocation: &Invocation,
    ) -> anyhow::Result<serde_json::Value> {
        super::invoke_batch(self, event, invocation).await
    }
}

#[async_trait]
impl super::MessageHandler for ReportBuilder {
    const STAGE: &'static str = "report-builder";

    fn dead_letters(&self) -> &dyn DeadLetters {
        self.dead_letters.as_ref()
    }

    fn records(&self) -> &dyn StateRecords {
        self.records.as_ref()
    }

    async fn handle_message(&self, msg: SqsMessage, invocation: &Invocation) -> anyhow::Result<()> {
        let body = msg.body.as_deref().unwrap_or_default();
        if let Ok(sweep) = serde_json::from_str::<RetentionSweep>(body) {
            return self.sweep(sweep.scheduled_time).await;
        }
        let trigger: ReportTrigger = serde_json::from_str(body)
            .map_err(|e| permanent(format!("the message is not a run request: {e}")))?;
        let number = msg
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let attempt = Attempt {
            number,
            last: self
                .dead_letters
                .max_receives()
                .is_some_and(|m| number >= m),
        };
        Box::pin(self.run_attempt(trigger, invocation, attempt)).await?;
        Ok(())
    }
}

impl ReportBuilder {
    /// The retention sweep at `at`: every dataset with `retain_days` loses its rows of days
    /// before its cutoff (see [`crate::definitions::Dataset::retention_cutoff`]). A failure
    /// fails the message, which the queue retries; what was deleted stays deleted, so the
    /// retry deletes only the rest.
    pub async fn sweep(&self, at: DateTime<Utc>) -> anyhow::Result<()> {
        for (name, dataset) in &self.definitions.datasets {
            let Some(cutoff) = dataset.retention_cutoff(at) else {
                continue;
            };
            match self.rows.expire_before(name, cutoff).await? {
                Some(n) => info!(
                    dataset = name,
                    cutoff = %cutoff,
                    rows_deleted = n,
                    "retention: rows of days before the cutoff deleted"
                ),
                None => debug!(
                    dataset = name,
                    cutoff = %cutoff,
                    "retention: the row store expires rows by itself (TTL)"
                ),
            }
        }
        Ok(())
    }
}

/// Which attempt at a run this is.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// 1 for the first.
    pub number: u32,
    /// The queue gives up on the run if this one fails.
    pub last: bool,
}

impl Attempt {
    pub const FIRST: Attempt = Attempt {
        number: 1,
        last: false,
    };
}

/// A run's report, period and id. A scheduled run's id comes from the firing (the same
/// firing delivered twice is the same run); a requested run names its id (the control API
/// gives one) or gets a fresh one.
pub fn resolve(
    definitions: &Definitions,
    trigger: &ReportTrigger,
) -> anyhow::Result<(String, Period, RunId)> {
    resolve_run(definitions, trigger).map(|r| (r.report, r.period, r.run_id))
}

/// What a trigger asks for.
pub struct Resolved {
    pub report: String,
    pub period: Period,
    pub run_id: RunId,
    pub requested_at: String,
    pub requested_by: String,
}

/// The trigger's report, period, run id and who asked when.
pub fn resolve_run(definitions: &Definitions, trigger: &ReportTrigger) -> anyhow::Result<Resolved> {
    let report_name = match trigger {
        ReportTrigger::Scheduled { report, .. } | ReportTrigger::Run { report, .. } => report,
    };
    let def = definitions
        .reports
        .get(report_name)
        .ok_or_else(|| permanent(format!("unknown report {report_name:?}")))?;
    let (period, text) = match trigger {
        ReportTrigger::Scheduled { scheduled_time, .. } => {
            let period = Period::previous(def.period, *scheduled_time, def.time_zone.0);
            let at = scheduled_time.format("%Y%m%dT%H%M%SZ");
            (period, format!("{report_name}.{period}.scheduled.{at}"))
        }
        ReportTrigger::Run { period, run_id, .. } => (
            *period,
            run_id.as_ref().map(RunId::to_string).unwrap_or_else(|| {
                format!(
                    "{report_name}.{period}.request.{}",
                    crate::invocation::new_correlation_id()
                )
            }),
        ),
    };
    // A run id that is not one (over 256 characters, a control character) is never stored.
    let run_id = RunId::parse(&text).map_err(|e| permanent(format!("the trigger's run: {e}")))?;
    let at = |t: &chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (requested_at, requested_by) = match trigger {
        ReportTrigger::Scheduled { scheduled_time, .. } => (at(scheduled_time), "schedule".into()),
        ReportTrigger::Run {
            requested_at,
            requested_by,
            ..
        } => (
            at(&requested_at.unwrap_or_else(Utc::now)),
            requested_by.clone().unwrap_or_else(|| "request".into()),
        ),
    };
    Ok(Resolved {
        report: report_name.clone(),
        period,
        run_id,
        requested_at,
        requested_by,
    })
}

/// How far reading the period's rows went.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    All,
    Cancelled,
}

/// What the writer thread made of a period's rows.
struct WrittenWorkbook {
    rows: u64,
    /// The saved file, its size, SHA-256, sheets and warnings; `None` for an empty period.
    file: Option<(TempFile, u64, String, crate::workbook::Saved)>,
}

impl ReportBuilder {
    /// A first attempt at a run (tests and tools; the queue's messages go through
    /// [`ReportBuilder::run_attempt`] with their receive count).
    pub async fn run(
        &self,
        trigger: ReportTrigger,
        invocation: &Invocation,
    ) -> anyhow::Result<RunRecord> {
        self.run_attempt(trigger, invocation, Attempt::FIRST).await
    }

    /// Runs `trigger` once (claimed by its run id) and records what happened: `building`
    /// while at work, then the outcome; a failure is `retrying` unless it is permanent or
    /// the `attempt` is the last, then `failed`.
    pub async fn run_attempt(
        &self,
        trigger: ReportTrigger,
        invocation: &Invocation,
        attempt: Attempt,
    ) -> anyhow::Result<RunRecord> {
        let Resolved {
            report: report_name,
            period,
            run_id,
            requested_at,
            requested_by,
        } = resolve_run(&self.definitions, &trigger)?;
        let report_name = report_name.as_str();
        let span = tracing::info_span!("run", run_id = %run_id, report = report_name, period = %period, attempt = attempt.number);
        let label = period.to_string();
        let key = IdempotencyKey::new(state::run_claim(&run_id), &(report_name, &label));
        let started = Utc::now();
        let work = async {
            let index_sk = state::run_index_sk(&requested_at, &run_id);
            let index = Some((state::RUNS_INDEX, index_sk.as_str()));
            let run_key = RecordKey::run(&run_id);
            let base = RunRecord {
                attempts: attempt.number,
                requested_at: requested_at.clone(),
                requested_by: requested_by.clone(),
                ..new_record(&run_id, report_name, period, started)
            };
            if self.cancel_requested(&run_id).await? {
                info!("cancelled before it started: nothing built, nothing mailed");
                let record = cancelled(base);
                self.records.put_record(&run_key, &record, index).await?;
                return Ok(record);
            }
            let building = RunRecord {
                status: RunStatus::Building,
                deadline: Some(invocation.deadline.to_rfc3339()),
                ..base.clone()
            };
            self.records.put_record(&run_key, &building, index).await?;
            // One build per report and period at a time, whatever the runs.
            let lock = state::period_lock(report_name, &label);
            let built = exclusive(
                self.claims.as_ref(),
                &lock,
                invocation.deadline,
                self.build_run(report_name, period, &run_id, base.clone()),
            )
            .await
            .and_then(|built| {
                built.ok_or_else(|| {
                    busy(format!(
                        "another run of {report_name} for {period} is building; this one is retried later"
                    ))
                })
            });
            match built {
                Ok(record) => {
                    self.records.put_record(&run_key, &record, index).await?;
                    Ok(record)
                }
                Err(e) => {
                    // The failure is on record (the claim is released: a retry may succeed).
                    let for_good = attempt.last || kind_of(&e) == FailureKind::Permanent;
                    let failed = RunRecord {
                        status: if for_good {
                            RunStatus::Failed
                        } else {
                            RunStatus::Retrying
                        },
                        error: Some(format!("{e:#}")),
                        finished_at: Utc::now().to_rfc3339(),
                        ..base
                    };
                    if let Err(put) = self.records.put_record(&run_key, &failed, index).await {
                        warn!(error = %format!("{put:#}"), "could not record the failed run");
                    }
                    if for_good && let Err(count) = self.count_run(&failed).await {
                        warn!(error = %format!("{count:#}"), "could not count the failed run");
                    }
                    Err(e)
                }
            }
        };
        async {
            let record = match once(self.claims.as_ref(), &key, invocation, KEEP_RUNS, work).await?
            {
                Once::Ran(record) => record,
                Once::AlreadyDone(mut record) => {
                    info!("run already done: nothing built, nothing mailed");
                    record.repeated = true;
                    record
                }
            };
            // Also when done before: a crash between the run and its count leaves it here.
            self.count_run(&record).await?;
            Ok(record)
        }
        .instrument(span)
        .await
    }

    /// Counts a run's end (`runs_{status}/{report}`, once per run: `crate::counters`).
    async fn count_run(&self, record: &RunRecord) -> anyhow::Result<()> {
        let mut counts = crate::counters::Counts::default();
        counts.add(
            crate::counters::Kind::RunEnded(record.status),
            &record.report,
            1,
        );
        let event = format!("run/{}", record.run_id);
        crate::counters::count(self.records.as_ref(), &event, Utc::now(), &counts).await?;
        Ok(())
    }

    /// Whether an operator asked to cancel the run.
    async fn cancel_requested(&self, run_id: &str) -> anyhow::Result<bool> {
        Ok(self
            .records
            .get_record(&RecordKey::run_cancel(run_id))
            .await?
            .is_some())
    }

    async fn build_run(
        &self,
        report_name: &str,
        period: Period,
        run_id: &RunId,
        base: RunRecord,
    ) -> anyhow::Result<RunRecord> {
        let defs = &self.definitions;
        let report = &defs.reports[report_name];
        let label = period.to_string();
        let dataset_names = report.datasets.clone();

        // Pages go to the writer thread; this task only reads.
        let (pages, inbox) = tokio::sync::mpsc::channel::<(usize, Vec<StoredRow>)>(PAGES_IN_FLIGHT);
        let path =
            std::env::temp_dir().join(format!("charlie-{}.xlsx", object_keys::key_segment(run_id)));
        let writer = {
            let (defs, report_name, label) = (defs.clone(), report_name.to_owned(), label.clone());
            tokio::task::spawn_blocking(move || {
                write_workbook(&defs, &report_name, &label, inbox, TempFile(path))
            })
        };
        // At the first page and then at most every CANCEL_CHECK, a cancel request stops the
        // build.
        let read = async {
            let mut checked: Option<std::time::Instant> = None;
            for (i, name) in dataset_names.iter().enumerate() {
                let ds = &defs.datasets[name];
                for day in period.days() {
                    let mut day_pages = self.rows.day_pages(name, ds, day);
                    while let Some(page) = day_pages.try_next().await? {
                        if checked.is_none_or(|t| t.elapsed() >= CANCEL_CHECK) {
                            checked = Some(std::time::Instant::now());
                            if self.cancel_requested(run_id).await? {
                                return anyhow::Ok(Read::Cancelled);
                            }
                        }
                        if pages.send((i, page)).await.is_err() {
                            // The writer stopped; its error says why.
                            return Ok(Read::All);
                        }
                    }
                }
            }
            Ok(Read::All)
        }
        .await;
        drop(pages);
        let written = writer.await.context("the workbook writer thread")??;
        if read? == Read::Cancelled || self.cancel_requested(run_id).await? {
            info!(
                rows = written.rows,
                "cancelled while building: the workbook is discarded, nothing stored or mailed"
            );
            return Ok(cancelled(base));
        }

        let rows = written.rows;
        let mut record = RunRecord { rows, ..base };
        // The mail request, its subject rendered once the run's warnings are known.
        let request = |warnings: Vec<String>| -> anyhow::Result<MailRequest> {
            let subject = mail_template::render(
                &report.templates(),
                &MailFacts {
                    report: report_name,
                    period: &label,
                    rows,
                    warnings: &warnings,
                    link: None,
                    no_data: rows == 0,
                },
                true,
            )
            .map_err(permanent)?
            .subject;
            Ok(MailRequest {
                v: 1,
                run_id: run_id.clone(),
                report: report_name.to_owned(),
                title: report.title.clone(),
                period: label.clone(),
                workbook_key: None,
                workbook_version: None,
                workbook_size: 0,
                recipients: report.recipients.clone(),
                cc: report.cc.clone(),
                bcc: report.bcc.clone(),
                subject,
                rows,
                time_zone: report.time_zone.0.name().to_owned(),
                warnings,
            })
        };
        let Some((file, size, sha256, saved)) = written.file else {
            record.finished_at = Utc::now().to_rfc3339();
            match report.on_empty {
                OnEmpty::Skip => {
                    info!("no rows in the period: nothing built or sent (on_empty = skip)");
                    record.status = RunStatus::SkippedEmpty;
                }
                OnEmpty::Notice => {
                    self.mail.send(&request(vec![])?, run_id).await?;
                    info!("no rows in the period: a no-data notice is queued (on_empty = notice)");
                    record.status = RunStatus::NoticeSent;
                }
            }
            return Ok(record);
        };
        let key = object_keys::workbook(report_name, &label);
        record.size = size;
        record.sha256 = Some(sha256);
        record.sheets = saved.sheets;
        record.warnings = saved.warnings;
        let stored = self
            .objects
            .put_file(&key, &file.0, XLSX_CONTENT_TYPE)
            .await?;
        drop(file);
        record.workbook_key = Some(key.clone());
        record.workbook_version = stored.version_id.clone();
        let mut request = request(record.warnings.clone())?;
        request.workbook_key = Some(key);
        request.workbook_version = stored.version_id;
        request.workbook_size = record.size;
        self.mail.send(&request, run_id).await?;
        record.status = RunStatus::Built;
        record.finished_at = Utc::now().to_rfc3339();
        let about = Some(crate::metrics::About::Report(report_name));
        if let Ok(started) = chrono::DateTime::parse_from_rfc3339(&record.started_at) {
            let took = Utc::now() - started.with_timezone(&Utc);
            crate::metrics::record(
                "report-builder",
                crate::metrics::name::RUN_DURATION,
                about,
                took.num_milliseconds() as f64,
            );
        }
        crate::metrics::record(
            "report-builder",
            crate::metrics::name::WORKBOOK_BYTES,
            about,
            record.size as f64,
        );
        info!(
            rows,
            size = record.size,
            "workbook built and queued for mail"
        );
        Ok(record)
    }
}

/// The writer thread: aggregates and writes every page it receives, then (when there were
/// rows) saves the workbook to `file` and hashes it.
fn write_workbook(
    defs: &Definitions,
    report_name: &str,
    label: &str,
    mut inbox: tokio::sync::mpsc::Receiver<(usize, Vec<StoredRow>)>,
    file: TempFile,
) -> anyhow::Result<WrittenWorkbook> {
    let report = &defs.reports[report_name];
    let datasets: Vec<(&str, &crate::definitions::Dataset)> = report
        .datasets
        .iter()
        .map(|d| (d.as_str(), &defs.datasets[d]))
        .collect();
    let mut wb = ReportWorkbook::new(report_name, report, &datasets, label, Utc::now())?;
    let mut mails: Vec<BTreeSet<String>> = vec![BTreeSet::new(); datasets.len()];
    let mut rows = 0u64;
    while let Some((i, page)) = inbox.blocking_recv() {
        for r in page {
            if !mails[i].contains(&r.source) {
                mails[i].insert(r.source.clone());
            }
            wb.aggregate(i, &r.values);
            wb.write_row(i, &r.values)?;
            rows += 1;
        }
    }
    if rows == 0 {
        return Ok(WrittenWorkbook { rows, file: None });
    }
    for (i, m) in mails.iter().enumerate() {
        wb.add_source_mails(i, m.len());
    }
    let saved = wb.finish()?.save(&file.0)?;
    let (size, sha256) = file_digest(&file.0)?;
    Ok(WrittenWorkbook {
        rows,
        file: Some((file, size, sha256, saved)),
    })
}

fn cancelled(base: RunRecord) -> RunRecord {
    RunRecord {
        status: RunStatus::Cancelled,
        finished_at: Utc::now().to_rfc3339(),
        ..base
    }
}

fn new_record(
    run_id: &RunId,
    report: &str,
    period: Period,
    started: chrono::DateTime<Utc>,
) -> RunRecord {
    RunRecord {
        started_at: started.to_rfc3339(),
        ..RunRecord::new(run_id, report, &period.to_string(), RunStatus::Building)
    }
}

/// A file removed when dropped (after the upload, or on any failure).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(error = %e, path = %self.0.display(), "could not remove a temporary workbook");
        }
    }
}

/// Size and SHA-256 (hex) of a file, read in blocks.
fn file_digest(path: &std::path::Path) -> anyhow::Result<(u64, String)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut hash = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok((size, hex::encode(hash.finalize())));
        }
        hash.update(&block[..n]);
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::{
        MemoryClaims, MemoryDeadLetters, MemoryObjects, MemoryQueue, MemoryRowStore, MemoryState,
    };
    use crate::csv_ingest::{Origin, parse_attachment};
    use crate::failure::{FailureKind, kind_of};
    use crate::stages::testkit::{self, invocation};

    struct World {
        rows: Arc<MemoryRowStore>,
        claims: Arc<MemoryClaims>,
        records: Arc<MemoryState>,
        objects: Arc<MemoryObjects>,
        mail: Arc<MemoryQueue>,
        builder: ReportBuilder,
    }

    fn world() -> World {
        let (rows, claims, records) = (Arc::default(), Arc::default(), Arc::default());
        let (objects, mail) = (Arc::default(), Arc::default());
        let builder = ReportBuilder {
            definitions: testkit::definitions(),
            rows: Arc::clone(&rows) as _,
            claims: Arc::clone(&claims) as _,
            records: Arc::clone(&records) as _,
            objects: Arc::clone(&objects) as _,
            mail: Arc::clone(&mail) as _,
            dead_letters: Arc::new(MemoryDeadLetters::with_max_receives(5)),
        };
        World {
            rows,
            claims,
            records,
            objects,
            mail,
            builder,
        }
    }

    async fn store_calls(w: &World, day: &str, n: usize) {
        let defs = testkit::definitions();
        let ds = &defs.datasets["ib_calls"];
        let parsed = parse_attachment(ds, &testkit::ib_calls(day, n), &Origin::default()).unwrap();
        w.rows
            .store("ib_calls", ds, &parsed.rows, "mb/m-1", Utc::now())
            .await
            .unwrap();
    }

    fn run(report: &str, period: &str, run_id: Option<&str>) -> ReportTrigger {
        serde_json::from_value(serde_json::json!({
            "kind": "run", "report": report, "period": period, "run_id": run_id,
        }))
        .unwrap()
    }

    fn scheduled(report: &str, at: &str) -> ReportTrigger {
        serde_json::from_value(serde_json::json!({
            "kind": "scheduled", "report": report, "scheduled_time": at,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_period_with_rows_is_built_stored_recorded_and_queued_for_mail() {
        let w = world();
        store_calls(&w, "2024-03-14", 30).await;
        let record = w
            .builder
            .run(
                run("call_centre_daily", "2024-03-14", Some("r-1")),
                &invocation(),
            )
            .await
            .unwrap();
        assert_eq!((record.status.as_str(), record.rows), ("built", 30));
        let key = "reports/call_centre_daily/2024-03-14/call_centre_daily-2024-03-14.xlsx";
        assert_eq!(record.workbook_key.as_deref(), Some(key));
        let bytes = w.objects.current(key).unwrap();
        assert_eq!(record.size, bytes.len() as u64);
        assert_eq!(record.sha256, Some(hex::encode(Sha256::digest(&bytes))));
        use calamine::Reader;
        let mut book = calamine::Xlsx::new(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!(book.worksheet_range("ib_calls").unwrap().height(), 31);
        let requests: Vec<MailRequest> = w.mail.bodies();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].workbook_key.as_deref(), Some(key));
        assert_eq!(requests[0].workbook_version, record.workbook_version);
        assert_eq!(
            requests[0].subject,
            "Call-centre daily report for 2024-03-14"
        );
        let records: &dyn StateRecords = w.records.as_ref();
        let stored = records.get_record(&RecordKey::run("r-1")).await.unwrap();
        assert_eq!(stored, Some(record));
    }

    #[tokio::test]
    async fn the_same_firing_twice_builds_and_mails_once() {
        let w = world();
        store_calls(&w, "2024-03-14", 3).await;
        let trigger = scheduled("call_centre_daily", "2024-03-15T06:00:00Z");
        let first = w.builder.run(trigger.clone(), &invocation()).await.unwrap();
        assert_eq!(first.period, "2024-03-14");
        assert!(!first.repeated);
        let again = w.builder.run(trigger, &invocation()).await.unwrap();
        assert!(again.repeated);
        assert_eq!(again.run_id, first.run_id);
        assert_eq!(w.mail.sent().len(), 1);
    }

    #[tokio::test]
    async fn a_rerun_writes_and_mails_a_new_version() {
        let w = world();
        store_calls(&w, "2024-03-14", 3).await;
        let a = w
            .builder
            .run(run("call_centre_daily", "2024-03-14", None), &invocation())
            .await
            .unwrap();
        let b = w
            .builder
            .run(run("call_centre_daily", "2024-03-14", None), &invocation())
            .await
            .unwrap();
        assert_ne!(a.run_id, b.run_id);
        assert_ne!(a.workbook_version, b.workbook_version);
        let versions: Vec<Option<String>> = w
            .mail
            .bodies::<MailRequest>()
            .into_iter()
            .map(|r| r.workbook_version)
            .collect();
        assert_eq!(versions, vec![a.workbook_version, b.workbook_version]);
    }

    #[tokio::test]
    async fn a_held_period_lock_leaves_the_run_for_retry_and_then_lets_it_through() {
        let w = world();
        store_calls(&w, "2024-03-14", 3).await;
        let lock = state::period_lock("call_centre_daily", "2024-03-14");
        assert!(
            crate::idempotency::try_lock(
                w.claims.as_ref(),
                &lock,
                Utc::now() + chrono::Duration::minutes(5)
            )
            .await
            .unwrap()
        );
        let busy = w
            .builder
            .run(
                run("call_centre_daily", "2024-03-14", Some("r-held")),
                &invocation(),
            )
            .await
            .unwrap_err();
        assert_eq!(kind_of(&busy), FailureKind::Retryable);
        assert!(busy.to_string().contains("is building"), "{busy}");
        assert!(w.mail.sent().is_empty() && w.objects.keys().is_empty());
        w.claims.release(&lock).await.unwrap();
        let built = w
            .builder
            .run(
                run("call_centre_daily", "2024-03-14", Some("r-held")),
                &invocation(),
            )
            .await
            .unwrap();
        assert_eq!(built.status, RunStatus::Built);
        // Run again (a redelivery): done before, counted once.
        w.builder
            .run(
                run("call_centre_daily", "2024-03-14", Some("r-held")),
                &invocation(),
            )
            .await
            .unwrap();
        let now = Utc::now();
        let (counts, _) =
            crate::counters::since(w.records.as_ref(), now - chrono::Duration::hours(1), now)
                .await
                .unwrap();
        assert_eq!(counts.0["runs_built/call_centre_daily"], 1, "{counts:?}");
    }

    #[tokio::test]
    async fn an_empty_period_is_skipped_or_noticed_as_its_report_says() {
        let w = world();
        let skipped = w
            .builder
            .run(run("call_centre_daily", "2024-03-13", None), &invocation())
            .await
            .unwrap();
        assert_eq!(skipped.status, RunStatus::SkippedEmpty);
        assert!(w.mail.sent().is_empty() && w.objects.keys().is_empty());
        let noticed = w
            .builder
            .run(run("call_centre_weekly", "2024-W12", None), &invocation())
            .await
            .unwrap();
        assert_eq!(noticed.status, RunStatus::NoticeSent);
        let requests: Vec<MailRequest> = w.mail.bodies();
        assert_eq!(requests.len(), 1);
        assert!(
            requests[0].workbook_key.is_none(),
            "a notice carries no workbook"
        );
    }

    #[tokio::test]
    async fn a_failed_build_is_recorded_and_the_retry_builds() {
        let w = world();
        store_calls(&w, "2024-03-14", 3).await;
        w.objects.fault.set("SlowDown");
        let err = w
            .builder
            .run(
                run("call_centre_daily", "2024-03-14", Some("r-f")),
                &invocation(),
            )
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("SlowDown"), "{err:#}");
        let records: &dyn StateRecords = w.records.as_ref();
        let failed = records
            .get_record(&RecordKey::run("r-f"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(failed.status, RunStatus::Retrying, "the queue tries again");
        assert!(failed.error.unwrap().contains("SlowDown"));
        assert!(!w.claims.in_progress(&state::run_claim("r-f")), "released");
        assert!(
            !w.claims
                .in_progress(&state::period_lock("call_centre_daily", "2024-03-14"))
        );
        w.objects.fault.clear();
        let built = w
            .builder
            .run(
                run("call_centre_daily", "2024-03-14", Some("r-f")),
                &invocation(),
            )
            .await
            .unwrap();
        assert_eq!(built.status, RunStatus::Built);
        assert_eq!(w.mail.sent().len(), 1, "mailed once");
    }

    /// The run's messages as the `runs` queue delivers them, `receives` times each.
    fn runs_event(bodies: &[serde_json::Value], receives: u32) -> serde_json::Value {
        let records: Vec<serde_json::Value> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                serde_json::json!({
                    "messageId": format!("m{i}"), "body": b.to_string(),
                    "attributes": {"ApproximateReceiveCount": receives.to_string()},
                    "messageAttributes": {},
                    "eventSourceARN": "arn:aws:sqs:eu-west-2:123456789012:runs",
                })
            })
            .collect();
        serde_json::json!({ "Records": records })
    }

    #[tokio::test]
    async fn runs_arrive_as_a_queue_batch_and_a_bad_one_fails_alone() {
        use crate::stages::Handler;
        let w = world();
        store_calls(&w, "2024-03-14", 3).await;
        let good = serde_json::json!({"v": 1, "kind": "run", "report": "call_centre_daily", "period": "2024-03-14", "run_id": "q-1"});
        let unknown =
            serde_json::json!({"v": 1, "kind": "run", "report": "nope", "period": "2024-03-14"});
        let resp = w
            .builder
            .invoke(runs_event(&[good, unknown], 1), &invocation())
            .await
            .unwrap();
        assert_eq!(resp["batchItemFailures"], serde_json::json!([]));
        let records: &dyn StateRecords = w.records.as_ref();
        let built = records.get_record(&RecordKey::run("q-1")).await.unwrap();
        assert_eq!(
            built.map(|r| (r.status, r.attempts)),
            Some((RunStatus::Built, 1))
        );
        assert_eq!(w.mail.sent().len(), 1);
    }

    /// ib_calls keeps rows 730 days after their day: at the sweep of 2026-03-15 (London) the
    /// rows of 2024-03-14 are gone, those of 2024-03-15 are kept until the next day's sweep.
    #[tokio::test]
    async fn the_retention_sweep_deletes_the_rows_past_their_datasets_retain_days_only() {
        use crate::stages::Handler;
        let w = world();
        store_calls(&w, "2024-03-14", 3).await;
        store_calls(&w, "2024-03-15", 2).await;
        let defs = testkit::definitions();
        let ds = &defs.datasets["ib_calls"];
        assert_eq!(ds.retain_days, Some(730));
        let left = || async {
            let rows: &dyn RowStore = w.rows.as_ref();
            let mut n = Vec::new();
            for day in ["2024-03-14", "2024-03-15"] {
                let day = day.parse().unwrap();
                n.push(rows.rows_for_day("ib_calls", ds, day).await.unwrap().len());
            }
            n
        };
        let sweep =
            |at: &str| serde_json::json!({"v": 1, "kind": "retention", "scheduled_time": at});
        // 2026-03-14T23:30Z is still 2026-03-14 in London (GMT): the day of 2024-03-14 plus
        // 730 days, its last day kept.
        for (at, expected) in [
            ("2026-03-14T23:30:00Z", vec![3, 2]),
            ("2026-03-15T03:15:00Z", vec![0, 2]),
            ("2026-03-15T03:15:00Z", vec![0, 2]),
            ("2026-03-16T03:15:00Z", vec![0, 0]),
        ] {
            let resp = w
                .builder
                .invoke(runs_event(&[sweep(at)], 1), &invocation())
                .await
                .unwrap();
            assert_eq!(resp["batchItemFailures"], serde_json::json!([]), "{at}");
            assert_eq!(left().await, expected, "after the sweep at {at}");
        }
        // No run was built or mailed by a sweep.
        assert!(w.mail.sent().is_empty());
        // The DynamoDB rows' TTL says the same: a row of 2024-03-14 expires at the start of
        // 2026-03-15 in London.
        let expiry = ds.row_expiry("2024-03-14".parse().unwrap()).unwrap();
        assert_eq!(expiry.to_rfc3339(), "2026-03-15T00:00:00+00:00");
        // A failing store fails the message, to be retried.
        w.rows.fault.set("connection reset");
        let resp = w
            .builder
            .invoke(
                runs_event(&[sweep("2026-03-20T03:15:00Z")], 1),
                &invocation(),
            )
            .await
            .unwrap();
        assert_eq!(resp["batchItemFailures"][0]["itemIdentifier"], "m0");
    }

    #[tokio::test]
    async fn a_run_failing_on_its_last_receive_is_failed_and_dead_lettered_with_its_cause() {
        use crate::stages::Handler;
        let w = world();
        store_calls(&w, "2024-03-14", 3).await;
        w.objects.fault.set("SlowDown");
        let body = serde_json::json!({"v": 1, "kind": "run", "report": "call_centre_daily", "period": "2024-03-14", "run_id": "q-5"});
        let records: &dyn StateRecords = w.records.as_ref();
        let resp = w
            .builder
            .invoke(runs_event(std::slice::from_ref(&body), 4), &invocation())
            .await
            .unwrap();
        assert_eq!(resp["batchItemFailures"][0]["itemIdentifier"], "m0");
        let record = records
            .get_record(&RecordKey::run("q-5"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((record.status.as_str(), record.attempts), ("retrying", 4));

        let resp = w
            .builder
            .invoke(runs_event(&[body], 5), &invocation())
            .await
            .unwrap();
        assert_eq!(
            resp["batchItemFailures"],
            serde_json::json!([]),
            "handed to the DLQ"
        );
        let record = records
            .get_record(&RecordKey::run("q-5"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((record.status.as_str(), record.attempts), ("failed", 5));
        assert!(record.error.unwrap().contains("SlowDown"));
        let dead = w.builder.dead_letters.max_receives();
        assert_eq!(dead, Some(5));
        assert!(w.mail.sent().is_empty());
    }

    /// A row store that asks to cancel `run_id` when its rows are first read, as an operator
    /// would while the run builds.
    struct CancelOnRead {
        inner: Arc<MemoryRowStore>,
        records: Arc<MemoryState>,
        run_id: &'static str,
    }

    #[async_trait]
    impl RowStore for CancelOnRead {
        async fn store(
            &self,
            dataset_name: &str,
            dataset: &crate::definitions::Dataset,
            rows: &[crate::csv_ingest::KeyedRow],
            source: &str,
            now: chrono::DateTime<Utc>,
        ) -> anyhow::Result<crate::ports::StoreOutcome> {
            self.inner
                .store(dataset_name, dataset, rows, source, now)
                .await
        }

        fn day_pages<'a>(
            &'a self,
            dataset_name: &'a str,
            dataset: &'a crate::definitions::Dataset,
            date: chrono::NaiveDate,
        ) -> futures::stream::BoxStream<'a, anyhow::Result<Vec<StoredRow>>> {
            let cancel = state::RunCancel {
                requested_at: Utc::now().to_rfc3339(),
                by: "ops".into(),
            };
            let records: &dyn StateRecords = self.records.as_ref();
            futures::executor::block_on(records.put_record(
                &RecordKey::run_cancel(self.run_id),
                &cancel,
                None,
            ))
            .unwrap();
            self.inner.day_pages(dataset_name, dataset, date)
        }

        async fn delete_day(
            &self,
            dataset_name: &str,
            date: chrono::NaiveDate,
        ) -> anyhow::Result<u64> {
            self.inner.delete_day(dataset_name, date).await
        }

        async fn replace_day(
            &self,
            dataset_name: &str,
            dataset: &crate::definitions::Dataset,
            date: chrono::NaiveDate,
            staging: &str,
            since: chrono::DateTime<Utc>,
        ) -> anyhow::Result<crate::ports::Replaced> {
            self.inner
                .replace_day(dataset_name, dataset, date, staging, since)
                .await
        }

        async fn expire_before(
            &self,
            dataset_name: &str,
            cutoff: chrono::NaiveDate,
        ) -> anyhow::Result<Option<u64>> {
            self.inner.expire_before(dataset_name, cutoff).await
        }
    }

    #[tokio::test]
    async fn a_cancelled_run_stores_and_mails_nothing_before_or_while_it_builds() {
        let mut w = world();
        store_calls(&w, "2024-03-14", 450).await;
        let records: &dyn StateRecords = w.records.as_ref();
        let cancel = state::RunCancel {
            requested_at: Utc::now().to_rfc3339(),
            by: "ops".into(),
        };
        records
            .put_record(&RecordKey::run_cancel("c-before"), &cancel, None)
            .await
            .unwrap();
        let before = w
            .builder
            .run(
                run("call_centre_daily", "2024-03-14", Some("c-before")),
                &invocation(),
            )
            .await
            .unwrap();
        assert_eq!(before.status, RunStatus::Cancelled);

        w.builder.rows = Arc::new(CancelOnRead {
            inner: Arc::clone(&w.rows),
            records: Arc::clone(&w.records),
            run_id: "c-during",
        });
        let during = w
            .builder
            .run(
                run("call_centre_daily", "2024-03-14", Some("c-during")),
                &invocation(),
            )
            .await
            .unwrap();
        assert_eq!(during.status, RunStatus::Cancelled);
        assert!(w.objects.keys().is_empty(), "no workbook stored");
        assert!(w.mail.sent().is_empty(), "nothing mailed");
        let stored = records
            .get_record(&RecordKey::run("c-during"))
            .await
            .unwrap();
        assert_eq!(stored.map(|r| r.status), Some(RunStatus::Cancelled));
    }

    #[tokio::test]
    async fn an_unknown_report_a_reused_run_id_or_a_malformed_one_is_permanent() {
        let w = world();
        let unknown = w
            .builder
            .run(run("no_such_report", "2024-03-14", None), &invocation())
            .await
            .unwrap_err();
        assert_eq!(kind_of(&unknown), FailureKind::Permanent);
        w.builder
            .run(
                run("call_centre_daily", "2024-03-13", Some("r-x")),
                &invocation(),
            )
            .await
            .unwrap();
        let reused = w
            .builder
            .run(
                run("call_centre_daily", "2024-03-12", Some("r-x")),
                &invocation(),
            )
            .await
            .unwrap_err();
        assert_eq!(kind_of(&reused), FailureKind::Permanent);
        // A run id that is not one is never stored: the trigger fails for good, saying why.
        use crate::stages::MessageHandler;
        let long = "r".repeat(300);
        for bad in ["r\nx", long.as_str()] {
            let body = serde_json::json!({"kind": "run", "report": "call_centre_daily", "period": "2024-03-11", "run_id": bad});
            let mut msg = SqsMessage::default();
            msg.body = Some(body.to_string());
            let refused = w
                .builder
                .handle_message(msg, &invocation())
                .await
                .unwrap_err();
            assert_eq!(kind_of(&refused), FailureKind::Permanent);
            assert!(
                format!("{refused:#}").contains("is not a run id"),
                "{refused:#}"
            );
        }
    }

    #[tokio::test]
    async fn rows_read_in_many_pages_reach_the_workbook_once() {
        let w = world();
        store_calls(&w, "2024-03-14", 450).await;
        let record = w
            .builder
            .run(run("call_centre_daily", "2024-03-14", None), &invocation())
            .await
            .unwrap();
        assert_eq!(record.rows, 450, "five pages of the memory store");
    }
}
