//! Runs: started (by a key, like the schedules' own), listed, shown with their deliveries, cancelled, rerun and downloaded.

use super::*;

impl Api {
    pub(super) async fn start_run(
        &self,
        report: &str,
        period: &str,
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        if !self.definitions.reports.contains_key(report) {
            return Err(ApiError {
                field: Some("report".into()),
                ..ApiError::new(
                    400,
                    "bad_request",
                    format!(
                        "no report {report:?}; the reports are {:?}",
                        self.definitions.reports.keys().collect::<Vec<_>>()
                    ),
                )
            });
        }
        let period = parse_period(period)?;
        let now = Utc::now();
        let run_id = RunId::parse(&format!(
            "{report}.{period}.api.{}",
            crate::invocation::new_correlation_id()
        ))
        .map_err(|e| anyhow::anyhow!("report {report:?} makes no run id: {e}"))?;
        let requested_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let queued = RunRecord {
            requested_at: requested_at.clone(),
            requested_by: key.name.clone(),
            ..RunRecord::new(&run_id, report, &period.to_string(), RunStatus::Queued)
        };
        let index = state::run_index_sk(&requested_at, &run_id);
        self.records
            .put_record(
                &RecordKey::run(&run_id),
                &queued,
                Some((RUNS_INDEX, &index)),
            )
            .await?;
        let trigger = ReportTrigger::Run {
            v: 1,
            report: report.to_owned(),
            period,
            run_id: Some(run_id.clone()),
            requested_at: Some(now),
            requested_by: Some(key.name.clone()),
        };
        self.runs.send(&trigger, &run_id).await?;
        info!(%run_id, report, %period, by = key.name, "run queued");
        let queued = contract::RunQueued {
            run_id: run_id.clone(),
            status: RunStatus::Queued,
            report: report.to_owned(),
            period: period.to_string(),
        };
        let mut reply = Reply::typed(202, &queued)?.said(format!("run {report} {period}"));
        reply.location = Some(format!("/v1/runs/{run_id}"));
        Ok(reply)
    }

    pub(super) async fn run_record(&self, id: &str) -> Result<RunRecord, ApiError> {
        self.records
            .get_record(&RecordKey::run(id))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no run {id:?}")))
    }

    pub(super) async fn list_runs(&self, req: &Request) -> Result<Reply, ApiError> {
        let limit = req.count("limit", 20, 100)?;
        let report = req.query("report");
        if let Some(r) = report
            && !self.definitions.reports.contains_key(r)
        {
            return Err(ApiError::bad("report", format!("no report {r:?}")));
        }
        let status = req
            .query("status")
            .map(|s| {
                s.parse::<RunStatus>()
                    .map_err(|e| ApiError::bad("status", format!("status {e}")))
            })
            .transpose()?;
        let day = |name: &'static str| -> Result<Option<NaiveDate>, ApiError> {
            req.query(name)
                .map(|d| {
                    d.parse::<NaiveDate>().map_err(|_| {
                        ApiError::bad(name, format!("{name} {d:?} is not a date (yyyy-mm-dd)"))
                    })
                })
                .transpose()
        };
        let (from, to) = (day("from")?, day("to")?);
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            return Err(ApiError::bad("to", "to is before from"));
        }
        let cursor = req.query("cursor").map(str::to_owned);
        if cursor.as_ref().is_some_and(|c| c.len() > MAX_ID_BYTES) {
            return Err(ApiError::bad("cursor", "cursor is not one this API gave"));
        }
        // Requested before the day after `to`, at or after `from` (index sk order = time).
        let upper = to
            .and_then(|t| t.succ_opt())
            .map(|t| format!("{t}T00:00:00"));
        let lower = from.map(|f| format!("{f}T00:00:00"));
        let mut before = match (&cursor, &upper) {
            (Some(c), Some(u)) => Some(c.clone().min(u.clone())),
            (Some(c), None) => Some(c.clone()),
            (None, u) => u.clone(),
        };
        let mut runs = Vec::new();
        let mut next_cursor = None;
        for _ in 0..20 {
            let page = self
                .records
                .query_index(RUNS_INDEX, before.as_deref(), lower.as_deref(), 100)
                .await?;
            let exhausted = page.len() < 100;
            for r in &page {
                before = Some(r.index_sk.clone());
                let Ok(run) = serde_json::from_str::<RunRecord>(&r.data) else {
                    warn!(
                        pk = r.pk,
                        "a run record that does not parse is left out of the list"
                    );
                    continue;
                };
                if report.is_some_and(|x| x != run.report)
                    || status.is_some_and(|x| x != run.status)
                {
                    continue;
                }
                runs.push(contract::RunSummary::from(&run));
                if runs.len() == limit {
                    next_cursor = Some(r.index_sk.clone());
                    break;
                }
            }
            if runs.len() == limit || exhausted {
                break;
            }
        }
        Reply::typed(200, &contract::RunList { runs, next_cursor })
    }

    pub(super) async fn show_run(&self, id: &RunId) -> Result<Reply, ApiError> {
        let run = self.run_record(id).await?;
        let cancel: Option<RunCancel> = self.records.get_record(&RecordKey::run_cancel(id)).await?;
        let deliveries = self.deliveries(id).await?;
        let stale = run.status == RunStatus::Building
            && run
                .deadline
                .as_deref()
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .is_some_and(|d| d < Utc::now());
        Reply::typed(
            200,
            &contract::RunAnswer {
                run,
                deliveries,
                cancel_requested: cancel.is_some(),
                stale,
            },
        )
    }

    /// A run's deliveries, one per recipient group, with their status and SES events.
    pub(super) async fn deliveries(&self, id: &str) -> Result<Vec<contract::Delivery>, ApiError> {
        let mut deliveries = Vec::new();
        for d in self.records.deliveries_of_run(id).await? {
            let news: Option<DeliveryNews> = self
                .records
                .get_record(&RecordKey::delivery_status(&d.delivery))
                .await?;
            let events = self
                .records
                .query(&d.delivery, "event#")
                .await?
                .into_iter()
                .filter_map(|(_, text)| serde_json::from_str(&text).ok())
                .collect();
            let result = d.result;
            deliveries.push(contract::Delivery {
                group: d.delivery.rsplit('#').next().unwrap_or_default().to_owned(),
                transport: result.transport,
                provider_message_id: result.provider_message_id,
                to: result.to,
                cc: result.cc,
                bcc: result.bcc,
                sent_at: result.sent_at,
                as_link: result.link.is_some(),
                link_expires: result.link,
                status: news.as_ref().map_or(result.status, |n| n.status),
                status_detail: news.map(|n| n.detail).filter(|d| !d.is_null()),
                events,
            });
        }
        Ok(deliveries)
    }

    pub(super) async fn cancel_run(
        &self,
        id: &RunId,
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        let run = self.run_record(id).await?;
        if run.status.is_final() {
            return Err(ApiError::conflict(format!(
                "run {id} is {}: there is nothing to cancel",
                run.status
            )));
        }
        let cancel = RunCancel {
            requested_at: Utc::now().to_rfc3339(),
            by: key.name.clone(),
        };
        self.records
            .put_record(&RecordKey::run_cancel(id), &cancel, None)
            .await?;
        info!(
            run_id = %id,
            by = key.name,
            status = %run.status,
            "cancel requested"
        );
        let asked = contract::CancelRequested {
            run_id: id.clone(),
            status: run.status,
            cancel_requested: true,
        };
        Ok(Reply::typed(202, &asked)?.said(format!("cancel run {id}")))
    }

    pub(super) async fn download(&self, id: &RunId) -> Result<Reply, ApiError> {
        let run = self.run_record(id).await?;
        let Some(key) = &run.workbook_key else {
            return Err(ApiError::not_found(format!(
                "run {id} has no workbook (it is {})",
                run.status
            )));
        };
        let url = self
            .objects
            .presigned_get(
                key,
                run.workbook_version.as_deref(),
                std::time::Duration::from_secs(DOWNLOAD_MINUTES * 60),
            )
            .await?;
        Ok(redirect(url))
    }

    /// A run's report and period started again (a new run).
    pub(super) async fn rerun(&self, id: &RunId, key: &ApiKeyRecord) -> Result<Reply, ApiError> {
        let run = self.run_record(id).await?;
        self.start_run(&run.report, &run.period, key).await
    }

    pub(super) async fn run_deliveries(&self, id: &RunId) -> Result<Reply, ApiError> {
        self.run_record(id).await?;
        Reply::typed(
            200,
            &contract::RunDeliveries {
                run_id: id.clone(),
                deliveries: self.deliveries(id).await?,
            },
        )
    }
}
