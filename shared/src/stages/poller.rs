//! poller: per mailbox folder, a Graph delta round (the backstop to webhooks). It follows
//! `@odata.nextLink` to the `@odata.deltaLink`, keeps that whole link in state for the next
//! round, and queues every new message with attachments to `inbound`. Duplicates with the
//! webhook are harmless: ingest claims each mail once.

use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Serialize;
use tracing::info;

use crate::adapters::aws::AwsClients;
use crate::adapters::graph::Mailbox;
use crate::adapters::queue::Queue;
use crate::adapters::state::StateStore;
use crate::env::Env;
use crate::messages::{InboundMessage, MailSource, PollTrigger};

use super::{mailbox_from_env, new_correlation_id};

/// Guards against a delta round that never ends (a Graph or fake bug): pages per folder.
const MAX_PAGES: u32 = 10_000;

pub struct Poller {
    graph: Arc<Mailbox>,
    state: StateStore,
    inbound: Queue,
    folders: Vec<(String, String)>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct PollSummary {
    pub folders: usize,
    pub pages: u32,
    pub messages_seen: u32,
    pub queued: u32,
}

impl Poller {
    pub async fn from_env(env: &Env, clients: &AwsClients) -> anyhow::Result<Self> {
        Ok(Poller {
            graph: mailbox_from_env(env, clients).await?,
            state: StateStore::new(
                clients.dynamodb.clone(),
                env.required("CHARLIE_STATE_TABLE")?,
            ),
            inbound: Queue::new(
                clients.sqs.clone(),
                env.required("CHARLIE_INBOUND_QUEUE_URL")?,
            ),
            folders: parse_folders(env.required("CHARLIE_MAILBOXES")?)?,
        })
    }

    pub async fn poll(&self, trigger: PollTrigger) -> anyhow::Result<PollSummary> {
        let mut summary = PollSummary {
            folders: self.folders.len(),
            ..Default::default()
        };
        for (mailbox, folder) in &self.folders {
            self.poll_folder(mailbox, folder, &mut summary)
                .await
                .with_context(|| format!("delta round of {mailbox}/{folder}"))?;
        }
        info!(?trigger.scheduled_time, ?summary, "poll finished");
        Ok(summary)
    }

    async fn poll_folder(
        &self,
        mailbox: &str,
        folder: &str,
        summary: &mut PollSummary,
    ) -> anyhow::Result<()> {
        let pk = format!("DELTA#{mailbox}#{folder}");
        let stored = self.state.get_record(&pk, "link").await?;
        let mut url = stored
            .as_ref()
            .and_then(|d| d["delta_link"].as_str().map(str::to_owned))
            .unwrap_or_else(|| self.graph.delta_start_url(mailbox, folder, None));
        let mut pages = 0;
        loop {
            pages += 1;
            if pages > MAX_PAGES {
                bail!("more than {MAX_PAGES} delta pages without a deltaLink");
            }
            let page = self.graph.delta_page(&url).await?;
            summary.pages += 1;
            let mut batch = Vec::new();
            for entry in &page.value {
                summary.messages_seen += 1;
                if entry.removed.is_some() || !entry.has_attachments {
                    continue;
                }
                batch.push(InboundMessage::GraphMessage {
                    v: 1,
                    mailbox: mailbox.to_owned(),
                    message_id: entry.id.clone(),
                    source: MailSource::Poller,
                });
            }
            let correlation: Vec<String> = batch.iter().map(|_| new_correlation_id()).collect();
            let pairs: Vec<(&InboundMessage, &str)> = batch
                .iter()
                .zip(&correlation)
                .map(|(m, c)| (m, c.as_str()))
                .collect();
            self.inbound.send_all(&pairs).await?;
            summary.queued += batch.len() as u32;
            match (page.next_link, page.delta_link) {
                (Some(next), _) => url = next,
                (None, Some(delta)) => {
                    let data = serde_json::json!({ "delta_link": delta, "saved_at": chrono::Utc::now().to_rfc3339() });
                    self.state.put_record(&pk, "link", &data, None).await?;
                    return Ok(());
                }
                (None, None) => {
                    bail!("a delta page had neither @odata.nextLink nor @odata.deltaLink")
                }
            }
        }
    }
}

/// `CHARLIE_MAILBOXES`: comma-separated `user@domain/folder` entries.
fn parse_folders(raw: &str) -> anyhow::Result<Vec<(String, String)>> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| match entry.split_once('/') {
            Some((user, folder)) if !user.is_empty() && !folder.is_empty() => {
                Ok((user.to_owned(), folder.to_owned()))
            }
            _ => bail!("CHARLIE_MAILBOXES entry {entry:?} is not user@domain/folder"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_folders_parse_and_bad_entries_are_named() {
        assert_eq!(
            parse_folders("a@x.example/inbox, b@x.example/Exports").unwrap(),
            vec![
                ("a@x.example".into(), "inbox".into()),
                ("b@x.example".into(), "Exports".into())
            ]
        );
        let err = parse_folders("a@x.example").unwrap_err().to_string();
        assert!(err.contains("a@x.example"), "{err}");
    }
}
