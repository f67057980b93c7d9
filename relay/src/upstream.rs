//! The relay's side of the control API: signed calls (`charlie::relay_auth`) for where to upload
//! a mail, and the upload itself, a presigned S3 `PUT`.

use std::time::Duration;

use async_trait::async_trait;
use charlie::contract::{self, OutboxMail, RelayHello, UploadTicket};
use charlie::relay_auth;
use charlie::secret::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call failed, as the relay acts on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpError {
    /// Try again later (network, 5xx, 429, an expired upload URL): the mail stays.
    #[error("{0} (will retry)")]
    Transient(String),
    /// The relay itself is refused (key, clock, revoked): nothing can go until it is fixed.
    #[error("the control API refuses this relay: {0}")]
    Refused(String),
    /// This mail can never go as it is.
    #[error("{0}")]
    Permanent(String),
    /// This one mail cannot go now (its SMTP server answered 4xx for it), though others may:
    /// reported deferred, it waits out a backoff while the outbox goes on.
    #[error("{0} (deferred)")]
    Deferred(String),
}

#[async_trait]
pub trait Upstream: Send + Sync {
    /// The report mail queued for this relay.
    async fn outbox(&self) -> Result<Vec<OutboxMail>, UpError> {
        Ok(Vec::new())
    }
    /// A queued mail's MIME.
    async fn download(&self, _mail: &OutboxMail) -> Result<Vec<u8>, UpError> {
        Err(UpError::Permanent("no outbox".into()))
    }
    /// Tells the API the relay's SMTP server took a queued mail.
    async fn ack(&self, _message_id: &str, _smtp_reply: &str) -> Result<(), UpError> {
        Err(UpError::Permanent("no outbox".into()))
    }
    /// Tells the API the relay's sender refused a queued mail for good, and why.
    async fn refuse(&self, _message_id: &str, _reason: &str) -> Result<(), UpError> {
        Err(UpError::Permanent("no outbox".into()))
    }
    /// Tells the API the relay's sender could not take a queued mail now, and what it said.
    async fn defer(&self, _message_id: &str, _answer: &str) -> Result<(), UpError> {
        Err(UpError::Permanent("no outbox".into()))
    }
    /// Who the API takes this relay for (a signed call that changes nothing).
    async fn whoami(&self) -> Result<RelayHello, UpError>;
    /// Where a raw mail of this digest and length goes (or that it is there already).
    async fn upload_url(&self, sha256: &str, size: u64) -> Result<UploadTicket, UpError>;
    async fn put(&self, ticket: &UploadTicket, bytes: Vec<u8>) -> Result<(), UpError>;
}

pub struct Api {
    base: String,
    relay: String,
    secret: Vec<u8>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: &Secret) -> anyhow::Result<Api> {
        let (relay, secret) = relay_auth::parse_key(key.expose()).map_err(anyhow::Error::msg)?;
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            relay,
            secret,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(300))
                .user_agent(concat!("charlie-relay/", env!("CARGO_PKG_VERSION")))
                .build()?,
        })
    }

    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// A signed call with a JSON body (or none), its answer read as `T`.
    async fn signed<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, UpError> {
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| UpError::Permanent(e.to_string()))?,
            None => Vec::new(),
        };
        let headers = relay_auth::sign(
            &self.relay,
            &self.secret,
            method,
            path,
            &body,
            chrono::Utc::now().timestamp(),
            &relay_auth::new_nonce(),
        );
        let mut req = self.http.request(
            method
                .parse()
                .map_err(|_| UpError::Permanent(method.into()))?,
            format!("{}{path}", self.base),
        );
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.map_err(|e| {
            UpError::Transient(format!("cannot reach the control API: {}", e.without_url()))
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if (200..=299).contains(&status) {
            // Never the answer itself in the error: it may hold a presigned URL.
            return serde_json::from_str(&text).map_err(|e| {
                UpError::Transient(format!(
                    "the control API's answer to {method} {path} is not what the relay reads: {e}"
                ))
            });
        }
        // The API's problem, or API Gateway's own `{"message": …}` (a 429, a 503), else the text.
        #[derive(serde::Deserialize)]
        struct Said {
            message: String,
        }
        let message = || match serde_json::from_str::<Said>(&text) {
            Ok(said) => said.message,
            Err(_) => text.clone(),
        };
        match status {
            401 | 403 => Err(UpError::Refused(format!("{status}: {}", message()))),
            429 | 500..=599 => Err(UpError::Transient(format!(
                "the control API answered {status}: {}",
                message()
            ))),
            _ => Err(UpError::Permanent(format!(
                "the control API answered {status}: {}",
                message()
            ))),
        }
    }
}

#[async_trait]
impl Upstream for Api {
    async fn whoami(&self) -> Result<RelayHello, UpError> {
        self.signed("GET", "/v1/relay", None::<&()>).await
    }

    async fn outbox(&self) -> Result<Vec<OutboxMail>, UpError> {
        let outbox: contract::Outbox = self.signed("GET", "/v1/relay/outbox", None::<&()>).await?;
        Ok(outbox.mails)
    }

    async fn download(&self, mail: &OutboxMail) -> Result<Vec<u8>, UpError> {
        let resp = self.http.get(&mail.url).send().await.map_err(|e| {
            UpError::Transient(format!(
                "downloading {} failed: {}",
                mail.message_id,
                e.without_url()
            ))
        })?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(UpError::Transient(format!(
                "downloading {} answered {status}",
                mail.message_id
            )));
        }
        Ok(resp
            .bytes()
            .await
            .map_err(|e| {
                UpError::Transient(format!(
                    "downloading {}: {}",
                    mail.message_id,
                    e.without_url()
                ))
            })?
            .to_vec())
    }

    async fn ack(&self, message_id: &str, smtp_reply: &str) -> Result<(), UpError> {
        let sent = contract::MailSent {
            message_id: message_id.to_owned(),
            smtp_reply: smtp_reply.to_owned(),
        };
        self.signed::<contract::SentRecorded>("POST", "/v1/relay/outbox/ack", Some(&sent))
            .await
            .map(|_| ())
    }

    async fn refuse(&self, message_id: &str, reason: &str) -> Result<(), UpError> {
        let refused = contract::MailRefused {
            message_id: message_id.to_owned(),
            reason: reason.to_owned(),
        };
        self.signed::<contract::RefusalRecorded>("POST", "/v1/relay/outbox/refused", Some(&refused))
            .await
            .map(|_| ())
    }

    async fn defer(&self, message_id: &str, answer: &str) -> Result<(), UpError> {
        let deferred = contract::MailDeferred {
            message_id: message_id.to_owned(),
            answer: answer.to_owned(),
        };
        self.signed::<contract::DeferralRecorded>(
            "POST",
            "/v1/relay/outbox/deferred",
            Some(&deferred),
        )
        .await
        .map(|_| ())
    }

    async fn upload_url(&self, sha256: &str, size: u64) -> Result<UploadTicket, UpError> {
        let ask = contract::UploadRequest {
            sha256: sha256.to_owned(),
            size,
        };
        self.signed("POST", "/v1/relay/uploads", Some(&ask)).await
    }

    async fn put(&self, ticket: &UploadTicket, bytes: Vec<u8>) -> Result<(), UpError> {
        let url = ticket
            .url
            .as_deref()
            .ok_or_else(|| UpError::Transient("the upload answer has no url".into()))?;
        let mut req = self.http.put(url);
        for (name, value) in &ticket.headers {
            req = req.header(name, value);
        }
        // Never the URL in an error: it is a credential until it expires.
        let resp = req.body(bytes).send().await.map_err(|e| {
            UpError::Transient(format!(
                "uploading to the inbox failed: {}",
                e.without_url()
            ))
        })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        // S3's XML error: its Code says which (the URL expired, the bytes changed, …).
        let text = resp.text().await.unwrap_or_default();
        let code = text
            .split_once("<Code>")
            .and_then(|(_, r)| r.split_once("</Code>"))
            .map_or("", |(c, _)| c)
            .to_owned();
        match status {
            400 if code == "BadDigest" || code == "InvalidDigest" => {
                Err(UpError::Permanent(format!(
                    "the inbox refused the bytes ({code}): the file changed while it was read?"
                )))
            }
            _ => Err(UpError::Transient(format!(
                "the inbox answered {status} {code}"
            ))),
        }
    }
}
