//! The load run: N mails (10,000 by default) with ib_calls attachments (rows on 30 days) put
//! into the fake Graph and pushed through the deployed path on the local cloud, in waves of 250
//! as a day's exports arrive: Graph's change notifications to the webhook (10 % of them
//! delivered twice), `inbound`, ingest (as many at once as the `inbound` mapping's maximum
//! concurrency allows), `outbound`; then the poller's delta round finds every mail a second
//! time. 1 % of the attachments are broken (no `call_id` column).
//!
//! It prints mails/s, the time from a mail's notification to its stored rows (p50, p95, max),
//! the AWS requests per mail by service and operation (counted at the emulator), the most
//! Graph requests in flight for the mailbox, the CPU seconds of the emulator against ours, and
//! the peak RSS of each stage (a second, smaller pass runs the stages one at a time, since the
//! local runner hosts them all in one process). It fails unless: no mail is lost (each has one
//! completed claim and its outcome), no row is stored twice (the stored rows are exactly the
//! unique rows sent), every broken CSV is quarantined with a reason, nothing is dead-lettered,
//! and Graph never saw more than 4 requests in flight for the mailbox.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::demo::{LocalCloud, UpOptions};
use crate::fake_graph::{FakeAttachment, FakeMessage, MAILBOX_OBJECT_ID};

pub struct LoadOptions {
    pub mails: usize,
    pub rows_per_mail: usize,
    pub work_dir: PathBuf,
}

/// Notifications posted at once (Graph delivers notifications in parallel).
const NOTIFY_CONCURRENCY: usize = 8;
/// Mails notified before ingest drains `inbound`.
const WAVE: usize = 250;
/// The mails' rows fall on this many days (one DynamoDB partition each).
const DAYS: usize = 30;

pub async fn run_load(opts: LoadOptions) -> anyhow::Result<()> {
    let mut up = UpOptions::new(opts.work_dir.clone());
    up.progress = true;
    up.graph_page_size = 100;
    let cloud = LocalCloud::up(up).await?;
    let day = (Utc::now() - chrono::Duration::days(1)).date_naive();
    // The first round subscribes the folder and ingests the fixture mailbox.
    let (first, _) = cloud.poll(Utc::now()).await?;
    println!("      first poll: {first}");
    let fixture_mails = cloud.graph.message_count();

    let main = pass(&cloud, "load", opts.mails, opts.rows_per_mail, day, true).await?;
    println!("{}", serde_json::to_string_pretty(&main)?);
    let staged = pass(
        &cloud,
        "staged",
        (opts.mails / 10).max(100),
        opts.rows_per_mail,
        day,
        false,
    )
    .await?;
    println!(
        "peak RSS per stage (MiB, the stages one at a time on {} more mails): {}",
        staged["mails"], staged["peak_rss_mib"]
    );
    println!(
        "fixture mails ingested before the run: {fixture_mails}; all passes checked: 0 lost, 0 duplicate rows, every broken CSV quarantined"
    );
    Ok(())
}

/// One pass over `n` new mails; `concurrent`: in waves (a wave's notifications, then ingest
/// drains them), else each stage over all the mails alone, for its peak RSS.
async fn pass(
    cloud: &LocalCloud,
    name: &str,
    n: usize,
    rows_per_mail: usize,
    day: chrono::NaiveDate,
    concurrent: bool,
) -> anyhow::Result<Value> {
    let mails: Vec<LoadMail> = (0..n)
        .map(|i| {
            let d = day - chrono::Duration::days((i % DAYS) as i64);
            LoadMail::new(name, i, rows_per_mail, d)
        })
        .collect();
    for m in &mails {
        cloud.graph.deliver(m.message.clone());
    }
    let emulator = EmulatorCounters::new(cloud.emulator.endpoint());
    emulator.reset().await?;
    cloud.graph.take_max_in_flight();
    let (cpu_ours, cpu_emulator) = (own_cpu_seconds(), emulator.read().await?.0);
    let mut peaks = serde_json::Map::new();
    let started = Instant::now();

    let runner = cloud.runner.clone();
    // Mail arrives in waves, as a day's exports do: each wave's notifications, then ingest
    // drains `inbound` (as many at once as its mapping allows). The emulator's queues and
    // tables slow down as they grow, so the whole load at once would measure the emulator.
    let wave = if concurrent { WAVE } else { n };
    reset_peak_rss();
    let mut notified: Vec<(usize, DateTime<Utc>, Vec<u16>)> = Vec::with_capacity(n);
    for first in (0..n).step_by(wave) {
        if !concurrent {
            reset_peak_rss();
        }
        let sent: Vec<(usize, DateTime<Utc>, Vec<u16>)> =
            futures::stream::iter(first..(first + wave).min(n))
                .map(|i| {
                    let graph = &cloud.graph;
                    let id = &mails[i].message.id;
                    async move {
                        let copies = if i % 10 == 3 { 2 } else { 1 };
                        let at = Utc::now();
                        (i, at, graph.notify(id, copies).await)
                    }
                })
                .buffer_unordered(NOTIFY_CONCURRENCY)
                .collect()
                .await;
        notified.extend(sent);
        if !concurrent {
            peaks.insert("graph-webhook".into(), json!(peak_rss_mib()));
            reset_peak_rss();
        }
        runner.drain().await?;
        if !concurrent {
            peaks.insert("ingest".into(), json!(peak_rss_mib()));
            reset_peak_rss();
        }
    }
    let refused: Vec<_> = notified
        .iter()
        .filter(|(_, _, s)| s.iter().any(|c| *c != 202))
        .collect();
    anyhow::ensure!(
        refused.is_empty(),
        "the webhook refused notifications: {:?}",
        refused.iter().take(5).collect::<Vec<_>>()
    );
    // The poller's delta round finds every mail again (found by both paths); ingest answers
    // each from its claim.
    // A round stops before the poller's deadline with its page saved; the schedule fires
    // again (every 5 minutes in AWS) until the round is done.
    let mut polled = runner.fire_schedule("-poller", Utc::now()).await?;
    let mut rounds = 1;
    while polled["unfinished"].as_u64().unwrap_or_default() > 0 && rounds < 20 {
        runner.drain().await?;
        polled = runner.fire_schedule("-poller", Utc::now()).await?;
        rounds += 1;
    }
    polled["rounds"] = json!(rounds);
    if !concurrent {
        peaks.insert("poller".into(), json!(peak_rss_mib()));
    }
    runner.drain().await?;
    let wall = started.elapsed().as_secs_f64();
    let peak_all = peak_rss_mib();
    let max_in_flight = cloud.graph.take_max_in_flight();
    let (cpu_emulator_after, requests) = emulator.read().await?;
    let cpu_ours = own_cpu_seconds() - cpu_ours;
    let cpu_emulator = cpu_emulator_after - cpu_emulator;

    // Checks: every mail once, every row once, every broken file quarantined.
    let notified_at: HashMap<usize, DateTime<Utc>> =
        notified.iter().map(|(i, at, _)| (*i, *at)).collect();
    let mut latencies = Vec::with_capacity(n);
    for (i, m) in mails.iter().enumerate() {
        let done = claim_completed(cloud, &m.message.id)
            .await?
            .with_context(|| format!("mail {} lost: no completed claim", m.message.id))?;
        latencies.push((done - notified_at[&i]).num_milliseconds().max(0) as f64 / 1000.0);
    }
    let all_outcomes = cloud.outcomes().await?;
    let outcomes: HashMap<String, &charlie::messages::IngestOutcome> = all_outcomes
        .iter()
        .map(|o| (o.message_id.clone(), o))
        .collect();
    let mut broken = 0;
    for m in &mails {
        let o = outcomes
            .get(&m.message.id)
            .with_context(|| format!("mail {} lost: no outcome", m.message.id))?;
        if m.broken {
            broken += 1;
            let reason = o
                .quarantined
                .as_deref()
                .with_context(|| format!("broken mail {} not quarantined", m.message.id))?;
            anyhow::ensure!(reason.contains("call_id"), "quarantined for {reason:?}");
        } else {
            anyhow::ensure!(
                o.quarantined.is_none() && o.rows_new == rows_per_mail as u64,
                "mail {}: {o:?}",
                m.message.id
            );
        }
    }
    let (mut stored, mut expected) = (0, 0);
    for back in 0..DAYS {
        let d = day - chrono::Duration::days(back as i64);
        let on_day = cloud.stored_rows("ib_calls", &d.to_string()).await?;
        let sent = expected_rows(&all_outcomes, d) as usize;
        anyhow::ensure!(
            on_day == sent,
            "{on_day} rows stored on {d}, {sent} unique rows sent"
        );
        stored += on_day;
        expected += sent;
    }
    anyhow::ensure!(stored == expected);
    for q in ["inbound", "outbound"] {
        let depth = cloud.dlq_depth(q).await?;
        anyhow::ensure!(depth == 0, "{depth} messages in the {q} DLQ");
    }
    anyhow::ensure!(
        max_in_flight <= 4,
        "Graph saw {max_in_flight} requests in flight for the mailbox"
    );

    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let mut by_service: std::collections::BTreeMap<String, Value> = Default::default();
    let mut total_requests = 0u64;
    let mut emulator_busy = 0.0;
    for (op, v) in requests.as_object().into_iter().flatten() {
        let count = v["count"].as_u64().unwrap_or_default();
        total_requests += count;
        if !op.ends_with("ReceiveMessage") {
            // Long polls wait for messages: time, not work.
            emulator_busy += v["seconds"].as_f64().unwrap_or_default();
        }
        by_service.insert(op.clone(), json!(round2(count as f64 / n as f64)));
    }
    if concurrent {
        peaks.insert("all stages at once".into(), json!(peak_all));
    }
    Ok(json!({
        "pass": name,
        "mails": n,
        "notifications": notified.iter().map(|(_, _, s)| s.len()).sum::<usize>(),
        "broken_csvs_quarantined": broken,
        "rows_stored": stored,
        "poll": polled,
        "wall_seconds": round2(wall),
        "mails_per_s": round2(n as f64 / wall),
        "notification_to_rows_seconds": {"p50": pct(0.50), "p95": pct(0.95), "max": pct(1.0)},
        "aws_requests_per_mail": by_service,
        "aws_requests_per_mail_total": round2(total_requests as f64 / n as f64),
        "graph_max_in_flight_per_mailbox": max_in_flight,
        "cpu_seconds": {"emulator": round2(cpu_emulator), "charlie (stages, runner, fake Graph)": round2(cpu_ours)},
        "emulator_seconds_in_requests (sum, long polls left out)": round2(emulator_busy),
        "peak_rss_mib": peaks,
    }))
}

struct LoadMail {
    message: FakeMessage,
    broken: bool,
}

impl LoadMail {
    fn new(pass: &str, i: usize, rows: usize, day: chrono::NaiveDate) -> Self {
        let broken = i % 100 == 37;
        let mut csv = if broken {
            String::from("agent_id,queue,started_at\n")
        } else {
            String::from(
                "call_id,agent_id,agent_name,queue,started_at,answered_at,ended_at,duration_seconds,wait_seconds,disposition,caller_number,notes\n",
            )
        };
        for r in 0..rows {
            let (h, m) = (8 + r / 60 % 10, r % 60);
            if broken {
                csv.push_str(&format!("A{:04},Support,{day}T{h:02}:{m:02}:00\n", r % 500));
            } else {
                csv.push_str(&format!(
                    "{pass}-{i:05}-{r:03},A{:04},Agent {},Support,{day}T{h:02}:{m:02}:00,{day}T{h:02}:{m:02}:05,{day}T{h:02}:{m:02}:50,45,5,RESOLVED,+44 20 7946 {:04},\n",
                    r % 500,
                    r % 500,
                    (i + r) % 10_000
                ));
            }
        }
        LoadMail {
            message: FakeMessage {
                id: format!("AAMkAGLoad={pass}-{i:05}"),
                subject: format!("IB calls export {day}"),
                from_name: "Dialer Exports".into(),
                from_address: "exports@dialer.example".into(),
                received: (Utc::now() - chrono::Duration::minutes(30)).to_rfc3339(),
                attachments: vec![FakeAttachment {
                    name: format!("ib_calls_{day}.csv"),
                    content_type: "text/csv".into(),
                    bytes: csv.into_bytes(),
                }],
                authentication_results: None,
            },
            broken,
        }
    }
}

/// When the mail's ingest claim completed (its rows stored and outcome recorded).
async fn claim_completed(cloud: &LocalCloud, id: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
    let out = cloud
        .clients
        .dynamodb
        .get_item()
        .table_name(&cloud.outputs.state_table)
        .key(
            "pk",
            AttributeValue::S(charlie::state::mail_claim(MAILBOX_OBJECT_ID, id)),
        )
        .key("sk", AttributeValue::S("claim".into()))
        .send()
        .await?;
    Ok(out
        .item
        .and_then(|i| i.get("completed_at").cloned())
        .and_then(|v| v.as_s().ok().and_then(|s| s.parse().ok())))
}

/// Unique rows every mail ingested so far holds for `day` (the fixture's and the passes').
fn expected_rows(outcomes: &[charlie::messages::IngestOutcome], day: chrono::NaiveDate) -> u64 {
    outcomes
        .iter()
        .filter(|o| o.dataset == "ib_calls" && o.dates.contains(&day))
        .map(|o| o.rows_new)
        .sum()
}

/// The emulator's request counts (see `moto_server.py`).
struct EmulatorCounters {
    base: String,
    http: reqwest::Client,
}

impl EmulatorCounters {
    fn new(endpoint: &str) -> Self {
        EmulatorCounters {
            base: endpoint.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn reset(&self) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/_charlie/requests/reset", self.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// (the emulator's CPU seconds, requests by `service.Operation`)
    async fn read(&self) -> anyhow::Result<(f64, Value)> {
        let v: Value = self
            .http
            .get(format!("{}/_charlie/requests", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok((
            v["cpu_seconds"].as_f64().unwrap_or_default(),
            v["requests"].clone(),
        ))
    }
}

fn own_cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (clock ticks of 1/100 s on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = after.get(11)?.parse().ok()?;
            let stime: f64 = after.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

fn peak_rss_mib() -> f64 {
    round2(crate::bench::rss_kib("VmHWM") as f64 / 1024.0)
}

fn reset_peak_rss() {
    crate::bench::reset_peak_rss();
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
