//! Intake: what arrived and how it was read, the quarantine, paused and resumed intake, and days reprocessed.

use super::*;

impl Api {
    pub(super) fn dataset_and_date(
        &self,
        req: &Request,
        date_field: &'static str,
    ) -> Result<(String, NaiveDate), ApiError> {
        let dataset = req
            .query("dataset")
            .ok_or_else(|| ApiError::bad("dataset", "give ?dataset="))?;
        if !self.definitions.datasets.contains_key(dataset) {
            return Err(ApiError::bad(
                "dataset",
                format!(
                    "no dataset {dataset:?}; the datasets are {:?}",
                    self.definitions.datasets.keys().collect::<Vec<_>>()
                ),
            ));
        }
        let date = req.query(date_field).ok_or_else(|| {
            ApiError::bad(date_field, format!("give ?{date_field}= (yyyy-mm-dd)"))
        })?;
        let date = date.parse::<NaiveDate>().map_err(|_| {
            ApiError::bad(
                date_field,
                format!("{date_field} {date:?} is not a date (yyyy-mm-dd)"),
            )
        })?;
        Ok((dataset.to_owned(), date))
    }

    /// Whether intake is paused, since when and by whom, how many mails wait for resume, and
    /// the intake's counters since `since` (default: the last pause or resume, the seed's
    /// "session", or a day back).
    pub(super) async fn intake_state(
        &self,
        req: Option<&Request>,
    ) -> Result<contract::IntakeState, ApiError> {
        use crate::counters::Kind;
        let control: Option<crate::intake_control::IntakeControl> = self
            .records
            .get_record(&RecordKey::intake_control())
            .await?;
        let parked = crate::intake_control::parked_count(self.records.as_ref()).await?;
        let now = Utc::now();
        let session = control
            .as_ref()
            .and_then(|c| DateTime::parse_from_rfc3339(&c.since).ok())
            .map_or(now - chrono::Duration::days(1), |t| t.with_timezone(&Utc));
        let since = match req {
            Some(req) => req.since(now, session)?,
            None => session.max(now - chrono::Duration::days(MAX_SINCE_DAYS)),
        };
        let (mut counts, start) = crate::counters::since(self.records.as_ref(), since, now).await?;
        counts.retain(|word, about| match Kind::parse(word) {
            Some(Kind::DeadLettered) => about == "ingest",
            Some(kind) => kind.is_intake(),
            None => false,
        });
        Ok(contract::IntakeState {
            paused: control.as_ref().is_some_and(|c| c.paused),
            since: control.as_ref().map(|c| c.since.clone()),
            by: control.as_ref().map(|c| c.by.clone()),
            parked: parked as u64,
            counters: counts.answer(start),
            resumed: None,
        })
    }

    /// A dataset's day: each attachment that had rows on it and what ingest made of it.
    pub(super) async fn outcomes(&self, req: &Request) -> Result<Reply, ApiError> {
        let (dataset, date) = self.dataset_and_date(req, "date")?;
        let attachments: Vec<(String, state::DayAttachment)> = self
            .records
            .records(&state::day_index(&dataset, date), "RAW#")
            .await?;
        let mut outcomes = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut totals = contract::RowTotals::default();
        for (_, a) in attachments {
            let Some((mailbox, message_id)) = a.mail() else {
                continue;
            };
            if !seen.insert((mailbox.to_owned(), message_id.to_owned())) {
                continue;
            }
            for o in self.records.outcomes_of_mail(mailbox, message_id).await? {
                if o.dataset != dataset {
                    continue;
                }
                let rows = contract::RowTotals {
                    rows_total: o.rows_total,
                    rows_new: o.rows_new,
                    rows_duplicate: o.rows_duplicate,
                    rows_rejected: o.rows_rejected,
                };
                totals += rows;
                outcomes.push(contract::AttachmentOutcome {
                    mailbox: o.mailbox,
                    message_id: o.message_id,
                    attachment: o.attachment,
                    dates: o.dates,
                    rows,
                    raw_key: o.raw_key,
                    quarantine_reason: o.quarantined,
                    received: a.received.to_rfc3339(),
                });
            }
        }
        // And the mail received that day that no dataset took, with why: a forwarded export,
        // another sender, a failed sender check.
        let unmatched = self
            .records
            .records::<state::UnmatchedMail>(&state::unmatched_day(date), "")
            .await?
            .into_iter()
            .map(|(_, m)| contract::UnmatchedMail {
                mailbox: m.mailbox,
                message_id: m.message_id,
                sender: m.sender,
                subject: m.subject,
                received: m.received.to_rfc3339(),
                attachments: m.attachments,
                reasons: m.reasons,
            })
            .collect();
        Reply::typed(
            200,
            &contract::DayOutcomes {
                dataset,
                date: date.to_string(),
                totals,
                outcomes,
                unmatched,
            },
        )
    }

    /// Quarantined files, each with its reason, in key order.
    pub(super) async fn quarantine(&self, req: &Request) -> Result<Reply, ApiError> {
        let prefix = match req.query("dataset") {
            Some(d) if self.definitions.datasets.contains_key(d) => format!("quarantine/{d}/"),
            Some(d) => return Err(ApiError::bad("dataset", format!("no dataset {d:?}"))),
            None => "quarantine/".to_owned(),
        };
        let limit = req.count("limit", 50, 200)?;
        let after = req.query("after");
        if after.is_some_and(|a| !a.starts_with(&prefix) || !object_key_ok(a)) {
            return Err(ApiError::bad(
                "after",
                "after is a next_after this API gave",
            ));
        }
        let mut files = Vec::new();
        let mut cursor = after.map(str::to_owned);
        let mut next = None;
        'pages: for _ in 0..10 {
            let page = self.objects.list(&prefix, cursor.as_deref(), 1000).await?;
            let exhausted = page.len() < 1000;
            for o in &page {
                cursor = Some(o.key.clone());
                let Some(file) = o.key.strip_suffix(".reason.json") else {
                    continue;
                };
                let reason: Option<contract::QuarantineReason> =
                    match self.objects.get(&o.key, None).await {
                        Ok(b) => serde_json::from_slice(&b)
                            .inspect_err(|e| warn!(key = o.key, error = %e, "a quarantine reason does not parse"))
                            .ok(),
                        Err(e) => {
                            warn!(key = o.key, error = %format!("{e:#}"), "a quarantine reason could not be read");
                            None
                        }
                    };
                files.push(contract::QuarantinedFile {
                    key: file.to_owned(),
                    reason: reason.as_ref().map(|r| r.reason.clone()),
                    dataset: reason.as_ref().and_then(|r| r.dataset.clone()),
                    attachment: reason.as_ref().and_then(|r| r.attachment.clone()),
                    mailbox: reason.as_ref().and_then(|r| r.mailbox.clone()),
                    message_id: reason.as_ref().map(|r| r.message_id.clone()),
                    downloaded: reason.as_ref().map(|r| r.downloaded),
                    quarantined_at: reason.map(|r| r.quarantined_at),
                });
                if files.len() == limit {
                    next = Some(o.key.clone());
                    break 'pages;
                }
            }
            if exhausted {
                break;
            }
        }
        Reply::typed(
            200,
            &contract::Quarantined {
                files,
                next_after: next,
            },
        )
    }

    pub(super) async fn start_reprocess(
        &self,
        req: &Request,
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        let ask: contract::StartReprocess = req.json()?;
        if !self.definitions.datasets.contains_key(&ask.dataset) {
            return Err(ApiError::bad(
                "dataset",
                format!("no dataset {:?}", ask.dataset),
            ));
        }
        let date = ask.date.parse::<NaiveDate>().map_err(|_| {
            ApiError::bad(
                "date",
                format!("date {:?} is not a date (yyyy-mm-dd)", ask.date),
            )
        })?;
        let request_id = format!(
            "{}.{date}.{}",
            ask.dataset,
            crate::invocation::new_correlation_id()
        );
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let record = state::ReprocessRecord {
            request_id: request_id.clone(),
            dataset: ask.dataset.clone(),
            date,
            status: ReprocessStatus::Queued,
            requested_at: now,
            requested_by: key.name.clone(),
            finished_at: None,
            counts: Default::default(),
            error: None,
        };
        self.records
            .put_record(&RecordKey::reprocess(&request_id), &record, None)
            .await?;
        let message = crate::messages::InboundMessage::Reprocess {
            v: 1,
            request_id: request_id.clone(),
            dataset: ask.dataset.clone(),
            date,
        };
        self.inbound.send(&message, &request_id).await?;
        let queued = contract::ReprocessQueued {
            request_id: request_id.clone(),
            status: ReprocessStatus::Queued,
            dataset: ask.dataset.clone(),
            date: date.to_string(),
        };
        let mut reply =
            Reply::typed(202, &queued)?.said(format!("reprocess {} {date}", ask.dataset));
        reply.location = Some(format!("/v1/reprocess/{request_id}"));
        Ok(reply)
    }

    pub(super) async fn reprocess_request(&self, id: &str) -> Result<Reply, ApiError> {
        let record: Option<contract::ReprocessRecord> =
            self.records.get_record(&RecordKey::reprocess(id)).await?;
        let record =
            record.ok_or_else(|| ApiError::not_found(format!("no reprocess request {id:?}")))?;
        Reply::typed(200, &record)
    }

    pub(super) async fn pause_intake(&self, key: &ApiKeyRecord) -> Result<Reply, ApiError> {
        self.set_intake_paused(true, key).await?;
        info!(by = key.name, "intake paused");
        Ok(Reply::typed(200, &self.intake_state(None).await?)?.said("pause intake"))
    }

    pub(super) async fn resume_intake(&self, key: &ApiKeyRecord) -> Result<Reply, ApiError> {
        self.set_intake_paused(false, key).await?;
        // The webhook and poller trust their copy of the flag for a few seconds: what they
        // park meanwhile is queued by the next resume (or shows in the count).
        let resumed =
            crate::intake_control::resume(self.records.as_ref(), self.inbound.as_ref()).await?;
        info!(by = key.name, resumed, "intake resumed");
        let state = contract::IntakeState {
            resumed: Some(resumed as u64),
            ..self.intake_state(None).await?
        };
        Ok(Reply::typed(200, &state)?.said(format!("resume intake: {resumed} queued")))
    }

    pub(super) async fn set_intake_paused(
        &self,
        paused: bool,
        key: &ApiKeyRecord,
    ) -> anyhow::Result<()> {
        let control = crate::intake_control::IntakeControl {
            paused,
            since: Utc::now().to_rfc3339(),
            by: key.name.clone(),
        };
        self.records
            .put_record(&RecordKey::intake_control(), &control, None)
            .await
    }

    pub(super) async fn poll_now(
        &self,
        req: &Request,
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        let asked = crate::messages::PollNow {
            v: 1,
            kind: crate::messages::PollNowKind::PollNow,
            requested_by: Some(key.name.clone()),
        };
        self.lifecycle.send(&asked, &req.request_id).await?;
        Ok(Reply::typed(202, &contract::PollQueued { queued: true })?.said("poll now"))
    }

    /// A quarantined file: redirected to a presigned URL valid for minutes.
    pub(super) async fn quarantine_file(&self, req: &Request) -> Result<Reply, ApiError> {
        let key = req
            .query("key")
            .ok_or_else(|| ApiError::bad("key", "give ?key= (a quarantined file's key)"))?;
        if !key.starts_with("quarantine/") || key.ends_with(".reason.json") || key.len() > 1024 {
            return Err(ApiError::bad(
                "key",
                "key is a quarantined file's key (quarantine/…)",
            ));
        }
        if self.objects.versions(key).await?.is_empty() {
            return Err(ApiError::not_found(format!("no quarantined file {key:?}")));
        }
        let url = self
            .objects
            .presigned_get(
                key,
                None,
                std::time::Duration::from_secs(DOWNLOAD_MINUTES * 60),
            )
            .await?;
        Ok(redirect(url))
    }

    /// The rows of an archived attachment that were rejected, with their lines and reasons.
    pub(super) async fn rejects(&self, req: &Request) -> Result<Reply, ApiError> {
        let raw = req
            .query("raw_key")
            .ok_or_else(|| ApiError::bad("raw_key", "give ?raw_key= (an outcome's raw_key)"))?;
        if !raw.starts_with("raw/") || !object_key_ok(raw) || raw.len() > 1000 {
            return Err(ApiError::bad(
                "raw_key",
                "raw_key is an archived attachment's key (raw/…)",
            ));
        }
        let key = format!("{raw}.rejects.json");
        if self.objects.versions(&key).await?.is_empty() {
            return Err(ApiError::not_found(format!(
                "no rejected rows recorded for {raw:?}"
            )));
        }
        let bytes = self.objects.get(&key, None).await?;
        let rejects: contract::RejectsFile = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::Error::new(e).context(format!("reading {key}")))?;
        Reply::typed(
            200,
            &contract::Rejects {
                raw_key: raw.to_owned(),
                rejects,
            },
        )
    }
}
