//! The commands that talk to a deployment's control API (`--api URL` or `CHARLIE_API_URL`,
//! the key in `CHARLIE_API_KEY`). Tables for people, `--json` for scripts.
//!
//! Exit codes: 0 done; 1 what was asked for failed (a run failed or was cancelled, the
//! deployment is unhealthy); 2 a bad request (the message names the field); 3 the key was
//! refused (401) or lacks the scope (403); 4 no such thing (404); 5 the API could not be
//! reached or failed (5xx); 6 a conflict (409: e.g. cancelling a finished run).

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
            let message = body["message"]
                .as_str()
                .unwrap_or("(no message)")
                .to_owned();
            let field = body["field"]
                .as_str()
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

    fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
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

/// A JSON array of strings as one `sep`-joined cell (empty when not an array).
fn joined(v: &Value, sep: &str) -> String {
    v.as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(sep))
        .unwrap_or_default()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) if x.is_empty() => "-".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// `2024-03-14T06:00:01.123+00:00` → `2024-03-14 06:00:01`.
fn when(v: &Value) -> String {
    let t = s(v);
    if t.len() >= 19 && t.as_bytes()[10] == b'T' {
        format!("{} {}", &t[..10], &t[11..19])
    } else {
        t
    }
}

fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const FINAL: [&str; 5] = [
    "built",
    "skipped_empty",
    "notice_sent",
    "failed",
    "cancelled",
];

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
                    q.push(format!("{k}={}", encode(&v)));
                }
            }
            match c
                .call("GET", &format!("/v1/runs?{}", q.join("&")), None)
                .await
            {
                Ok(a) if c.json => {
                    c.print_json(&a.body);
                    Ok(())
                }
                Ok(a) => {
                    let rows: Vec<Vec<String>> = a.body["runs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| {
                            vec![
                                s(&r["run_id"]),
                                s(&r["report"]),
                                s(&r["period"]),
                                s(&r["status"]),
                                s(&r["rows"]),
                                when(&r["requested_at"]),
                                s(&r["requested_by"]),
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
                    if let Some(next) = a.body["next_cursor"].as_str() {
                        println!("(more: the API's next_cursor is {next})");
                    }
                    Ok(())
                }
                Err(f) => Err(f),
            }
        }
        RunsCommand::Show { run } => show_run(c, &run).await.map(|_| ()),
        RunsCommand::Start {
            report,
            period,
            wait,
        } => {
            match c
                .call(
                    "POST",
                    "/v1/runs",
                    Some(json!({"report": report, "period": period})),
                )
                .await
            {
                Ok(a) => started(c, a, wait).await,
                Err(f) => Err(f),
            }
        }
        RunsCommand::Rerun { run, wait } => {
            match c
                .call("POST", &format!("/v1/runs/{}/rerun", encode(&run)), None)
                .await
            {
                Ok(a) => started(c, a, wait).await,
                Err(f) => Err(f),
            }
        }
        RunsCommand::Cancel { run } => {
            match c
                .call("POST", &format!("/v1/runs/{}/cancel", encode(&run)), None)
                .await
            {
                Ok(a) if c.json => {
                    c.print_json(&a.body);
                    Ok(())
                }
                Ok(a) => {
                    println!(
                        "cancel requested for {run} (it was {}): the builder stops before it starts or at its next page; `charlie runs show {run}` says when",
                        s(&a.body["status"])
                    );
                    Ok(())
                }
                Err(f) => Err(f),
            }
        }
    };
    exit(result)
}

async fn started(c: &Client, a: Answer, wait: bool) -> Result<(), Failure> {
    let run = s(&a.body["run_id"]);
    if !wait {
        if c.json {
            c.print_json(&a.body);
        } else {
            println!(
                "{run}: queued ({} {})",
                s(&a.body["report"]),
                s(&a.body["period"])
            );
        }
        return Ok(());
    }
    if !c.json {
        println!("{run}: queued");
    }
    let mut last = String::from("queued");
    let deadline = std::time::Instant::now() + Duration::from_secs(30 * 60);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = c
            .call("GET", &format!("/v1/runs/{}", encode(&run)), None)
            .await?
            .body;
        let status = s(&r["status"]);
        if status != last && !c.json {
            let extra = match status.as_str() {
                "retrying" => format!(" ({}; attempt {})", s(&r["error"]), s(&r["attempts"])),
                "built" => format!(" ({} rows, {} bytes)", s(&r["rows"]), s(&r["size"])),
                "failed" => format!(" ({})", s(&r["error"])),
                _ => String::new(),
            };
            println!("{run}: {status}{extra}");
            last = status.clone();
        }
        let delivered = r["deliveries"].as_array().is_some_and(|d| !d.is_empty());
        let done = match status.as_str() {
            // Built: done once the mailer recorded its deliveries.
            "built" | "notice_sent" => delivered,
            s => FINAL.contains(&s),
        };
        if done {
            if c.json {
                c.print_json(&r);
            } else {
                for d in r["deliveries"].as_array().into_iter().flatten() {
                    println!(
                        "{run}: sent by {} to {} ({}, message id {})",
                        s(&d["transport"]),
                        joined(&d["to"], ", "),
                        s(&d["status"]),
                        s(&d["provider_message_id"])
                    );
                }
            }
            return match status.as_str() {
                "failed" | "cancelled" => Err(Failure(1, format!("run {run} {status}"))),
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

async fn show_run(c: &Client, run: &str) -> Result<Value, Failure> {
    let r = c
        .call("GET", &format!("/v1/runs/{}", encode(run)), None)
        .await?
        .body;
    if c.json {
        c.print_json(&r);
        return Ok(r);
    }
    let fields = [
        ("run", s(&r["run_id"])),
        ("report", s(&r["report"])),
        ("period", s(&r["period"])),
        (
            "status",
            format!(
                "{}{}",
                s(&r["status"]),
                if r["stale"] == true {
                    " (stale: its attempt died; the queue delivers it again)"
                } else {
                    ""
                }
            ),
        ),
        ("attempts", s(&r["attempts"])),
        (
            "requested",
            format!("{} by {}", when(&r["requested_at"]), s(&r["requested_by"])),
        ),
        ("started", when(&r["started_at"])),
        ("finished", when(&r["finished_at"])),
        ("rows", s(&r["rows"])),
        ("sheets", joined(&r["sheets"], ", ")),
        (
            "workbook",
            format!(
                "{} (version {})",
                s(&r["workbook_key"]),
                s(&r["workbook_version"])
            ),
        ),
        ("size", s(&r["size"])),
        ("sha256", s(&r["sha256"])),
        ("error", s(&r["error"])),
        ("cancel requested", s(&r["cancel_requested"])),
    ];
    for (k, v) in fields {
        println!("{k:<17} {v}");
    }
    let rows: Vec<Vec<String>> = r["deliveries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                s(&d["group"]),
                s(&d["transport"]),
                delivery_status(d),
                when(&d["sent_at"]),
                joined(&d["to"], ", "),
                s(&d["provider_message_id"]),
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
    Ok(r)
}

pub async fn download(c: &Client, run: &str, out: Option<std::path::PathBuf>) -> ExitCode {
    let a = match c
        .call("GET", &format!("/v1/runs/{}/download", encode(run)), None)
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
                let a = c.call("GET", "/v1/dead-letters", None).await?;
                if c.json {
                    c.print_json(&a.body);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = a.body["dead_letter_queues"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|q| {
                        vec![
                            s(&q["queue"]),
                            s(&q["messages"]),
                            when(&q["oldest_sent_at"]),
                            if q["redrivable"] == true {
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
                let a = c
                    .call(
                        "GET",
                        &format!("/v1/dead-letters/{}?max={max}", encode(&queue)),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print_json(&a.body);
                    return Ok(());
                }
                let letters = a.body["messages"].as_array().cloned().unwrap_or_default();
                if letters.is_empty() {
                    println!("{queue}: no dead letters");
                }
                for l in letters {
                    println!(
                        "{}  sent {}  received {}x  stage {}",
                        s(&l["message_id"]),
                        when(&l["sent_at"]),
                        s(&l["receive_count"]),
                        s(&l["failed_stage"])
                    );
                    println!("  cause: {}", s(&l["cause"]));
                    let body = s(&l["body"]);
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
                let body = if all {
                    json!({"all": true})
                } else if ids.is_empty() {
                    return Err(Failure(
                        2,
                        "give the message ids to redrive, or --all".into(),
                    ));
                } else {
                    json!({"message_ids": ids})
                };
                let a = c
                    .call(
                        "POST",
                        &format!("/v1/dead-letters/{}/redrive", encode(&queue)),
                        Some(body),
                    )
                    .await?;
                if c.json {
                    c.print_json(&a.body);
                } else {
                    let moved = a.body["moved"].as_array().map_or(0, Vec::len);
                    println!("{queue}: {moved} message(s) moved back to the queue");
                    for id in a.body["not_found"].as_array().into_iter().flatten() {
                        println!("  not found: {}", s(id));
                    }
                }
                if a.body["not_found"]
                    .as_array()
                    .is_some_and(|n| !n.is_empty())
                {
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
                    &format!("/v1/dead-letters/{}/{}", encode(&queue), encode(&id)),
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
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status != 200 && status != 503 {
        return Failure(
            if status == 401 || status == 403 { 3 } else { 5 },
            format!("GET /v1/health: {status}: {}", s(&body["message"])),
        )
        .into();
    }
    if c.json {
        c.print_json(&body);
    } else {
        println!("status: {}", s(&body["status"]));
        for p in body["problems"].as_array().into_iter().flatten() {
            println!("  problem: {}", s(p));
        }
        for w in body["warnings"].as_array().into_iter().flatten() {
            println!("  warning: {}", s(w));
        }
        let rows: Vec<Vec<String>> = body["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|q| {
                let age = q["oldest_message_age_seconds"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), |a| format!("{a} s"));
                vec![
                    s(&q["queue"]),
                    s(&q["depth"]["visible"]),
                    s(&q["depth"]["in_flight"]),
                    age,
                    s(&q["dead_letters"]["visible"]),
                ]
            })
            .collect();
        table(
            &["queue", "waiting", "in work", "oldest", "dead letters"],
            &rows,
        );
        for f in body["folders"].as_array().into_iter().flatten() {
            println!(
                "folder {}: last poll {}, subscription expires {}",
                s(&f["folder"]),
                when(&f["last_poll_at"]),
                when(&f["subscription_expires_at"])
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
fn print_counters(counters: &Value) {
    println!("counted since {}:", when(&counters["since"]));
    let Some(totals) = counters["totals"].as_object().filter(|t| !t.is_empty()) else {
        println!("  nothing");
        return;
    };
    let by = counters["by"].as_object();
    let rows: Vec<Vec<String>> = totals
        .iter()
        .map(|(kind, n)| {
            let parts: Vec<String> = by
                .into_iter()
                .flatten()
                .filter_map(|(about, kinds)| Some(format!("{about} {}", s(kinds.get(kind)?))))
                .collect();
            vec![kind.clone(), s(n), parts.join(", ")]
        })
        .collect();
    table(&["counter", "total", "by"], &rows);
}

pub async fn metrics(c: &Client, since: Option<&str>) -> ExitCode {
    let path = match since {
        Some(since) => format!("/v1/metrics?since={}", encode(since)),
        None => "/v1/metrics".to_owned(),
    };
    let result = async {
        let a = c.call("GET", &path, None).await?;
        if c.json {
            c.print_json(&a.body);
            return Ok::<(), Failure>(());
        }
        let b = &a.body;
        print_counters(&b["counters"]);
        let runs: Vec<Vec<String>> = b["runs_by_status"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(status, n)| vec![status.clone(), s(n)])
            .collect();
        println!("runs requested since {}:", when(&b["since"]));
        if runs.is_empty() {
            println!("  none");
        } else {
            table(&["status", "runs"], &runs);
        }
        let queues: Vec<Vec<String>> = b["queues"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(q, d)| {
                let depth = if d["depth"].is_null() {
                    "-".into()
                } else {
                    s(&d["depth"])
                };
                vec![q.clone(), depth, s(&d["dead_letters"])]
            })
            .collect();
        table(&["queue", "waiting", "dead letters"], &queues);
        Ok(())
    }
    .await;
    exit(result)
}

pub async fn simple(c: &Client, path: &str) -> ExitCode {
    match c.call("GET", path, None).await {
        Ok(a) => {
            c.print_json(&a.body);
            ExitCode::SUCCESS
        }
        Err(f) => f.into(),
    }
}

pub async fn reports(c: &Client, command: ReportsCommand) -> ExitCode {
    let result = async {
        match command {
            ReportsCommand::List => {
                let a = c.call("GET", "/v1/reports", None).await?;
                if c.json {
                    c.print_json(&a.body);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = a.body["reports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            s(&r["name"]),
                            s(&r["schedule"]),
                            s(&r["next_run_local"]),
                            s(&r["transport"]),
                            joined(&r["recipients"], ", "),
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
                let a = c
                    .call(
                        "GET",
                        &format!(
                            "/v1/reports/{}/versions?period={}",
                            encode(&report),
                            encode(&period)
                        ),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print_json(&a.body);
                    return Ok(());
                }
                println!("{}", s(&a.body["key"]));
                let rows: Vec<Vec<String>> = a.body["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| {
                        vec![
                            s(&v["version_id"]),
                            when(&v["modified"]),
                            s(&v["size"]),
                            if v["latest"] == true {
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
                    println!(
                        "{}",
                        json!({"id": record.id, "name": record.name, "scopes": record.scopes, "key": key.expose()})
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
                let a = c
                    .call(
                        "POST",
                        "/v1/keys",
                        Some(json!({"name": name, "scopes": [scope]})),
                    )
                    .await?;
                if c.json {
                    c.print_json(&a.body);
                } else {
                    println!(
                        "key {} ({}, {}): {}",
                        s(&a.body["id"]),
                        s(&a.body["name"]),
                        s(&a.body["scopes"][0]),
                        s(&a.body["key"])
                    );
                    println!("shown once: keep it in a password manager");
                }
                Ok::<(), Failure>(())
            }
            KeysCommand::List => {
                let a = c.call("GET", "/v1/keys", None).await?;
                if c.json {
                    c.print_json(&a.body);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = a.body["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|k| {
                        vec![
                            s(&k["id"]),
                            s(&k["name"]),
                            joined(&k["scopes"], ","),
                            when(&k["created_at"]),
                            when(&k["revoked_at"]),
                        ]
                    })
                    .collect();
                table(&["id", "name", "scopes", "created", "revoked"], &rows);
                Ok(())
            }
            KeysCommand::Revoke { id } => {
                let a = c
                    .call("DELETE", &format!("/v1/keys/{}", encode(&id)), None)
                    .await?;
                if c.json {
                    c.print_json(&a.body);
                } else {
                    println!(
                        "key {id} ({}) revoked at {}",
                        s(&a.body["name"]),
                        when(&a.body["revoked_at"])
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
            RelayCommand::Create { id, mailbox } => {
                let mut body = json!({"id": id});
                if let Some(m) = mailbox {
                    body["mailbox"] = json!(m);
                }
                let a = c.call("POST", "/v1/relays", Some(body)).await?;
                if c.json {
                    c.print_json(&a.body);
                } else {
                    println!("relay {}: {}", s(&a.body["id"]), s(&a.body["key"]));
                    println!(
                        "shown once: on the relay's machine, store it with `charlie-relay keyring set {}` (then key_keyring in relay.toml), or put it in its key_file or CHARLIE_RELAY_KEY",
                        s(&a.body["id"])
                    );
                }
                Ok::<(), Failure>(())
            }
            RelayCommand::List => {
                let a = c.call("GET", "/v1/relays", None).await?;
                if c.json {
                    c.print_json(&a.body);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = a.body["relays"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            s(&r["id"]),
                            s(&r["mailbox"]),
                            when(&r["created_at"]),
                            when(&r["last_seen_at"]),
                            when(&r["revoked_at"]),
                            match r["outbox_waiting"].as_u64() {
                                Some(n) if n > 0 => format!(
                                    "{n} waiting since {}",
                                    when(&r["outbox_oldest_queued_at"])
                                ),
                                _ => "-".into(),
                            },
                        ]
                    })
                    .collect();
                table(
                    &["id", "mailbox", "created", "last seen", "revoked", "outbox"],
                    &rows,
                );
                Ok(())
            }
            RelayCommand::Revoke { id } => {
                let a = c
                    .call("DELETE", &format!("/v1/relays/{}", encode(&id)), None)
                    .await?;
                if c.json {
                    c.print_json(&a.body);
                } else {
                    println!("relay {id} revoked at {}", when(&a.body["revoked_at"]));
                }
                Ok(())
            }
        }
    }
    .await;
    exit(result)
}

/// A delivery's status, with the refusal of a relay's sender when it has one.
fn delivery_status(d: &Value) -> String {
    match d["status_detail"]["refusal"].as_str() {
        Some(why) => format!("{} ({why})", s(&d["status"])),
        None => s(&d["status"]),
    }
}

pub async fn deliveries(c: &Client, run: &str) -> ExitCode {
    let a = match c
        .call("GET", &format!("/v1/runs/{}/deliveries", encode(run)), None)
        .await
    {
        Ok(a) => a,
        Err(f) => return f.into(),
    };
    if c.json {
        c.print_json(&a.body);
        return ExitCode::SUCCESS;
    }
    let rows: Vec<Vec<String>> = a.body["deliveries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let events = d["events"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .map(|x| s(&x["event_type"]))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            vec![
                s(&d["group"]),
                s(&d["transport"]),
                delivery_status(d),
                when(&d["sent_at"]),
                s(&d["provider_message_id"]),
                if events.is_empty() {
                    "-".into()
                } else {
                    events
                },
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
    let a = match c
        .call(
            "POST",
            "/v1/reprocess",
            Some(json!({"dataset": dataset, "date": date})),
        )
        .await
    {
        Ok(a) => a,
        Err(f) => return f.into(),
    };
    let id = s(&a.body["request_id"]);
    if !wait {
        if c.json {
            c.print_json(&a.body);
        } else {
            println!("{id}: queued; `charlie reprocess {dataset} {date} --wait` waits for it");
        }
        return ExitCode::SUCCESS;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30 * 60);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = match c
            .call("GET", &format!("/v1/reprocess/{}", encode(&id)), None)
            .await
        {
            Ok(a) => a.body,
            Err(f) => return f.into(),
        };
        match r["status"].as_str() {
            Some("done") => {
                if c.json {
                    c.print_json(&r);
                } else {
                    println!(
                        "{id}: done: {} attachment(s) re-ingested, {} row(s) deleted, {} stored",
                        s(&r["attachments"]),
                        s(&r["rows_deleted"]),
                        s(&r["rows_stored"])
                    );
                }
                return ExitCode::SUCCESS;
            }
            Some("failed") => return Failure(1, format!("{id} failed: {}", s(&r["error"]))).into(),
            _ if std::time::Instant::now() > deadline => {
                return Failure(
                    1,
                    format!("{id} is still {} after 30 minutes", s(&r["status"])),
                )
                .into();
            }
            _ => {}
        }
    }
}

pub async fn intake(c: &Client, command: IntakeCommand) -> ExitCode {
    let result = async {
        match command {
            IntakeCommand::Outcomes { dataset, date } => {
                let a = c
                    .call(
                        "GET",
                        &format!(
                            "/v1/intake/outcomes?dataset={}&date={}",
                            encode(&dataset),
                            encode(&date)
                        ),
                        None,
                    )
                    .await?;
                if c.json {
                    c.print_json(&a.body);
                    return Ok(());
                }
                let t = &a.body["totals"];
                println!(
                    "{dataset} {date}: {} rows: {} new, {} duplicate, {} rejected",
                    s(&t["rows_total"]),
                    s(&t["rows_new"]),
                    s(&t["rows_duplicate"]),
                    s(&t["rows_rejected"])
                );
                let rows: Vec<Vec<String>> = a.body["outcomes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| {
                        vec![
                            s(&o["attachment"]),
                            when(&o["received"]),
                            s(&o["rows_total"]),
                            s(&o["rows_new"]),
                            s(&o["rows_duplicate"]),
                            s(&o["rows_rejected"]),
                            s(&o["raw_key"]),
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
                Ok(())
            }
            IntakeCommand::Quarantine { dataset, limit } => {
                let mut path = format!("/v1/intake/quarantine?limit={limit}");
                if let Some(d) = dataset {
                    path.push_str(&format!("&dataset={}", encode(&d)));
                }
                let a = c.call("GET", &path, None).await?;
                if c.json {
                    c.print_json(&a.body);
                    return Ok(());
                }
                let files = a.body["files"].as_array().cloned().unwrap_or_default();
                if files.is_empty() {
                    println!("nothing quarantined");
                }
                for f in files {
                    println!(
                        "{}  ({}, {})",
                        s(&f["key"]),
                        s(&f["attachment"]),
                        when(&f["quarantined_at"])
                    );
                    println!("  reason: {}", s(&f["reason"]));
                }
                Ok(())
            }
            IntakeCommand::Rejects { raw_key } => {
                let a = c
                    .call(
                        "GET",
                        &format!("/v1/intake/rejects?raw_key={}", encode(&raw_key)),
                        None,
                    )
                    .await?;
                c.print_json(&a.body);
                Ok(())
            }
            IntakeCommand::Pause | IntakeCommand::Resume | IntakeCommand::Status { .. } => {
                let (method, path) = match &command {
                    IntakeCommand::Pause => ("POST", "/v1/intake/pause".to_owned()),
                    IntakeCommand::Resume => ("POST", "/v1/intake/resume".to_owned()),
                    IntakeCommand::Status { since: Some(since) } => {
                        ("GET", format!("/v1/intake?since={}", encode(since)))
                    }
                    _ => ("GET", "/v1/intake".to_owned()),
                };
                let a = c.call(method, &path, None).await?;
                if c.json {
                    c.print_json(&a.body);
                    return Ok(());
                }
                let b = &a.body;
                if b["paused"] == true {
                    println!(
                        "intake paused since {} by {}; {} mail(s) parked",
                        when(&b["since"]),
                        s(&b["by"]),
                        s(&b["parked"])
                    );
                } else {
                    println!("intake running; {} mail(s) parked", s(&b["parked"]));
                }
                if let Some(n) = b["resumed"].as_u64() {
                    println!("{n} parked mail(s) queued for ingest");
                }
                if matches!(command, IntakeCommand::Status { .. }) {
                    print_counters(&b["counters"]);
                }
                Ok(())
            }
            IntakeCommand::Poll => {
                c.call("POST", "/v1/intake/poll", None).await?;
                if !c.json {
                    println!("poll queued: the poller runs its round over every folder now");
                }
                Ok::<(), Failure>(())
            }
        }
    }
    .await;
    exit(result)
}
