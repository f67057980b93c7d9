//! The AWS emulator: moto's server (through `localstack/moto_server.py`) on a free port, stopped
//! when dropped; or, with `CHARLIE_EMULATOR=localstack`, a LocalStack already running at
//! `CHARLIE_LOCALSTACK_ENDPOINT` (default `http://localhost:4566`: `docker compose -f
//! localstack/docker-compose.yml up`), which is used as it is and left running.
//!
//! What only moto has: seeded ids, the request recorder (`charlie-local up`'s replay) and a
//! reset; with LocalStack `up` always applies, and a reset is a restart. Both keep the mail SES
//! accepted (moto's `/moto-api/data.json`, LocalStack's `/_aws/ses`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::project;

pub const REGION: &str = "eu-west-2";

/// Which emulator `CHARLIE_EMULATOR` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulatorKind {
    Moto,
    LocalStack,
}

impl EmulatorKind {
    /// `CHARLIE_EMULATOR`: `moto` (the default) or `localstack`.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("CHARLIE_EMULATOR").as_deref() {
            Err(_) | Ok("") | Ok("moto") => Ok(EmulatorKind::Moto),
            Ok("localstack") => Ok(EmulatorKind::LocalStack),
            Ok(other) => bail!("CHARLIE_EMULATOR={other:?}: expected moto or localstack"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EmulatorKind::Moto => "moto",
            EmulatorKind::LocalStack => "LocalStack",
        }
    }
}

pub struct Emulator {
    /// The moto server this process started; none for a LocalStack it found running.
    child: Option<Child>,
    kind: EmulatorKind,
    endpoint: String,
    // The emulator stops when this pipe closes, even if this process dies without dropping it.
    _lifeline: Option<std::process::ChildStdin>,
}

impl Emulator {
    /// Starts the emulator with the project's Python and waits until it answers; with
    /// `CHARLIE_EMULATOR=localstack`, checks the running LocalStack instead.
    pub fn start() -> anyhow::Result<Self> {
        if EmulatorKind::from_env()? == EmulatorKind::LocalStack {
            return Self::localstack();
        }
        Self::start_with(
            &project::python(),
            &project::root().join("localstack/moto_server.py"),
        )
    }

    /// The LocalStack at `CHARLIE_LOCALSTACK_ENDPOINT`, once its health check answers (30 s).
    pub fn localstack() -> anyhow::Result<Self> {
        let endpoint = std::env::var("CHARLIE_LOCALSTACK_ENDPOINT")
            .unwrap_or_else(|_| "http://localhost:4566".into())
            .trim_end_matches('/')
            .to_owned();
        let health = format!("{endpoint}/_localstack/health");
        match http_get_within(&endpoint, "/_localstack/health", Duration::from_secs(30)) {
            Ok(body) if body.contains("\"services\"") => Ok(Emulator {
                child: None,
                kind: EmulatorKind::LocalStack,
                endpoint,
                _lifeline: None,
            }),
            Ok(body) => bail!("{health} answered, but not as LocalStack does: {body:.200}"),
            Err(e) => bail!(
                "no LocalStack at {endpoint} ({e}): start it (docker compose -f localstack/docker-compose.yml up -d) or set CHARLIE_LOCALSTACK_ENDPOINT"
            ),
        }
    }

    pub fn kind(&self) -> EmulatorKind {
        self.kind
    }

    pub fn start_with(python: &Path, script: &Path) -> anyhow::Result<Self> {
        Self::start_with_options(python, script, 0, None)
    }

    /// Starts the emulator on `port` (0: a free one), recording the requests it is asked to
    /// record (`start_recording`) to `recording` (moto's recorder), so that a later emulator on
    /// the same port can replay them.
    pub fn start_recordable(port: u16, recording: &Path) -> anyhow::Result<Self> {
        if EmulatorKind::from_env()? == EmulatorKind::LocalStack {
            bail!(
                "LocalStack has no request recorder: `charlie-local up` applies every time with it"
            );
        }
        Self::start_with_options(
            &project::python(),
            &project::root().join("localstack/moto_server.py"),
            port,
            Some(recording),
        )
    }

    fn start_with_options(
        python: &Path,
        script: &Path,
        port: u16,
        recording: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if !python.exists() {
            bail!(
                "{} does not exist: run scripts/demo or scripts/test once (they create the project's virtualenv), or set CHARLIE_PYTHON",
                python.display()
            );
        }
        let mut command = Command::new(python);
        if let Some(file) = recording {
            // Recorded requests are replayed one after the other: handled one at a time here
            // too, the seeded ids come out the same.
            command
                .env("MOTO_RECORDER_FILEPATH", file)
                .env("CHARLIE_SERIAL_REQUESTS", "1");
        }
        let mut child = command
            .arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--exit-with-parent")
            .stdin(Stdio::piped())
            // Lambda functions exist, but moto must never try to run them (no Docker here).
            .env("MOTO_DOCKER_NETWORK_MODE", "none")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let lifeline = child.stdin.take();
        let stdout = child.stdout.take().context("emulator stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                bail!("the emulator did not report READY within 60 s");
            }
        };
        let Some(endpoint) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            let status = child.wait().ok();
            bail!(
                "the emulator did not start (first line {line:?}, exit {status:?}); is moto[server] installed for that Python?"
            );
        };
        Ok(Emulator {
            child: Some(child),
            kind: EmulatorKind::Moto,
            endpoint: endpoint.to_owned(),
            _lifeline: lifeline,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The port the emulator listens on.
    pub fn port(&self) -> u16 {
        project::port_of(&self.endpoint)
    }

    /// POSTs to one of moto's own routes (`/moto-api/…`).
    async fn moto_api(&self, path: &str) -> anyhow::Result<()> {
        if self.kind != EmulatorKind::Moto {
            bail!("{path} is moto's; LocalStack has no such route (restart it to reset it)");
        }
        let url = format!("{}{path}", self.endpoint);
        reqwest::Client::new()
            .post(&url)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("POST {url}"))?;
        Ok(())
    }

    /// Seeds moto's random ids: the same requests in the same order then make the same ids.
    pub async fn seed(&self) -> anyhow::Result<()> {
        self.moto_api("/moto-api/seed?a=20261201").await
    }

    /// Records every request from now on (to the file the emulator was started with), afresh.
    pub async fn start_recording(&self) -> anyhow::Result<()> {
        self.moto_api("/moto-api/recorder/reset-recording").await?;
        self.moto_api("/moto-api/recorder/start-recording").await
    }

    pub async fn stop_recording(&self) -> anyhow::Result<()> {
        self.moto_api("/moto-api/recorder/stop-recording").await
    }

    /// Replays the recording, in order, against this emulator.
    pub async fn replay(&self) -> anyhow::Result<()> {
        self.moto_api("/moto-api/recorder/replay-recording").await
    }

    /// Forgets everything the emulator holds.
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.moto_api("/moto-api/reset").await
    }

    /// The environment entries that point an AWS SDK at this emulator.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ]
    }

    /// An AWS SDK configuration for this emulator.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let env: charlie::env::Env = self.aws_env().into_iter().collect();
        charlie::adapters::aws::sdk_config(&env).await
    }

    /// The raw mail SES accepted, oldest first (both emulators keep it in memory).
    pub async fn sent_raw_mail(&self) -> anyhow::Result<Vec<SentMail>> {
        if self.kind == EmulatorKind::LocalStack {
            return self.localstack_sent_mail().await;
        }
        let url = format!("{}/moto-api/data.json?service=ses", self.endpoint);
        let dump: serde_json::Value = reqwest::get(&url).await?.error_for_status()?.json().await?;
        let raw = dump["ses"]["RawMessage"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        raw.into_iter()
            .map(|m| {
                Ok(SentMail {
                    id: m["id"].as_str().unwrap_or_default().to_owned(),
                    source: m["source"].as_str().unwrap_or_default().to_owned(),
                    destinations: serde_json::from_value(m["destinations"].clone())
                        .unwrap_or_default(),
                    raw: m["raw_data"]
                        .as_str()
                        .context("a sent mail without raw_data")?
                        .to_owned(),
                })
            })
            .collect()
    }
}

/// A plain HTTP/1.0 GET of `path` on `endpoint` (`http://host:port`), retried until it answers
/// or `within` passes: the body. Blocking and dependency-free, since the emulator starts before
/// any runtime does.
fn http_get_within(endpoint: &str, path: &str, within: Duration) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let authority = endpoint
        .strip_prefix("http://")
        .context("CHARLIE_LOCALSTACK_ENDPOINT must be http://host:port")?
        .trim_end_matches('/');
    let started = std::time::Instant::now();
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(authority)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or(text))
        })();
        match attempt {
            Ok(body) => return Ok(body),
            Err(e) if started.elapsed() >= within => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

impl Emulator {
    /// LocalStack's `GET /_aws/ses`: `{"messages": [{Id, Source, RawData, …}]}`. A raw mail
    /// there carries no envelope, so its destinations are read from its To and Cc headers
    /// (its Bcc recipients cannot be seen).
    async fn localstack_sent_mail(&self) -> anyhow::Result<Vec<SentMail>> {
        let url = format!("{}/_aws/ses", self.endpoint);
        let dump: serde_json::Value = reqwest::get(&url).await?.error_for_status()?.json().await?;
        let messages = dump["messages"].as_array().cloned().unwrap_or_default();
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let raw = m["RawData"].as_str()?.to_owned();
                let destinations = mail_parser::MessageParser::default()
                    .parse(raw.as_bytes())
                    .map(|parsed| {
                        [parsed.to(), parsed.cc()]
                            .into_iter()
                            .flatten()
                            .flat_map(|a| a.iter())
                            .filter_map(|a| a.address().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(SentMail {
                    id: m["Id"].as_str().unwrap_or_default().to_owned(),
                    source: m["Source"].as_str().unwrap_or_default().to_owned(),
                    destinations,
                    raw,
                })
            })
            .collect())
    }
}

#[derive(Debug, Clone)]
pub struct SentMail {
    pub id: String,
    pub source: String,
    pub destinations: Vec<String>,
    pub raw: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // A LocalStack found running is left running.
        let Some(child) = self.child.as_mut() else {
            return;
        };
        // SIGTERM lets moto shut its server down; kill if it does not go.
        let pid = child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
