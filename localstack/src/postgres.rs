//! A throwaway PostgreSQL server from the machine's packages (Debian's `postgresql`), on a free
//! port in its own data folder, stopped and removed when dropped, and stopped as well when
//! this process dies without dropping it (the server's wrapper waits on a pipe from us).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::project;

pub struct PostgresServer {
    child: Child,
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    root: bool,
    // The server stops when this pipe closes.
    _lifeline: Option<std::process::ChildStdin>,
}

/// The folder holding `initdb`, `postgres` and `createdb`: `CHARLIE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else whatever `PATH` has.
fn bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("CHARLIE_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// Whether this process runs as root (the servers' wrappers then run them as their own users).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when we are root (the server refuses to run as
/// root).
fn command(bin: &Path, program: &str, root: bool) -> Command {
    let path = bin.join(program);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PostgresServer {
    pub fn start() -> anyhow::Result<Self> {
        let bin = bin_dir().context(
            "no PostgreSQL server binaries (initdb): install Debian's postgresql package (scripts/test and scripts/demo do), or set CHARLIE_PG_BIN",
        )?;
        let root = is_root();
        remove_stale_dirs();
        let dir = project::target_dir().join(format!(
            "charlie/pg-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("data");
        if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("could not give {} to the postgres user", dir.display());
            }
        }
        let out = command(&bin, "initdb", root)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "charlie", "--no-sync", "-E", "UTF8"])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // A port may be taken between our probe and the server's bind: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let script = format!(
                "'{}' -D '{}' -p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off > '{}/server.log' 2>&1 & pid=$!; read _; kill -INT $pid; wait $pid",
                bin.join("postgres").display(),
                data.display(),
                dir.display(),
                dir.display(),
            );
            let mut sh = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--", "sh", "-c", &script]);
                c
            } else {
                let mut c = Command::new("sh");
                c.args(["-c", &script]);
                c
            };
            let (mut child, lifeline) = spawn_wrapped(&mut sh, "postgres")?;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let server = PostgresServer {
                        child,
                        dir,
                        port,
                        bin,
                        root,
                        _lifeline: lifeline,
                    };
                    server.create_database("charlie")?;
                    return Ok(server);
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        }
        bail!("postgres did not start: {}", last.trim())
    }

    /// A new, empty database on this server (tests give each their own).
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let mut out = command(&self.bin, "createdb", self.root);
        out.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "charlie",
            name,
        ]);
        // The server may accept connections a moment before it accepts logins.
        for _ in 0..40 {
            let o = out.output().context("running createdb")?;
            if o.status.success() {
                return Ok(());
            }
            let mut err = String::from_utf8_lossy(&o.stderr).into_owned();
            if !err.contains("starting up") {
                let _ = (&o.stdout[..]).read_to_string(&mut err);
                bail!("createdb failed: {}", err.trim());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("postgres kept starting up")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection string the functions get (`CHARLIE_POSTGRES_URL`): no password, the
    /// throwaway server trusts local connections.
    pub fn url(&self) -> String {
        self.url_of("charlie")
    }

    /// The connection string of one of this server's databases.
    pub fn url_of(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=charlie dbname={database} sslmode=disable",
            self.port
        )
    }
}

/// Data folders left by test binaries that exited without dropping their server (its
/// wrapper stopped it): `pg-{pid}-{n}` whose process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(project::target_dir().join("charlie")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("pg-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Starts a wrapper (a shell script that runs a server in the background, then `read`s its
/// stdin and stops the server when that ends): the wrapper, and the pipe whose closing stops
/// it — by [`stop_wrapped`], or by the system when this process dies without dropping it.
pub(crate) fn spawn_wrapped(
    wrapper: &mut Command,
    what: &str,
) -> anyhow::Result<(Child, Option<std::process::ChildStdin>)> {
    let mut child = wrapper
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let lifeline = child.stdin.take();
    Ok((child, lifeline))
}

/// Stops a server started behind a wrapper that waits on our pipe: closing the pipe makes the
/// wrapper stop it; after 10 s it is killed.
pub(crate) fn stop_wrapped(child: &mut Child, lifeline: Option<std::process::ChildStdin>) {
    drop(lifeline);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Fast shutdown (the wrapper sends SIGINT).
        stop_wrapped(&mut self.child, self._lifeline.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
