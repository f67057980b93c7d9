//! `ClientStates`: the `clientState` secret of every live Graph subscription, kept in one
//! Secrets Manager secret as `{"subscriptions": {"<subscription id>": "<clientState>"}}`.
//!
//! The poller creates each subscription with a fresh random value and writes it here; the
//! webhook reads it to check notifications. A subscription not in the map is unknown.
//!
//! Secrets Manager has no conditional write, and every write reads the whole map and puts it
//! back, so writers (each folder's poll, lifecycle work) take turns under a claim in the state
//! table; otherwise two subscriptions created at once would lose one clientState, and every
//! notification of that subscription would be dropped as unknown.

use std::collections::HashMap;

use anyhow::{Context, bail};
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use serde::{Deserialize, Serialize};

use crate::adapters::state::{Claim, StateStore};
use crate::secret::Secret;

/// The state-table claim writers hold while they read, change and write the map.
const WRITE_LOCK: &str = "LOCK#CLIENTSTATES";
/// How long a crashed writer's claim blocks the others.
const WRITE_LOCK_HOLD: chrono::Duration = chrono::Duration::seconds(30);
/// How long a writer waits for its turn before giving up (its caller retries later).
const WRITE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(Clone, Debug)]
pub struct ClientStates {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    subscriptions: HashMap<String, String>,
}

impl ClientStates {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        ClientStates {
            client,
            secret_id: secret_id.into(),
        }
    }

    /// Every subscription's clientState; empty while the secret has no value yet.
    pub async fn load(&self) -> anyhow::Result<HashMap<String, Secret>> {
        Ok(self
            .stored()
            .await?
            .subscriptions
            .into_iter()
            .map(|(id, state)| (id, Secret::new(state)))
            .collect())
    }

    /// Records `subscription`'s clientState and forgets the ones in `drop`, holding the write
    /// lock in `locks` (the state table) meanwhile.
    pub async fn put(
        &self,
        locks: &StateStore,
        subscription: &str,
        state: &Secret,
        drop: &[&str],
    ) -> anyhow::Result<()> {
        let waited = std::time::Instant::now();
        loop {
            let now = chrono::Utc::now();
            match locks
                .claim(WRITE_LOCK, now, WRITE_LOCK_HOLD, chrono::Duration::days(1))
                .await?
            {
                Claim::Acquired => break,
                Claim::InProgressElsewhere | Claim::AlreadyDone(_)
                    if waited.elapsed() < WRITE_LOCK_WAIT =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Claim::InProgressElsewhere | Claim::AlreadyDone(_) => {
                    bail!(
                        "another writer held {WRITE_LOCK} for over {} s",
                        WRITE_LOCK_WAIT.as_secs()
                    )
                }
            }
        }
        let written = async {
            let mut stored = self.stored().await?;
            for d in drop {
                stored.subscriptions.remove(*d);
            }
            stored
                .subscriptions
                .insert(subscription.to_owned(), state.expose().to_owned());
            self.write(&stored).await
        }
        .await;
        locks.release_or_let_expire(WRITE_LOCK).await;
        written
    }

    async fn stored(&self) -> anyhow::Result<Stored> {
        let out = match self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
        {
            Ok(out) => out,
            // A secret without a value yet: no subscription has been created.
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(Stored::default()),
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("reading secret {}", self.secret_id));
            }
        };
        match out.secret_string() {
            None | Some("") => Ok(Stored::default()),
            // Never echo the value: only where the JSON broke.
            Some(text) => serde_json::from_str(text).map_err(|e| {
                anyhow::anyhow!(
                    "secret {} is not {{\"subscriptions\": {{id: clientState}}}} JSON (line {}, column {})",
                    self.secret_id,
                    e.line(),
                    e.column()
                )
            }),
        }
    }

    async fn write(&self, stored: &Stored) -> anyhow::Result<()> {
        self.client
            .put_secret_value()
            .secret_id(&self.secret_id)
            .secret_string(serde_json::to_string(stored)?)
            .send()
            .await
            .with_context(|| format!("writing secret {}", self.secret_id))?;
        Ok(())
    }
}

/// A fresh clientState: 32 random bytes, hex (Graph allows up to 128 characters).
pub fn fresh_client_state() -> Secret {
    Secret::new(hex::encode(rand::random::<[u8; 32]>()))
}
