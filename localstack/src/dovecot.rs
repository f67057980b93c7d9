//! A throwaway Dovecot IMAP server from the machine's packages (Debian's `dovecot-imapd`): IMAP
//! over implicit TLS (a certificate from a throwaway CA made with `openssl`, the CA's PEM given
//! to clients) on a free loopback port and with STARTTLS (required before a login) on another, one user with a password, maildirs in its own folder;
//! stopped and removed when dropped, and stopped as well when this process dies without
//! dropping it (its wrapper waits on a pipe from us). Mail is put in with `doveadm save`, as a
//! delivery would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::postgres::{free_port, is_root, spawn_wrapped, stop_wrapped};
use crate::project;

pub struct Dovecot {
    child: Child,
    dir: PathBuf,
    port: u16,
    starttls_port: u16,
    _lifeline: Option<std::process::ChildStdin>,
}

pub const USER: &str = "relay";

fn binary(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

impl Dovecot {
    pub fn start() -> anyhow::Result<Dovecot> {
        let dovecot = binary("dovecot").context(
            "no dovecot binary: install Debian's dovecot-imapd package (scripts/test does)",
        )?;
        let dir = project::target_dir().join(format!("charlie/dovecot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["home", "run", "state"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // A throwaway CA (what clients trust) and the server's certificate signed by it.
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .context("running openssl for the server's certificate")?;
            if !out.status.success() {
                bail!(
                    "openssl {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=charlie test CA",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ])?;
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ])?;
        std::fs::write(
            dir.join("passwd"),
            format!("{USER}:{{PLAIN}}{}::::::\n", Self::password()),
        )?;
        // As root: the mail processes run as Debian's dovecot user; else as ourselves.
        let (mail_user, login_user) = if is_root() {
            let status = Command::new("chown")
                .args(["-R", "dovecot:dovecot"])
                .arg(dir.join("home"))
                .status()?;
            if !status.success() {
                bail!("could not give the maildirs to the dovecot user");
            }
            ("dovecot".to_owned(), "dovenull".to_owned())
        } else {
            let me = std::env::var("USER").unwrap_or_else(|_| "nobody".into());
            (me.clone(), me)
        };
        let d = dir.display();
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let starttls_port = free_port()?;
            std::fs::write(
                dir.join("dovecot.conf"),
                format!(
                    "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
                     protocols = imap\nlisten = 127.0.0.1\nssl = required\n\
                     ssl_cert = <{d}/cert.pem\nssl_key = <{d}/key.pem\nauth_mechanisms = plain\n\
                     passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {d}/passwd\n}}\n\
                     userdb {{\n  driver = static\n  args = uid={mail_user} gid={mail_user} home={d}/home/%u\n}}\n\
                     first_valid_uid = 1\nmail_location = maildir:~/Maildir\n\
                     default_internal_user = {mail_user}\ndefault_login_user = {login_user}\n\
                     service imap-login {{\n  chroot =\n  inet_listener imap {{\n    port = {starttls_port}\n  }}\n  inet_listener imaps {{\n    port = {port}\n    ssl = yes\n  }}\n}}\n\
                     service anvil {{\n  chroot =\n}}\n"
                ),
            )?;
            let script = format!(
                "'{}' -F -c '{d}/dovecot.conf' > '{d}/server.log' 2>&1 & pid=$!; read _; kill -TERM $pid; wait $pid",
                dovecot.display()
            );
            let (mut child, lifeline) =
                spawn_wrapped(Command::new("sh").args(["-c", &script]), "dovecot")?;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Dovecot {
                        child,
                        dir,
                        port,
                        starttls_port,
                        _lifeline: lifeline,
                    });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default();
        }
        bail!("dovecot did not start: {}", last.trim())
    }

    /// The throwaway user's password (a test value, not a secret of any deployment).
    pub fn password() -> &'static str {
        "throwaway-imap-password-1"
    }

    /// The implicit-TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port that takes STARTTLS (and no login before it).
    pub fn starttls_port(&self) -> u16 {
        self.starttls_port
    }

    /// The throwaway CA's certificate (PEM): what a client trusts.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn doveadm(&self, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<()> {
        let doveadm = binary("doveadm").context("no doveadm binary (Debian's dovecot-core)")?;
        let mut child = Command::new(doveadm)
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running doveadm")?;
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(bytes)?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "doveadm {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Creates a folder of the user's.
    pub fn create_folder(&self, folder: &str) -> anyhow::Result<()> {
        self.doveadm(&["mailbox", "create", "-u", USER, folder], None)
    }

    /// Deletes a folder and its mail (made again, it has a new UIDVALIDITY).
    pub fn delete_folder(&self, folder: &str) -> anyhow::Result<()> {
        self.doveadm(&["mailbox", "delete", "-u", USER, "-r", folder], None)
    }

    /// Delivers a raw mail into `folder`.
    pub fn deliver(&self, folder: &str, mail: &[u8]) -> anyhow::Result<()> {
        self.doveadm(&["save", "-u", USER, "-m", folder], Some(mail))
    }

    /// The server's log (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        stop_wrapped(&mut self.child, self._lifeline.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
