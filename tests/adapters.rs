//! Adapter tests: Charlie's stores and queues against the real emulator, each test with its own
//! resources.

use aws_sdk_dynamodb::types::AttributeValue;
use charlie::adapters::aws::dynamodb::{DynamoRowStore, DynamoState};
use charlie::adapters::aws::s3::{PART_BYTES, S3Objects};
use charlie::adapters::aws::secrets::SecretClientStates;
use charlie::adapters::aws::sqs::SqsQueue;
use charlie::csv_ingest::{Origin, parse_attachment};
use charlie::definitions::Definitions;
use charlie::invocation::Invocation;
use charlie::ports::{Claim, Claims, ClientStateStore, Objects, RowStore, Subscribed, WorkQueue};
use charlie::stages::poller::{fresh_client_state, keep_client_state};
use charlie_tests::{clients, create_table, postgres_rows, unique};
use chrono::{Duration, Utc};
use futures::{StreamExt, TryStreamExt};

/// The emulator's clients and a state table of the test's own.
async fn fresh_state() -> (charlie_local::clients::AwsClients, DynamoState) {
    let c = clients().await;
    let table = unique("state");
    create_table(&c, &table).await.unwrap();
    let state = DynamoState::new(c.dynamodb.clone(), &table);
    (c, state)
}

fn definitions() -> Definitions {
    Definitions::parse(include_str!("../reports.toml")).unwrap()
}

const HEADER: &str = "call_id,agent_id,queue,started_at,answered_at,wait_seconds,notes\n";

/// Each row store on fresh resources: the DynamoDB table and a PostgreSQL database. Every row
/// test runs on both, so their semantics stay the same.
async fn row_stores() -> Vec<(&'static str, Box<dyn RowStore>)> {
    let c = clients().await;
    let table = unique("rows");
    create_table(&c, &table).await.unwrap();
    vec![
        (
            "dynamodb",
            Box::new(DynamoRowStore::new(c.dynamodb.clone(), &table)),
        ),
        ("postgres", Box::new(postgres_rows().await)),
    ]
}

#[tokio::test]
async fn rows_are_stored_once_across_mails() {
    let defs = definitions();
    let ds = &defs.datasets["ib_calls"];
    let first = format!(
        "{HEADER}c1,A1,Sales,2024-03-14T09:00:00,,5,first\nc2,A1,Sales,2024-03-14T10:00:00,,5,\n"
    );
    let second = format!(
        "{HEADER}c2,A1,Sales,2024-03-14T10:00:00,,5,edited\nc3,A2,Sales,2024-03-14T11:00:00,,5,\n"
    );
    let rows1 = parse_attachment(ds, first.as_bytes(), &Origin::default())
        .unwrap()
        .rows;
    let rows2 = parse_attachment(ds, second.as_bytes(), &Origin::default())
        .unwrap()
        .rows;
    for (name, store) in row_stores().await {
        let o1 = store
            .store("ib_calls", ds, &rows1, "mb/m1", Utc::now())
            .await
            .unwrap();
        assert_eq!((o1.new, o1.duplicate), (2, 0), "{name}");
        let o2 = store
            .store("ib_calls", ds, &rows2, "mb/m2", Utc::now())
            .await
            .unwrap();
        assert_eq!((o2.new, o2.duplicate), (1, 1), "{name}");
        // The same mail again changes nothing.
        let o3 = store
            .store("ib_calls", ds, &rows2, "mb/m2", Utc::now())
            .await
            .unwrap();
        assert_eq!((o3.new, o3.duplicate), (0, 2), "{name}");

        let stored = store
            .rows_for_day("ib_calls", ds, "2024-03-14".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(stored.len(), 3, "{name}");
        let c2 = stored.iter().find(|r| r.key == "c2").unwrap();
        assert_eq!(c2.source, "mb/m1", "{name}: the first occurrence wins");
        assert!(
            c2.values[6].is_none(),
            "{name}: c2's notes stay as first stored (empty)"
        );
    }
}

#[tokio::test]
async fn with_replace_a_repeated_row_overwrites_the_stored_one_on_both_stores() {
    let text = include_str!("../reports.toml").replacen(
        "on_duplicate = \"keep_first\"",
        "on_duplicate = \"replace\"",
        1,
    );
    let defs = Definitions::parse(&text).unwrap();
    let ds = &defs.datasets["ib_calls"];
    let first = parse_attachment(
        ds,
        format!("{HEADER}c1,A1,Sales,2024-03-14T09:00:00,,5,first\n").as_bytes(),
        &Origin::default(),
    )
    .unwrap()
    .rows;
    let second = parse_attachment(
        ds,
        format!("{HEADER}c1,A1,Sales,2024-03-14T09:00:00,,7,second\nc2,A1,Sales,2024-03-14T09:30:00,,1,\n").as_bytes(),
        &Origin::default(),
    )
    .unwrap()
    .rows;
    for (name, store) in row_stores().await {
        store
            .store("ib_calls", ds, &first, "mb/m1", Utc::now())
            .await
            .unwrap();
        let o = store
            .store("ib_calls", ds, &second, "mb/m2", Utc::now())
            .await
            .unwrap();
        assert_eq!((o.new, o.duplicate), (1, 1), "{name}");
        let stored = store
            .rows_for_day("ib_calls", ds, "2024-03-14".parse().unwrap())
            .await
            .unwrap();
        let c1 = stored.iter().find(|r| r.key == "c1").unwrap();
        assert_eq!(c1.source, "mb/m2", "{name}: replaced");
        assert_eq!(c1.values, second[0].values, "{name}");
    }
}

/// Two mails carrying the same rows, stored at the same moment (two ingests, as the inbound
/// mapping allows): each row is stored once and credited to the one mail that counted it new,
/// and the counts add up exactly — new across both = the rows not stored before, the rest
/// duplicates. On both stores, over several rounds so the writes interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_first_holds_when_two_mails_store_the_same_rows_at_once_on_both_stores() {
    let defs = definitions();
    let ds = &defs.datasets["ib_calls"];
    assert_eq!(
        ds.on_duplicate,
        charlie::definitions::OnDuplicate::KeepFirst
    );
    for (name, store) in row_stores().await {
        for round in 0..3 {
            let day = format!("2024-05-{:02}", 10 + round);
            let mut text = HEADER.to_owned();
            for i in 0..3000 {
                text.push_str(&format!(
                    "r{round}-{i:05},A1,Sales,{day}T09:{:02}:00,,5,\n",
                    i % 60
                ));
            }
            let rows = parse_attachment(ds, text.as_bytes(), &Origin::default())
                .unwrap()
                .rows;
            // 92 of them came in an earlier mail.
            store
                .store("ib_calls", ds, &rows[..92], "mb/earlier", Utc::now())
                .await
                .unwrap();
            let (a, b) = tokio::join!(
                store.store("ib_calls", ds, &rows, "mb/a", Utc::now()),
                store.store("ib_calls", ds, &rows, "mb/b", Utc::now()),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.new + b.new, 2908, "{name} round {round}: {a:?} {b:?}");
            assert_eq!(a.duplicate + b.duplicate, 3092, "{name} round {round}");
            let day: chrono::NaiveDate = day.parse().unwrap();
            let stored = store.rows_for_day("ib_calls", ds, day).await.unwrap();
            assert_eq!(stored.len(), 3000, "{name} round {round}");
            let credited = |mail: &str| stored.iter().filter(|r| r.source == mail).count() as u64;
            assert_eq!(
                (credited("mb/earlier"), credited("mb/a"), credited("mb/b")),
                (92, a.new, b.new),
                "{name} round {round}: every row credited to the mail that counted it new"
            );
        }
    }
}

/// A day rebuilt under a staging name replaces the day: the staged rows in (over the old ones
/// of the same key), the old rows no file holds deleted, a row stored since the rebuild began
/// kept, the staging emptied; the counts say so. On both stores, with more rows than a page.
#[tokio::test]
async fn a_staged_day_replaces_the_day_on_both_stores() {
    let defs = definitions();
    let ds = &defs.datasets["ib_calls"];
    let day: chrono::NaiveDate = "2024-03-14".parse().unwrap();
    let rows_of = |from: usize, to: usize, note: &str| {
        let mut text = HEADER.to_owned();
        for i in from..to {
            text.push_str(&format!(
                "call-{i:05},A1,Sales,2024-03-14T09:{:02}:00,,5,{note}\n",
                i % 60
            ));
        }
        parse_attachment(ds, text.as_bytes(), &Origin::default())
            .unwrap()
            .rows
    };
    for (name, store) in row_stores().await {
        let long_ago = Utc::now() - Duration::hours(1);
        // The day: 0..2500 from an old mail.
        store
            .store("ib_calls", ds, &rows_of(0, 2500, "old"), "mb/old", long_ago)
            .await
            .unwrap();
        let since = Utc::now();
        // The rebuild: 100..2500 (0..100 are in no file any more) and 2500..2600.
        let staged = store
            .store(
                "ib_calls@rebuild",
                ds,
                &rows_of(100, 2600, "rebuilt"),
                "mb/rebuilt",
                since,
            )
            .await
            .unwrap();
        assert_eq!(staged.new, 2500, "{name}");
        // An ingest beside the rebuild stores 5000..5010.
        store
            .store(
                "ib_calls",
                ds,
                &rows_of(5000, 5010, "new"),
                "mb/new",
                Utc::now(),
            )
            .await
            .unwrap();
        let replaced = store
            .replace_day("ib_calls", ds, day, "ib_calls@rebuild", since)
            .await
            .unwrap();
        assert_eq!(
            (
                replaced.before,
                replaced.after,
                replaced.removed,
                replaced.kept
            ),
            (2510, 2510, 100, 10),
            "{name}"
        );
        let after = store.rows_for_day("ib_calls", ds, day).await.unwrap();
        assert_eq!(after.len(), 2510, "{name}");
        assert!(
            after.iter().all(|r| r.key.as_str() >= "call-00100"),
            "{name}"
        );
        let sources: std::collections::BTreeMap<&str, usize> =
            after.iter().fold(Default::default(), |mut m, r| {
                *m.entry(r.source.as_str()).or_default() += 1;
                m
            });
        assert_eq!(
            sources,
            [("mb/new", 10), ("mb/rebuilt", 2500)].into(),
            "{name}"
        );
        assert!(
            store
                .rows_for_day("ib_calls@rebuild", ds, day)
                .await
                .unwrap()
                .is_empty(),
            "{name}: the staging is empty"
        );
    }
}

#[tokio::test]
async fn more_than_one_batch_of_rows_is_written_read_back_in_pages_and_deleted() {
    let defs = definitions();
    let ds = &defs.datasets["ib_calls"];
    let mut text = HEADER.to_owned();
    for i in 0..2600 {
        text.push_str(&format!(
            "call-{i:04},A1,Sales,2024-03-14T09:{:02}:00,,5,{}\n",
            i % 60,
            "x".repeat(if i < 260 { 2000 } else { 10 })
        ));
    }
    let rows = parse_attachment(ds, text.as_bytes(), &Origin::default())
        .unwrap()
        .rows;
    let day = "2024-03-14".parse().unwrap();
    let mut orders = Vec::new();
    for (name, store) in row_stores().await {
        let o = store
            .store("ib_calls", ds, &rows, "mb/big", Utc::now())
            .await
            .unwrap();
        assert_eq!(o.new, 2600, "{name}");
        let pages: Vec<usize> = store
            .day_pages("ib_calls", ds, day)
            .map_ok(|p| p.len())
            .try_collect()
            .await
            .unwrap();
        assert!(pages.len() > 1, "{name}: read in pages: {pages:?}");
        let stored = store.rows_for_day("ib_calls", ds, day).await.unwrap();
        assert_eq!(stored.len(), 2600, "{name}");
        orders.push(stored.into_iter().map(|r| r.key).collect::<Vec<_>>());
        assert_eq!(
            store.delete_day("ib_calls", day).await.unwrap(),
            2600,
            "{name}"
        );
        assert!(
            store
                .rows_for_day("ib_calls", ds, day)
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(
        orders[0], orders[1],
        "both stores read a day in the same key order"
    );
}

#[tokio::test]
async fn postgres_migrations_apply_once_however_often_the_store_connects() {
    let server = charlie_tests::postgres();
    let db = unique("m").replace('-', "_");
    server.create_database(&db).unwrap();
    let settings = || charlie::adapters::postgres::PostgresSettings {
        url: server.url_of(&db),
        password: None,
    };
    let connects =
        (0..4).map(|_| charlie::adapters::postgres::PostgresRowStore::connect(settings()));
    for store in futures::future::join_all(connects).await {
        store.unwrap();
    }
    let unreachable = charlie::adapters::postgres::PostgresRowStore::connect(
        charlie::adapters::postgres::PostgresSettings {
            url: "host=127.0.0.1 port=1 user=charlie dbname=x sslmode=disable".into(),
            password: Some(charlie::secret::Secret::new("hunter2")),
        },
    )
    .await
    .err()
    .expect("nothing listens on port 1");
    let shown = format!("{unreachable:#}");
    assert!(shown.contains("127.0.0.1:1/x"), "{shown}");
    assert!(
        !shown.contains("hunter2"),
        "the password never shows: {shown}"
    );
}

#[tokio::test]
async fn a_claim_is_exclusive_until_completed_or_released() {
    let (_, state) = fresh_state().await;
    let now = Utc::now();
    let (hold, keep) = (Duration::minutes(5), Duration::days(1));

    assert_eq!(
        state
            .claim("MSG#a", "h1", now, now + hold, now + keep)
            .await
            .unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        state
            .claim("MSG#a", "h1", now, now + hold, now + keep)
            .await
            .unwrap(),
        Claim::InProgressElsewhere
    );
    state.complete("MSG#a", "{\"ok\":true}", now).await.unwrap();
    assert_eq!(
        state
            .claim("MSG#a", "h1", now, now + hold, now + keep)
            .await
            .unwrap(),
        Claim::AlreadyDone {
            result: "{\"ok\":true}".into(),
            payload_hash: Some("h1".into())
        }
    );

    assert_eq!(
        state
            .claim("MSG#b", "h1", now, now + hold, now + keep)
            .await
            .unwrap(),
        Claim::Acquired
    );
    state.release("MSG#b").await.unwrap();
    assert_eq!(
        state
            .claim("MSG#b", "h1", now, now + hold, now + keep)
            .await
            .unwrap(),
        Claim::Acquired
    );
}

#[tokio::test]
async fn an_expired_in_progress_claim_can_be_taken_over() {
    let (_, state) = fresh_state().await;
    let now = Utc::now();
    assert_eq!(
        state
            .claim(
                "RUN#x",
                "h1",
                now,
                now + Duration::seconds(30),
                now + Duration::days(1)
            )
            .await
            .unwrap(),
        Claim::Acquired
    );
    // The holder crashed; a minute later its claim has expired.
    let later = now + Duration::minutes(1);
    assert_eq!(
        state
            .claim(
                "RUN#x",
                "h1",
                later,
                later + Duration::seconds(30),
                later + Duration::days(1)
            )
            .await
            .unwrap(),
        Claim::Acquired
    );
}

#[tokio::test]
async fn a_completed_claim_past_its_ttl_can_be_claimed_again() {
    let (_, state) = fresh_state().await;
    let now = Utc::now();
    let keep = now + Duration::days(1);
    assert_eq!(
        state
            .claim("DLV#r#g", "h1", now, now + Duration::seconds(30), keep)
            .await
            .unwrap(),
        Claim::Acquired
    );
    state.complete("DLV#r#g", "{}", now).await.unwrap();
    // DynamoDB deletes expired items lazily; until then the condition treats them as gone.
    let after = keep + Duration::seconds(1);
    assert_eq!(
        state
            .claim(
                "DLV#r#g",
                "h2",
                after,
                after + Duration::seconds(30),
                after + Duration::days(1)
            )
            .await
            .unwrap(),
        Claim::Acquired
    );
}

#[tokio::test]
async fn counters_add_once_per_event_in_one_transaction_on_dynamodb() {
    use charlie::counters::{Counts, Kind, count, since};
    let (_, state) = fresh_state().await;
    let now = Utc::now();
    let mut mail = Counts::default();
    mail.add(Kind::MailsProcessed, "ops@contoso.example", 1);
    mail.add(Kind::RowsNew, "ib_calls", 40);
    mail.add(Kind::RowsNew, "dials", 2);
    assert!(count(&state, "mail/a", now, &mail).await.unwrap());
    assert!(
        !count(&state, "mail/a", now, &mail).await.unwrap(),
        "counted before"
    );
    assert!(count(&state, "mail/b", now, &mail).await.unwrap());
    let (counts, _) = since(&state, now - Duration::hours(1), now).await.unwrap();
    assert_eq!(counts.totals()["mails_processed"], 2);
    assert_eq!(counts.about("ib_calls")["rows_new"], 80);
    assert_eq!(counts.about("dials")["rows_new"], 4);
}

#[tokio::test]
async fn a_ranked_record_is_never_lowered_on_dynamodb() {
    use charlie::ports::StateRecords;
    let (_, state) = fresh_state().await;
    let put = |data: &'static str, rank| state.put_ranked("DLV#r#g", "status", data.into(), rank);
    assert!(put("delivered", 1).await.unwrap());
    assert!(put("bounced", 2).await.unwrap());
    assert!(
        !put("delivered", 1).await.unwrap(),
        "a lower rank is refused"
    );
    assert!(
        put("bounced again", 2).await.unwrap(),
        "the same rank replaces"
    );
    assert_eq!(
        state.get("DLV#r#g", "status").await.unwrap().as_deref(),
        Some("bounced again")
    );
}

/// The batch sender's breaker relies on this: of two writers that read the same version, one
/// wins; a record written without a version counts as version 0; and two breakers racing on
/// the emulator's table lose no failure and share one probe.
#[tokio::test]
async fn a_versioned_record_is_written_only_over_the_version_read_on_dynamodb() {
    use charlie::ports::StateRecords;
    let (_, state) = fresh_state().await;
    let (pk, sk) = ("BREAKER#t", "state");
    assert!(state.put_versioned(pk, sk, "a".into(), None).await.unwrap());
    assert!(
        !state.put_versioned(pk, sk, "b".into(), None).await.unwrap(),
        "exists"
    );
    assert_eq!(
        state.get_versioned(pk, sk).await.unwrap(),
        Some(("a".into(), 1))
    );
    assert!(
        state
            .put_versioned(pk, sk, "c".into(), Some(1))
            .await
            .unwrap()
    );
    assert!(
        !state
            .put_versioned(pk, sk, "d".into(), Some(1))
            .await
            .unwrap(),
        "stale"
    );
    assert_eq!(
        state.get_versioned(pk, sk).await.unwrap(),
        Some(("c".into(), 2))
    );
    state.put("PLAIN#t", sk, "p".into(), None).await.unwrap();
    assert_eq!(
        state.get_versioned("PLAIN#t", sk).await.unwrap(),
        Some(("p".into(), 0))
    );
    assert!(
        state
            .put_versioned("PLAIN#t", sk, "q".into(), Some(0))
            .await
            .unwrap()
    );

    use charlie::breaker::{Admission, Breaker, BreakerSettings};
    let shared: std::sync::Arc<dyn StateRecords> = std::sync::Arc::new(state);
    let settings = BreakerSettings {
        failures: 4,
        cooldown: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let (a, b) = (
        Breaker::new(shared.clone(), "race", settings),
        Breaker::new(shared.clone(), "race", settings),
    );
    let now = Utc::now();
    let (x, y) = tokio::join!(a.failed("500", now), b.failed("500", now));
    x.unwrap();
    y.unwrap();
    let (x, y) = tokio::join!(a.failed("500", now), b.failed("500", now));
    x.unwrap();
    y.unwrap();
    let (record, _) = a.read(now).await.unwrap();
    assert_eq!(
        record.state,
        charlie::breaker::BreakerState::Open,
        "4 failures counted"
    );
    let later = now + Duration::seconds(2);
    let (x, y) = tokio::join!(a.admit(later), b.admit(later));
    let probes = [x.unwrap(), y.unwrap()]
        .iter()
        .filter(|g| **g == Admission::Probe)
        .count();
    assert_eq!(probes, 1, "exactly one probe");
}

#[tokio::test]
async fn queue_batches_deliver_every_message_with_its_correlation_id() {
    let c = clients().await;
    let name = unique("q");
    let url = c
        .sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue: &dyn WorkQueue = &SqsQueue::new(c.sqs.clone(), &url);
    let bodies: Vec<serde_json::Value> = (0..23).map(|i| serde_json::json!({ "n": i })).collect();
    let pairs: Vec<(&serde_json::Value, &str)> = bodies.iter().map(|b| (b, "corr-1")).collect();
    queue.send_all(&pairs).await.unwrap();

    let mut seen = Vec::new();
    loop {
        let out = c
            .sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        let msgs = out.messages.unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        for m in msgs {
            let corr = m.message_attributes().unwrap()["correlation_id"]
                .string_value()
                .unwrap()
                .to_owned();
            assert_eq!(corr, "corr-1");
            let v: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            seen.push(v["n"].as_i64().unwrap());
            c.sqs
                .delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    seen.sort();
    assert_eq!(seen, (0..23).collect::<Vec<_>>());
}

#[tokio::test]
async fn objects_round_trip_and_versions_are_kept() {
    let c = clients().await;
    let bucket = unique("bucket");
    c.create_bucket(&bucket).await.unwrap();
    c.s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let store = S3Objects::new(c.s3.clone(), &bucket);
    let v1 = store
        .put(
            "reports/r/2024-03-14/r.xlsx",
            b"first".to_vec(),
            "application/octet-stream",
        )
        .await
        .unwrap();
    let v2 = store
        .put(
            "reports/r/2024-03-14/r.xlsx",
            b"second".to_vec(),
            "application/octet-stream",
        )
        .await
        .unwrap();
    assert_ne!(v1.version_id, v2.version_id);
    assert_eq!(
        store.get(&v1.key, v1.version_id.as_deref()).await.unwrap(),
        b"first"
    );
    assert_eq!(store.get(&v2.key, None).await.unwrap(), b"second");
    let err = store.get("missing", None).await.unwrap_err();
    assert!(format!("{err:#}").contains("missing"), "{err:#}");

    // Files go up without being read into memory: a small one in one PUT, a large one in
    // parts (here 3: 16 + 16 + 8 MiB), each a new version, byte for byte.
    let dir = std::env::temp_dir().join(unique("upload"));
    std::fs::create_dir_all(&dir).unwrap();
    for size in [1_000u64, 2 * PART_BYTES + 8 * 1024 * 1024] {
        let bytes: Vec<u8> = (0..size)
            .map(|i| ((i * 2_654_435_761) >> 13) as u8)
            .collect();
        let path = dir.join(format!("w-{size}.xlsx"));
        std::fs::write(&path, &bytes).unwrap();
        let stored = store
            .put_file(
                "reports/r/2024-03-14/r.xlsx",
                &path,
                "application/octet-stream",
            )
            .await
            .unwrap();
        assert!(stored.version_id.is_some());
        assert_ne!(stored.version_id, v2.version_id);
        let back = store
            .get(&stored.key, stored.version_id.as_deref())
            .await
            .unwrap();
        assert!(back == bytes, "{size} bytes round trip");

        // The same bytes as a stream of 64 KiB pieces (a Graph download): one PUT when short,
        // parts otherwise; read back as a stream; copied server side.
        let pieces: Vec<anyhow::Result<bytes::Bytes>> = bytes
            .chunks(64 * 1024)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let key = format!("raw/ib_calls/2024-03-14/m-{size}/a b#1.csv");
        store
            .put_stream(&key, futures::stream::iter(pieces).boxed(), "text/csv")
            .await
            .unwrap();
        let (body, length) = store.get_stream(&key).await.unwrap();
        let streamed: Vec<bytes::Bytes> = body.try_collect().await.unwrap();
        assert_eq!(length, size);
        assert!(
            streamed.concat() == bytes,
            "{size} bytes streamed round trip"
        );
        let copy = format!("quarantine/ib_calls/2024-03-14/m-{size}/a b#1.csv");
        store.copy(&key, &copy).await.unwrap();
        assert!(
            store.get(&copy, None).await.unwrap() == bytes,
            "{size} bytes copied"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn client_states_written_at_once_by_several_folders_are_all_kept() {
    let (c, state) = fresh_state().await;
    let secret = unique("client-state");
    c.secrets
        .create_secret()
        .name(&secret)
        .send()
        .await
        .unwrap();
    let states = SecretClientStates::new(c.secrets.clone(), &secret);
    let invocation = Invocation::with_timeout(std::time::Duration::from_secs(120));

    // Eight subscriptions created at once (each folder's poller or lifecycle work): every
    // write reads the map and writes it back, so unserialised writers would lose each other's.
    let written: Vec<_> = (0..8)
        .map(|i| {
            let known = Subscribed::new(fresh_client_state(), &format!("mailbox-{i}"));
            (format!("sub-{i}"), known)
        })
        .collect();
    let writes = written
        .iter()
        .map(|(id, value)| keep_client_state(&state, &states, id, value, &[], &invocation));
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    let stored = states.load().await.unwrap();
    assert_eq!(stored.len(), 8, "every clientState is kept");
    for (id, value) in &written {
        assert!(
            stored[id].matches(value.client_state.expose()),
            "{id} keeps its own value"
        );
        assert_eq!(stored[id].mailbox, value.mailbox, "{id} keeps its mailbox");
    }

    // A replacement drops the old subscription's value in the same write.
    let newer = Subscribed::new(fresh_client_state(), "mailbox-8");
    keep_client_state(&state, &states, "sub-8", &newer, &["sub-0"], &invocation)
        .await
        .unwrap();
    let stored = states.load().await.unwrap();
    assert!(!stored.contains_key("sub-0"));
    assert!(stored["sub-8"].matches(newer.client_state.expose()));
}

/// Retention: a DynamoDB row carries its TTL (`expires_at`, the start of the day after its
/// day plus `retain_days`, London time); PostgreSQL deletes the days before the cutoff when
/// swept, and a second sweep deletes nothing more.
#[tokio::test]
async fn rows_expire_by_ttl_on_dynamodb_and_by_the_sweep_on_postgres() {
    let defs = definitions();
    let ds = &defs.datasets["ib_calls"];
    let mut text = HEADER.to_owned();
    for (i, day) in ["2024-03-13", "2024-03-14", "2024-03-15"]
        .iter()
        .enumerate()
    {
        for j in 0..3 {
            text.push_str(&format!("c{i}{j},A1,Sales,{day}T09:0{j}:00,,5,\n"));
        }
    }
    let rows = parse_attachment(ds, text.as_bytes(), &Origin::default())
        .unwrap()
        .rows;
    let cutoff = "2024-03-15".parse().unwrap();

    let c = clients().await;
    let table = unique("rows");
    create_table(&c, &table).await.unwrap();
    let dynamo = DynamoRowStore::new(c.dynamodb.clone(), &table);
    dynamo
        .store("ib_calls", ds, &rows, "mb/m1", Utc::now())
        .await
        .unwrap();
    let item = c
        .dynamodb
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S("ib_calls#2024-03-14".into()))
        .key("sk", AttributeValue::S("c10".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the row is stored");
    let expected = ds.row_expiry("2024-03-14".parse().unwrap()).unwrap();
    assert_eq!(expected.to_rfc3339(), "2026-03-15T00:00:00+00:00");
    assert_eq!(
        item.get("expires_at").and_then(|v| v.as_n().ok()),
        Some(&expected.timestamp().to_string()),
        "the TTL attribute, in epoch seconds"
    );
    assert_eq!(
        dynamo.expire_before("ib_calls", cutoff).await.unwrap(),
        None,
        "DynamoDB expires rows by itself"
    );

    let postgres = postgres_rows().await;
    postgres
        .store("ib_calls", ds, &rows, "mb/m1", Utc::now())
        .await
        .unwrap();
    assert_eq!(
        postgres.expire_before("ib_calls", cutoff).await.unwrap(),
        Some(6)
    );
    assert_eq!(
        postgres.expire_before("ib_calls", cutoff).await.unwrap(),
        Some(0)
    );
    assert_eq!(
        postgres.expire_before("dials", cutoff).await.unwrap(),
        Some(0)
    );
    let postgres: &dyn RowStore = &postgres;
    let kept = postgres
        .rows_for_day("ib_calls", ds, cutoff)
        .await
        .unwrap()
        .len();
    assert_eq!(kept, 3, "the cutoff's own day is kept");
}

/// The batch sender's visibility port: messages left for retry come back when it said, in
/// batches of ten; an entry SQS refuses (a stale receipt handle) is logged, not an error.
#[tokio::test]
async fn message_visibility_is_set_in_batches_and_a_stale_receipt_is_only_logged() {
    use charlie::ports::MessageVisibility;
    let c = clients().await;
    let url = c
        .sqs
        .create_queue()
        .queue_name(unique("vis"))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "300",
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue = SqsQueue::new(c.sqs.clone(), &url);
    let bodies: Vec<serde_json::Value> = (0..12).map(|i| serde_json::json!({ "n": i })).collect();
    let pairs: Vec<(&serde_json::Value, &str)> = bodies.iter().map(|b| (b, "corr-v")).collect();
    (&queue as &dyn WorkQueue).send_all(&pairs).await.unwrap();
    let receive = || async {
        let mut got = Vec::new();
        for _ in 0..4 {
            let out = c
                .sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap();
            got.extend(out.messages.unwrap_or_default());
        }
        got
    };
    let first = receive().await;
    assert_eq!(first.len(), 12);
    assert!(
        receive().await.is_empty(),
        "invisible for the queue's 300 s"
    );
    let mut waits: Vec<(String, u32)> = first
        .iter()
        .map(|m| (m.receipt_handle().unwrap().to_owned(), 0))
        .collect();
    waits.push(("not-a-receipt-handle".into(), 0));
    queue.set_visibility(&waits).await.unwrap();
    assert_eq!(receive().await.len(), 12, "visible again at once");
}

/// What the batch sender's token rotation relies on: a secret's new value is what the next read
/// gets.
#[tokio::test]
async fn a_secret_reads_back_as_written_and_as_rewritten() {
    let c = clients().await;
    let name = unique("downstream");
    c.secrets
        .create_secret()
        .name(&name)
        .secret_string(r#"{"token":"first"}"#)
        .send()
        .await
        .unwrap();
    let read = || charlie::adapters::aws::secrets::read_secret(&c.secrets, &name);
    assert_eq!(read().await.unwrap().expose(), r#"{"token":"first"}"#);
    c.secrets
        .put_secret_value()
        .secret_id(&name)
        .secret_string(r#"{"token":"second"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(read().await.unwrap().expose(), r#"{"token":"second"}"#);
    let missing = charlie::adapters::aws::secrets::read_secret(&c.secrets, "no-such-secret")
        .await
        .unwrap_err();
    assert!(
        format!("{missing:#}").contains("no-such-secret"),
        "{missing:#}"
    );
}

/// An empty sort-key prefix reads the whole partition (DynamoDB refuses an empty string as a
/// key value: a day's unmatched mail, listed with no prefix, was a 503 on the intake page).
#[tokio::test]
async fn an_empty_prefix_reads_the_whole_partition() {
    use charlie::ports::StateRecords;
    let (_, state) = fresh_state().await;
    for sk in ["a#1", "b#2"] {
        state.put("P#1", sk, "{}".into(), None).await.unwrap();
    }
    let all = state.query("P#1", "").await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(state.query("P#1", "b#").await.unwrap().len(), 1);
}
