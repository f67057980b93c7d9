//! Pausing intake (the seed ingestor's sessions, serverless): while paused, the webhook and
//! the poller record the mails they were told of or found (`PARKED#…`) instead of queueing
//! them on `inbound`; resuming queues what was parked, in the order it arrived, and clears it.
//! Lifecycle events are never paused (they keep the subscriptions alive), and a delta round
//! still advances its link: nothing found while paused is lost.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use crate::ports::{StateRecords, WorkQueue};
use crate::state::RecordKey;
pub use crate::state::{IntakeControl, PARKED_INDEX, ParkedMessage};

/// How long an instance trusts the pause flag it read: a pause takes effect within this.
pub const GATE_TTL: Duration = Duration::from_secs(5);

/// The pause flag as the webhook and the poller read it (cached for [`GATE_TTL`]).
pub struct PauseGate {
    records: std::sync::Arc<dyn StateRecords>,
    cached: Mutex<Option<(Instant, bool)>>,
    ttl: Duration,
}

impl PauseGate {
    pub fn new(records: std::sync::Arc<dyn StateRecords>) -> Self {
        PauseGate {
            records,
            cached: Mutex::new(None),
            ttl: GATE_TTL,
        }
    }

    /// A gate that reads the flag every time (tests).
    pub fn uncached(records: std::sync::Arc<dyn StateRecords>) -> Self {
        PauseGate {
            ttl: Duration::ZERO,
            ..Self::new(records)
        }
    }

    /// Whether intake is paused. A flag that cannot be read counts as not paused (logged):
    /// queueing a mail twice is harmless, holding one back unseen is not.
    pub async fn paused(&self) -> bool {
        if let Some((at, paused)) = *self.cached.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < self.ttl
        {
            return paused;
        }
        let paused = match self.records.get_record(&RecordKey::intake_control()).await {
            Ok(control) => control.is_some_and(|c| c.paused),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the intake pause flag could not be read: queueing as usual");
                false
            }
        };
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), paused));
        paused
    }

    /// Records `messages` instead of queueing them.
    pub async fn park<T: Serialize>(&self, messages: &[T], by: &str) -> anyhow::Result<usize> {
        for m in messages {
            park(self.records.as_ref(), m, by).await?;
        }
        Ok(messages.len())
    }
}

async fn park<T: Serialize>(
    records: &dyn StateRecords,
    message: &T,
    by: &str,
) -> anyhow::Result<()> {
    let id = crate::invocation::new_correlation_id();
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let index = format!("{now}#{id}");
    let parked = ParkedMessage {
        message: serde_json::to_value(message)?,
        parked_at: now,
        by: by.to_owned(),
        resumed_at: None,
    };
    records
        .put_record(
            &RecordKey::parked(&id),
            &parked,
            Some((PARKED_INDEX, &index)),
        )
        .await
}

/// How many messages are parked (up to 10,000).
pub async fn parked_count(records: &dyn StateRecords) -> anyhow::Result<usize> {
    Ok(records
        .query_index(PARKED_INDEX, None, None, 10_000)
        .await?
        .len())
}

/// Queues every parked message on `inbound`, oldest first, and takes each off the index once
/// it is queued: a resume that fails part way queues the rest next time, and a message queued
/// twice is harmless (ingest's claim).
pub async fn resume(records: &dyn StateRecords, inbound: &dyn WorkQueue) -> anyhow::Result<usize> {
    let mut resumed = 0;
    loop {
        let page = records.query_index(PARKED_INDEX, None, None, 100).await?;
        if page.is_empty() {
            return Ok(resumed);
        }
        // The index gives newest first; queue in arrival order.
        for r in page.iter().rev() {
            let mut parked: ParkedMessage = serde_json::from_str(&r.data)?;
            let id = r.pk.trim_start_matches("PARKED#");
            inbound.send(&parked.message, id).await?;
            parked.resumed_at = Some(Utc::now().to_rfc3339());
            records
                .put_record(&RecordKey::parked(id), &parked, None)
                .await?;
            resumed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::{MemoryQueue, MemoryState};
    use std::sync::Arc;

    #[tokio::test]
    async fn parked_messages_are_queued_on_resume_in_arrival_order_once() {
        let records = Arc::new(MemoryState::default());
        let gate = PauseGate::uncached(Arc::clone(&records) as _);
        assert!(!gate.paused().await);
        let control = IntakeControl {
            paused: true,
            since: Utc::now().to_rfc3339(),
            by: "ops".into(),
        };
        let r: &dyn StateRecords = records.as_ref();
        r.put_record(&RecordKey::intake_control(), &control, None)
            .await
            .unwrap();
        assert!(gate.paused().await);
        for id in ["a", "b", "c"] {
            gate.park(&[serde_json::json!({"message_id": id})], "webhook")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_eq!(parked_count(r).await.unwrap(), 3);
        let inbound = MemoryQueue::default();
        assert_eq!(resume(r, &inbound).await.unwrap(), 3);
        let order: Vec<String> = inbound
            .bodies::<serde_json::Value>()
            .iter()
            .map(|m| m["message_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(order, vec!["a", "b", "c"]);
        assert_eq!(parked_count(r).await.unwrap(), 0);
        assert_eq!(resume(r, &inbound).await.unwrap(), 0, "nothing twice");
    }
}
