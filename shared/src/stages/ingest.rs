//! ingest: for each `inbound` message, claims the mail (so webhook, poller and SQS retries
//! process it once), fetches its attachments, matches them to datasets, archives each as
//! received, parses, dedups and stores its rows, quarantines what is unusable, and records and
//! forwards one outcome per attachment.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::csv_ingest::{AttachmentReader, Origin};
use crate::definitions::{Dataset, Definitions};
use crate::failure::permanent;
use crate::idempotency::{IdempotencyKey, Once, once};
use crate::invocation::Invocation;
use crate::messages::{InboundMessage, IngestOutcome};
use crate::object_keys;
use crate::ports::{
    Claims, DeadLetters, FileAttachment, MailMessage, MailSource, Objects, RowStore, StateRecords,
    StoreOutcome, WorkQueue,
};
use crate::reprocess::index_day;
use crate::sqs_batch::correlation_id;
use crate::state::{self, DayAttachment, RecordKey};

/// Rows parsed, stored and dropped at a time.
const STORE_CHUNK_ROWS: usize = 5_000;
/// How long a mail's claim is kept: a mail announced again within this time is recognised.
const KEEP_CLAIMS: Duration = Duration::days(90);

pub struct Ingest {
    pub definitions: Arc<Definitions>,
    pub mail: Arc<dyn MailSource>,
    pub objects: Arc<dyn Objects>,
    pub rows: Arc<dyn RowStore>,
    pub claims: Arc<dyn Claims>,
    pub records: Arc<dyn StateRecords>,
    pub outbound: Arc<dyn WorkQueue>,
    pub dead_letters: Arc<dyn DeadLetters>,
}

/// What ingesting one mail did; stored as the claim's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MailSummary {
    /// `ingested`, or `ignored` when no attachment matched a dataset.
    pub status: String,
    pub outcomes: Vec<IngestOutcome>,
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
            outbound: wiring::queue(&aws, env, "CHARLIE_OUTBOUND_QUEUE_URL")?,
            dead_letters: wiring::dead_letters(&aws, env)?,
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

    async fn handle_message(&self, msg: SqsMessage, invocation: &Invocation) -> anyhow::Result<()> {
        self.ingest_message(msg, invocation).await
    }
}

impl Ingest {
    pub async fn handle(&self, event: SqsEvent, invocation: &Invocation) -> SqsBatchResponse {
        super::handle_batch(self, event, invocation).await
    }

    async fn ingest_message(&self, msg: SqsMessage, invocation: &Invocation) -> anyhow::Result<()> {
        let body = msg.body.as_deref().unwrap_or_default();
        let inbound: InboundMessage = serde_json::from_str(body).map_err(|e| {
            permanent(format!(
                "not an inbound message (expected {{\"v\":1,\"kind\":\"graph_message\",…}}): {e}: {}",
                truncate(body, 200)
            ))
        })?;
        let InboundMessage::GraphMessage {
            mailbox,
            message_id,
            source,
            ..
        } = inbound;
        let correlation = correlation_id(&msg)
            .map(str::to_owned)
            .unwrap_or_else(crate::invocation::new_correlation_id);
        // The same mail whatever path announced it: the key and payload leave out the source.
        let key = IdempotencyKey::new(
            state::mail_claim(&mailbox, &message_id),
            &(&mailbox, &message_id),
        );
        let work = self.ingest_mail(&mailbox, &message_id, &correlation, invocation, Utc::now());
        match once(self.claims.as_ref(), &key, invocation, KEEP_CLAIMS, work).await? {
            Once::AlreadyDone(_) => {
                info!(
                    mailbox,
                    message_id,
                    ?source,
                    "mail already ingested: nothing to do"
                );
            }
            Once::Ran(summary) => info!(
                mailbox,
                message_id,
                ?source,
                status = summary.status,
                attachments = summary.outcomes.len(),
                "mail ingested"
            ),
        }
        Ok(())
    }

    async fn ingest_mail(
        &self,
        mailbox: &str,
        message_id: &str,
        correlation: &str,
        invocation: &Invocation,
        now: DateTime<Utc>,
    ) -> anyhow::Result<MailSummary> {
        let message = self.mail.message(mailbox, message_id).await?;
        // The second guard: the same mail under another Graph id (from before immutable ids,
        // or announced by an older path) is recognised by its Message-ID.
        if let Some(internet_id) = &message.internet_message_id {
            let key = IdempotencyKey::new(
                state::internet_message_claim(mailbox, internet_id),
                &(mailbox, internet_id),
            );
            let first_seen = async { Ok(message_id.to_owned()) };
            let claimed = once(
                self.claims.as_ref(),
                &key,
                invocation,
                KEEP_CLAIMS,
                first_seen,
            );
            match claimed.await? {
                Once::AlreadyDone(first) if first != message_id => {
                    info!(
                        mailbox,
                        message_id,
                        first_seen_as = first,
                        "the same mail (by Message-ID) was ingested under another id: nothing to do"
                    );
                    return Ok(MailSummary {
                        status: "duplicate".into(),
                        outcomes: Vec::new(),
                    });
                }
                _ => {}
            }
        }
        let listed = self.mail.attachment_list(mailbox, message_id).await?;
        let subject = message.subject.clone().unwrap_or_default();
        let mut outcomes = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, info) in listed.iter().enumerate() {
            let matching: Vec<(&String, &Dataset)> = self
                .definitions
                .datasets
                .iter()
                .filter(|(_, ds)| ds.matches(message.sender(), &subject, &info.name))
                .collect();
            if matching.is_empty() {
                continue; // not downloaded
            }
            let bytes = self
                .mail
                .attachment_content(mailbox, message_id, &info.id)
                .await?;
            // Two attachments of one mail may share a name: the later ones are archived apart.
            let stored_name = if names.insert(info.name.clone()) {
                info.name.clone()
            } else {
                format!("{}#{}", info.name, i + 1)
            };
            let att = FileAttachment {
                id: info.id.clone(),
                name: info.name.clone(),
                content_type: info.content_type.clone(),
                bytes,
            };
            for (name, ds) in matching {
                outcomes.push(
                    self.ingest_attachment(mailbox, &message, &att, &stored_name, (name, ds), now)
                        .await?,
                );
            }
        }
        if outcomes.is_empty() {
            info!(
                mailbox,
                message_id,
                sender = message.sender(),
                subject,
                attachments = listed.len(),
                "no attachment matches a dataset: mail ignored"
            );
            return Ok(MailSummary {
                status: "ignored".into(),
                outcomes,
            });
        }
        for o in &outcomes {
            self.records
                .put_record(&RecordKey::outcome(o), o, None)
                .await?;
        }
        let pairs: Vec<(&IngestOutcome, &str)> =
            outcomes.iter().map(|o| (o, correlation)).collect();
        self.outbound.send_all(&pairs).await?;
        Ok(MailSummary {
            status: "ingested".into(),
            outcomes,
        })
    }

    async fn ingest_attachment(
        &self,
        mailbox: &str,
        message: &MailMessage,
        att: &FileAttachment,
        stored_name: &str,
        (dataset_name, dataset): (&str, &Dataset),
        now: DateTime<Utc>,
    ) -> anyhow::Result<IngestOutcome> {
        let received = message.received.unwrap_or(now);
        let place = object_keys::attachment_place(
            dataset_name,
            &received.format("%Y-%m-%d").to_string(),
            &message.id,
            stored_name,
        );
        let raw_key = object_keys::raw(&place);
        let objects = &self.objects;
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
            lines: None,
        };
        let origin = Origin {
            file_name: &att.name,
            received: Some(received),
        };
        let (raw, place) = (&raw_key, &place);
        let quarantine = |reason: String| async move {
            warn!(
                attachment = att.name,
                dataset = dataset_name,
                reason,
                "attachment unusable: quarantined"
            );
            let q = object_keys::quarantine(place);
            objects
                .put(&q, att.bytes.clone(), &att.content_type)
                .await?;
            let why = serde_json::json!({
                "reason": reason, "dataset": dataset_name, "mailbox": mailbox,
                "message_id": message.id, "attachment": att.name, "raw_key": raw,
                "quarantined_at": now.to_rfc3339(),
            });
            put_json(objects.as_ref(), &format!("{q}.reason.json"), &why).await?;
            anyhow::Ok(reason)
        };
        let mut reader = match AttachmentReader::new(dataset, &att.bytes, &origin) {
            Ok(p) => p,
            Err(unusable) => {
                outcome.quarantined = Some(quarantine(unusable.to_string()).await?);
                return Ok(outcome);
            }
        };
        let source = format!("{mailbox}/{}", message.id);
        // Stream: each chunk is stored and dropped, so memory does not grow with the file.
        let mut stored = StoreOutcome::default();
        let mut dates = BTreeSet::new();
        let mut store_rejects = Vec::new();
        loop {
            let chunk = match reader.next_chunk(STORE_CHUNK_ROWS) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(unusable) => {
                    // Part way: the rows before stay stored (and counted); the file is held
                    // whole in quarantine so that it can be re-ingested once fixed.
                    outcome.quarantined = Some(quarantine(unusable.to_string()).await?);
                    break;
                }
            };
            dates.extend(chunk.iter().map(|r| r.date));
            let mut done = self
                .rows
                .store(dataset_name, dataset, &chunk, &source, now)
                .await?;
            store_rejects.append(&mut done.rejected);
            stored += done;
        }
        let mut parsed = reader.finish();
        if !store_rejects.is_empty() {
            // Rows the store cannot hold (e.g. over DynamoDB's item size) count as rejected.
            parsed.rows_rejected += store_rejects.len() as u64;
            parsed.rows_unique -= store_rejects.len() as u64;
            parsed.rejects.extend(store_rejects);
            parsed.rejects.sort_by_key(|r| r.line);
        }
        if !parsed.rejects.is_empty() {
            let report = serde_json::json!({
                "attachment": att.name, "raw_key": raw_key,
                "rows_rejected": parsed.rows_rejected, "lines": parsed.lines,
                "rejects": parsed.rejects,
            });
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
            received,
        };
        for date in &dates {
            index_day(self.records.as_ref(), dataset_name, *date, &indexed).await?;
        }
        outcome.dates = dates.into_iter().collect();
        outcome.rows_total = parsed.rows_total;
        outcome.rows_new = stored.new;
        outcome.rows_duplicate = parsed.duplicates + stored.duplicate;
        outcome.rows_rejected = parsed.rows_rejected;
        outcome.lines = Some(parsed.lines);
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

/// A JSON document beside an archived file (a quarantine reason, an attachment's rejects).
async fn put_json(objects: &dyn Objects, key: &str, doc: &serde_json::Value) -> anyhow::Result<()> {
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
    use crate::stages::testkit::{self, MAILBOX, failures, inbound, invocation, sqs_event};

    struct World {
        mail: Arc<MemoryMailbox>,
        objects: Arc<MemoryObjects>,
        rows: Arc<MemoryRowStore>,
        claims: Arc<MemoryClaims>,
        records: Arc<MemoryState>,
        outbound: Arc<MemoryQueue>,
        dead_letters: Arc<MemoryDeadLetters>,
        ingest: Ingest,
    }

    fn world() -> World {
        let (mail, objects, rows) = (Arc::default(), Arc::default(), Arc::default());
        let (claims, records, outbound, dead_letters) = (
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
            outbound: Arc::clone(&outbound) as _,
            dead_letters: Arc::clone(&dead_letters) as _,
        };
        World {
            mail,
            objects,
            rows,
            claims,
            records,
            outbound,
            dead_letters,
            ingest,
        }
    }

    fn day(d: &str) -> chrono::NaiveDate {
        d.parse().unwrap()
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
        assert!(
            w.claims
                .result(&state::mail_claim(MAILBOX, "m-broken"))
                .is_some()
        );
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
        let outcome = crate::reprocess::reprocess_day(
            &defs,
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
}
