//! A throwaway Wine prefix (Debian's `wine64`) to run the relay's Windows build: made with
//! `wineboot`, given the harness's `bcryptprimitives.dll` stand-in (Rust's standard library
//! needs `ProcessPrng`, which Wine 8 lacks; see `relay/outlook/wine/bcryptprimitives.c`),
//! and removed, its wineserver stopped, when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::project;

/// Debian's 64-bit Wine loader.
pub const WINE: &str = "/usr/lib/wine/wine64";
/// Its server (not on PATH in Debian's packaging).
pub const WINESERVER: &str = "/usr/lib/wine/wineserver";
pub const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";

/// The relay's Windows build, as `cargo build -p charlie-relay --target x86_64-pc-windows-gnu`
/// leaves it (`scripts/test` builds it).
pub fn relay_exe() -> anyhow::Result<PathBuf> {
    let exe = project::target_dir().join(format!("{WINDOWS_TARGET}/debug/charlie-relay.exe"));
    if !exe.exists() {
        bail!(
            "{} is not built: cargo build -p charlie-relay --target {WINDOWS_TARGET} (scripts/test does)",
            exe.display()
        );
    }
    Ok(exe)
}

pub struct Wine {
    prefix: PathBuf,
}

fn run(what: &str, c: &mut Command) -> anyhow::Result<()> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Wine {
    pub fn start() -> anyhow::Result<Wine> {
        if !Path::new(WINE).exists() {
            bail!("no {WINE}: install Debian's wine64 package (scripts/test does)");
        }
        let prefix = project::target_dir().join(format!("charlie/wine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&prefix);
        std::fs::create_dir_all(&prefix)?;
        let wine = Wine { prefix };
        run(
            "wineboot --init",
            wine.env(&mut Command::new(WINE))
                .args(["wineboot", "--init"]),
        )?;
        run(
            "wineserver -w",
            wine.env(&mut Command::new(WINESERVER)).arg("-w"),
        )?;
        let dll = wine
            .prefix
            .join("drive_c/windows/system32/bcryptprimitives.dll");
        run(
            "x86_64-w64-mingw32-gcc (install Debian's gcc-mingw-w64-x86-64-win32)",
            Command::new("x86_64-w64-mingw32-gcc")
                .args(["-O2", "-shared", "-o"])
                .arg(&dll)
                .arg(project::root().join("relay/outlook/wine/bcryptprimitives.c"))
                .arg("-ladvapi32"),
        )?;
        Ok(wine)
    }

    fn env<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        c.env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // No .NET or Gecko prompts at boot: nothing here needs them.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
    }

    /// `exe` to be run under this prefix (arguments and the rest added by the caller).
    pub fn command(&self, exe: &Path) -> Command {
        let mut c = Command::new(WINE);
        self.env(&mut c).arg(exe);
        c
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        // Best effort on the way out: a wineserver left behind exits by itself when idle.
        let _ = self.env(&mut Command::new(WINESERVER)).arg("-k").status();
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}
