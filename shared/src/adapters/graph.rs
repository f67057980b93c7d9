//! `Mailbox`: the few Microsoft Graph calls Charlie makes, over plain `reqwest` with typed serde
//! structs. The base URL and the token URL are configuration, so the same binary talks to Graph
//! in Azure or to the local fake Graph (`graph-rs-sdk` refuses non-Microsoft hosts outside its
//! test feature and cannot change its token endpoint at all).
//!
//! Auth: OAuth2 client credentials; the token is cached until a minute before it expires.
//! Throttling: 429/503/504 are retried after `Retry-After` (or a jittered backoff), a bounded
//! number of times; every request has a timeout.

use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::retry::backoff;
use crate::secret::Secret;

const MAX_ATTEMPTS: u32 = 5;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const PAGE_SIZE: u32 = 50;

/// Graph app credentials, as stored in Secrets Manager: `{"client_id": …, "client_secret": …}`.
#[derive(Deserialize)]
pub struct GraphCredentials {
    pub client_id: String,
    #[serde(deserialize_with = "secret_from_string")]
    pub client_secret: Secret,
}

fn secret_from_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    String::deserialize(d).map(Secret::new)
}

impl std::fmt::Debug for GraphCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Graph answered {status} to {what}: {code}: {message}")]
    Status {
        status: u16,
        what: String,
        code: String,
        message: String,
    },
    #[error("Graph request {what} failed: {source}")]
    Transport {
        what: String,
        source: reqwest::Error,
    },
    #[error("Graph's answer to {what} was not of the expected shape: {source}")]
    Shape {
        what: String,
        source: serde_json::Error,
    },
}

impl GraphError {
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

struct CachedToken {
    value: Secret,
    refresh_after: Instant,
}

pub struct Mailbox {
    http: reqwest::Client,
    base_url: String,
    token_url: String,
    credentials: GraphCredentials,
    token: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// One entry of a delta page.
#[derive(Debug, Clone, Deserialize)]
pub struct DeltaEntry {
    pub id: String,
    #[serde(default, rename = "hasAttachments")]
    pub has_attachments: bool,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default, rename = "@removed")]
    pub removed: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct DeltaPage {
    #[serde(default)]
    pub value: Vec<DeltaEntry>,
    #[serde(default, rename = "@odata.nextLink")]
    pub next_link: Option<String>,
    #[serde(default, rename = "@odata.deltaLink")]
    pub delta_link: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmailAddress {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Recipient {
    #[serde(rename = "emailAddress")]
    pub email_address: EmailAddress,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub id: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub from: Option<Recipient>,
    #[serde(default, rename = "receivedDateTime")]
    pub received: Option<chrono::DateTime<chrono::Utc>>,
}

impl Message {
    pub fn sender(&self) -> &str {
        self.from
            .as_ref()
            .and_then(|f| f.email_address.address.as_deref())
            .unwrap_or("")
    }
}

#[derive(Debug, Clone)]
pub struct FileAttachment {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
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
    #[serde(default, rename = "contentBytes")]
    content_bytes: Option<String>,
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

impl Mailbox {
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
        Ok(Mailbox {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token_url: token_url.to_owned(),
            credentials,
            token: Mutex::new(None),
        })
    }

    /// The first delta URL of a mail folder: only the fields Charlie needs.
    pub fn delta_start_url(&self, mailbox: &str, folder: &str) -> String {
        format!(
            "{}/users/{mailbox}/mailFolders/{folder}/messages/delta?$select=subject,from,receivedDateTime,hasAttachments",
            self.base_url
        )
    }

    /// One page of a delta round; follow `next_link` until a page carries `delta_link`.
    pub async fn delta_page(&self, url: &str) -> Result<DeltaPage, GraphError> {
        self.get_json(url, "messages delta").await
    }

    pub async fn message(&self, mailbox: &str, id: &str) -> Result<Message, GraphError> {
        let url = format!(
            "{}/users/{mailbox}/messages/{}?$select=subject,from,receivedDateTime,hasAttachments",
            self.base_url,
            encode_segment(id)
        );
        self.get_json(&url, "get message").await
    }

    /// Every file attachment of a message, decoded (item and reference attachments are skipped).
    pub async fn attachments(
        &self,
        mailbox: &str,
        id: &str,
    ) -> Result<Vec<FileAttachment>, GraphError> {
        let mut url = Some(format!(
            "{}/users/{mailbox}/messages/{}/attachments",
            self.base_url,
            encode_segment(id)
        ));
        let mut out = Vec::new();
        while let Some(u) = url.take() {
            let page: ValueList<RawAttachment> = self.get_json(&u, "list attachments").await?;
            for a in page.value {
                if a.odata_type != "#microsoft.graph.fileAttachment" {
                    continue;
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(a.content_bytes.unwrap_or_default())
                    .map_err(|e| GraphError::Status {
                        status: 200,
                        what: "list attachments".into(),
                        code: "invalidContentBytes".into(),
                        message: format!("attachment {} is not valid base64: {e}", a.name),
                    })?;
                out.push(FileAttachment {
                    id: a.id,
                    name: a.name,
                    content_type: a
                        .content_type
                        .unwrap_or_else(|| "application/octet-stream".into()),
                    bytes,
                });
            }
            url = page.next_link;
        }
        Ok(out)
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
                source,
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
        let mut attempt = 0;
        let mut force_token = false;
        loop {
            attempt += 1;
            let token = self.token(force_token).await?;
            let resp = self
                .http
                .get(url)
                .bearer_auth(token.expose())
                .header("Prefer", format!("odata.maxpagesize={PAGE_SIZE}"))
                .send()
                .await
                .map_err(|source| GraphError::Transport {
                    what: what.to_owned(),
                    source,
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
                tracing::warn!(
                    status = status.as_u16(),
                    wait_ms = wait.as_millis() as u64,
                    what,
                    "Graph throttled; waiting"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !force_token {
                force_token = true; // token revoked or expired early: fetch a new one once
                continue;
            }
            let body = checked_body(resp, what).await?;
            return serde_json::from_slice(&body).map_err(|source| GraphError::Shape {
                what: what.to_owned(),
                source,
            });
        }
    }
}

async fn checked_body(resp: reqwest::Response, what: &str) -> Result<Vec<u8>, GraphError> {
    let status = resp.status();
    let body = resp.bytes().await.map_err(|source| GraphError::Transport {
        what: what.to_owned(),
        source,
    })?;
    if status.is_success() {
        return Ok(body.to_vec());
    }
    let detail: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
    Err(GraphError::Status {
        status: status.as_u16(),
        what: what.to_owned(),
        code: detail.error.code,
        message: detail.error.message,
    })
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

/// Percent-encodes a Graph id for use as one path segment.
fn encode_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    fn ids_are_encoded_as_one_path_segment() {
        assert_eq!(encode_segment("AAMk/a+b=="), "AAMk%2Fa%2Bb==");
    }

    #[test]
    fn credentials_never_print_the_secret() {
        let c: GraphCredentials =
            serde_json::from_str(r#"{"client_id":"id","client_secret":"s3cr3t"}"#).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
