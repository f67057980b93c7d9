//! One invocation of a function: its request id (carried in every log line) and its deadline,
//! from Lambda's context. Stages derive claim expiries from the deadline and stop taking new
//! work before it.

use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub request_id: String,
    pub deadline: DateTime<Utc>,
}

impl Invocation {
    pub fn new(request_id: impl Into<String>, deadline: DateTime<Utc>) -> Self {
        Invocation {
            request_id: request_id.into(),
            deadline,
        }
    }

    /// An invocation with a fresh request id that may run for `timeout` from now (the local
    /// runner gives each the function's deployed timeout, as Lambda does).
    pub fn with_timeout(timeout: std::time::Duration) -> Self {
        let timeout = Duration::from_std(timeout).unwrap_or(Duration::MAX);
        Invocation::new(new_correlation_id(), Utc::now() + timeout)
    }

    /// Time left before the function is stopped.
    pub fn remaining(&self) -> Duration {
        (self.deadline - Utc::now()).max(Duration::zero())
    }
}

#[cfg(feature = "lambda")]
impl From<&lambda_runtime::Context> for Invocation {
    fn from(ctx: &lambda_runtime::Context) -> Self {
        let deadline = DateTime::from_timestamp_millis(ctx.deadline as i64)
            .unwrap_or_else(|| Utc::now() + Duration::minutes(1));
        Invocation::new(ctx.request_id.clone(), deadline)
    }
}

/// A fresh correlation id for work that starts here: a random (version 4) GUID, the form
/// Microsoft Graph takes as `client-request-id`, so Graph's own logs can be searched by it.
pub fn new_correlation_id() -> String {
    guid(rand::random::<u128>(), 4)
}

/// `bits` as a GUID of `version` (RFC 9562 layout, variant 10), lowercase.
fn guid(bits: u128, version: u8) -> String {
    let b = (bits & !(0xF000u128 << 64) & !(0xC000u128 << 48))
        | (u128::from(version & 0xF) << 76)
        | (0x8000u128 << 48);
    let h = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether `id` is a GUID in its 8-4-4-4-12 hex form.
fn is_guid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The `client-request-id` Graph gets for work under `correlation`: the id itself when it is
/// a GUID (every id Charlie makes), else a GUID derived from it (version 8, from its SHA-256),
/// the same for the same id, so a correlation id from elsewhere (API Gateway's request id)
/// still finds Graph's side of the work.
pub fn graph_client_request_id(correlation: &str) -> String {
    if is_guid(correlation) {
        return correlation.to_ascii_lowercase();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(correlation.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    guid(u128::from_be_bytes(first), 8)
}

#[cfg(any(feature = "stages", feature = "graph"))]
tokio::task_local! {
    static CORRELATION: Option<String>;
}

/// Runs `work` with `correlation` as the current correlation id (a message's, while it is
/// handled), which outgoing calls (Graph's `client-request-id`) carry.
#[cfg(any(feature = "stages", feature = "graph"))]
pub async fn with_correlation<F: std::future::Future>(
    correlation: Option<String>,
    work: F,
) -> F::Output {
    CORRELATION.scope(correlation, work).await
}

/// The correlation id of the work at hand, if it has one.
#[cfg(any(feature = "stages", feature = "graph"))]
pub fn current_correlation() -> Option<String> {
    CORRELATION.try_with(Clone::clone).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_guids_and_graph_gets_a_guid_for_any_id() {
        let id = new_correlation_id();
        assert!(is_guid(&id), "{id}");
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert!(
            matches!(&id[19..20], "8" | "9" | "a" | "b"),
            "variant: {id}"
        );
        assert_eq!(graph_client_request_id(&id), id);
        let derived = graph_client_request_id("Kx3vYhj2LPEEJmg=");
        assert!(is_guid(&derived), "{derived}");
        assert_eq!(&derived[14..15], "8");
        assert_eq!(derived, graph_client_request_id("Kx3vYhj2LPEEJmg="));
        assert_ne!(derived, graph_client_request_id("another"));
        assert!(!is_guid("0123456789abcdef"));
    }

    #[cfg(any(feature = "stages", feature = "graph"))]
    #[tokio::test]
    async fn the_current_correlation_is_the_scoped_one() {
        assert_eq!(current_correlation(), None);
        let inside = with_correlation(Some("c-1".into()), async { current_correlation() }).await;
        assert_eq!(inside.as_deref(), Some("c-1"));
    }
}
