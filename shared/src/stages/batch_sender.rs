//! `batch-sender` (SQS `outbound`): forwards ingest outcomes to the downstream persistence API
//! in batches, keeping its contract (`docs/downstream-api.md`, `crate::downstream`).
//!
//! One invocation: every message's outcome becomes an item (messages with the same item id
//! share one); the items go out in canonical batches of at most `max_items`, retried inside the
//! invocation with full-jitter backoff (at least `Retry-After`) until the deadline less a
//! margin; a 400 is resent item by item, a 413 in halves, a 401 after rereading the token. Then
//! each message gets its item's verdict through `sqs_batch::process`: delivered → done;
//! rejected → the DLQ at once with the reason; anything else → reported for retry, with the
//! message's visibility set to when a retry can succeed (the breaker's cool-down left, or a
//! backoff growing with its receives), so it waits in the queue rather than burning receives.
//! A circuit breaker shared by every invocation (`crate::breaker`) stops the calls while the
//! downstream is down.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use tracing::{error, info, warn};

use crate::breaker::{Admission, Breaker, BreakerState};
use crate::downstream::{Answer, Batch, Item, ItemVerdict, classify};
use crate::failure::permanent;
use crate::invocation::Invocation;
use crate::messages::IngestOutcome;
use crate::ports::{DeadLetters, Downstream, MessageVisibility, StateRecords};
use crate::sqs_batch::{self, Consumer};

pub const STAGE: &str = "batch-sender";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderSettings {
    /// Items per call (1-500).
    pub max_items: usize,
    /// Backoff between tries inside an invocation: from `backoff_base`, doubling, at most
    /// `backoff_max` per wait.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// No call starts with less than this left of the invocation.
    pub stop_margin: Duration,
    /// The longest a failed message is made to wait before its next receive (seconds).
    pub max_visibility: u32,
}

impl Default for SenderSettings {
    fn default() -> Self {
        SenderSettings {
            max_items: 100,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(20),
            stop_margin: Duration::from_secs(5),
            max_visibility: 3600,
        }
    }
}

pub struct BatchSender {
    pub api: Arc<dyn Downstream>,
    pub breaker: Breaker,
    pub visibility: Arc<dyn MessageVisibility>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub records: Arc<dyn StateRecords>,
    pub settings: SenderSettings,
}

#[cfg(feature = "batch-sender")]
impl BatchSender {
    pub async fn from_env(env: &crate::env::Env) -> anyhow::Result<Self> {
        use super::wiring;
        use crate::breaker::BreakerSettings;
        let aws = crate::adapters::aws::AwsConfig::from_env(env).await;
        let state = wiring::state(&aws, env)?;
        let seconds = |name: &'static str, default: u64, range| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs(env.in_range_or(name, default, range)?))
        };
        let timeout = seconds("CHARLIE_DOWNSTREAM_TIMEOUT_SECONDS", 10, 1..=120)?;
        let breaker = BreakerSettings {
            failures: env.in_range_or("CHARLIE_BREAKER_FAILURES", 5, 1..=1000)?,
            window: seconds("CHARLIE_BREAKER_WINDOW_SECONDS", 60, 1..=3600)?,
            cooldown: seconds("CHARLIE_BREAKER_COOLDOWN_SECONDS", 30, 1..=3600)?,
            probe_timeout: timeout * 2,
        };
        let settings = SenderSettings {
            max_items: env.in_range_or("CHARLIE_DOWNSTREAM_MAX_ITEMS", 100, 1..=500)?,
            max_visibility: env.in_range_or(
                "CHARLIE_RETRY_VISIBILITY_MAX_SECONDS",
                3600,
                1..=43_200,
            )?,
            ..SenderSettings::default()
        };
        let queue = wiring::queue(&aws, env, "CHARLIE_OUTBOUND_QUEUE_URL")?;
        Ok(BatchSender {
            api: Arc::new(
                crate::adapters::downstream::HttpDownstream::from_env(&aws, env, timeout).await?,
            ),
            breaker: Breaker::new(state.clone(), "downstream", breaker),
            visibility: queue,
            dead_letters: wiring::dead_letters(&aws, env)?,
            records: state,
            settings,
        })
    }
}

/// What became of the invocation's items.
#[derive(Debug, Default)]
struct Delivery {
    verdicts: HashMap<String, ItemVerdict>,
    /// The breaker is open (or another invocation probes) until then.
    breaker_until: Option<DateTime<Utc>>,
    /// The longest `Retry-After` the API asked for.
    retry_after: Option<Duration>,
    calls: u32,
}

/// One message's part in the batch.
enum Parsed {
    Item(String),
    Unreadable(String),
}

/// What becomes of one message.
#[derive(Clone)]
enum MessageVerdict {
    Done,
    Permanent(String),
    Retry(String),
    /// Held back on purpose (the breaker is open): retried later, logged as a warning.
    Wait(String),
}

#[async_trait]
impl super::Handler for BatchSender {
    async fn invoke(
        &self,
        event: serde_json::Value,
        invocation: &Invocation,
    ) -> anyhow::Result<serde_json::Value> {
        let event: SqsEvent = super::parse_event(event)?;
        let mut items: BTreeMap<String, Item> = BTreeMap::new();
        let parsed: Vec<Parsed> = event
            .records
            .iter()
            .map(|m| {
                let body = m.body.as_deref().unwrap_or_default();
                match serde_json::from_str::<IngestOutcome>(body) {
                    Ok(o) => {
                        let item = Item::of(&o, sqs_batch::correlation_id(m));
                        let id = item.id.clone();
                        items.entry(id.clone()).or_insert(item);
                        Parsed::Item(id)
                    }
                    Err(e) => {
                        Parsed::Unreadable(format!("the message is not an ingest outcome: {e}"))
                    }
                }
            })
            .collect();
        let delivery = self.deliver(&items, invocation).await;
        let by_message: HashMap<String, MessageVerdict> = event
            .records
            .iter()
            .zip(&parsed)
            .map(|(m, p)| {
                let id = m.message_id.clone().unwrap_or_default();
                let verdict = match p {
                    Parsed::Unreadable(why) => MessageVerdict::Permanent(why.clone()),
                    Parsed::Item(item) => match delivery.verdicts.get(item) {
                        Some(ItemVerdict::Delivered { .. }) => MessageVerdict::Done,
                        Some(ItemVerdict::Rejected(reason)) => MessageVerdict::Permanent(format!(
                            "the downstream API rejected item {item}: {reason}"
                        )),
                        Some(ItemVerdict::Retry(why)) if delivery.breaker_until.is_some() => {
                            MessageVerdict::Wait(why.clone())
                        }
                        Some(ItemVerdict::Retry(why)) => MessageVerdict::Retry(why.clone()),
                        None => MessageVerdict::Retry("not sent in this invocation".into()),
                    },
                };
                (id, verdict)
            })
            .collect();
        let receipts: HashMap<String, (String, u32)> = event
            .records
            .iter()
            .map(|m| {
                let receives = m
                    .attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                (
                    m.message_id.clone().unwrap_or_default(),
                    (m.receipt_handle.clone().unwrap_or_default(), receives),
                )
            })
            .collect();
        let consumer = Consumer {
            stage: STAGE,
            dead_letters: self.dead_letters.as_ref(),
            counters: Some(self.records.as_ref()),
        };
        let response = sqs_batch::process(event, invocation, consumer, |m: SqsMessage| {
            let verdict = by_message
                .get(m.message_id.as_deref().unwrap_or_default())
                .cloned()
                .unwrap_or_else(|| MessageVerdict::Retry("not sent in this invocation".into()));
            async move {
                match verdict {
                    MessageVerdict::Done => Ok(()),
                    MessageVerdict::Permanent(reason) => Err(permanent(reason)),
                    MessageVerdict::Retry(why) => Err(anyhow::anyhow!(why)),
                    MessageVerdict::Wait(why) => Err(crate::failure::busy(why)),
                }
            }
        })
        .await;
        // The messages left for retry wait until a retry can succeed.
        let now = Utc::now();
        let waits: Vec<(String, u32)> = response
            .batch_item_failures
            .iter()
            .filter_map(|f| receipts.get(&f.item_identifier))
            .filter(|(handle, _)| !handle.is_empty())
            .map(|(handle, receives)| {
                (
                    handle.clone(),
                    self.retry_visibility(*receives, &delivery, now),
                )
            })
            .collect();
        if !waits.is_empty()
            && let Err(e) = self.visibility.set_visibility(&waits).await
        {
            // The messages come back at the queue's own visibility timeout instead.
            warn!(error = %format!("{e:#}"), "could not set the failed messages' visibility");
        }
        info!(
            items = items.len(),
            calls = delivery.calls,
            left_for_retry = waits.len(),
            breaker_open_until = delivery.breaker_until.map(|t| t.to_rfc3339()),
            "batch forwarded"
        );
        Ok(serde_json::to_value(response)?)
    }
}

impl BatchSender {
    /// Seconds a message left for retry stays invisible: the breaker's cool-down left, at
    /// least what the API asked for and a backoff doubling with each receive (2 s, 4 s, …), at
    /// most `max_visibility`.
    fn retry_visibility(&self, receives: u32, delivery: &Delivery, now: DateTime<Utc>) -> u32 {
        let grown = 1u64 << receives.clamp(1, 16);
        let breaker = delivery
            .breaker_until
            .map(|t| (t - now).num_seconds().max(1) as u64)
            .unwrap_or(0);
        let asked = delivery.retry_after.map_or(0, |d| d.as_secs());
        let secs = grown.max(breaker).max(asked);
        secs.min(u64::from(self.settings.max_visibility)).max(1) as u32
    }

    /// Sends `items`, retrying inside the invocation; the verdict of each.
    async fn deliver(&self, items: &BTreeMap<String, Item>, invocation: &Invocation) -> Delivery {
        let mut d = Delivery::default();
        if items.is_empty() {
            return d;
        }
        let ids: Vec<String> = items.keys().cloned().collect();
        let mut chunks: VecDeque<Vec<String>> = ids
            .chunks(self.settings.max_items.max(1))
            .map(<[String]>::to_vec)
            .collect();
        let mut failures_in_a_row = 0u32;
        let mut refreshed = false;
        let leave = |d: &mut Delivery, chunks: &mut VecDeque<Vec<String>>, why: &str| {
            for id in chunks.drain(..).flatten() {
                d.verdicts
                    .entry(id)
                    .or_insert_with(|| ItemVerdict::Retry(why.to_owned()));
            }
        };
        let margin = chrono::Duration::from_std(self.settings.stop_margin)
            .unwrap_or(chrono::Duration::seconds(5));
        while let Some(chunk) = chunks.pop_front() {
            if invocation.remaining() < margin {
                chunks.push_front(chunk);
                leave(&mut d, &mut chunks, "no time left in the invocation");
                break;
            }
            let now = Utc::now();
            let probe = match self.breaker.admit(now).await {
                Ok(Admission::Call) => false,
                Ok(Admission::Probe) => true,
                Ok(Admission::Wait { until }) => {
                    d.breaker_until = Some(until);
                    chunks.push_front(chunk);
                    let why = format!(
                        "the downstream API's circuit breaker is open until {}",
                        until.to_rfc3339()
                    );
                    leave(&mut d, &mut chunks, &why);
                    break;
                }
                Err(e) => {
                    // Without the breaker's state, calling could hammer a failing API.
                    chunks.push_front(chunk);
                    let why = format!("reading the circuit breaker: {e:#}");
                    error!(error = why, "breaker unreadable: nothing sent");
                    leave(&mut d, &mut chunks, &why);
                    break;
                }
            };
            let batch = Batch::of(&chunk.iter().map(|id| &items[id]).collect::<Vec<_>>());
            let call_id = crate::invocation::new_correlation_id();
            d.calls += 1;
            let answer = match self.api.post_batch(&batch.body, &batch.key, &call_id).await {
                Ok(reply) => {
                    let answer = classify(reply.status, reply.retry_after, &reply.body, &batch.ids);
                    info!(
                        call = call_id,
                        items = batch.ids.len(),
                        status = reply.status,
                        idempotency_key = batch.key,
                        "downstream call answered"
                    );
                    answer
                }
                Err(e) => {
                    warn!(call = call_id, items = batch.ids.len(), error = %e, "downstream call got no answer");
                    Answer::Failed {
                        reason: e.to_string(),
                        retry_after: None,
                    }
                }
            };
            let mut wait = None;
            match answer {
                Answer::Items(verdicts) => {
                    self.breaker_ok(Utc::now()).await;
                    failures_in_a_row = 0;
                    let mut again = Vec::new();
                    for (id, v) in verdicts {
                        match v {
                            ItemVerdict::Retry(_) => again.push(id),
                            v => {
                                d.verdicts.insert(id, v);
                            }
                        }
                    }
                    if !again.is_empty() {
                        failures_in_a_row += 1;
                        wait = Some(None);
                        chunks.push_back(again);
                    }
                }
                Answer::Malformed(why) => {
                    self.breaker_ok(Utc::now()).await;
                    if chunk.len() > 1 {
                        // Find the bad items: each alone.
                        for id in chunk.into_iter().rev() {
                            chunks.push_front(vec![id]);
                        }
                    } else {
                        d.verdicts
                            .insert(chunk[0].clone(), ItemVerdict::Rejected(why));
                    }
                }
                Answer::TooLarge => {
                    self.breaker_ok(Utc::now()).await;
                    if chunk.len() > 1 {
                        let (a, b) = chunk.split_at(chunk.len() / 2);
                        chunks.push_front(b.to_vec());
                        chunks.push_front(a.to_vec());
                    } else {
                        d.verdicts.insert(
                            chunk[0].clone(),
                            ItemVerdict::Rejected(
                                "413: the item alone is over the API's limit".into(),
                            ),
                        );
                    }
                }
                Answer::Unauthorized(why) if !refreshed => {
                    refreshed = true;
                    warn!(
                        reason = why,
                        "downstream API refused the token: reading it again"
                    );
                    if let Err(e) = self.api.refresh_credentials().await {
                        error!(error = %format!("{e:#}"), "could not read the downstream token again");
                    }
                    chunks.push_front(chunk);
                }
                Answer::Throttled { retry_after } => {
                    failures_in_a_row += 1;
                    d.retry_after = d.retry_after.max(retry_after);
                    wait = Some(retry_after);
                    chunks.push_front(chunk);
                }
                Answer::Unauthorized(reason) | Answer::Failed { reason, .. } if probe => {
                    self.breaker_failed(&reason, Utc::now()).await;
                    chunks.push_front(chunk);
                    leave(
                        &mut d,
                        &mut chunks,
                        &format!("the breaker's probe failed: {reason}"),
                    );
                    break;
                }
                Answer::Unauthorized(reason) | Answer::Failed { reason, .. } => {
                    let state = self.breaker_failed(&reason, Utc::now()).await;
                    failures_in_a_row += 1;
                    chunks.push_front(chunk);
                    if state == Some(BreakerState::Open) {
                        // The next admission says until when.
                        continue;
                    }
                    wait = Some(None);
                }
            }
            if let Some(asked) = wait {
                let pause = crate::adapters::retry::backoff(
                    failures_in_a_row,
                    self.settings.backoff_base,
                    self.settings.backoff_max,
                )
                .max(asked.unwrap_or_default());
                let left = invocation.remaining().to_std().unwrap_or_default();
                if pause + self.settings.stop_margin > left {
                    leave(
                        &mut d,
                        &mut chunks,
                        "no time left to retry in this invocation",
                    );
                    break;
                }
                tokio::time::sleep(pause).await;
            }
        }
        d
    }

    async fn breaker_ok(&self, now: DateTime<Utc>) {
        match self.breaker.succeeded(now).await {
            Ok(state) => {
                crate::metrics::level(STAGE, crate::metrics::name::BREAKER_STATE, state.level())
            }
            Err(e) => warn!(error = %format!("{e:#}"), "could not record a success on the breaker"),
        }
    }

    async fn breaker_failed(&self, reason: &str, now: DateTime<Utc>) -> Option<BreakerState> {
        crate::metrics::count(STAGE, crate::metrics::name::DOWNSTREAM_FAILURES, None, 1);
        match self.breaker.failed(reason, now).await {
            Ok(state) => {
                crate::metrics::level(STAGE, crate::metrics::name::BREAKER_STATE, state.level());
                Some(state)
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "could not record a failure on the breaker");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::{
        DownstreamScript, MemoryDeadLetters, MemoryDownstream, MemoryState, MemoryVisibility,
    };
    use crate::breaker::BreakerSettings;
    use crate::downstream::item_id;
    use crate::stages::Handler;
    use crate::stages::testkit::invocation;

    struct World {
        api: Arc<MemoryDownstream>,
        visibility: Arc<MemoryVisibility>,
        dead: Arc<MemoryDeadLetters>,
        records: Arc<MemoryState>,
    }

    impl World {
        fn new() -> World {
            World {
                api: Arc::default(),
                visibility: Arc::default(),
                dead: Arc::new(MemoryDeadLetters::with_max_receives(100)),
                records: Arc::default(),
            }
        }

        fn sender(&self, max_items: usize) -> BatchSender {
            BatchSender {
                api: Arc::clone(&self.api) as _,
                breaker: Breaker::new(
                    Arc::clone(&self.records) as _,
                    "downstream",
                    BreakerSettings {
                        failures: 3,
                        window: Duration::from_secs(60),
                        cooldown: Duration::from_secs(30),
                        probe_timeout: Duration::from_secs(10),
                    },
                ),
                visibility: Arc::clone(&self.visibility) as _,
                dead_letters: Arc::clone(&self.dead) as _,
                records: Arc::clone(&self.records) as _,
                settings: SenderSettings {
                    max_items,
                    backoff_base: Duration::from_millis(1),
                    backoff_max: Duration::from_millis(5),
                    stop_margin: Duration::from_secs(1),
                    max_visibility: 3600,
                },
            }
        }
    }

    fn outcome(n: usize) -> IngestOutcome {
        IngestOutcome {
            v: 1,
            mailbox: "ops@contoso.example".into(),
            message_id: format!("AAMk{n}"),
            attachment: format!("ib_calls_{n}.csv"),
            dataset: "ib_calls".into(),
            dates: vec!["2024-03-14".parse().unwrap()],
            rows_total: 10,
            rows_new: 9,
            rows_duplicate: 1,
            rows_rejected: 0,
            raw_key: format!("raw/ib_calls/2024-03-14/AAMk{n}/ib_calls_{n}.csv"),
            quarantined: None,
            lines: None,
        }
    }

    /// An `outbound` batch of these bodies, received `receives` times.
    fn event(bodies: &[String], receives: u32) -> serde_json::Value {
        let records: Vec<serde_json::Value> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                serde_json::json!({
                    "messageId": format!("m{i}"), "receiptHandle": format!("rh{i}"), "body": b,
                    "eventSourceARN": "arn:aws:sqs:eu-west-2:000000000000:charlie-outbound",
                    "attributes": {"ApproximateReceiveCount": receives.to_string()},
                    "messageAttributes": {"correlation_id": {"stringValue": format!("corr-{i}"), "dataType": "String"}},
                })
            })
            .collect();
        serde_json::json!({ "Records": records })
    }

    fn bodies(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| serde_json::to_string(&outcome(i)).unwrap())
            .collect()
    }

    fn failed(resp: &serde_json::Value) -> Vec<String> {
        resp["batchItemFailures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_batch_goes_in_calls_of_max_items_and_a_repeated_outcome_is_one_item() {
        let w = World::new();
        let mut b = bodies(250);
        b.push(b[0].clone());
        let resp = w
            .sender(100)
            .invoke(event(&b, 1), &invocation())
            .await
            .unwrap();
        assert!(failed(&resp).is_empty());
        assert_eq!(w.api.stored().len(), 250);
        assert!(w.api.stored().values().all(|n| *n == 1));
        let sizes: Vec<usize> = w.api.calls().iter().map(|c| c.1).collect();
        assert_eq!(sizes, [100, 100, 50]);
        // The same messages again: the same calls, the same keys, all duplicates, delivered.
        let keys: Vec<String> = w.api.calls().iter().map(|c| c.0.clone()).collect();
        let resp = w
            .sender(100)
            .invoke(event(&b, 2), &invocation())
            .await
            .unwrap();
        assert!(failed(&resp).is_empty());
        let again: Vec<String> = w.api.calls()[3..].iter().map(|c| c.0.clone()).collect();
        assert_eq!(again, keys, "a resent batch repeats its idempotency key");
        assert_eq!(w.api.stored().len(), 250);
    }

    #[tokio::test]
    async fn rejected_items_go_to_the_dead_letter_queue_at_once_and_retried_ones_are_resent() {
        let w = World::new();
        let b = bodies(3);
        let (id0, id1) = (item_id(&outcome(0)), item_id(&outcome(1)));
        w.api
            .reject(&id0, "dataset ib_calls is not known downstream");
        // First call: item 1 is "retry"; the resend stores it.
        let mut results: Vec<serde_json::Value> = [0, 1, 2]
            .iter()
            .map(|i| {
                let id = item_id(&outcome(*i));
                match i {
                    0 => serde_json::json!({"id": id, "status": "rejected", "reason": "dataset ib_calls is not known downstream"}),
                    1 => serde_json::json!({"id": id, "status": "retry"}),
                    _ => serde_json::json!({"id": id, "status": "accepted"}),
                }
            })
            .collect();
        results.sort_by_key(|r| r["id"].as_str().unwrap().to_owned());
        w.api.then(DownstreamScript::Reply(
            207,
            None,
            serde_json::json!({ "results": results }).to_string(),
        ));
        let resp = w
            .sender(100)
            .invoke(event(&b, 1), &invocation())
            .await
            .unwrap();
        assert!(failed(&resp).is_empty(), "{resp}");
        assert_eq!(w.api.calls().len(), 2);
        assert_eq!(w.api.calls()[1].1, 1, "only the retried item is resent");
        assert!(w.api.stored().contains_key(&id1));
        let letters = w.dead.letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].message_id, "m0");
        assert!(
            letters[0].cause.contains("not known downstream"),
            "{}",
            letters[0].cause
        );
    }

    #[tokio::test]
    async fn a_malformed_batch_is_resent_item_by_item_and_only_the_bad_item_is_rejected() {
        let w = World::new();
        let bad = r#"{"error":"bad_request","message":"dates[0] is not a date","field":"items[0].dates"}"#;
        w.api
            .then(DownstreamScript::Reply(400, None, bad.into()))
            .then(DownstreamScript::Reply(413, None, String::new()));
        // The single items: the first sorted id is the bad one.
        let resp = w
            .sender(100)
            .invoke(event(&bodies(4), 1), &invocation())
            .await
            .unwrap();
        // 400 → four single calls; the first single answers 413 alone → rejected.
        assert!(failed(&resp).is_empty());
        assert_eq!(w.api.stored().len(), 3);
        assert_eq!(w.dead.letters().len(), 1);
        assert!(w.dead.letters()[0].cause.contains("413"));
        assert_eq!(
            w.api.calls().iter().map(|c| c.1).collect::<Vec<_>>(),
            [4, 1, 1, 1, 1]
        );
    }

    #[tokio::test]
    async fn a_timeout_after_the_items_were_stored_is_resent_and_counts_as_delivered() {
        let w = World::new();
        w.api.then(DownstreamScript::StoreThenNoAnswer);
        let resp = w
            .sender(100)
            .invoke(event(&bodies(2), 1), &invocation())
            .await
            .unwrap();
        assert!(failed(&resp).is_empty());
        assert_eq!(w.api.calls().len(), 2);
        assert_eq!(w.api.calls()[0].0, w.api.calls()[1].0, "the same key");
        assert!(w.api.stored().values().all(|n| *n == 1));
    }

    #[tokio::test]
    async fn an_outage_opens_the_breaker_and_the_messages_wait_in_the_queue() {
        let w = World::new();
        for _ in 0..3 {
            w.api
                .then(DownstreamScript::Reply(503, None, String::new()));
        }
        let resp = w
            .sender(100)
            .invoke(event(&bodies(2), 1), &invocation())
            .await
            .unwrap();
        assert_eq!(failed(&resp), ["m0", "m1"]);
        assert_eq!(w.api.calls().len(), 3, "three failures open it");
        assert!(
            w.dead.letters().is_empty(),
            "nothing dead-lettered for an outage"
        );
        let waits = w.visibility.changes();
        assert_eq!(waits.len(), 2);
        assert!(
            waits.iter().all(|(_, secs)| (25..=30).contains(secs)),
            "the cool-down left: {waits:?}"
        );
        // While open, no call at all.
        let resp = w
            .sender(100)
            .invoke(event(&bodies(2), 2), &invocation())
            .await
            .unwrap();
        assert_eq!(failed(&resp).len(), 2);
        assert_eq!(w.api.calls().len(), 3);
        // After the cool-down, one probe closes it and the items go.
        let records: &dyn StateRecords = w.records.as_ref();
        let (mut record, version) = w.sender(1).breaker.read(Utc::now()).await.unwrap();
        assert_eq!(record.state, BreakerState::Open);
        record.opened_at = Some(Utc::now() - chrono::Duration::seconds(31));
        assert!(
            records
                .put_versioned(
                    "BREAKER#downstream",
                    "state",
                    serde_json::to_string(&record).unwrap(),
                    version
                )
                .await
                .unwrap()
        );
        let resp = w
            .sender(100)
            .invoke(event(&bodies(2), 3), &invocation())
            .await
            .unwrap();
        assert!(failed(&resp).is_empty());
        assert_eq!(w.api.stored().len(), 2);
        let (record, _) = w.sender(1).breaker.read(Utc::now()).await.unwrap();
        assert_eq!(record.state, BreakerState::Closed);
    }

    #[tokio::test]
    async fn throttling_and_a_rotated_token_are_waited_out_inside_the_invocation() {
        let w = World::new();
        w.api
            .then(DownstreamScript::Reply(
                429,
                Some(Duration::from_millis(0)),
                String::new(),
            ))
            .then(DownstreamScript::Reply(
                401,
                None,
                r#"{"error":"unauthorized","message":"token expired"}"#.into(),
            ));
        let resp = w
            .sender(100)
            .invoke(event(&bodies(1), 1), &invocation())
            .await
            .unwrap();
        assert!(failed(&resp).is_empty());
        assert_eq!(w.api.refreshes(), 1);
        assert_eq!(w.api.calls().len(), 3);
        let (record, _) = w.sender(1).breaker.read(Utc::now()).await.unwrap();
        assert_eq!(record.state, BreakerState::Closed);
    }

    #[tokio::test]
    async fn an_unreadable_message_goes_to_the_dead_letter_queue_and_the_rest_go_on() {
        let w = World::new();
        let mut b = bodies(1);
        b.push("{not json".into());
        let resp = w
            .sender(100)
            .invoke(event(&b, 1), &invocation())
            .await
            .unwrap();
        assert!(failed(&resp).is_empty());
        assert_eq!(w.api.stored().len(), 1);
        assert_eq!(w.dead.letters().len(), 1);
        assert_eq!(w.dead.letters()[0].message_id, "m1");
    }

    #[tokio::test]
    async fn a_message_left_for_retry_waits_longer_with_each_receive() {
        let w = World::new();
        let s = w.sender(100);
        let d = Delivery::default();
        let now = Utc::now();
        assert_eq!(s.retry_visibility(1, &d, now), 2);
        assert_eq!(s.retry_visibility(5, &d, now), 32);
        assert_eq!(s.retry_visibility(40, &d, now), 3600);
        let asked = Delivery {
            retry_after: Some(Duration::from_secs(120)),
            ..Delivery::default()
        };
        assert_eq!(s.retry_visibility(1, &asked, now), 120);
    }
}
