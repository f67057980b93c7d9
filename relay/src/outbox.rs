//! The outbox: report mail with `transport = "relay"`, fetched from the control API (signed),
//! sent through the relay's [`Sender`] — its SMTP server, as it is (the MIME the mailer built),
//! or Outlook on Windows (`crate::outlook::OutlookSender`) — and acknowledged with what the
//! sender said, which marks the delivery `relayed`.
//!
//! The journal notes each mail the server took before the acknowledgement, so a crash or an
//! unreachable API between the two sends nothing twice: the next pass only acknowledges. (A
//! crash between the server's `250` and the journal's write is the one window where a mail
//! can go twice, as in the mailer's own window with SES.) A mail the sender refuses for good
//! (an SMTP 5xx, an address Outlook cannot resolve) is reported with the sender's answer,
//! which takes it off the outbox and marks its delivery `refused`. One the server cannot take
//! now (an SMTP 4xx for that mail: mailbox full, greylisted) is reported deferred with the
//! answer and the pass goes on to the next mail; the API offers it again after a backoff, and
//! `charlie relay list` shows it. When the sender itself is unreachable (no connection, TLS,
//! a timeout, Outlook busy) the pass stops: no mail could go.

use anyhow::Context;
use async_trait::async_trait;
use lettre::address::Envelope;
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncTransport, Tokio1Executor};
use tracing::{info, warn};

use crate::config::{OutboxConfig, SmtpTls};
use crate::journal::Journal;
use crate::keyring::Keyring;
use crate::upstream::{UpError, Upstream};

/// Where the relay's outbox mail goes out.
#[async_trait]
pub trait Sender: Send + Sync {
    fn describe(&self) -> String;
    /// Whether it can send now (for `charlie-relay check`): what it found.
    async fn check(&self) -> anyhow::Result<String>;
    /// Sends one queued mail (`mime`, from `from` to the envelope `to`): what the sender said.
    /// Permanent: this mail will never go as it is; transient: the next pass tries again.
    async fn send(&self, from: &str, to: &[String], mime: &[u8]) -> Result<String, UpError>;
}

pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    describe: String,
}

impl Smtp {
    pub fn new(c: &OutboxConfig, keyring: &dyn Keyring) -> anyhow::Result<Smtp> {
        let host = c
            .smtp_host
            .as_deref()
            .context("[outbox] smtp_host is required")?;
        let loopback = matches!(host, "127.0.0.1" | "localhost" | "::1");
        let tls = match c.smtp_tls {
            SmtpTls::None if !loopback => anyhow::bail!(
                "smtp_tls = \"none\": report mail and any password would cross the network in the clear; allowed to a loopback address only"
            ),
            SmtpTls::None => Tls::None,
            mode => {
                let mut params = TlsParameters::builder(host.to_owned());
                if let Some(file) = &c.ca_file {
                    let pem = std::fs::read(file)
                        .with_context(|| format!("reading the CA file {}", file.display()))?;
                    params =
                        params.add_root_certificate(Certificate::from_pem(&pem).with_context(
                            || format!("{} is not a PEM certificate", file.display()),
                        )?);
                }
                let params = params.build_rustls().context("the SMTP TLS settings")?;
                if mode == SmtpTls::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let default_port = match c.smtp_tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        };
        let port = c.smtp_port.unwrap_or(default_port);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(std::time::Duration::from_secs(60)));
        if let Some(user) = &c.smtp_user {
            let password = c.password().read(keyring)?;
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Smtp {
            transport: builder.build(),
            describe: format!("smtp {host}:{port} ({:?})", c.smtp_tls),
        })
    }
}

#[async_trait]
impl Sender for Smtp {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    /// Whether the server answers and takes the login.
    async fn check(&self) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.transport.test_connection().await?,
            "{}: the SMTP server did not answer NOOP",
            self.describe
        );
        Ok(format!("{} answers", self.describe))
    }

    async fn send(&self, from: &str, to: &[String], mime: &[u8]) -> Result<String, UpError> {
        let parse = |a: &str| {
            a.parse::<Address>()
                .map_err(|e| UpError::Permanent(format!("{a:?} is not an address: {e}")))
        };
        let envelope = Envelope::new(
            Some(parse(from)?),
            to.iter().map(|a| parse(a)).collect::<Result<_, _>>()?,
        )
        .map_err(|e| UpError::Permanent(format!("the envelope: {e}")))?;
        match self.transport.send_raw(&envelope, mime).await {
            Ok(resp) => Ok(format!(
                "{} {}",
                resp.code(),
                resp.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) if e.is_permanent() => Err(UpError::Permanent(format!(
                "the SMTP server refused it: {e}"
            ))),
            // A 4xx reply: this mail, not now (the server answered, so others may go).
            Err(e) if e.is_transient() => Err(UpError::Deferred(format!(
                "the SMTP server deferred it: {e}"
            ))),
            Err(e) => Err(UpError::Transient(format!("sending through SMTP: {e}"))),
        }
    }
}

/// What one outbox pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxSummary {
    pub sent: usize,
    /// Sent before, acknowledged now.
    pub acknowledged_late: usize,
    /// Refused for good by the sender, and reported so.
    pub refused: usize,
    /// Deferred by the sender (4xx for that mail), reported so, left for a later pass.
    pub deferred: usize,
}

/// Sends what the API has queued for this relay.
pub async fn pass(
    upstream: &dyn Upstream,
    journal: &Journal,
    sender: &dyn Sender,
) -> Result<OutboxSummary, UpError> {
    let mut summary = OutboxSummary::default();
    for mail in upstream.outbox().await? {
        let id = mail.message_id.as_str();
        let reply = match journal
            .sent(id)
            .map_err(|e| UpError::Transient(format!("{e:#}")))?
        {
            Some(reply) => {
                summary.acknowledged_late += 1;
                reply
            }
            None => {
                let mime = upstream.download(&mail).await?;
                match sender.send(&mail.from, &mail.recipients, &mime).await {
                    Ok(reply) => {
                        journal
                            .note_sent(id, &reply)
                            .map_err(|e| UpError::Transient(format!("{e:#}")))?;
                        info!(
                            message_id = id,
                            recipients = mail.recipients.len(),
                            reply,
                            "outbox mail sent"
                        );
                        summary.sent += 1;
                        reply
                    }
                    Err(UpError::Permanent(why)) => {
                        warn!(
                            message_id = id,
                            error = why,
                            "outbox mail refused by its sender: reported, not sent"
                        );
                        upstream.refuse(id, &why).await?;
                        summary.refused += 1;
                        continue;
                    }
                    Err(UpError::Deferred(why)) => {
                        warn!(
                            message_id = id,
                            answer = why,
                            "outbox mail deferred by its sender: reported, the next one goes"
                        );
                        upstream.defer(id, &why).await?;
                        summary.deferred += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        upstream.ack(id, &reply).await?;
    }
    Ok(summary)
}
