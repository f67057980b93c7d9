//! Helpers for the adapter and end-to-end tests: one emulator per test binary (stopped when the
//! binary exits), unique resource names per test, tables shaped like the Terraform ones.

#[path = "scenarios.rs"]
pub mod e2e;

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
