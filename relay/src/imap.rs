//! The IMAP source: one folder of any IMAP server (on-prem Exchange, Dovecot, …), read-only
//! (`EXAMINE`, `BODY.PEEK[]`: nothing in the mailbox changes), by UID.
//!
//! - The cursor (the highest UID below which everything is settled) is kept in the journal with
//!   the folder's `UIDVALIDITY`; a new `UIDVALIDITY` (the folder was rebuilt, UIDs mean other
//!   mails now) starts the folder over from UID 1: the journal knows every mail sent by its
//!   SHA-256 and Message-ID, so nothing goes twice.
//! - A mail that failed cannot be moved aside in a read-only folder: it is noted in the
//!   journal with its reason (and logged), and the cursor passes it.
//! - Between passes the relay waits with `IDLE` where the server offers it (new mail is taken
//!   at once), else polls.
//! - TLS (implicit, port 993) by default, or STARTTLS (port 143: TLS before the login, never
//!   a fall back to plaintext when the server does not offer it), verified against the
//!   system's trust store or the CA file configured; plaintext only to a loopback address.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, bail};
use async_imap::Session;
use async_imap::extensions::idle::IdleResponse;
use async_trait::async_trait;
use charlie::secret::Secret;
use futures::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::{debug, info, warn};

use crate::journal::Journal;
use crate::source::{Outcome, Source};

/// How an IMAP connection is secured: `tls = "tls"` (or `true`, the default), `"starttls"`,
/// `"none"` (or `false`: to a loopback address only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapTls {
    /// Implicit TLS (port 993).
    Tls,
    /// STARTTLS, required (port 143).
    Starttls,
    /// None (port 143), to a loopback address only.
    None,
}

impl ImapTls {
    pub fn default_port(self) -> u16 {
        match self {
            ImapTls::Tls => 993,
            ImapTls::Starttls | ImapTls::None => 143,
        }
    }
}

impl<'de> serde::Deserialize<'de> for ImapTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Said {
            Flag(bool),
            Word(String),
        }
        match Said::deserialize(d)? {
            Said::Flag(true) => Ok(ImapTls::Tls),
            Said::Flag(false) => Ok(ImapTls::None),
            Said::Word(w) => match w.as_str() {
                "tls" => Ok(ImapTls::Tls),
                "starttls" => Ok(ImapTls::Starttls),
                "none" => Ok(ImapTls::None),
                _ => Err(serde::de::Error::custom(format!(
                    "tls = {w:?}: say \"tls\" (port 993), \"starttls\" (port 143) or \"none\" (loopback only)"
                ))),
            },
        }
    }
}

/// Where and how to read.
#[derive(Debug, Clone)]
pub struct ImapSettings {
    pub host: String,
    pub port: u16,
    pub tls: ImapTls,
    /// Trust this CA (PEM) instead of the system's store.
    pub ca_file: Option<PathBuf>,
    pub user: String,
    pub password: Secret,
    pub folder: String,
}

/// A connection, with TLS or (to loopback only) without.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls::{
        self, RootCertStore, pki_types::CertificateDer, pki_types::pem::PemObject,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    Ok(match ca_file {
        Some(file) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(file)
                .with_context(|| format!("reading the CA file {}", file.display()))?
            {
                roots.add(
                    cert.with_context(|| format!("{} holds no PEM certificate", file.display()))?,
                )?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder.with_platform_verifier()?.with_no_client_auth()
        }
    })
}

/// Connects and logs in.
pub async fn connect(s: &ImapSettings) -> anyhow::Result<Session<Conn>> {
    let loopback = matches!(s.host.as_str(), "127.0.0.1" | "localhost" | "::1");
    if s.tls == ImapTls::None && !loopback {
        bail!(
            "tls = \"none\": the password would cross the network in the clear; plaintext IMAP is allowed to a loopback address only (use \"tls\" or \"starttls\")"
        );
    }
    let tcp = tokio::time::timeout(
        Duration::from_secs(15),
        TcpStream::connect((s.host.as_str(), s.port)),
    )
    .await
    .with_context(|| format!("connecting to {}:{} timed out", s.host, s.port))?
    .with_context(|| format!("connecting to {}:{}", s.host, s.port))?;
    let wrap = |tcp: TcpStream| async {
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(tls_config(s.ca_file.as_deref())?));
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(s.host.clone())
            .with_context(|| format!("{:?} is not a host name", s.host))?;
        anyhow::Ok(Conn::Tls(Box::new(
            connector
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS with {}:{}", s.host, s.port))?,
        )))
    };
    let client = match s.tls {
        ImapTls::Tls => greeted(async_imap::Client::new(wrap(tcp).await?)).await?,
        ImapTls::None => greeted(async_imap::Client::new(Conn::Plain(tcp))).await?,
        ImapTls::Starttls => {
            let mut plain = greeted(async_imap::Client::new(tcp)).await?;
            // Refused (not offered): an error, never a fall back to plaintext.
            plain
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .with_context(|| {
                    format!(
                        "tls = \"starttls\": {}:{} refused STARTTLS; nothing was sent in the clear (is it the implicit-TLS port? then tls = \"tls\")",
                        s.host, s.port
                    )
                })?;
            // Anything the server sent before the handshake is dropped with the plain client;
            // there is no second greeting.
            async_imap::Client::new(wrap(plain.into_inner()).await?)
        }
    };
    client
        .login(&s.user, s.password.expose())
        .await
        // Never the password; the server's own words only.
        .map_err(|(e, _)| anyhow::anyhow!("logging in as {}: {e}", s.user))
}

/// How long a server may take to greet.
const GREETING_WAIT: Duration = Duration::from_secs(15);

/// A client that has read the server's greeting.
async fn greeted<T>(mut client: async_imap::Client<T>) -> anyhow::Result<async_imap::Client<T>>
where
    T: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    // A server that takes the connection and says nothing (a TLS port spoken to in plain
    // words waits for a handshake) must not hold the relay.
    tokio::time::timeout(GREETING_WAIT, client.read_response())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no greeting from the server within {} s (an implicit-TLS port given tls = \"starttls\" or \"none\"?)",
                GREETING_WAIT.as_secs()
            )
        })?
        .context("reading the server's greeting")?
        .context("the server closed the connection before its greeting")?;
    Ok(client)
}

pub struct ImapSource {
    settings: ImapSettings,
    journal: Arc<Journal>,
    session: Option<Session<Conn>>,
    /// The folder's UIDVALIDITY as last examined.
    validity: u32,
    /// This pass's UIDs not settled yet, and the highest UID it offered.
    outstanding: BTreeSet<u32>,
    offered_to: u32,
}

fn origin(folder: &str, validity: u32, uid: u32) -> String {
    format!("{folder};UIDVALIDITY={validity};UID={uid}")
}

fn uid_of(origin: &str) -> anyhow::Result<u32> {
    origin
        .rsplit_once(";UID=")
        .and_then(|(_, u)| u.parse().ok())
        .with_context(|| format!("{origin:?} is not an IMAP origin"))
}

impl ImapSource {
    pub fn new(settings: ImapSettings, journal: Arc<Journal>) -> ImapSource {
        ImapSource {
            settings,
            journal,
            session: None,
            validity: 0,
            outstanding: BTreeSet::new(),
            offered_to: 0,
        }
    }

    fn cursor_name(&self) -> String {
        format!(
            "imap:{}@{}:{}/{}",
            self.settings.user, self.settings.host, self.settings.port, self.settings.folder
        )
    }

    async fn session(&mut self) -> anyhow::Result<&mut Session<Conn>> {
        if self.session.is_none() {
            let mut session = connect(&self.settings).await?;
            session
                .examine(&self.settings.folder)
                .await
                .with_context(|| format!("opening the folder {:?}", self.settings.folder))?;
            self.session = Some(session);
        }
        Ok(self.session.as_mut().expect("just connected"))
    }

    /// Runs `f` on the session; any error drops the connection (the next call reconnects).
    async fn fetch_one(
        &mut self,
        uid: u32,
        what: &str,
    ) -> anyhow::Result<async_imap::types::Fetch> {
        let result = async {
            let session = self.session().await?;
            let mut found: Vec<async_imap::types::Fetch> = session
                .uid_fetch(uid.to_string(), what)
                .await?
                .try_collect()
                .await?;
            found
                .pop()
                .with_context(|| format!("UID {uid} is gone from the folder"))
        }
        .await;
        if result.is_err() {
            self.session = None;
        }
        result
    }
}

#[async_trait]
impl Source for ImapSource {
    fn describe(&self) -> String {
        format!(
            "imap{} {}@{}:{} folder {}",
            match self.settings.tls {
                ImapTls::Tls => "s",
                ImapTls::Starttls => " (STARTTLS)",
                ImapTls::None => "",
            },
            self.settings.user,
            self.settings.host,
            self.settings.port,
            self.settings.folder
        )
    }

    async fn check(&self) -> anyhow::Result<String> {
        let mut session = connect(&self.settings).await?;
        let mailbox = session
            .examine(&self.settings.folder)
            .await
            .with_context(|| format!("opening the folder {:?}", self.settings.folder))?;
        let idle = session.capabilities().await?.has_str("IDLE");
        session.logout().await.ok();
        Ok(format!(
            "{}: {} mail(s), UIDVALIDITY {}, {}",
            self.describe(),
            mailbox.exists,
            mailbox.uid_validity.unwrap_or(0),
            if idle {
                "IDLE offered"
            } else {
                "no IDLE: polling"
            }
        ))
    }

    async fn pending(&mut self, limit: usize) -> anyhow::Result<Vec<String>> {
        // Examined afresh each pass: the folder's UIDVALIDITY now, and what arrived.
        let folder = self.settings.folder.clone();
        let examined = async {
            let session = self.session().await?;
            let mailbox = session.examine(&folder).await?;
            anyhow::Ok(mailbox.uid_validity.unwrap_or(0))
        }
        .await;
        let validity = match examined {
            Ok(v) => v,
            Err(e) => {
                self.session = None;
                return Err(e);
            }
        };
        let name = self.cursor_name();
        let after = match self.journal.cursor(&name)? {
            Some(text) => match text.split_once(' ') {
                Some((v, uid)) if v == validity.to_string() => uid.parse::<u32>().unwrap_or(0),
                _ => {
                    warn!(
                        folder,
                        was = text,
                        now = validity,
                        "the folder's UIDVALIDITY changed: reading it from the start (the journal keeps what was sent from going twice)"
                    );
                    0
                }
            },
            None => 0,
        };
        self.validity = validity;
        let uids = async {
            let session = self.session().await?;
            anyhow::Ok(session.uid_search(format!("UID {}:*", after + 1)).await?)
        }
        .await;
        let uids = match uids {
            Ok(u) => u,
            Err(e) => {
                self.session = None;
                return Err(e);
            }
        };
        // `n:*` always holds the highest UID, even one below n.
        let mut uids: Vec<u32> = uids.into_iter().filter(|u| *u > after).collect();
        uids.sort_unstable();
        uids.truncate(limit);
        debug!(folder, after, found = uids.len(), "examined");
        self.outstanding = uids.iter().copied().collect();
        self.offered_to = uids.last().copied().unwrap_or(after);
        Ok(uids
            .into_iter()
            .map(|u| origin(&folder, validity, u))
            .collect())
    }

    async fn size(&mut self, origin: &str) -> anyhow::Result<u64> {
        let uid = uid_of(origin)?;
        let fetched = self.fetch_one(uid, "(UID RFC822.SIZE)").await?;
        Ok(u64::from(fetched.size.unwrap_or(0)))
    }

    async fn read(&mut self, origin: &str) -> anyhow::Result<Vec<u8>> {
        let uid = uid_of(origin)?;
        let fetched = self.fetch_one(uid, "(UID BODY.PEEK[])").await?;
        fetched
            .body()
            .map(<[u8]>::to_vec)
            .with_context(|| format!("the server gave no body for UID {uid}"))
    }

    async fn settle(&mut self, origin: &str, outcome: &Outcome) -> anyhow::Result<()> {
        let uid = uid_of(origin)?;
        if let Outcome::Failed { reason } = outcome {
            self.journal.note_failed(origin, reason)?;
        }
        self.outstanding.remove(&uid);
        // Everything below the lowest UID still outstanding is settled.
        let cursor = match self.outstanding.first() {
            Some(lowest) => lowest - 1,
            None => self.offered_to,
        };
        self.journal
            .set_cursor(&self.cursor_name(), &format!("{} {cursor}", self.validity))
    }

    async fn wait(
        &mut self,
        max: Duration,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> anyhow::Result<()> {
        let Some(mut session) = self.session.take() else {
            return crate::source::sleep(max, stop).await;
        };
        let idle = match session.capabilities().await {
            Ok(c) => c.has_str("IDLE"),
            Err(e) => {
                // The connection is gone; the next pass reconnects.
                warn!(error = %e, "the IMAP connection failed");
                return crate::source::sleep(max, stop).await;
            }
        };
        if !idle {
            self.session = Some(session);
            return crate::source::sleep(max, stop).await;
        }
        let mut handle = session.idle();
        if let Err(e) = handle.init().await {
            // Whatever failed, the next pass reconnects.
            warn!(error = %e, "starting IDLE failed; the next pass reconnects");
            return Ok(());
        }
        // At most 25 minutes: servers drop an IDLE after about 30.
        let answer = {
            let (done, interrupt) = handle.wait_with_timeout(max.min(Duration::from_secs(25 * 60)));
            tokio::pin!(done);
            let mut interrupt = Some(interrupt);
            loop {
                tokio::select! {
                    answer = &mut done => break answer,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        if stop() {
                            interrupt.take();
                        }
                    }
                }
            }
        };
        match answer {
            Ok(IdleResponse::NewData(_)) => info!(folder = self.settings.folder, "IDLE: new mail"),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "IDLE failed; the next pass reconnects");
                return Ok(());
            }
        }
        match handle.done().await {
            Ok(session) => self.session = Some(session),
            Err(e) => warn!(error = %e, "ending IDLE failed; the next pass reconnects"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_names_folder_validity_and_uid_and_gives_the_uid_back() {
        let o = origin("Exports/Dialer", 1796233054, 42);
        assert_eq!(o, "Exports/Dialer;UIDVALIDITY=1796233054;UID=42");
        assert_eq!(uid_of(&o).unwrap(), 42);
        assert!(uid_of("export-1.eml").is_err());
    }

    #[tokio::test]
    async fn plaintext_imap_is_refused_off_loopback_before_connecting() {
        let settings = ImapSettings {
            host: "mail.branch.example".into(),
            port: 143,
            tls: ImapTls::None,
            ca_file: None,
            user: "u".into(),
            password: Secret::new("p"),
            folder: "INBOX".into(),
        };
        let e = connect(&settings).await.err().unwrap().to_string();
        assert!(e.contains("loopback"), "{e}");
    }

    /// A loopback server that greets with `greeting` (or not at all) and answers each command
    /// `{tag} BAD unknown command`, noting what it was sent.
    async fn fake_server(greeting: Option<&'static str>) -> (u16, Arc<std::sync::Mutex<String>>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heard = Arc::new(std::sync::Mutex::new(String::new()));
        let noted = Arc::clone(&heard);
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let Some(greeting) = greeting else {
                // Silent, holding the connection.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            };
            write.write_all(greeting.as_bytes()).await.unwrap();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                noted.lock().unwrap().push_str(&line);
                let tag = line.split(' ').next().unwrap_or("*").to_owned();
                let _ = write
                    .write_all(format!("{tag} BAD unknown command\r\n").as_bytes())
                    .await;
            }
        });
        (port, heard)
    }

    fn local(port: u16, tls: ImapTls) -> ImapSettings {
        ImapSettings {
            host: "127.0.0.1".into(),
            port,
            tls,
            ca_file: None,
            user: "relay".into(),
            password: Secret::new("never-in-the-clear"),
            folder: "INBOX".into(),
        }
    }

    #[tokio::test]
    async fn a_server_that_refuses_starttls_gets_no_login_in_the_clear() {
        let (port, heard) = fake_server(Some("* OK IMAP4rev1 ready\r\n")).await;
        let e = connect(&local(port, ImapTls::Starttls))
            .await
            .err()
            .unwrap();
        let said = format!("{e:#}");
        assert!(said.contains("refused STARTTLS"), "{said}");
        let heard = heard.lock().unwrap().clone();
        assert!(heard.contains("STARTTLS"), "{heard}");
        assert!(
            !heard.contains("LOGIN") && !heard.contains("never-in-the-clear"),
            "{heard}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_greets_is_given_up_on() {
        let (port, _) = fake_server(None).await;
        let e = connect(&local(port, ImapTls::None)).await.err().unwrap();
        assert!(format!("{e:#}").contains("no greeting"), "{e:#}");
    }
}
