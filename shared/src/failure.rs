//! What a retry can do about a failure.
//!
//! - **Retryable** (the default): throttling, timeouts, 5xx answers, a claim or lock held by
//!   another invocation. The message is reported in `batchItemFailures`; SQS redelivers it
//!   and, after the queue's maximum receives, moves it to the dead-letter queue.
//! - **Permanent**: a malformed message, an unknown report or dataset, a bad recipient, an
//!   invalid definition or setting, a Graph 4xx (a mail that is gone, a permission the app
//!   lacks), an idempotency key reused for another payload. Retrying cannot help: the message
//!   goes to its dead-letter queue at once with the cause attached (`sqs_batch`).
//!
//! Errors travel as `anyhow::Error`; a permanent one carries a [`Permanent`] (or a
//! [`GraphError`] with a permanent status, or a [`SettingError`]) somewhere in its chain, so
//! context added on the way up never hides the verdict.

use crate::env::SettingError;
use crate::ports::GraphError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Retryable,
    Permanent,
}

impl FailureKind {
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
        }
    }
}

/// An error no retry can fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

/// Work that cannot go on now for an expected reason (a claim in progress or a lock held by
/// another invocation, the downstream API's circuit breaker open): retryable, and expected, so
/// it is logged as a warning rather than an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Busy(pub String);

/// A [`Busy`] error with this reason.
pub fn busy(reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Busy(reason.to_string()))
}

/// Whether the error is (or was caused by) work held elsewhere.
pub fn is_busy(error: &anyhow::Error) -> bool {
    error.chain().any(|c| c.is::<Busy>())
}

/// A permanent error with this reason.
pub fn permanent(reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Permanent(reason.to_string()))
}

/// Marks a result's error permanent, keeping its whole message.
pub trait OrPermanent<T> {
    fn or_permanent(self) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> OrPermanent<T> for Result<T, E> {
    fn or_permanent(self) -> anyhow::Result<T> {
        self.map_err(|e| permanent(format!("{:#}", e.into())))
    }
}

/// The verdict on an error: the first cause in its chain that has one decides.
pub fn kind_of(error: &anyhow::Error) -> FailureKind {
    for cause in error.chain() {
        if cause.is::<Permanent>() || cause.is::<SettingError>() {
            return FailureKind::Permanent;
        }
        if let Some(g) = cause.downcast_ref::<GraphError>() {
            return g.kind();
        }
    }
    FailureKind::Retryable
}

impl GraphError {
    /// A 4xx other than 408 (timeout) and 429 (throttled) is permanent; a 5xx, a throttle,
    /// no answer or an odd answer may pass next time.
    pub fn kind(&self) -> FailureKind {
        if self.is_permanent() {
            FailureKind::Permanent
        } else {
            FailureKind::Retryable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn context_on_the_way_up_keeps_the_verdict() {
        let e = Err::<(), _>(permanent("unknown report \"x\""))
            .context("run request")
            .unwrap_err();
        assert_eq!(kind_of(&e), FailureKind::Permanent);
        assert!(format!("{e:#}").contains("unknown report"));
        assert_eq!(kind_of(&anyhow::anyhow!("timeout")), FailureKind::Retryable);
    }

    #[test]
    fn busy_work_is_retryable_and_known_as_busy() {
        let e = busy("MSG#x is being worked on").context("ingest");
        assert_eq!(kind_of(&e), FailureKind::Retryable);
        assert!(is_busy(&e));
        assert!(!is_busy(&anyhow::anyhow!("timeout")));
    }

    #[test]
    fn graph_statuses_say_what_a_retry_can_do() {
        let e = |status| GraphError::Status {
            status,
            what: "get message".into(),
            code: String::new(),
            message: String::new(),
        };
        for (status, kind) in [
            (404, FailureKind::Permanent),
            (403, FailureKind::Permanent),
            (429, FailureKind::Retryable),
            (408, FailureKind::Retryable),
            (503, FailureKind::Retryable),
        ] {
            let err = anyhow::Error::new(e(status)).context("ingesting a mail");
            assert_eq!(kind_of(&err), kind, "{status}");
        }
    }

    #[test]
    fn a_malformed_body_marked_permanent_keeps_its_message() {
        let parsed: anyhow::Result<serde_json::Value> = serde_json::from_str("{").or_permanent();
        let e = parsed.unwrap_err();
        assert_eq!(kind_of(&e), FailureKind::Permanent);
        assert!(e.to_string().contains("EOF"), "{e}");
    }
}
