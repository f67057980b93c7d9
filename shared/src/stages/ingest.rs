//! ingest: for each `inbound` message, claims the mail (so webhook, poller and SQS retries
//! process it once), fetches its attachments, matches them to datasets, archives each as
//! received, parses, dedups and stores its rows, quarantines what is unusable, and records and
//! forwards one outcome per attachment.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context, bail};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::adapters::aws::AwsClients;
use crate::adapters::graph::{FileAttachment, Mailbox, Message};
use crate::adapters::object_store::key_segment;
use crate::adapters::queue::Queue;
use crate::adapters::state::Claim;
use crate::csv_ingest::AttachmentReader;
use crate::definitions::Dataset;
use crate::env::Env;
use crate::messages::{InboundMessage, IngestOutcome};
use crate::reprocess::{DayAttachment, index_day};
use crate::sqs_batch::{self, correlation_id};

use super::Common;

/// Rows parsed, stored and dropped at a time.
const STORE_CHUNK_ROWS: usize = 5_000;

pub struct Ingest {
    common: Common,
    graph: Arc<Mailbox>,
    outbound: Queue,
    /// How long a claim holds before another invocation may take over (a crashed holder).
    claim_hold: Duration,
}

/// What ingesting one mail did; stored as the claim's result.
#[derive(Debug, Serialize)]
pub struct MailSummary {
    pub status: &'static str,
    pub outcomes: Vec<IngestOutcome>,
}

impl Ingest {
    pub async fn from_env(env: &Env, clients: &AwsClients) -> anyhow::Result<Self> {
        Ok(Ingest {
            common: Common::from_env(env, clients).await?,
            graph: super::mailbox_from_env(env, clients).await?,
            outbound: Queue::new(
                clients.sqs.clone(),
                env.required("CHARLIE_OUTBOUND_QUEUE_URL")?,
            ),
            claim_hold: Duration::seconds(env.parsed_or("CHARLIE_CLAIM_HOLD_SECONDS", 900)?),
        })
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        sqs_batch::process(event, |m| self.handle_message(m)).await
    }

    async fn handle_message(&self, msg: SqsMessage) -> anyhow::Result<()> {
        let body = msg.body.as_deref().unwrap_or_default();
        let inbound: InboundMessage = serde_json::from_str(body).with_context(|| {
            format!(
                "not an inbound message (expected {{\"v\":1,\"kind\":\"graph_message\",…}}): {}",
                truncate(body, 200)
            )
        })?;
        let InboundMessage::GraphMessage {
            mailbox,
            message_id,
            source,
            ..
        } = inbound;
        let correlation = correlation_id(&msg)
            .map(str::to_owned)
            .unwrap_or_else(super::new_correlation_id);
        let now = Utc::now();
        let claim_pk = format!("MSG#{mailbox}#{message_id}");
        let state = &self.common.state;
        match state
            .claim(&claim_pk, now, self.claim_hold, Duration::days(90))
            .await?
        {
            Claim::AlreadyDone(_) => {
                info!(
                    mailbox,
                    message_id,
                    ?source,
                    "mail already ingested: nothing to do"
                );
                return Ok(());
            }
            Claim::InProgressElsewhere => {
                bail!("mail {message_id} is being ingested by another invocation; retrying later")
            }
            Claim::Acquired => {}
        }
        match self
            .ingest_mail(&mailbox, &message_id, &claim_pk, &correlation, now)
            .await
        {
            Ok(summary) => {
                info!(
                    mailbox,
                    message_id,
                    status = summary.status,
                    attachments = summary.outcomes.len(),
                    "mail ingested"
                );
                state
                    .complete(&claim_pk, &serde_json::to_string(&summary)?, Utc::now())
                    .await
            }
            Err(e) => {
                state.release_or_let_expire(&claim_pk).await;
                Err(e)
            }
        }
    }

    async fn ingest_mail(
        &self,
        mailbox: &str,
        message_id: &str,
        claim_pk: &str,
        correlation: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<MailSummary> {
        let message = self.graph.message(mailbox, message_id).await?;
        let attachments = self.graph.attachments(mailbox, message_id).await?;
        let subject = message.subject.clone().unwrap_or_default();
        let mut outcomes = Vec::new();
        for att in &attachments {
            for (name, ds) in &self.common.definitions.datasets {
                if ds.matches(message.sender(), &subject, &att.name) {
                    outcomes.push(
                        self.ingest_attachment(mailbox, &message, att, name, ds, now)
                            .await?,
                    );
                }
            }
        }
        if outcomes.is_empty() {
            info!(
                mailbox,
                message_id,
                sender = message.sender(),
                subject,
                attachments = attachments.len(),
                "no attachment matches a dataset: mail ignored"
            );
            return Ok(MailSummary {
                status: "ignored",
                outcomes,
            });
        }
        for o in &outcomes {
            let data = serde_json::to_value(o)?;
            self.common
                .state
                .put_record(
                    claim_pk,
                    &format!("OUTCOME#{}#{}", o.dataset, o.attachment),
                    &data,
                    None,
                )
                .await?;
        }
        let pairs: Vec<(&IngestOutcome, &str)> =
            outcomes.iter().map(|o| (o, correlation)).collect();
        self.outbound.send_all(&pairs).await?;
        Ok(MailSummary {
            status: "ingested",
            outcomes,
        })
    }

    async fn ingest_attachment(
        &self,
        mailbox: &str,
        message: &Message,
        att: &FileAttachment,
        dataset_name: &str,
        dataset: &Dataset,
        now: DateTime<Utc>,
    ) -> anyhow::Result<IngestOutcome> {
        let received = message.received.unwrap_or(now).format("%Y-%m-%d");
        let place = format!(
            "{dataset_name}/{received}/{}/{}",
            key_segment(&message.id),
            key_segment(&att.name)
        );
        let raw_key = format!("raw/{place}");
        let objects = &self.common.objects;
        objects
            .put(&raw_key, att.bytes.clone(), &att.content_type)
            .await?;

        let mut outcome = IngestOutcome {
            v: 1,
            mailbox: mailbox.to_owned(),
            message_id: message.id.clone(),
            attachment: att.name.clone(),
            dataset: dataset_name.to_owned(),
            dates: Vec::new(),
            rows_total: 0,
            rows_new: 0,
            rows_duplicate: 0,
            rows_rejected: 0,
            raw_key: raw_key.clone(),
            quarantined: None,
        };
        let mut reader = match AttachmentReader::new(dataset, &att.bytes) {
            Ok(p) => p,
            Err(unusable) => {
                let reason = unusable.to_string();
                warn!(
                    attachment = att.name,
                    dataset = dataset_name,
                    reason,
                    "attachment unusable: quarantined"
                );
                let q = format!("quarantine/{place}");
                objects
                    .put(&q, att.bytes.clone(), &att.content_type)
                    .await?;
                let why = serde_json::json!({
                    "reason": reason, "dataset": dataset_name, "mailbox": mailbox,
                    "message_id": message.id, "attachment": att.name, "raw_key": raw_key,
                    "quarantined_at": now.to_rfc3339(),
                });
                objects
                    .put(
                        &format!("{q}.reason.json"),
                        serde_json::to_vec_pretty(&why)?,
                        "application/json",
                    )
                    .await?;
                outcome.quarantined = Some(reason);
                return Ok(outcome);
            }
        };
        let source = format!("{mailbox}/{}", message.id);
        // Stream: each chunk is stored and dropped, so memory does not grow with the file.
        let mut stored = crate::adapters::rows::StoreOutcome::default();
        let mut dates = BTreeSet::new();
        while let Some(chunk) = reader.next_chunk(STORE_CHUNK_ROWS) {
            dates.extend(chunk.iter().map(|r| r.date));
            let o = self
                .common
                .rows
                .store(dataset_name, dataset, &chunk, &source, now)
                .await?;
            stored.new += o.new;
            stored.duplicate += o.duplicate;
        }
        let parsed = reader.finish();
        if !parsed.rejects.is_empty() {
            let report = serde_json::json!({ "attachment": att.name, "raw_key": raw_key, "rejects": parsed.rejects });
            objects
                .put(
                    &format!("{raw_key}.rejects.json"),
                    serde_json::to_vec_pretty(&report)?,
                    "application/json",
                )
                .await?;
        }
        let indexed = DayAttachment {
            raw_key: raw_key.clone(),
            source: source.clone(),
            received: message.received.unwrap_or(now),
        };
        for date in &dates {
            index_day(&self.common.state, dataset_name, *date, &indexed).await?;
        }
        outcome.dates = dates.into_iter().collect();
        outcome.rows_total = parsed.rows_total;
        outcome.rows_new = stored.new;
        outcome.rows_duplicate = parsed.duplicates + stored.duplicate;
        outcome.rows_rejected = parsed.rejects.len() as u64;
        info!(
            attachment = att.name,
            dataset = dataset_name,
            encoding = parsed.encoding,
            rows_total = outcome.rows_total,
            rows_new = outcome.rows_new,
            rows_duplicate = outcome.rows_duplicate,
            rows_rejected = outcome.rows_rejected,
            "attachment ingested"
        );
        Ok(outcome)
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
