//! report-builder: builds one report's workbook for one period, stores it in S3, records the run
//! and queues it for the mailer. A run is claimed first: the same scheduled firing delivered
//! twice (Scheduler is at-least-once) builds and mails once.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use chrono::{NaiveDate, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::adapters::aws::AwsClients;
use crate::adapters::queue::Queue;
use crate::adapters::state::Claim;
use crate::definitions::OnEmpty;
use crate::env::Env;
use crate::messages::{MailRequest, ReportTrigger};
use crate::period::previous_day;
use crate::report_mail::XLSX_CONTENT_TYPE;
use crate::value::Row;
use crate::workbook::{DatasetRows, WorkbookInput, build};

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
    /// `built`, `skipped_empty`, or (for a repeated trigger) the status of the earlier run.
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
        let (report_name, date, run_id) = match &trigger {
            ReportTrigger::Scheduled {
                report,
                scheduled_time,
                ..
            } => {
                let def = defs
                    .reports
                    .get(report)
                    .with_context(|| format!("unknown report {report:?}"))?;
                let date = previous_day(*scheduled_time, def.time_zone.0);
                (
                    report.clone(),
                    date,
                    format!(
                        "{report}.{date}.scheduled.{}",
                        scheduled_time.format("%Y%m%dT%H%M%SZ")
                    ),
                )
            }
            ReportTrigger::Run {
                report,
                date,
                run_id,
                ..
            } => (
                report.clone(),
                *date,
                run_id.clone().unwrap_or_else(|| {
                    format!("{report}.{date}.request.{}", super::new_correlation_id())
                }),
            ),
        };
        let span = tracing::info_span!("run", run_id, report = report_name, period = %date);
        let _enter = span.enter();
        let started = Utc::now();
        let claim_pk = format!("RUN#{run_id}");
        match self
            .common
            .state
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
        match self.build_run(&report_name, date, &run_id, started).await {
            Ok(record) => {
                let data = serde_json::to_value(&record)?;
                self.common
                    .state
                    .put_record(
                        &claim_pk,
                        "run",
                        &data,
                        Some((
                            &format!("REPORT#{report_name}"),
                            &format!("{date}#{run_id}"),
                        )),
                    )
                    .await?;
                self.common
                    .state
                    .complete(&claim_pk, &data.to_string(), Utc::now())
                    .await?;
                Ok(record)
            }
            Err(e) => {
                let _ = self.common.state.release(&claim_pk).await;
                Err(e)
            }
        }
    }

    async fn build_run(
        &self,
        report_name: &str,
        date: NaiveDate,
        run_id: &str,
        started: chrono::DateTime<Utc>,
    ) -> anyhow::Result<RunRecord> {
        let defs = &self.common.definitions;
        let report = &defs.reports[report_name];
        let period = date.format("%Y-%m-%d").to_string();

        let mut loaded: Vec<(&str, Vec<Row>, usize)> = Vec::new();
        for name in &report.datasets {
            let ds = &defs.datasets[name];
            let stored = self.common.rows.rows_for_day(name, ds, date).await?;
            let mails: BTreeSet<&str> = stored.iter().map(|r| r.source.as_str()).collect();
            let mails = mails.len();
            loaded.push((
                name.as_str(),
                stored.into_iter().map(|r| r.values).collect(),
                mails,
            ));
        }
        let rows: u64 = loaded.iter().map(|(_, r, _)| r.len() as u64).sum();
        let mut record = RunRecord {
            run_id: run_id.to_owned(),
            report: report_name.to_owned(),
            period: period.clone(),
            status: "built".into(),
            rows,
            sheets: vec![],
            workbook_key: None,
            workbook_version: None,
            size: 0,
            sha256: None,
            warnings: vec![],
            started_at: started.to_rfc3339(),
            finished_at: String::new(),
            repeated: false,
        };
        if rows == 0 && report.on_empty == OnEmpty::Skip {
            info!("no rows in the period: skipped as the definition says (on_empty = skip)");
            record.status = "skipped_empty".into();
            record.finished_at = Utc::now().to_rfc3339();
            return Ok(record);
        }

        let built = build(&WorkbookInput {
            report_name,
            report,
            period: &period,
            generated_at: Utc::now(),
            datasets: loaded
                .iter()
                .map(|(name, rows, mails)| DatasetRows {
                    name,
                    dataset: &defs.datasets[*name],
                    rows,
                    source_mails: *mails,
                })
                .collect(),
        })?;
        let key = format!("reports/{report_name}/{period}/{report_name}-{period}.xlsx");
        record.size = built.bytes.len() as u64;
        record.sha256 = Some(hex::encode(Sha256::digest(&built.bytes)));
        record.sheets = built.sheets.clone();
        record.warnings = built.warnings.clone();
        let stored = self
            .common
            .objects
            .put(&key, built.bytes, XLSX_CONTENT_TYPE)
            .await?;
        record.workbook_key = Some(key.clone());
        record.workbook_version = stored.version_id.clone();

        let request = MailRequest {
            v: 1,
            run_id: run_id.to_owned(),
            report: report_name.to_owned(),
            title: report.title.clone(),
            period: period.clone(),
            workbook_key: key,
            workbook_version: stored.version_id,
            workbook_size: record.size,
            recipients: report.recipients.clone(),
            subject: report.subject_for(report_name, &period),
            rows,
            time_zone: report.time_zone.0.name().to_owned(),
        };
        self.mail.send(&request, run_id).await?;
        record.finished_at = Utc::now().to_rfc3339();
        info!(
            rows,
            size = record.size,
            "workbook built and queued for mail"
        );
        Ok(record)
    }
}
