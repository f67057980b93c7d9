//! The batch sender's benchmark: N ingest outcomes through the `batch-sender` stage itself (its
//! HTTP adapter, real TCP) against the fake downstream API answering every call after a fixed
//! latency, as SQS batches of `batch` messages handled by `concurrency` invocations at once
//! (the outbound mapping's batch size and maximum concurrency). Run twice on the same outcomes:
//! batched (`max_items` per call) and one call per item (`max_items = 1`), each against a fresh
//! fake; prints calls made, seconds, items/s and the batching gain. The breaker's record, the
//! dead letters and the visibility calls are in memory: the downstream's latency is the subject.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;

use charlie::adapters::downstream::HttpDownstream;
use charlie::adapters::memory::{MemoryDeadLetters, MemoryState, MemoryVisibility};
use charlie::breaker::{Breaker, BreakerSettings};
use charlie::invocation::Invocation;
use charlie::messages::IngestOutcome;
use charlie::secret::Secret;
use charlie::stages::Handler;
use charlie::stages::batch_sender::{BatchSender, SenderSettings};

use crate::fake_downstream::FakeDownstream;

const TOKEN: &str = "bench-downstream-token";

pub struct SenderBench {
    pub items: usize,
    pub latency: Duration,
    pub batch: usize,
    pub concurrency: usize,
    pub max_items: usize,
}

struct Figures {
    calls: u64,
    stored: usize,
    seconds: f64,
    failed: usize,
}

fn outcome(i: usize) -> IngestOutcome {
    IngestOutcome {
        v: 1,
        mailbox: "ops-reports@contoso.example".into(),
        message_id: format!("AAMkAGI2-bench-{i:06}"),
        attachment: format!("ib_calls_{i:06}.csv"),
        dataset: "ib_calls".into(),
        dates: vec![chrono::NaiveDate::from_ymd_opt(2024, 3, 14).unwrap_or_default()],
        rows_total: 120,
        rows_new: 118,
        rows_duplicate: 2,
        rows_rejected: 0,
        raw_key: format!("raw/ib_calls/2024-03-14/AAMkAGI2-bench-{i:06}/ib_calls_{i:06}.csv"),
        quarantined: None,
        lines: None,
    }
}

/// SQS events of `batch` messages each, as Lambda delivers `outbound`.
fn events(items: usize, batch: usize) -> Vec<serde_json::Value> {
    (0..items)
        .collect::<Vec<_>>()
        .chunks(batch.max(1))
        .map(|chunk| {
            let records: Vec<serde_json::Value> = chunk
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "messageId": format!("m{i}"), "receiptHandle": format!("rh{i}"),
                        "body": serde_json::to_string(&outcome(*i)).unwrap_or_default(),
                        "eventSourceARN": "arn:aws:sqs:eu-west-2:000000000000:bench-outbound",
                        "attributes": {"ApproximateReceiveCount": "1"},
                        "messageAttributes": {"correlation_id": {"stringValue": format!("bench-{i}"), "dataType": "String"}},
                    })
                })
                .collect();
            serde_json::json!({ "Records": records })
        })
        .collect()
}

async fn run(b: &SenderBench, max_items: usize) -> anyhow::Result<Figures> {
    let fake = FakeDownstream::start(TOKEN)?;
    fake.set_latency(b.latency);
    let records = Arc::new(MemoryState::default());
    let sender = Arc::new(BatchSender {
        api: Arc::new(HttpDownstream::new(
            &fake.base_url(),
            Secret::new(TOKEN),
            Duration::from_secs(10),
            true,
        )?),
        breaker: Breaker::new(records.clone(), "downstream", BreakerSettings::default()),
        visibility: Arc::new(MemoryVisibility::default()),
        dead_letters: Arc::new(MemoryDeadLetters::with_max_receives(100)),
        records,
        settings: SenderSettings {
            max_items,
            ..SenderSettings::default()
        },
    });
    let started = Instant::now();
    let answers: Vec<anyhow::Result<serde_json::Value>> =
        futures::stream::iter(events(b.items, b.batch))
            .map(|event| {
                let sender = Arc::clone(&sender);
                async move {
                    sender
                        .invoke(event, &Invocation::with_timeout(Duration::from_secs(900)))
                        .await
                }
            })
            .buffer_unordered(b.concurrency.max(1))
            .collect()
            .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut failed = 0;
    for a in answers {
        failed += a?["batchItemFailures"].as_array().map_or(0, Vec::len);
    }
    Ok(Figures {
        calls: fake.calls(),
        stored: fake.stored_count(),
        seconds,
        failed,
    })
}

pub async fn bench_sender(b: SenderBench) -> anyhow::Result<()> {
    println!(
        "batch sender → fake downstream API answering each call after {} ms; {} outcomes as SQS batches of {}, {} invocations at once",
        b.latency.as_millis(),
        b.items,
        b.batch,
        b.concurrency
    );
    println!(
        "{:<26} {:>8} {:>8} {:>9} {:>10} {:>8}",
        "mode", "items", "calls", "seconds", "items/s", "stored"
    );
    let mut rates = Vec::new();
    for (mode, max_items) in [
        (format!("batched ({} per call)", b.max_items), b.max_items),
        ("one call per item".to_owned(), 1),
    ] {
        let f = run(&b, max_items)
            .await
            .with_context(|| format!("the {mode} run"))?;
        let rate = b.items as f64 / f.seconds;
        println!(
            "{:<26} {:>8} {:>8} {:>9.2} {:>10.0} {:>8}",
            mode, b.items, f.calls, f.seconds, rate, f.stored
        );
        if f.stored != b.items || f.failed != 0 {
            bail!(
                "{mode}: the downstream holds {} of {} outcomes, {} left for retry",
                f.stored,
                b.items,
                f.failed
            );
        }
        rates.push((rate, f.calls));
    }
    println!(
        "batching gain: {:.1}x the items/s, {:.0}x fewer calls",
        rates[0].0 / rates[1].0,
        rates[1].1 as f64 / rates[0].1.max(1) as f64
    );
    Ok(())
}
