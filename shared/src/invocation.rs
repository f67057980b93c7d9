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

/// A fresh correlation id for work that starts here.
pub fn new_correlation_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
