//! The store benchmark: ingests ib_calls exports through the ingest stage itself (one mail, the
//! attachment streamed to the emulator's S3 when large, parsed beside storing, checkpointed and
//! continued before each invocation's deadline as on Lambda), into each row store (the
//! emulator's DynamoDB, a real PostgreSQL server), and prints per file and store: rows, seconds,
//! rows/s, invocations used, row-store requests by operation (DynamoDB) or statements
//! (PostgreSQL) in all and per 1,000 rows, and the peak RSS the ingest added. Each store starts
//! empty for each file.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_lambda_events::sqs::SqsEvent;
use charlie::adapters::aws::dynamodb::{DynamoRowStore, DynamoState};
use charlie::adapters::aws::s3::S3Objects;
use charlie::adapters::memory::{MemoryDeadLetters, MemoryMail, MemoryMailbox, MemoryQueue};
use charlie::adapters::postgres::{PostgresRowStore, PostgresSettings};
use charlie::definitions::Definitions;
use charlie::invocation::Invocation;
use charlie::messages::IngestOutcome;
use charlie::ports::{EmailAddress, FileAttachment, MailMessage, Recipient, RowStore};
use charlie::stages::ingest::{Ingest, IngestTuning};
use chrono::Utc;

use crate::clients::AwsClients;
use crate::emulator::Emulator;
use crate::postgres::PostgresServer;
use crate::project;

pub async fn bench_stores(files: &[PathBuf]) -> anyhow::Result<()> {
    let defs = Arc::new(Definitions::parse(&std::fs::read_to_string(
        project::root().join("reports.toml"),
    )?)?);
    let emulator = Emulator::start()?;
    let clients = AwsClients::from_config(&emulator.sdk_config().await, true);
    let postgres = PostgresServer::start()?;
    println!(
        "machine: {} cores; DynamoDB and S3: moto at {}; PostgreSQL on 127.0.0.1:{}; invocations of {} s, checkpoint {} s before the end",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        emulator.endpoint(),
        postgres.port(),
        INVOCATION.as_secs(),
        IngestTuning::default().checkpoint_margin.num_seconds(),
    );
    for (i, file) in files.iter().enumerate() {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        for store in ["dynamodb", "postgres"] {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let size = bytes.len();
            if store == "dynamodb" && size as u64 > dynamodb_max_bytes() {
                println!(
                    "{}",
                    serde_json::json!({
                        "file": name, "bytes": size, "store": store,
                        "skipped": "over DYNAMODB_MAX_MB: the emulator's DynamoDB slows down as a partition grows, so this file would take it most of an hour; raise DYNAMODB_MAX_MB to run it",
                    })
                );
                continue;
            }
            let (rows, counts): (Arc<dyn RowStore>, Box<dyn Fn() -> serde_json::Value>) = if store
                == "dynamodb"
            {
                let table = format!("bench-rows-{i}");
                clients.create_pk_sk_table(&table).await?;
                let dynamo = Arc::new(DynamoRowStore::new(clients.dynamodb.clone(), &table));
                let d = dynamo.clone();
                (
                    dynamo,
                    Box::new(move || {
                        let c = d.request_counts();
                        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                        serde_json::json!({
                            "BatchGetItem": get(&c.batch_get), "BatchWriteItem": get(&c.batch_write),
                            "TransactWriteItems": get(&c.transact_write),
                            "Query": get(&c.query), "throttled": get(&c.throttled),
                        })
                    }),
                )
            } else {
                let db = format!("bench_{i}");
                postgres.create_database(&db)?;
                let pg = Arc::new(
                    PostgresRowStore::connect(PostgresSettings {
                        url: postgres.url_of(&db),
                        password: None,
                    })
                    .await?,
                );
                let before = pg.statements();
                let p = pg.clone();
                (
                    pg,
                    Box::new(move || serde_json::json!({"statements": p.statements() - before})),
                )
            };
            let run = ingest_file(&clients, defs.clone(), rows, bytes, i).await?;
            let requests = counts();
            let total: u64 = requests
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| *k != "throttled")
                        .filter_map(|(_, v)| v.as_u64())
                        .sum()
                })
                .unwrap_or_default();
            let per_1000: serde_json::Map<String, serde_json::Value> = requests
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let n = v.as_u64().unwrap_or_default() as f64;
                    (
                        k.clone(),
                        serde_json::json!(round2(n / run.rows_total as f64 * 1000.0)),
                    )
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "file": name, "bytes": size, "store": store,
                    "rows_total": run.rows_total, "rows_new": run.rows_new,
                    "seconds": round2(run.seconds),
                    "rows_per_s": (run.rows_total as f64 / run.seconds).round(),
                    "invocations": run.invocations,
                    "requests": requests, "requests_per_1000_rows": per_1000,
                    "row_store_requests": total,
                    "peak_rss_mib": run.peak_rss_mib,
                })
            );
        }
    }
    Ok(())
}

/// Files larger than this skip DynamoDB (`DYNAMODB_MAX_MB`, default 60).
fn dynamodb_max_bytes() -> u64 {
    std::env::var("DYNAMODB_MAX_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(60)
        * 1_000_000
}

/// Each invocation may run as long as the deployed ingest function (Terraform's default).
const INVOCATION: Duration = Duration::from_secs(300);

struct Run {
    rows_total: u64,
    rows_new: u64,
    seconds: f64,
    invocations: u32,
    /// The process's peak resident memory while ingesting, less what it held before (the
    /// file itself, held by the in-memory mailbox that stands in for Graph).
    peak_rss_mib: f64,
}

/// Ingests `bytes` as one mail's attachment through the ingest stage (S3 and state on the
/// emulator, rows in `rows`), following its continuations until the outcome is recorded.
/// The ingest stage wired as the large-file test and this benchmark need it: S3 and state in
/// the emulator, the given row store, one mailbox in memory, queues in memory; driven from the
/// first `inbound` message through every continuation it queues, as SQS would.
pub struct IngestHarness {
    pub ingest: Ingest,
    pub inbound: Arc<MemoryQueue>,
    pub outbound: Arc<MemoryQueue>,
    pub dead_letters: Arc<MemoryDeadLetters>,
}

/// What driving one mail through the stage took.
pub struct Driven {
    pub invocations: u32,
    pub seconds: f64,
    pub outcomes: Vec<IngestOutcome>,
}

impl IngestHarness {
    pub fn new(
        definitions: Arc<Definitions>,
        mailbox: Arc<MemoryMailbox>,
        objects: Arc<S3Objects>,
        rows: Arc<dyn RowStore>,
        state: Arc<DynamoState>,
        tuning: IngestTuning,
    ) -> Self {
        let (inbound, outbound) = (
            Arc::new(MemoryQueue::default()),
            Arc::new(MemoryQueue::default()),
        );
        let dead_letters = Arc::new(MemoryDeadLetters::default());
        IngestHarness {
            ingest: Ingest {
                definitions,
                mail: mailbox,
                objects,
                rows,
                claims: state.clone(),
                records: state,
                inbound: inbound.clone(),
                outbound: Some(outbound.clone()),
                dead_letters: dead_letters.clone(),
                tuning,
            },
            inbound,
            outbound,
            dead_letters,
        }
    }

    /// Ingests `message_id` of `mailbox`: one invocation of `timeout` per message, each
    /// continuation it queues handled next; fails when an invocation reports a failure, a
    /// message is dead-lettered, or it takes more than `max_invocations`.
    pub async fn drive(
        &self,
        mailbox: &str,
        message_id: &str,
        timeout: Duration,
        max_invocations: u32,
    ) -> anyhow::Result<Driven> {
        let started = Instant::now();
        let mut next = vec![serde_json::json!({"v": 1, "kind": "graph_message", "mailbox": mailbox, "message_id": message_id, "source": "webhook"}).to_string()];
        let mut invocations = 0;
        while let Some(body) = next.pop() {
            invocations += 1;
            anyhow::ensure!(
                invocations <= max_invocations,
                "no end in sight after {max_invocations} invocations"
            );
            let event: SqsEvent = serde_json::from_value(serde_json::json!({"Records": [{
                "messageId": format!("m{invocations}"), "body": body,
                "eventSourceARN": "arn:aws:sqs:eu-west-2:123456789012:inbound",
                "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
            }]}))?;
            let resp = self
                .ingest
                .handle(event, &Invocation::with_timeout(timeout))
                .await;
            anyhow::ensure!(
                resp.batch_item_failures.is_empty() && self.dead_letters.letters().is_empty(),
                "invocation {invocations} failed: {:?}",
                self.dead_letters.letters()
            );
            next.extend(self.inbound.take().into_iter().map(|q| q.body));
        }
        Ok(Driven {
            invocations,
            seconds: started.elapsed().as_secs_f64(),
            outcomes: self.outbound.bodies(),
        })
    }
}

async fn ingest_file(
    clients: &AwsClients,
    definitions: Arc<Definitions>,
    rows: Arc<dyn RowStore>,
    bytes: Vec<u8>,
    i: usize,
) -> anyhow::Result<Run> {
    let bucket = format!("bench-{i}-{}", rand_suffix());
    clients.create_bucket(&bucket).await?;
    let table = format!("bench-state-{i}-{}", rand_suffix());
    clients.create_pk_sk_table(&table).await?;
    let mailbox = Arc::new(MemoryMailbox::default());
    mailbox.deliver(bench_mail(bytes));
    let harness = IngestHarness::new(
        definitions,
        mailbox,
        Arc::new(S3Objects::new(clients.s3.clone(), &bucket)),
        rows,
        Arc::new(DynamoState::new(clients.dynamodb.clone(), &table)),
        IngestTuning::default(),
    );
    let before = rss_kib("VmRSS");
    reset_peak_rss();
    let driven = harness
        .drive(BENCH_MAILBOX, "bench", INVOCATION, 1000)
        .await?;
    let peak = rss_kib("VmHWM");
    let [outcome] = &driven.outcomes[..] else {
        anyhow::bail!("expected one outcome, got {:?}", driven.outcomes);
    };
    Ok(Run {
        rows_total: outcome.rows_total,
        rows_new: outcome.rows_new,
        seconds: driven.seconds,
        invocations: driven.invocations,
        peak_rss_mib: round2(peak.saturating_sub(before) as f64 / 1024.0),
    })
}

const BENCH_MAILBOX: &str = "ops-reports@contoso.example";

fn bench_mail(bytes: Vec<u8>) -> MemoryMail {
    MemoryMail {
        mailbox: BENCH_MAILBOX.into(),
        folder: "inbox".into(),
        message: MailMessage {
            id: "bench".into(),
            subject: Some("IB calls export".into()),
            from: Some(Recipient {
                email_address: EmailAddress {
                    name: None,
                    address: Some("exports@dialer.example".into()),
                },
            }),
            received: Some(Utc::now()),
            internet_message_id: None,
            // Exchange Online's verdict on a genuine export (the dataset requires one).
            headers: vec![charlie::ports::MessageHeader {
                name: "Authentication-Results".into(),
                value: "spf=pass smtp.mailfrom=dialer.example; dkim=pass header.d=dialer.example; dmarc=pass header.from=dialer.example".into(),
            }],
        },
        attachments: vec![FileAttachment {
            id: "bench-att".into(),
            name: "ib_calls_bench.csv".into(),
            content_type: "text/csv".into(),
            bytes,
        }],
    }
}

fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A field of `/proc/self/status` in KiB (0 where there is none).
pub(crate) fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_owned))
        })
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux `clear_refs` 5).
pub(crate) fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({e}): peaks include earlier runs");
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
