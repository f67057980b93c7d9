//! The commands that talk to a deployment's control API (`--api URL` or `CHARLIE_API_URL`,
//! the key in `CHARLIE_API_KEY`). Tables for people, `--json` for scripts.
//!
//! Exit codes: 0 done; 1 what was asked for failed (a run failed or was cancelled, the
//! deployment is unhealthy); 2 a bad request (the message names the field); 3 the key was
//! refused (401) or lacks the scope (403); 4 no such thing (404); 5 the API could not be
//! reached or failed (5xx); 6 a conflict (409: e.g. cancelling a finished run).

use charlie::contract::{
    CancelRequested, Counters, CreatedKey, CreatedRelay, DayOutcomes, DeadLetterQueues,
    DeadLetters, Delivery, Health, IntakeState, KeyInfo, KeyList, Metrics, NewKey, NewRelay,
    Problem, Quarantined, QueueDepth, Redrive, Redriven, RelayInfo, RelayList, ReportList,
    ReprocessQueued, ReprocessRecord, ReprocessStatus, RunAnswer, RunDeliveries, RunList,
    RunQueued, RunStatus, StartReprocess, StartRun, WorkbookVersions,
};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Clone)]
pub struct Remote {
    /// The control API's base URL (e.g. https://abc123.execute-api.eu-west-2.amazonaws.com)
    #[arg(long, env = "CHARLIE_API_URL", global = true)]
    api: Option<String>,
    /// Print the API's JSON instead of a table
    #[arg(long, global = true)]
    json: bool,
    /// Call the /iam/v1 routes signed (SigV4) with your AWS credentials (the usual chain:
    /// environment, profile, role) instead of an API key
    #[arg(long, env = "CHARLIE_API_SIGV4", global = true)]
    sigv4: bool,
}

#[derive(Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first
    List {
        #[arg(long)]
        report: Option<String>,
        /// queued, building, retrying, built, skipped_empty, notice_sent, failed, cancelled
        #[arg(long)]
        status: Option<String>,
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
    Show { run: String },
    /// Start a run of REPORT for PERIOD (2024-03-14, 2024-W11, 2024-03, 2024-03-01..2024-03-14)
    Start {
        report: String,
        period: String,
        /// Show progress until the run is sent, skipped or failed
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a queued or building run
    Cancel { run: String },
    /// Run the same report and period again
    Rerun {
        run: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Every dead-letter queue and how many messages it holds
    List,
    /// The messages of QUEUE's dead-letter queue, with their causes (left where they are)
    Peek {
        queue: String,
        #[arg(long, default_value_t = 10)]
        max: u32,
    },
    /// Move dead letters back to their queue: the ids given, or --all
    Redrive {
        queue: String,
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete one dead letter
    Delete { queue: String, id: String },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key (shown once). With --state-table, written straight to the state table with
    /// your AWS credentials: how the first key of a deployment is made.
    Create {
        name: String,
        /// read, operate or admin (each includes the ones before)
        #[arg(long, default_value = "read")]
        scope: String,
        /// The deployment's state table (Terraform output state_table)
        #[arg(long)]
        state_table: Option<String>,
    },
    /// Every key (never their secrets)
    List,
    /// Revoke a key by id
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum RelayCommand {
    /// Create a relay and print its key (shown once; it goes in the relay's relay.toml). A
    /// revoked relay is created again with a new key.
    Create {
        /// 1 to 40 of a-z, 0-9 and -
        id: String,
        /// The mailbox the relay reads, when Graph may read it too (the same mail by both
        /// paths is then ingested once)
        #[arg(long)]
        mailbox: Option<String>,
        /// A mail server whose Authentication-Results headers are believed in the relay's
        /// mail (its authserv-id, the host name the header starts with; repeat for several).
        /// Without one, datasets that require an authenticated sender ignore the relay's mail
        #[arg(long = "trust-authserv-id", value_name = "HOST")]
        trusted_authserv_ids: Vec<String>,
    },
    /// Every relay, when it was last seen, whether it is revoked
    List,
    /// Revoke a relay: its key is refused, and what it uploaded after is quarantined
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum IntakeCommand {
    /// What ingest made of each attachment with rows on DATASET's DATE, and the totals
    Outcomes { dataset: String, date: String },
    /// Quarantined files with their reasons
    Quarantine {
        #[arg(long)]
        dataset: Option<String>,
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

#[derive(Subcommand)]
pub enum ReportsCommand {
    /// The report definitions and when each fires next
    List,
    /// The stored versions of a period's workbook
    Versions { report: String, period: String },
}

/// An answer from the API.
struct Answer {
    status: u16,
    body: Value,
    location: Option<String>,
}

/// A refusal turned into an exit code and a message that says what to do.
struct Failure(u8, String);

impl From<Failure> for ExitCode {
    fn from(f: Failure) -> Self {
        eprintln!("charlie: {}", f.1);
        ExitCode::from(f.0)
    }
}

pub struct Client {
    base: String,
    key: Option<String>,
    /// `--sigv4`: the credentials and region requests are signed with.
    sigv4: Option<(aws_credential_types::Credentials, String)>,
    http: reqwest::Client,
    pub json: bool,
}

impl Client {
    pub async fn new(remote: &Remote) -> Result<Self, ExitCode> {
        let Some(base) = remote.api.clone() else {
            eprintln!(
                "charlie: no API URL: pass --api URL or set CHARLIE_API_URL (Terraform output api_endpoint)"
            );
            return Err(ExitCode::from(2));
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| {
                eprintln!("charlie: {e}");
                ExitCode::from(5)
            })?;
        let sigv4 = if remote.sigv4 {
            use aws_credential_types::provider::ProvideCredentials;
            let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let region = config.region().map(|r| r.to_string()).ok_or_else(|| {
                eprintln!("charlie: --sigv4 needs a region: set AWS_REGION (the API's region)");
                ExitCode::from(2)
            })?;
            let provider = config.credentials_provider().ok_or_else(|| {
                eprintln!("charlie: --sigv4 found no AWS credentials provider");
                ExitCode::from(3)
            })?;
            let credentials = provider.provide_credentials().await.map_err(|e| {
                eprintln!("charlie: --sigv4: no AWS credentials: {e}");
                ExitCode::from(3)
            })?;
            Some((credentials, region))
        } else {
            None
        };
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            key: std::env::var("CHARLIE_API_KEY")
                .ok()
                .filter(|k| !k.is_empty() && !remote.sigv4),
            sigv4,
            http,
            json: remote.json,
        })
    }

    /// The headers that sign a request for `execute-api` (SigV4, now).
    fn signed_headers(
        &self,
        method: &str,
        url: &reqwest::Url,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, Failure> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let Some((credentials, region)) = &self.sigv4 else {
            return Ok(Vec::new());
        };
        let identity = credentials.clone().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("execute-api")
            .time(std::time::SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Failure(5, format!("signing the request: {e}")))?;
        let request = SignableRequest::new(
            method,
            url.as_str(),
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            SignableBody::Bytes(body),
        )
        .map_err(|e| Failure(5, format!("signing the request: {e}")))?;
        let (instructions, _) = sign(request, &params.into())
            .map_err(|e| Failure(5, format!("signing the request: {e}")))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Answer, Failure> {
        // Signed calls go to the same API behind API Gateway's AWS_IAM authorization.
        let prefix = if self.sigv4.is_some() { "/iam" } else { "" };
        let url = format!("{}{prefix}{path}", self.base);
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| Failure(2, format!("{url} is not a URL: {e}")))?;
        let mut req = self.http.request(
            method.parse().unwrap_or(reqwest::Method::GET),
            parsed.clone(),
        );
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let bytes = match &body {
            Some(b) => serde_json::to_vec(b).unwrap_or_default(),
            None => Vec::new(),
        };
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(host) = parsed.host_str() {
            let host = match parsed.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            headers.push(("host", host));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json".to_owned()));
        }
        for (name, value) in self.signed_headers(method, &parsed, &headers, &bytes)? {
            req = req.header(name, value);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json").body(bytes);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure(5, format!("cannot reach {url}: {e}")))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp
            .text()
            .await
            .map_err(|e| Failure(5, format!("reading the answer of {url}: {e}")))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let problem = serde_json::from_value::<Problem>(body).ok();
            let message = problem
                .as_ref()
                .map_or("(no message)", |p| p.message.as_str())
                .to_owned();
            let field = problem
                .and_then(|p| p.field)
                .map(|f| format!(" [field: {f}]"))
                .unwrap_or_default();
            let hint = match status {
                401 | 403 if self.sigv4.is_some() => {
                    " — check your AWS credentials and AWS_REGION, and that the deployment's api_iam_principals names your role or user with that scope".to_owned()
                }
                401 if self.key.is_none() => " — set CHARLIE_API_KEY".to_owned(),
                401 => " — check CHARLIE_API_KEY (make one with `charlie keys create`)".to_owned(),
                403 => " — use a key with that scope".to_owned(),
                _ => String::new(),
            };
            let code = match status {
                400 | 405 | 422 => 2,
                401 | 403 => 3,
                404 => 4,
                409 => 6,
                _ => 5,
            };
            return Err(Failure(
                code,
                format!("{method} {path}: {status}: {message}{field}{hint}"),
            ));
        }
        Ok(Answer {
            status,
            body,
            location,
        })
    }

    /// Prints an answer of the contract's types as JSON (`--json`).
    fn print<T: serde::Serialize>(&self, v: &T) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    /// Calls a route and reads its answer as the contract's type for it.
    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Failure> {
        let answer = self.call(method, path, body).await?;
        serde_json::from_value(answer.body).map_err(|e| {
            Failure(
                5,
                format!("{method} {path}: the answer is not what this CLI knows ({e}); is the CLI as new as the deployment?"),
            )
        })
    }
}

/// A text cell: `-` when empty.
fn cell(v: &str) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.to_owned()
    }
}

/// An optional text cell: `-` when absent or empty.
fn opt(v: &Option<String>) -> String {
    cell(v.as_deref().unwrap_or_default())
}

/// An optional time as [`at`] shows it (`-` when absent).
fn at_opt(t: &Option<String>) -> String {
    at(t.as_deref().unwrap_or_default())
}

/// `2024-03-14T06:00:01.123+00:00` → `2024-03-14 06:00:01`.
fn at(t: &str) -> String {
    if t.len() >= 19 && t.as_bytes()[10] == b'T' {
        format!("{} {}", &t[..10], &t[11..19])
    } else {
        cell(t)
    }
}

/// Column widths from the cells; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// The exit code of a command's result.
fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.into(),
    }
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
                ("report", report),
                ("status", status),
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
            let start = StartRun { report, period };
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

async fn started(c: &Client, queued: RunQueued, wait: bool) -> Result<(), Failure> {
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

async fn show_run(c: &Client, run: &str) -> Result<(), Failure> {
    let r: RunAnswer = c
        .typed(
            "GET",
            &format!("/v1/runs/{}", charlie::uri::segment(run)),
            None,
        )
        .await?;
    if c.json {
        c.print(&r);
        return Ok(());
    }
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

pub async fn dlq(c: &Client, command: DlqCommand) -> ExitCode {
    let result = async {
        match command {
            DlqCommand::List => {
                let list: DeadLetterQueues = c.typed("GET", "/v1/dead-letters", None).await?;
                if c.json {
                    c.print(&list);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = list
                    .dead_letter_queues
                    .iter()
                    .map(|q| {
                        vec![
                            cell(&q.queue),
                            q.messages.to_string(),
                            at_opt(&q.oldest_sent_at),
                            if q.redrivable {
                                "yes".into()
                            } else {
                                "no (no source queue)".into()
                            },
                        ]
                    })
                    .collect();
                table(&["queue", "dead letters", "oldest", "redrivable"], &rows);
                Ok(())
            }
            DlqCommand::Peek { queue, max } => {
                let peeked: DeadLetters = c
                    .typed(
                        "GET",
                        &format!(
                            "/v1/dead-letters/{}?max={max}",
                            charlie::uri::segment(&queue)
                        ),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print(&peeked);
                    return Ok(());
                }
                if peeked.messages.is_empty() {
                    println!("{queue}: no dead letters");
                }
                for l in &peeked.messages {
                    println!(
                        "{}  sent {}  received {}x  stage {}",
                        cell(&l.message_id),
                        at(&l.sent_at.map(|t| t.to_rfc3339()).unwrap_or_default()),
                        l.receive_count,
                        opt(&l.failed_stage)
                    );
                    println!("  cause: {}", opt(&l.cause));
                    let body = cell(&l.body);
                    let short: String = body.chars().take(160).collect();
                    println!(
                        "  body:  {short}{}",
                        if body.chars().count() > 160 {
                            "…"
                        } else {
                            ""
                        }
                    );
                }
                Ok(())
            }
            DlqCommand::Redrive { queue, ids, all } => {
                let ask = if all {
                    Redrive {
                        all: true,
                        ..Redrive::default()
                    }
                } else if ids.is_empty() {
                    return Err(Failure(
                        2,
                        "give the message ids to redrive, or --all".into(),
                    ));
                } else {
                    Redrive {
                        message_ids: Some(ids),
                        ..Redrive::default()
                    }
                };
                let done: Redriven = c
                    .typed(
                        "POST",
                        &format!("/v1/dead-letters/{}/redrive", charlie::uri::segment(&queue)),
                        Some(json!(ask)),
                    )
                    .await?;
                if c.json {
                    c.print(&done);
                } else {
                    println!(
                        "{queue}: {} message(s) moved back to the queue",
                        done.moved.len()
                    );
                    for id in &done.not_found {
                        println!("  not found: {}", cell(id));
                    }
                }
                if !done.not_found.is_empty() {
                    return Err(Failure(
                        4,
                        "some messages were not in the dead-letter queue".into(),
                    ));
                }
                Ok(())
            }
            DlqCommand::Delete { queue, id } => {
                c.call(
                    "DELETE",
                    &format!(
                        "/v1/dead-letters/{}/{}",
                        charlie::uri::segment(&queue),
                        charlie::uri::segment(&id)
                    ),
                    None,
                )
                .await?;
                if !c.json {
                    println!("{queue}: {id} deleted");
                }
                Ok(())
            }
        }
    }
    .await;
    exit(result)
}

pub async fn health(c: &Client) -> ExitCode {
    let url = format!("{}/v1/health", c.base);
    let mut req = c.http.get(&url);
    if let Some(k) = &c.key {
        req = req.bearer_auth(k);
    }
    // 503 is an answer here (unhealthy, with the reasons), not a failure to reach the API.
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Failure(5, format!("cannot reach {url}: {e}")).into(),
    };
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    if status != 200 && status != 503 {
        let message = serde_json::from_str::<Problem>(&text)
            .map_or_else(|_| "(no message)".to_owned(), |p| p.message);
        return Failure(
            if status == 401 || status == 403 { 3 } else { 5 },
            format!("GET /v1/health: {status}: {message}"),
        )
        .into();
    }
    let health: Health = match serde_json::from_str(&text) {
        Ok(h) => h,
        Err(e) => {
            return Failure(
                5,
                format!("GET /v1/health: the answer is not what this CLI knows ({e}); is the CLI as new as the deployment?"),
            )
            .into();
        }
    };
    if c.json {
        c.print(&health);
    } else {
        println!("status: {}", health.status);
        for p in &health.problems {
            println!("  problem: {}", cell(p));
        }
        for w in &health.warnings {
            println!("  warning: {}", cell(w));
        }
        let depth = |d: &Option<QueueDepth>, f: fn(&QueueDepth) -> u64| {
            d.as_ref()
                .map_or_else(|| "-".to_owned(), |d| f(d).to_string())
        };
        let rows: Vec<Vec<String>> = health
            .queues
            .iter()
            .map(|q| {
                let age = q
                    .oldest_message_age_seconds
                    .map_or_else(|| "-".to_owned(), |a| format!("{a} s"));
                vec![
                    cell(&q.queue),
                    depth(&q.depth, |d| d.visible),
                    depth(&q.depth, |d| d.in_flight),
                    age,
                    depth(&q.dead_letters, |d| d.visible),
                ]
            })
            .collect();
        table(
            &["queue", "waiting", "in work", "oldest", "dead letters"],
            &rows,
        );
        for f in &health.folders {
            println!(
                "folder {}: last poll {}, subscription expires {}",
                cell(&f.folder),
                at_opt(&f.last_poll_at),
                at_opt(&f.subscription_expires_at)
            );
        }
    }
    if status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Counters as a table: one row per kind, its total, and what it is about (datasets, reports,
/// mailboxes, stages) with each one's count.
fn print_counters(counters: &Counters) {
    println!("counted since {}:", at(&counters.since));
    if counters.totals.is_empty() {
        println!("  nothing");
        return;
    }
    let rows: Vec<Vec<String>> = counters
        .totals
        .iter()
        .map(|(kind, n)| {
            let parts: Vec<String> = counters
                .by
                .iter()
                .filter_map(|(about, kinds)| Some(format!("{about} {}", kinds.get(kind)?)))
                .collect();
            vec![kind.clone(), n.to_string(), parts.join(", ")]
        })
        .collect();
    table(&["counter", "total", "by"], &rows);
}

pub async fn metrics(c: &Client, since: Option<&str>) -> ExitCode {
    let path = match since {
        Some(since) => format!("/v1/metrics?since={}", charlie::uri::segment(since)),
        None => "/v1/metrics".to_owned(),
    };
    let result = async {
        let m: Metrics = c.typed("GET", &path, None).await?;
        if c.json {
            c.print(&m);
            return Ok::<(), Failure>(());
        }
        print_counters(&m.counters);
        let runs: Vec<Vec<String>> = m
            .runs_by_status
            .iter()
            .map(|(status, n)| vec![status.clone(), n.to_string()])
            .collect();
        println!("runs requested since {}:", at(&m.since));
        if runs.is_empty() {
            println!("  none");
        } else {
            table(&["status", "runs"], &runs);
        }
        let queues: Vec<Vec<String>> = m
            .queues
            .iter()
            .map(|(q, d)| {
                let depth = d.depth.map_or_else(|| "-".into(), |n| n.to_string());
                vec![q.clone(), depth, d.dead_letters.to_string()]
            })
            .collect();
        table(&["queue", "waiting", "dead letters"], &queues);
        Ok(())
    }
    .await;
    exit(result)
}

/// `charlie audit`: the latest state-changing calls, as JSON.
pub async fn audit(c: &Client) -> ExitCode {
    match c
        .typed::<charlie::contract::AuditTrail>("GET", "/v1/audit", None)
        .await
    {
        Ok(trail) => {
            c.print(&trail);
            ExitCode::SUCCESS
        }
        Err(f) => f.into(),
    }
}

pub async fn reports(c: &Client, command: ReportsCommand) -> ExitCode {
    let result = async {
        match command {
            ReportsCommand::List => {
                let list: ReportList = c.typed("GET", "/v1/reports", None).await?;
                if c.json {
                    c.print(&list);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = list
                    .reports
                    .iter()
                    .map(|r| {
                        vec![
                            cell(&r.name),
                            cell(&r.schedule),
                            opt(&r.next_run_local),
                            r.transport.name().to_owned(),
                            r.recipients.join(", "),
                        ]
                    })
                    .collect();
                table(
                    &["report", "schedule", "next run", "transport", "recipients"],
                    &rows,
                );
                Ok::<(), Failure>(())
            }
            ReportsCommand::Versions { report, period } => {
                let stored: WorkbookVersions = c
                    .typed(
                        "GET",
                        &format!(
                            "/v1/reports/{}/versions?period={}",
                            charlie::uri::segment(&report),
                            charlie::uri::segment(&period)
                        ),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print(&stored);
                    return Ok(());
                }
                println!("{}", cell(&stored.key));
                let rows: Vec<Vec<String>> = stored
                    .versions
                    .iter()
                    .map(|v| {
                        vec![
                            opt(&v.version_id),
                            at(&v.modified.to_rfc3339()),
                            v.size.to_string(),
                            if v.latest {
                                "latest".into()
                            } else {
                                String::new()
                            },
                        ]
                    })
                    .collect();
                table(&["version", "stored", "bytes", ""], &rows);
                Ok(())
            }
        }
    }
    .await;
    exit(result)
}

pub async fn keys(remote: &Remote, command: KeysCommand) -> ExitCode {
    use charlie::stages::api::keys::Scope;
    if let KeysCommand::Create {
        name,
        scope,
        state_table: Some(table),
    } = &command
    {
        let Some(scope) = Scope::parse(scope) else {
            return Failure(
                2,
                format!("scope {scope:?} is not one of {:?}", Scope::NAMES),
            )
            .into();
        };
        let aws =
            charlie::adapters::aws::AwsConfig::from_env(&charlie::env::Env::from_process()).await;
        let state = charlie::adapters::aws::dynamodb::DynamoState::new(
            aws_sdk_dynamodb::Client::new(&aws.sdk),
            table,
        );
        let by = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        return match charlie::stages::api::keys::create(
            &state,
            name,
            &[scope],
            &format!("{by} (charlie keys create)"),
        )
        .await
        {
            Ok((record, key)) => {
                if remote.json {
                    let created = CreatedKey {
                        info: KeyInfo::from(&record),
                        key: key.expose().to_owned(),
                    };
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&created).unwrap_or_default()
                    );
                } else {
                    println!(
                        "key {} ({}, {}): {}",
                        record.id,
                        record.name,
                        record.scopes.join(","),
                        key.expose()
                    );
                    println!(
                        "shown once: keep it in a password manager; CHARLIE_API_KEY=<key> for the CLI"
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => Failure(5, format!("writing the key to {table}: {e:#}")).into(),
        };
    }
    let c = match Client::new(remote).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = async {
        match command {
            KeysCommand::Create { name, scope, .. } => {
                let ask = NewKey {
                    name,
                    scopes: vec![scope],
                };
                let created: CreatedKey = c.typed("POST", "/v1/keys", Some(json!(ask))).await?;
                if c.json {
                    c.print(&created);
                } else {
                    println!(
                        "key {} ({}, {}): {}",
                        cell(&created.info.id),
                        cell(&created.info.name),
                        cell(created.info.scopes.first().map_or("", String::as_str)),
                        cell(&created.key)
                    );
                    println!("shown once: keep it in a password manager");
                }
                Ok::<(), Failure>(())
            }
            KeysCommand::List => {
                let list: KeyList = c.typed("GET", "/v1/keys", None).await?;
                if c.json {
                    c.print(&list);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = list
                    .keys
                    .iter()
                    .map(|k| {
                        vec![
                            cell(&k.id),
                            cell(&k.name),
                            k.scopes.join(","),
                            at(&k.created_at),
                            at_opt(&k.revoked_at),
                        ]
                    })
                    .collect();
                table(&["id", "name", "scopes", "created", "revoked"], &rows);
                Ok(())
            }
            KeysCommand::Revoke { id } => {
                let key: KeyInfo = c
                    .typed(
                        "DELETE",
                        &format!("/v1/keys/{}", charlie::uri::segment(&id)),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print(&key);
                } else {
                    println!(
                        "key {id} ({}) revoked at {}",
                        cell(&key.name),
                        at_opt(&key.revoked_at)
                    );
                }
                Ok(())
            }
        }
    }
    .await;
    exit(result)
}

pub async fn relay(c: &Client, command: RelayCommand) -> ExitCode {
    let result = async {
        match command {
            RelayCommand::Create {
                id,
                mailbox,
                trusted_authserv_ids,
            } => {
                let ask = NewRelay {
                    id,
                    mailbox,
                    trusted_authserv_ids,
                };
                let created: CreatedRelay = c.typed("POST", "/v1/relays", Some(json!(ask))).await?;
                if c.json {
                    c.print(&created);
                } else {
                    let id = cell(&created.relay.id);
                    println!("relay {id}: {}", cell(&created.key));
                    println!(
                        "shown once: on the relay's machine, store it with `charlie-relay keyring set {id}` (then key_keyring in relay.toml), or put it in its key_file or CHARLIE_RELAY_KEY"
                    );
                }
                Ok::<(), Failure>(())
            }
            RelayCommand::List => {
                let list: RelayList = c.typed("GET", "/v1/relays", None).await?;
                if c.json {
                    c.print(&list);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = list
                    .relays
                    .iter()
                    .map(|o| {
                        let r = &o.relay;
                        vec![
                            cell(&r.id),
                            opt(&r.mailbox),
                            at(&r.created_at),
                            at_opt(&r.last_seen_at),
                            at_opt(&r.revoked_at),
                            match o.outbox_waiting {
                                0 => "-".into(),
                                n => format!(
                                    "{n} waiting since {}",
                                    at_opt(&o.outbox_oldest_queued_at)
                                ),
                            },
                        ]
                    })
                    .collect();
                table(
                    &["id", "mailbox", "created", "last seen", "revoked", "outbox"],
                    &rows,
                );
                // A mail its relay's sender keeps deferring, with what the server said.
                for o in &list.relays {
                    if let Some(stuck) = &o.outbox_stuck {
                        println!(
                            "relay {}: mail {} deferred {} time(s), last at {}, next try {}: {}",
                            cell(&o.relay.id),
                            cell(&stuck.message_id),
                            stuck.attempts,
                            at_opt(&stuck.last_attempt_at),
                            at_opt(&stuck.next_attempt_at),
                            opt(&stuck.last_answer)
                        );
                    }
                }
                Ok(())
            }
            RelayCommand::Revoke { id } => {
                let relay: RelayInfo = c
                    .typed(
                        "DELETE",
                        &format!("/v1/relays/{}", charlie::uri::segment(&id)),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print(&relay);
                } else {
                    println!(
                        "relay {id} revoked at {}",
                        at_opt(&relay.revoked_at)
                    );
                }
                Ok(())
            }
        }
    }
    .await;
    exit(result)
}

/// A delivery's status, with the refusal of a relay's sender when it has one.
fn delivery_status(d: &Delivery) -> String {
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

pub async fn intake(c: &Client, command: IntakeCommand) -> ExitCode {
    let result = async {
        match command {
            IntakeCommand::Outcomes { dataset, date } => {
                let day: DayOutcomes = c
                    .typed(
                        "GET",
                        &format!(
                            "/v1/intake/outcomes?dataset={}&date={}",
                            charlie::uri::segment(&dataset),
                            charlie::uri::segment(&date)
                        ),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print(&day);
                    return Ok(());
                }
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
                let q: Quarantined = c.typed("GET", &path, None).await?;
                if c.json {
                    c.print(&q);
                    return Ok(());
                }
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
                let b: IntakeState = c.typed(method, &path, None).await?;
                if c.json {
                    c.print(&b);
                    return Ok(());
                }
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
