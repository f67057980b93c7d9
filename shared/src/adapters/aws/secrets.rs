//! Secrets Manager: secret values read once at cold start, and the store of the Graph
//! subscriptions' clientStates, one secret holding
//! `{"subscriptions": {"<subscription id>": "<clientState>"}, "mailboxes": {"<subscription id>":
//! "<mailbox>"}}` (`mailboxes` was added later: a subscription without one is read as such).

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use serde::{Deserialize, Serialize};

use crate::ports::{ClientStateStore, Subscribed};
use crate::secret::Secret;

/// Reads a secret's string value. The value is wrapped so it cannot be logged.
pub async fn read_secret(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> anyhow::Result<Secret> {
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .with_context(|| format!("reading secret {id}"))?;
    let value = out
        .secret_string()
        .with_context(|| format!("secret {id} has no string value"))?;
    Ok(Secret::new(value))
}

#[derive(Clone, Debug)]
pub struct SecretClientStates {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    subscriptions: HashMap<String, String>,
    #[serde(default)]
    mailboxes: HashMap<String, String>,
}

impl SecretClientStates {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: impl Into<String>) -> Self {
        SecretClientStates {
            client,
            secret_id: secret_id.into(),
        }
    }
}

#[async_trait]
impl ClientStateStore for SecretClientStates {
    async fn load(&self) -> anyhow::Result<HashMap<String, Subscribed>> {
        let out = match self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
        {
            Ok(out) => out,
            // A secret without a value yet: no subscription has been created.
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(HashMap::new()),
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("reading secret {}", self.secret_id));
            }
        };
        let stored: Stored = match out.secret_string() {
            None | Some("") => Stored::default(),
            // Never echo the value: only where the JSON broke.
            Some(text) => serde_json::from_str(text).map_err(|e| {
                anyhow::anyhow!(
                    "secret {} is not {{\"subscriptions\": {{id: clientState}}}} JSON (line {}, column {})",
                    self.secret_id,
                    e.line(),
                    e.column()
                )
            })?,
        };
        let mut mailboxes = stored.mailboxes;
        Ok(stored
            .subscriptions
            .into_iter()
            .map(|(id, state)| {
                let mailbox = mailboxes.remove(&id);
                let known = Subscribed {
                    client_state: Secret::new(state),
                    mailbox,
                };
                (id, known)
            })
            .collect())
    }

    async fn save(&self, states: &HashMap<String, Subscribed>) -> anyhow::Result<()> {
        let stored = Stored {
            subscriptions: states
                .iter()
                .map(|(id, s)| (id.clone(), s.client_state.expose().to_owned()))
                .collect(),
            mailboxes: states
                .iter()
                .filter_map(|(id, s)| Some((id.clone(), s.mailbox.clone()?)))
                .collect(),
        };
        self.client
            .put_secret_value()
            .secret_id(&self.secret_id)
            .secret_string(serde_json::to_string(&stored)?)
            .send()
            .await
            .with_context(|| format!("writing secret {}", self.secret_id))?;
        Ok(())
    }
}
