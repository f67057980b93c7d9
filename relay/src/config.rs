//! `relay.toml`: where the control API is, the relay's key, the journal, and the source.
//!
//! ```toml
//! api = "https://charlie.example.com"   # the control API's base URL
//! key_env = "CHARLIE_RELAY_KEY"         # where the key is (default); or key_file = "…"
//! journal = "/var/lib/charlie-relay/journal.redb"
//! poll_seconds = 30                     # how often the source is looked at
//!
//! [source]
//! kind = "folder"                       # a drop folder of .eml files
//! path = "/srv/mail-drop"
//! ```
//!
//! The key itself is never in the file: it comes from the OS keyring (`key_keyring`), the file
//! `key_file` (readable by the relay's account only) or the environment variable `key_env`
//! ([`crate::keyring`]); so do the IMAP and SMTP passwords.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::keyring::{Keyring, SecretRef};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The control API's base URL (`https://…`; `http://` only for a loopback address).
    pub api: String,
    /// The environment variable holding the relay's key (`chr_{relay}_{secret}`).
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// A file holding the key instead (its first line).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Or an entry of the OS keyring (`charlie-relay keyring set NAME`).
    #[serde(default)]
    pub key_keyring: Option<String>,
    /// The journal's file.
    pub journal: PathBuf,
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
    /// At most this many uploads a second (0: no limit), to spare a slow uplink.
    #[serde(default)]
    pub max_uploads_per_second: u32,
    pub source: SourceConfig,
    /// Report mail with `transport = "relay"`, sent through this SMTP server (absent: the relay
    /// sends none).
    #[serde(default)]
    pub outbox: Option<OutboxConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// How report mail goes out: `smtp` (the default), or `outlook` (Windows: from the running
    /// Outlook profile's account named by the report's `send_as`; no `smtp_*` then).
    #[serde(default)]
    pub via: Via,
    /// The SMTP server (required with `via = "smtp"`).
    #[serde(default)]
    pub smtp_host: Option<String>,
    /// 587 with STARTTLS (the default), 465 with TLS, 25 without.
    #[serde(default)]
    pub smtp_port: Option<u16>,
    #[serde(default = "default_smtp_tls")]
    pub smtp_tls: SmtpTls,
    /// Trust this CA (PEM) besides the usual ones.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Log in as this user (no login when absent).
    #[serde(default)]
    pub smtp_user: Option<String>,
    #[serde(default = "default_smtp_password_env")]
    pub smtp_password_env: String,
    #[serde(default)]
    pub smtp_password_file: Option<PathBuf>,
    #[serde(default)]
    pub smtp_password_keyring: Option<String>,
}

impl OutboxConfig {
    /// Where the SMTP password is.
    pub fn password(&self) -> SecretRef<'_> {
        SecretRef {
            what: "the SMTP password",
            field: "smtp_password",
            file: self.smtp_password_file.as_deref(),
            keyring: self.smtp_password_keyring.as_deref(),
            env: &self.smtp_password_env,
            hint: "the SMTP account's password",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    #[default]
    Smtp,
    Outlook,
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS, required (port 587).
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
    /// None: to a loopback address only.
    None,
}

fn default_smtp_tls() -> SmtpTls {
    SmtpTls::Starttls
}

fn default_smtp_password_env() -> String {
    "CHARLIE_RELAY_SMTP_PASSWORD".into()
}

fn default_key_env() -> String {
    "CHARLIE_RELAY_KEY".into()
}

fn default_poll() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// A folder of `.eml` files: each is processed once, then moved to `done/` or `failed/`
    /// (with a `.reason.txt` beside it).
    Folder {
        path: PathBuf,
        /// A file is taken once unchanged for this long (a writer still at it is left alone).
        #[serde(default = "default_settle")]
        settle_seconds: u64,
    },
    /// One folder of an IMAP server, read-only, by UID.
    Imap {
        host: String,
        /// 993 with TLS, 143 with STARTTLS or none.
        #[serde(default)]
        port: Option<u16>,
        /// `"tls"` (implicit TLS, the default), `"starttls"`, or `"none"` (loopback only).
        #[serde(default = "default_imap_tls")]
        tls: crate::imap::ImapTls,
        /// Trust this CA (PEM) instead of the system's trust store.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        user: String,
        /// The environment variable holding the password (default
        /// `CHARLIE_RELAY_IMAP_PASSWORD`), or `password_file`, or `password_keyring`.
        #[serde(default = "default_password_env")]
        password_env: String,
        #[serde(default)]
        password_file: Option<PathBuf>,
        #[serde(default)]
        password_keyring: Option<String>,
        #[serde(default = "default_inbox")]
        folder: String,
    },
    /// One folder of the running Outlook profile (Windows only), read-only: `Inbox`,
    /// `Inbox/Exports`, or a full path `\\store\\Inbox\\Exports` (see
    /// [`charlie_outlook::FolderPath`]).
    Outlook {
        folder: String,
        /// How far before the newest settled mail each pass looks again (mail moved in late,
        /// or synced late, carries its older received time).
        #[serde(default = "default_lookback_hours")]
        lookback_hours: u32,
    },
}

fn default_lookback_hours() -> u32 {
    24
}

fn default_settle() -> u64 {
    2
}

fn default_imap_tls() -> crate::imap::ImapTls {
    crate::imap::ImapTls::Tls
}

fn default_inbox() -> String {
    "INBOX".into()
}

fn default_password_env() -> String {
    "CHARLIE_RELAY_IMAP_PASSWORD".into()
}

impl Config {
    pub fn load(file: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the config {}", file.display()))?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not valid", file.display()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        let url = reqwest::Url::parse(&self.api)
            .with_context(|| format!("api = {:?} is not a URL", self.api))?;
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => bail!(
                "api = {:?}: the control API is reached over https (http only on a loopback address)",
                self.api
            ),
        }
        if let SourceConfig::Outlook {
            folder,
            lookback_hours,
        } = &self.source
        {
            charlie_outlook::FolderPath::parse(folder)
                .map_err(|e| anyhow::anyhow!("[source] folder: {e}"))?;
            if !(1..=24 * 31).contains(lookback_hours) {
                bail!("[source] lookback_hours = {lookback_hours} is not from 1 to 744 (31 days)");
            }
        }
        if let Some(outbox) = &self.outbox {
            match outbox.via {
                Via::Smtp if outbox.smtp_host.is_none() => {
                    bail!("[outbox] smtp_host is required (or via = \"outlook\" on Windows)")
                }
                Via::Outlook
                    if outbox.smtp_host.is_some()
                        || outbox.smtp_user.is_some()
                        || outbox.smtp_port.is_some()
                        || outbox.ca_file.is_some()
                        || outbox.smtp_password_file.is_some()
                        || outbox.smtp_password_keyring.is_some() =>
                {
                    bail!(
                        "[outbox] via = \"outlook\" sends from the Outlook profile's account: smtp_host, smtp_port, smtp_user, ca_file, smtp_password_file and smtp_password_keyring are for via = \"smtp\""
                    )
                }
                _ => {}
            }
        }
        self.key().check()?;
        if let Some(password) = self.source.password() {
            password.check()?;
        }
        if let Some(outbox) = &self.outbox {
            outbox.password().check()?;
        }
        if !(1..=86_400).contains(&self.poll_seconds) {
            bail!(
                "poll_seconds = {} is not from 1 to 86400",
                self.poll_seconds
            );
        }
        Ok(())
    }

    /// Where the relay's key is: `key_file`, `key_keyring`, or the environment variable
    /// `key_env`.
    pub fn key(&self) -> SecretRef<'_> {
        SecretRef {
            what: "the relay key",
            field: "key",
            file: self.key_file.as_deref(),
            keyring: self.key_keyring.as_deref(),
            env: &self.key_env,
            hint: "made by `charlie relay create`",
        }
    }
}

impl SourceConfig {
    /// Where the source's password is, when it has one.
    pub fn password(&self) -> Option<SecretRef<'_>> {
        match self {
            SourceConfig::Imap {
                password_env,
                password_file,
                password_keyring,
                ..
            } => Some(SecretRef {
                what: "the IMAP password",
                field: "password",
                file: password_file.as_deref(),
                keyring: password_keyring.as_deref(),
                env: password_env,
                hint: "the mailbox's password",
            }),
            _ => None,
        }
    }

    /// The IMAP source's settings (the password read now).
    pub fn imap(&self, keyring: &dyn Keyring) -> anyhow::Result<Option<crate::imap::ImapSettings>> {
        let SourceConfig::Imap {
            host,
            port,
            tls,
            ca_file,
            user,
            folder,
            ..
        } = self
        else {
            return Ok(None);
        };
        let password = self.password().expect("an IMAP source has a password");
        Ok(Some(crate::imap::ImapSettings {
            host: host.clone(),
            port: port.unwrap_or(tls.default_port()),
            tls: *tls,
            ca_file: ca_file.clone(),
            user: user.clone(),
            password: password.read(keyring)?,
            folder: folder.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        let c: Config = toml::from_str(text)?;
        c.check()?;
        Ok(c)
    }

    #[test]
    fn a_folder_config_reads_and_a_bad_one_says_what_is_wrong() {
        let c = parse(
            "api = \"https://charlie.example.com\"\njournal = \"j.redb\"\n[source]\nkind = \"folder\"\npath = \"/srv/drop\"\n",
        )
        .unwrap();
        assert_eq!(c.poll_seconds, 30);
        assert_eq!(c.key_env, "CHARLIE_RELAY_KEY");
        assert!(matches!(c.source, SourceConfig::Folder { .. }));
        let e = parse("api = \"http://charlie.example.com\"\njournal = \"j\"\n[source]\nkind = \"folder\"\npath = \"d\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        assert!(
            parse("api = \"http://127.0.0.1:9\"\njournal = \"j\"\n[source]\nkind = \"folder\"\npath = \"d\"\n")
                .is_ok()
        );
        let e = parse("api = \"https://x\"\njournal = \"j\"\n[source]\nkind = \"pigeon\"\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("pigeon"), "{e:#}");
        let e = parse("api = \"https://x\"\njournal = \"j\"\nkey = \"chr_a_b\"\n[source]\nkind = \"folder\"\npath = \"d\"\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
    }

    #[test]
    fn an_outbox_goes_through_smtp_or_outlook_and_says_what_does_not_fit() {
        let head = "api = \"https://x\"\njournal = \"j\"\n[source]\nkind = \"folder\"\npath = \"d\"\n[outbox]\n";
        let c = parse(&format!("{head}smtp_host = \"smtp.branch.example\"\n")).unwrap();
        assert_eq!(c.outbox.unwrap().via, Via::Smtp);
        let c = parse(&format!("{head}via = \"outlook\"\n")).unwrap();
        assert_eq!(c.outbox.unwrap().via, Via::Outlook);
        let e = parse(head).unwrap_err();
        assert!(format!("{e:#}").contains("smtp_host is required"), "{e:#}");
        let e = parse(&format!("{head}via = \"outlook\"\nsmtp_host = \"s\"\n")).unwrap_err();
        assert!(format!("{e:#}").contains("are for via = \"smtp\""), "{e:#}");
        let e = parse(&format!("{head}via = \"pigeon\"\n")).unwrap_err();
        assert!(format!("{e:#}").contains("pigeon"), "{e:#}");
    }

    #[test]
    fn each_secret_is_named_once_a_file_or_a_keyring_entry() {
        let head = "api = \"https://x\"\njournal = \"j\"\n";
        let imap = "[source]\nkind = \"imap\"\nhost = \"h\"\nuser = \"u\"\n";
        let c = parse(&format!(
            "{head}key_keyring = \"branch-7\"\n{imap}password_keyring = \"branch-7-imap\"\n"
        ))
        .unwrap();
        assert_eq!(c.key().keyring, Some("branch-7"));
        // The IMAP source's TLS: implicit by default; STARTTLS on 143; true and false as before.
        let with = |tls: &str| {
            let c = parse(&format!(
                "{head}key_keyring = \"k\"\n[source]\nkind = \"imap\"\nhost = \"h\"\nuser = \"u\"\n{tls}"
            ))?;
            Ok::<_, anyhow::Error>(c)
        };
        for (said, tls, port) in [
            ("", crate::imap::ImapTls::Tls, 993),
            ("tls = \"starttls\"\n", crate::imap::ImapTls::Starttls, 143),
            ("tls = true\n", crate::imap::ImapTls::Tls, 993),
            ("tls = false\n", crate::imap::ImapTls::None, 143),
            (
                "tls = \"starttls\"\nport = 1143\n",
                crate::imap::ImapTls::Starttls,
                1143,
            ),
        ] {
            let c = with(said).unwrap();
            let Config {
                source:
                    SourceConfig::Imap {
                        tls: t, port: p, ..
                    },
                ..
            } = &c
            else {
                panic!("imap");
            };
            assert_eq!((*t, p.unwrap_or(t.default_port())), (tls, port), "{said}");
        }
        let e = with("tls = \"ssl\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("say \"tls\""), "{e:#}");

        assert_eq!(c.source.password().unwrap().keyring, Some("branch-7-imap"));
        let e = parse(&format!(
            "{head}key_keyring = \"k\"\nkey_file = \"/k\"\n{imap}"
        ))
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("key_file and key_keyring"),
            "{e:#}"
        );
        let e = parse(&format!("{head}{imap}password_keyring = \"a b\"\n")).unwrap_err();
        assert!(format!("{e:#}").contains("password_keyring"), "{e:#}");
        let folder = "[source]\nkind = \"folder\"\npath = \"d\"\n";
        let e = parse(&format!(
            "{head}{folder}[outbox]\nsmtp_host = \"s\"\nsmtp_password_file = \"/p\"\nsmtp_password_keyring = \"p\"\n"
        ))
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("smtp_password_file and smtp_password_keyring"),
            "{e:#}"
        );
        let e = parse(&format!(
            "{head}{folder}[outbox]\nvia = \"outlook\"\nsmtp_password_keyring = \"p\"\n"
        ))
        .unwrap_err();
        let said = format!("{e:#}");
        assert!(
            said.contains("smtp_password_keyring are for via = \"smtp\""),
            "{said}"
        );
    }

    #[test]
    fn an_outlook_config_names_its_folder_by_the_rule() {
        let head = "api = \"https://x\"\njournal = \"j\"\n[source]\nkind = \"outlook\"\n";
        let c = parse(&format!("{head}folder = 'Inbox/Exports'\n")).unwrap();
        assert!(matches!(
            c.source,
            SourceConfig::Outlook {
                lookback_hours: 24,
                ..
            }
        ));
        assert!(parse(&format!("{head}folder = '\\\\ops@branch.example\\Inbox'\n")).is_ok());
        let e = parse(&format!("{head}folder = 'Exports'\n")).unwrap_err();
        assert!(format!("{e:#}").contains("must start with Inbox"), "{e:#}");
        let e = parse(&format!("{head}folder = 'Inbox'\nlookback_hours = 0\n")).unwrap_err();
        assert!(format!("{e:#}").contains("lookback_hours"), "{e:#}");
    }
}
