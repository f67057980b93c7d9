//! Backoff with full jitter for retrying throttled or partially processed AWS batch calls.

use std::time::Duration;

/// Delay before attempt `attempt` (1-based): random in [0, min(cap, base * 2^attempt)].
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let jitter: f64 = rand::random();
    ceiling.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_never_exceeds_its_cap() {
        for attempt in 0..40 {
            let d = backoff(attempt, Duration::from_millis(50), Duration::from_secs(2));
            assert!(d <= Duration::from_secs(2));
        }
    }
}
