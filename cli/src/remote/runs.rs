//! Runs: started, listed, shown, followed, cancelled, rerun, downloaded, and their deliveries.

use super::*;

#[derive(Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first
    List {
        #[arg(long)]
        report: Option<ReportName>,
        /// queued, building, retrying, built, skipped_empty, notice_sent, cancelled, failed
        #[arg(long)]
        status: Option<RunStatus>,
        /// Requested on or after this day (yyyy-mm-dd)
        #[arg(long)]
        from: Option<String>,
        /// Requested on or before this day (yyyy-mm-dd)
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One run: status, timings, rows, workbook, error, deliveries
    Show { run: RunId },
    /// Start a run of REPORT for PERIOD (2024-03-14, 2024-W11, 2024-03, 2024-03-01..2024-03-14)
    Start {
        report: ReportName,
        period: String,
        /// Show progress until the run is sent, skipped or failed
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a queued or building run
    Cancel { run: RunId },
    /// Run the same report and period again
    Rerun {
        run: RunId,
        #[arg(long)]
        wait: bool,
    },
}

pub async fn runs(c: &Client, command: RunsCommand) -> ExitCode {
    let result = match command {
        RunsCommand::List {
            report,
            status,
            from,
            to,
            limit,
        } => {
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [
                ("report", report.map(|r| r.to_string())),
                ("status", status.map(|s| s.to_string())),
                ("from", from),
                ("to", to),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", charlie::uri::segment(&v)));
                }
            }
            match c
                .typed::<RunList>("GET", &format!("/v1/runs?{}", q.join("&")), None)
                .await
            {
                Ok(list) if c.json => {
                    c.print(&list);
                    Ok(())
                }
                Ok(list) => {
                    let rows: Vec<Vec<String>> = list
                        .runs
                        .iter()
                        .map(|r| {
                            vec![
                                cell(&r.run_id),
                                cell(&r.report),
                                cell(&r.period),
                                r.status.to_string(),
                                r.rows.to_string(),
                                at(&r.requested_at),
                                cell(&r.requested_by),
                            ]
                        })
                        .collect();
                    if rows.is_empty() {
                        println!("no runs");
                    } else {
                        table(
                            &[
                                "run",
                                "report",
                                "period",
                                "status",
                                "rows",
                                "requested",
                                "by",
                            ],
                            &rows,
                        );
                    }
                    if let Some(next) = &list.next_cursor {
                        println!("(more: the API's next_cursor is {next})");
                    }
                    Ok(())
                }
                Err(f) => Err(f),
            }
        }
        RunsCommand::Show { run } => show_run(c, &run).await,
        RunsCommand::Start {
            report,
            period,
            wait,
        } => {
            let start = StartRun {
                report: report.to_string(),
                period,
            };
            match c
                .typed::<RunQueued>("POST", "/v1/runs", Some(json!(start)))
                .await
            {
                Ok(q) => started(c, q, wait).await,
                Err(f) => Err(f),
            }
        }
        RunsCommand::Rerun { run, wait } => {
            match c
                .typed::<RunQueued>(
                    "POST",
                    &format!("/v1/runs/{}/rerun", charlie::uri::segment(&run)),
                    None,
                )
                .await
            {
                Ok(q) => started(c, q, wait).await,
                Err(f) => Err(f),
            }
        }
        RunsCommand::Cancel { run } => {
            match c
                .typed::<CancelRequested>(
                    "POST",
                    &format!("/v1/runs/{}/cancel", charlie::uri::segment(&run)),
                    None,
                )
                .await
            {
                Ok(asked) if c.json => {
                    c.print(&asked);
                    Ok(())
                }
                Ok(asked) => {
                    println!(
                        "cancel requested for {run} (it was {}): the builder stops before it starts or at its next page; `charlie runs show {run}` says when",
                        asked.status
                    );
                    Ok(())
                }
                Err(f) => Err(f),
            }
        }
    };
    exit(result)
}

pub(super) async fn started(c: &Client, queued: RunQueued, wait: bool) -> Result<(), Failure> {
    let run = queued.run_id.clone();
    if !wait {
        if c.json {
            c.print(&queued);
        } else {
            println!("{run}: queued ({} {})", queued.report, queued.period);
        }
        return Ok(());
    }
    if !c.json {
        println!("{run}: queued");
    }
    let mut last = RunStatus::Queued;
    let deadline = std::time::Instant::now() + Duration::from_secs(30 * 60);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r: RunAnswer = c
            .typed(
                "GET",
                &format!("/v1/runs/{}", charlie::uri::segment(&run)),
                None,
            )
            .await?;
        let status = r.run.status;
        if status != last && !c.json {
            let extra = match status {
                RunStatus::Retrying => {
                    format!(" ({}; attempt {})", opt(&r.run.error), r.run.attempts)
                }
                RunStatus::Built => format!(" ({} rows, {} bytes)", r.run.rows, r.run.size),
                RunStatus::Failed => format!(" ({})", opt(&r.run.error)),
                _ => String::new(),
            };
            println!("{run}: {status}{extra}");
            last = status;
        }
        let done = match status {
            // Built: done once the mailer recorded its deliveries.
            RunStatus::Built | RunStatus::NoticeSent => !r.deliveries.is_empty(),
            s => s.is_final(),
        };
        if done {
            if c.json {
                c.print(&r);
            } else {
                for d in &r.deliveries {
                    println!(
                        "{run}: sent by {} to {} ({}, message id {})",
                        d.transport,
                        d.to.join(", "),
                        d.status,
                        cell(&d.provider_message_id)
                    );
                }
            }
            return match status {
                RunStatus::Failed | RunStatus::Cancelled => {
                    Err(Failure(1, format!("run {run} {status}")))
                }
                _ => Ok(()),
            };
        }
        if std::time::Instant::now() > deadline {
            return Err(Failure(
                1,
                format!(
                    "run {run} is still {status} after 30 minutes; `charlie runs show {run}` later"
                ),
            ));
        }
    }
}

pub(super) async fn show_run(c: &Client, run: &str) -> Result<(), Failure> {
    let Some(r) = c
        .shown::<RunAnswer>(
            "GET",
            &format!("/v1/runs/{}", charlie::uri::segment(run)),
            None,
        )
        .await?
    else {
        return Ok(());
    };
    let run = &r.run;
    let fields = [
        ("run", cell(&run.run_id)),
        ("report", cell(&run.report)),
        ("period", cell(&run.period)),
        (
            "status",
            format!(
                "{}{}",
                run.status,
                if r.stale {
                    " (stale: its attempt died; the queue delivers it again)"
                } else {
                    ""
                }
            ),
        ),
        ("attempts", run.attempts.to_string()),
        (
            "requested",
            format!("{} by {}", at(&run.requested_at), cell(&run.requested_by)),
        ),
        ("started", at(&run.started_at)),
        ("finished", at(&run.finished_at)),
        ("rows", run.rows.to_string()),
        ("sheets", run.sheets.join(", ")),
        (
            "workbook",
            format!(
                "{} (version {})",
                opt(&run.workbook_key),
                opt(&run.workbook_version)
            ),
        ),
        ("size", run.size.to_string()),
        ("sha256", opt(&run.sha256)),
        ("error", opt(&run.error)),
        ("cancel requested", r.cancel_requested.to_string()),
    ];
    for (k, v) in fields {
        println!("{k:<17} {v}");
    }
    let rows: Vec<Vec<String>> = r
        .deliveries
        .iter()
        .map(|d| {
            vec![
                cell(&d.group),
                cell(&d.transport),
                delivery_status(d),
                at(&d.sent_at),
                d.to.join(", "),
                cell(&d.provider_message_id),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("deliveries        none yet");
    } else {
        println!();
        table(
            &["group", "transport", "status", "sent", "to", "message id"],
            &rows,
        );
    }
    Ok(())
}

pub async fn download(c: &Client, run: &str, out: Option<std::path::PathBuf>) -> ExitCode {
    let a = match c
        .call(
            "GET",
            &format!("/v1/runs/{}/download", charlie::uri::segment(run)),
            None,
        )
        .await
    {
        Ok(a) => a,
        Err(f) => return f.into(),
    };
    let (Some(url), 302) = (a.location, a.status) else {
        return Failure(
            5,
            format!("the API answered {} without a redirect", a.status),
        )
        .into();
    };
    // The presigned URL is the credential: no API key goes with it.
    let bytes = match reqwest::get(&url).await.and_then(|r| r.error_for_status()) {
        Ok(r) => match r.bytes().await {
            Ok(b) => b,
            Err(e) => return Failure(5, format!("downloading the workbook: {e}")).into(),
        },
        Err(e) => return Failure(5, format!("downloading the workbook: {e}")).into(),
    };
    let path = out.unwrap_or_else(|| {
        let name = url
            .split('?')
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|n| n.ends_with(".xlsx"))
            .unwrap_or("workbook.xlsx");
        std::path::PathBuf::from(name)
    });
    if let Err(e) = std::fs::write(&path, &bytes) {
        return Failure(1, format!("{}: {e}", path.display())).into();
    }
    println!("{}: {} bytes", path.display(), bytes.len());
    ExitCode::SUCCESS
}

/// A delivery's status, with the refusal of a relay's sender when it has one.
pub(super) fn delivery_status(d: &Delivery) -> String {
    match d.refusal() {
        Some(why) => format!("{} ({why})", d.status),
        None => d.status.to_string(),
    }
}

pub async fn deliveries(c: &Client, run: &str) -> ExitCode {
    let answer: RunDeliveries = match c
        .typed(
            "GET",
            &format!("/v1/runs/{}/deliveries", charlie::uri::segment(run)),
            None,
        )
        .await
    {
        Ok(a) => a,
        Err(f) => return f.into(),
    };
    if c.json {
        c.print(&answer);
        return ExitCode::SUCCESS;
    }
    let rows: Vec<Vec<String>> = answer
        .deliveries
        .iter()
        .map(|d| {
            let events: Vec<&str> = d.events.iter().map(|e| e.event_type.as_str()).collect();
            vec![
                cell(&d.group),
                cell(&d.transport),
                delivery_status(d),
                at(&d.sent_at),
                cell(&d.provider_message_id),
                cell(&events.join(", ")),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("{run}: no deliveries yet");
    } else {
        table(
            &[
                "group",
                "transport",
                "status",
                "sent",
                "message id",
                "events",
            ],
            &rows,
        );
    }
    ExitCode::SUCCESS
}
