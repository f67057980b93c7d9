//! report-builder: builds one report's workbook for one period, stores it in S3, records the run
//! and queues it for the mailer.
//!
//! - A run is claimed first (`RUN#{run_id}`): the same scheduled firing delivered twice
//!   (Scheduler is at-least-once) builds and mails once.
//! - Runs of the same report and period hold a lock (`LOCK#{report}#{period}`) while they build,
//!   so two never build at the same time; the second fails transiently and SQS retries it later.
//!   A re-run of a period writes a new S3 version and mails that one, never the old one again.
//! - Rows stream from DynamoDB a page at a time into the workbook (raw sheets in constant-memory
//!   mode, summaries aggregated on the fly): memory does not grow with the period's size
//!   beyond the finished workbook's bytes.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::adapters::aws::AwsClients;
use crate::adapters::object_store::key_segment;
use crate::adapters::queue::Queue;
use crate::adapters::state::Claim;
use crate::definitions::OnEmpty;
use crate::env::Env;
use crate::mail_template::{self, MailFacts};
use crate::messages::{MailRequest, ReportTrigger};
use crate::period::Period;
use crate::report_mail::XLSX_CONTENT_TYPE;
use crate::workbook::ReportWorkbook;

use super::Common;

pub struct ReportBuilder {
    common: Common,
    mail: Queue,
}

/// What a run did; also its record in state (`RUN#{run_id}` / `run`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub report: String,
    pub period: String,
    /// `built`, `skipped_empty`, `notice_sent` (empty period, "no data" mail queued) or
    /// `failed`; a repeated trigger returns the earlier run's record.
    pub status: String,
    pub rows: u64,
    #[serde(default)]
    pub sheets: Vec<String>,
    #[serde(default)]
    pub workbook_key: Option<String>,
    #[serde(default)]
    pub workbook_version: Option<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
    /// True when this invocation found the run already done and did nothing.
    #[serde(default)]
    pub repeated: bool,
    /// Why a failed run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReportBuilder {
    pub async fn from_env(env: &Env, clients: &AwsClients) -> anyhow::Result<Self> {
        Ok(ReportBuilder {
            common: Common::from_env(env, clients).await?,
            mail: Queue::new(clients.sqs.clone(), env.required("CHARLIE_MAIL_QUEUE_URL")?),
        })
    }

    pub async fn run(&self, trigger: ReportTrigger) -> anyhow::Result<RunRecord> {
        let defs = &self.common.definitions;
        let report_name = match &trigger {
            ReportTrigger::Scheduled { report, .. } | ReportTrigger::Run { report, .. } => report,
        };
        let def = defs
            .reports
            .get(report_name)
            .with_context(|| format!("unknown report {report_name:?}"))?;
        let (period, run_id) = match &trigger {
            ReportTrigger::Scheduled { scheduled_time, .. } => {
                let period = Period::previous(def.period, *scheduled_time, def.time_zone.0);
                let at = scheduled_time.format("%Y%m%dT%H%M%SZ");
                (period, format!("{report_name}.{period}.scheduled.{at}"))
            }
            ReportTrigger::Run { period, run_id, .. } => (
                *period,
                run_id.clone().unwrap_or_else(|| {
                    format!(
                        "{report_name}.{period}.request.{}",
                        super::new_correlation_id()
                    )
                }),
            ),
        };
        let span = tracing::info_span!("run", run_id, report = report_name, period = %period);
        let _enter = span.enter();
        let started = Utc::now();
        let claim_pk = format!("RUN#{run_id}");
        let state = &self.common.state;
        match state
            .claim(
                &claim_pk,
                started,
                chrono::Duration::minutes(15),
                chrono::Duration::days(400),
            )
            .await?
        {
            Claim::AlreadyDone(result) => {
                info!("run already done: nothing built, nothing mailed");
                let mut record: RunRecord =
                    serde_json::from_str(&result).context("the stored run result")?;
                record.repeated = true;
                return Ok(record);
            }
            Claim::InProgressElsewhere => {
                bail!("run {run_id} is being built by another invocation")
            }
            Claim::Acquired => {}
        }
        // One build per report and period at a time, whatever the runs.
        let lock_pk = format!("LOCK#{report_name}#{period}");
        match state
            .claim(
                &lock_pk,
                started,
                chrono::Duration::minutes(15),
                chrono::Duration::days(1),
            )
            .await
        {
            Ok(Claim::Acquired) => {}
            Ok(_) => {
                state.release_or_let_expire(&claim_pk).await;
                bail!(
                    "another run of {report_name} for {period} is building; this one is retried later"
                );
            }
            Err(e) => {
                state.release_or_let_expire(&claim_pk).await;
                return Err(e);
            }
        }
        let built = self.build_run(report_name, period, &run_id, started).await;
        state.release_or_let_expire(&lock_pk).await;
        let index_sk = format!("{period}#{run_id}");
        let index = Some((format!("REPORT#{report_name}"), index_sk));
        let index = index.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
        match built {
            Ok(record) => {
                let data = serde_json::to_value(&record)?;
                state.put_record(&claim_pk, "run", &data, index).await?;
                state
                    .complete(&claim_pk, &data.to_string(), Utc::now())
                    .await?;
                Ok(record)
            }
            Err(e) => {
                // The failure is on record (the claim is released: a retry may still succeed).
                let failed = RunRecord {
                    status: "failed".into(),
                    error: Some(format!("{e:#}")),
                    finished_at: Utc::now().to_rfc3339(),
                    ..RunRecord::new(&run_id, report_name, period, started)
                };
                if let Err(put) = state
                    .put_record(&claim_pk, "run", &serde_json::to_value(&failed)?, index)
                    .await
                {
                    warn!(error = %format!("{put:#}"), "could not record the failed run");
                }
                state.release_or_let_expire(&claim_pk).await;
                Err(e)
            }
        }
    }

    async fn build_run(
        &self,
        report_name: &str,
        period: Period,
        run_id: &str,
        started: chrono::DateTime<Utc>,
    ) -> anyhow::Result<RunRecord> {
        let defs = &self.common.definitions;
        let report = &defs.reports[report_name];
        let label = period.to_string();
        let datasets: Vec<(&str, &crate::definitions::Dataset)> = report
            .datasets
            .iter()
            .map(|d| (d.as_str(), &defs.datasets[d]))
            .collect();
        let mut wb = ReportWorkbook::new(report_name, report, &datasets, &label, Utc::now())?;
        let mut rows = 0u64;
        for (i, (name, ds)) in datasets.iter().enumerate() {
            let mut mails: BTreeSet<String> = BTreeSet::new();
            for day in period.days() {
                self.common
                    .rows
                    .each_row_of_day(name, ds, day, |r| {
                        if !mails.contains(&r.source) {
                            mails.insert(r.source.clone());
                        }
                        wb.aggregate(i, &r.values);
                        wb.write_row(i, &r.values)?;
                        rows += 1;
                        Ok(())
                    })
                    .await?;
            }
            wb.add_source_mails(i, mails.len());
        }
        let mut record = RunRecord {
            rows,
            ..RunRecord::new(run_id, report_name, period, started)
        };
        // The mail request, its subject rendered once the run's warnings are known.
        let request = |warnings: Vec<String>| -> anyhow::Result<MailRequest> {
            let subject = mail_template::render(
                report,
                &MailFacts {
                    report: report_name,
                    period: &label,
                    rows,
                    warnings: &warnings,
                    link: None,
                    no_data: rows == 0,
                },
                true,
            )?
            .subject;
            Ok(MailRequest {
                v: 1,
                run_id: run_id.to_owned(),
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
        if rows == 0 {
            record.finished_at = Utc::now().to_rfc3339();
            match report.on_empty {
                OnEmpty::Skip => {
                    info!("no rows in the period: nothing built or sent (on_empty = skip)");
                    record.status = "skipped_empty".into();
                }
                OnEmpty::Notice => {
                    self.mail.send(&request(vec![])?, run_id).await?;
                    info!("no rows in the period: a no-data notice is queued (on_empty = notice)");
                    record.status = "notice_sent".into();
                }
            }
            return Ok(record);
        }

        // The workbook goes to a temporary file and from there to S3 in parts: memory holds
        // neither its rows nor its bytes, whatever the period's size (the function's
        // ephemeral storage is sized for it in Terraform).
        let file =
            TempFile(std::env::temp_dir().join(format!("charlie-{}.xlsx", key_segment(run_id))));
        let saved = wb.finish()?.save(&file.0)?;
        let (size, sha256) = file_digest(&file.0)?;
        let key = format!("reports/{report_name}/{label}/{report_name}-{label}.xlsx");
        record.size = size;
        record.sha256 = Some(sha256);
        record.sheets = saved.sheets;
        record.warnings = saved.warnings;
        let stored = self
            .common
            .objects
            .put_file(&key, &file.0, XLSX_CONTENT_TYPE)
            .await?;
        record.workbook_key = Some(key.clone());
        record.workbook_version = stored.version_id.clone();
        let mut request = request(record.warnings.clone())?;
        request.workbook_key = Some(key);
        request.workbook_version = stored.version_id;
        request.workbook_size = record.size;
        self.mail.send(&request, run_id).await?;
        record.status = "built".into();
        record.finished_at = Utc::now().to_rfc3339();
        info!(
            rows,
            size = record.size,
            "workbook built and queued for mail"
        );
        Ok(record)
    }
}

impl RunRecord {
    fn new(run_id: &str, report: &str, period: Period, started: chrono::DateTime<Utc>) -> Self {
        RunRecord {
            run_id: run_id.to_owned(),
            report: report.to_owned(),
            period: period.to_string(),
            status: String::new(),
            rows: 0,
            sheets: vec![],
            workbook_key: None,
            workbook_version: None,
            size: 0,
            sha256: None,
            warnings: vec![],
            started_at: started.to_rfc3339(),
            finished_at: String::new(),
            repeated: false,
            error: None,
        }
    }
}

/// A file removed when dropped (after the upload, or on any failure).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
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
