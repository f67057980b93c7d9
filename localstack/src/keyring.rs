//! A throwaway Secret Service (the freedesktop keyring API the relay's `*_keyring` settings use
//! on Linux): a private D-Bus session bus and GNOME Keyring's daemon on it, unlocked, its
//! keyrings in its own folder (Debian's `dbus-daemon`, `gnome-keyring` and `libsecret-tools`).
//! The bus activates nothing, so no other keyring daemon is started for a client that comes
//! early. Stopped and removed when dropped, and stopped as well when this process dies without
//! dropping it (its wrapper waits on a pipe from us).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::postgres::{spawn_wrapped, stop_wrapped};
use crate::project;

pub struct SecretService {
    child: Child,
    dir: PathBuf,
    _lifeline: Option<std::process::ChildStdin>,
}

/// The variable a Secret Service client finds its bus by.
pub const BUS_VARIABLE: &str = "DBUS_SESSION_BUS_ADDRESS";

impl SecretService {
    pub fn start() -> anyhow::Result<SecretService> {
        for (program, package) in [
            ("dbus-daemon", "dbus-daemon"),
            ("gnome-keyring-daemon", "gnome-keyring"),
            ("secret-tool", "libsecret-tools"),
        ] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .map_or(true, |o| !o.status.success())
            {
                bail!("no {program}: install Debian's {package} package (scripts/test does)");
            }
        }
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = project::target_dir().join(format!(
            "charlie/keyring-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let d = dir.display();
        std::fs::write(
            dir.join("bus.conf"),
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>session</type><listen>unix:path={d}/bus</listen>\
                 <auth>EXTERNAL</auth><policy context=\"default\">\
                 <allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/>\
                 <allow own=\"*\"/></policy></busconfig>\n"
            ),
        )?;
        // The daemon's keyring password is a throwaway: it only guards this folder's files.
        let script = format!(
            "dbus-daemon --config-file='{d}/bus.conf' --nofork --nopidfile > '{d}/bus.log' 2>&1 & bus=$!\n\
             n=0; while [ ! -S '{d}/bus' ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done\n\
             printf 'throwaway' | HOME='{d}' XDG_DATA_HOME='{d}/data' XDG_RUNTIME_DIR='{d}' \
             {BUS_VARIABLE}='unix:path={d}/bus' gnome-keyring-daemon --unlock --components=secrets \
             --foreground > '{d}/keyring.log' 2>&1 & keyring=$!\n\
             read _; kill $keyring $bus; wait"
        );
        let (child, lifeline) = spawn_wrapped(
            Command::new("sh").args(["-c", &script]),
            "the throwaway Secret Service",
        )?;
        let service = SecretService {
            child,
            dir,
            _lifeline: lifeline,
        };
        // Up when a lookup of nothing is answered "not found" (exit 1, silent) rather than
        // "no such name on the bus".
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(20) {
            let out = service
                .command("secret-tool")
                .args(["lookup", "service", "charlie-test", "account", "probe"])
                .output()?;
            if out.status.code() == Some(1) && out.stderr.is_empty() {
                return Ok(service);
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the Secret Service did not come up: {last}\n{}",
            service.log()
        )
    }

    /// The bus's address, for [`BUS_VARIABLE`].
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.join("bus").display())
    }

    /// `program`, a client of this Secret Service.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env(BUS_VARIABLE, self.bus_address());
        c
    }

    /// The bus's and the daemon's logs (for a failing test's message).
    pub fn log(&self) -> String {
        ["bus.log", "keyring.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        stop_wrapped(&mut self.child, self._lifeline.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two at once keep to their own keyrings, and nothing is left running.
    #[test]
    fn a_throwaway_secret_service_stores_and_forgets() {
        let a = SecretService::start().unwrap();
        let b = SecretService::start().unwrap();
        let store = a
            .command("sh")
            .args([
                "-c",
                "printf v1 | secret-tool store --label t service charlie-test account one",
            ])
            .status()
            .unwrap();
        assert!(store.success(), "{}", a.log());
        let look = |s: &SecretService| {
            s.command("secret-tool")
                .args(["lookup", "service", "charlie-test", "account", "one"])
                .output()
                .unwrap()
        };
        assert_eq!(look(&a).stdout, b"v1");
        assert_eq!(look(&b).status.code(), Some(1), "b has its own keyring");
        let dir = a.dir.clone();
        drop(a);
        assert!(!dir.exists());
    }
}
