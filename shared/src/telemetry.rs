//! Logging set-up for the functions: JSON lines (CloudWatch-friendly), level from `RUST_LOG`.

use crate::env::Env;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls (tests, the local runner) are no-ops.
pub fn init(env: &Env) {
    let filter = EnvFilter::try_new(env.get("RUST_LOG").unwrap_or("info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .without_time() // Lambda stamps every line itself
        .try_init();
}

/// This process's peak resident memory in MiB (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
