//! Helpers for the adapter and end-to-end tests: one emulator per test binary (stopped when the
//! binary exits), unique resource names per test, tables shaped like the Terraform ones.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use charlie::adapters::postgres::{PostgresRowStore, PostgresSettings};
use charlie_local::clients::AwsClients;
use charlie_local::emulator::Emulator;
use charlie_local::postgres::PostgresServer;

static EMULATOR: OnceLock<Emulator> = OnceLock::new();
static POSTGRES: OnceLock<PostgresServer> = OnceLock::new();

/// The test binary's PostgreSQL server, started on first use.
pub fn postgres() -> &'static PostgresServer {
    POSTGRES.get_or_init(|| PostgresServer::start().expect("starting PostgreSQL"))
}

/// A row store on a database of its own (migrations applied).
pub async fn postgres_rows() -> PostgresRowStore {
    let server = postgres();
    let db = unique("t").replace('-', "_");
    server.create_database(&db).unwrap();
    PostgresRowStore::connect(PostgresSettings {
        url: server.url_of(&db),
        password: None,
    })
    .await
    .unwrap()
}
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The test binary's emulator, started on first use.
pub fn emulator() -> &'static Emulator {
    EMULATOR.get_or_init(|| Emulator::start().expect("starting the emulator"))
}

/// Clients for the shared emulator (build them inside each test's runtime).
pub async fn clients() -> AwsClients {
    let config = emulator().sdk_config().await;
    AwsClients::from_config(&config, true)
}

/// A name no other test in this run uses.
pub fn unique(base: &str) -> String {
    format!(
        "{base}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A pk/sk table like the module's `rows` and `state` tables.
pub async fn create_table(clients: &AwsClients, name: &str) -> anyhow::Result<()> {
    clients.create_pk_sk_table(name).await
}

/// Named end-to-end scenarios sharing one deployment: each runs on its own (a failed
/// assertion fails that scenario, the next ones still run), in order, and the run ends with
/// libtest's summary line.
pub mod scenarios {
    use std::panic::AssertUnwindSafe;
    use std::sync::Mutex;
    use std::time::Instant;

    use futures::FutureExt;
    use futures::future::BoxFuture;

    pub struct Scenario<C> {
        pub name: &'static str,
        pub run: for<'a> fn(&'a C) -> BoxFuture<'a, ()>,
    }

    /// `Scenario`s from async functions `fn(&C)`, named after them.
    #[macro_export]
    macro_rules! scenarios {
        ($ctx:ty; $($name:ident),* $(,)?) => {
            vec![$(
                $crate::scenarios::Scenario::<$ctx> {
                    name: stringify!($name),
                    run: {
                        fn run<'a>(cx: &'a $ctx) -> futures::future::BoxFuture<'a, ()> {
                            Box::pin($name(cx))
                        }
                        run
                    },
                }
            ),*]
        };
    }

    /// The command line as `cargo test` passes it: `--list` lists, other words filter by
    /// name (a scenario runs when its name contains any of them), flags are ignored.
    pub struct Args {
        pub list: bool,
        pub filters: Vec<String>,
    }

    impl Args {
        pub fn from_env() -> Self {
            let mut list = false;
            let mut filters = Vec::new();
            for a in std::env::args().skip(1) {
                match a.as_str() {
                    "--list" => list = true,
                    f if f.starts_with('-') => {}
                    f => filters.push(f.to_owned()),
                }
            }
            Args { list, filters }
        }

        pub fn selects(&self, name: &str) -> bool {
            self.filters.is_empty() || self.filters.iter().any(|f| name.contains(f.as_str()))
        }
    }

    /// Where the last panic happened and what it said: the scenario's failure, printed once
    /// under its name instead of a backtrace per scenario.
    static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

    /// Runs the selected scenarios in order; true when none failed.
    pub async fn run<C>(cx: &C, all: &[Scenario<C>], args: &Args) -> bool {
        let started = Instant::now();
        std::panic::set_hook(Box::new(|info| {
            let place = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let what = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| {
                    info.payload()
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                })
                .unwrap_or_default();
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("at {place}: {what}"));
        }));
        let chosen: Vec<&Scenario<C>> = all.iter().filter(|s| args.selects(s.name)).collect();
        println!("\nrunning {} scenarios", chosen.len());
        let mut failed = Vec::new();
        for s in &chosen {
            let t = Instant::now();
            let outcome = AssertUnwindSafe((s.run)(cx)).catch_unwind().await;
            let secs = t.elapsed().as_secs_f64();
            match outcome {
                Ok(()) => println!("test {} ... ok ({secs:.1} s)", s.name),
                Err(_) => {
                    let why = LAST_PANIC
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                        .unwrap_or_default();
                    println!("test {} ... FAILED ({secs:.1} s)\n    {why}", s.name);
                    failed.push(s.name);
                }
            }
        }
        println!();
        if !failed.is_empty() {
            println!("failures:");
            for f in &failed {
                println!("    {f}");
            }
            println!();
        }
        let _ = std::panic::take_hook();
        println!(
            "test result: {}. {} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s",
            if failed.is_empty() { "ok" } else { "FAILED" },
            chosen.len() - failed.len(),
            failed.len(),
            all.len() - chosen.len(),
            started.elapsed().as_secs_f64()
        );
        failed.is_empty()
    }
}
