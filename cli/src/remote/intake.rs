//! Intake: its state, outcomes, the quarantine, rejects, pause, resume, poll, and days reprocessed.

use super::health::print_counters;
use super::*;

#[derive(Subcommand)]
pub enum IntakeCommand {
    /// What ingest made of each attachment with rows on DATASET's DATE, and the totals
    Outcomes { dataset: DatasetName, date: String },
    /// Quarantined files with their reasons
    Quarantine {
        #[arg(long)]
        dataset: Option<DatasetName>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The rejected rows (line, reason) of an archived attachment (an outcome's raw_key)
    Rejects { raw_key: String },
    /// Poll every folder now instead of waiting for the schedule
    Poll,
    /// Pause intake: notifications and polls are recorded, nothing is queued
    Pause,
    /// Resume intake: what arrived while paused is queued
    Resume,
    /// Whether intake is paused, how many mails wait, and the intake's counters
    Status {
        /// Count from this time (RFC 3339) or span back (90m, 24h, 7d); default the last
        /// pause or resume
        #[arg(long)]
        since: Option<String>,
    },
}

pub async fn intake(c: &Client, command: IntakeCommand) -> ExitCode {
    let result = async {
        match command {
            IntakeCommand::Outcomes { dataset, date } => {
                let Some(day) = c
                    .shown::<DayOutcomes>(
                        "GET",
                        &format!(
                            "/v1/intake/outcomes?dataset={}&date={}",
                            charlie::uri::segment(&dataset),
                            charlie::uri::segment(&date)
                        ),
                        None,
                    )
                    .await?
                else {
                    return Ok(());
                };
                let t = &day.totals;
                println!(
                    "{dataset} {date}: {} rows: {} new, {} duplicate, {} rejected",
                    t.rows_total, t.rows_new, t.rows_duplicate, t.rows_rejected
                );
                let rows: Vec<Vec<String>> = day
                    .outcomes
                    .iter()
                    .map(|o| {
                        vec![
                            cell(&o.attachment),
                            at(&o.received),
                            o.rows.rows_total.to_string(),
                            o.rows.rows_new.to_string(),
                            o.rows.rows_duplicate.to_string(),
                            o.rows.rows_rejected.to_string(),
                            cell(&o.raw_key),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "attachment",
                        "received",
                        "rows",
                        "new",
                        "duplicate",
                        "rejected",
                        "raw key",
                    ],
                    &rows,
                );
                if !day.unmatched.is_empty() {
                    println!(
                        "\n{} mail(s) received on {date} (UTC) that no dataset took:",
                        day.unmatched.len()
                    );
                    for m in &day.unmatched {
                        let names: Vec<String> = m.attachments.iter().map(|a| cell(a)).collect();
                        println!(
                            "- {} from {} {:?} ({}):",
                            at(&m.received),
                            cell(&m.sender),
                            cell(&m.subject),
                            names.join(", ")
                        );
                        for r in &m.reasons {
                            println!("    {}", cell(r));
                        }
                    }
                }
                Ok(())
            }
            IntakeCommand::Quarantine { dataset, limit } => {
                let mut path = format!("/v1/intake/quarantine?limit={limit}");
                if let Some(d) = dataset {
                    path.push_str(&format!("&dataset={}", charlie::uri::segment(&d)));
                }
                let Some(q) = c.shown::<Quarantined>("GET", &path, None).await? else {
                    return Ok(());
                };
                if q.files.is_empty() {
                    println!("nothing quarantined");
                }
                for f in &q.files {
                    println!(
                        "{}  ({}, {})",
                        cell(&f.key),
                        opt(&f.attachment),
                        at_opt(&f.quarantined_at)
                    );
                    println!("  reason: {}", opt(&f.reason));
                }
                Ok(())
            }
            IntakeCommand::Rejects { raw_key } => {
                let rejects: charlie::contract::Rejects = c
                    .typed(
                        "GET",
                        &format!(
                            "/v1/intake/rejects?raw_key={}",
                            charlie::uri::segment(&raw_key)
                        ),
                        None,
                    )
                    .await?;
                c.print(&rejects);
                Ok(())
            }
            IntakeCommand::Pause | IntakeCommand::Resume | IntakeCommand::Status { .. } => {
                let (method, path) = match &command {
                    IntakeCommand::Pause => ("POST", "/v1/intake/pause".to_owned()),
                    IntakeCommand::Resume => ("POST", "/v1/intake/resume".to_owned()),
                    IntakeCommand::Status { since: Some(since) } => (
                        "GET",
                        format!("/v1/intake?since={}", charlie::uri::segment(since)),
                    ),
                    _ => ("GET", "/v1/intake".to_owned()),
                };
                let Some(b) = c.shown::<IntakeState>(method, &path, None).await? else {
                    return Ok(());
                };
                if b.paused {
                    println!(
                        "intake paused since {} by {}; {} mail(s) parked",
                        at_opt(&b.since),
                        opt(&b.by),
                        b.parked
                    );
                } else {
                    println!("intake running; {} mail(s) parked", b.parked);
                }
                if let Some(n) = b.resumed {
                    println!("{n} parked mail(s) queued for ingest");
                }
                if matches!(command, IntakeCommand::Status { .. }) {
                    print_counters(&b.counters);
                }
                Ok(())
            }
            IntakeCommand::Poll => {
                let queued: charlie::contract::PollQueued =
                    c.typed("POST", "/v1/intake/poll", None).await?;
                if c.json {
                    c.print(&queued);
                } else {
                    println!("poll queued: the poller runs its round over every folder now");
                }
                Ok::<(), Failure>(())
            }
        }
    }
    .await;
    exit(result)
}

pub async fn reprocess(c: &Client, dataset: &str, date: &str, wait: bool) -> ExitCode {
    let start = StartReprocess {
        dataset: dataset.to_owned(),
        date: date.to_owned(),
    };
    let queued: ReprocessQueued = match c.typed("POST", "/v1/reprocess", Some(json!(start))).await {
        Ok(q) => q,
        Err(f) => return f.into(),
    };
    let id = queued.request_id.clone();
    if !wait {
        if c.json {
            c.print(&queued);
        } else {
            println!("{id}: queued; `charlie reprocess {dataset} {date} --wait` waits for it");
        }
        return ExitCode::SUCCESS;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30 * 60);
    let mut said = String::new();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r: ReprocessRecord = match c
            .typed(
                "GET",
                &format!("/v1/reprocess/{}", charlie::uri::segment(&id)),
                None,
            )
            .await
        {
            Ok(r) => r,
            Err(f) => return f.into(),
        };
        let error = opt(&r.error);
        match r.status {
            ReprocessStatus::Done => {
                if c.json {
                    c.print(&r);
                } else {
                    let n = &r.counts;
                    println!(
                        "{id}: done: {} attachment(s) re-ingested ({} read only part way, as at first), {} row(s) replaced by {} rebuilt; {} no longer in any file removed, {} stored meanwhile kept",
                        n.attachments,
                        n.partly_read,
                        n.rows_deleted,
                        n.rows_stored,
                        n.rows_removed,
                        n.rows_kept
                    );
                }
                return ExitCode::SUCCESS;
            }
            ReprocessStatus::Failed => {
                return Failure(1, format!("{id} failed, the day keeps its rows: {error}")).into();
            }
            ReprocessStatus::Retrying if error != said => {
                // Each new reason once, while it is retried.
                eprintln!("{id}: retrying after: {error}");
                said = error;
            }
            status if std::time::Instant::now() > deadline => {
                return Failure(1, format!("{id} is still {status} after 30 minutes")).into();
            }
            _ => {}
        }
    }
}
