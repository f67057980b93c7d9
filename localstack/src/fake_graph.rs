//! A fake Microsoft Graph mailbox for the demo and the tests (Graph cannot run here). It follows
//! Graph's published contract for the calls Charlie makes:
//! - `POST /{tenant}/oauth2/v2.0/token` (client credentials) → `{token_type, expires_in, access_token}`;
//! - `GET /v1.0/users/{user}/mailFolders/{folder}/messages/delta`: pages of `Prefer:
//!   odata.maxpagesize` (at most the fake's page size) linked by `@odata.nextLink`
//!   (`$skiptoken`), the last one carrying `@odata.deltaLink` (`$deltatoken`) from which a later
//!   round returns only what arrived since;
//! - `GET /v1.0/users/{user}/messages/{id}` and `.../attachments` (`fileAttachment` with base64
//!   `contentBytes`);
//! - a bearer token on every Graph call (401 `InvalidAuthenticationToken` otherwise); 404
//!   `ErrorItemNotFound` for unknown messages, with Graph's error body.

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

impl FakeGraph {
    /// Loads `dir/messages.json` (attachments from files beside it) and serves it on a free port.
    pub async fn start(dir: &Path, page_size: usize) -> anyhow::Result<Self> {
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
            });
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
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
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route(
                "/v1.0/users/{user}/mailFolders/{folder}/messages/delta",
                get(delta),
            )
            .route("/v1.0/users/{user}/messages/{id}", get(message))
            .route(
                "/v1.0/users/{user}/messages/{id}/attachments",
                get(attachments),
            )
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

    /// Graph calls served so far (token requests excluded).
    pub fn requests(&self) -> u64 {
        self.inner.lock().unwrap().requests
    }
}

type Shared = State<Arc<Mutex<Inner>>>;

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message, "innerError": { "request-id": "00000000-0000-0000-0000-000000000000" } } })))
        .into_response()
}

/// Counts the call and checks its bearer token.
fn authorised(inner: &mut Inner, headers: &HeaderMap) -> bool {
    inner.requests += 1;
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

/// Round state in the tokens: `$skiptoken` = `{from}.{to}.{offset}`, `$deltatoken` = `{seen}`.
async fn delta(
    State(state): Shared,
    UrlPath((user, folder)): UrlPath<(String, String)>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut inner = state.lock().unwrap();
    if !authorised(&mut inner, &headers) {
        return unauthorised();
    }
    if !user.eq_ignore_ascii_case(&inner.mailbox) || !folder.eq_ignore_ascii_case(&inner.folder) {
        return graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        );
    }
    let total = inner.messages.len();
    let (from, to, offset) = if let Some(skip) = q.get("$skiptoken") {
        let parts: Vec<usize> = skip.split('.').filter_map(|p| p.parse().ok()).collect();
        match parts.as_slice() {
            [f, t, o] => (*f, *t, *o),
            _ => return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid skip token."),
        }
    } else if let Some(d) = q.get("$deltatoken") {
        match d.parse::<usize>() {
            Ok(seen) if seen <= total => (seen, total, seen),
            _ => {
                return graph_error(
                    StatusCode::GONE,
                    "SyncStateNotFound",
                    "The sync state was not found or has expired.",
                );
            }
        }
    } else {
        (0, total, 0)
    };
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
    let end = (offset + size).min(to);
    let value: Vec<Value> = inner.messages[offset..end]
        .iter()
        .map(summary_json)
        .collect();
    let link = format!(
        "{}/users/{user}/mailFolders/{folder}/messages/delta",
        inner.base_url
    );
    let mut body = json!({
        "@odata.context": format!("{}/$metadata#Collection(message)", inner.base_url),
        "value": value,
    });
    if end < to {
        body["@odata.nextLink"] = Value::String(format!("{link}?$skiptoken={from}.{to}.{end}"));
    } else {
        body["@odata.deltaLink"] = Value::String(format!("{link}?$deltatoken={to}"));
    }
    Json(body).into_response()
}

fn summary_json(m: &FakeMessage) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.message",
        "@odata.etag": format!("W/\"{}\"", m.id.len()),
        "id": m.id,
        "subject": m.subject,
        "receivedDateTime": m.received,
        "hasAttachments": !m.attachments.is_empty(),
        "from": { "emailAddress": { "name": m.from_name, "address": m.from_address } },
    })
}

async fn message(
    State(state): Shared,
    UrlPath((_user, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut inner = state.lock().unwrap();
    if !authorised(&mut inner, &headers) {
        return unauthorised();
    }
    match inner.messages.iter().find(|m| m.id == id) {
        Some(m) => Json(summary_json(m)).into_response(),
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
    headers: HeaderMap,
) -> Response {
    let mut inner = state.lock().unwrap();
    if !authorised(&mut inner, &headers) {
        return unauthorised();
    }
    let Some(m) = inner.messages.iter().find(|m| m.id == id) else {
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
        .collect();
    Json(json!({ "@odata.context": "attachments", "value": value })).into_response()
}
