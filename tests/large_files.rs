//! A 1M-row attachment through the ingest stage on each real row store: streamed from the mail
//! source to S3 (the emulator's, multipart), parsed from S3's stream, stored across several
//! invocations that each checkpoint before their deadline, and recorded once: 0 rows lost,
//! 0 duplicated, one outcome.
//!
//! `CHARLIE_LARGE_ROWS` sets the row count: 1,000,000 by default on PostgreSQL, 100,000 on
//! DynamoDB, since the emulator's DynamoDB slows down as a partition grows (one day's rows are
//! one partition) and would take most of an hour for a million; `bench/stores` runs the million
//! on both.

use std::sync::Arc;
use std::time::Duration;

use charlie::adapters::aws::dynamodb::{DynamoRowStore, DynamoState};
use charlie::adapters::aws::s3::S3Objects;
use charlie::adapters::memory::{MemoryMail, MemoryMailbox};
use charlie::definitions::Definitions;
use charlie::messages::IngestOutcome;
use charlie::ports::{
    EmailAddress, FileAttachment, MailMessage, Objects, Recipient, RowStore, StateRecords,
};
use charlie::stages::ingest::IngestTuning;
use charlie_local::bench::IngestHarness;
use charlie_tests::{clients, create_table, postgres_rows, unique};
use futures::TryStreamExt;

const MAILBOX: &str = "ops-reports@contoso.example";
const DAY: &str = "2024-03-14";

/// Each invocation may run this long, and checkpoints with this much left (so it stores for
/// 15 s: a file this size takes several).
const TIMEOUT: Duration = Duration::from_secs(40);
const MARGIN_SECONDS: i64 = 25;

fn rows(default: usize) -> usize {
    std::env::var("CHARLIE_LARGE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An ib_calls export of `n` calls, every 10th a repeat of the call before it (so the file
/// holds `n - n/10` unique calls).
fn export(n: usize) -> Vec<u8> {
    use std::fmt::Write;
    let mut csv = String::with_capacity(n * 140);
    csv.push_str("call_id,agent_id,agent_name,queue,started_at,answered_at,ended_at,duration_seconds,wait_seconds,disposition,caller_number,notes\n");
    for i in 0..n {
        let id = if i % 10 == 9 { i - 1 } else { i };
        let (h, m) = (8 + id / 3600 % 10, id / 60 % 60);
        writeln!(
            csv,
            "C{id:08},A{:04},Agent {},Support,{DAY}T{h:02}:{m:02}:00,{DAY}T{h:02}:{m:02}:05,{DAY}T{h:02}:{m:02}:50,45,5,RESOLVED,+44 20 7946 {:04},",
            id % 500,
            id % 500,
            id % 10_000
        )
        .unwrap();
    }
    csv.into_bytes()
}

fn mail(bytes: Vec<u8>) -> MemoryMail {
    MemoryMail {
        mailbox: MAILBOX.into(),
        folder: "inbox".into(),
        message: MailMessage {
            id: "m-large".into(),
            subject: Some(format!("IB calls export {DAY}")),
            from: Some(Recipient {
                email_address: EmailAddress {
                    name: None,
                    address: Some("exports@dialer.example".into()),
                },
            }),
            received: Some(format!("{DAY}T23:00:00Z").parse().unwrap()),
            internet_message_id: Some("<m-large@dialer.example>".into()),
            // Exchange Online's verdict on a genuine export (the dataset requires one).
            headers: vec![charlie::ports::MessageHeader {
                name: "Authentication-Results".into(),
                value: "spf=pass smtp.mailfrom=dialer.example; dkim=pass header.d=dialer.example; dmarc=pass header.from=dialer.example".into(),
            }],
        },
        attachments: vec![FileAttachment {
            id: "m-large-att".into(),
            name: format!("ib_calls_{DAY}.csv"),
            content_type: "text/csv".into(),
            bytes,
        }],
    }
}

async fn bucket(c: &charlie_local::clients::AwsClients) -> String {
    let bucket = unique("large");
    c.create_bucket(&bucket).await.unwrap();
    bucket
}

/// Ingests the export through `rows` until no continuation is left and checks the result.
async fn ingest_large_file(store: &str, rows: Arc<dyn RowStore>, n: usize) {
    let c = clients().await;
    let state_table = unique("state");
    create_table(&c, &state_table).await.unwrap();
    let state = Arc::new(DynamoState::new(c.dynamodb.clone(), &state_table));
    let objects = Arc::new(S3Objects::new(c.s3.clone(), bucket(&c).await));
    let mailbox = Arc::new(MemoryMailbox::default());
    let bytes = export(n);
    let size = bytes.len();
    mailbox.deliver(mail(bytes));
    let harness = IngestHarness::new(
        Arc::new(Definitions::parse(include_str!("../reports.toml")).unwrap()),
        mailbox.clone(),
        objects.clone(),
        rows.clone(),
        state.clone(),
        IngestTuning {
            checkpoint_margin: chrono::Duration::seconds(MARGIN_SECONDS),
            ..IngestTuning::default()
        },
    );
    let driven = harness
        .drive(MAILBOX, "m-large", TIMEOUT, 100)
        .await
        .unwrap_or_else(|e| panic!("{store}: {e:#}"));
    let (invocations, secs) = (driven.invocations, driven.seconds);
    assert!(
        invocations >= 2,
        "{store}: a file this size takes more than one invocation ({invocations})"
    );
    assert_eq!(mailbox.streamed(), 1, "{store}: streamed, once");

    let unique_rows = (n - n / 10) as u64;
    let outcomes: Vec<IngestOutcome> = driven.outcomes;
    assert_eq!(outcomes.len(), 1, "{store}: one outcome");
    let o = &outcomes[0];
    assert_eq!(
        (o.rows_total, o.rows_new, o.rows_duplicate, o.rows_rejected),
        (n as u64, unique_rows, (n / 10) as u64, 0),
        "{store}: {o:?}"
    );
    assert!(o.lines.unwrap().balanced());
    let recorded = (state.as_ref() as &dyn StateRecords)
        .outcomes_of_mail(MAILBOX, "m-large")
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1);

    // Every unique call stored once: read back page by page.
    let defs = Definitions::parse(include_str!("../reports.toml")).unwrap();
    let ds = &defs.datasets["ib_calls"];
    let mut pages = rows.day_pages("ib_calls", ds, DAY.parse().unwrap());
    let (mut stored, mut last) = (0u64, String::new());
    while let Some(page) = pages.try_next().await.unwrap() {
        for row in page {
            assert!(row.key > last, "{store}: keys in order, none twice");
            last = row.key;
            stored += 1;
        }
    }
    assert_eq!(stored, unique_rows, "{store}: 0 lost, 0 duplicated");
    let archived = objects.get(&o.raw_key, None).await.unwrap();
    assert_eq!(archived.len(), size, "{store}: archived whole");
    println!(
        "{store}: {n} rows ({} MB) in {invocations} invocations, {secs:.1} s, {:.0} rows/s",
        size / 1_000_000,
        n as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_attachment_is_stored_across_invocations_on_dynamodb() {
    let c = clients().await;
    let table = unique("rows");
    create_table(&c, &table).await.unwrap();
    let rows = Arc::new(DynamoRowStore::new(c.dynamodb.clone(), &table));
    ingest_large_file("dynamodb", rows, self::rows(100_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_attachment_is_stored_across_invocations_on_postgres() {
    ingest_large_file(
        "postgres",
        Arc::new(postgres_rows().await),
        self::rows(1_000_000),
    )
    .await;
}
