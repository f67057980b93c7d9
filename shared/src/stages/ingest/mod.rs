//! ingest: for each `inbound` message, claims the mail (so webhook, poller and SQS retries
//! process it once), fetches its attachments, matches them to datasets, archives each as
//! received, parses, dedups and stores its rows, quarantines what is unusable, and records and
//! forwards one outcome per attachment.
//!
//! A mail of any size finishes: attachments over [`IngestTuning::stream_above`] go from Graph
//! to S3 as a stream and are parsed from S3's stream, never held whole; and with less than
//! [`IngestTuning::checkpoint_margin`] left of the invocation, the stage writes how far it got
//! (`MSG#…` / `progress#{step}`) and queues a continuation on `inbound`, which re-reads the
//! archived file, skips the chunks stored and carries on. The outcomes are recorded and
//! forwarded once, when the mail's last attachment is done.

pub(crate) mod pipeline;
mod relay;
pub mod reprocess;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::contract::ReprocessStatus;
use crate::csv_ingest::{MAX_REJECT_DETAILS, ReadSummary, check_size};
use crate::definitions::{Dataset, Definitions};
use crate::failure::permanent;
use crate::idempotency::{IdempotencyKey, Once, once};
use crate::invocation::Invocation;
use crate::messages::{Inbound, InboundMessage, IngestOutcome};
use crate::object_keys;
use crate::ports::{
    AttachmentInfo, Claims, DeadLetters, MailMessage, MailSource, Objects, RowStore, StateRecords,
    WorkQueue,
};
use crate::sqs_batch::correlation_id;
use crate::state::{self, DayAttachment, FilePosition, MailProgress, RecordKey};
use pipeline::{Ended, Input};
use relay::Letter;
use reprocess::index_day;

/// Rows the store refused, kept in detail per attachment (all are counted).
const STORE_REJECT_DETAILS: usize = 100;

/// How long a mail's claim is kept: a mail announced again within this time is recognised.
const KEEP_CLAIMS: Duration = Duration::days(90);

/// The stage's sizes and margins (the defaults suit Lambda; tests make them small).
#[derive(Debug, Clone, Copy)]
pub struct IngestTuning {
    /// Rows parsed, stored and dropped at a time.
    pub chunk_rows: usize,
    /// Attachments larger than this are streamed to S3 and parsed from the stream.
    pub stream_above: u64,
    /// With less than this left of the invocation, the stage checkpoints and continues in a
    /// new one (it covers storing one chunk and writing the checkpoint).
    pub checkpoint_margin: Duration,
}

impl Default for IngestTuning {
    fn default() -> Self {
        IngestTuning {
            chunk_rows: 5_000,
            stream_above: 4 * 1024 * 1024,
            checkpoint_margin: Duration::seconds(30),
        }
    }
}

pub struct Ingest {
    pub definitions: Arc<Definitions>,
    pub mail: Arc<dyn MailSource>,
    pub objects: Arc<dyn Objects>,
    pub rows: Arc<dyn RowStore>,
    pub claims: Arc<dyn Claims>,
    pub records: Arc<dyn StateRecords>,
    /// Where continuations go (the `inbound` queue the stage consumes).
    pub inbound: Arc<dyn WorkQueue>,
    /// Where each outcome goes for the downstream API (`outbound`, the batch sender's queue);
    /// none when the deployment has no downstream API (`CHARLIE_OUTBOUND_QUEUE_URL` unset).
    pub outbound: Option<Arc<dyn WorkQueue>>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub tuning: IngestTuning,
}

/// What ingesting one mail did; stored as the claim's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MailSummary {
    /// `ingested`; `ignored` when no attachment matched a dataset; `duplicate` when the mail
    /// was ingested under another id; `continued` when a continuation carries on with it;
    /// `quarantined` when a raw mail could not be read at all (the reason is in `ignored`).
    pub status: String,
    pub outcomes: Vec<IngestOutcome>,
    /// Attachments that matched a dataset but were not taken, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

#[cfg(feature = "ingest")]
impl Ingest {
    pub async fn from_env(env: &crate::env::Env) -> anyhow::Result<Self> {
        use super::wiring;
        let aws = crate::adapters::aws::AwsConfig::from_env(env).await;
        let objects = wiring::objects(&aws, env)?;
        let state = wiring::state(&aws, env)?;
        Ok(Ingest {
            definitions: Arc::new(super::load_definitions(env, objects.as_ref()).await?),
            mail: wiring::graph(&aws, env).await?,
            objects,
            rows: wiring::rows(&aws, env).await?,
            claims: state.clone(),
            records: state,
            inbound: wiring::queue(&aws, env, "CHARLIE_INBOUND_QUEUE_URL")?,
            outbound: match env.get("CHARLIE_OUTBOUND_QUEUE_URL") {
                Some(_) => Some(wiring::queue(&aws, env, "CHARLIE_OUTBOUND_QUEUE_URL")?),
                None => None,
            },
            dead_letters: wiring::dead_letters(&aws, env)?,
            tuning: IngestTuning::default(),
        })
    }
}

#[async_trait]
impl super::Handler for Ingest {
    async fn invoke(
        &self,
        event: serde_json::Value,
        invocation: &Invocation,
    ) -> anyhow::Result<serde_json::Value> {
        super::invoke_batch(self, event, invocation).await
    }
}

#[async_trait]
impl super::MessageHandler for Ingest {
    const STAGE: &'static str = "ingest";

    fn dead_letters(&self) -> &dyn DeadLetters {
        self.dead_letters.as_ref()
    }

    fn records(&self) -> &dyn StateRecords {
        self.records.as_ref()
    }

    async fn handle_message(&self, msg: SqsMessage, invocation: &Invocation) -> anyhow::Result<()> {
        self.ingest_message(msg, invocation).await
    }
}

/// How far one (attachment, dataset) pair got in this invocation.
enum Step {
    Done(Box<IngestOutcome>),
    Paused(FilePosition),
}

/// One (attachment, dataset) pair to ingest.
struct Pair<'p> {
    info: &'p AttachmentInfo,
    /// Unique within the mail (two attachments may share a name).
    stored_name: &'p str,
    dataset_name: &'p str,
    dataset: &'p Dataset,
}

impl Ingest {
    pub async fn handle(&self, event: SqsEvent, invocation: &Invocation) -> SqsBatchResponse {
        super::handle_batch(self, event, invocation).await
    }

    /// A reprocess the control API asked for: once per request id (a redelivery of a done
    /// one does nothing), its status on record before, during and after.
    async fn reprocess(
        &self,
        request_id: &str,
        dataset: &str,
        date: chrono::NaiveDate,
        invocation: &Invocation,
    ) -> anyhow::Result<()> {
        use crate::state::ReprocessRecord;
        let key = RecordKey::reprocess(request_id);
        let Some(mut record) = self.records.get_record(&key).await? else {
            return Err(permanent(format!(
                "no reprocess request {request_id} on record (the API writes it before queueing)"
            )));
        };
        if record.dataset != dataset || record.date != date {
            return Err(permanent(format!(
                "reprocess request {request_id} is for {} {}, not {dataset} {date}",
                record.dataset, record.date
            )));
        }
        let claim = crate::idempotency::IdempotencyKey::new(
            format!("REPROCESS#{request_id}"),
            &(dataset, date),
        );
        record.status = ReprocessStatus::Running;
        self.records.put_record(&key, &record, None).await?;
        // One rebuild of a day at a time (it stages the day under one name).
        let lock = format!("LOCK#reprocess#{dataset}#{date}");
        let work = async {
            let rebuilt = crate::idempotency::exclusive(
                self.claims.as_ref(),
                &lock,
                invocation.deadline,
                reprocess::reprocess_day(
                    Arc::clone(&self.definitions),
                    self.rows.as_ref(),
                    self.records.as_ref(),
                    self.objects.as_ref(),
                    dataset,
                    date,
                ),
            )
            .await?;
            rebuilt.ok_or_else(|| {
                crate::failure::busy(format!(
                    "{dataset} {date} is being reprocessed by another request; retried later"
                ))
            })
        };
        let done = crate::idempotency::once(
            self.claims.as_ref(),
            &claim,
            invocation,
            chrono::Duration::days(30),
            work,
        )
        .await;
        let finished = Utc::now().to_rfc3339();
        let record = match &done {
            Ok(Once::Ran(o) | Once::AlreadyDone(o)) => ReprocessRecord {
                status: ReprocessStatus::Done,
                finished_at: Some(finished),
                counts: o.clone(),
                error: None,
                ..record
            },
            // Nothing of the day was touched: the record says so whatever an earlier try said.
            Err(e) => ReprocessRecord {
                status: if crate::failure::kind_of(e) == crate::failure::FailureKind::Permanent {
                    ReprocessStatus::Failed
                } else {
                    ReprocessStatus::Retrying
                },
                finished_at: Some(finished),
                counts: Default::default(),
                error: Some(format!("{e:#}")),
                ..record
            },
        };
        self.records.put_record(&key, &record, None).await?;
        info!(request_id, dataset, %date, status = %record.status, rows = record.counts.rows_stored, "reprocess");
        done.map(|_| ())
    }

    async fn ingest_message(&self, msg: SqsMessage, invocation: &Invocation) -> anyhow::Result<()> {
        let body = msg.body.as_deref().unwrap_or_default();
        let inbound = crate::messages::parse_inbound(body).map_err(|e| {
            permanent(format!(
                "not an inbound message (expected {{\"v\":1,\"kind\":\"graph_message\",…}} or an S3 event notification): {e}: {}",
                truncate(body, 200)
            ))
        })?;
        let correlation = correlation_id(&msg)
            .map(str::to_owned)
            .unwrap_or_else(crate::invocation::new_correlation_id);
        let inbound = match inbound {
            Inbound::Message(m) => m,
            Inbound::S3TestEvent => {
                info!("S3's test event (a notification was configured): nothing to do");
                return Ok(());
            }
            Inbound::Created {
                objects,
                other_events,
            } => {
                for event in other_events {
                    info!(event, "an S3 event that is not a creation: nothing to do");
                }
                for object in &objects {
                    self.relay_upload(object, &correlation, invocation).await?;
                }
                return Ok(());
            }
        };
        if let InboundMessage::Reprocess {
            request_id,
            dataset,
            date,
            ..
        } = &inbound
        {
            return self.reprocess(request_id, dataset, *date, invocation).await;
        }
        let (mailbox, message_id, step, source, relay) = match &inbound {
            InboundMessage::GraphMessage {
                mailbox,
                message_id,
                source,
                ..
            } => (mailbox, message_id, 0, Some(*source), None),
            InboundMessage::Continuation {
                mailbox,
                message_id,
                step,
                relay,
                ..
            } => (mailbox, message_id, *step, None, relay.as_deref()),
            InboundMessage::Reprocess { .. } => unreachable!("reprocess requests returned above"),
        };
        let done = if step == 0 {
            // The same mail whatever path announced it: the key and payload leave out the source.
            let key = IdempotencyKey::new(
                state::mail_claim(mailbox, message_id),
                &(mailbox, message_id),
            );
            let work = self.start_mail(
                mailbox,
                message_id,
                &Letter::Graph,
                &correlation,
                invocation,
            );
            once(self.claims.as_ref(), &key, invocation, KEEP_CLAIMS, work).await?
        } else {
            let key = IdempotencyKey::new(
                state::continuation_claim(mailbox, message_id, step),
                &(mailbox, message_id, step),
            );
            let work = self.continue_mail(mailbox, message_id, step, relay, invocation);
            once(self.claims.as_ref(), &key, invocation, KEEP_CLAIMS, work).await?
        };
        self.ingested(mailbox, message_id, step, source, done).await
    }

    /// Counts and logs a mail's claimed work, done now or before.
    async fn ingested(
        &self,
        mailbox: &str,
        message_id: &str,
        step: u32,
        source: Option<crate::messages::FoundBy>,
        done: Once<MailSummary>,
    ) -> anyhow::Result<()> {
        let summary = match &done {
            Once::Ran(s) | Once::AlreadyDone(s) => s,
        };
        // Also when done before: a crash between the work and its count leaves it to this
        // retry, and an event already counted counts nothing.
        self.count_mail(mailbox, message_id, summary).await?;
        match done {
            Once::AlreadyDone(_) => info!(
                mailbox,
                message_id,
                step,
                ?source,
                "mail already ingested: nothing to do"
            ),
            Once::Ran(summary) => info!(
                mailbox,
                message_id,
                step,
                ?source,
                status = summary.status,
                attachments = summary.outcomes.len(),
                "mail ingested"
            ),
        }
        Ok(())
    }

    /// Counts a mail once its last step is done (`crate::counters`).
    async fn count_mail(
        &self,
        mailbox: &str,
        message_id: &str,
        summary: &MailSummary,
    ) -> anyhow::Result<()> {
        use crate::counters::{Counts, Kind};
        let mut counts = Counts::default();
        match summary.status.as_str() {
            "ingested" => {
                counts.add(Kind::MailsProcessed, mailbox, 1);
                for o in &summary.outcomes {
                    counts.add(Kind::Attachments, &o.dataset, 1);
                    counts.add(Kind::RowsNew, &o.dataset, o.rows_new);
                    counts.add(Kind::RowsDuplicate, &o.dataset, o.rows_duplicate);
                    counts.add(Kind::RowsRejected, &o.dataset, o.rows_rejected);
                    if o.quarantined.is_some() {
                        counts.add(Kind::AttachmentsQuarantined, &o.dataset, 1);
                    }
                }
            }
            "ignored" => counts.add(Kind::MailsIgnored, mailbox, 1),
            "quarantined" => counts.add(Kind::MailsQuarantined, mailbox, 1),
            "duplicate" => counts.add(Kind::MailsDuplicate, mailbox, 1),
            _ => return Ok(()), // continued: its last step counts it
        }
        let event = format!("mail/{mailbox}/{message_id}");
        crate::counters::count(self.records.as_ref(), &event, Utc::now(), &counts).await?;
        Ok(())
    }

    /// The first invocation on a mail: the attachment list, then work (where the Message-ID
    /// guard is taken, once the mail has matched a dataset).
    async fn start_mail(
        &self,
        mailbox: &str,
        message_id: &str,
        letter: &Letter,
        correlation: &str,
        invocation: &Invocation,
    ) -> anyhow::Result<MailSummary> {
        let message = self.message_of(letter, mailbox, message_id).await?;
        let progress = MailProgress {
            step: 0,
            started: Utc::now(),
            correlation_id: correlation.to_owned(),
            attachments: self.attachments_of(letter, mailbox, message_id).await?,
            done: Vec::new(),
            at: None,
        };
        self.work_on(mailbox, &message, letter, progress, invocation)
            .await
    }

    /// The second guard, for a mail that matched a dataset (and passed its sender check): the
    /// same mail under another Graph id (from before immutable ids, or announced by another
    /// path, a relay's) is recognised by its Message-ID *from the same sender*. Taken only
    /// now, so a mail that matched nothing, failed authentication or came from someone else
    /// cannot claim a Message-ID ahead of the genuine export and make it a silent duplicate.
    /// `Some`: the duplicate's summary.
    async fn seen_by_message_id(
        &self,
        mailbox: &str,
        message: &MailMessage,
        invocation: &Invocation,
    ) -> anyhow::Result<Option<MailSummary>> {
        let Some(internet_id) = &message.internet_message_id else {
            return Ok(None);
        };
        let sender = message.sender().to_ascii_lowercase();
        let key = IdempotencyKey::new(
            state::internet_message_claim(mailbox, &sender, internet_id),
            &(mailbox, &sender, internet_id),
        );
        let first_seen = async { Ok(message.id.clone()) };
        let claimed = once(
            self.claims.as_ref(),
            &key,
            invocation,
            KEEP_CLAIMS,
            first_seen,
        );
        match claimed.await? {
            Once::AlreadyDone(first) if first != message.id => {
                info!(
                    mailbox,
                    message_id = message.id,
                    first_seen_as = first,
                    "the same mail (by Message-ID and sender) was ingested under another id: nothing to do"
                );
                Ok(Some(MailSummary {
                    status: "duplicate".into(),
                    outcomes: Vec::new(),
                    ignored: Vec::new(),
                }))
            }
            _ => Ok(None),
        }
    }

    /// Continuation `step` of a mail: carries on from the position its progress record holds.
    async fn continue_mail(
        &self,
        mailbox: &str,
        message_id: &str,
        step: u32,
        relay: Option<&str>,
        invocation: &Invocation,
    ) -> anyhow::Result<MailSummary> {
        let key = RecordKey::mail_progress(mailbox, message_id, step);
        let progress = self.records.get_record(&key).await?.ok_or_else(|| {
            permanent(format!(
                "continuation {step} of {mailbox}/{message_id} has no progress record {}/{}",
                key.pk, key.sk
            ))
        })?;
        let letter = match relay {
            Some(relay) => self.reread_relay_mail(relay, message_id).await?,
            None => Letter::Graph,
        };
        let message = self.message_of(&letter, mailbox, message_id).await?;
        self.work_on(mailbox, &message, &letter, progress, invocation)
            .await
    }

    /// Ingests the (attachment, dataset) pairs of a mail from where `progress` says, until
    /// done or until the deadline nears; then queues a continuation.
    async fn work_on(
        &self,
        mailbox: &str,
        message: &MailMessage,
        letter: &Letter,
        mut progress: MailProgress,
        invocation: &Invocation,
    ) -> anyhow::Result<MailSummary> {
        let subject = message.subject.clone().unwrap_or_default();
        let attachments = std::mem::take(&mut progress.attachments);
        let mut names = HashSet::new();
        let mut pairs = Vec::new();
        let mut stored_names = Vec::new();
        for (i, info) in attachments.iter().enumerate() {
            // Two attachments of one mail may share a name: the later ones are archived apart.
            stored_names.push(if names.insert(info.name.clone()) {
                info.name.clone()
            } else {
                format!("{}#{}", info.name, i + 1)
            });
        }
        let authenticated =
            crate::sender_auth::check(&message.headers, message.sender(), letter.trust());
        let mut ignored = Vec::new();
        for (i, info) in attachments.iter().enumerate() {
            for (name, ds) in &self.definitions.datasets {
                if ds.matches(message.sender(), &subject, &info.name) {
                    if let (true, Err(why)) = (ds.require_authenticated_sender, &authenticated) {
                        ignored.push(format!(
                            "{}: dataset {name} requires an authenticated sender: {why}",
                            info.name
                        ));
                        continue;
                    }
                    pairs.push(Pair {
                        info,
                        stored_name: &stored_names[i],
                        dataset_name: name,
                        dataset: ds,
                    });
                }
            }
        }
        for why in &ignored {
            warn!(
                mailbox,
                message_id = message.id,
                sender = message.sender(),
                reason = why,
                "attachment ignored"
            );
        }
        if pairs.is_empty() {
            if let Letter::Raw { relay, mail, .. } = letter
                && !mail.unreadable.is_empty()
            {
                // Nothing to ingest, and parts that may have held it: the operator must see it.
                let reason = mail.unreadable.join("; ");
                return self
                    .quarantine_mail(relay, &message.id, mailbox, reason, progress.started)
                    .await;
            }
            info!(
                mailbox,
                message_id = message.id,
                sender = message.sender(),
                subject,
                attachments = attachments.len(),
                "no attachment to ingest: mail ignored"
            );
            let names: Vec<&str> = attachments.iter().map(|a| a.name.as_str()).collect();
            let mut reasons: Vec<String> = self
                .definitions
                .datasets
                .iter()
                .filter_map(|(name, ds)| {
                    let why = ds.mismatch(message.sender(), &subject, &names)?;
                    Some(format!("{name}: {why}"))
                })
                .collect();
            reasons.extend(ignored.iter().cloned());
            let unmatched = state::UnmatchedMail {
                mailbox: mailbox.to_owned(),
                message_id: message.id.clone(),
                sender: message.sender().to_owned(),
                subject: subject.clone(),
                received: message.received.unwrap_or(progress.started),
                attachments: names.iter().map(|n| (*n).to_owned()).collect(),
                reasons,
            };
            self.records
                .put_record(&RecordKey::unmatched(&unmatched), &unmatched, None)
                .await?;
            return Ok(MailSummary {
                status: "ignored".into(),
                outcomes: Vec::new(),
                ignored,
            });
        }
        if progress.step == 0
            && progress.done.is_empty()
            && progress.at.is_none()
            && let Some(summary) = self
                .seen_by_message_id(mailbox, message, invocation)
                .await?
        {
            return Ok(summary);
        }
        let mut done = std::mem::take(&mut progress.done);
        let mut at = progress.at.take();
        // Small attachments are fetched once for all the datasets they match.
        let mut fetched: Option<(String, Vec<u8>)> = None;
        let mut worked = false;
        for pair in pairs.iter().skip(done.len()) {
            let margin = self.tuning.checkpoint_margin;
            if worked && invocation.remaining() < margin {
                break; // paused between pairs: `at` is None
            }
            let resume = at.take();
            match self
                .ingest_pair(
                    mailbox,
                    message,
                    letter,
                    pair,
                    resume,
                    &mut fetched,
                    invocation,
                    progress.started,
                )
                .await?
            {
                Step::Done(outcome) => {
                    done.push(*outcome);
                    worked = true;
                }
                Step::Paused(position) => {
                    at = Some(position);
                    break;
                }
            }
        }
        if done.len() < pairs.len() {
            let step = progress.step + 1;
            let next = MailProgress {
                step,
                done,
                at,
                attachments: attachments.clone(),
                ..progress
            };
            self.records
                .put_record(
                    &RecordKey::mail_progress(mailbox, &message.id, step),
                    &next,
                    None,
                )
                .await?;
            let continuation = InboundMessage::Continuation {
                v: crate::messages::MESSAGE_VERSION,
                mailbox: mailbox.to_owned(),
                message_id: message.id.clone(),
                step,
                relay: letter.relay().map(str::to_owned),
            };
            self.inbound
                .send(&continuation, &next.correlation_id)
                .await?;
            info!(
                mailbox,
                message_id = message.id,
                step,
                pairs_done = next.done.len(),
                pairs = pairs.len(),
                chunks_done = next.at.as_ref().map_or(0, |a| a.chunks_done),
                "deadline near: progress saved, continuation queued"
            );
            return Ok(MailSummary {
                status: "continued".into(),
                outcomes: next.done,
                ignored,
            });
        }
        for o in &done {
            self.records
                .put_record(&RecordKey::outcome(o), o, None)
                .await?;
        }
        let pairs: Vec<(&IngestOutcome, &str)> = done
            .iter()
            .map(|o| (o, progress.correlation_id.as_str()))
            .collect();
        if let Some(outbound) = &self.outbound {
            outbound.send_all(&pairs).await?;
        }
        Ok(MailSummary {
            status: "ingested".into(),
            outcomes: done,
            ignored,
        })
    }

    /// Archives (unless resuming), parses and stores one attachment for one dataset, from
    /// `resume` on; pauses after a chunk when the deadline nears.
    #[allow(clippy::too_many_arguments)]
    async fn ingest_pair(
        &self,
        mailbox: &str,
        message: &MailMessage,
        letter: &Letter,
        pair: &Pair<'_>,
        resume: Option<FilePosition>,
        fetched: &mut Option<(String, Vec<u8>)>,
        invocation: &Invocation,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Step> {
        let (info, dataset_name, dataset) = (pair.info, pair.dataset_name, pair.dataset);
        let received = message.received.unwrap_or(now);
        let place = object_keys::attachment_place(
            dataset_name,
            &received.format("%Y-%m-%d").to_string(),
            &message.id,
            pair.stored_name,
        );
        let raw_key = object_keys::raw(&place);
        let objects = &self.objects;
        let mut outcome = IngestOutcome {
            v: 1,
            mailbox: mailbox.to_owned(),
            message_id: message.id.clone(),
            attachment: info.name.clone(),
            dataset: dataset_name.to_owned(),
            dates: Vec::new(),
            rows_total: 0,
            rows_new: 0,
            rows_duplicate: 0,
            rows_rejected: 0,
            raw_key: raw_key.clone(),
            quarantined: None,
            lines: None,
        };
        let (raw, place) = (&raw_key, &place);
        let quarantine = |reason: String, archived: bool| async move {
            warn!(
                attachment = info.name,
                dataset = dataset_name,
                reason,
                "attachment unusable: quarantined"
            );
            let q = object_keys::quarantine(place);
            if archived {
                objects.copy(raw, &q).await?;
            }
            let why = crate::contract::QuarantineReason {
                reason: reason.clone(),
                dataset: Some(dataset_name.to_owned()),
                relay: None,
                mailbox: Some(mailbox.to_owned()),
                message_id: message.id.clone(),
                attachment: Some(info.name.clone()),
                raw_key: Some(raw.to_owned()),
                downloaded: archived,
                quarantined_at: now.to_rfc3339(),
            };
            put_json(objects.as_ref(), &format!("{q}.reason.json"), &why).await?;
            anyhow::Ok(reason)
        };
        let large = info.size > self.tuning.stream_above;
        let input = if resume.is_some() {
            // Carrying on: the file was archived by the invocation that started it.
            if large {
                let (body, size) = objects.get_stream(&raw_key).await?;
                Input::Stream(body, size)
            } else {
                Input::Bytes(objects.get(&raw_key, None).await?)
            }
        } else if let Err(over) = check_size(dataset, Some(info.size)) {
            // Not downloaded at all: the listed size is over the dataset's limit.
            outcome.quarantined = Some(quarantine(over.to_string(), false).await?);
            return Ok(Step::Done(Box::new(outcome)));
        } else if large {
            let body = self.stream_of(letter, mailbox, &message.id, info).await?;
            objects
                .put_stream(&raw_key, body, &info.content_type)
                .await?;
            let (body, size) = objects.get_stream(&raw_key).await?;
            Input::Stream(body, size)
        } else {
            let bytes = match fetched.take() {
                Some((id, bytes)) if id == info.id => bytes,
                _ => self.content_of(letter, mailbox, &message.id, info).await?,
            };
            objects
                .put(&raw_key, bytes.clone(), &info.content_type)
                .await?;
            *fetched = Some((info.id.clone(), bytes.clone()));
            Input::Bytes(bytes)
        };
        let source = format!("{mailbox}/{}", message.id);
        let mut position = resume.unwrap_or_default();
        let mut parsing = pipeline::parse(
            Arc::clone(&self.definitions),
            dataset_name.to_owned(),
            input,
            info.name.clone(),
            received,
            self.tuning.chunk_rows,
        );
        // Chunks come out of the same file in the same order each time: a continuation skips
        // the ones stored (their dates still count).
        let mut dates = BTreeSet::new();
        let mut chunks = 0;
        let mut next = parsing.next().await;
        while let Some(chunk) = next {
            dates.extend(chunk.iter().map(|r| r.date));
            chunks += 1;
            if chunks <= position.chunks_done {
                next = parsing.next().await;
                continue;
            }
            let mut stored = self
                .rows
                .store(dataset_name, dataset, &chunk, &source, now)
                .await?;
            position.chunks_done = chunks;
            position.rows_new += stored.new;
            position.rows_duplicate += stored.duplicate;
            position.store_rejected += stored.rejected.len() as u64;
            // Kept in the progress record, a state item under DynamoDB's 400 KB: a few suffice.
            let room = STORE_REJECT_DETAILS.saturating_sub(position.store_rejects.len());
            stored.rejected.truncate(room);
            position.store_rejects.append(&mut stored.rejected);
            // The reader is a chunk ahead: a file whose last chunk was just stored finishes
            // here rather than in a continuation.
            next = parsing.next().await;
            if next.is_some() && invocation.remaining() < self.tuning.checkpoint_margin {
                parsing.abandon();
                return Ok(Step::Paused(position));
            }
        }
        let mut parsed: ReadSummary = match parsing.finish().await? {
            Ended::Read(summary) => summary,
            Ended::Unusable(why, None) => {
                outcome.quarantined = Some(quarantine(why.to_string(), true).await?);
                return Ok(Step::Done(Box::new(outcome)));
            }
            Ended::Unusable(why, Some(summary)) => {
                // Part way: the rows before stay stored (and counted); the file is held
                // whole in quarantine so that it can be re-ingested once fixed.
                outcome.quarantined = Some(quarantine(why.to_string(), true).await?);
                summary
            }
        };
        if position.store_rejected > 0 {
            // Rows the store cannot hold (e.g. over DynamoDB's item size) count as rejected.
            parsed.rows_rejected += position.store_rejected;
            parsed.rows_unique -= position.store_rejected;
            parsed.rejects.append(&mut position.store_rejects);
            parsed.rejects.sort_by_key(|r| r.line);
            parsed.rejects.truncate(MAX_REJECT_DETAILS);
        }
        if !parsed.rejects.is_empty() {
            let report = crate::contract::RejectsFile {
                attachment: info.name.clone(),
                raw_key: raw_key.clone(),
                rows_rejected: parsed.rows_rejected,
                lines: parsed.lines,
                rejects: std::mem::take(&mut parsed.rejects),
            };
            put_json(
                objects.as_ref(),
                &format!("{raw_key}.rejects.json"),
                &report,
            )
            .await?;
        }
        let indexed = DayAttachment {
            raw_key: raw_key.clone(),
            source: source.clone(),
            mailbox: Some(mailbox.to_owned()),
            received,
            name: Some(info.name.clone()),
        };
        for date in &dates {
            index_day(self.records.as_ref(), dataset_name, *date, &indexed).await?;
        }
        outcome.dates = dates.into_iter().collect();
        outcome.rows_total = parsed.rows_total;
        outcome.rows_new = position.rows_new;
        outcome.rows_duplicate = parsed.duplicates + position.rows_duplicate;
        outcome.rows_rejected = parsed.rows_rejected;
        outcome.lines = Some(parsed.lines);
        info!(
            attachment = info.name,
            dataset = dataset_name,
            encoding = parsed.encoding,
            streamed = large,
            rows_total = outcome.rows_total,
            rows_new = outcome.rows_new,
            rows_duplicate = outcome.rows_duplicate,
            rows_rejected = outcome.rows_rejected,
            "attachment ingested"
        );
        Ok(Step::Done(Box::new(outcome)))
    }
}

/// A JSON document beside an archived file (a quarantine reason, an attachment's rejects).
async fn put_json<T: Serialize>(objects: &dyn Objects, key: &str, doc: &T) -> anyhow::Result<()> {
    let body = serde_json::to_vec_pretty(doc)?;
    objects.put(key, body, "application/json").await?;
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::{
        MemoryClaims, MemoryDeadLetters, MemoryMailbox, MemoryObjects, MemoryQueue, MemoryRowStore,
        MemoryState,
    };
    use crate::ports::FileAttachment;
    use crate::stages::testkit::{self, MAILBOX, failures, inbound, invocation, sqs_event};

    pub(super) struct World {
        pub(super) mail: Arc<MemoryMailbox>,
        pub(super) objects: Arc<MemoryObjects>,
        pub(super) rows: Arc<MemoryRowStore>,
        pub(super) claims: Arc<MemoryClaims>,
        pub(super) records: Arc<MemoryState>,
        pub(super) inbound: Arc<MemoryQueue>,
        pub(super) outbound: Arc<MemoryQueue>,
        pub(super) dead_letters: Arc<MemoryDeadLetters>,
        pub(super) ingest: Ingest,
    }

    pub(super) fn world() -> World {
        world_tuned(IngestTuning::default())
    }

    fn world_tuned(tuning: IngestTuning) -> World {
        let (mail, objects, rows) = (Arc::default(), Arc::default(), Arc::default());
        let (claims, records, inbound, outbound, dead_letters) = (
            Arc::default(),
            Arc::default(),
            Arc::default(),
            Arc::default(),
            Arc::default(),
        );
        let ingest = Ingest {
            definitions: testkit::definitions(),
            mail: Arc::clone(&mail) as _,
            objects: Arc::clone(&objects) as _,
            rows: Arc::clone(&rows) as _,
            claims: Arc::clone(&claims) as _,
            records: Arc::clone(&records) as _,
            inbound: Arc::clone(&inbound) as _,
            outbound: Some(Arc::clone(&outbound) as _),
            dead_letters: Arc::clone(&dead_letters) as _,
            tuning,
        };
        World {
            mail,
            objects,
            rows,
            claims,
            records,
            inbound,
            outbound,
            dead_letters,
            ingest,
        }
    }

    /// What the counters hold from an hour back.
    pub(super) async fn counted(w: &World) -> crate::counters::Counts {
        let now = Utc::now();
        let since = now - chrono::Duration::hours(1);
        crate::counters::since(w.records.as_ref(), since, now)
            .await
            .unwrap()
            .0
    }

    fn day(d: &str) -> chrono::NaiveDate {
        d.parse().unwrap()
    }

    /// A deployment without a downstream API has no outbound queue: the outcomes are recorded
    /// and nothing is queued.
    #[tokio::test]
    async fn without_a_downstream_api_outcomes_are_recorded_and_not_queued() {
        let mut w = world();
        w.ingest.outbound = None;
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 5));
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        let records: &dyn StateRecords = w.records.as_ref();
        let outcomes = records.outcomes_of_mail(MAILBOX, "m-1").await.unwrap();
        assert_eq!(outcomes.len(), 1);
        assert!(w.outbound.sent().is_empty());
    }

    #[tokio::test]
    async fn a_mail_announced_three_times_is_stored_once() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 5));
        let announced = vec![inbound("m-1"), inbound("m-1"), inbound("m-1")];
        let resp = w.ingest.handle(sqs_event(&announced), &invocation()).await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 5);
        let records: &dyn StateRecords = w.records.as_ref();
        let outcomes = records.outcomes_of_mail(MAILBOX, "m-1").await.unwrap();
        assert_eq!(outcomes.len(), 1);
        assert_eq!((outcomes[0].rows_total, outcomes[0].rows_new), (5, 5));
        assert_eq!(w.outbound.sent().len(), 1, "one outcome forwarded");
        assert_eq!(w.outbound.sent()[0].correlation_id, "corr-0");
        let summary: MailSummary =
            serde_json::from_str(&w.claims.result(&state::mail_claim(MAILBOX, "m-1")).unwrap())
                .unwrap();
        assert_eq!(summary.status, "ingested");
        let counts = counted(&w).await;
        assert_eq!(
            counts.totals()["mails_processed"],
            1,
            "announced thrice, counted once"
        );
        assert_eq!(counts.about("ib_calls")["rows_new"], 5);
        assert!(
            w.objects
                .current("raw/ib_calls/2024-03-14/m-1/ib_calls_2024-03-14.csv")
                .is_some(),
            "archived as received: {:?}",
            w.objects.keys()
        );
    }

    #[tokio::test]
    async fn rows_already_stored_by_another_mail_count_as_duplicates() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 3));
        w.mail
            .deliver(testkit::ib_calls_mail("m-2", "2024-03-14", 5));
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1"), inbound("m-2")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        let records: &dyn StateRecords = w.records.as_ref();
        let second = &records.outcomes_of_mail(MAILBOX, "m-2").await.unwrap()[0];
        assert_eq!((second.rows_new, second.rows_duplicate), (2, 3));
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 5);
        let counts = counted(&w).await.about("ib_calls");
        assert_eq!((counts["rows_new"], counts["rows_duplicate"]), (5, 3));
    }

    #[tokio::test]
    async fn an_unusable_attachment_is_quarantined_and_the_mail_counts_as_handled() {
        let w = world();
        w.mail.deliver(testkit::mail(
            "m-broken",
            "2024-03-15T12:00:00Z",
            "IB calls export 2024-03-15",
            "ib_calls_2024-03-15.csv",
            b"agent_id,queue\r\nA1,Sales\r\n",
        ));
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-broken")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty(), "no retry loop for bad input");
        let place = "ib_calls/2024-03-15/m-broken/ib_calls_2024-03-15.csv";
        assert!(w.objects.current(&format!("quarantine/{place}")).is_some());
        let reason: serde_json::Value = serde_json::from_slice(
            &w.objects
                .current(&format!("quarantine/{place}.reason.json"))
                .unwrap(),
        )
        .unwrap();
        assert!(
            reason["reason"].as_str().unwrap().contains("call_id"),
            "{reason}"
        );
        let records: &dyn StateRecords = w.records.as_ref();
        let outcome = &records.outcomes_of_mail(MAILBOX, "m-broken").await.unwrap()[0];
        assert!(outcome.quarantined.is_some());
        assert_eq!(
            counted(&w).await.about("ib_calls")["attachments_quarantined"],
            1
        );
        assert!(
            w.claims
                .result(&state::mail_claim(MAILBOX, "m-broken"))
                .is_some()
        );
    }

    /// 12,000 good rows, then a quote that never closes and runs past `max_field_bytes`, read
    /// in chunks of 5,000: every row before the error is stored (the last, partial chunk
    /// too), the file is quarantined with its reason, and the outcome's counts add up.
    #[tokio::test]
    async fn a_file_unusable_part_way_stores_every_row_before_it_and_counts_add_up() {
        let w = world();
        let bytes = testkit::ib_calls_cut_short("2024-03-14", 12_000);
        let lines = crate::csv_records::physical_lines(&bytes);
        w.mail.deliver(testkit::mail(
            "m-cut",
            "2024-03-14T12:00:00Z",
            "IB calls export 2024-03-14",
            "ib_calls_2024-03-14.csv",
            &bytes,
        ));
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-cut")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 12_000);
        let records: &dyn StateRecords = w.records.as_ref();
        let o = &records.outcomes_of_mail(MAILBOX, "m-cut").await.unwrap()[0];
        assert!(
            o.quarantined
                .as_deref()
                .unwrap()
                .contains("max_field_bytes"),
            "{o:?}"
        );
        assert_eq!(
            (o.rows_total, o.rows_new, o.rows_duplicate, o.rows_rejected),
            (12_000, 12_000, 0, 0)
        );
        let l = o.lines.unwrap();
        assert!(l.balanced(), "{l:?}");
        assert_eq!((l.total, l.valid, l.unread), (lines, 12_000, 1100));
        assert_eq!(counted(&w).await.about("ib_calls")["rows_new"], 12_000);
    }

    #[tokio::test]
    async fn a_mail_without_a_matching_attachment_is_ignored_once() {
        let w = world();
        w.mail.deliver(testkit::mail(
            "m-lunch",
            "2024-03-14T12:30:00Z",
            "Lunch on Friday?",
            "menu.csv",
            b"dish\nsoup\n",
        ));
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-lunch")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert!(w.outbound.sent().is_empty());
        assert!(w.objects.keys().is_empty());
        let summary: MailSummary = serde_json::from_str(
            &w.claims
                .result(&state::mail_claim(MAILBOX, "m-lunch"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(summary.status, "ignored");
    }

    #[tokio::test]
    async fn attachments_that_match_no_dataset_are_not_downloaded() {
        let w = world();
        let mut mail = testkit::ib_calls_mail("m-1", "2024-03-14", 2);
        mail.attachments.push(FileAttachment {
            id: "m-1-logo".into(),
            name: "logo.png".into(),
            content_type: "image/png".into(),
            bytes: vec![0x89, b'P', b'N', b'G'],
        });
        w.mail.deliver(mail);
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.mail.content_fetches(), 1, "only the CSV was fetched");
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 2);
    }

    #[tokio::test]
    async fn the_same_mail_under_another_id_is_recognised_by_its_message_id() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 3));
        let mut again = testkit::ib_calls_mail("m-1-moved", "2024-03-14", 3);
        again.message.internet_message_id = Some("<m-1@dialer.example>".into());
        w.mail.deliver(again);
        let resp = w
            .ingest
            .handle(
                sqs_event(&[inbound("m-1"), inbound("m-1-moved")]),
                &invocation(),
            )
            .await;
        assert!(failures(&resp).is_empty());
        let summary: MailSummary = serde_json::from_str(
            &w.claims
                .result(&state::mail_claim(MAILBOX, "m-1-moved"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(summary.status, "duplicate");
        assert_eq!(w.outbound.sent().len(), 1, "one outcome, not two");
        assert_eq!(w.mail.content_fetches(), 1);
    }

    /// A mail that matched nothing, one whose sender failed authentication and one from
    /// another sender, each carrying the genuine export's Message-ID and arriving first, leave
    /// the genuine export to be ingested: the Message-ID is claimed only after the match and
    /// the sender check, under the sender.
    #[tokio::test]
    async fn an_earlier_mail_with_the_same_message_id_cannot_pre_empt_the_genuine_one() {
        let toml = include_str!("../../../../reports.toml").replacen(
            "require_authenticated_sender = true\n",
            "require_authenticated_sender = true\n",
            1,
        );
        let mut w = world();
        w.ingest.definitions = Arc::new(Definitions::parse(&toml).unwrap());
        let genuine_id = "<export-42@dialer.example>";
        let pass = "spf=pass smtp.mailfrom=dialer.example; dkim=pass header.d=dialer.example; dmarc=pass header.from=dialer.example";
        let header = |value: &str| crate::ports::MessageHeader {
            name: "Authentication-Results".into(),
            value: value.into(),
        };
        // 1. matches no dataset (a forwarded copy under another name).
        let mut ignored = testkit::ib_calls_mail("m-ignored", "2024-03-14", 3);
        ignored.attachments[0].name = "forwarded.csv".into();
        // 2. the dialer's address, but DMARC fails (forged From).
        let mut forged = testkit::ib_calls_mail("m-forged", "2024-03-14", 3);
        forged.message.headers = vec![header(
            "spf=fail smtp.mailfrom=evil.example; dmarc=fail header.from=dialer.example",
        )];
        // 3. another sender altogether (matches no dataset by its sender).
        let mut external = testkit::ib_calls_mail("m-external", "2024-03-14", 3);
        external.message.from = Some(crate::ports::Recipient {
            email_address: crate::ports::EmailAddress {
                name: None,
                address: Some("someone@elsewhere.example".into()),
            },
        });
        let mut genuine = testkit::ib_calls_mail("m-genuine", "2024-03-14", 3);
        genuine.message.headers = vec![header(pass)];
        for mut m in [ignored, forged, external, genuine] {
            m.message.internet_message_id = Some(genuine_id.into());
            let id = m.message.id.clone();
            w.mail.deliver(m);
            let resp = w
                .ingest
                .handle(sqs_event(&[inbound(&id)]), &invocation())
                .await;
            assert!(failures(&resp).is_empty(), "{id}");
        }
        let status = |id: &str| {
            serde_json::from_str::<MailSummary>(
                &w.claims.result(&state::mail_claim(MAILBOX, id)).unwrap(),
            )
            .unwrap()
            .status
        };
        assert_eq!(status("m-ignored"), "ignored");
        assert_eq!(status("m-forged"), "ignored");
        assert_eq!(status("m-external"), "ignored");
        assert_eq!(status("m-genuine"), "ingested");
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 3);
        // The genuine one under another Graph id is still recognised.
        let mut again = testkit::ib_calls_mail("m-genuine-moved", "2024-03-14", 3);
        again.message.headers = vec![header(pass)];
        again.message.internet_message_id = Some(genuine_id.into());
        w.mail.deliver(again);
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-genuine-moved")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(status("m-genuine-moved"), "duplicate");
    }

    /// A mail that matches no dataset is an outcome an operator can read: who sent it, what
    /// it carried and, per dataset, the rule it failed.
    #[tokio::test]
    async fn a_mail_no_dataset_takes_is_recorded_with_the_rule_it_failed() {
        let w = world();
        let mut forwarded = testkit::ib_calls_mail("m-fwd", "2024-03-14", 3);
        forwarded.message.from = Some(crate::ports::Recipient {
            email_address: crate::ports::EmailAddress {
                name: None,
                address: Some("colleague@contoso.example".into()),
            },
        });
        forwarded.message.subject = Some("FW: IB calls export 2024-03-14".into());
        w.mail.deliver(forwarded);
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-fwd")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        let records: &dyn StateRecords = w.records.as_ref();
        let day: chrono::NaiveDate = "2024-03-14".parse().unwrap();
        let found: Vec<(String, state::UnmatchedMail)> = records
            .records(&state::unmatched_day(day), "")
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        let m = &found[0].1;
        assert_eq!(
            (m.sender.as_str(), m.attachments.as_slice()),
            (
                "colleague@contoso.example",
                &["ib_calls_2024-03-14.csv".to_owned()][..]
            )
        );
        let reasons = m.reasons.join("\n");
        assert!(
            reasons.contains("ib_calls: sender \"colleague@contoso.example\" does not match"),
            "{reasons}"
        );
        assert!(reasons.contains("dials: sender"), "{reasons}");
    }

    #[tokio::test]
    async fn attachments_whose_names_differ_only_in_dropped_characters_are_kept_apart() {
        let w = world();
        let mut mail = testkit::ib_calls_mail("m-1", "2024-03-14", 2);
        let mut second = mail.attachments[0].clone();
        second.id = "m-1-att2".into();
        second.name = "ib_calls 2024-03-14.csv".into();
        second.bytes = testkit::ib_calls("2024-03-15", 1);
        let mut third = mail.attachments[0].clone();
        third.id = "m-1-att3".into(); // the same name twice
        third.bytes = testkit::ib_calls("2024-03-16", 1);
        mail.attachments[0].name = "ib_calls_2024-03-14.csv".into();
        mail.attachments.push(second);
        mail.attachments.push(third);
        w.mail.deliver(mail);
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        let raws: Vec<String> = w
            .objects
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("raw/"))
            .collect();
        assert_eq!(raws.len(), 3, "{raws:?}");
        let records: &dyn StateRecords = w.records.as_ref();
        let outcomes = records.outcomes_of_mail(MAILBOX, "m-1").await.unwrap();
        assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    }

    #[tokio::test]
    async fn a_mail_claimed_by_another_invocation_is_left_for_retry() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 2));
        let now = Utc::now();
        w.claims
            .claim(
                &state::mail_claim(MAILBOX, "m-1"),
                "",
                now,
                now + Duration::minutes(5),
                now + Duration::days(1),
            )
            .await
            .unwrap();
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert_eq!(failures(&resp), vec!["m0"]);
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 0);
        assert!(w.dead_letters.letters().is_empty(), "retryable, not dead");
    }

    #[tokio::test]
    async fn a_store_failure_releases_the_claim_and_the_retry_stores_the_rows() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 4));
        w.rows.fault.set("ProvisionedThroughputExceededException");
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert_eq!(failures(&resp), vec!["m0"]);
        assert!(!w.claims.in_progress(&state::mail_claim(MAILBOX, "m-1")));
        w.rows.fault.clear();
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 4);
    }

    #[tokio::test]
    async fn a_malformed_message_goes_to_the_dead_letter_queue_at_once() {
        let w = world();
        let resp = w
            .ingest
            .handle(
                sqs_event(&[r#"{"v":1,"kind":"nonsense"}"#.to_owned()]),
                &invocation(),
            )
            .await;
        assert!(failures(&resp).is_empty(), "not retried");
        let letters = w.dead_letters.letters();
        assert_eq!(letters.len(), 1);
        assert!(
            letters[0].cause.contains("not an inbound message"),
            "{}",
            letters[0].cause
        );
        assert_eq!(letters[0].correlation_id.as_deref(), Some("corr-0"));
        assert_eq!(counted(&w).await.0["dead_lettered/ingest"], 1);
    }

    #[tokio::test]
    async fn a_mail_graph_no_longer_has_is_dead_lettered_and_released() {
        let w = world();
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-gone")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        let letters = w.dead_letters.letters();
        assert_eq!(letters.len(), 1);
        assert!(letters[0].cause.contains("404"), "{}", letters[0].cause);
        assert!(!w.claims.in_progress(&state::mail_claim(MAILBOX, "m-gone")));
    }

    #[tokio::test]
    async fn graph_unavailable_is_retried() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 1));
        w.mail.answer_every_call_with(Some(503));
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert_eq!(failures(&resp), vec!["m0"]);
        assert!(w.dead_letters.letters().is_empty());
    }

    #[tokio::test]
    async fn a_reprocessed_day_has_the_rows_of_a_first_ingest() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 3));
        w.mail
            .deliver(testkit::ib_calls_mail("m-2", "2024-03-14", 6));
        w.ingest
            .handle(sqs_event(&[inbound("m-1"), inbound("m-2")]), &invocation())
            .await;
        let rows: &dyn RowStore = w.rows.as_ref();
        let defs = testkit::definitions();
        let ds = &defs.datasets["ib_calls"];
        let before = rows
            .rows_for_day("ib_calls", ds, day("2024-03-14"))
            .await
            .unwrap();
        let outcome = super::reprocess::reprocess_day(
            Arc::clone(&defs),
            rows,
            w.records.as_ref(),
            w.objects.as_ref(),
            "ib_calls",
            day("2024-03-14"),
        )
        .await
        .unwrap();
        assert_eq!(
            (
                outcome.rows_deleted,
                outcome.attachments,
                outcome.rows_stored
            ),
            (6, 2, 6)
        );
        let after = rows
            .rows_for_day("ib_calls", ds, day("2024-03-14"))
            .await
            .unwrap();
        assert_eq!(after, before, "same rows, same first sources");
    }

    /// A day of a clean mail (300 rows) and a file unusable part way (10,000 rows before the
    /// error), as the operator found it: the reprocess asked for through the API.
    async fn day_of_a_clean_mail_and_a_partly_read_file() -> World {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-clean", "2024-03-14", 300));
        let mut cut = testkit::mail(
            "m-cut",
            "2024-03-14T13:00:00Z",
            "IB calls export 2024-03-14",
            "ib_calls_2024-03-14_b.csv",
            &[],
        );
        let bytes = testkit::ib_calls_cut_short("2024-03-14", 10_300);
        // Its first 300 calls are the clean mail's: 10,000 rows new.
        cut.attachments[0].bytes = bytes;
        w.mail.deliver(cut);
        let resp = w
            .ingest
            .handle(
                sqs_event(&[inbound("m-clean"), inbound("m-cut")]),
                &invocation(),
            )
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 10_300);
        w
    }

    /// Asks for a reprocess of ib_calls on 2024-03-14 as the API does: its record, then the
    /// message; the record after the stage handled it, and the batch's failures.
    async fn reprocess_through_the_stage(
        w: &World,
        id: &str,
    ) -> (crate::state::ReprocessRecord, usize) {
        let record = crate::state::ReprocessRecord {
            request_id: id.into(),
            dataset: "ib_calls".into(),
            date: day("2024-03-14"),
            status: ReprocessStatus::Queued,
            requested_at: Utc::now().to_rfc3339(),
            requested_by: "ops".into(),
            finished_at: None,
            counts: Default::default(),
            error: None,
        };
        let records: &dyn StateRecords = w.records.as_ref();
        records
            .put_record(&RecordKey::reprocess(id), &record, None)
            .await
            .unwrap();
        let message = serde_json::json!({"v": 1, "kind": "reprocess", "request_id": id,
            "dataset": "ib_calls", "date": "2024-03-14"});
        let resp = w
            .ingest
            .handle(sqs_event(&[message.to_string()]), &invocation())
            .await;
        let after = records
            .get_record(&RecordKey::reprocess(id))
            .await
            .unwrap()
            .unwrap();
        (after, failures(&resp).len())
    }

    /// A file unusable part way gives the rows it gave at first: the day keeps all 10,300.
    #[tokio::test]
    async fn a_reprocess_keeps_the_rows_a_partly_read_file_gave() {
        let w = day_of_a_clean_mail_and_a_partly_read_file().await;
        let before = w.rows.rows_of("ib_calls", day("2024-03-14"));
        let (record, failed) = reprocess_through_the_stage(&w, "rp-1").await;
        assert_eq!(failed, 0);
        assert_eq!(record.status, ReprocessStatus::Done, "{record:?}");
        assert_eq!(
            (
                record.counts.attachments,
                record.counts.rows_deleted,
                record.counts.rows_stored,
                record.counts.rows_removed,
                record.counts.partly_read
            ),
            (2, 10_300, 10_300, 0, 1)
        );
        assert_eq!(w.rows.rows_of("ib_calls", day("2024-03-14")), before);
        assert_eq!(
            w.rows.names_on(day("2024-03-14")),
            ["ib_calls".to_owned()].into(),
            "no staged rows left"
        );
    }

    /// An archived file gone from the bucket: a permanent failure that names its key, the day
    /// as it was, the record saying nothing was deleted.
    #[tokio::test]
    async fn a_reprocess_missing_an_archived_file_fails_for_good_and_leaves_the_day() {
        let w = day_of_a_clean_mail_and_a_partly_read_file().await;
        let gone = "raw/ib_calls/2024-03-14/m-clean/ib_calls_2024-03-14.csv";
        assert!(w.objects.current(gone).is_some());
        w.objects.remove(gone);
        let (record, failed) = reprocess_through_the_stage(&w, "rp-2").await;
        assert_eq!(failed, 0, "not retried: dead-lettered");
        assert_eq!(w.dead_letters.letters().len(), 1);
        assert_eq!(record.status, ReprocessStatus::Failed, "{record:?}");
        let error = record.error.unwrap();
        assert!(error.contains(gone) && error.contains("gone"), "{error}");
        assert_eq!(
            (record.counts.rows_deleted, record.counts.rows_stored),
            (0, 0)
        );
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 10_300);
        assert_eq!(
            w.rows.names_on(day("2024-03-14")),
            ["ib_calls".to_owned()].into()
        );
    }

    /// A file that no longer reads under today's definition (here: a required column renamed
    /// away) fails the reprocess for good; the day keeps every row.
    #[tokio::test]
    async fn a_reprocess_of_a_file_that_no_longer_reads_leaves_the_day() {
        let w = day_of_a_clean_mail_and_a_partly_read_file().await;
        let key = "raw/ib_calls/2024-03-14/m-clean/ib_calls_2024-03-14.csv";
        let objects: &dyn Objects = w.objects.as_ref();
        objects
            .put(key, b"agent_id,queue\nA1,Sales\n".to_vec(), "text/csv")
            .await
            .unwrap();
        let (record, _) = reprocess_through_the_stage(&w, "rp-3").await;
        assert_eq!(record.status, ReprocessStatus::Failed);
        assert!(
            record
                .error
                .as_deref()
                .unwrap()
                .contains("can no longer be read"),
            "{record:?}"
        );
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 10_300);
    }

    /// A row store failing for a while: the reprocess is retried, the day whole meanwhile,
    /// and the retry finishes it.
    #[tokio::test]
    async fn a_reprocess_that_fails_transiently_is_retried_with_the_day_whole() {
        let w = day_of_a_clean_mail_and_a_partly_read_file().await;
        w.rows.fault.set("throttled");
        let (record, failed) = reprocess_through_the_stage(&w, "rp-4").await;
        assert_eq!((record.status, failed), (ReprocessStatus::Retrying, 1));
        w.rows.fault.clear();
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 10_300);
        let (record, failed) = reprocess_through_the_stage(&w, "rp-4").await;
        assert_eq!((record.status, failed), (ReprocessStatus::Done, 0));
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 10_300);
    }

    /// Runs every continuation the stage queues until none is left; how many ran.
    async fn run_continuations(w: &World) -> usize {
        let mut ran = 0;
        loop {
            let queued = w.inbound.take();
            if queued.is_empty() {
                return ran;
            }
            for q in queued {
                let resp = w.ingest.handle(sqs_event(&[q.body]), &invocation()).await;
                assert!(failures(&resp).is_empty(), "{resp:?}");
                ran += 1;
            }
        }
    }

    /// Every invocation stores one chunk and then checkpoints (the margin is longer than it).
    fn one_chunk_per_invocation() -> IngestTuning {
        IngestTuning {
            chunk_rows: 5,
            checkpoint_margin: Duration::days(1),
            ..IngestTuning::default()
        }
    }

    #[tokio::test]
    async fn a_file_too_large_for_one_invocation_finishes_across_continuations_exactly_once() {
        let w = world_tuned(one_chunk_per_invocation());
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 23));
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert!(w.outbound.sent().is_empty(), "no outcome before the end");
        let first: Vec<InboundMessage> = w.inbound.bodies();
        assert!(
            matches!(&first[..], [InboundMessage::Continuation { step: 1, .. }]),
            "{first:?}"
        );
        // A continuation delivered twice is done once.
        let again = w.inbound.sent()[0].body.clone();
        // 23 rows in chunks of 5: five chunks, each stored by its own invocation.
        assert_eq!(run_continuations(&w).await, 4);
        let resp = w.ingest.handle(sqs_event(&[again]), &invocation()).await;
        assert!(failures(&resp).is_empty());
        assert!(w.inbound.sent().is_empty());
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 23);
        let records: &dyn StateRecords = w.records.as_ref();
        let outcomes = records.outcomes_of_mail(MAILBOX, "m-1").await.unwrap();
        assert_eq!(outcomes.len(), 1);
        let o = &outcomes[0];
        assert_eq!(
            (o.rows_total, o.rows_new, o.rows_duplicate, o.rows_rejected),
            (23, 23, 0, 0)
        );
        assert!(o.lines.unwrap().balanced());
        assert_eq!(w.outbound.sent().len(), 1, "one outcome, forwarded once");
        assert_eq!(
            w.outbound.sent()[0].correlation_id,
            "corr-0",
            "kept throughout"
        );
        assert_eq!(
            w.mail.content_fetches(),
            1,
            "continuations read the archive"
        );
        let summary: MailSummary =
            serde_json::from_str(&w.claims.result(&state::mail_claim(MAILBOX, "m-1")).unwrap())
                .unwrap();
        assert_eq!(summary.status, "continued");
        let counts = counted(&w).await;
        assert_eq!(
            (
                counts.totals()["mails_processed"],
                counts.about("ib_calls")["rows_new"]
            ),
            (1, 23),
            "counted once, at the last step, with every step's rows"
        );
        let last: MailSummary = serde_json::from_str(
            &w.claims
                .result(&state::continuation_claim(MAILBOX, "m-1", 4))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(last.status, "ingested");
    }

    #[tokio::test]
    async fn a_mail_pauses_between_attachments_and_records_every_outcome_at_the_end() {
        let w = world_tuned(IngestTuning {
            chunk_rows: 100,
            checkpoint_margin: Duration::days(1),
            ..IngestTuning::default()
        });
        let mut mail = testkit::ib_calls_mail("m-1", "2024-03-14", 3);
        let mut second = mail.attachments[0].clone();
        second.id = "m-1-att2".into();
        second.name = "ib_calls_2024-03-15.csv".into();
        second.bytes = testkit::ib_calls("2024-03-15", 4);
        mail.attachments.push(second);
        w.mail.deliver(mail);
        w.ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        // Each file is one chunk: the first invocation stores the first, then pauses.
        assert_eq!(run_continuations(&w).await, 1);
        let records: &dyn StateRecords = w.records.as_ref();
        let outcomes = records.outcomes_of_mail(MAILBOX, "m-1").await.unwrap();
        let new: Vec<u64> = outcomes.iter().map(|o| o.rows_new).collect();
        assert_eq!(new, vec![3, 4]);
        assert_eq!(w.outbound.sent().len(), 2);
    }

    #[tokio::test]
    async fn a_continuation_without_its_progress_record_is_dead_lettered() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 3));
        let body = serde_json::json!({"v": 1, "kind": "continuation", "mailbox": MAILBOX, "message_id": "m-1", "step": 3}).to_string();
        let resp = w.ingest.handle(sqs_event(&[body]), &invocation()).await;
        assert!(failures(&resp).is_empty());
        let letters = w.dead_letters.letters();
        assert_eq!(letters.len(), 1);
        assert!(
            letters[0].cause.contains("no progress record"),
            "{}",
            letters[0].cause
        );
    }

    #[tokio::test]
    async fn a_store_failure_in_a_continuation_is_retried_from_its_checkpoint() {
        let w = world_tuned(one_chunk_per_invocation());
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 12));
        w.ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        let step1 = w.inbound.take();
        w.rows.fault.set("ProvisionedThroughputExceededException");
        let resp = w
            .ingest
            .handle(sqs_event(&[step1[0].body.clone()]), &invocation())
            .await;
        assert_eq!(failures(&resp), vec!["m0"], "left for SQS to retry");
        w.rows.fault.clear();
        w.inbound.take();
        let resp = w
            .ingest
            .handle(sqs_event(&[step1[0].body.clone()]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        run_continuations(&w).await;
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 12);
        let records: &dyn StateRecords = w.records.as_ref();
        let o = &records.outcomes_of_mail(MAILBOX, "m-1").await.unwrap()[0];
        assert_eq!((o.rows_new, o.rows_duplicate), (12, 0));
    }

    #[tokio::test]
    async fn a_large_attachment_is_streamed_to_the_archive_and_parsed_from_it() {
        let w = world_tuned(IngestTuning {
            stream_above: 1_000,
            chunk_rows: 50,
            ..IngestTuning::default()
        });
        let mail = testkit::ib_calls_mail("m-1", "2024-03-14", 700);
        let content = mail.attachments[0].bytes.clone();
        assert!(content.len() > 64 * 1024, "several pieces");
        w.mail.deliver(mail);
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.mail.streamed(), 1);
        assert_eq!(
            w.objects
                .current("raw/ib_calls/2024-03-14/m-1/ib_calls_2024-03-14.csv")
                .unwrap(),
            content,
            "archived byte for byte"
        );
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 700);
    }

    #[tokio::test]
    async fn an_attachment_listed_over_the_size_limit_is_not_downloaded() {
        let toml = format!(
            "{}\n[datasets.ib_calls.limits]\nmax_attachment_bytes = 100\n",
            include_str!("../../../../reports.toml")
        );
        let mut w = world();
        w.ingest.definitions = Arc::new(Definitions::parse(&toml).unwrap());
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 10));
        let resp = w
            .ingest
            .handle(sqs_event(&[inbound("m-1")]), &invocation())
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.mail.content_fetches(), 0);
        let reason: serde_json::Value = serde_json::from_slice(
            &w.objects
                .current("quarantine/ib_calls/2024-03-14/m-1/ib_calls_2024-03-14.csv.reason.json")
                .unwrap(),
        )
        .unwrap();
        assert!(
            reason["reason"]
                .as_str()
                .unwrap()
                .contains("max_attachment_bytes"),
            "{reason}"
        );
        assert_eq!(reason["downloaded"], false);
    }

    #[tokio::test]
    async fn a_dataset_that_requires_an_authenticated_sender_ignores_others_with_the_reason() {
        let toml = include_str!("../../../../reports.toml").replacen(
            "require_authenticated_sender = true\n",
            "require_authenticated_sender = true\n",
            1,
        );
        let mut w = world();
        w.ingest.definitions = Arc::new(Definitions::parse(&toml).unwrap());
        let auth = |value: &str| crate::ports::MessageHeader {
            name: "Authentication-Results".into(),
            value: value.into(),
        };
        let mut forged = testkit::ib_calls_mail("m-forged", "2024-03-14", 2);
        forged.message.headers = vec![auth(
            "spf=fail smtp.mailfrom=dialer.example; dkim=none; dmarc=fail header.from=dialer.example",
        )];
        let mut genuine = testkit::ib_calls_mail("m-genuine", "2024-03-14", 3);
        genuine.message.headers = vec![auth(
            "spf=pass smtp.mailfrom=dialer.example; dkim=pass header.d=dialer.example; dmarc=pass header.from=dialer.example",
        )];
        w.mail.deliver(forged);
        w.mail.deliver(genuine);
        let resp = w
            .ingest
            .handle(
                sqs_event(&[inbound("m-forged"), inbound("m-genuine")]),
                &invocation(),
            )
            .await;
        assert!(failures(&resp).is_empty());
        assert_eq!(w.rows.count("ib_calls", day("2024-03-14")), 3);
        let summary: MailSummary = serde_json::from_str(
            &w.claims
                .result(&state::mail_claim(MAILBOX, "m-forged"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(summary.status, "ignored");
        assert!(
            summary.ignored[0].contains("requires an authenticated sender")
                && summary.ignored[0].contains("dmarc=fail"),
            "{:?}",
            summary.ignored
        );
        assert_eq!(
            w.mail.content_fetches(),
            1,
            "the forged one is not downloaded"
        );
    }
}
