//! `GraphClient`: the few Microsoft Graph calls Charlie makes, over plain `reqwest` with typed serde
//! structs. The base URL and the token URL are configuration, so the same binary talks to Graph
//! in Azure or to the local fake Graph (`graph-rs-sdk` refuses non-Microsoft hosts outside its
//! test feature and cannot change its token endpoint at all).
//!
//! Auth: OAuth2 client credentials; the token is cached until a minute before it expires.
//! Throttling: 429/503/504 are retried after `Retry-After` (or a jittered backoff), a bounded
//! number of times; at most [`MAX_CONCURRENT_PER_MAILBOX`] requests per mailbox are in flight
//! at once (Graph's limit for Outlook resources); every request has a timeout.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore};

use super::retry::backoff;
use crate::definitions::TransportKind;
use crate::ports::{
    AttachmentInfo, ByteChunks, DeltaPage, GraphError, MailMessage, MailSource, MailTransport,
    OutgoingAttachment, OutgoingMail, SentMail, Subscription, SubscriptionRequest, Subscriptions,
};
use crate::secret::Secret;

const MAX_ATTEMPTS: u32 = 5;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const PAGE_SIZE: u32 = 50;

/// Graph app credentials, as stored in Secrets Manager: `{"client_id": …, "client_secret": …}`,
/// and optionally `"client_secret_expires_at"` (RFC 3339: the end date Entra ID shows for the
/// secret), recorded as `GraphSecretSecondsToExpiry` so an alarm fires before it lapses.
#[derive(Deserialize)]
pub struct GraphCredentials {
    pub client_id: String,
    #[serde(deserialize_with = "secret_from_string")]
    pub client_secret: Secret,
    #[serde(default)]
    pub client_secret_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn secret_from_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    String::deserialize(d).map(Secret::new)
}

impl std::fmt::Debug for GraphCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_secret_expires_at", &self.client_secret_expires_at)
            .finish()
    }
}

/// Graph allows 4 concurrent requests per mailbox (Outlook service limits).
pub const MAX_CONCURRENT_PER_MAILBOX: usize = 4;

/// The mailbox a Graph URL addresses (`…/users/{mailbox}/…`), for the concurrency limit;
/// calls that address none share one limit.
fn mailbox_of(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    match lower.find("/users/") {
        Some(i) => lower[i + 7..]
            .split(['/', '?'])
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => String::new(),
    }
}

struct CachedToken {
    value: Secret,
    refresh_after: Instant,
}

/// Where Graph's upload sessions for Outlook attachments live besides Graph itself (the
/// `uploadUrl` of `createUploadSession`).
pub const OUTLOOK_UPLOAD_HOSTS: [&str; 2] = ["outlook.office.com", "outlook.office365.com"];

/// Every call asks for immutable ids: a message keeps its id when it moves folder, and delta,
/// messages and (for subscriptions created with it) change notifications all use the same one.
const PREFER_IMMUTABLE_IDS: &str = "IdType=\"ImmutableId\"";

pub struct GraphClient {
    http: reqwest::Client,
    base_url: String,
    /// The host of `base_url`: links elsewhere are not followed.
    graph_host: String,
    /// Mailbox → directory object id, resolved once.
    mailbox_ids: Mutex<std::collections::HashMap<String, String>>,
    token_url: String,
    credentials: GraphCredentials,
    token: Mutex<Option<CachedToken>>,
    /// One semaphore per mailbox: at most [`MAX_CONCURRENT_PER_MAILBOX`] requests in flight.
    in_flight: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
    /// The stage whose metrics its throttled calls count in (`CHARLIE_STAGE`).
    stage: String,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawAttachment {
    #[serde(rename = "@odata.type", default)]
    odata_type: String,
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "contentType")]
    content_type: Option<String>,
    #[serde(default)]
    size: u64,
}

#[derive(Deserialize)]
struct ValueList<T> {
    value: Vec<T>,
    #[serde(default, rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl GraphClient {
    pub fn new(
        base_url: &str,
        token_url: &str,
        credentials: GraphCredentials,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client for Graph")?;
        let graph_host = reqwest::Url::parse(base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .with_context(|| format!("GRAPH_BASE_URL {base_url:?} has no host"))?;
        Ok(GraphClient {
            http,
            graph_host,
            mailbox_ids: Mutex::new(Default::default()),
            base_url: base_url.trim_end_matches('/').to_owned(),
            token_url: token_url.to_owned(),
            credentials,
            token: Mutex::new(None),
            in_flight: Default::default(),
            stage: "graph".to_owned(),
        })
    }

    /// Names the stage its metrics are recorded for.
    pub fn for_stage(mut self, stage: &str) -> Self {
        self.stage = stage.to_owned();
        self
    }

    async fn token(&self, force: bool) -> Result<Secret, GraphError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && !force
            && Instant::now() < t.refresh_after
        {
            return Ok(t.value.clone());
        }
        let what = "token request".to_owned();
        let form = [
            ("client_id", self.credentials.client_id.as_str()),
            ("client_secret", self.credentials.client_secret.expose()),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ];
        let resp = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|source| GraphError::Transport {
                what: what.clone(),
                source: source.into(),
            })?;
        let body = checked_body(resp, &what).await?;
        let token: TokenResponse =
            serde_json::from_slice(&body).map_err(|source| GraphError::Shape { what, source })?;
        let lifetime = Duration::from_secs(token.expires_in.saturating_sub(60).max(30));
        let value = Secret::new(token.access_token);
        *cached = Some(CachedToken {
            value: value.clone(),
            refresh_after: Instant::now() + lifetime,
        });
        Ok(value)
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str, what: &str) -> Result<T, GraphError> {
        self.call_json(Method::GET, url, Payload::None, what).await
    }

    /// [`GraphClient::call`], with the answer's JSON parsed.
    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        payload: Payload<'_>,
        what: &str,
    ) -> Result<T, GraphError> {
        let (_, body) = self.call(method, url, payload, what).await?;
        parse(&body, what)
    }

    /// One Graph call with the app's token (refreshed once on 401), retried on 429/503/504
    /// after `Retry-After`. `Payload::Range` calls go to a pre-authenticated upload URL and
    /// carry no token, as Graph requires.
    async fn call(
        &self,
        method: Method,
        url: &str,
        payload: Payload<'_>,
        what: &str,
    ) -> Result<(StatusCode, Vec<u8>), GraphError> {
        let (resp, permit) = self.respond(method, url, payload, what).await?;
        let status = resp.status();
        let body = checked_body(resp, what).await;
        drop(permit);
        Ok((status, body?))
    }

    /// [`GraphClient::call`] up to the answer's headers: the response (its body unread) and
    /// the mailbox's concurrency permit, to hold while the body is read.
    async fn respond(
        &self,
        method: Method,
        url: &str,
        payload: Payload<'_>,
        what: &str,
    ) -> Result<(reqwest::Response, tokio::sync::OwnedSemaphorePermit), GraphError> {
        let mut attempt = 0;
        let mut force_token = false;
        let authorised = !matches!(payload, Payload::Range { .. });
        self.check_host(url, !authorised, what)?;
        let limit = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(mailbox_of(url))
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_CONCURRENT_PER_MAILBOX)))
                .clone()
        };
        loop {
            attempt += 1;
            // Held for the request only, not while waiting out a Retry-After.
            let permit = limit.clone().acquire_owned().await.expect("never closed");
            let mut req = self.http.request(method.clone(), url);
            if authorised {
                let token = self.token(force_token).await?;
                req = req.bearer_auth(token.expose());
            }
            if authorised {
                req = req.header("Prefer", PREFER_IMMUTABLE_IDS);
            }
            // The work's correlation id, so Graph's logs (and Microsoft support) find the
            // call: Graph echoes it and logs it beside its own `request-id`.
            if let Some(correlation) = crate::invocation::current_correlation() {
                req = req.header(
                    "client-request-id",
                    crate::invocation::graph_client_request_id(&correlation),
                );
            }
            req = match &payload {
                Payload::None if method == Method::GET => {
                    req.header("Prefer", format!("odata.maxpagesize={PAGE_SIZE}"))
                }
                Payload::None => req.header(reqwest::header::CONTENT_LENGTH, 0),
                Payload::Json(v) => req.json(v),
                Payload::Range {
                    bytes,
                    start,
                    total,
                } => req
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(
                        reqwest::header::CONTENT_RANGE,
                        format!("bytes {start}-{}/{total}", start + bytes.len() as u64 - 1),
                    )
                    .body(bytes.to_vec()),
            };
            let resp = req.send().await.map_err(|source| GraphError::Transport {
                what: what.to_owned(),
                source: source.into(),
            })?;
            let status = resp.status();
            let retryable = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            );
            if retryable && attempt < MAX_ATTEMPTS {
                let wait = retry_after(&resp).unwrap_or_else(|| {
                    backoff(attempt, Duration::from_millis(500), Duration::from_secs(20))
                });
                drop(permit);
                crate::metrics::count(&self.stage, crate::metrics::name::GRAPH_THROTTLED, None, 1);
                tracing::warn!(
                    status = status.as_u16(),
                    wait_ms = wait.as_millis() as u64,
                    what,
                    "Graph throttled; waiting"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && authorised && !force_token {
                force_token = true; // token revoked or expired early: fetch a new one once
                continue;
            }
            return Ok((resp, permit));
        }
    }

    /// Refuses a URL whose host is not Graph's (or, for an upload session, Outlook's upload
    /// host), so the token and the data never go elsewhere.
    fn check_host(&self, url: &str, upload: bool, what: &str) -> Result<(), GraphError> {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        if host == self.graph_host || upload && OUTLOOK_UPLOAD_HOSTS.contains(&host.as_str()) {
            return Ok(());
        }
        tracing::error!(what, host, "refused a link to a host that is not Graph's");
        Err(GraphError::ForeignHost {
            what: what.to_owned(),
            host,
        })
    }

    /// Sends a mail as `user` (`Mail.Send` application permission). Without an attachment or
    /// with one under [`INLINE_ATTACHMENT_MAX`], one `sendMail` call with the file inline;
    /// above, a draft, an upload session fed in [`UPLOAD_CHUNK`] ranges, then `send`. A draft
    /// left by a failure is deleted. Graph answers `sendMail` with no id: the mail is known by
    /// the `internetMessageId` Charlie gives it.
    pub async fn send_mail(&self, mail: &OutgoingMail<'_>) -> Result<SentMail, GraphError> {
        let user_url = format!(
            "{}/users/{}",
            self.base_url,
            crate::uri::graph_id(mail.from)
        );
        let inline = mail
            .attachment
            .as_ref()
            .is_none_or(|a| a.bytes.len() < INLINE_ATTACHMENT_MAX);
        if inline {
            let body = serde_json::json!({
                "message": message_json(mail, true),
                "saveToSentItems": true,
            });
            self.call(
                Method::POST,
                &format!("{user_url}/sendMail"),
                Payload::Json(&body),
                "sendMail",
            )
            .await?;
            return Ok(SentMail {
                provider_message_id: mail.internet_message_id.to_owned(),
                draft_id: None,
            });
        }
        let draft: IdOnly = self
            .call_json(
                Method::POST,
                &format!("{user_url}/messages"),
                Payload::Json(&message_json(mail, false)),
                "create draft",
            )
            .await?;
        let message_url = format!("{user_url}/messages/{}", crate::uri::graph_id(&draft.id));
        let sent = async {
            if let Some(a) = &mail.attachment {
                self.upload_attachment(&message_url, a).await?;
            }
            self.call(
                Method::POST,
                &format!("{message_url}/send"),
                Payload::None,
                "send draft",
            )
            .await
        }
        .await;
        if let Err(e) = sent {
            if let Err(d) = self
                .call(Method::DELETE, &message_url, Payload::None, "delete draft")
                .await
            {
                tracing::warn!(error = %d, "could not delete the unsent draft");
            }
            return Err(e);
        }
        Ok(SentMail {
            provider_message_id: mail.internet_message_id.to_owned(),
            draft_id: Some(draft.id),
        })
    }

    /// `createUploadSession` on the draft, then the bytes in order, each range where Graph's
    /// `nextExpectedRanges` says; the last range is answered `201 Created`.
    async fn upload_attachment(
        &self,
        message_url: &str,
        a: &OutgoingAttachment<'_>,
    ) -> Result<(), GraphError> {
        let total = a.bytes.len() as u64;
        let request = serde_json::json!({ "AttachmentItem": {
            "attachmentType": "file", "name": a.name, "size": total, "contentType": a.content_type,
        }});
        let session: UploadSession = self
            .call_json(
                Method::POST,
                &format!("{message_url}/attachments/createUploadSession"),
                Payload::Json(&request),
                "createUploadSession",
            )
            .await?;
        let mut start = session.next_start().unwrap_or(0);
        loop {
            let end = (start + UPLOAD_CHUNK as u64).min(total);
            let (status, body) = self
                .call(
                    Method::PUT,
                    &session.upload_url,
                    Payload::Range {
                        bytes: &a.bytes[start as usize..end as usize],
                        start,
                        total,
                    },
                    "upload attachment range",
                )
                .await?;
            if status == StatusCode::CREATED {
                return Ok(());
            }
            let next: UploadSession = parse(&body, "upload attachment range")?;
            match next.next_start() {
                Some(n) if n > start && n < total => start = n,
                other => {
                    return Err(GraphError::Status {
                        status: status.as_u16(),
                        what: "upload attachment range".into(),
                        code: "unexpectedNextRange".into(),
                        message: format!(
                            "after bytes {start}-{} of {total} Graph expects {other:?}",
                            end - 1
                        ),
                    });
                }
            }
        }
    }
}

#[async_trait]
impl MailSource for GraphClient {
    /// The first delta URL of a mail folder: only the fields Charlie needs; with `since`, only
    /// mail received from then on (the one filter Graph's message delta supports).
    fn delta_start_url(
        &self,
        mailbox: &str,
        folder: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> String {
        let mut url = format!(
            "{}/users/{}/mailFolders/{}/messages/delta?$select=subject,from,receivedDateTime,hasAttachments",
            self.base_url,
            crate::uri::graph_id(mailbox),
            crate::uri::graph_id(folder)
        );
        if let Some(t) = since {
            url.push_str(&format!(
                "&$filter=receivedDateTime+ge+{}",
                t.format("%Y-%m-%dT%H:%M:%SZ")
            ));
        }
        url
    }

    /// One page of a delta round; follow `next_link` until a page carries `delta_link`.
    async fn delta_page(&self, url: &str) -> Result<DeltaPage, GraphError> {
        self.get_json(url, "messages delta").await
    }

    async fn message(&self, mailbox: &str, id: &str) -> Result<MailMessage, GraphError> {
        let url = format!(
            "{}/users/{}/messages/{}?$select=subject,from,receivedDateTime,hasAttachments,internetMessageId,internetMessageHeaders",
            self.base_url,
            crate::uri::graph_id(mailbox),
            crate::uri::graph_id(id)
        );
        self.get_json(&url, "get message").await
    }

    async fn mailbox_id(&self, mailbox: &str) -> Result<String, GraphError> {
        if let Some(id) = self.mailbox_ids.lock().await.get(mailbox) {
            return Ok(id.clone());
        }
        #[derive(Deserialize)]
        struct User {
            id: String,
        }
        let url = format!(
            "{}/users/{}?$select=id",
            self.base_url,
            crate::uri::graph_id(mailbox)
        );
        let user: User = self.get_json(&url, "get user").await?;
        self.mailbox_ids
            .lock()
            .await
            .insert(mailbox.to_owned(), user.id.clone());
        Ok(user.id)
    }

    /// The message's file attachments without their content (`$select` leaves out
    /// `contentBytes`; item and reference attachments are skipped).
    async fn attachment_list(
        &self,
        mailbox: &str,
        id: &str,
    ) -> Result<Vec<AttachmentInfo>, GraphError> {
        let mut url = Some(format!(
            "{}/users/{}/messages/{}/attachments?$select=id,name,contentType,size,isInline",
            self.base_url,
            crate::uri::graph_id(mailbox),
            crate::uri::graph_id(id)
        ));
        let mut out = Vec::new();
        while let Some(u) = url.take() {
            let page: ValueList<RawAttachment> = self.get_json(&u, "list attachments").await?;
            for a in page.value {
                if a.odata_type != "#microsoft.graph.fileAttachment" {
                    continue;
                }
                out.push(AttachmentInfo {
                    id: a.id,
                    name: a.name,
                    content_type: a
                        .content_type
                        .unwrap_or_else(|| "application/octet-stream".into()),
                    size: a.size,
                });
            }
            url = page.next_link;
        }
        Ok(out)
    }

    async fn attachment_content(
        &self,
        mailbox: &str,
        message_id: &str,
        attachment_id: &str,
    ) -> Result<Vec<u8>, GraphError> {
        let url = format!(
            "{}/users/{}/messages/{}/attachments/{}/$value",
            self.base_url,
            crate::uri::graph_id(mailbox),
            crate::uri::graph_id(message_id),
            crate::uri::graph_id(attachment_id)
        );
        let (_, body) = self
            .call(Method::GET, &url, Payload::None, "get attachment content")
            .await?;
        Ok(body)
    }

    /// `/$value` as a stream; the mailbox's concurrency permit is held until it is read.
    async fn attachment_stream(
        &self,
        mailbox: &str,
        message_id: &str,
        attachment_id: &str,
    ) -> Result<ByteChunks, GraphError> {
        let what = "get attachment content";
        let url = format!(
            "{}/users/{}/messages/{}/attachments/{}/$value",
            self.base_url,
            crate::uri::graph_id(mailbox),
            crate::uri::graph_id(message_id),
            crate::uri::graph_id(attachment_id)
        );
        let (resp, permit) = self.respond(Method::GET, &url, Payload::None, what).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            return Err(status_error(status, &body, what));
        }
        let body = resp.bytes_stream().map(move |piece| {
            let _held = &permit;
            piece.map_err(|e| anyhow::anyhow!("reading an attachment from Graph: {e}"))
        });
        Ok(body.boxed())
    }
}

#[async_trait]
impl Subscriptions for GraphClient {
    /// Creates a change subscription; Graph first runs the validation handshake against both
    /// URLs and answers 400 when either fails it.
    async fn create(&self, request: &SubscriptionRequest<'_>) -> Result<Subscription, GraphError> {
        let body = serde_json::json!({
            "changeType": "created",
            "notificationUrl": request.notification_url,
            "lifecycleNotificationUrl": request.lifecycle_url,
            "resource": request.resource,
            "expirationDateTime": request.expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "clientState": request.client_state.expose(),
            "latestSupportedTlsVersion": "v1_2",
        });
        let url = format!("{}/subscriptions", self.base_url);
        self.call_json(
            Method::POST,
            &url,
            Payload::Json(&body),
            "create subscription",
        )
        .await
    }

    /// Extends a subscription (also how `reauthorizationRequired` is answered). 404 means
    /// Graph no longer has it: create a new one.
    async fn renew(
        &self,
        id: &str,
        expires: chrono::DateTime<chrono::Utc>,
    ) -> Result<Subscription, GraphError> {
        let body = serde_json::json!({
            "expirationDateTime": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        let url = format!(
            "{}/subscriptions/{}",
            self.base_url,
            crate::uri::graph_id(id)
        );
        self.call_json(
            Method::PATCH,
            &url,
            Payload::Json(&body),
            "renew subscription",
        )
        .await
    }

    async fn delete(&self, id: &str) -> Result<(), GraphError> {
        let url = format!(
            "{}/subscriptions/{}",
            self.base_url,
            crate::uri::graph_id(id)
        );
        self.call(Method::DELETE, &url, Payload::None, "delete subscription")
            .await
            .map(|_| ())
    }
}

/// Report mail through Graph `sendMail` as the report's `send_as` mailbox user
/// (`Mail.Send` application permission).
#[async_trait]
impl MailTransport for GraphClient {
    fn kind(&self) -> TransportKind {
        TransportKind::Graph
    }

    async fn send(&self, mail: &OutgoingMail<'_>) -> anyhow::Result<SentMail> {
        self.send_mail(mail)
            .await
            .with_context(|| format!("sending through Graph as {}", mail.from))
    }
}

/// Graph's `message` JSON for a mail: HTML body (Graph messages hold one body), recipients,
/// our `internetMessageId`, and the file inline when asked.
fn message_json(mail: &OutgoingMail<'_>, with_attachment: bool) -> serde_json::Value {
    let people = |list: &[String]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|a| serde_json::json!({ "emailAddress": { "address": a } }))
            .collect()
    };
    let mut m = serde_json::json!({
        "subject": mail.subject,
        "body": { "contentType": "HTML", "content": mail.html },
        "toRecipients": people(&mail.recipients.to),
        "ccRecipients": people(&mail.recipients.cc),
        "bccRecipients": people(&mail.recipients.bcc),
        "internetMessageId": mail.internet_message_id,
    });
    if with_attachment && let Some(a) = &mail.attachment {
        m["attachments"] = serde_json::json!([{
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": a.name,
            "contentType": a.content_type,
            "contentBytes": base64::engine::general_purpose::STANDARD.encode(a.bytes),
        }]);
    }
    m
}

fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, GraphError> {
    serde_json::from_slice(body).map_err(|source| GraphError::Shape {
        what: what.to_owned(),
        source,
    })
}

enum Payload<'a> {
    None,
    Json(&'a serde_json::Value),
    /// One range of an upload session (no token: the URL is pre-authenticated).
    Range {
        bytes: &'a [u8],
        start: u64,
        total: u64,
    },
}

/// Graph's limit for a file sent inline (`sendMail`, or POST to `attachments`): under 3 MB.
pub const INLINE_ATTACHMENT_MAX: usize = 3_000_000;
/// One upload-session range: under Graph's 4 MB per PUT, a multiple of 320 KiB.
pub const UPLOAD_CHUNK: usize = 12 * 320 * 1024;

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Deserialize)]
struct UploadSession {
    #[serde(default, rename = "uploadUrl")]
    upload_url: String,
    #[serde(default, rename = "nextExpectedRanges")]
    next_expected_ranges: Vec<String>,
}

impl UploadSession {
    /// The start of the first range Graph still expects (`"2097152"` or `"2097152-4194303"`).
    fn next_start(&self) -> Option<u64> {
        let first = self.next_expected_ranges.first()?;
        first.split('-').next()?.trim().parse().ok()
    }
}

async fn checked_body(resp: reqwest::Response, what: &str) -> Result<Vec<u8>, GraphError> {
    let status = resp.status();
    let body = resp.bytes().await.map_err(|source| GraphError::Transport {
        what: what.to_owned(),
        source: source.into(),
    })?;
    if status.is_success() {
        return Ok(body.to_vec());
    }
    Err(status_error(status, &body, what))
}

/// An unsuccessful answer as an error, with Graph's code and message from its body.
fn status_error(status: StatusCode, body: &[u8], what: &str) -> GraphError {
    let detail: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    GraphError::Status {
        status: status.as_u16(),
        what: what.to_owned(),
        code: detail.error.code,
        message: detail.error.message,
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_pages_parse_graphs_documented_shape() {
        let page: DeltaPage =
            serde_json::from_str(include_str!("../../../events/graph/delta-page.json")).unwrap();
        assert_eq!(page.value.len(), 2);
        assert!(page.value[0].has_attachments);
        assert!(page.value[1].removed.is_some());
        assert!(page.next_link.is_some() && page.delta_link.is_none());
    }

    #[test]
    fn the_concurrency_limit_is_per_mailbox() {
        assert_eq!(
            mailbox_of("https://graph.microsoft.com/v1.0/users/Ops@Contoso.example/messages/x"),
            "ops@contoso.example"
        );
        assert_eq!(
            mailbox_of("https://g/v1.0/users/a@b.example?$x=1"),
            "a@b.example"
        );
        assert_eq!(mailbox_of("https://g/v1.0/subscriptions/1"), "");
    }

    #[test]
    fn expired_sync_states_are_recognised_by_status_or_code() {
        let e = |status, code: &str| GraphError::Status {
            status,
            what: "delta".into(),
            code: code.into(),
            message: String::new(),
        };
        assert!(e(410, "").is_expired_sync_state());
        assert!(e(400, "syncStateNotFound").is_expired_sync_state());
        assert!(!e(404, "ErrorItemNotFound").is_expired_sync_state());
    }

    #[test]
    fn ids_are_encoded_as_one_path_segment() {
        assert_eq!(crate::uri::graph_id("AAMk/a+b=="), "AAMk%2Fa%2Bb==");
    }

    #[test]
    fn credentials_never_print_the_secret() {
        let c: GraphCredentials =
            serde_json::from_str(r#"{"client_id":"id","client_secret":"s3cr3t"}"#).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
