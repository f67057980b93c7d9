//! `charlie-relay run --config relay.toml` (until stopped; `--once`: one pass, then exit) and
//! `charlie-relay check --config relay.toml` (the config, the API and the source, each said).
//! Logs are JSON lines on stderr (`CHARLIE_RELAY_LOG` sets the level, default `info`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use charlie_relay::config::{Config, OutboxConfig, SourceConfig, Via};
use charlie_relay::imap::ImapSource;
use charlie_relay::journal::Journal;
use charlie_relay::keyring::{self, Keyring};
use charlie_relay::outbox::{Sender, Smtp};
use charlie_relay::outlook::{OutlookSender, OutlookSource};
use charlie_relay::source::{DropFolder, Source};
use charlie_relay::upstream::{Api, Upstream};
use charlie_relay::{Relay, Summary};

#[derive(Parser)]
#[command(
    name = "charlie-relay",
    version,
    about = "Uploads mail only this machine can reach to Charlie's inbox"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload what the source has, then keep watching (SIGTERM or Ctrl-C stop it between mails)
    Run {
        #[arg(long, default_value = "relay.toml")]
        config: PathBuf,
        /// One pass over what is waiting, then exit (0 when nothing was left or refused)
        #[arg(long)]
        once: bool,
    },
    /// Check the config, the control API (a signed call) and the source; exit 1 if any fails
    Check {
        #[arg(long, default_value = "relay.toml")]
        config: PathBuf,
    },
    /// Keep a secret (the relay key, a password) in the OS keyring of the account running this
    /// (Windows Credential Manager, or the Secret Service), for `key_keyring`,
    /// `password_keyring` and `smtp_password_keyring`
    #[command(subcommand)]
    Keyring(KeyringCommand),
}

#[derive(Subcommand)]
enum KeyringCommand {
    /// Store NAME: typed without echo on a terminal, else the first line of stdin
    Set { name: String },
    /// Delete NAME
    Delete { name: String },
}

fn source(
    config: &Config,
    journal: &Arc<Journal>,
    keyring: &dyn Keyring,
) -> anyhow::Result<Box<dyn Source>> {
    if let Some(settings) = config.source.imap(keyring)? {
        return Ok(Box::new(ImapSource::new(settings, Arc::clone(journal))));
    }
    match &config.source {
        SourceConfig::Folder {
            path,
            settle_seconds,
        } => Ok(Box::new(DropFolder::new(
            path,
            Duration::from_secs(*settle_seconds),
        )?)),
        SourceConfig::Outlook {
            folder,
            lookback_hours,
        } => {
            let path = charlie_outlook::FolderPath::parse(folder)?;
            let opened = path.clone();
            Ok(Box::new(OutlookSource::new(
                path,
                *lookback_hours,
                Arc::clone(journal),
                move || charlie_outlook::open(&opened),
            )?))
        }
        SourceConfig::Imap { .. } => unreachable!("taken above"),
    }
}

/// The outbox's sender: the SMTP server, or Outlook.
fn sender(c: &OutboxConfig, keyring: &dyn Keyring) -> anyhow::Result<Box<dyn Sender>> {
    Ok(match c.via {
        Via::Smtp => Box::new(Smtp::new(c, keyring)?),
        Via::Outlook => Box::new(OutlookSender::new(charlie_outlook::open_outbox)?),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHARLIE_RELAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("charlie-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run { config, once } => run(&config, once).await,
            Command::Check { config } => check(&config).await,
            Command::Keyring(command) => keyring_command(command),
        }
    })
}

async fn check(file: &std::path::Path) -> ExitCode {
    let mut ok = true;
    let mut say = |what: &str, result: Result<String, String>| match &result {
        Ok(m) => println!("ok    {what}: {m}"),
        Err(m) => {
            ok = false;
            println!("FAIL  {what}: {m}");
        }
    };
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            say("config", Err(format!("{e:#}")));
            return ExitCode::FAILURE;
        }
    };
    say("config", Ok(file.display().to_string()));
    let keyring = keyring::os();
    let key = config.key();
    match key
        .read(keyring.as_ref())
        .and_then(|k| Api::new(&config.api, &k))
    {
        Err(e) => say("key", Err(format!("{e:#}"))),
        Ok(api) => {
            say(
                "key",
                Ok(format!(
                    "relay {} (from the {})",
                    api.relay(),
                    key.describe(keyring.as_ref())
                )),
            );
            match api.whoami().await {
                Ok(me) => {
                    let skew = chrono::DateTime::parse_from_rfc3339(&me.time)
                        .ok()
                        .map(|t| {
                            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()
                        });
                    say(
                        "control API",
                        Ok(format!(
                            "{} knows relay {} (mailbox {}); clock {} s from the API's",
                            config.api,
                            me.relay,
                            me.mailbox.as_deref().unwrap_or("none"),
                            skew.map_or("?".into(), |s| s.to_string())
                        )),
                    );
                }
                Err(e) => say("control API", Err(e.to_string())),
            }
        }
    }
    let journal = match Journal::open(&config.journal) {
        Ok(j) => {
            match j.counts() {
                Ok((uploading, uploaded)) => say(
                    "journal",
                    Ok(format!(
                        "{}: {uploaded} uploaded, {uploading} in flight",
                        config.journal.display()
                    )),
                ),
                Err(e) => say("journal", Err(format!("{e:#}"))),
            }
            Arc::new(j)
        }
        Err(e) => {
            say("journal", Err(format!("{e:#}")));
            return ExitCode::FAILURE;
        }
    };
    if let Some(outbox) = &config.outbox {
        match sender(outbox, keyring.as_ref()) {
            Ok(sender) => match sender.check().await {
                Ok(said) => say("outbox", Ok(said)),
                Err(e) => say("outbox", Err(format!("{}: {e:#}", sender.describe()))),
            },
            Err(e) => say("outbox", Err(format!("{e:#}"))),
        }
    }
    match source(&config, &journal, keyring.as_ref()) {
        Ok(s) => match s.check().await {
            Ok(m) => say("source", Ok(m)),
            Err(e) => say("source", Err(format!("{e:#}"))),
        },
        Err(e) => say("source", Err(format!("{e:#}"))),
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `charlie-relay keyring set|delete NAME`.
fn keyring_command(command: KeyringCommand) -> ExitCode {
    let keyring = keyring::os();
    let done = match &command {
        KeyringCommand::Set { name } => keyring::check_name(name)
            .map_err(anyhow::Error::msg)
            .and_then(|()| read_secret(name))
            .and_then(|secret| keyring.set(name, &secret))
            .map(|()| format!("stored {name:?} in {}", keyring.describe())),
        KeyringCommand::Delete { name } => keyring.delete(name).map(|had| {
            if had {
                format!("deleted {name:?} from {}", keyring.describe())
            } else {
                format!("{} had no {name:?}", keyring.describe())
            }
        }),
    };
    match done {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("charlie-relay keyring: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A secret typed without echo on a terminal, else the first line of stdin.
fn read_secret(name: &str) -> anyhow::Result<charlie::secret::Secret> {
    use std::io::{BufRead, IsTerminal};
    let text = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("{name}: "))?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line
    };
    let text = text.trim();
    anyhow::ensure!(
        !text.is_empty(),
        "nothing was given for {name:?}: not stored"
    );
    Ok(charlie::secret::Secret::new(text))
}

async fn run(file: &std::path::Path, once: bool) -> ExitCode {
    match run_inner(file, once).await {
        Ok(code) => code,
        Err(e) => {
            error!(error = %format!("{e:#}"), "charlie-relay stopped");
            ExitCode::from(2)
        }
    }
}

async fn run_inner(file: &std::path::Path, once: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(file)?;
    let keyring = keyring::os();
    let api = Api::new(&config.api, &config.key().read(keyring.as_ref())?)?;
    let journal = Arc::new(Journal::open(&config.journal)?);
    let mut source = source(&config, &journal, keyring.as_ref())?;
    let smtp = config
        .outbox
        .as_ref()
        .map(|o| sender(o, keyring.as_ref()))
        .transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("stopping after the mail in hand");
            stop.store(true, Ordering::SeqCst);
        });
    }
    info!(
        relay = api.relay(),
        source = source.describe(),
        journal = %config.journal.display(),
        "charlie-relay started"
    );
    let poll = Duration::from_secs(config.poll_seconds);
    // After a failure: 5 s, doubled each time, at most 15 minutes.
    let mut retry = Duration::from_secs(5);
    loop {
        let mut relay = Relay {
            relay: api.relay().to_owned(),
            source: source.as_mut(),
            upstream: &api,
            journal: &journal,
            max_per_second: config.max_uploads_per_second,
        };
        let stopping = || stop.load(Ordering::SeqCst);
        // The outbox first: a report waiting is worth more than the mail that feeds tomorrow's.
        let mut outbox_failed = false;
        if let Some(smtp) = &smtp {
            match charlie_relay::outbox::pass(&api, &journal, smtp.as_ref()).await {
                Ok(o) => {
                    if o != charlie_relay::outbox::OutboxSummary::default() {
                        info!(outbox = %serde_json::to_string(&o).unwrap_or_default(), "outbox pass done");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "the outbox pass stopped");
                    outbox_failed = true;
                }
            }
        }
        let failed = match relay.pass(&stopping).await {
            Ok(summary) => {
                if summary != Summary::default() {
                    info!(summary = %serde_json::to_string(&summary).unwrap_or_default(), "pass done");
                }
                if once {
                    return Ok(
                        if summary.left == 0 && summary.refused.is_none() && !outbox_failed {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::FAILURE
                        },
                    );
                }
                summary.refused.is_some() || summary.left > 0 || outbox_failed
            }
            // The source unreachable, the journal failing: said, and tried again.
            Err(e) if !once => {
                warn!(error = %format!("{e:#}"), "the pass failed");
                true
            }
            Err(e) => return Err(e),
        };
        if failed {
            warn!(retry_in_seconds = retry.as_secs(), "will retry");
            charlie_relay::source::sleep(retry.min(poll), &stopping).await?;
            retry = (retry * 2).min(Duration::from_secs(900));
        } else {
            retry = Duration::from_secs(5);
            // Until there may be new mail (IMAP IDLE), or the poll interval.
            if let Err(e) = source.wait(poll, &stopping).await {
                warn!(error = %format!("{e:#}"), "waiting on the source failed");
                charlie_relay::source::sleep(retry, &stopping).await?;
            }
        }
        if stopping() {
            info!("charlie-relay stopped");
            return Ok(ExitCode::SUCCESS);
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
