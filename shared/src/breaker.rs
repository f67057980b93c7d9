//! A circuit breaker shared by every concurrent invocation of a stage: its state is one record
//! in the state table (`BREAKER#{name}` / `state`), changed only by compare-and-set
//! ([`StateRecords::put_versioned`]), so two invocations never both take the half-open probe
//! and no failure is lost to a race.
//!
//! closed → (`failures` failed calls within `window`) → open → (after `cooldown`) half-open:
//! one invocation probes with one call → success: closed; failure: open again.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::ports::StateRecords;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// The metric's value: 0 closed, 1 half-open, 2 open.
    pub fn level(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// The stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerRecord {
    pub state: BreakerState,
    /// Failed calls within the window (closed), newest last.
    #[serde(default)]
    pub failures: Vec<DateTime<Utc>>,
    /// When it last opened.
    #[serde(default)]
    pub opened_at: Option<DateTime<Utc>>,
    /// Half-open: the probe is someone's until then (after it, its holder is taken as dead).
    #[serde(default)]
    pub probe_until: Option<DateTime<Utc>>,
    /// The last failure's reason, for operators.
    #[serde(default)]
    pub last_failure: Option<String>,
    pub changed_at: DateTime<Utc>,
}

impl BreakerRecord {
    fn closed(now: DateTime<Utc>) -> Self {
        BreakerRecord {
            state: BreakerState::Closed,
            failures: Vec::new(),
            opened_at: None,
            probe_until: None,
            last_failure: None,
            changed_at: now,
        }
    }

    /// Just opened by a failure with `reason`.
    fn opened(reason: &str, now: DateTime<Utc>) -> Self {
        BreakerRecord {
            state: BreakerState::Open,
            opened_at: Some(now),
            last_failure: Some(reason.to_owned()),
            ..BreakerRecord::closed(now)
        }
    }

    /// When an open breaker lets a probe through.
    pub fn reopens_at(&self, settings: &BreakerSettings) -> Option<DateTime<Utc>> {
        match self.state {
            BreakerState::Open => self.opened_at.map(|t| t + to_chrono(settings.cooldown)),
            BreakerState::HalfOpen => self.probe_until,
            BreakerState::Closed => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failed calls within `window` that open it.
    pub failures: u32,
    pub window: Duration,
    /// How long it stays open before a probe.
    pub cooldown: Duration,
    /// How long a probe may take before another invocation may probe.
    pub probe_timeout: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(30),
        }
    }
}

/// May this invocation call?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call.
    Call,
    /// Half-open and the probe is ours: make one call and report it.
    Probe,
    /// Open (or someone else is probing): do not call before `until`.
    Wait { until: DateTime<Utc> },
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Compare-and-set attempts before giving up (each loses only to another writer's success).
const CAS_TRIES: u32 = 8;

pub struct Breaker {
    records: Arc<dyn StateRecords>,
    pk: String,
    pub settings: BreakerSettings,
}

const SK: &str = "state";

impl Breaker {
    pub fn new(records: Arc<dyn StateRecords>, name: &str, settings: BreakerSettings) -> Self {
        Breaker {
            records,
            pk: format!("BREAKER#{name}"),
            settings,
        }
    }

    /// The stored record (closed when there is none) and its version.
    pub async fn read(&self, now: DateTime<Utc>) -> anyhow::Result<(BreakerRecord, Option<u64>)> {
        Ok(match self.records.get_versioned(&self.pk, SK).await? {
            Some((data, version)) => (serde_json::from_str(&data)?, Some(version)),
            None => (BreakerRecord::closed(now), None),
        })
    }

    /// Reads, changes with `change` (None: leave it) and writes back unless another writer
    /// got there first, then tries again on what it wrote. The record as left.
    async fn update(
        &self,
        now: DateTime<Utc>,
        mut change: impl FnMut(&BreakerRecord) -> Option<BreakerRecord>,
    ) -> anyhow::Result<(BreakerRecord, bool)> {
        for _ in 0..CAS_TRIES {
            let (current, version) = self.read(now).await?;
            let Some(next) = change(&current) else {
                return Ok((current, false));
            };
            if self
                .records
                .put_versioned(&self.pk, SK, serde_json::to_string(&next)?, version)
                .await?
            {
                return Ok((next, true));
            }
        }
        anyhow::bail!("the breaker record {} kept changing under us", self.pk)
    }

    /// Whether a call may go out now; in half-open, takes the probe when it is free.
    pub async fn admit(&self, now: DateTime<Utc>) -> anyhow::Result<Admission> {
        let settings = self.settings;
        let (record, wrote) = self
            .update(now, |r| match r.state {
                BreakerState::Closed => None,
                BreakerState::Open | BreakerState::HalfOpen => {
                    let free = r.reopens_at(&settings).is_none_or(|t| now >= t);
                    free.then(|| BreakerRecord {
                        state: BreakerState::HalfOpen,
                        probe_until: Some(now + to_chrono(settings.probe_timeout)),
                        changed_at: now,
                        ..r.clone()
                    })
                }
            })
            .await?;
        Ok(match record.state {
            BreakerState::Closed => Admission::Call,
            BreakerState::HalfOpen if wrote => {
                info!(
                    breaker = self.pk,
                    "breaker half-open: this invocation probes"
                );
                Admission::Probe
            }
            _ => Admission::Wait {
                until: record.reopens_at(&settings).unwrap_or(now),
            },
        })
    }

    /// A call succeeded: a half-open (or open) breaker closes, a closed one forgets its failures.
    pub async fn succeeded(&self, now: DateTime<Utc>) -> anyhow::Result<BreakerState> {
        let (record, wrote) = self
            .update(now, |r| {
                (r.state != BreakerState::Closed || !r.failures.is_empty())
                    .then(|| BreakerRecord::closed(now))
            })
            .await?;
        if wrote {
            info!(
                breaker = self.pk,
                "breaker closed: the downstream answers again"
            );
        }
        Ok(record.state)
    }

    /// A call failed: counted while closed (opening the breaker at the threshold); a failed
    /// probe opens it again.
    pub async fn failed(&self, reason: &str, now: DateTime<Utc>) -> anyhow::Result<BreakerState> {
        let settings = self.settings;
        let since = now - to_chrono(settings.window);
        let (record, wrote) = self
            .update(now, |r| match r.state {
                BreakerState::Closed => {
                    let mut failures: Vec<DateTime<Utc>> =
                        r.failures.iter().copied().filter(|t| *t > since).collect();
                    failures.push(now);
                    let keep = settings.failures.max(1) as usize;
                    if failures.len() > keep {
                        failures.drain(..failures.len() - keep);
                    }
                    Some(if failures.len() >= keep {
                        BreakerRecord::opened(reason, now)
                    } else {
                        BreakerRecord {
                            failures,
                            last_failure: Some(reason.to_owned()),
                            ..r.clone()
                        }
                    })
                }
                BreakerState::HalfOpen => Some(BreakerRecord::opened(reason, now)),
                // Already open: a call that started before it opened.
                BreakerState::Open => None,
            })
            .await?;
        if wrote && record.state == BreakerState::Open {
            warn!(
                breaker = self.pk,
                reason,
                cooldown_s = settings.cooldown.as_secs(),
                "breaker opened: no calls until the cool-down has passed"
            );
        }
        Ok(record.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemoryState;

    fn at(s: u32) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + i64::from(s), 0).unwrap()
    }

    fn breaker(records: &Arc<MemoryState>) -> Breaker {
        Breaker::new(
            Arc::clone(records) as _,
            "downstream",
            BreakerSettings {
                failures: 3,
                window: Duration::from_secs(60),
                cooldown: Duration::from_secs(30),
                probe_timeout: Duration::from_secs(10),
            },
        )
    }

    #[tokio::test]
    async fn it_opens_after_enough_failures_in_the_window_and_one_probe_closes_it() {
        let records = Arc::new(MemoryState::default());
        let b = breaker(&records);
        assert_eq!(b.admit(at(0)).await.unwrap(), Admission::Call);
        // Two failures, then one outside the window: still closed.
        b.failed("500", at(0)).await.unwrap();
        b.failed("500", at(1)).await.unwrap();
        assert_eq!(
            b.failed("500", at(100)).await.unwrap(),
            BreakerState::Closed
        );
        b.failed("500", at(101)).await.unwrap();
        assert_eq!(
            b.failed("reset", at(102)).await.unwrap(),
            BreakerState::Open
        );
        assert_eq!(
            b.admit(at(110)).await.unwrap(),
            Admission::Wait { until: at(132) }
        );
        // After the cool-down one invocation probes; the other waits for the probe.
        let other = breaker(&records);
        assert_eq!(b.admit(at(132)).await.unwrap(), Admission::Probe);
        assert_eq!(
            other.admit(at(133)).await.unwrap(),
            Admission::Wait { until: at(142) }
        );
        // The probe fails: open again, for a whole cool-down.
        assert_eq!(b.failed("503", at(134)).await.unwrap(), BreakerState::Open);
        assert_eq!(
            other.admit(at(135)).await.unwrap(),
            Admission::Wait { until: at(164) }
        );
        // A probe whose holder died is taken over after its timeout; its success closes.
        assert_eq!(b.admit(at(164)).await.unwrap(), Admission::Probe);
        assert_eq!(other.admit(at(175)).await.unwrap(), Admission::Probe);
        assert_eq!(
            other.succeeded(at(176)).await.unwrap(),
            BreakerState::Closed
        );
        assert_eq!(b.admit(at(177)).await.unwrap(), Admission::Call);
        let (record, _) = b.read(at(177)).await.unwrap();
        assert!(record.failures.is_empty());
    }

    /// Invocations racing on one record: every failure counts once and exactly one takes the
    /// probe.
    #[tokio::test]
    async fn racing_invocations_lose_no_failure_and_share_one_probe() {
        let records = Arc::new(MemoryState::default());
        let (a, b) = (breaker(&records), breaker(&records));
        let (x, y) = tokio::join!(a.failed("500", at(0)), b.failed("500", at(0)));
        x.unwrap();
        y.unwrap();
        let (record, version) = a.read(at(0)).await.unwrap();
        assert_eq!((record.failures.len(), version), (2, Some(2)));
        a.failed("500", at(1)).await.unwrap();
        let (x, y) = tokio::join!(a.admit(at(40)), b.admit(at(40)));
        let mut got = [x.unwrap(), y.unwrap()];
        got.sort_by_key(|g| matches!(g, Admission::Probe));
        assert!(
            matches!(got, [Admission::Wait { .. }, Admission::Probe]),
            "{got:?}"
        );
    }
}
