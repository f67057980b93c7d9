//! A fake Microsoft Graph mailbox for the demo and the tests (Graph cannot run here). It follows
//! Graph's published contract for the calls Charlie makes:
//! - `POST /{tenant}/oauth2/v2.0/token` (client credentials) → `{token_type, expires_in, access_token}`;
//! - `GET /v1.0/users/{user}/mailFolders/{folder}/messages/delta`: pages of `Prefer:
//!   odata.maxpagesize` (at most the fake's page size) linked by `@odata.nextLink`
//!   (`$skiptoken`), the last one carrying `@odata.deltaLink` (`$deltatoken`) from which a later
//!   round returns only what arrived since;
//! - `GET /v1.0/users/{user}` (`id`: the mailbox's directory object id, a GUID; every
//!   `{user}` below may be its UPN or that id);
//! - `GET /v1.0/users/{user}/messages/{id}` and `.../attachments` (`fileAttachment` with base64
//!   `contentBytes`, left out under a `$select` that does not name it), `.../attachments/{id}/$value`
//!   (the raw bytes);
//! - ids: a message's default id differs from its immutable id; a request with `Prefer:
//!   IdType="ImmutableId"` gets immutable ids, and so do the notifications of a subscription
//!   created with it. Lookups take either. Change notifications name the mailbox by its object
//!   id: `Users/{guid}/Messages/{id}`, as Graph's do;
//! - sending as the mailbox user: `POST /v1.0/users/{user}/sendMail` (202, no body; the
//!   request at most 4 MB, so files inline only under 3 MB), and the large-file path: `POST
//!   .../messages` (a draft, 201), `POST .../messages/{id}/attachments/createUploadSession`
//!   (201, a pre-authenticated `uploadUrl`), `PUT uploadUrl` ranges in order with
//!   `Content-Range`, at most 4 MB each and *without* an `Authorization` header (200 with
//!   `nextExpectedRanges`, 201 with `Location` for the last), `POST .../messages/{id}/send`
//!   (202; 411 without `Content-Length`), `DELETE .../messages/{id}` (204);
//! - subscriptions: `POST /v1.0/subscriptions` runs the validation handshake against the
//!   `notificationUrl` and the `lifecycleNotificationUrl` (`POST ?validationToken=…`, expecting
//!   `200` with the decoded token as `text/plain` within 10 s) before answering 201, refuses
//!   an expiry more than 10,070 minutes ahead, and checks the resource is the fake's folder;
//!   `PATCH` renews, `DELETE` removes, both 404 `ResourceNotFound` for unknown ids;
//! - change and lifecycle notifications posted to the subscriber, built from Microsoft's
//!   documented examples in `events/graph/` ([`FakeGraph::notify`], [`FakeGraph::lifecycle`]);
//! - switches: the next N calls answer 429 with `Retry-After` ([`FakeGraph::throttle`]), delta
//!   links expire (410 `SyncStateNotFound`, [`FakeGraph::expire_delta_links`]), every answer
//!   is slow ([`FakeGraph::set_slow`]); the most requests in flight per mailbox are counted;
//!   `$filter=receivedDateTime ge …` limits a fresh delta round;
//! - a bearer token on every Graph call (401 `InvalidAuthenticationToken` otherwise); 404
//!   `ErrorItemNotFound` for unknown messages and `ErrorInvalidUser` for other mailboxes, with
//!   Graph's error body.

// The handlers' helpers return Graph's error answer as the error value: an axum `Response` is
// large, but boxing it buys nothing in a test server that answers one request at a time.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct FakeAttachment {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct FakeMessage {
    pub id: String,
    pub subject: String,
    pub from_name: String,
    pub from_address: String,
    pub received: String,
    pub attachments: Vec<FakeAttachment>,
    /// The `Authentication-Results` header Exchange Online added; `None`: a pass for the
    /// sender's domain, as a genuine sender gets.
    pub authentication_results: Option<String>,
}

/// How a sent mail reached the fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPath {
    /// One `sendMail` call, files inline.
    SendMail,
    /// A draft, upload sessions for its files (`ranges` PUTs in all), then `send`.
    Draft { ranges: u32 },
}

/// A mail sent through the fake, as Graph would put it in Sent Items.
#[derive(Debug, Clone)]
pub struct SentMail {
    pub from_user: String,
    pub subject: String,
    pub body_type: String,
    pub body: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub internet_message_id: Option<String>,
    pub attachments: Vec<FakeAttachment>,
    pub path: SendPath,
}

struct Draft {
    user: String,
    message: Value,
    attachments: Vec<FakeAttachment>,
    ranges: u32,
}

struct UploadState {
    draft: String,
    token: String,
    name: String,
    content_type: String,
    size: usize,
    received: Vec<u8>,
}

/// Graph's request size limit (a `sendMail` with inline files included).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest range one upload-session PUT may carry.
pub const MAX_RANGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest file an upload session takes.
pub const MAX_UPLOAD_BYTES: usize = 150 * 1024 * 1024;

/// A subscription as the fake keeps it.
#[derive(Debug, Clone)]
pub struct FakeSubscription {
    pub id: String,
    pub resource: String,
    pub notification_url: String,
    pub lifecycle_url: Option<String>,
    pub client_state: Option<String>,
    pub expires: chrono::DateTime<chrono::Utc>,
    pub renewals: u32,
    /// Created with `Prefer: IdType="ImmutableId"`: its notifications carry immutable ids.
    pub immutable_ids: bool,
}

/// Graph's longest mail subscription.
pub const MAX_SUBSCRIPTION_MINUTES: i64 = 10_070;

/// The fake mailbox's directory object id.
pub const MAILBOX_OBJECT_ID: &str = "5b3f8c1e-2d4a-4e6b-9c7d-8a1f0e2b3c4d";

/// The id Graph gives a message by default (not immutable: it changes when the mail moves).
fn default_id(immutable: &str) -> String {
    format!("{immutable}-default")
}

/// Whether a request asked for immutable ids.
fn wants_immutable(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("IdType=\"ImmutableId\""))
        })
    })
}

struct Inner {
    mailbox: String,
    folder: String,
    client_id: String,
    client_secret: String,
    page_size: usize,
    messages: Vec<FakeMessage>,
    tokens: HashSet<String>,
    base_url: String,
    requests: u64,
    drafts: std::collections::HashMap<String, Draft>,
    uploads: std::collections::HashMap<String, UploadState>,
    sent: Vec<SentMail>,
    subscriptions: Vec<FakeSubscription>,
    /// Switches.
    throttle_left: u32,
    throttle_retry_after: u64,
    throttled: u32,
    delta_epoch: u32,
    slow: std::time::Duration,
    in_flight: std::collections::HashMap<String, u32>,
    max_in_flight: u32,
    /// The `client-request-id` of each Graph call that carried one, in order.
    client_request_ids: Vec<String>,
}

#[derive(Clone)]
pub struct FakeGraph {
    inner: Arc<Mutex<Inner>>,
    pub base_url: String,
    pub token_url: String,
}

#[derive(Deserialize)]
struct MailboxFixture {
    mailbox: String,
    folder: String,
    messages: Vec<FixtureMessage>,
}

#[derive(Deserialize)]
struct FixtureMessage {
    id: String,
    subject: String,
    from: Value,
    #[serde(rename = "receivedDateTime")]
    received: String,
    attachments: Vec<FixtureAttachment>,
}

#[derive(Deserialize)]
struct FixtureAttachment {
    name: String,
    #[serde(rename = "contentType")]
    content_type: String,
    file: String,
}

pub const CLIENT_ID: &str = "charlie-local";
pub const CLIENT_SECRET: &str = "local-fake-graph-secret";
pub const TENANT: &str = "contoso-local";

impl Inner {
    /// `user` names the fake mailbox, by UPN or object id.
    fn is_mailbox(&self, user: &str) -> bool {
        user.eq_ignore_ascii_case(&self.mailbox) || user.eq_ignore_ascii_case(MAILBOX_OBJECT_ID)
    }

    fn find(&self, id: &str) -> Option<&FakeMessage> {
        self.messages
            .iter()
            .find(|m| m.id == id || default_id(&m.id) == id)
    }
}

impl FakeGraph {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        crate::project::port_of(&self.base_url)
    }

    /// Loads `dir/messages.json` (attachments from files beside it) and serves it on a free port.
    pub async fn start(dir: &Path, page_size: usize) -> anyhow::Result<Self> {
        Self::start_on(dir, page_size, 0).await
    }

    /// [`FakeGraph::start`] on `port` (0: a free one).
    pub async fn start_on(dir: &Path, page_size: usize, port: u16) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(dir.join("messages.json"))
            .with_context(|| format!("reading {}/messages.json", dir.display()))?;
        let fixture: MailboxFixture = serde_json::from_str(&text).context("messages.json")?;
        let mut messages = Vec::new();
        for m in fixture.messages {
            let mut attachments = Vec::new();
            for a in m.attachments {
                let bytes = std::fs::read(dir.join(&a.file))
                    .with_context(|| format!("reading attachment {}", a.file))?;
                attachments.push(FakeAttachment {
                    name: a.name,
                    content_type: a.content_type,
                    bytes,
                });
            }
            messages.push(FakeMessage {
                id: m.id,
                subject: m.subject,
                from_name: m.from["emailAddress"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                from_address: m.from["emailAddress"]["address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                received: m.received,
                attachments,
                authentication_results: None,
            });
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}/v1.0");
        let inner = Arc::new(Mutex::new(Inner {
            mailbox: fixture.mailbox,
            folder: fixture.folder,
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            page_size: page_size.max(1),
            messages,
            tokens: HashSet::new(),
            base_url: base_url.clone(),
            requests: 0,
            drafts: Default::default(),
            uploads: Default::default(),
            sent: Vec::new(),
            subscriptions: Vec::new(),
            throttle_left: 0,
            throttle_retry_after: 0,
            throttled: 0,
            delta_epoch: 1,
            slow: std::time::Duration::ZERO,
            in_flight: Default::default(),
            max_in_flight: 0,
            client_request_ids: Vec::new(),
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route(
                "/v1.0/users/{user}/mailFolders/{folder}/messages/delta",
                get(delta),
            )
            .route(
                "/v1.0/users/{user}/messages/{id}",
                get(message).delete(delete_message),
            )
            .route(
                "/v1.0/users/{user}/messages/{id}/attachments",
                get(attachments),
            )
            .route("/v1.0/users/{user}", get(user))
            .route(
                "/v1.0/users/{user}/messages/{id}/attachments/{attachment}/$value",
                get(attachment_value),
            )
            .route("/v1.0/users/{user}/sendMail", post(send_mail))
            .route("/v1.0/users/{user}/messages", post(create_draft))
            .route(
                "/v1.0/users/{user}/messages/{id}/attachments/createUploadSession",
                post(create_upload_session),
            )
            .route("/v1.0/users/{user}/messages/{id}/send", post(send_draft))
            .route("/upload/{session}", axum::routing::put(upload_range))
            .route("/v1.0/subscriptions", post(create_subscription))
            .route(
                "/v1.0/subscriptions/{id}",
                get(get_subscription)
                    .patch(renew_subscription)
                    .delete(delete_subscription),
            )
            .layer(axum::extract::DefaultBodyLimit::max(2 * MAX_REQUEST_BYTES))
            .layer(axum::middleware::from_fn_with_state(
                inner.clone(),
                switches,
            ))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeGraph {
            inner,
            base_url,
            token_url: format!("http://{addr}/{TENANT}/oauth2/v2.0/token"),
        })
    }

    /// A new mail arrives in the folder.
    pub fn deliver(&self, message: FakeMessage) {
        self.inner.lock().unwrap().messages.push(message);
    }

    pub fn mailbox(&self) -> (String, String) {
        let i = self.inner.lock().unwrap();
        (i.mailbox.clone(), i.folder.clone())
    }

    pub fn message_count(&self) -> usize {
        self.inner.lock().unwrap().messages.len()
    }

    /// How many mails with attachments were received at or after `since`.
    pub fn with_attachments_since(&self, since: chrono::DateTime<chrono::Utc>) -> usize {
        self.inner
            .lock()
            .unwrap()
            .messages
            .iter()
            .filter(|m| !m.attachments.is_empty())
            .filter(|m| {
                m.received
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .is_ok_and(|r| r >= since)
            })
            .count()
    }

    /// The next `calls` Graph calls (token requests excluded) answer 429 with `Retry-After`.
    pub fn throttle(&self, calls: u32, retry_after_secs: u64) {
        let mut i = self.inner.lock().unwrap();
        i.throttle_left = calls;
        i.throttle_retry_after = retry_after_secs;
    }

    /// 429s answered so far.
    pub fn throttled(&self) -> u32 {
        self.inner.lock().unwrap().throttled
    }

    /// Every delta and skip token handed out so far is forgotten: they answer 410.
    pub fn expire_delta_links(&self) {
        self.inner.lock().unwrap().delta_epoch += 1;
    }

    /// Every answer waits this long first.
    pub fn set_slow(&self, delay: std::time::Duration) {
        self.inner.lock().unwrap().slow = delay;
    }

    /// The most Graph requests one mailbox had in flight at once, since the last call.
    pub fn take_max_in_flight(&self) -> u32 {
        std::mem::take(&mut self.inner.lock().unwrap().max_in_flight)
    }

    pub fn subscriptions(&self) -> Vec<FakeSubscription> {
        self.inner.lock().unwrap().subscriptions.clone()
    }

    /// Moves a subscription's expiry (as if time had passed).
    pub fn set_subscription_expiry(&self, id: &str, expires: chrono::DateTime<chrono::Utc>) {
        let mut i = self.inner.lock().unwrap();
        if let Some(s) = i.subscriptions.iter_mut().find(|s| s.id == id) {
            s.expires = expires;
        }
    }

    /// Posts the documented change notification for `message_id` to every subscription on
    /// the folder, `copies` times each (Graph may deliver one more than once). Returns the
    /// subscriber's status codes.
    pub async fn notify(&self, message_id: &str, copies: usize) -> Vec<u16> {
        let targets: Vec<(String, Value)> = {
            let i = self.inner.lock().unwrap();
            i.subscriptions
                .iter()
                .map(|s| {
                    let mut body: Value =
                        serde_json::from_str(CHANGE_NOTIFICATION).expect("fixture is JSON");
                    let n = &mut body["value"][0];
                    let id = if s.immutable_ids {
                        message_id.to_owned()
                    } else {
                        default_id(message_id)
                    };
                    let resource = format!("Users/{MAILBOX_OBJECT_ID}/Messages/{id}");
                    n["subscriptionId"] = json!(s.id);
                    n["subscriptionExpirationDateTime"] = json!(s.expires.to_rfc3339());
                    n["clientState"] = json!(s.client_state);
                    n["resource"] = json!(resource);
                    n["resourceData"]["@odata.id"] = json!(resource);
                    n["resourceData"]["id"] = json!(id);
                    (s.notification_url.clone(), body)
                })
                .collect()
        };
        let mut statuses = Vec::new();
        for (url, body) in targets {
            for _ in 0..copies {
                statuses.push(post_json(&url, &body).await);
            }
        }
        statuses
    }

    /// Posts a lifecycle notification (`missed`, `reauthorizationRequired` or
    /// `subscriptionRemoved`, from the documented examples) for every subscription to its
    /// lifecycle URL. `subscriptionRemoved` removes the subscriptions first, as Graph has.
    pub async fn lifecycle(&self, event: &str) -> Vec<u16> {
        let fixture = match event {
            "missed" => LIFECYCLE_MISSED,
            "reauthorizationRequired" => LIFECYCLE_REAUTHORIZATION,
            "subscriptionRemoved" => LIFECYCLE_REMOVED,
            other => panic!("no lifecycle event {other}"),
        };
        let targets: Vec<(String, Value)> = {
            let mut i = self.inner.lock().unwrap();
            let subs = i.subscriptions.clone();
            if event == "subscriptionRemoved" {
                i.subscriptions.clear();
            }
            subs.iter()
                .filter_map(|s| {
                    let mut body: Value = serde_json::from_str(fixture).expect("fixture is JSON");
                    let n = &mut body["value"][0];
                    n["subscriptionId"] = json!(s.id);
                    n["subscriptionExpirationDateTime"] = json!(s.expires.to_rfc3339());
                    n["clientState"] = json!(s.client_state);
                    Some((s.lifecycle_url.clone()?, body))
                })
                .collect()
        };
        let mut statuses = Vec::new();
        for (url, body) in targets {
            statuses.push(post_json(&url, &body).await);
        }
        statuses
    }

    /// Mails sent through the fake (Sent Items), oldest first.
    pub fn sent_mail(&self) -> Vec<SentMail> {
        self.inner.lock().unwrap().sent.clone()
    }

    /// Drafts not sent (a failed large-file send should leave none).
    pub fn draft_count(&self) -> usize {
        self.inner.lock().unwrap().drafts.len()
    }

    /// The `client-request-id` of every Graph call that carried one, in order.
    pub fn client_request_ids(&self) -> Vec<String> {
        self.inner.lock().unwrap().client_request_ids.clone()
    }

    /// Graph calls served so far (token requests excluded).
    pub fn requests(&self) -> u64 {
        self.inner.lock().unwrap().requests
    }
}

type Shared = State<Arc<Mutex<Inner>>>;

const CHANGE_NOTIFICATION: &str = include_str!("../../events/graph/change-notification.json");
const LIFECYCLE_MISSED: &str = include_str!("../../events/graph/lifecycle-missed.json");
const LIFECYCLE_REAUTHORIZATION: &str =
    include_str!("../../events/graph/lifecycle-reauthorization-required.json");
const LIFECYCLE_REMOVED: &str =
    include_str!("../../events/graph/lifecycle-subscription-removed.json");
const SUBSCRIPTION_CREATED: &str = include_str!("../../events/graph/subscription-created.json");
const SYNC_STATE_NOT_FOUND: &str =
    include_str!("../../events/graph/delta-sync-state-not-found.json");
const TOO_MANY_REQUESTS: &str = include_str!("../../events/graph/too-many-requests.json");

/// Posts JSON as Graph posts notifications; the status code (0 when unreachable).
async fn post_json(url: &str, body: &Value) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client");
    match client.post(url).json(body).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Around every call: 429 while throttled, the count of Graph calls and of those in flight per
/// mailbox, the slow delay, and the bearer token every `/v1.0/` call needs (the upload URL is
/// pre-authenticated and checks its own token).
async fn switches(
    State(state): Shared,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_ascii_lowercase();
    let graph_call = path.starts_with("/v1.0/") || path.starts_with("/upload/");
    let mailbox = path
        .strip_prefix("/v1.0/users/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
        .to_owned();
    let (slow, mailbox) = {
        let mut i = state.lock().unwrap();
        // One mailbox, by either of its names.
        let mailbox = if mailbox.eq_ignore_ascii_case(MAILBOX_OBJECT_ID) {
            i.mailbox.to_ascii_lowercase()
        } else {
            mailbox.clone()
        };
        if graph_call && i.throttle_left > 0 {
            i.throttle_left -= 1;
            i.throttled += 1;
            let body: Value = serde_json::from_str(TOO_MANY_REQUESTS).expect("fixture is JSON");
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", i.throttle_retry_after.to_string())],
                Json(body),
            )
                .into_response();
        }
        if graph_call {
            i.requests += 1;
            if let Some(id) = req
                .headers()
                .get("client-request-id")
                .and_then(|v| v.to_str().ok())
            {
                i.client_request_ids.push(id.to_owned());
            }
        }
        let n = i.in_flight.entry(mailbox.clone()).or_insert(0);
        *n += 1;
        let now = *n;
        i.max_in_flight = i.max_in_flight.max(now);
        (i.slow, mailbox)
    };
    if !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    let bearer_needed = path.starts_with("/v1.0/");
    let client_request_id = req.headers().get("client-request-id").cloned();
    let mut resp = if bearer_needed && !authorised(&state.lock().unwrap(), req.headers()) {
        unauthorised()
    } else {
        next.run(req).await
    };
    // As Graph does: the caller's id echoed, beside the id Graph gave the request.
    if let Some(id) = client_request_id {
        resp.headers_mut().insert("client-request-id", id);
    }
    if let Ok(id) = axum::http::HeaderValue::from_str(&charlie::invocation::new_correlation_id()) {
        resp.headers_mut().insert("request-id", id);
    }
    if let Some(n) = state.lock().unwrap().in_flight.get_mut(&mailbox) {
        *n -= 1;
    }
    resp
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message, "innerError": { "request-id": "00000000-0000-0000-0000-000000000000" } } })))
        .into_response()
}

/// Whether the call carries a bearer token the token endpoint issued.
fn authorised(inner: &Inner, headers: &HeaderMap) -> bool {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    token.is_some_and(|t| inner.tokens.contains(t))
}

fn unauthorised() -> Response {
    graph_error(
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        "Access token is empty or invalid.",
    )
}

#[derive(Deserialize)]
struct TokenForm {
    client_id: String,
    client_secret: String,
    grant_type: String,
    scope: String,
}

async fn token(
    State(state): Shared,
    UrlPath(_tenant): UrlPath<String>,
    Form(form): Form<TokenForm>,
) -> Response {
    let mut inner = state.lock().unwrap();
    if form.grant_type != "client_credentials" || !form.scope.ends_with("/.default") {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request", "error_description": "AADSTS900144: grant_type must be client_credentials with a /.default scope"}))).into_response();
    }
    if form.client_id != inner.client_id || form.client_secret != inner.client_secret {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}))).into_response();
    }
    let token = format!("fake-token-{:016x}", rand_u64());
    inner.tokens.insert(token.clone());
    Json(json!({ "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token })).into_response()
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Round state in the tokens: `$skiptoken` = `{epoch}.{from}.{to}.{offset}.{since}`,
/// `$deltatoken` = `{epoch}.{seen}`; a token of an older epoch answers 410.
async fn delta(
    State(state): Shared,
    UrlPath((user, folder)): UrlPath<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let inner = state.lock().unwrap();
    if !inner.is_mailbox(&user) || !folder.eq_ignore_ascii_case(&inner.folder) {
        return graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        );
    }
    let gone = || {
        let body: Value = serde_json::from_str(SYNC_STATE_NOT_FOUND).expect("fixture is JSON");
        (StatusCode::GONE, Json(body)).into_response()
    };
    let epoch = inner.delta_epoch;
    let total = inner.messages.len();
    let (from, to, offset, since) = if let Some(skip) = q.get("$skiptoken") {
        let parts: Vec<&str> = skip.split('.').collect();
        let num = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
        match (num(0), num(1), num(2), num(3), parts.get(4)) {
            (Some(e), _, _, _, _) if e as u32 != epoch => return gone(),
            (Some(_), Some(f), Some(t), Some(o), Some(since)) => {
                (f, t, o, since.parse::<i64>().ok())
            }
            _ => return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid skip token."),
        }
    } else if let Some(d) = q.get("$deltatoken") {
        match d
            .split_once('.')
            .map(|(e, s)| (e.parse::<u32>(), s.parse::<usize>()))
        {
            Some((Ok(e), Ok(seen))) if e == epoch && seen <= total => (seen, total, 0, None),
            _ => return gone(),
        }
    } else {
        let since = match q.get("$filter") {
            None => None,
            Some(f) => match f
                .trim()
                .strip_prefix("receivedDateTime ge ")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.trim()).ok())
            {
                Some(t) => Some(t.timestamp()),
                None => {
                    return graph_error(
                        StatusCode::BAD_REQUEST,
                        "ErrorInvalidUrlQueryFilter",
                        "The only supported filter for a message delta is receivedDateTime ge {time}.",
                    );
                }
            },
        };
        (0, total, 0, since)
    };
    // The round's messages: those that arrived in [from, to), received since the filter.
    let eligible: Vec<&FakeMessage> = inner.messages[from..to]
        .iter()
        .filter(|m| {
            since.is_none_or(|s| {
                chrono::DateTime::parse_from_rfc3339(&m.received)
                    .map(|r| r.timestamp() >= s)
                    .unwrap_or(true)
            })
        })
        .collect();
    let wanted = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(inner.page_size);
    let size = wanted.min(inner.page_size).max(1);
    let end = (offset + size).min(eligible.len());
    let immutable = wants_immutable(&headers);
    let value: Vec<Value> = eligible[offset.min(end)..end]
        .iter()
        .map(|m| summary_json(m, immutable))
        .collect();
    let link = format!(
        "{}/users/{user}/mailFolders/{folder}/messages/delta",
        inner.base_url
    );
    let mut body = json!({
        "@odata.context": format!("{}/$metadata#Collection(message)", inner.base_url),
        "value": value,
    });
    let since_part = since.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    if end < eligible.len() {
        body["@odata.nextLink"] = Value::String(format!(
            "{link}?$skiptoken={epoch}.{from}.{to}.{end}.{since_part}"
        ));
    } else {
        body["@odata.deltaLink"] = Value::String(format!("{link}?$deltatoken={epoch}.{to}"));
    }
    Json(body).into_response()
}

fn summary_json(m: &FakeMessage, immutable: bool) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.message",
        "@odata.etag": format!("W/\"{}\"", m.id.len()),
        "id": if immutable { m.id.clone() } else { default_id(&m.id) },
        "internetMessageId": format!("<{}@fake.graph>", m.id),
        "subject": m.subject,
        "receivedDateTime": m.received,
        "hasAttachments": !m.attachments.is_empty(),
        "from": { "emailAddress": { "name": m.from_name, "address": m.from_address } },
    })
}

/// The transport headers Exchange Online keeps, in Graph's shape (`name`, `value`), topmost
/// first: its own `Authentication-Results` as it writes it (no authserv-id).
fn internet_headers(m: &FakeMessage) -> Value {
    let domain = m.from_address.rsplit('@').next().unwrap_or_default();
    let results = m.authentication_results.clone().unwrap_or_else(|| {
        format!(
            "spf=pass (sender IP is 203.0.113.7) smtp.mailfrom={domain}; dkim=pass (signature was verified) header.d={domain};dmarc=pass action=none header.from={domain};compauth=pass reason=100"
        )
    });
    json!([
        { "name": "Received", "value": "from mail.example (203.0.113.7) by EXCH01.prod.outlook.com with Microsoft SMTP Server" },
        { "name": "Authentication-Results", "value": results },
        { "name": "Message-ID", "value": format!("<{}@fake.graph>", m.id) },
        { "name": "From", "value": format!("{} <{}>", m.from_name, m.from_address) },
        { "name": "Subject", "value": m.subject },
    ])
}

async fn user(State(state): Shared, UrlPath(user): UrlPath<String>) -> Response {
    let inner = state.lock().unwrap();
    if !inner.is_mailbox(&user) {
        return graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{user}' does not exist or one of its queried reference-property objects are not present."
            ),
        );
    }
    Json(json!({
        "@odata.context": format!("{}/$metadata#users(id)/$entity", inner.base_url),
        "id": MAILBOX_OBJECT_ID,
        "userPrincipalName": inner.mailbox,
        "mail": inner.mailbox,
    }))
    .into_response()
}

async fn message(
    State(state): Shared,
    UrlPath((_user, id)): UrlPath<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let inner = state.lock().unwrap();
    match inner.find(&id) {
        Some(m) => {
            let mut body = summary_json(m, wants_immutable(&headers));
            // Graph returns internetMessageHeaders only when `$select` names them.
            let selected = q
                .get("$select")
                .is_some_and(|s| s.split(',').any(|f| f.trim() == "internetMessageHeaders"));
            if selected {
                body["internetMessageHeaders"] = internet_headers(m);
            }
            Json(body).into_response()
        }
        None => graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
    }
}

async fn attachments(
    State(state): Shared,
    UrlPath((_user, id)): UrlPath<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let inner = state.lock().unwrap();
    // `$select` without `contentBytes` leaves the content out, as Graph does.
    let with_content = q
        .get("$select")
        .is_none_or(|s| s.split(',').any(|f| f.trim() == "contentBytes"));
    let Some(m) = inner.find(&id) else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        );
    };
    let value: Vec<Value> = m
        .attachments
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "@odata.type": "#microsoft.graph.fileAttachment",
                "id": format!("{}-att{i}", m.id),
                "lastModifiedDateTime": m.received,
                "name": a.name,
                "contentType": a.content_type,
                "size": a.bytes.len(),
                "isInline": false,
                "contentId": null,
                "contentLocation": null,
                "contentBytes": base64::engine::general_purpose::STANDARD.encode(&a.bytes),
            })
        })
        .map(|mut v: Value| {
            if !with_content {
                v.as_object_mut().map(|o| o.remove("contentBytes"));
            }
            v
        })
        .collect();
    Json(json!({ "@odata.context": "attachments", "value": value })).into_response()
}

async fn attachment_value(
    State(state): Shared,
    UrlPath((_user, id, attachment)): UrlPath<(String, String, String)>,
) -> Response {
    let inner = state.lock().unwrap();
    let found = inner.find(&id).and_then(|m| {
        m.attachments
            .iter()
            .enumerate()
            .find(|(i, _)| format!("{}-att{i}", m.id) == attachment)
    });
    match found {
        Some((_, a)) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, a.content_type.clone())],
            a.bytes.clone(),
        )
            .into_response(),
        None => graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
    }
}

fn invalid_user(user: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorInvalidUser",
        &format!("The requested user '{user}' is invalid."),
    )
}

fn bad_request(code: &str, message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, code, message)
}

/// Addresses of a `recipient` collection (`[{emailAddress: {address}}]`).
fn addresses(message: &Value, field: &str) -> Result<Vec<String>, Response> {
    let Some(list) = message.get(field) else {
        return Ok(vec![]);
    };
    let Some(list) = list.as_array() else {
        return Err(bad_request(
            "ErrorInvalidRecipients",
            &format!("{field} must be a collection of recipients."),
        ));
    };
    list.iter()
        .map(|r| {
            r["emailAddress"]["address"]
                .as_str()
                .filter(|a| a.contains('@'))
                .map(str::to_owned)
                .ok_or_else(|| {
                    bad_request(
                        "ErrorInvalidRecipients",
                        "At least one recipient is not valid.",
                    )
                })
        })
        .collect()
}

/// Checks a `message` resource the way Graph does for what Charlie sends, and turns it into a
/// sent mail (inline `fileAttachment`s decoded).
fn sent_of(user: &str, message: &Value, path: SendPath) -> Result<SentMail, Response> {
    let to = addresses(message, "toRecipients")?;
    let cc = addresses(message, "ccRecipients")?;
    let bcc = addresses(message, "bccRecipients")?;
    if to.len() + cc.len() + bcc.len() == 0 {
        return Err(bad_request(
            "ErrorInvalidRecipients",
            "At least one recipient is required, but none were found.",
        ));
    }
    let body_type = message["body"]["contentType"]
        .as_str()
        .unwrap_or("Text")
        .to_owned();
    if !body_type.eq_ignore_ascii_case("html") && !body_type.eq_ignore_ascii_case("text") {
        return Err(bad_request(
            "RequestBodyRead",
            &format!(
                "Cannot convert the literal '{body_type}' to the expected type 'microsoft.graph.bodyType'."
            ),
        ));
    }
    let internet_message_id = message["internetMessageId"].as_str().map(str::to_owned);
    if let Some(id) = &internet_message_id
        && !(id.starts_with('<') && id.ends_with('>') && id.contains('@'))
    {
        return Err(bad_request(
            "ErrorInvalidInternetMessageHeader",
            "The internet message id must be of the form <local@domain>.",
        ));
    }
    let mut attachments = Vec::new();
    for a in message["attachments"].as_array().into_iter().flatten() {
        if a["@odata.type"] != "#microsoft.graph.fileAttachment" {
            return Err(bad_request(
                "ErrorInvalidRequest",
                "Only fileAttachment is supported here.",
            ));
        }
        let bytes = a["contentBytes"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or_else(|| {
                bad_request(
                    "ErrorInvalidRequest",
                    "contentBytes is missing or not base64.",
                )
            })?;
        attachments.push(FakeAttachment {
            name: a["name"].as_str().unwrap_or_default().to_owned(),
            content_type: a["contentType"]
                .as_str()
                .unwrap_or("application/octet-stream")
                .to_owned(),
            bytes,
        });
    }
    Ok(SentMail {
        from_user: user.to_owned(),
        subject: message["subject"].as_str().unwrap_or_default().to_owned(),
        body_type,
        body: message["body"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        to,
        cc,
        bcc,
        internet_message_id,
        attachments,
        path,
    })
}

/// Parses a JSON request body, or Graph's 400.
fn json_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        bad_request(
            "BadRequest",
            &format!("Unable to read JSON request payload: {e}"),
        )
    })
}

/// What `sendMail` and draft creation check first (after the token): the mailbox, Graph's 4 MB
/// request limit and the JSON.
fn mailbox_json(inner: &Inner, user: &str, body: &[u8]) -> Result<Value, Response> {
    if !inner.is_mailbox(user) {
        return Err(invalid_user(user));
    }
    if body.len() > MAX_REQUEST_BYTES {
        return Err(graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The request is larger than 4 MB; attach large files through an upload session.",
        ));
    }
    json_body(body)
}

async fn send_mail(
    State(state): Shared,
    UrlPath(user): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = state.lock().unwrap();
    let request = match mailbox_json(&inner, &user, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(message) = request.get("message") else {
        return bad_request(
            "ErrorInvalidParameter",
            "The 'message' parameter is missing.",
        );
    };
    match sent_of(&user, message, SendPath::SendMail) {
        Ok(mail) => {
            inner.sent.push(mail);
            StatusCode::ACCEPTED.into_response()
        }
        Err(r) => r,
    }
}

async fn create_draft(
    State(state): Shared,
    UrlPath(user): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = state.lock().unwrap();
    let mut message = match mailbox_json(&inner, &user, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let id = format!("AAMkDraft{:016x}=", rand_u64());
    message["id"] = Value::String(id.clone());
    message["isDraft"] = Value::Bool(true);
    inner.drafts.insert(
        id,
        Draft {
            user,
            message: message.clone(),
            attachments: Vec::new(),
            ranges: 0,
        },
    );
    (StatusCode::CREATED, Json(message)).into_response()
}

fn draft_not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

async fn create_upload_session(
    State(state): Shared,
    UrlPath((_user, id)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = state.lock().unwrap();
    if !inner.drafts.contains_key(&id) {
        return draft_not_found();
    }
    let request = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let item = &request["AttachmentItem"];
    if item["attachmentType"] != "file" {
        return bad_request(
            "ErrorInvalidParameter",
            "AttachmentItem.attachmentType must be 'file'.",
        );
    }
    let (Some(name), Some(size)) = (item["name"].as_str(), item["size"].as_u64()) else {
        return bad_request(
            "ErrorInvalidParameter",
            "AttachmentItem needs a name and a size.",
        );
    };
    if size == 0 || size as usize > MAX_UPLOAD_BYTES {
        return bad_request(
            "ErrorAttachmentSizeLimitExceeded",
            "The attachment size must be between 1 byte and 150 MB.",
        );
    }
    let session = format!("{:016x}", rand_u64());
    let token = format!("{:016x}", rand_u64());
    inner.uploads.insert(
        session.clone(),
        UploadState {
            draft: id,
            token: token.clone(),
            name: name.to_owned(),
            content_type: item["contentType"]
                .as_str()
                .unwrap_or("application/octet-stream")
                .to_owned(),
            size: size as usize,
            received: Vec::new(),
        },
    );
    let root = inner.base_url.trim_end_matches("/v1.0").to_owned();
    (
        StatusCode::CREATED,
        Json(json!({
            "@odata.context": format!("{}/$metadata#microsoft.graph.uploadSession", inner.base_url),
            "uploadUrl": format!("{root}/upload/{session}?authtoken={token}"),
            "expirationDateTime": (chrono::Utc::now() + chrono::Duration::hours(6)).to_rfc3339(),
            "nextExpectedRanges": ["0-"],
        })),
    )
        .into_response()
}

/// `bytes {start}-{end}/{total}`.
fn content_range(headers: &HeaderMap) -> Option<(usize, usize, usize)> {
    let v = headers.get("content-range")?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?, total.parse().ok()?))
}

async fn upload_range(
    State(state): Shared,
    UrlPath(session): UrlPath<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = state.lock().unwrap();
    if headers.contains_key("authorization") {
        // The upload URL is pre-authenticated; Graph documents that a bearer token must not
        // be sent (Outlook rejects it).
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Do not send an Authorization header to a pre-authenticated upload URL.",
        );
    }
    let Some(upload) = inner.uploads.get_mut(&session) else {
        return draft_not_found();
    };
    if q.get("authtoken") != Some(&upload.token) {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The upload URL's token is missing or wrong.",
        );
    }
    let Some((start, end, total)) = content_range(&headers) else {
        return bad_request(
            "InvalidContentRange",
            "Content-Range must be 'bytes {start}-{end}/{total}'.",
        );
    };
    if body.len() > MAX_RANGE_BYTES {
        return bad_request("InvalidContentRange", "A range may carry at most 4 MB.");
    }
    if total != upload.size
        || start != upload.received.len()
        || end + 1 != start + body.len()
        || end >= total
    {
        let expected = upload.received.len();
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            Json(json!({ "error": { "code": "InvalidRange", "message": format!("expected bytes from {expected} of {}, got {start}-{end}/{total} with {} bytes", upload.size, body.len()) } })),
        )
            .into_response();
    }
    upload.received.extend_from_slice(&body);
    let done = upload.received.len() == upload.size;
    let next = upload.received.len();
    let draft_id = upload.draft.clone();
    if let Some(d) = inner.drafts.get_mut(&draft_id) {
        d.ranges += 1;
    }
    if !done {
        return Json(json!({
            "@odata.context": "uploadSession",
            "expirationDateTime": (chrono::Utc::now() + chrono::Duration::hours(6)).to_rfc3339(),
            "nextExpectedRanges": [next.to_string()],
        }))
        .into_response();
    }
    let upload = inner.uploads.remove(&session).expect("present above");
    let attachment_id = format!("AAMkAtt{:016x}=", rand_u64());
    let location = format!(
        "{}/users/{}/messages/{draft_id}/attachments/{attachment_id}",
        inner.base_url, inner.mailbox
    );
    let Some(draft) = inner.drafts.get_mut(&draft_id) else {
        return draft_not_found();
    };
    draft.attachments.push(FakeAttachment {
        name: upload.name,
        content_type: upload.content_type,
        bytes: upload.received,
    });
    (StatusCode::CREATED, [("location", location)]).into_response()
}

async fn send_draft(
    State(state): Shared,
    UrlPath((user, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut inner = state.lock().unwrap();
    if !headers.contains_key("content-length") {
        return graph_error(
            StatusCode::LENGTH_REQUIRED,
            "LengthRequired",
            "A POST without a body needs Content-Length: 0.",
        );
    }
    let Some(draft) = inner.drafts.remove(&id) else {
        return draft_not_found();
    };
    if !draft.user.eq_ignore_ascii_case(&user) {
        inner.drafts.insert(id, draft);
        return draft_not_found();
    }
    match sent_of(
        &user,
        &draft.message,
        SendPath::Draft {
            ranges: draft.ranges,
        },
    ) {
        Ok(mut mail) => {
            mail.attachments.extend(draft.attachments);
            inner.sent.push(mail);
            StatusCode::ACCEPTED.into_response()
        }
        Err(r) => {
            inner.drafts.insert(id, draft);
            r
        }
    }
}

async fn delete_message(
    State(state): Shared,
    UrlPath((_user, id)): UrlPath<(String, String)>,
) -> Response {
    let mut inner = state.lock().unwrap();
    if inner.drafts.remove(&id).is_some() {
        inner.uploads.retain(|_, u| u.draft != id);
        return StatusCode::NO_CONTENT.into_response();
    }
    draft_not_found()
}

fn subscription_not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        "The object was not found.",
    )
}

fn subscription_json(s: &FakeSubscription) -> Value {
    let mut body: Value = serde_json::from_str(SUBSCRIPTION_CREATED).expect("fixture is JSON");
    body["id"] = json!(s.id);
    body["resource"] = json!(s.resource);
    body["clientState"] = json!(s.client_state);
    body["notificationUrl"] = json!(s.notification_url);
    body["lifecycleNotificationUrl"] = json!(s.lifecycle_url);
    body["expirationDateTime"] = json!(s.expires.to_rfc3339());
    body
}

/// An expiry Graph accepts for mail: in the future, at most 10,070 minutes ahead.
fn valid_expiry(v: &Value) -> Result<chrono::DateTime<chrono::Utc>, Response> {
    let t = v
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok_or_else(|| {
            bad_request(
                "InvalidRequest",
                "expirationDateTime is missing or not a date.",
            )
        })?;
    let now = chrono::Utc::now();
    if t <= now {
        return Err(bad_request(
            "InvalidRequest",
            "Subscription expiration must be in the future.",
        ));
    }
    if t > now + chrono::Duration::minutes(MAX_SUBSCRIPTION_MINUTES) {
        return Err(bad_request(
            "InvalidRequest",
            "Subscription expiration can only be 10070 minutes in the future.",
        ));
    }
    Ok(t)
}

/// Graph's validation handshake: POST `url?validationToken=…`; the subscriber must answer 200
/// with the token as text/plain within 10 seconds.
async fn handshake(url: &str) -> Result<(), String> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {:016x}",
        rand_u64()
    );
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .post(url)
        .query(&[("validationToken", &token)])
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
        .map_err(|e| format!("{url} unreachable: {e}"))?;
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.text().await.unwrap_or_default();
    if status != StatusCode::OK || !ctype.starts_with("text/plain") || body != token {
        return Err(format!(
            "{url} answered {status} ({ctype}) without the decoded validation token"
        ));
    }
    Ok(())
}

async fn create_subscription(
    State(state): Shared,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (mailbox, folder) = {
        let inner = state.lock().unwrap();
        (
            inner.mailbox.to_ascii_lowercase(),
            inner.folder.to_ascii_lowercase(),
        )
    };
    let request = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if request["changeType"].as_str().is_none_or(|c| {
        !c.split(',')
            .all(|t| ["created", "updated", "deleted"].contains(&t.trim()))
    }) {
        return bad_request(
            "InvalidRequest",
            "changeType must be created, updated and/or deleted.",
        );
    }
    let resource = request["resource"].as_str().unwrap_or_default().to_owned();
    let id = MAILBOX_OBJECT_ID;
    let wanted = [
        format!("users/{mailbox}/mailfolders('{folder}')/messages"),
        format!("users/{mailbox}/mailfolders/{folder}/messages"),
        format!("users/{id}/mailfolders('{folder}')/messages"),
        format!("users/{id}/mailfolders/{folder}/messages"),
    ];
    if !wanted.contains(&resource.trim_start_matches('/').to_ascii_lowercase()) {
        return bad_request(
            "ExtensionError",
            &format!("Resource '{resource}' is not supported here."),
        );
    }
    let expires = match valid_expiry(&request["expirationDateTime"]) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let client_state = request["clientState"].as_str().map(str::to_owned);
    if client_state.as_ref().is_some_and(|c| c.len() > 128) {
        return bad_request(
            "InvalidRequest",
            "clientState can be at most 128 characters.",
        );
    }
    let Some(notification_url) = request["notificationUrl"].as_str().map(str::to_owned) else {
        return bad_request("InvalidRequest", "notificationUrl is required.");
    };
    let lifecycle_url = request["lifecycleNotificationUrl"]
        .as_str()
        .map(str::to_owned);
    // The handshake, outside the lock: the subscriber may call back into the fake.
    for url in std::iter::once(&notification_url).chain(lifecycle_url.as_ref()) {
        if let Err(why) = handshake(url).await {
            return bad_request(
                "ValidationError",
                &format!(
                    "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request. ({why})"
                ),
            );
        }
    }
    let sub = FakeSubscription {
        id: format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rand_u64() as u32,
            rand_u64() as u16,
            rand_u64() as u16 & 0xfff,
            rand_u64() as u16 & 0xfff,
            rand_u64() & 0xffff_ffff_ffff
        ),
        resource,
        notification_url,
        lifecycle_url,
        client_state,
        expires,
        renewals: 0,
        immutable_ids: wants_immutable(&headers),
    };
    let body = subscription_json(&sub);
    state.lock().unwrap().subscriptions.push(sub);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn get_subscription(State(state): Shared, UrlPath(id): UrlPath<String>) -> Response {
    let inner = state.lock().unwrap();
    match inner.subscriptions.iter().find(|s| s.id == id) {
        Some(s) => Json(subscription_json(s)).into_response(),
        None => subscription_not_found(),
    }
}

async fn renew_subscription(
    State(state): Shared,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = state.lock().unwrap();
    let request = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(sub) = inner.subscriptions.iter_mut().find(|s| s.id == id) else {
        return subscription_not_found();
    };
    match valid_expiry(&request["expirationDateTime"]) {
        Ok(t) => {
            sub.expires = t;
            sub.renewals += 1;
            Json(subscription_json(sub)).into_response()
        }
        Err(r) => r,
    }
}

async fn delete_subscription(State(state): Shared, UrlPath(id): UrlPath<String>) -> Response {
    let mut inner = state.lock().unwrap();
    let before = inner.subscriptions.len();
    inner.subscriptions.retain(|s| s.id != id);
    if inner.subscriptions.len() < before {
        StatusCode::NO_CONTENT.into_response()
    } else {
        subscription_not_found()
    }
}
