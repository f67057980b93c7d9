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

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use tracing::{error, info, warn};

use crate::failure::OrPermanent;
use crate::idempotency::exclusive;
use crate::invocation::Invocation;
use crate::messages::{FoundBy, InboundMessage, LifecycleEvent, LifecycleWork, PollTrigger};
use crate::ports::{
    Claims, ClientStateStore, DeadLetters, MAX_MAIL_SUBSCRIPTION_MINUTES, MailSource, StateRecords,
    Subscribed, SubscriptionRequest, Subscriptions, WorkQueue,
};
use crate::secret::Secret;
use crate::state::{
    self, CLIENT_STATES_LOCK, DeltaLink, RecordKey, SubscribedFolder, SubscriptionRecord,
};

/// Guards against a delta round that never ends (a Graph or fake bug): pages per folder.
const MAX_PAGES: u32 = 10_000;
/// A new or renewed subscription asks for this long: Graph's maximum for mail, less a margin
/// for clock skew.
const SUBSCRIPTION_MINUTES: i64 = MAX_MAIL_SUBSCRIPTION_MINUTES - 30;
const _: () = assert!(SUBSCRIPTION_MINUTES > 6 * 24 * 60, "close to a week");
/// How long a crashed client-state writer blocks the others.
const CLIENT_STATES_HOLD: Duration = Duration::seconds(30);
/// How long a client-state writer waits for its turn before giving up (its caller retries).
const CLIENT_STATES_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

pub struct Poller {
    pub mail: Arc<dyn MailSource>,
    pub subscriptions: Arc<dyn Subscriptions>,
    pub claims: Arc<dyn Claims>,
    pub records: Arc<dyn StateRecords>,
    pub inbound: Arc<dyn WorkQueue>,
    pub client_states: Arc<dyn ClientStateStore>,
    pub dead_letters: Arc<dyn DeadLetters>,
    pub folders: Vec<(String, String)>,
    /// Where Graph posts change and lifecycle notifications; `None`: delta rounds only.
    pub urls: Option<(String, String)>,
    pub lookback: Duration,
    pub renew_before: Duration,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct PollSummary {
    pub folders: usize,
    pub pages: u32,
    pub messages_seen: u32,
    pub queued: u32,
    /// Found while intake was paused: recorded, queued on resume.
    pub parked: u32,
    /// Fresh syncs after Graph forgot a delta link.
    pub resyncs: u32,
    pub subscriptions_created: u32,
    pub subscriptions_renewed: u32,
    /// Folders skipped because another invocation was working on them.
    pub busy: u32,
    /// Delta rounds stopped before the invocation's deadline (they go on from the saved page).
    pub unfinished: u32,
    /// The shortest remaining lifetime among the folders' subscriptions after this round
    /// (recorded as `SubscriptionSecondsToExpiry`).
    pub subscription_seconds_left: Option<i64>,
}

#[cfg(feature = "poller")]
impl Poller {
    pub async fn from_env(env: &crate::env::Env) -> anyhow::Result<Self> {
        use super::wiring;
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
        let aws = crate::adapters::aws::AwsConfig::from_env(env).await;
        let graph = wiring::graph(&aws, env).await?;
        let state = wiring::state(&aws, env)?;
        Ok(Poller {
            mail: graph.clone(),
            subscriptions: graph,
            claims: state.clone(),
            records: state,
            inbound: wiring::queue(&aws, env, "CHARLIE_INBOUND_QUEUE_URL")?,
            client_states: wiring::client_states(&aws, env)?,
            dead_letters: wiring::dead_letters(&aws, env)?,
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
}

#[async_trait]
impl super::Handler for Poller {
    /// Its schedule, or the `lifecycle` queue.
    async fn invoke(
        &self,
        event: serde_json::Value,
        invocation: &Invocation,
    ) -> anyhow::Result<serde_json::Value> {
        if event.get("Records").is_some() {
            return super::invoke_batch(self, event, invocation).await;
        }
        let trigger = super::parse_event(event)?;
        Ok(serde_json::to_value(
            Box::pin(self.poll(trigger, invocation)).await?,
        )?)
    }
}

#[async_trait]
impl super::MessageHandler for Poller {
    const STAGE: &'static str = "poller";

    fn dead_letters(&self) -> &dyn DeadLetters {
        self.dead_letters.as_ref()
    }

    fn records(&self) -> &dyn StateRecords {
        self.records.as_ref()
    }

    async fn handle_message(&self, msg: SqsMessage, invocation: &Invocation) -> anyhow::Result<()> {
        self.handle_work(msg, invocation).await
    }
}

impl Poller {
    /// The scheduled round over every folder. Every folder is tried; the first failure is
    /// returned afterwards, so one broken mailbox does not starve the others.
    pub async fn poll(
        &self,
        trigger: PollTrigger,
        invocation: &Invocation,
    ) -> anyhow::Result<PollSummary> {
        let now = trigger.scheduled_time.unwrap_or_else(Utc::now);
        let mut summary = PollSummary {
            folders: self.folders.len(),
            ..Default::default()
        };
        let mut first_error = None;
        for (configured, folder) in &self.folders {
            // By its object id from here on: change notifications name mailboxes so, and the
            // same mail must be claimed under the same key whichever path found it.
            let mailbox = match self.mail.mailbox_id(configured).await {
                Ok(id) => id,
                Err(e) => {
                    let e =
                        anyhow::Error::new(e).context(format!("resolving mailbox {configured}"));
                    error!(error = %format!("{e:#}"), mailbox = configured, folder, "folder round failed");
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let mailbox = mailbox.as_str();
            let result = exclusive(
                self.claims.as_ref(),
                &state::poll_lock(mailbox, folder),
                invocation.deadline,
                self.poll_folder(mailbox, folder, now, invocation, &mut summary),
            )
            .await
            .with_context(|| format!("{configured} ({mailbox})/{folder}"));
            match result {
                Ok(Some(())) => {}
                Ok(None) => {
                    info!(
                        mailbox,
                        folder, "folder busy in another invocation: skipped"
                    );
                    summary.busy += 1;
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), mailbox, folder, "folder round failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(left) = summary.subscription_seconds_left {
            crate::metrics::level(
                "poller",
                crate::metrics::name::SUBSCRIPTION_SECONDS_TO_EXPIRY,
                left as f64,
            );
        }
        self.watch_relay_outboxes(now).await;
        info!(?trigger.scheduled_time, ?summary, "poll finished");
        match first_error {
            Some(e) => Err(e.context(format!("poll round ({summary:?})"))),
            None => Ok(summary),
        }
    }

    /// How long report mail has waited for a relay to send it (`RelayOutboxOldestAge`, 0 when
    /// none waits; nothing when the deployment has no relay), the watch the alarm on a relay
    /// that stopped sending reads. Its failure is logged: it never fails a poll.
    async fn watch_relay_outboxes(&self, now: DateTime<Utc>) {
        match crate::relay_outbox::overview(self.records.as_ref()).await {
            Ok(relays) if relays.is_empty() => {}
            Ok(relays) => {
                let mut oldest = 0i64;
                for (relay, w) in &relays {
                    if let Some(since) = w.oldest {
                        let age = (now - since).num_seconds().max(0);
                        oldest = oldest.max(age);
                        info!(
                            relay = %relay.id,
                            waiting = w.count,
                            stuck = w.stuck.as_ref().map(|m| m.message_id.as_str()),
                            oldest_seconds = age,
                            last_seen_at = relay.last_seen_at.as_deref().unwrap_or("never"),
                            "report mail waits for its relay"
                        );
                    }
                }
                crate::metrics::level(
                    "poller",
                    crate::metrics::name::RELAY_OUTBOX_OLDEST_AGE,
                    oldest as f64,
                );
            }
            Err(e) => warn!(error = %format!("{e:#}"), "the relays' outboxes could not be read"),
        }
    }

    async fn poll_folder(
        &self,
        mailbox: &str,
        folder: &str,
        now: DateTime<Utc>,
        invocation: &Invocation,
        summary: &mut PollSummary,
    ) -> anyhow::Result<()> {
        // The delta round runs even when the subscription could not be kept: it is the
        // backstop. The subscription's failure is reported after it.
        let subscribed = self
            .keep_subscription(mailbox, folder, false, invocation, summary)
            .await;
        self.delta_round(mailbox, folder, now, invocation, summary)
            .await?;
        subscribed.context("keeping the subscription")
    }

    /// Lifecycle work queued by the webhook.
    pub async fn handle(&self, event: SqsEvent, invocation: &Invocation) -> SqsBatchResponse {
        super::handle_batch(self, event, invocation).await
    }

    async fn handle_work(&self, msg: SqsMessage, invocation: &Invocation) -> anyhow::Result<()> {
        let body = msg.body.as_deref().unwrap_or_default();
        if let Ok(asked) = serde_json::from_str::<crate::messages::PollNow>(body) {
            let trigger = crate::messages::PollTrigger {
                v: 1,
                scheduled_time: None,
            };
            let summary = Box::pin(self.poll(trigger, invocation)).await?;
            info!(
                by = asked.requested_by.as_deref().unwrap_or("-"),
                ?summary,
                "poll asked for: round done"
            );
            return Ok(());
        }
        let work: LifecycleWork = serde_json::from_str(body)
            .context("not a lifecycle work message")
            .or_permanent()?;
        let Some(SubscribedFolder { mailbox, folder }) = self
            .records
            .get_record(&RecordKey::subscribed_folder(&work.subscription_id))
            .await?
        else {
            // The webhook only passes subscriptions it knows, so this one was replaced since.
            warn!(
                subscription_id = work.subscription_id,
                "lifecycle event for a subscription no longer in use: ignored"
            );
            return Ok(());
        };
        let (mailbox, folder) = (mailbox.as_str(), folder.as_str());
        let mut summary = PollSummary::default();
        let done = exclusive(
            self.claims.as_ref(),
            &state::poll_lock(mailbox, folder),
            invocation.deadline,
            self.lifecycle_work(mailbox, folder, work.event, invocation, &mut summary),
        )
        .await?;
        if done.is_none() {
            return Err(crate::failure::busy(format!(
                "{mailbox}/{folder} is busy in another invocation; retried later"
            )));
        }
        info!(mailbox, folder, event = ?work.event, ?summary, "lifecycle work done");
        Ok(())
    }

    async fn lifecycle_work(
        &self,
        mailbox: &str,
        folder: &str,
        event: LifecycleEvent,
        invocation: &Invocation,
        summary: &mut PollSummary,
    ) -> anyhow::Result<()> {
        match event {
            LifecycleEvent::ReauthorizationRequired => {
                self.keep_subscription(mailbox, folder, false, invocation, summary)
                    .await?;
                // Renewal at any age: that is what reauthorization asks for.
                if summary.subscriptions_created + summary.subscriptions_renewed == 0 {
                    self.renew_current(mailbox, folder, summary).await?;
                }
            }
            LifecycleEvent::SubscriptionRemoved => {
                self.keep_subscription(mailbox, folder, true, invocation, summary)
                    .await?;
                self.delta_round(mailbox, folder, Utc::now(), invocation, summary)
                    .await?;
            }
            LifecycleEvent::Missed => {
                self.delta_round(mailbox, folder, Utc::now(), invocation, summary)
                    .await?;
            }
        }
        Ok(())
    }

    /// Creates the folder's subscription when it has none (or `replace`), renews it when it
    /// expires within `renew_before`, and replaces it when Graph no longer knows it.
    async fn keep_subscription(
        &self,
        mailbox: &str,
        folder: &str,
        replace: bool,
        invocation: &Invocation,
        summary: &mut PollSummary,
    ) -> anyhow::Result<()> {
        if self.urls.is_none() {
            return Ok(());
        }
        self.keep_subscription_now(mailbox, folder, replace, invocation, summary)
            .await?;
        if let Some(sub) = self.subscription(mailbox, folder).await? {
            let left = (sub.expires_at - Utc::now()).num_seconds();
            summary.subscription_seconds_left = Some(
                summary
                    .subscription_seconds_left
                    .map_or(left, |l| l.min(left)),
            );
        }
        Ok(())
    }

    async fn keep_subscription_now(
        &self,
        mailbox: &str,
        folder: &str,
        replace: bool,
        invocation: &Invocation,
        summary: &mut PollSummary,
    ) -> anyhow::Result<()> {
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
        self.create_subscription(
            mailbox,
            folder,
            current.as_ref().map(|s| s.id.as_str()),
            invocation,
        )
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
        match self.subscriptions.renew(&sub.id, expires).await {
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
        invocation: &Invocation,
    ) -> anyhow::Result<()> {
        let (notification_url, lifecycle_url) = self.urls.as_ref().expect("checked by caller");
        let client_state = fresh_client_state();
        let resource = format!("users/{mailbox}/mailFolders('{folder}')/messages");
        let created = self
            .subscriptions
            .create(&SubscriptionRequest {
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
        if let Err(e) = keep_client_state(
            self.claims.as_ref(),
            self.client_states.as_ref(),
            &created.id,
            &Subscribed::new(client_state, mailbox),
            &drop,
            invocation,
        )
        .await
        {
            if let Err(d) = self.subscriptions.delete(&created.id).await {
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
        let folder_record = SubscribedFolder {
            mailbox: mailbox.to_owned(),
            folder: folder.to_owned(),
        };
        self.records
            .put_record(
                &RecordKey::subscribed_folder(&created.id),
                &folder_record,
                None,
            )
            .await?;
        if let Some(old) = old {
            // Graph may still have it (a replace after `subscriptionRemoved` finds none).
            match self.subscriptions.delete(old).await {
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
        self.records
            .get_record(&RecordKey::subscription(mailbox, folder))
            .await
    }

    async fn save_subscription(
        &self,
        mailbox: &str,
        folder: &str,
        record: &SubscriptionRecord,
    ) -> anyhow::Result<()> {
        let index = state::folder_index_sk("SUB", mailbox, folder);
        self.records
            .put_record(
                &RecordKey::subscription(mailbox, folder),
                record,
                Some((state::FOLDERS_INDEX, &index)),
            )
            .await
    }

    /// One delta round from the stored link (or a fresh sync over the look-back window).
    async fn delta_round(
        &self,
        mailbox: &str,
        folder: &str,
        now: DateTime<Utc>,
        invocation: &Invocation,
        summary: &mut PollSummary,
    ) -> anyhow::Result<()> {
        let key = RecordKey::delta(mailbox, folder);
        let stored = self.records.get_record(&key).await?;
        let since = now - self.lookback;
        let fresh = || self.mail.delta_start_url(mailbox, folder, Some(since));
        let mut restarted = false;
        let mut url = stored
            .as_ref()
            .map(|d| d.delta_link.clone())
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
            let page = match self.mail.delta_page(&url).await {
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
                        FoundBy::Resync
                    } else {
                        FoundBy::Poller
                    },
                });
            }
            // Paused intake: the mails found are parked, and the delta link still advances.
            let gate = crate::intake_control::PauseGate::uncached(self.records.clone());
            if !batch.is_empty() && gate.paused().await {
                gate.park(&batch, "poller").await?;
                summary.parked += batch.len() as u32;
            } else {
                if let (_, Some(e)) = self.inbound.send_new_work(&batch).await {
                    return Err(e);
                }
                summary.queued += batch.len() as u32;
            }
            // The position, page by page: a backlog longer than one invocation goes on from
            // here next time instead of starting over.
            let position = page.next_link.clone().or(page.delta_link.clone());
            if let Some(link) = position {
                let link = DeltaLink {
                    delta_link: link,
                    saved_at: Utc::now().to_rfc3339(),
                };
                let index = state::folder_index_sk("DELTA", mailbox, folder);
                self.records
                    .put_record(&key, &link, Some((state::FOLDERS_INDEX, &index)))
                    .await?;
            }
            match (page.next_link, page.delta_link) {
                (Some(next), _) => {
                    if invocation.remaining() < crate::sqs_batch::STOP_MARGIN {
                        warn!(
                            mailbox,
                            folder,
                            pages,
                            "stopping the delta round before the deadline; it goes on from the saved page"
                        );
                        summary.unfinished += 1;
                        return Ok(());
                    }
                    url = next;
                }
                (None, Some(_)) => return Ok(()),
                (None, None) => {
                    bail!("a delta page had neither @odata.nextLink nor @odata.deltaLink")
                }
            }
        }
    }
}

/// Records `subscription`'s clientState and mailbox and forgets the ones in `drop`.
///
/// The store has no conditional write, and every write reads the whole map and puts it back,
/// so writers (each folder's poll, lifecycle work) take turns under a lock; otherwise two
/// subscriptions created at once would lose one clientState, and every notification of that
/// subscription would be dropped as unknown.
pub async fn keep_client_state(
    claims: &dyn Claims,
    store: &dyn ClientStateStore,
    subscription: &str,
    client_state: &Subscribed,
    drop: &[&str],
    invocation: &Invocation,
) -> anyhow::Result<()> {
    let waited = std::time::Instant::now();
    loop {
        let until = (Utc::now() + CLIENT_STATES_HOLD).min(invocation.deadline);
        let write = async {
            let mut states: HashMap<String, Subscribed> = store.load().await?;
            for d in drop {
                states.remove(*d);
            }
            states.insert(subscription.to_owned(), client_state.clone());
            store.save(&states).await
        };
        if exclusive(claims, CLIENT_STATES_LOCK, until, write)
            .await?
            .is_some()
        {
            return Ok(());
        }
        if waited.elapsed() >= CLIENT_STATES_WAIT {
            bail!(
                "another writer held {CLIENT_STATES_LOCK} for over {} s",
                CLIENT_STATES_WAIT.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A fresh clientState: 32 random bytes, hex (Graph allows up to 128 characters).
pub fn fresh_client_state() -> Secret {
    Secret::new(hex::encode(rand::random::<[u8; 32]>()))
}

/// `CHARLIE_MAILBOXES`: comma-separated `user@domain/folder` entries.
pub fn parse_folders(raw: &str) -> anyhow::Result<Vec<(String, String)>> {
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
    use crate::adapters::memory::{
        MemoryClaims, MemoryClientStates, MemoryDeadLetters, MemoryMailbox, MemoryQueue,
        MemoryState,
    };
    use crate::idempotency::try_lock;
    use crate::stages::testkit::{self, MAILBOX, failures, invocation, sqs_event};

    struct World {
        mail: Arc<MemoryMailbox>,
        claims: Arc<MemoryClaims>,
        records: Arc<MemoryState>,
        inbound: Arc<MemoryQueue>,
        client_states: Arc<MemoryClientStates>,
        dead_letters: Arc<MemoryDeadLetters>,
        poller: Poller,
    }

    fn world() -> World {
        let (mail, claims, records) = (
            Arc::<MemoryMailbox>::default(),
            Arc::default(),
            Arc::default(),
        );
        let (inbound, client_states, dead_letters) =
            (Arc::default(), Arc::default(), Arc::default());
        let poller = Poller {
            mail: Arc::clone(&mail) as _,
            subscriptions: Arc::clone(&mail) as _,
            claims: Arc::clone(&claims) as _,
            records: Arc::clone(&records) as _,
            inbound: Arc::clone(&inbound) as _,
            client_states: Arc::clone(&client_states) as _,
            dead_letters: Arc::clone(&dead_letters) as _,
            folders: vec![(MAILBOX.into(), "inbox".into())],
            urls: Some((
                "https://hooks.example/graph/notifications".into(),
                "https://hooks.example/graph/lifecycle".into(),
            )),
            lookback: Duration::hours(72),
            renew_before: Duration::hours(72),
        };
        World {
            mail,
            claims,
            records,
            inbound,
            client_states,
            dead_letters,
            poller,
        }
    }

    fn trigger(at: &str) -> PollTrigger {
        PollTrigger {
            v: 1,
            scheduled_time: Some(at.parse().unwrap()),
        }
    }

    fn queued_ids(q: &MemoryQueue) -> Vec<String> {
        q.bodies::<InboundMessage>()
            .into_iter()
            .filter_map(|m| match m {
                InboundMessage::GraphMessage { message_id, .. } => Some(message_id),
                InboundMessage::Continuation { .. } | InboundMessage::Reprocess { .. } => None,
            })
            .collect()
    }

    fn lifecycle(subscription_id: &str, event: &str) -> String {
        serde_json::json!({"v": 1, "subscription_id": subscription_id, "event": event}).to_string()
    }

    #[tokio::test]
    async fn the_first_round_subscribes_and_queues_each_mail_with_attachments_once() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 1));
        let mut note = testkit::ib_calls_mail("m-note", "2024-03-14", 1);
        note.attachments.clear();
        w.mail.deliver(note);
        let summary = w
            .poller
            .poll(trigger("2024-03-15T00:10:00Z"), &invocation())
            .await
            .unwrap();
        assert_eq!(
            (
                summary.subscriptions_created,
                summary.messages_seen,
                summary.queued
            ),
            (1, 2, 1)
        );
        assert_eq!(queued_ids(&w.inbound), vec!["m-1"]);
        let sub = &w.mail.subscriptions()[0];
        assert_eq!(
            sub.resource,
            "users/ops-reports@contoso.example/mailFolders('inbox')/messages"
        );
        let states = w.client_states.load().await.unwrap();
        assert_eq!(
            states[&sub.id].client_state.expose().len(),
            64,
            "a fresh clientState for the webhook"
        );
        let records: &dyn StateRecords = w.records.as_ref();
        let folder = records
            .get_record(&RecordKey::subscribed_folder(&sub.id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (folder.mailbox.as_str(), folder.folder.as_str()),
            (MAILBOX, "inbox")
        );
        // The next round reads from the kept delta link: only what arrived since.
        w.mail
            .deliver(testkit::ib_calls_mail("m-2", "2024-03-15", 1));
        let summary = w
            .poller
            .poll(trigger("2024-03-15T00:15:00Z"), &invocation())
            .await
            .unwrap();
        assert_eq!((summary.subscriptions_created, summary.queued), (0, 1));
        assert_eq!(queued_ids(&w.inbound), vec!["m-1", "m-2"]);
    }

    #[tokio::test]
    async fn an_expired_delta_link_starts_a_fresh_sync_over_the_look_back_window() {
        let w = world();
        w.mail
            .deliver(testkit::ib_calls_mail("m-old", "2024-03-01", 1));
        w.mail
            .deliver(testkit::ib_calls_mail("m-1", "2024-03-14", 1));
        w.poller
            .poll(trigger("2024-03-15T00:10:00Z"), &invocation())
            .await
            .unwrap();
        assert_eq!(
            queued_ids(&w.inbound),
            vec!["m-1"],
            "the first sync looks back 72 h"
        );
        w.inbound.take();
        w.mail.expire_delta_links();
        let summary = w
            .poller
            .poll(trigger("2024-03-15T00:20:00Z"), &invocation())
            .await
            .unwrap();
        assert_eq!(summary.resyncs, 1);
        let resynced = w.inbound.bodies::<InboundMessage>();
        assert!(
            matches!(&resynced[..], [InboundMessage::GraphMessage { message_id, source: FoundBy::Resync, .. }] if message_id == "m-1")
        );
    }

    #[tokio::test]
    async fn a_folder_busy_in_another_invocation_is_skipped() {
        let w = world();
        let lock = state::poll_lock(MAILBOX, "inbox");
        assert!(
            try_lock(w.claims.as_ref(), &lock, Utc::now() + Duration::minutes(5))
                .await
                .unwrap()
        );
        let summary = w
            .poller
            .poll(trigger("2024-03-15T00:10:00Z"), &invocation())
            .await
            .unwrap();
        assert_eq!((summary.busy, summary.pages), (1, 0));
        assert!(w.mail.subscriptions().is_empty());
    }

    #[tokio::test]
    async fn a_subscription_near_expiry_is_renewed_and_a_lost_one_replaced() {
        let w = world();
        w.poller
            .poll(trigger("2024-03-15T00:10:00Z"), &invocation())
            .await
            .unwrap();
        let first = w.mail.subscriptions()[0].clone();
        let records: &dyn StateRecords = w.records.as_ref();
        let key = RecordKey::subscription(MAILBOX, "inbox");
        let mut record = records.get_record(&key).await.unwrap().unwrap();
        record.expires_at = Utc::now() + Duration::hours(1);
        records.put_record(&key, &record, None).await.unwrap();
        let summary = w
            .poller
            .poll(trigger("2024-03-15T00:15:00Z"), &invocation())
            .await
            .unwrap();
        assert_eq!(
            (summary.subscriptions_renewed, summary.subscriptions_created),
            (1, 0)
        );
        assert!(w.mail.subscriptions()[0].expires > Utc::now() + Duration::days(6));
        // Graph lost it: the renewal's 404 makes a new one, and the old clientState goes.
        w.mail.forget_subscription(&first.id);
        let mut record = records.get_record(&key).await.unwrap().unwrap();
        record.expires_at = Utc::now() + Duration::hours(1);
        records.put_record(&key, &record, None).await.unwrap();
        let summary = w
            .poller
            .poll(trigger("2024-03-15T00:20:00Z"), &invocation())
            .await
            .unwrap();
        assert_eq!(summary.subscriptions_created, 1);
        let now = w.mail.subscriptions();
        assert_eq!(now.len(), 1);
        assert_ne!(now[0].id, first.id);
        let states = w.client_states.load().await.unwrap();
        assert!(!states.contains_key(&first.id) && states.contains_key(&now[0].id));
    }

    #[tokio::test]
    async fn lifecycle_events_renew_recreate_or_resync_and_unknown_ones_are_ignored() {
        let w = world();
        w.poller
            .poll(trigger("2024-03-15T00:10:00Z"), &invocation())
            .await
            .unwrap();
        let first = w.mail.subscriptions()[0].clone();
        w.mail
            .deliver(testkit::ib_calls_mail("m-late", "2024-03-15", 1));
        let events = [
            lifecycle(&first.id, "missed"),
            lifecycle(&first.id, "reauthorizationRequired"),
            lifecycle("sub-unknown", "missed"),
        ];
        let resp = w.poller.handle(sqs_event(&events), &invocation()).await;
        assert!(failures(&resp).is_empty());
        assert_eq!(
            queued_ids(&w.inbound),
            vec!["m-late"],
            "the resync after `missed`"
        );
        let resp = w
            .poller
            .handle(
                sqs_event(&[lifecycle(&first.id, "subscriptionRemoved")]),
                &invocation(),
            )
            .await;
        assert!(failures(&resp).is_empty());
        let now = w.mail.subscriptions();
        assert_eq!(now.len(), 1);
        assert_ne!(now[0].id, first.id, "recreated");
        assert!(
            !w.client_states
                .load()
                .await
                .unwrap()
                .contains_key(&first.id)
        );
    }

    #[tokio::test]
    async fn lifecycle_work_on_a_busy_folder_is_retried_and_a_malformed_one_dead_lettered() {
        let w = world();
        w.poller
            .poll(trigger("2024-03-15T00:10:00Z"), &invocation())
            .await
            .unwrap();
        let sub = w.mail.subscriptions()[0].clone();
        let lock = state::poll_lock(MAILBOX, "inbox");
        assert!(
            try_lock(w.claims.as_ref(), &lock, Utc::now() + Duration::minutes(5))
                .await
                .unwrap()
        );
        let resp = w
            .poller
            .handle(
                sqs_event(&[lifecycle(&sub.id, "missed"), "{}".into()]),
                &invocation(),
            )
            .await;
        assert_eq!(failures(&resp), vec!["m0"]);
        let letters = w.dead_letters.letters();
        assert_eq!(letters.len(), 1);
        assert!(letters[0].cause.contains("not a lifecycle work message"));
    }

    #[tokio::test]
    async fn client_states_written_at_once_are_all_kept() {
        let claims = MemoryClaims::default();
        let store = MemoryClientStates::default();
        let inv = invocation();
        let written: Vec<(String, Subscribed)> = (0..8)
            .map(|i| {
                (
                    format!("sub-{i}"),
                    Subscribed::new(fresh_client_state(), "mb"),
                )
            })
            .collect();
        let writes = written
            .iter()
            .map(|(id, s)| keep_client_state(&claims, &store, id, s, &[], &inv));
        for r in futures::future::join_all(writes).await {
            r.unwrap();
        }
        let kept = store.load().await.unwrap();
        assert_eq!(kept.len(), 8);
        for (id, s) in &written {
            assert!(kept[id].matches(s.client_state.expose()));
        }
    }

    #[tokio::test]
    async fn a_failed_client_state_write_deletes_the_new_subscription() {
        let w = world();
        w.client_states.fault.set("AccessDeniedException");
        let err = w
            .poller
            .poll(trigger("2024-03-15T00:10:00Z"), &invocation())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("clientState"), "{err:#}");
        assert!(
            w.mail.subscriptions().is_empty(),
            "no subscription without its secret"
        );
        assert!(!w.claims.in_progress(CLIENT_STATES_LOCK));
    }

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
