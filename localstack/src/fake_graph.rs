//! A fake Microsoft Graph mailbox for the demo and the tests (Graph cannot run here). It follows
//! Graph's published contract for the calls Charlie makes:
//! - `POST /{tenant}/oauth2/v2.0/token` (client credentials) → `{token_type, expires_in, access_token}`;
//! - `GET /v1.0/users/{user}/mailFolders/{folder}/messages/delta`: pages of `Prefer:
//!   odata.maxpagesize` (at most the fake's page size) linked by `@odata.nextLink`
//!   (`$skiptoken`), the last one carrying `@odata.deltaLink` (`$deltatoken`) from which a later
//!   round returns only what arrived since;
//! - `GET /v1.0/users/{user}/messages/{id}` and `.../attachments` (`fileAttachment` with base64
//!   `contentBytes`);
//! - sending as the mailbox user: `POST /v1.0/users/{user}/sendMail` (202, no body; the
//!   request at most 4 MB, so files inline only under 3 MB), and the large-file path: `POST
//!   .../messages` (a draft, 201), `POST .../messages/{id}/attachments/createUploadSession`
//!   (201, a pre-authenticated `uploadUrl`), `PUT uploadUrl` ranges in order with
//!   `Content-Range`, at most 4 MB each and *without* an `Authorization` header (200 with
//!   `nextExpectedRanges`, 201 with `Location` for the last), `POST .../messages/{id}/send`
//!   (202; 411 without `Content-Length`), `DELETE .../messages/{id}` (204);
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
            drafts: Default::default(),
            uploads: Default::default(),
            sent: Vec::new(),
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
            .route("/v1.0/users/{user}/sendMail", post(send_mail))
            .route("/v1.0/users/{user}/messages", post(create_draft))
            .route(
                "/v1.0/users/{user}/messages/{id}/attachments/createUploadSession",
                post(create_upload_session),
            )
            .route("/v1.0/users/{user}/messages/{id}/send", post(send_draft))
            .route("/upload/{session}", axum::routing::put(upload_range))
            .layer(axum::extract::DefaultBodyLimit::max(2 * MAX_REQUEST_BYTES))
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

    /// Mails sent through the fake (Sent Items), oldest first.
    pub fn sent_mail(&self) -> Vec<SentMail> {
        self.inner.lock().unwrap().sent.clone()
    }

    /// Drafts not sent (a failed large-file send should leave none).
    pub fn draft_count(&self) -> usize {
        self.inner.lock().unwrap().drafts.len()
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

async fn send_mail(
    State(state): Shared,
    UrlPath(user): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = state.lock().unwrap();
    if !authorised(&mut inner, &headers) {
        return unauthorised();
    }
    if !user.eq_ignore_ascii_case(&inner.mailbox) {
        return invalid_user(&user);
    }
    if body.len() > MAX_REQUEST_BYTES {
        return graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The request is larger than 4 MB; attach large files through an upload session.",
        );
    }
    let request = match json_body(&body) {
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
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = state.lock().unwrap();
    if !authorised(&mut inner, &headers) {
        return unauthorised();
    }
    if !user.eq_ignore_ascii_case(&inner.mailbox) {
        return invalid_user(&user);
    }
    if body.len() > MAX_REQUEST_BYTES {
        return graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The request is larger than 4 MB.",
        );
    }
    let mut message = match json_body(&body) {
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
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = state.lock().unwrap();
    if !authorised(&mut inner, &headers) {
        return unauthorised();
    }
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
    inner.requests += 1;
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
    if !authorised(&mut inner, &headers) {
        return unauthorised();
    }
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
    headers: HeaderMap,
) -> Response {
    let mut inner = state.lock().unwrap();
    if !authorised(&mut inner, &headers) {
        return unauthorised();
    }
    if inner.drafts.remove(&id).is_some() {
        inner.uploads.retain(|_, u| u.draft != id);
        return StatusCode::NO_CONTENT.into_response();
    }
    draft_not_found()
}
