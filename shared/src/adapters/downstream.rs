//! The downstream persistence API over HTTPS (`reqwest`, rustls): `POST {base}/batch-metadata`
//! with the bearer token from Secrets Manager (`{"token": "…"}`), one timeout per call. Every
//! HTTP status is an answer; only a call that got none (timeout, refused, reset) is an error.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use tokio::sync::RwLock;

use crate::ports::{Downstream, DownstreamError, DownstreamReply};
use crate::secret::Secret;

pub struct HttpDownstream {
    http: reqwest::Client,
    url: String,
    token: RwLock<Secret>,
    /// Where the token is read again from after a 401 (none: a fixed token, for tests).
    secret: Option<(aws_sdk_secretsmanager::Client, String)>,
}

#[derive(serde::Deserialize)]
struct TokenSecret {
    token: Secret,
}

async fn read_token(client: &aws_sdk_secretsmanager::Client, id: &str) -> anyhow::Result<Secret> {
    let secret = crate::adapters::aws::secrets::read_secret(client, id).await?;
    let parsed: TokenSecret = serde_json::from_str(secret.expose()).map_err(|e| {
        anyhow::anyhow!(
            "secret {id} is not {{\"token\": …}} JSON (at column {})",
            e.column()
        )
    })?;
    Ok(parsed.token)
}

impl HttpDownstream {
    /// A client of `{base}/batch-metadata` sending `token`. `base` must be HTTPS unless
    /// `allow_http` (a local fake).
    pub fn new(
        base: &str,
        token: Secret,
        timeout: Duration,
        allow_http: bool,
    ) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(base)
            .with_context(|| format!("the downstream base URL {base:?}"))?;
        if parsed.scheme() != "https" && !allow_http {
            anyhow::bail!(
                "the downstream base URL {base:?} is not HTTPS (CHARLIE_DOWNSTREAM_ALLOW_HTTP=1 allows it for a local fake)"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .context("building the HTTP client for the downstream API")?;
        Ok(HttpDownstream {
            http,
            url: format!("{}/batch-metadata", base.trim_end_matches('/')),
            token: RwLock::new(token),
            secret: None,
        })
    }

    /// From `CHARLIE_DOWNSTREAM_URL` and the token in secret `CHARLIE_DOWNSTREAM_SECRET`.
    pub async fn from_env(
        aws: &crate::adapters::aws::AwsConfig,
        env: &crate::env::Env,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let base = env.required("CHARLIE_DOWNSTREAM_URL")?;
        let id = env.required("CHARLIE_DOWNSTREAM_SECRET")?;
        let client = aws_sdk_secretsmanager::Client::new(&aws.sdk);
        let token = read_token(&client, id).await?;
        let allow_http = env.get("CHARLIE_DOWNSTREAM_ALLOW_HTTP") == Some("1");
        let mut me = Self::new(base, token, timeout, allow_http)?;
        me.secret = Some((client, id.to_owned()));
        Ok(me)
    }
}

#[async_trait]
impl Downstream for HttpDownstream {
    async fn post_batch(
        &self,
        body: &[u8],
        idempotency_key: &str,
        correlation_id: &str,
    ) -> Result<DownstreamReply, DownstreamError> {
        let token = self.token.read().await.expose().to_owned();
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("idempotency-key", idempotency_key)
            .header("x-correlation-id", correlation_id)
            .body(body.to_vec())
            .send()
            .await
            // Without the URL: the error names what happened, not where the token went.
            .map_err(|e| DownstreamError(describe(&e)))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::downstream::retry_after(v, chrono::Utc::now()));
        let body = resp.text().await.map_err(|e| {
            DownstreamError(format!(
                "{status} with an unreadable body: {}",
                describe(&e)
            ))
        })?;
        Ok(DownstreamReply {
            status,
            retry_after,
            body,
        })
    }

    async fn refresh_credentials(&self) -> anyhow::Result<()> {
        if let Some((client, id)) = &self.secret {
            let token = read_token(client, id).await?;
            *self.token.write().await = token;
        }
        Ok(())
    }
}

/// A transport error in a few words (timeout, connect, reset…), without the URL.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the body broke off"
    } else {
        "the connection failed"
    };
    let mut source = std::error::Error::source(e);
    let mut root = None;
    while let Some(s) = source {
        root = Some(s.to_string());
        source = s.source();
    }
    match root {
        Some(r) => format!("{what}: {r}"),
        None => what.to_owned(),
    }
}
