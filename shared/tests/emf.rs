//! The metrics as CloudWatch receives them: the process's EMF recorder installed as a Lambda
//! function installs it, events counted through `charlie::counters` (once, however often they
//! are counted), the documents flushed and parsed back. One test in its own process: the
//! recorder is process-global.

use std::collections::BTreeMap;

use charlie::adapters::memory::MemoryState;
use charlie::counters::{Counts, Kind, count};
use charlie::metrics::{About, name};
use chrono::Utc;
use serde_json::Value;

/// One EMF document: its dimension set (names, in order), its values by metric name (and
/// each dimension's value as `@{name}`), and each metric's unit.
struct Doc {
    dims: Vec<String>,
    values: BTreeMap<String, Value>,
    units: BTreeMap<String, String>,
}

fn documents(emf: &str) -> Vec<Doc> {
    emf.lines()
        .map(|line| {
            let doc: Value = serde_json::from_str(line).expect("each line is one JSON document");
            let directive = &doc["_aws"]["CloudWatchMetrics"][0];
            assert_eq!(directive["Namespace"], "Charlie/emf-test", "{line}");
            assert!(doc["_aws"]["Timestamp"].as_u64().is_some(), "{line}");
            let dims: Vec<String> = directive["Dimensions"][0]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect();
            let units: BTreeMap<String, String> = directive["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m["Name"].as_str().unwrap().to_owned(),
                        m["Unit"].as_str().unwrap_or("None").to_owned(),
                    )
                })
                .collect();
            let mut values: BTreeMap<String, Value> =
                units.keys().map(|k| (k.clone(), doc[k].clone())).collect();
            for d in &dims {
                assert!(doc[d].is_string(), "dimension {d} has no value: {line}");
                values.insert(format!("@{d}"), doc[d].clone());
            }
            Doc {
                dims,
                values,
                units,
            }
        })
        .collect()
}

/// The document with exactly these dimensions.
fn find<'a>(
    docs: &'a [Doc],
    dims: &[(&str, &str)],
) -> (&'a BTreeMap<String, Value>, &'a BTreeMap<String, String>) {
    let doc = docs
        .iter()
        .find(|d| {
            d.dims.len() == dims.len()
                && dims
                    .iter()
                    .all(|(k, v)| d.values.get(&format!("@{k}")).and_then(Value::as_str) == Some(v))
        })
        .unwrap_or_else(|| panic!("no document with dimensions {dims:?}"));
    (&doc.values, &doc.units)
}

#[tokio::test]
async fn counted_events_and_measurements_reach_cloudwatch_once_with_both_dimension_sets() {
    let collector = charlie::metrics::install("Charlie/emf-test").unwrap();
    let state = MemoryState::default();
    let now = Utc::now();

    // A mail with two datasets, announced twice: counted and recorded once.
    let mut mail = Counts::default();
    mail.add(Kind::MailsProcessed, "ops@contoso.example", 1);
    mail.add(Kind::RowsNew, "ib_calls", 40);
    mail.add(Kind::RowsDuplicate, "ib_calls", 2);
    mail.add(Kind::RowsRejected, "dials", 3);
    mail.add(Kind::AttachmentsQuarantined, "dials", 1);
    assert!(count(&state, "mail/a", now, &mail).await.unwrap());
    assert!(!count(&state, "mail/a", now, &mail).await.unwrap());
    // A run, its mail and a bounce; a message dead-lettered by the mailer.
    let mut later = Counts::default();
    later.add(
        Kind::RunEnded(charlie::contract::RunStatus::Built),
        "call_centre_daily",
        1,
    );
    later.add(Kind::MailsSent, "call_centre_daily", 1);
    later.add(Kind::Ses("bounce".into()), "call_centre_daily", 1);
    later.add(Kind::DeadLettered, "mailer", 1);
    assert!(count(&state, "run/r-1", now, &later).await.unwrap());
    // Measurements.
    let daily = Some(About::Report("call_centre_daily"));
    charlie::metrics::record("report-builder", name::RUN_DURATION, daily, 1250.0);
    charlie::metrics::record("report-builder", name::WORKBOOK_BYTES, daily, 48_000.0);
    charlie::metrics::level("poller", name::SUBSCRIPTION_SECONDS_TO_EXPIRY, 3600.0);
    charlie::metrics::count("poller", name::GRAPH_THROTTLED, None, 2);

    // The batch sender meeting an outage: three failed calls open its breaker.
    {
        use charlie::adapters::memory::{
            DownstreamScript, MemoryDeadLetters, MemoryDownstream, MemoryVisibility,
        };
        use charlie::stages::Handler;
        use std::sync::Arc;
        let api = Arc::new(MemoryDownstream::default());
        for _ in 0..3 {
            api.then(DownstreamScript::Reply(503, None, String::new()));
        }
        let records = Arc::new(MemoryState::default());
        let sender = charlie::stages::batch_sender::BatchSender {
            api,
            breaker: charlie::breaker::Breaker::new(
                records.clone(),
                "downstream",
                charlie::breaker::BreakerSettings {
                    failures: 3,
                    ..Default::default()
                },
            ),
            visibility: Arc::new(MemoryVisibility::default()),
            dead_letters: Arc::new(MemoryDeadLetters::default()),
            records,
            settings: charlie::stages::batch_sender::SenderSettings {
                backoff_base: std::time::Duration::from_millis(1),
                backoff_max: std::time::Duration::from_millis(2),
                ..Default::default()
            },
        };
        let body = serde_json::json!({"v": 1, "mailbox": "m", "message_id": "x", "attachment": "a.csv",
            "dataset": "ib_calls", "dates": [], "rows_total": 0, "rows_new": 0, "rows_duplicate": 0,
            "rows_rejected": 0, "raw_key": "raw/x"});
        let event = serde_json::json!({"Records": [{"messageId": "m0", "receiptHandle": "r0",
            "body": body.to_string(), "attributes": {"ApproximateReceiveCount": "1"}}]});
        let invocation =
            charlie::invocation::Invocation::with_timeout(std::time::Duration::from_secs(60));
        let resp = sender.invoke(event, &invocation).await.unwrap();
        assert_eq!(resp["batchItemFailures"][0]["itemIdentifier"], "m0");
    }

    let mut out = Vec::new();
    collector.flush(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let docs = documents(&text);

    let (ib, units) = find(&docs, &[("Stage", "ingest"), ("Dataset", "ib_calls")]);
    assert_eq!(ib[name::ROWS_NEW], 40, "{text}");
    assert_eq!(ib[name::ROWS_DUPLICATE], 2);
    assert_eq!(units[name::ROWS_NEW], "Count");
    let (dials, _) = find(&docs, &[("Stage", "ingest"), ("Dataset", "dials")]);
    assert_eq!(dials[name::ROWS_REJECTED], 3);
    assert_eq!(dials[name::ATTACHMENTS_QUARANTINED], 1);
    let (mailbox, _) = find(
        &docs,
        &[("Stage", "ingest"), ("Mailbox", "ops@contoso.example")],
    );
    assert_eq!(mailbox[name::MAILS_INGESTED], 1);
    // The stage-wide set sums the datasets.
    let (ingest, _) = find(&docs, &[("Stage", "ingest")]);
    assert_eq!(ingest[name::ROWS_NEW], 40);
    assert_eq!(ingest[name::ROWS_REJECTED], 3);
    assert_eq!(ingest[name::MAILS_INGESTED], 1);

    let (mailer, _) = find(
        &docs,
        &[("Stage", "mailer"), ("Report", "call_centre_daily")],
    );
    assert_eq!(mailer[name::MAILS_SENT], 1);
    assert_eq!(mailer[name::BOUNCES], 1);
    let (mailer_wide, _) = find(&docs, &[("Stage", "mailer")]);
    assert_eq!(mailer_wide[name::DEAD_LETTERED], 1);

    let (runs, run_units) = find(
        &docs,
        &[("Stage", "report-builder"), ("Report", "call_centre_daily")],
    );
    assert_eq!(runs[name::RUNS_BUILT], 1);
    assert_eq!(runs[name::RUN_DURATION], serde_json::json!([1250.0]));
    assert_eq!(run_units[name::RUN_DURATION], "Milliseconds");
    assert_eq!(run_units[name::WORKBOOK_BYTES], "Bytes");

    let (poller, poller_units) = find(&docs, &[("Stage", "poller")]);
    assert_eq!(poller[name::GRAPH_THROTTLED], 2);
    assert_eq!(poller[name::SUBSCRIPTION_SECONDS_TO_EXPIRY], 3600.0);
    assert_eq!(
        poller_units[name::SUBSCRIPTION_SECONDS_TO_EXPIRY],
        "Seconds"
    );

    let (sender, sender_units) = find(&docs, &[("Stage", "batch-sender")]);
    assert_eq!(sender[name::DOWNSTREAM_FAILURES], 3, "{text}");
    assert_eq!(sender[name::BREAKER_STATE], 2.0, "open");
    assert_eq!(sender_units[name::DOWNSTREAM_FAILURES], "Count");

    // A flush drains the counters: the next invocation's document holds only its own.
    let mut again = Vec::new();
    collector.flush(&mut again).unwrap();
    let again = String::from_utf8(again).unwrap();
    assert!(!again.contains(name::ROWS_NEW), "{again}");
}
