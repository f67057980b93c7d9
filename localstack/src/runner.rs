//! The local runner: does what Lambda, the event source mappings, EventBridge Scheduler and API
//! Gateway do in AWS, for a deployment on an emulator that cannot run Lambda code.
//!
//! - Each function is built in-process from its deployed environment (plus the emulator's
//!   endpoint and credentials, which Lambda's own environment provides in AWS).
//! - Mapped queues are long-polled with the mapping's batch size; each batch goes to the function
//!   as a real `SqsEvent`; only the messages it did not report as failed are deleted, so the
//!   queue's redrive policy moves a poison message to its DLQ after maxReceiveCount receives.
//!   (Difference from AWS, for speed: a failed message becomes visible again at once instead of
//!   after the visibility timeout; receive counts and redrive are the queue's own.)
//! - A schedule fires on request, with `<aws.scheduler.scheduled-time>` filled in as Scheduler does:
//!   a function target is invoked with the input, an SQS target (the report schedules' `runs`
//!   queue) gets the input as a message, which the queue's consumer then takes.
//! - API routes are served on a local port as API Gateway v2 (payload 2.0) events.
//! - SQS's `ApproximateAgeOfOldestMessage` goes to the emulator's CloudWatch, as SQS publishes
//!   it on AWS: at each receive, the age of the oldest message received (0 when the queue
//!   gave none), so the API's health has a figure to read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use charlie::env::Env;
use charlie::invocation::Invocation;
use charlie::stages::Handler;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::deployment::{Deployment, QueueMapping};

/// How a route key (`"POST /graph/notifications"`, `"ANY /v1/{proxy+}"`) matches a request:
/// `Some(0)` exactly, `Some(1)` through a greedy path variable, `None` not at all.
fn route_matches(route_key: &str, method: &str, path: &str) -> Option<u8> {
    let (m, pattern) = route_key.split_once(' ')?;
    if m != "ANY" && m != method {
        return None;
    }
    if pattern == path {
        return Some(0);
    }
    let prefix = pattern.strip_suffix("{proxy+}")?;
    (path.starts_with(prefix) && path.len() > prefix.len()).then_some(1)
}

/// API Gateway's choice among routes: the exact one, else the greedy `{proxy+}` one with the
/// longest prefix, else `$default`; a method of its own beats `ANY`.
fn choose_route<'r>(
    routes: &'r [crate::deployment::Route],
    method: &str,
    path: &str,
) -> Option<&'r crate::deployment::Route> {
    let rank = |r: &crate::deployment::Route| {
        let kind = route_matches(&r.route_key, method, path)?;
        let any = r.route_key.starts_with("ANY ");
        Some((std::cmp::Reverse(kind), r.route_key.len(), !any))
    };
    routes
        .iter()
        .filter_map(|r| Some((rank(r)?, r)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, r)| r)
        .or_else(|| routes.iter().find(|r| r.route_key == "$default"))
}

/// A route's token bucket: API Gateway's throttle (steady rate, burst) as the runner applies it.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

fn env_of(env: &[(String, String)], name: &str) -> String {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Checks a request's SigV4 signature (`Authorization: AWS4-HMAC-SHA256 Credential=…,
/// SignedHeaders=…, Signature=…`, `X-Amz-Date`) as API Gateway's AWS_IAM authorization does:
/// signs the same method, path, query, signed headers and body again with the secret of the
/// access key named, for `execute-api` in the credential's region at the request's time, and
/// compares. Only `identity`'s access key is known. The principal's ARN, or why not.
pub fn check_sigv4(
    identity: &(String, String, String),
    method: &str,
    uri: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<String, String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = header("authorization").ok_or("no Authorization header")?;
    let fields = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not a SigV4 Authorization header")?;
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    let (credential, signed, signature) = match (
        field("Credential"),
        field("SignedHeaders"),
        field("Signature"),
    ) {
        (Some(c), Some(h), Some(s)) => (c, h, s),
        _ => {
            return Err(
                "the Authorization header lacks Credential, SignedHeaders or Signature".into(),
            );
        }
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key, _day, region, service, "aws4_request"] = parts[..] else {
        return Err(format!("malformed credential scope {credential:?}"));
    };
    if service != "execute-api" {
        return Err(format!("signed for {service:?}, not execute-api"));
    }
    if access_key != identity.0 {
        return Err(format!("unknown access key {access_key}"));
    }
    let date = header("x-amz-date").ok_or("no X-Amz-Date header")?;
    let at = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| format!("X-Amz-Date {date:?} is not yyyymmddThhmmssZ"))?
        .and_utc();
    if (now - at).num_minutes().abs() > 5 {
        return Err(format!("signed at {at}, more than 5 minutes from now"));
    }
    let names: Vec<&str> = signed.split(';').collect();
    let signed_headers: Vec<(&str, &str)> = names
        .iter()
        .map(|n| {
            Ok((
                *n,
                header(n).ok_or_else(|| format!("signed header {n} is missing"))?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let credentials = aws_credential_types::Credentials::new(
        &identity.0,
        &identity.1,
        header("x-amz-security-token").map(str::to_owned),
        None,
        "local",
    );
    let id = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&id)
        .region(region)
        .name(service)
        .time(at.into())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?;
    let request = SignableRequest::new(
        method,
        uri,
        signed_headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (_, expected) = sign(request, &params.into())
        .map_err(|e| e.to_string())?
        .into_parts();
    if expected != signature {
        return Err("the signature does not match".into());
    }
    Ok(identity.2.clone())
}

/// The queue name of an SQS ARN (`arn:aws:sqs:{region}:{account}:{name}`).
fn sqs_queue_name(arn: &str) -> Option<&str> {
    arn.strip_prefix("arn:aws:sqs:")
        .and_then(|rest| rest.rsplit(':').next())
}

pub struct LocalRunner {
    pub deployment: Deployment,
    stages: HashMap<String, Arc<dyn Handler>>,
    sqs: aws_sdk_sqs::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
    region: String,
    /// The routes' token buckets (those with a throttle of their own).
    buckets: std::sync::Mutex<HashMap<String, Bucket>>,
    /// The one IAM identity of the local cloud: (access key id, secret, its ARN), against
    /// which SigV4 requests on AWS_IAM routes are checked.
    iam: (String, String, String),
}

/// The ARN the local credentials answer to on AWS_IAM routes (`infra/envs/local` allows it).
pub const LOCAL_IAM_ARN: &str = "arn:aws:iam::123456789012:user/charlie-local";

/// What draining the queues did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainStats {
    pub batches: u32,
    pub messages: u32,
    pub failures: u32,
}

impl LocalRunner {
    /// Builds every deployed function from its environment plus `aws_env` (endpoint, region,
    /// credentials).
    pub async fn new(
        deployment: Deployment,
        config: &aws_config::SdkConfig,
        aws_env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut stages = HashMap::new();
        for f in &deployment.functions {
            let mut env: Env = f.environment.clone().into_iter().collect();
            env.extend(aws_env.iter().cloned());
            let stage_name = env
                .get("CHARLIE_STAGE")
                .with_context(|| format!("function {} has no CHARLIE_STAGE", f.name))?
                .to_owned();
            let stage = build_stage(&stage_name, &env)
                .await
                .with_context(|| format!("cold start of {}", f.name))?;
            stages.insert(f.arn.clone(), stage);
        }
        let region = Some(env_of(aws_env, "AWS_REGION"))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "eu-west-2".into());
        Ok(LocalRunner {
            deployment,
            stages,
            sqs: aws_sdk_sqs::Client::new(config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            iam: (
                env_of(aws_env, "AWS_ACCESS_KEY_ID"),
                env_of(aws_env, "AWS_SECRET_ACCESS_KEY"),
                LOCAL_IAM_ARN.to_owned(),
            ),
            region,
            buckets: Default::default(),
        })
    }

    /// The function's handler and a fresh invocation with its deployed timeout, as Lambda
    /// gives each invocation.
    fn stage(&self, function_arn: &str) -> anyhow::Result<(Arc<dyn Handler>, Invocation)> {
        let f = self
            .deployment
            .function_by_arn(function_arn)
            .with_context(|| format!("no deployed function {function_arn}"))?;
        Ok((self.stages[&f.arn].clone(), f.invocation()))
    }

    /// Invokes a function by name suffix (`"poller"`) with an event.
    pub async fn invoke(&self, function_suffix: &str, event: Value) -> anyhow::Result<Value> {
        let f = self
            .deployment
            .functions
            .iter()
            .find(|f| f.name.ends_with(function_suffix))
            .with_context(|| format!("no deployed function ending in {function_suffix}"))?;
        self.stages[&f.arn].invoke(event, &f.invocation()).await
    }

    /// Fires the schedule whose name ends in `suffix` as if it ran at `at`.
    pub async fn fire_schedule(&self, suffix: &str, at: DateTime<Utc>) -> anyhow::Result<Value> {
        let s = self
            .deployment
            .schedules
            .iter()
            .find(|s| s.name.ends_with(suffix))
            .with_context(|| format!("no schedule ending in {suffix}"))?;
        let input = s
            .input
            .replace(
                "<aws.scheduler.scheduled-time>",
                &at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            )
            .replace("<aws.scheduler.schedule-arn>", &s.name)
            .replace(
                "<aws.scheduler.execution-id>",
                &charlie::invocation::new_correlation_id(),
            );
        let event: Value = serde_json::from_str(&input)
            .with_context(|| format!("schedule {} input is not JSON", s.name))?;
        if let Some(queue_name) = sqs_queue_name(&s.target_arn) {
            // Scheduler's SQS target: the input becomes the message body.
            let url = self
                .sqs
                .get_queue_url()
                .queue_name(queue_name)
                .send()
                .await
                .with_context(|| format!("schedule {} targets {}", s.name, s.target_arn))?
                .queue_url
                .unwrap_or_default();
            let sent = self
                .sqs
                .send_message()
                .queue_url(&url)
                .message_body(input)
                .send()
                .await
                .with_context(|| format!("schedule {} sending to {url}", s.name))?;
            return Ok(json!({ "queued": url, "message_id": sent.message_id }));
        }
        let (stage, invocation) = self.stage(&s.target_arn)?;
        stage.invoke(event, &invocation).await
    }

    /// Pumps every mapped queue until one whole round finds them all empty. A mapping with a
    /// maximum concurrency gets that many batches at once (as Lambda runs that many
    /// instances); others one.
    pub async fn drain(&self) -> anyhow::Result<DrainStats> {
        self.drain_within(None).await
    }

    /// [`LocalRunner::drain`], but no new round starts after `within`: while a consumer keeps
    /// failing and its messages keep coming back (the batch sender during an outage) the
    /// queues never run empty, and a test still gets on.
    pub async fn drain_for(&self, within: std::time::Duration) -> anyhow::Result<DrainStats> {
        self.drain_within(Some(std::time::Instant::now() + within))
            .await
    }

    async fn drain_within(&self, until: Option<std::time::Instant>) -> anyhow::Result<DrainStats> {
        let mut total = DrainStats::default();
        loop {
            let pumps = self.deployment.mappings.iter().flat_map(|m| {
                let n = m.max_concurrency.unwrap_or(1).max(1);
                (0..n).map(move |_| self.pump_once(m))
            });
            let rounds = futures::future::join_all(pumps).await;
            let mut round = DrainStats::default();
            for r in rounds {
                let r = r?;
                round.batches += r.batches;
                round.messages += r.messages;
                round.failures += r.failures;
            }
            total.batches += round.batches;
            total.messages += round.messages;
            total.failures += round.failures;
            if round.messages == 0 || until.is_some_and(|t| std::time::Instant::now() >= t) {
                return Ok(total);
            }
        }
    }

    /// Receives one batch from `m`'s queue (long poll, 1 s) and hands it to its function.
    async fn pump_once(&self, m: &QueueMapping) -> anyhow::Result<DrainStats> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&m.queue_url)
            .max_number_of_messages(m.batch_size.clamp(1, 10))
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .with_context(|| format!("receiving from {}", m.queue_url))?;
        let messages = out.messages.unwrap_or_default();
        self.publish_oldest_age(m, &messages).await?;
        if messages.is_empty() {
            return Ok(DrainStats::default());
        }
        let records: Vec<Value> = messages
            .iter()
            .map(|msg| sqs_record(msg, &m.queue_arn, &self.region))
            .collect();
        let event = json!({ "Records": records });
        let (stage, invocation) = self.stage(&m.function_arn)?;
        let failed: Vec<String> = match stage.invoke(event, &invocation).await {
            Ok(resp) if m.report_batch_item_failures => resp["batchItemFailures"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            Ok(_) => vec![],
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), queue = m.queue_url, "invocation failed: the whole batch stays");
                messages
                    .iter()
                    .filter_map(|x| x.message_id.clone())
                    .collect()
            }
        };
        // An empty identifier fails the whole batch, as Lambda does.
        let whole_batch = failed.iter().any(String::is_empty);
        // Failed messages come back at once (the tests drain in seconds, not visibility
        // timeouts), except the batch sender's: it sets when each may come back itself, as it
        // does on AWS, and its scenarios wait for that.
        let keeps_visibility = m.function_arn.ends_with("-batch-sender");
        let mut deletes = Vec::new();
        for (i, msg) in messages.iter().enumerate() {
            let id = msg.message_id.clone().unwrap_or_default();
            let handle = msg.receipt_handle.clone().unwrap_or_default();
            if (whole_batch || failed.contains(&id)) && keeps_visibility {
                continue;
            }
            if whole_batch || failed.contains(&id) {
                self.sqs
                    .change_message_visibility()
                    .queue_url(&m.queue_url)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await?;
            } else {
                deletes.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .build()?,
                );
            }
        }
        if !deletes.is_empty() {
            let out = self
                .sqs
                .delete_message_batch()
                .queue_url(&m.queue_url)
                .set_entries(Some(deletes))
                .send()
                .await?;
            if !out.failed.is_empty() {
                bail!(
                    "could not delete {} handled messages from {}",
                    out.failed.len(),
                    m.queue_url
                );
            }
        }
        Ok(DrainStats {
            batches: 1,
            messages: messages.len() as u32,
            failures: if whole_batch {
                messages.len() as u32
            } else {
                failed.len() as u32
            },
        })
    }

    /// Puts the age of the oldest of `received` (seconds since its `SentTimestamp`) as the
    /// queue's `AWS/SQS` `ApproximateAgeOfOldestMessage`.
    async fn publish_oldest_age(
        &self,
        m: &QueueMapping,
        received: &[aws_sdk_sqs::types::Message],
    ) -> anyhow::Result<()> {
        use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
        let now = Utc::now().timestamp_millis();
        let oldest = received
            .iter()
            .filter_map(|msg| {
                msg.attributes()?
                    .get(&MessageSystemAttributeName::SentTimestamp)?
                    .parse::<i64>()
                    .ok()
            })
            .map(|sent| (now - sent).max(0) / 1000)
            .max()
            .unwrap_or(0);
        let name = m.queue_url.rsplit('/').next().unwrap_or(&m.queue_url);
        self.cloudwatch
            .put_metric_data()
            .namespace("AWS/SQS")
            .metric_data(
                MetricDatum::builder()
                    .metric_name("ApproximateAgeOfOldestMessage")
                    .dimensions(Dimension::builder().name("QueueName").value(name).build())
                    .value(oldest as f64)
                    .unit(StandardUnit::Seconds)
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("publishing {name}'s age of oldest message"))?;
        Ok(())
    }

    /// Serves the deployment's API routes on `addr` (port 0: a free one) until dropped.
    pub async fn serve_api(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve_api_on(listener)
    }

    /// Serves the API routes on a listener bound earlier (its URL went into Terraform).
    pub fn serve_api_on(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let local = listener.local_addr()?;
        let runner = self.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let runner = runner.clone();
            async move { runner.api_request(req).await }
        });
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((local, handle))
    }

    async fn api_request(&self, req: axum::extract::Request) -> axum::response::Response {
        use axum::response::IntoResponse;
        let (parts, body) = req.into_parts();
        let method = parts.method.as_str().to_owned();
        let path = parts.uri.path().to_owned();
        let Some(route) = choose_route(&self.deployment.routes, &method, &path) else {
            return (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "Not Found"})),
            )
                .into_response();
        };
        // A route with a throttle of its own is limited as API Gateway limits it (429 once its
        // bucket is empty); the stage's default throttle is not applied here.
        if let Some((rate, burst)) = route.throttle {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            let b = buckets.entry(route.route_key.clone()).or_insert(Bucket {
                tokens: f64::from(burst),
                at: now,
            });
            b.tokens =
                (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(f64::from(burst));
            b.at = now;
            if b.tokens < 1.0 {
                tracing::info!(
                    route = route.route_key,
                    "throttled: 429, as API Gateway answers"
                );
                return (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    axum::Json(json!({"message": "Too Many Requests"})),
                )
                    .into_response();
            }
            b.tokens -= 1.0;
        }
        let body = match axum::body::to_bytes(body, 10 * 1024 * 1024).await {
            Ok(b) => b,
            Err(_) => {
                return (
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                )
                    .into_response();
            }
        };
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let params = query_parameters(&query);
        // As API Gateway's payload 2.0 has them: a repeated header's values joined with commas,
        // and the `Cookie` header not among the headers but in `cookies`, one per entry.
        let mut headers = serde_json::Map::new();
        let mut cookies = Vec::new();
        for (k, v) in &parts.headers {
            let v = v.to_str().unwrap_or_default();
            if k == axum::http::header::COOKIE {
                cookies.extend(
                    v.split(';')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(|c| Value::String(c.to_owned())),
                );
                continue;
            }
            match headers.get_mut(k.as_str()) {
                Some(Value::String(earlier)) => {
                    earlier.push(',');
                    earlier.push_str(v);
                }
                _ => {
                    headers.insert(k.as_str().to_owned(), Value::String(v.to_owned()));
                }
            }
        }
        // Lambda runs the function only if its resource policy lets API Gateway invoke it for
        // this route (`aws_lambda_permission`'s source ARN); else API Gateway answers 500.
        let source_arn = format!(
            "arn:aws:execute-api:{}:123456789012:{}/$default/{method}/{}",
            self.region,
            route.api_id,
            path.trim_start_matches('/')
        );
        match self.deployment.function_by_arn(&route.function_arn) {
            Some(f) if f.allows("apigateway.amazonaws.com", &source_arn) => {}
            found => {
                tracing::error!(
                    route = route.route_key,
                    function = found.map_or(route.function_arn.as_str(), |f| f.name.as_str()),
                    source_arn,
                    "the function's resource policy does not let API Gateway invoke it for this route: 500, as API Gateway answers"
                );
                return (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"message": "Internal Server Error"})),
                )
                    .into_response();
            }
        }
        let text = std::str::from_utf8(&body).ok().map(str::to_owned);
        let now = Utc::now();
        // AWS_IAM routes: API Gateway refuses what is not signed by a known principal (403,
        // as it does), and passes the principal on in the request context.
        let mut authorizer = Value::Null;
        if route.authorization_type == "AWS_IAM" {
            let uri = parts.uri.to_string();
            match check_sigv4(&self.iam, &method, &uri, &parts.headers, &body, now) {
                Ok(arn) => {
                    authorizer = json!({"iam": {"accessKey": self.iam.0, "accountId": "123456789012", "userArn": arn, "userId": "AIDALOCAL"}});
                }
                Err(why) => {
                    tracing::info!(route = route.route_key, why, "SigV4 check failed: 403");
                    return (
                        axum::http::StatusCode::FORBIDDEN,
                        axum::Json(json!({"message": "Forbidden"})),
                    )
                        .into_response();
                }
            }
        }
        let event = json!({
            "version": "2.0",
            "routeKey": route.route_key,
            "rawPath": path,
            "rawQueryString": query,
            "headers": headers,
            "cookies": (!cookies.is_empty()).then_some(cookies),
            "queryStringParameters": params,
            "requestContext": {
                "accountId": "123456789012", "apiId": route.api_id, "domainName": "localhost",
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": ""},
                "requestId": charlie::invocation::new_correlation_id(), "routeKey": route.route_key, "stage": "$default",
                "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(), "timeEpoch": now.timestamp_millis(),
                "authorizer": authorizer,
            },
            "body": text.clone().unwrap_or_else(|| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &body)),
            "isBase64Encoded": text.is_none(),
        });
        let result = match self.stage(&route.function_arn) {
            Ok((stage, invocation)) => stage.invoke(event, &invocation).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(resp) => {
                let status = resp["statusCode"].as_u64().unwrap_or(200) as u16;
                let mut builder = axum::http::Response::builder().status(status);
                if let Some(h) = resp["headers"].as_object() {
                    for (k, v) in h {
                        if let Some(v) = v.as_str() {
                            builder = builder.header(k, v);
                        }
                    }
                }
                // Payload 2.0 answers its cookies apart; API Gateway sends each as a
                // `Set-Cookie` header.
                for cookie in resp["cookies"].as_array().into_iter().flatten() {
                    if let Some(c) = cookie.as_str() {
                        builder = builder.header(axum::http::header::SET_COOKIE, c);
                    }
                }
                let text = resp["body"].as_str().unwrap_or_default();
                let body = if resp["isBase64Encoded"].as_bool() == Some(true) {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text)
                        .unwrap_or_default()
                } else {
                    text.as_bytes().to_vec()
                };
                builder
                    .body(axum::body::Body::from(body))
                    .unwrap_or_default()
                    .into_response()
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "API invocation failed");
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"message": "Internal Server Error"})),
                )
                    .into_response()
            }
        }
    }
}

/// A deployed function's handler, built from its environment as its cold start does. The
/// runner hosts every stage in one process; each Lambda binary links only its own.
pub async fn build_stage(name: &str, env: &Env) -> anyhow::Result<Arc<dyn Handler>> {
    use charlie::stages::{api, batch_sender, ingest, mailer, poller, report, webhook};
    Ok(match name {
        "graph-webhook" => Arc::new(webhook::GraphWebhook::from_env(env).await?),
        "poller" => Arc::new(poller::Poller::from_env(env).await?),
        "ingest" => Arc::new(ingest::Ingest::from_env(env).await?),
        "report-builder" => Arc::new(report::ReportBuilder::from_env(env).await?),
        "mailer" => Arc::new(mailer::Mailer::from_env(env).await?),
        "api" => Arc::new(api::ApiFunction::from_env(env).await?),
        "batch-sender" => Arc::new(batch_sender::BatchSender::from_env(env).await?),
        other => bail!(
            "unknown stage {other:?}; expected one of {:?}",
            charlie::stages::STAGES
        ),
    })
}

/// An SQS message as a Lambda `SqsEvent` record.
fn sqs_record(msg: &aws_sdk_sqs::types::Message, queue_arn: &str, region: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = msg
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.clone())))
                .collect()
        })
        .unwrap_or_default();
    let message_attributes: serde_json::Map<String, Value> = msg
        .message_attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        json!({
                            "stringValue": v.string_value(), "dataType": v.data_type(),
                            "stringListValues": [], "binaryListValues": [],
                        }),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "messageId": msg.message_id(),
        "receiptHandle": msg.receipt_handle(),
        "body": msg.body(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": msg.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    })
}

/// `queryStringParameters` as API Gateway's payload 2.0 has them: names and values decoded,
/// a repeated parameter's values joined with commas.
fn query_parameters(query: &str) -> serde_json::Map<String, Value> {
    let mut params = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match params.get_mut(k.as_ref()) {
            Some(Value::String(earlier)) => {
                earlier.push(',');
                earlier.push_str(&v);
            }
            _ => {
                params.insert(k.into_owned(), Value::String(v.into_owned()));
            }
        }
    }
    params
}

#[cfg(test)]
mod tests {
    #[test]
    fn routes_match_as_api_gateway_matches_them() {
        use super::route_matches;
        assert_eq!(
            route_matches("POST /graph/lifecycle", "POST", "/graph/lifecycle"),
            Some(0)
        );
        assert_eq!(
            route_matches("POST /graph/lifecycle", "GET", "/graph/lifecycle"),
            None
        );
        assert_eq!(
            route_matches("ANY /v1/{proxy+}", "DELETE", "/v1/keys/abc"),
            Some(1)
        );
        assert_eq!(route_matches("ANY /v1/{proxy+}", "GET", "/v1/"), None);
        assert_eq!(route_matches("ANY /v1/{proxy+}", "GET", "/v2/x"), None);
    }

    /// The most specific route wins: the exact path, then the longest greedy prefix (a
    /// public route beside the operators' catch-all), then `$default`.
    #[test]
    fn the_most_specific_route_is_chosen() {
        let route = |key: &str| crate::deployment::Route {
            route_key: key.into(),
            authorization_type: "NONE".into(),
            api_id: "a".into(),
            function_arn: "f".into(),
            throttle: None,
        };
        let routes = [
            route("ANY /v1/{proxy+}"),
            route("GET /v1/links/{proxy+}"),
            route("ANY /v1/relay"),
            route("ANY /v1/relay/{proxy+}"),
            route("POST /ui/login"),
            route("ANY /ui/{proxy+}"),
        ];
        let chosen =
            |m: &str, p: &str| super::choose_route(&routes, m, p).map(|r| r.route_key.as_str());
        assert_eq!(
            chosen("GET", "/v1/links/tok"),
            Some("GET /v1/links/{proxy+}")
        );
        assert_eq!(chosen("POST", "/v1/links/tok"), Some("ANY /v1/{proxy+}"));
        assert_eq!(chosen("GET", "/v1/relay"), Some("ANY /v1/relay"));
        assert_eq!(
            chosen("POST", "/v1/relay/uploads"),
            Some("ANY /v1/relay/{proxy+}")
        );
        assert_eq!(chosen("GET", "/v1/runs"), Some("ANY /v1/{proxy+}"));
        assert_eq!(chosen("POST", "/ui/login"), Some("POST /ui/login"));
        assert_eq!(chosen("GET", "/ui/login"), Some("ANY /ui/{proxy+}"));
        assert_eq!(chosen("GET", "/v2"), None);
    }

    #[test]
    fn query_values_are_url_decoded_and_a_repeated_one_joined_with_commas() {
        let params = super::query_parameters("q=Validation%3A+Testing%20client&p=100%&a=1&a=2");
        assert_eq!(params["q"], "Validation: Testing client");
        assert_eq!(params["p"], "100%");
        assert_eq!(params["a"], "1,2");
    }
}
