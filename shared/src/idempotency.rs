//! The one idempotency mechanism: claim → work → complete, or release on failure, in the shape
//! of AWS Powertools' idempotency utility.
//!
//! - The record's key is the business id of the work (`MSG#…`, `RUN#…`, `DLV#…`); beside it
//!   the SHA-256 of the payload the work was for, so a key reused for another payload is
//!   caught (a permanent error) instead of answered with the wrong result.
//! - An in-progress claim expires when the invocation that holds it would be stopped (its
//!   deadline), not after a fixed hold: a crashed holder frees the key as soon as it can be
//!   known dead, and a slow one is never overtaken while it still runs.
//! - A completed claim answers later attempts with its stored result; records expire by TTL.
//!
//! [`exclusive`] is the same record used as a lock: held for the work, always given back.

use std::future::Future;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::failure::permanent;
use crate::invocation::Invocation;
use crate::ports::{Claim, Claims};

/// A piece of work's idempotency key and the hash of its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub payload_hash: String,
}

impl IdempotencyKey {
    /// `key` for work on `payload` (hashed as its JSON).
    pub fn new(key: impl Into<String>, payload: &impl Serialize) -> Self {
        let json = serde_json::to_vec(payload).unwrap_or_default();
        IdempotencyKey {
            key: key.into(),
            payload_hash: hex::encode(Sha256::digest(&json)),
        }
    }
}

/// What [`once`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Once<T> {
    /// The work ran now; this is its result.
    Ran(T),
    /// The work was done before; this is the result stored then.
    AlreadyDone(T),
}

/// Runs `work` once for `key`: claims it until the invocation's deadline, completes it with
/// the work's result, releases it when the work fails (so the retry can take it at once).
/// Another invocation holding the key is a retryable error.
pub async fn once<T, Fut>(
    claims: &dyn Claims,
    key: &IdempotencyKey,
    invocation: &Invocation,
    keep: Duration,
    work: Fut,
) -> anyhow::Result<Once<T>>
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let now = Utc::now();
    match claims
        .claim(
            &key.key,
            &key.payload_hash,
            now,
            invocation.deadline.max(now),
            now + keep,
        )
        .await?
    {
        Claim::AlreadyDone {
            result,
            payload_hash,
        } => {
            if payload_hash.is_some_and(|h| h != key.payload_hash) {
                return Err(permanent(format!(
                    "{} was done before for another payload: the key is reused",
                    key.key
                )));
            }
            let stored = serde_json::from_str(&result)
                .with_context(|| format!("the stored result of {}", key.key))?;
            info!(key = key.key, "done before: nothing to do");
            return Ok(Once::AlreadyDone(stored));
        }
        Claim::InProgressElsewhere => {
            return Err(crate::failure::busy(format!(
                "{} is being worked on by another invocation; retried later",
                key.key
            )));
        }
        Claim::Acquired => {}
    }
    match work.await {
        Ok(result) => {
            // The work is done: its completion is retried while the invocation has time, and
            // if it never lands the claim is left to expire, not released.
            let text = serde_json::to_string(&result)?;
            persist(invocation, &format!("completing {}", key.key), || {
                claims.complete(&key.key, &text, Utc::now())
            })
            .await?;
            Ok(Once::Ran(result))
        }
        Err(e) => {
            release_or_let_expire(claims, &key.key).await;
            Err(e)
        }
    }
}

/// How often [`persist`] tries a write at most.
pub const PERSIST_ATTEMPTS: u32 = 6;

/// Time [`persist`] leaves the invocation for what comes after it.
const PERSIST_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Retries `write` (one that must land once the work it records is done: a completion, an
/// index) with full-jitter backoff, at most [`PERSIST_ATTEMPTS`] times and only while the
/// invocation has time left; a permanent error is not retried. The last error is returned
/// with how often it was tried.
pub async fn persist<T, F, Fut>(
    invocation: &Invocation,
    what: &str,
    mut write: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let e = match write().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let delay = crate::adapters::retry::backoff(
            attempt,
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(2),
        );
        let left = (invocation.deadline - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(PERSIST_MARGIN);
        if attempt >= PERSIST_ATTEMPTS
            || crate::failure::kind_of(&e) == crate::failure::FailureKind::Permanent
            || delay > left
        {
            return Err(e.context(format!("{what}: tried {attempt} times")));
        }
        warn!(error = %format!("{e:#}"), attempt, what, "a write that must land failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// Runs `work` while holding the lock `key` (until `until` at most, should the holder die);
/// `None` without running it when another holds the lock. The lock is given back afterwards.
pub async fn exclusive<T, Fut>(
    claims: &dyn Claims,
    key: &str,
    until: DateTime<Utc>,
    work: Fut,
) -> anyhow::Result<Option<T>>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    if !try_lock(claims, key, until).await? {
        return Ok(None);
    }
    let result = work.await;
    release_or_let_expire(claims, key).await;
    result.map(Some)
}

/// Takes the lock `key` until `until`; false when another holds it.
pub async fn try_lock(
    claims: &dyn Claims,
    key: &str,
    until: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let now = Utc::now();
    let claim = claims
        .claim(
            key,
            "",
            now,
            until.max(now),
            until.max(now) + Duration::days(1),
        )
        .await?;
    Ok(claim == Claim::Acquired)
}

/// Releases a claim for a caller that carries on either way: a failure is logged, and the
/// claim frees itself at its in-progress expiry.
pub async fn release_or_let_expire(claims: &dyn Claims, key: &str) {
    if let Err(e) = claims.release(key).await {
        warn!(error = %format!("{e:#}"), claim = key, "could not release the claim; it expires by itself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemoryClaims;
    use crate::failure::{FailureKind, kind_of};

    fn invocation() -> Invocation {
        Invocation::with_timeout(std::time::Duration::from_secs(60))
    }

    #[tokio::test]
    async fn work_runs_once_and_later_attempts_get_its_result() {
        let claims = MemoryClaims::default();
        let key = IdempotencyKey::new("RUN#a", &"payload");
        let first = once(&claims, &key, &invocation(), Duration::days(1), async {
            Ok(41 + 1)
        })
        .await
        .unwrap();
        assert_eq!(first, Once::Ran(42));
        let again = once(&claims, &key, &invocation(), Duration::days(1), async {
            panic!("must not run again")
        })
        .await
        .unwrap();
        assert_eq!(again, Once::<i32>::AlreadyDone(42));
    }

    #[tokio::test]
    async fn a_failure_releases_the_key_for_the_retry() {
        let claims = MemoryClaims::default();
        let key = IdempotencyKey::new("MSG#a", &1);
        let failed = once::<i32, _>(&claims, &key, &invocation(), Duration::days(1), async {
            anyhow::bail!("throttled")
        })
        .await;
        assert!(failed.is_err());
        let retried = once(&claims, &key, &invocation(), Duration::days(1), async {
            Ok(7)
        })
        .await
        .unwrap();
        assert_eq!(retried, Once::Ran(7));
    }

    #[tokio::test]
    async fn a_key_reused_for_another_payload_is_a_permanent_error() {
        let claims = MemoryClaims::default();
        let inv = invocation();
        once(
            &claims,
            &IdempotencyKey::new("RUN#r", &"2024-03-14"),
            &inv,
            Duration::days(1),
            async { Ok(1) },
        )
        .await
        .unwrap();
        let reused = once::<i32, _>(
            &claims,
            &IdempotencyKey::new("RUN#r", &"2024-03-15"),
            &inv,
            Duration::days(1),
            async { Ok(2) },
        )
        .await
        .unwrap_err();
        assert_eq!(kind_of(&reused), FailureKind::Permanent);
        assert!(reused.to_string().contains("reused"), "{reused}");
    }

    #[tokio::test]
    async fn an_in_progress_claim_holds_until_its_invocations_deadline() {
        let claims = MemoryClaims::default();
        let key = IdempotencyKey::new("DLV#x", &"p");
        let now = Utc::now();
        // A holder whose invocation ends in 30 s.
        let held = claims
            .claim(
                &key.key,
                &key.payload_hash,
                now,
                now + Duration::seconds(30),
                now + Duration::days(1),
            )
            .await
            .unwrap();
        assert_eq!(held, Claim::Acquired);
        let busy = once::<i32, _>(&claims, &key, &invocation(), Duration::days(1), async {
            Ok(1)
        })
        .await
        .unwrap_err();
        assert_eq!(kind_of(&busy), FailureKind::Retryable);
        assert!(busy.to_string().contains("another invocation"), "{busy}");
        // Once that deadline has passed, the holder is known dead and the key can be taken.
        let later = now + Duration::seconds(31);
        assert_eq!(
            claims
                .claim(
                    &key.key,
                    &key.payload_hash,
                    later,
                    later + Duration::seconds(30),
                    later + Duration::days(1)
                )
                .await
                .unwrap(),
            Claim::Acquired
        );
    }

    #[tokio::test]
    async fn a_lock_is_given_back_after_the_work_whatever_it_did() {
        let claims = MemoryClaims::default();
        let until = Utc::now() + Duration::minutes(1);
        let ran = exclusive(&claims, "LOCK#r#p", until, async { anyhow::Ok(1) })
            .await
            .unwrap();
        assert_eq!(ran, Some(1));
        let failed =
            exclusive::<i32, _>(&claims, "LOCK#r#p", until, async { anyhow::bail!("boom") }).await;
        assert!(failed.is_err());
        assert!(try_lock(&claims, "LOCK#r#p", until).await.unwrap());
        let busy = exclusive(&claims, "LOCK#r#p", until, async { anyhow::Ok(2) })
            .await
            .unwrap();
        assert_eq!(busy, None, "held: the work does not run");
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_that_fails_for_a_while_is_retried_and_lands() {
        let claims = MemoryClaims::default();
        let key = IdempotencyKey::new("DLV#a", &1);
        let ran = std::sync::atomic::AtomicU32::new(0);
        // The claim succeeds; the next two writes (the completion's first tries) fail.
        let result = once(&claims, &key, &invocation(), Duration::days(1), async {
            ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            claims
                .fault
                .fail_next(2, "ProvisionedThroughputExceededException");
            Ok(5)
        })
        .await
        .unwrap();
        assert_eq!(result, Once::Ran(5));
        assert_eq!(claims.result("DLV#a").as_deref(), Some("5"));
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_that_never_lands_leaves_the_claim_in_progress() {
        let claims = MemoryClaims::default();
        let key = IdempotencyKey::new("DLV#b", &1);
        let failed = once(&claims, &key, &invocation(), Duration::days(1), async {
            claims.fault.fail_next(PERSIST_ATTEMPTS, "table gone");
            Ok(5)
        })
        .await
        .unwrap_err();
        assert!(
            format!("{failed:#}").contains("tried 6 times"),
            "{failed:#}"
        );
        // Not released: a retry before the deadline finds it held, none can redo the work.
        assert!(claims.in_progress("DLV#b"));
    }

    #[tokio::test]
    async fn persist_gives_up_at_once_on_a_permanent_error_and_when_time_is_short() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let permanent = persist(&invocation(), "writing", || async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(crate::failure::permanent("ValidationException"))
        })
        .await;
        assert!(permanent.is_err());
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
        let short = Invocation::with_timeout(std::time::Duration::from_secs(1));
        tries.store(0, std::sync::atomic::Ordering::SeqCst);
        let out_of_time = persist(&short, "writing", || async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(anyhow::anyhow!("throttled"))
        })
        .await;
        assert!(out_of_time.is_err());
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
