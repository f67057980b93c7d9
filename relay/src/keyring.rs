//! The secrets the relay needs — its key, the IMAP password, the SMTP password — each from one
//! place the config names: a file (its first line), the OS keyring, or an environment variable.
//!
//! The OS keyring is the user's own store, reached as the relay's account:
//! - **Windows**: Credential Manager, a generic credential `charlie-relay:{name}` (persisted
//!   for this user on this machine), through `CredReadW`/`CredWriteW` (module `credman`);
//! - **elsewhere**: the freedesktop Secret Service (GNOME Keyring, KWallet's bridge, KeePassXC),
//!   an item with the attributes `service = charlie-relay`, `account = {name}`, through
//!   libsecret's own command `secret-tool` (Debian's `libsecret-tools`), so the relay links no
//!   D-Bus library.
//!
//! `charlie-relay keyring set NAME` stores an entry (typed without echo, or from stdin), and a
//! config names it with `key_keyring`, `password_keyring` or `smtp_password_keyring`.

use std::path::Path;

use anyhow::{Context, bail};
use charlie::secret::Secret;

/// The keyring service the relay's entries are under.
pub const SERVICE: &str = "charlie-relay";

/// An OS keyring: entries by name.
pub trait Keyring {
    /// Which store, for messages.
    fn describe(&self) -> String;
    fn get(&self, name: &str) -> anyhow::Result<Option<Secret>>;
    fn set(&self, name: &str, secret: &Secret) -> anyhow::Result<()>;
    /// Whether there was one to delete.
    fn delete(&self, name: &str) -> anyhow::Result<bool>;
}

/// This system's keyring.
pub fn os() -> Box<dyn Keyring> {
    #[cfg(windows)]
    {
        Box::new(credman::CredentialManager)
    }
    #[cfg(not(windows))]
    {
        Box::new(SecretTool)
    }
}

/// An entry's name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "keyring entry {name:?} is not 1 to 64 of A-Z, a-z, 0-9, '.', '_', '@' and '-'"
        ))
    }
}

/// Where one secret comes from, as the config says.
#[derive(Debug, Clone, Copy)]
pub struct SecretRef<'a> {
    /// What it is, for messages ("the relay key").
    pub what: &'a str,
    /// The config's fields, for messages ("key").
    pub field: &'a str,
    pub file: Option<&'a Path>,
    pub keyring: Option<&'a str>,
    /// The environment variable, when neither a file nor a keyring entry is named.
    pub env: &'a str,
    /// Where the secret is had from ("made by `charlie relay create`").
    pub hint: &'a str,
}

impl SecretRef<'_> {
    /// A file or a keyring entry, not both; a keyring entry's name.
    pub fn check(&self) -> anyhow::Result<()> {
        let field = self.field;
        if self.file.is_some() && self.keyring.is_some() {
            bail!(
                "{field}_file and {field}_keyring both name {}: keep one",
                self.what
            );
        }
        if let Some(name) = self.keyring {
            check_name(name).map_err(|e| anyhow::anyhow!("{field}_keyring: {e}"))?;
        }
        Ok(())
    }

    /// Where it is read from, for `charlie-relay check`.
    pub fn describe(&self, keyring: &dyn Keyring) -> String {
        match (self.file, self.keyring) {
            (Some(file), _) => format!("file {}", file.display()),
            (None, Some(name)) => format!("keyring entry {name:?} in {}", keyring.describe()),
            (None, None) => format!("environment variable {}", self.env),
        }
    }

    /// The secret, or what is missing and how to give it.
    pub fn read(&self, keyring: &dyn Keyring) -> anyhow::Result<Secret> {
        let what = self.what;
        let text = match (self.file, self.keyring) {
            (Some(file), _) => std::fs::read_to_string(file)
                .with_context(|| format!("reading {what} from {}", file.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            (None, Some(name)) => keyring
                .get(name)
                .with_context(|| format!("reading {what} from {}", keyring.describe()))?
                .with_context(|| {
                    format!(
                        "{what} is not in the keyring: {} has no entry {name:?} for this account (store it with `charlie-relay keyring set {name}` as the account the relay runs as)",
                        keyring.describe()
                    )
                })?
                .expose()
                .trim()
                .to_owned(),
            (None, None) => std::env::var(self.env).map_err(|_| {
                anyhow::anyhow!(
                    "{what} is not given: set {} ({}), or name a file ({field}_file) or a keyring entry ({field}_keyring) in the config",
                    self.env,
                    self.hint,
                    field = self.field
                )
            })?,
        };
        if text.is_empty() {
            bail!("{what} is empty");
        }
        Ok(Secret::new(text))
    }
}

/// The Secret Service through `secret-tool`.
#[cfg(not(windows))]
pub struct SecretTool;

#[cfg(not(windows))]
impl SecretTool {
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<std::process::Output> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("secret-tool")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context(
                "running secret-tool, libsecret's command for the Secret Service (Debian and Ubuntu: the libsecret-tools package)",
            )?;
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().context("secret-tool's stdin")?;
            pipe.write_all(bytes).context("writing to secret-tool")?;
        }
        child.wait_with_output().context("waiting for secret-tool")
    }

    /// secret-tool's own words on a failure (never a secret: it prints those on stdout only).
    fn failed(&self, doing: &str, out: &std::process::Output) -> anyhow::Error {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.trim();
        anyhow::anyhow!(
            "secret-tool {doing} failed ({}): {}",
            out.status,
            if said.is_empty() {
                "it said nothing"
            } else {
                said
            }
        )
    }
}

#[cfg(not(windows))]
impl Keyring for SecretTool {
    fn describe(&self) -> String {
        format!("the Secret Service (service {SERVICE})")
    }

    fn get(&self, name: &str) -> anyhow::Result<Option<Secret>> {
        let out = self.run(&["lookup", "service", SERVICE, "account", name], None)?;
        match out.status.code() {
            Some(0) => {
                let text = String::from_utf8(out.stdout)
                    .map_err(|_| anyhow::anyhow!("keyring entry {name:?} is not UTF-8"))?;
                Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
            }
            // Not found: exit 1 and not a word (no Secret Service to ask is said on stderr).
            Some(1) if out.stderr.iter().all(u8::is_ascii_whitespace) => Ok(None),
            _ => Err(self.failed("lookup", &out)),
        }
    }

    fn set(&self, name: &str, secret: &Secret) -> anyhow::Result<()> {
        let label = format!("{SERVICE} {name}");
        let out = self.run(
            &[
                "store", "--label", &label, "service", SERVICE, "account", name,
            ],
            Some(secret.expose().as_bytes()),
        )?;
        if !out.status.success() {
            return Err(self.failed("store", &out));
        }
        Ok(())
    }

    fn delete(&self, name: &str) -> anyhow::Result<bool> {
        if self.get(name)?.is_none() {
            return Ok(false);
        }
        let out = self.run(&["clear", "service", SERVICE, "account", name], None)?;
        if !out.status.success() {
            return Err(self.failed("clear", &out));
        }
        Ok(true)
    }
}

/// Windows' Credential Manager. (Windows only: built for `x86_64-pc-windows-gnu` and run
/// under Wine here, never on a real Windows.)
#[cfg(windows)]
mod credman {
    use ::windows::Win32::Foundation::{ERROR_NOT_FOUND, FILETIME};
    use ::windows::Win32::Security::Credentials::{
        CRED_FLAGS, CRED_PERSIST_LOCAL_MACHINE, CRED_TYPE_GENERIC, CREDENTIALW, CredDeleteW,
        CredFree, CredReadW, CredWriteW,
    };
    use ::windows::core::{HSTRING, PWSTR};
    use charlie::secret::Secret;

    use super::{Keyring, SERVICE};

    pub struct CredentialManager;

    fn target(name: &str) -> HSTRING {
        HSTRING::from(format!("{SERVICE}:{name}"))
    }

    fn not_found(e: &::windows::core::Error) -> bool {
        e.code() == ERROR_NOT_FOUND.to_hresult()
    }

    impl Keyring for CredentialManager {
        fn describe(&self) -> String {
            format!("Windows Credential Manager (generic credentials {SERVICE}:…)")
        }

        fn get(&self, name: &str) -> anyhow::Result<Option<Secret>> {
            let mut found: *mut CREDENTIALW = std::ptr::null_mut();
            // SAFETY: CredReadW writes a pointer to a block it allocated, freed below with
            // CredFree once the blob is copied out.
            match unsafe { CredReadW(&target(name), CRED_TYPE_GENERIC, None, &mut found) } {
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => anyhow::bail!("CredReadW: {e}"),
                Ok(()) => {}
            }
            // SAFETY: on success `found` points at a CREDENTIALW whose blob has
            // CredentialBlobSize bytes.
            let bytes = unsafe {
                let c = &*found;
                let bytes = if c.CredentialBlob.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(c.CredentialBlob, c.CredentialBlobSize as usize)
                        .to_vec()
                };
                CredFree(found.cast());
                bytes
            };
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("credential {SERVICE}:{name} is not UTF-8"))?;
            Ok(Some(Secret::new(text)))
        }

        fn set(&self, name: &str, secret: &Secret) -> anyhow::Result<()> {
            let mut target: Vec<u16> = format!("{SERVICE}:{name}")
                .encode_utf16()
                .chain(Some(0))
                .collect();
            let mut user: Vec<u16> = name.encode_utf16().chain(Some(0)).collect();
            let mut blob = secret.expose().as_bytes().to_vec();
            let credential = CREDENTIALW {
                Flags: CRED_FLAGS(0),
                Type: CRED_TYPE_GENERIC,
                TargetName: PWSTR(target.as_mut_ptr()),
                Comment: PWSTR::null(),
                LastWritten: FILETIME::default(),
                CredentialBlobSize: u32::try_from(blob.len())?,
                CredentialBlob: blob.as_mut_ptr(),
                Persist: CRED_PERSIST_LOCAL_MACHINE,
                AttributeCount: 0,
                Attributes: std::ptr::null_mut(),
                TargetAlias: PWSTR::null(),
                UserName: PWSTR(user.as_mut_ptr()),
            };
            // SAFETY: every pointer in `credential` is to a live buffer of this frame.
            let written = unsafe { CredWriteW(&credential, 0) };
            blob.fill(0);
            written.map_err(|e| anyhow::anyhow!("CredWriteW: {e}"))
        }

        fn delete(&self, name: &str) -> anyhow::Result<bool> {
            // SAFETY: a plain call with a NUL-terminated name.
            match unsafe { CredDeleteW(&target(name), CRED_TYPE_GENERIC, None) } {
                Ok(()) => Ok(true),
                Err(e) if not_found(&e) => Ok(false),
                Err(e) => anyhow::bail!("CredDeleteW: {e}"),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// A keyring in memory.
    #[derive(Default)]
    pub struct MemoryKeyring(pub Mutex<BTreeMap<String, String>>);

    impl Keyring for MemoryKeyring {
        fn describe(&self) -> String {
            "the test keyring".into()
        }
        fn get(&self, name: &str) -> anyhow::Result<Option<Secret>> {
            Ok(self.0.lock().unwrap().get(name).map(Secret::new))
        }
        fn set(&self, name: &str, secret: &Secret) -> anyhow::Result<()> {
            self.0
                .lock()
                .unwrap()
                .insert(name.into(), secret.expose().into());
            Ok(())
        }
        fn delete(&self, name: &str) -> anyhow::Result<bool> {
            Ok(self.0.lock().unwrap().remove(name).is_some())
        }
    }

    fn r<'a>(file: Option<&'a Path>, keyring: Option<&'a str>) -> SecretRef<'a> {
        SecretRef {
            what: "the IMAP password",
            field: "password",
            file,
            keyring,
            env: "CHARLIE_RELAY_TEST_NEVER_SET",
            hint: "the mailbox's password",
        }
    }

    #[test]
    fn a_secret_comes_from_its_file_its_keyring_entry_or_says_how_to_give_it() {
        let keyring = MemoryKeyring::default();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-the-file\nsecond line\n").unwrap();
        assert_eq!(
            r(Some(&file), None).read(&keyring).unwrap().expose(),
            "from-the-file"
        );
        assert!(r(Some(&file), None).describe(&keyring).starts_with("file "));

        let e = r(None, Some("imap")).read(&keyring).unwrap_err();
        let said = format!("{e:#}");
        assert!(
            said.contains("no entry \"imap\"") && said.contains("charlie-relay keyring set imap"),
            "{said}"
        );
        keyring
            .set("imap", &Secret::new("from-the-keyring"))
            .unwrap();
        assert_eq!(
            r(None, Some("imap")).read(&keyring).unwrap().expose(),
            "from-the-keyring"
        );
        assert_eq!(
            r(None, Some("imap")).describe(&keyring),
            "keyring entry \"imap\" in the test keyring"
        );
        keyring.set("blank", &Secret::new(" \n")).unwrap();
        let e = r(None, Some("blank")).read(&keyring).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");

        let e = r(None, None).read(&keyring).unwrap_err();
        let said = e.to_string();
        assert!(
            said.contains("CHARLIE_RELAY_TEST_NEVER_SET")
                && said.contains("password_file")
                && said.contains("password_keyring"),
            "{said}"
        );
    }

    #[test]
    fn a_file_and_a_keyring_entry_at_once_or_a_bad_name_are_refused() {
        let file = Path::new("/etc/pw");
        let e = r(Some(file), Some("imap")).check().unwrap_err();
        assert!(
            e.to_string()
                .contains("password_file and password_keyring both name"),
            "{e}"
        );
        let e = r(None, Some("has space")).check().unwrap_err();
        assert!(e.to_string().contains("password_keyring"), "{e}");
        assert!(r(None, Some("branch-7.imap@x_y")).check().is_ok());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_name("").is_err());
    }
}
