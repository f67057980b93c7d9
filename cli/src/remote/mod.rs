//! The commands that talk to a deployment's control API (`--api URL` or `CHARLIE_API_URL`,
//! the key in `CHARLIE_API_KEY`). Tables for people, `--json` for scripts.
//!
//! Exit codes: 0 done; 1 what was asked for failed (a run failed or was cancelled, the
//! deployment is unhealthy); 2 a bad request (the message names the field); 3 the key was
//! refused (401) or lacks the scope (403); 4 no such thing (404); 5 the API could not be
//! reached or failed (5xx); 6 a conflict (409: e.g. cancelling a finished run).

mod dead_letters;
mod health;
mod intake;
mod keys;
mod relays;
mod reports;
mod runs;

pub use dead_letters::{DlqCommand, dlq};
pub use health::{health, metrics};
pub use intake::{IntakeCommand, intake, reprocess};
pub use keys::{KeysCommand, audit, keys};
pub use relays::{RelayCommand, relay};
pub use reports::{ReportsCommand, reports};
pub use runs::{RunsCommand, deliveries, download, runs};

use charlie::contract::{
    CancelRequested, Counters, CreatedKey, CreatedRelay, DatasetName, DayOutcomes,
    DeadLetterQueues, DeadLetters, Delivery, Health, IntakeState, KeyId, KeyInfo, KeyList, Metrics,
    NewKey, NewRelay, Problem, Quarantined, QueueDepth, Redrive, Redriven, RelayId, RelayInfo,
    RelayList, ReportList, ReportName, ReprocessQueued, ReprocessRecord, ReprocessStatus,
    RunAnswer, RunDeliveries, RunId, RunList, RunQueued, RunStatus, StartReprocess, StartRun,
    WorkbookVersions,
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

    /// Calls a route for a command that shows its answer: with `--json` the answer is printed
    /// as it is and `None` comes back (nothing more to show); else the answer, for a table.
    async fn shown<T: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<T>, Failure> {
        let answer: T = self.typed(method, path, body).await?;
        if self.json {
            self.print(&answer);
            return Ok(None);
        }
        Ok(Some(answer))
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

/// The commands that call a deployment's control API.
#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Control API keys: create, list, revoke
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    #[command(flatten)]
    Api(ApiCommand),
}

/// The commands that need an API client (keys may also be made in the state table).
#[derive(Subcommand)]
pub enum ApiCommand {
    /// Runs of a deployment: list, show, start, cancel, rerun
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// A run's workbook, downloaded
    Download {
        run: RunId,
        /// Where to write it (default: the workbook's own name)
        #[arg(short, long)]
        out: Option<std::path::PathBuf>,
    },
    /// A run's deliveries: transport, status, provider message id, SES events
    Deliveries { run: RunId },
    /// Re-ingest DATASET's DATE from its archived attachments (the same rows)
    Reprocess {
        dataset: DatasetName,
        date: String,
        /// Wait until it is done
        #[arg(long)]
        wait: bool,
    },
    /// Intake: outcomes of a day, quarantined files, an attachment's rejects, poll now
    Intake {
        #[command(subcommand)]
        command: IntakeCommand,
    },
    /// Dead-letter queues: list, peek, redrive, delete
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The deployment's report definitions and workbook versions
    Reports {
        #[command(subcommand)]
        command: ReportsCommand,
    },
    /// The deployment's health (exit 1 when unhealthy)
    Health,
    /// Counters since a point in time (mails, rows, runs, mails sent, bounces), runs by
    /// status, queue depths
    Metrics {
        /// RFC 3339 time or a span back (90m, 24h, 7d); default a day back
        #[arg(long)]
        since: Option<String>,
    },
    /// The audit trail of state-changing API calls (JSON; admin)
    Audit,
    /// On-prem relays (charlie-relay): create (the key shown once), list, revoke
    Relay {
        #[command(subcommand)]
        command: RelayCommand,
    },
}

/// Runs a command against the deployment `remote` names.
pub async fn run(remote: &Remote, command: RemoteCommand) -> ExitCode {
    let command = match command {
        // The first admin key is made straight in the state table: no client yet.
        RemoteCommand::Keys { command } => return keys(remote, command).await,
        RemoteCommand::Api(command) => command,
    };
    let client = match Client::new(remote).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    match command {
        ApiCommand::Runs { command } => runs(&client, command).await,
        ApiCommand::Download { run, out } => download(&client, &run, out).await,
        ApiCommand::Deliveries { run } => deliveries(&client, &run).await,
        ApiCommand::Reprocess {
            dataset,
            date,
            wait,
        } => reprocess(&client, &dataset, &date, wait).await,
        ApiCommand::Intake { command } => intake(&client, command).await,
        ApiCommand::Dlq { command } => dlq(&client, command).await,
        ApiCommand::Reports { command } => reports(&client, command).await,
        ApiCommand::Health => health(&client).await,
        ApiCommand::Metrics { since } => metrics(&client, since.as_deref()).await,
        ApiCommand::Audit => audit(&client).await,
        ApiCommand::Relay { command } => relay(&client, command).await,
    }
}
