//! poller: keeps every configured mailbox folder watched, and is the backstop to webhooks.
//!
//! On its schedule, per folder:
//! - **Subscription.** Created when missing (with `lifecycleNotificationUrl` and a fresh random
//!   `clientState`, kept in the client-state secret for the webhook), renewed when fewer than
//!   `CHARLIE_SUBSCRIPTION_RENEW_HOURS` remain (mail subscriptions last just under 7 days), and
//!   replaced when Graph answers 404. Its id and expiry are kept in state.
//! - **Delta round.** Follows `@odata.nextLink` to the `@odata.deltaLink` and keeps that whole
//!   link for the next round; queues every new message with attachments to `inbound` (ingest
//!   claims each mail once, so duplicates with the webhook are harmless); ignores `@removed`.
//!   A fresh sync (none yet, or Graph answered `410 Gone` / `syncStateNotFound`) covers only
//!   mail received in the last `CHARLIE_RESYNC_LOOKBACK_HOURS`.
//!
//! From the `lifecycle` queue (the webhook's lifecycle events): `reauthorizationRequired`
//! renews the subscription, `subscriptionRemoved` recreates it and resyncs the folder, `missed`
//! resyncs it.
//!
//! One folder is worked on by one invocation at a time (a state lock): a scheduled round skips
//! a busy folder; lifecycle work on a busy folder fails and is retried by SQS.

use std::sync::Arc;

use anyhow::{Context, bail};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use tracing::{error, info, warn};

use crate::adapters::aws::AwsClients;
use crate::adapters::client_state::{ClientStates, fresh_client_state};
use crate::adapters::graph::{MAX_MAIL_SUBSCRIPTION_MINUTES, Mailbox, SubscriptionRequest};
use crate::adapters::queue::Queue;
use crate::adapters::state::{Claim, StateStore};
use crate::env::Env;
use crate::messages::{InboundMessage, LifecycleEvent, LifecycleWork, MailSource, PollTrigger};
use crate::sqs_batch;

use super::{mailbox_from_env, queue_new_work};

/// Guards against a delta round that never ends (a Graph or fake bug): pages per folder.
const MAX_PAGES: u32 = 10_000;
/// A new or renewed subscription asks for this long: Graph's maximum for mail, less a margin
/// for clock skew.
const SUBSCRIPTION_MINUTES: i64 = MAX_MAIL_SUBSCRIPTION_MINUTES - 30;
const _: () = assert!(SUBSCRIPTION_MINUTES > 6 * 24 * 60, "close to a week");

pub struct Poller {
    graph: Arc<Mailbox>,
    state: StateStore,
    inbound: Queue,
    client_states: ClientStates,
    folders: Vec<(String, String)>,
    /// Where Graph posts change and lifecycle notifications; `None`: delta rounds only.
    urls: Option<(String, String)>,
    lookback: Duration,
    renew_before: Duration,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct PollSummary {
    pub folders: usize,
    pub pages: u32,
    pub messages_seen: u32,
    pub queued: u32,
    /// Fresh syncs after Graph forgot a delta link.
    pub resyncs: u32,
    pub subscriptions_created: u32,
    pub subscriptions_renewed: u32,
    /// Folders skipped because another invocation was working on them.
    pub busy: u32,
}

/// A folder's subscription as kept in state (`SUB#{mailbox}#{folder}` / `subscription`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct SubscriptionRecord {
    id: String,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    #[serde(default)]
    renewed_at: Option<DateTime<Utc>>,
}

impl Poller {
    pub async fn from_env(env: &Env, clients: &AwsClients) -> anyhow::Result<Self> {
        let urls = match (
            env.get("CHARLIE_NOTIFICATION_URL"),
            env.get("CHARLIE_LIFECYCLE_URL"),
        ) {
            (Some(n), Some(l)) if !n.is_empty() && !l.is_empty() => {
                Some((n.to_owned(), l.to_owned()))
            }
            (None, None) => None,
            _ => bail!("set both CHARLIE_NOTIFICATION_URL and CHARLIE_LIFECYCLE_URL, or neither"),
        };
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
            client_states: ClientStates::new(
                clients.secrets.clone(),
                env.required("CHARLIE_CLIENT_STATE_SECRET")?,
            ),
            folders: parse_folders(env.required("CHARLIE_MAILBOXES")?)?,
            urls,
            lookback: Duration::hours(env.in_range_or(
                "CHARLIE_RESYNC_LOOKBACK_HOURS",
                72,
                1..=24 * 30,
            )?),
            renew_before: Duration::hours(env.in_range_or(
                "CHARLIE_SUBSCRIPTION_RENEW_HOURS",
                72,
                1..=160,
            )?),
        })
    }

    /// The scheduled round over every folder. Every folder is tried; the first failure is
    /// returned afterwards, so one broken mailbox does not starve the others.
    pub async fn poll(&self, trigger: PollTrigger) -> anyhow::Result<PollSummary> {
        let now = trigger.scheduled_time.unwrap_or_else(Utc::now);
        let mut summary = PollSummary {
            folders: self.folders.len(),
            ..Default::default()
        };
        let mut first_error = None;
        for (mailbox, folder) in &self.folders {
            let Some(lock) = self.lock(mailbox, folder).await? else {
                info!(
                    mailbox,
                    folder, "folder busy in another invocation: skipped"
                );
                summary.busy += 1;
                continue;
            };
            let result = self
                .poll_folder(mailbox, folder, now, &mut summary)
                .await
                .with_context(|| format!("{mailbox}/{folder}"));
            self.state.release_or_let_expire(&lock).await;
            if let Err(e) = result {
                error!(error = %format!("{e:#}"), mailbox, folder, "folder round failed");
                first_error.get_or_insert(e);
            }
        }
        info!(?trigger.scheduled_time, ?summary, "poll finished");
        match first_error {
            Some(e) => Err(e.context(format!("poll round ({summary:?})"))),
            None => Ok(summary),
        }
    }

    async fn poll_folder(
        &self,
        mailbox: &str,
        folder: &str,
        now: DateTime<Utc>,
        summary: &mut PollSummary,
    ) -> anyhow::Result<()> {
        // The delta round runs even when the subscription could not be kept: it is the
        // backstop. The subscription's failure is reported after it.
        let subscribed = self
            .keep_subscription(mailbox, folder, false, summary)
            .await;
        self.delta_round(mailbox, folder, now, summary).await?;
        subscribed.context("keeping the subscription")
    }

    /// Lifecycle work queued by the webhook.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        sqs_batch::process(event, |m| self.handle_work(m)).await
    }

    async fn handle_work(&self, msg: SqsMessage) -> anyhow::Result<()> {
        let work: LifecycleWork = serde_json::from_str(msg.body.as_deref().unwrap_or_default())
            .context("not a lifecycle work message")?;
        let Some(record) = self
            .state
            .get_record(&format!("SUBID#{}", work.subscription_id), "folder")
            .await?
        else {
            // The webhook only passes subscriptions it knows, so this one was replaced since.
            warn!(
                subscription_id = work.subscription_id,
                "lifecycle event for a subscription no longer in use: ignored"
            );
            return Ok(());
        };
        let (Some(mailbox), Some(folder)) = (record["mailbox"].as_str(), record["folder"].as_str())
        else {
            bail!("SUBID#{} names no folder", work.subscription_id);
        };
        let Some(lock) = self.lock(mailbox, folder).await? else {
            bail!("{mailbox}/{folder} is busy in another invocation; retried later");
        };
        let mut summary = PollSummary::default();
        let result = async {
            match work.event {
                LifecycleEvent::ReauthorizationRequired => {
                    self.keep_subscription(mailbox, folder, false, &mut summary)
                        .await?;
                    // Renewal at any age: that is what reauthorization asks for.
                    if summary.subscriptions_created + summary.subscriptions_renewed == 0 {
                        self.renew_current(mailbox, folder, &mut summary).await?;
                    }
                }
                LifecycleEvent::SubscriptionRemoved => {
                    self.keep_subscription(mailbox, folder, true, &mut summary)
                        .await?;
                    self.delta_round(mailbox, folder, Utc::now(), &mut summary)
                        .await?;
                }
                LifecycleEvent::Missed => {
                    self.delta_round(mailbox, folder, Utc::now(), &mut summary)
                        .await?;
                }
            }
            anyhow::Ok(())
        }
        .await;
        self.state.release_or_let_expire(&lock).await;
        info!(mailbox, folder, event = ?work.event, ?summary, "lifecycle work done");
        result
    }

    async fn lock(&self, mailbox: &str, folder: &str) -> anyhow::Result<Option<String>> {
        let pk = format!("LOCK#POLL#{mailbox}#{folder}");
        match self
            .state
            .claim(&pk, Utc::now(), Duration::minutes(15), Duration::days(1))
            .await?
        {
            Claim::Acquired => Ok(Some(pk)),
            Claim::InProgressElsewhere | Claim::AlreadyDone(_) => Ok(None),
        }
    }

    /// Creates the folder's subscription when it has none (or `replace`), renews it when it
    /// expires within `renew_before`, and replaces it when Graph no longer knows it.
    async fn keep_subscription(
        &self,
        mailbox: &str,
        folder: &str,
        replace: bool,
        summary: &mut PollSummary,
    ) -> anyhow::Result<()> {
        if self.urls.is_none() {
            return Ok(());
        }
        let current = self.subscription(mailbox, folder).await?;
        if let Some(sub) = &current
            && !replace
        {
            if sub.expires_at - Utc::now() > self.renew_before {
                return Ok(());
            }
            if self.renew_current(mailbox, folder, summary).await? {
                return Ok(());
            }
        }
        self.create_subscription(mailbox, folder, current.as_ref().map(|s| s.id.as_str()))
            .await?;
        summary.subscriptions_created += 1;
        Ok(())
    }

    /// Renews the folder's subscription; `Ok(false)` when Graph answered 404 (it is gone).
    async fn renew_current(
        &self,
        mailbox: &str,
        folder: &str,
        summary: &mut PollSummary,
    ) -> anyhow::Result<bool> {
        let Some(mut sub) = self.subscription(mailbox, folder).await? else {
            return Ok(false);
        };
        let expires = Utc::now() + Duration::minutes(SUBSCRIPTION_MINUTES);
        match self.graph.renew_subscription(&sub.id, expires).await {
            Ok(renewed) => {
                sub.expires_at = renewed.expires;
                sub.renewed_at = Some(Utc::now());
                self.save_subscription(mailbox, folder, &sub).await?;
                info!(mailbox, folder, subscription_id = sub.id, expires = %sub.expires_at, "subscription renewed");
                summary.subscriptions_renewed += 1;
                Ok(true)
            }
            Err(e) if e.status() == Some(404) => {
                warn!(
                    mailbox,
                    folder,
                    subscription_id = sub.id,
                    "Graph no longer knows the subscription: replacing it"
                );
                Ok(false)
            }
            Err(e) => Err(e).context("renewing the subscription"),
        }
    }

    async fn create_subscription(
        &self,
        mailbox: &str,
        folder: &str,
        old: Option<&str>,
    ) -> anyhow::Result<()> {
        let (notification_url, lifecycle_url) = self.urls.as_ref().expect("checked by caller");
        let client_state = fresh_client_state();
        let resource = format!("users/{mailbox}/mailFolders('{folder}')/messages");
        let created = self
            .graph
            .create_subscription(&SubscriptionRequest {
                notification_url,
                lifecycle_url,
                resource: &resource,
                expires: Utc::now() + Duration::minutes(SUBSCRIPTION_MINUTES),
                client_state: &client_state,
            })
            .await
            .context("creating the subscription")?;
        // The webhook must know the clientState before notifications can count; without it
        // the subscription is useless, so it is deleted again.
        let drop: Vec<&str> = old.into_iter().collect();
        if let Err(e) = self
            .client_states
            .put(&self.state, &created.id, &client_state, &drop)
            .await
        {
            if let Err(d) = self.graph.delete_subscription(&created.id).await {
                warn!(error = %d, "could not delete the subscription whose clientState was not stored");
            }
            return Err(e.context("storing the new subscription's clientState"));
        }
        let record = SubscriptionRecord {
            id: created.id.clone(),
            expires_at: created.expires,
            created_at: Utc::now(),
            renewed_at: None,
        };
        self.save_subscription(mailbox, folder, &record).await?;
        self.state
            .put_record(
                &format!("SUBID#{}", created.id),
                "folder",
                &serde_json::json!({ "mailbox": mailbox, "folder": folder }),
                None,
            )
            .await?;
        if let Some(old) = old {
            // Graph may still have it (a replace after `subscriptionRemoved` finds none).
            match self.graph.delete_subscription(old).await {
                Ok(()) => {}
                Err(e) if e.status() == Some(404) => {}
                Err(e) => {
                    warn!(error = %e, subscription_id = old, "could not delete the replaced subscription; it expires by itself")
                }
            }
        }
        info!(mailbox, folder, subscription_id = created.id, expires = %created.expires, "subscription created");
        Ok(())
    }

    async fn subscription(
        &self,
        mailbox: &str,
        folder: &str,
    ) -> anyhow::Result<Option<SubscriptionRecord>> {
        self.state
            .get_record(&format!("SUB#{mailbox}#{folder}"), "subscription")
            .await?
            .map(|v| serde_json::from_value(v).context("subscription record"))
            .transpose()
    }

    async fn save_subscription(
        &self,
        mailbox: &str,
        folder: &str,
        record: &SubscriptionRecord,
    ) -> anyhow::Result<()> {
        self.state
            .put_record(
                &format!("SUB#{mailbox}#{folder}"),
                "subscription",
                &serde_json::to_value(record)?,
                None,
            )
            .await
    }

    /// One delta round from the stored link (or a fresh sync over the look-back window).
    async fn delta_round(
        &self,
        mailbox: &str,
        folder: &str,
        now: DateTime<Utc>,
        summary: &mut PollSummary,
    ) -> anyhow::Result<()> {
        let pk = format!("DELTA#{mailbox}#{folder}");
        let stored = self.state.get_record(&pk, "link").await?;
        let since = now - self.lookback;
        let fresh = || self.graph.delta_start_url(mailbox, folder, Some(since));
        let mut restarted = false;
        let mut url = stored
            .as_ref()
            .and_then(|d| d["delta_link"].as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                restarted = true;
                fresh()
            });
        let mut pages = 0;
        loop {
            pages += 1;
            if pages > MAX_PAGES {
                bail!("more than {MAX_PAGES} delta pages without a deltaLink");
            }
            let page = match self.graph.delta_page(&url).await {
                Ok(page) => page,
                Err(e) if e.is_expired_sync_state() && !restarted => {
                    warn!(mailbox, folder, error = %e, since = %since, "Graph forgot the delta link: a fresh sync over the look-back window");
                    restarted = true;
                    summary.resyncs += 1;
                    url = fresh();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
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
                    source: if restarted && stored.is_some() {
                        MailSource::Resync
                    } else {
                        MailSource::Poller
                    },
                });
            }
            if let (_, Some(e)) = queue_new_work(&self.inbound, &batch).await {
                return Err(e);
            }
            summary.queued += batch.len() as u32;
            match (page.next_link, page.delta_link) {
                (Some(next), _) => url = next,
                (None, Some(delta)) => {
                    let data = serde_json::json!({ "delta_link": delta, "saved_at": Utc::now().to_rfc3339() });
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
