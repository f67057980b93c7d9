//! graph-webhook: Microsoft Graph's notification URLs behind API Gateway
//! (`POST /graph/notifications` for changes, `POST /graph/lifecycle` for lifecycle events; the
//! same code serves both).
//!
//! - Validation handshake: `?validationToken=…` is answered `200 text/plain` with the decoded
//!   token and nothing else.
//! - Each notification's subscription must be one the poller created, and its `clientState`
//!   that subscription's secret (compared in constant time). Anything else is dropped and
//!   logged, never with the secret.
//! - Change notifications go to `inbound` (batches of 10, each entry checked); lifecycle
//!   events (`reauthorizationRequired`, `subscriptionRemoved`, `missed`) go to `lifecycle`,
//!   where the poller renews, recreates or resyncs. Nothing slow happens in the answer: `202`
//!   at once, `5xx` only when nothing could be queued (Graph retries), `400` for a body that
//!   is not a notification collection, `413` for one larger than [`MAX_BODY_BYTES`].
//! - Logging is bounded: the first [`LOGGED_DROPS`] dropped notifications of an invocation are
//!   logged one by one, the rest in one summary line, so a flood of forged notifications cannot
//!   flood the log group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use base64::Engine;
use serde::Deserialize;
use tokio::sync::RwLock;
use tracing::{error, info, warn};

use crate::invocation::Invocation;
use crate::messages::{FoundBy, InboundMessage, LifecycleEvent, LifecycleWork};
use crate::ports::{ClientStateStore, Subscribed, WorkQueue};
use crate::secret::Secret;

/// The clientState map is re-read at most this often when an unknown subscription shows up
/// (a subscription the poller just created); and anyway once it is older than
/// `CHARLIE_CLIENT_STATE_CACHE_SECONDS` (60 by default), so a replaced subscription stops
/// counting within that time.
const REFRESH_UNKNOWN: Duration = Duration::from_secs(10);

/// The largest body accepted. Graph batches notifications; a change notification without
/// resource data is well under 1 KiB, so 1 MiB holds a thousand of them. Anything larger is
/// not Graph and gets `413` before it is decoded or parsed.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The longest validation token echoed in the handshake (Graph's are a few hundred bytes).
pub const MAX_VALIDATION_TOKEN_BYTES: usize = 1024;

/// Dropped notifications logged one by one per invocation; the rest are summed up.
pub const LOGGED_DROPS: usize = 20;

pub struct GraphWebhook {
    client_states: Arc<dyn ClientStateStore>,
    refresh_always: Duration,
    known: RwLock<Known>,
    inbound: Arc<dyn WorkQueue>,
    lifecycle: Arc<dyn WorkQueue>,
    /// Paused intake parks the mails instead of queueing them (`None`: never paused).
    gate: Option<crate::intake_control::PauseGate>,
    /// The CDN in front (on AWS): requests that did not come through it are refused.
    edge: crate::edge::Edge,
}

#[derive(Default)]
struct Known {
    states: HashMap<String, Subscribed>,
    loaded: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// With the mailbox the subscription watches (`None`: recorded before mailboxes were).
    Valid(Option<String>),
    WrongClientState,
    UnknownSubscription,
}

#[derive(Debug, Deserialize)]
struct NotificationCollection {
    value: Vec<Notification>,
}

/// A change or a lifecycle notification (the latter carries `lifecycleEvent`). Its
/// `clientState` is a [`Secret`], so no `Debug` of it shows the value.
#[derive(Debug, Deserialize)]
struct Notification {
    #[serde(rename = "subscriptionId")]
    subscription_id: String,
    #[serde(default, rename = "clientState")]
    client_state: Option<Secret>,
    #[serde(default, rename = "lifecycleEvent")]
    lifecycle_event: Option<LifecycleEvent>,
    #[serde(default)]
    resource: String,
    #[serde(default, rename = "resourceData")]
    resource_data: Option<ResourceData>,
}

#[derive(Debug, Deserialize)]
struct ResourceData {
    #[serde(default)]
    id: Option<String>,
}

impl GraphWebhook {
    /// Reads the clientStates once, so a missing permission shows at cold start.
    /// `refresh_always`: how long the copy is trusted (`CHARLIE_CLIENT_STATE_CACHE_SECONDS`).
    pub async fn new(
        client_states: Arc<dyn ClientStateStore>,
        refresh_always: Duration,
        inbound: Arc<dyn WorkQueue>,
        lifecycle: Arc<dyn WorkQueue>,
    ) -> anyhow::Result<Self> {
        let states = client_states.load().await?;
        Ok(GraphWebhook {
            client_states,
            refresh_always,
            known: RwLock::new(Known {
                states,
                loaded: Some(Instant::now()),
            }),
            inbound,
            lifecycle,
            gate: None,
            edge: crate::edge::Edge::default(),
        })
    }

    /// Behind a CDN that adds the origin header (`crate::edge`).
    pub fn with_edge(mut self, edge: crate::edge::Edge) -> Self {
        self.edge = edge;
        self
    }

    /// With intake's pause flag (the state table).
    pub fn with_gate(mut self, gate: crate::intake_control::PauseGate) -> Self {
        self.gate = Some(gate);
        self
    }

    #[cfg(feature = "graph-webhook")]
    pub async fn from_env(env: &crate::env::Env) -> anyhow::Result<Self> {
        use super::wiring;
        let aws = crate::adapters::aws::AwsConfig::from_env(env).await;
        let hook = Self::new(
            wiring::client_states(&aws, env)?,
            Duration::from_secs(env.in_range_or(
                "CHARLIE_CLIENT_STATE_CACHE_SECONDS",
                60,
                0..=3600,
            )?),
            wiring::queue(&aws, env, "CHARLIE_INBOUND_QUEUE_URL")?,
            wiring::queue(&aws, env, "CHARLIE_LIFECYCLE_QUEUE_URL")?,
        )
        .await?;
        let origin = wiring::optional_secret(&aws, env, "CHARLIE_ORIGIN_SECRET").await?;
        let edge = crate::edge::Edge::new(origin.as_ref(), None)
            .map_err(|e| anyhow::anyhow!("CHARLIE_ORIGIN_SECRET: {e}"))?;
        Ok(hook
            .with_gate(crate::intake_control::PauseGate::new(wiring::state(
                &aws, env,
            )?))
            .with_edge(edge))
    }

    /// Checks a notification's subscription and clientState, re-reading the map when the
    /// subscription is unknown (and it was not just read).
    async fn verdict(&self, subscription: &str, candidate: Option<&str>) -> Verdict {
        let stale = |k: &Known, after: Duration| k.loaded.is_none_or(|t| t.elapsed() >= after);
        let needs_reload = {
            let k = self.known.read().await;
            stale(&k, self.refresh_always)
                || (!k.states.contains_key(subscription)
                    && stale(&k, REFRESH_UNKNOWN.min(self.refresh_always)))
        };
        if needs_reload {
            let mut k = self.known.write().await;
            match self.client_states.load().await {
                Ok(states) => k.states = states,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "could not re-read the clientState secret; using the last copy")
                }
            }
            k.loaded = Some(Instant::now());
        }
        let k = self.known.read().await;
        match k.states.get(subscription) {
            None => Verdict::UnknownSubscription,
            Some(known) if candidate.is_some_and(|c| known.matches(c)) => {
                Verdict::Valid(known.mailbox.clone())
            }
            Some(_) => Verdict::WrongClientState,
        }
    }

    pub async fn handle(&self, req: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        if !self.edge.admits(&req.headers) {
            warn!("request without the edge's origin header refused");
            return problem(403, "this endpoint is reached through its CDN");
        }
        // Graph's handshake is a POST with an empty body: only then is the token echoed (as
        // plain text, never sniffed as HTML), and only a token of a sane length.
        let no_body = req.body.as_deref().is_none_or(str::is_empty);
        if let (Some(token), true) = (
            req.query_string_parameters.first("validationToken"),
            no_body,
        ) {
            if token.len() > MAX_VALIDATION_TOKEN_BYTES {
                return problem(
                    400,
                    &format!(
                        "validationToken is {} bytes; at most {MAX_VALIDATION_TOKEN_BYTES} are echoed",
                        token.len()
                    ),
                );
            }
            info!("Graph validation handshake answered");
            return response(200, "text/plain", token.to_owned());
        }
        let body = match request_body(&req) {
            Ok(b) => b,
            Err((status, msg)) => return problem(status, &msg),
        };
        let notifications: NotificationCollection = match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => {
                return problem(
                    400,
                    &format!(
                        "the body is not a Graph notification collection ({{\"value\":[…]}}): {e}"
                    ),
                );
            }
        };
        let mut mails = Vec::new();
        let mut work = Vec::new();
        let mut drops = Drops::default();
        for n in &notifications.value {
            let watched = match self
                .verdict(
                    &n.subscription_id,
                    n.client_state.as_ref().map(Secret::expose),
                )
                .await
            {
                Verdict::Valid(watched) => watched,
                Verdict::WrongClientState => {
                    if drops.log_next() {
                        warn!(
                            subscription_id = n.subscription_id,
                            "notification with a wrong or missing clientState dropped"
                        );
                    }
                    continue;
                }
                Verdict::UnknownSubscription => {
                    if drops.log_next() {
                        warn!(
                            subscription_id = n.subscription_id,
                            "notification for an unknown subscription dropped"
                        );
                    }
                    continue;
                }
            };
            if let Some(event) = n.lifecycle_event {
                info!(
                    subscription_id = n.subscription_id,
                    ?event,
                    "lifecycle event"
                );
                work.push(LifecycleWork {
                    v: 1,
                    subscription_id: n.subscription_id.clone(),
                    event,
                });
                continue;
            }
            match (mail_of(n), watched) {
                // The mailbox is the subscription's own, never the one the notification names:
                // whoever learnt a clientState cannot point ingest at another mailbox.
                (Some((named, message_id)), Some(watched))
                    if named.eq_ignore_ascii_case(&watched) =>
                {
                    mails.push(InboundMessage::GraphMessage {
                        v: 1,
                        mailbox: watched,
                        message_id,
                        source: FoundBy::Webhook,
                    })
                }
                (Some((named, _)), watched) => {
                    if drops.log_next() {
                        warn!(
                            subscription_id = n.subscription_id,
                            named_mailbox = named,
                            subscription_mailbox = watched.as_deref().unwrap_or("(not recorded)"),
                            "notification naming a mailbox other than its subscription's dropped"
                        );
                    }
                }
                (None, _) => {
                    if drops.log_next() {
                        warn!(
                            subscription_id = n.subscription_id,
                            resource = n.resource,
                            "notification for a resource that is not a user's message dropped"
                        );
                    }
                }
            }
        }
        if drops.unlogged() > 0 {
            warn!(
                dropped = drops.seen,
                unlogged = drops.unlogged(),
                "more notifications dropped than are logged one by one"
            );
        }
        let wanted = mails.len() + work.len();
        if wanted == 0 {
            return response(202, "text/plain", String::new());
        }
        let paused = match &self.gate {
            Some(gate) if !mails.is_empty() => gate.paused().await,
            _ => false,
        };
        let (sent_mails, mail_failure) = match &self.gate {
            Some(gate) if paused => match gate.park(&mails, "webhook").await {
                Ok(n) => {
                    info!(
                        parked = n,
                        "intake paused: notifications recorded, not queued"
                    );
                    (n, None)
                }
                Err(e) => (0, Some(e)),
            },
            _ => self.inbound.send_new_work(&mails).await,
        };
        let (sent_work, work_failure) = self.lifecycle.send_new_work(&work).await;
        let queued = sent_mails + sent_work;
        for e in [mail_failure, work_failure].into_iter().flatten() {
            error!(error = %format!("{e:#}"), queued, wanted, "some notifications could not be queued");
        }
        if queued < wanted {
            // Graph delivers the whole collection again after a 5xx: the ones queued now come
            // twice, which the mail claim makes harmless; a lost change or lifecycle event
            // would not be.
            return problem(503, "notifications could not all be queued; retry later");
        }
        info!(queued, wanted, "notifications queued");
        response(202, "text/plain", String::new())
    }
}

#[async_trait]
impl super::Handler for GraphWebhook {
    async fn invoke(
        &self,
        event: serde_json::Value,
        _invocation: &Invocation,
    ) -> anyhow::Result<serde_json::Value> {
        let request = super::parse_event(event)?;
        Ok(serde_json::to_value(Box::pin(self.handle(request)).await)?)
    }
}

/// What one notification announces.
#[derive(Debug, Clone, PartialEq)]
pub enum Announced {
    Lifecycle(LifecycleEvent),
    Mail {
        mailbox: String,
        message_id: String,
    },
    /// A resource that is not a user's message.
    Other,
}

/// What a notification body announces, per notification with its subscription: the parsing
/// `handle` does before any clientState check (a fuzz target drives it).
pub fn announced(body: &[u8]) -> Result<Vec<(String, Announced)>, String> {
    let collection: NotificationCollection =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(collection
        .value
        .iter()
        .map(|n| {
            let what = match (n.lifecycle_event, mail_of(n)) {
                (Some(event), _) => Announced::Lifecycle(event),
                (None, Some((mailbox, message_id))) => Announced::Mail {
                    mailbox,
                    message_id,
                },
                (None, None) => Announced::Other,
            };
            (n.subscription_id.clone(), what)
        })
        .collect())
}

/// (mailbox, message id) from `Users/{mailbox}/Messages/{id}`.
fn mail_of(n: &Notification) -> Option<(String, String)> {
    let parts: Vec<&str> = n.resource.split('/').collect();
    match parts.as_slice() {
        [users, mailbox, messages, id]
            if users.eq_ignore_ascii_case("users") && messages.eq_ignore_ascii_case("messages") =>
        {
            let id = n
                .resource_data
                .as_ref()
                .and_then(|d| d.id.clone())
                .unwrap_or_else(|| (*id).to_owned());
            Some(((*mailbox).to_owned(), id))
        }
        _ => None,
    }
}

/// Dropped notifications of one invocation: how many, and whether the next is still logged.
#[derive(Default)]
struct Drops {
    seen: usize,
}

impl Drops {
    fn log_next(&mut self) -> bool {
        self.seen += 1;
        self.seen <= LOGGED_DROPS
    }

    fn unlogged(&self) -> usize {
        self.seen.saturating_sub(LOGGED_DROPS)
    }
}

/// The request's body, decoded; a body over [`MAX_BODY_BYTES`] (decoded size, judged from
/// the encoded length before decoding) is refused with `413`.
fn request_body(req: &ApiGatewayV2httpRequest) -> Result<Vec<u8>, (i64, String)> {
    let raw = req.body.as_deref().unwrap_or_default();
    let decoded_len = if req.is_base64_encoded {
        raw.len() / 4 * 3
    } else {
        raw.len()
    };
    if decoded_len > MAX_BODY_BYTES {
        return Err((
            413,
            format!("the body is {decoded_len} bytes; at most {MAX_BODY_BYTES} are accepted"),
        ));
    }
    let decoded = request_body_bytes(req, raw).map_err(|m| (400, m))?;
    Ok(decoded)
}

fn request_body_bytes(req: &ApiGatewayV2httpRequest, raw: &str) -> Result<Vec<u8>, String> {
    if req.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| format!("the body is marked base64 but is not: {e}"))
    } else {
        Ok(raw.as_bytes().to_vec())
    }
}

fn response(status: i64, content_type: &'static str, body: String) -> ApiGatewayV2httpResponse {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let mut r = ApiGatewayV2httpResponse::default();
    r.status_code = status;
    r.headers = headers;
    r.body = Some(Body::Text(body));
    r
}

fn problem(status: i64, message: &str) -> ApiGatewayV2httpResponse {
    response(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::{MemoryClientStates, MemoryQueue};

    async fn webhook(
        states: &[(&str, &str)],
    ) -> (GraphWebhook, Arc<MemoryQueue>, Arc<MemoryQueue>) {
        let store = Arc::new(MemoryClientStates::default());
        let map = states
            .iter()
            .map(|(id, s)| {
                let known = Subscribed::new(Secret::new(*s), "ops-reports@contoso.example");
                ((*id).to_owned(), known)
            })
            .collect();
        store.save(&map).await.unwrap();
        let (inbound, lifecycle) = (
            Arc::new(MemoryQueue::default()),
            Arc::new(MemoryQueue::default()),
        );
        let hook = GraphWebhook::new(
            store,
            Duration::from_secs(60),
            Arc::clone(&inbound) as _,
            Arc::clone(&lifecycle) as _,
        )
        .await
        .unwrap();
        (hook, inbound, lifecycle)
    }

    fn request(query: serde_json::Value, body: &str) -> ApiGatewayV2httpRequest {
        serde_json::from_value(serde_json::json!({
            "version": "2.0", "routeKey": "POST /graph/notifications", "rawPath": "/graph/notifications",
            "queryStringParameters": query, "body": body, "isBase64Encoded": false,
            "requestContext": {"http": {"method": "POST", "path": "/graph/notifications"}},
        }))
        .unwrap()
    }

    fn change(subscription: &str, client_state: &str, id: &str) -> serde_json::Value {
        serde_json::json!({
            "subscriptionId": subscription, "clientState": client_state, "changeType": "created",
            "resource": format!("Users/ops-reports@contoso.example/Messages/{id}"),
            "resourceData": {"id": id},
        })
    }

    fn text(r: &ApiGatewayV2httpResponse) -> &str {
        match &r.body {
            Some(Body::Text(t)) => t,
            _ => "",
        }
    }

    #[tokio::test]
    async fn the_validation_handshake_echoes_the_token_as_plain_text() {
        let (hook, inbound, _) = webhook(&[]).await;
        let r = hook
            .handle(request(
                serde_json::json!({"validationToken": "Validation: Testing client"}),
                "",
            ))
            .await;
        assert_eq!(r.status_code, 200);
        assert_eq!(r.headers[CONTENT_TYPE], "text/plain");
        assert_eq!(text(&r), "Validation: Testing client");
        assert!(inbound.sent().is_empty());
    }

    /// The token is echoed only for Graph's handshake (an empty body), only up to a sane
    /// length, and never as something a browser would sniff as HTML.
    #[tokio::test]
    async fn the_handshake_echoes_only_a_short_token_of_an_empty_post_without_sniffing() {
        let (hook, inbound, _) = webhook(&[("sub-1", "s3cr3t")]).await;
        let ok = hook
            .handle(request(serde_json::json!({"validationToken": "abc"}), ""))
            .await;
        assert_eq!(ok.headers["x-content-type-options"], "nosniff");
        let long = "<script>".repeat(200);
        let r = hook
            .handle(request(serde_json::json!({"validationToken": long}), ""))
            .await;
        assert_eq!(r.status_code, 400);
        assert!(!text(&r).contains("<script>"), "{}", text(&r));
        // With a body, the query's token is not echoed: the body is read as notifications.
        let body = serde_json::json!({"value": [change("sub-1", "s3cr3t", "AAMk-1")]});
        let r = hook
            .handle(request(
                serde_json::json!({"validationToken": "<b>echo</b>"}),
                &body.to_string(),
            ))
            .await;
        assert_eq!(r.status_code, 202);
        assert!(!text(&r).contains("echo"));
        assert_eq!(inbound.sent().len(), 1);
    }

    /// Behind the CDN (AWS), a request that went round it (no origin header, or a wrong one)
    /// is refused before anything is read: no handshake echoed, nothing queued.
    #[tokio::test]
    async fn behind_the_edge_requests_without_its_origin_header_are_refused() {
        const ORIGIN: &str = "origin-value-for-tests-0123456789abcdef";
        let (hook, inbound, _) = webhook(&[("sub-1", "s3cr3t")]).await;
        let hook =
            hook.with_edge(crate::edge::Edge::new(Some(&Secret::new(ORIGIN)), None).unwrap());
        let body = serde_json::json!({"value": [change("sub-1", "s3cr3t", "AAMk-1")]}).to_string();
        let handshake = hook
            .handle(request(serde_json::json!({"validationToken": "abc"}), ""))
            .await;
        assert_eq!(handshake.status_code, 403);
        assert!(!text(&handshake).contains("abc"));
        let mut wrong = request(serde_json::json!({}), &body);
        wrong.headers.insert(
            crate::edge::ORIGIN_HEADER,
            HeaderValue::from_static("origin-value-for-tests-0123456789abcdeX"),
        );
        assert_eq!(hook.handle(wrong).await.status_code, 403);
        assert!(inbound.sent().is_empty());
        let mut through = request(serde_json::json!({}), &body);
        through
            .headers
            .insert(crate::edge::ORIGIN_HEADER, HeaderValue::from_static(ORIGIN));
        assert_eq!(hook.handle(through).await.status_code, 202);
        assert_eq!(inbound.sent().len(), 1);
    }

    #[tokio::test]
    async fn only_notifications_with_their_subscriptions_client_state_are_queued() {
        let (hook, inbound, lifecycle) = webhook(&[("sub-1", "s3cr3t")]).await;
        let body = serde_json::json!({"value": [
            change("sub-1", "s3cr3t", "AAMk-good"),
            change("sub-1", "guess", "AAMk-forged"),
            change("sub-9", "s3cr3t", "AAMk-unknown"),
            {"subscriptionId": "sub-1", "clientState": "s3cr3t", "lifecycleEvent": "missed", "resource": ""},
        ]});
        let r = hook
            .handle(request(serde_json::json!({}), &body.to_string()))
            .await;
        assert_eq!(r.status_code, 202);
        let mails: Vec<InboundMessage> = inbound.bodies();
        assert_eq!(
            mails,
            vec![InboundMessage::GraphMessage {
                v: 1,
                mailbox: "ops-reports@contoso.example".into(),
                message_id: "AAMk-good".into(),
                source: FoundBy::Webhook,
            }]
        );
        let work: Vec<LifecycleWork> = lifecycle.bodies();
        assert_eq!(work.len(), 1);
        assert_eq!(work[0].event, LifecycleEvent::Missed);
    }

    /// Whoever learnt a subscription's clientState cannot point ingest at another mailbox:
    /// the mailbox is the subscription's own; a notification naming another is dropped, as is
    /// one of a subscription whose mailbox was never recorded.
    #[tokio::test]
    async fn a_notification_naming_another_mailbox_is_dropped() {
        let (hook, inbound, _) = webhook(&[("sub-1", "s3cr3t")]).await;
        let mut other = change("sub-1", "s3cr3t", "AAMk-ceo");
        other["resource"] = serde_json::json!("Users/ceo@contoso.example/Messages/AAMk-ceo");
        let mut shouted = change("sub-1", "s3cr3t", "AAMk-upper");
        shouted["resource"] =
            serde_json::json!("Users/OPS-REPORTS@contoso.example/Messages/AAMk-upper");
        let body = serde_json::json!({"value": [other, shouted]});
        let r = hook
            .handle(request(serde_json::json!({}), &body.to_string()))
            .await;
        assert_eq!(r.status_code, 202);
        let mails: Vec<InboundMessage> = inbound.bodies();
        assert_eq!(
            mails,
            vec![InboundMessage::GraphMessage {
                v: 1,
                mailbox: "ops-reports@contoso.example".into(),
                message_id: "AAMk-upper".into(),
                source: FoundBy::Webhook,
            }],
            "only the subscription's own mailbox, as the subscription names it"
        );

        let store = Arc::new(MemoryClientStates::default());
        let unrecorded = Subscribed {
            client_state: Secret::new("old"),
            mailbox: None,
        };
        store
            .save(&[("sub-old".to_owned(), unrecorded)].into_iter().collect())
            .await
            .unwrap();
        let inbound = Arc::new(MemoryQueue::default());
        let hook = GraphWebhook::new(
            store,
            Duration::from_secs(60),
            Arc::clone(&inbound) as _,
            Arc::new(MemoryQueue::default()),
        )
        .await
        .unwrap();
        let body = serde_json::json!({"value": [change("sub-old", "old", "AAMk-1")]});
        hook.handle(request(serde_json::json!({}), &body.to_string()))
            .await;
        assert!(inbound.sent().is_empty());
    }

    #[tokio::test]
    async fn a_body_that_is_no_notification_collection_gets_400() {
        let (hook, _, _) = webhook(&[]).await;
        let r = hook
            .handle(request(serde_json::json!({}), r#"{"value": 3}"#))
            .await;
        assert_eq!(r.status_code, 400);
        assert!(text(&r).contains("notification collection"), "{}", text(&r));
    }

    #[tokio::test]
    async fn nothing_queued_answers_503_so_graph_retries() {
        let (hook, inbound, _) = webhook(&[("sub-1", "s3cr3t")]).await;
        inbound.fault.set("AWS.SimpleQueueService.NonExistentQueue");
        let body = serde_json::json!({"value": [change("sub-1", "s3cr3t", "AAMk-1")]});
        let r = hook
            .handle(request(serde_json::json!({}), &body.to_string()))
            .await;
        assert_eq!(r.status_code, 503);
    }

    #[tokio::test]
    async fn a_collection_only_partly_queued_answers_503_and_its_redelivery_is_harmless() {
        let (hook, inbound, lifecycle) = webhook(&[("sub-1", "s3cr3t")]).await;
        lifecycle
            .fault
            .set("AWS.SimpleQueueService.NonExistentQueue");
        let mut removed = change("sub-1", "s3cr3t", "AAMk-1");
        removed["lifecycleEvent"] = serde_json::json!("subscriptionRemoved");
        let body = serde_json::json!({"value": [change("sub-1", "s3cr3t", "AAMk-1"), removed]});
        let r = hook
            .handle(request(serde_json::json!({}), &body.to_string()))
            .await;
        assert_eq!(r.status_code, 503, "the lifecycle event was not queued");
        assert_eq!(inbound.sent().len(), 1);
        lifecycle.fault.clear();
        let r = hook
            .handle(request(serde_json::json!({}), &body.to_string()))
            .await;
        assert_eq!(r.status_code, 202);
        assert_eq!(lifecycle.sent().len(), 1);
        assert_eq!(
            inbound.sent().len(),
            2,
            "the change again: the mail claim dedups it"
        );
    }

    #[tokio::test]
    async fn a_subscription_created_after_start_is_known_after_a_reload() {
        let store = Arc::new(MemoryClientStates::default());
        let inbound = Arc::new(MemoryQueue::default());
        let hook = GraphWebhook::new(
            Arc::clone(&store) as _,
            Duration::ZERO,
            Arc::clone(&inbound) as _,
            Arc::new(MemoryQueue::default()),
        )
        .await
        .unwrap();
        let known = Subscribed::new(Secret::new("fresh"), "ops-reports@contoso.example");
        let map = [("sub-new".to_owned(), known)].into_iter().collect();
        store.save(&map).await.unwrap();
        let body = serde_json::json!({"value": [change("sub-new", "fresh", "AAMk-1")]});
        assert_eq!(
            hook.handle(request(serde_json::json!({}), &body.to_string()))
                .await
                .status_code,
            202
        );
        assert_eq!(inbound.sent().len(), 1);
    }

    #[test]
    fn the_documented_notification_names_its_mailbox_and_message() {
        let c: NotificationCollection = serde_json::from_str(include_str!(
            "../../../events/graph/change-notification.json"
        ))
        .unwrap();
        assert_eq!(
            mail_of(&c.value[0]),
            Some((
                "ops-reports@contoso.example".into(),
                "AAMkADNkNAAASq35xAAA=".into()
            ))
        );
        assert_eq!(c.value[0].lifecycle_event, None);
    }

    #[test]
    fn the_documented_lifecycle_notifications_name_their_event() {
        for (file, event) in [
            (
                include_str!("../../../events/graph/lifecycle-missed.json"),
                LifecycleEvent::Missed,
            ),
            (
                include_str!("../../../events/graph/lifecycle-reauthorization-required.json"),
                LifecycleEvent::ReauthorizationRequired,
            ),
            (
                include_str!("../../../events/graph/lifecycle-subscription-removed.json"),
                LifecycleEvent::SubscriptionRemoved,
            ),
        ] {
            let c: NotificationCollection = serde_json::from_str(file).unwrap();
            assert_eq!(c.value[0].lifecycle_event, Some(event));
            assert!(c.value[0].client_state.is_some());
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_gets_413_and_queues_nothing() {
        let (hook, inbound, _) = webhook(&[("sub-1", "s3cr3t")]).await;
        let one = change("sub-1", "s3cr3t", "AAMk-1").to_string();
        let many = vec![one.as_str(); MAX_BODY_BYTES / one.len() + 1].join(",");
        let body = format!("{{\"value\":[{many}]}}");
        assert!(body.len() > MAX_BODY_BYTES);
        let r = hook.handle(request(serde_json::json!({}), &body)).await;
        assert_eq!(r.status_code, 413);
        assert!(text(&r).contains("at most 1048576"), "{}", text(&r));
        assert!(inbound.sent().is_empty());
    }

    #[test]
    fn a_notification_never_prints_its_client_state() {
        let c: NotificationCollection = serde_json::from_value(serde_json::json!({
            "value": [change("sub-1", "s3cr3t-value", "AAMk-1")]
        }))
        .unwrap();
        let printed = format!("{c:?}");
        assert!(printed.contains("sub-1"), "{printed}");
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
    }

    #[test]
    fn drops_past_the_budget_are_summed_not_logged() {
        let mut drops = Drops::default();
        let logged = (0..LOGGED_DROPS + 5).filter(|_| drops.log_next()).count();
        assert_eq!(logged, LOGGED_DROPS);
        assert_eq!(drops.unlogged(), 5);
    }
}
