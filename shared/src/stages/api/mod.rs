//! api: the control API behind API Gateway (HTTP API, payload 2.0), routes under `/v1`, JSON in
//! and out, described by `docs/openapi.json` (served at `/v1/openapi.json`).
//!
//! - **Keys** (`keys`): `Authorization: Bearer chk_…`; a missing, malformed, unknown or
//!   revoked key is a 401 that says which, a key without the route's scope a 403 that names
//!   the scope needed. `GET` routes need `read`, state-changing ones `operate`, `/v1/keys`
//!   `admin`. Every state-changing call is written to the audit trail (who, what, when, the
//!   answer), whatever the answer.
//! - **Runs** go to the `runs` queue like the schedules' (the API records them `queued`
//!   first); cancel writes a request the builder honours before it starts and between pages
//!   (a run already built, skipped, noticed, failed or cancelled cannot be cancelled: 409).
//! - **Dead letters** are peeked without being consumed, redriven to their source queue and
//!   deleted one at a time.
//! - **Links** (`/v1/links/{token}`, no key: the token is the credential): a mail's download
//!   link, checked (`crate::links`) and redirected to a presigned URL valid for minutes.
//! - **Relays** (`relay`): created, listed and revoked by admins (`/v1/relays`); a relay's own
//!   calls (`/v1/relay/…`) are signed with its key instead of a bearer key.
//! - Every answer carries `nosniff`, `no-store`, a CSP that allows nothing, and no framing; a
//!   bad request is a 400 naming the field, an unknown id a 404.

mod dashboard;
pub mod keys;
mod relay;
pub mod routes;

use routes::{Access, Route};

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue};
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::contract::{self, ReprocessStatus, RunStatus};
use crate::definitions::Definitions;
use crate::invocation::Invocation;
use crate::messages::ReportTrigger;
use crate::period::Period;
use crate::ports::{Claims, Objects, QueueAdmin, StateRecords, WorkQueue};
use crate::secret::Secret;
use crate::state::{
    self, AUDIT_INDEX, ApiKeyRecord, AuditRecord, DeliveryNews, FOLDERS_INDEX, RUNS_INDEX,
    RecordKey, RunCancel, RunRecord,
};
use keys::Scope;

/// The OpenAPI 3.1 document of these routes.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// The longest path segment or cursor that can name something stored.
const MAX_ID_BYTES: usize = 512;

/// How long the presigned URL a download redirects to lasts.
const DOWNLOAD_MINUTES: u64 = 5;

pub struct Api {
    pub definitions: Arc<Definitions>,
    pub records: Arc<dyn StateRecords>,
    /// Where relays' nonces are remembered (the state table).
    pub claims: Arc<dyn Claims>,
    pub objects: Arc<dyn Objects>,
    pub runs: Arc<dyn WorkQueue>,
    /// Where reprocess requests go (ingest consumes it).
    pub inbound: Arc<dyn WorkQueue>,
    /// Where "poll now" goes (the poller consumes it).
    pub lifecycle: Arc<dyn WorkQueue>,
    pub queues: Arc<dyn QueueAdmin>,
    /// Signs and checks the mails' download links; `None`: links are refused.
    pub link_key: Option<Secret>,
    /// Derives each relay's key (`crate::relay_auth`); `None`: relays are refused.
    pub relay_key: Option<Secret>,
    /// No successful poll of a folder for this long makes the deployment unhealthy.
    pub poll_stale: chrono::Duration,
    /// A queue's oldest message waiting longer than this makes the deployment unhealthy.
    pub max_message_age: chrono::Duration,
    /// Report mail queued for a relay this long and not sent makes the deployment unhealthy.
    pub relay_outbox_stale: chrono::Duration,
    /// Bounds on one key's state-changing calls per hour (`CHARLIE_KEY_CALLS_PER_HOUR`,
    /// `CHARLIE_KEY_SENDS_PER_REPORT_PER_HOUR`): a leaked or scripted operate key cannot
    /// rerun or redrive in a loop and mail-bomb the recipients.
    pub limits: KeyLimits,
    /// Who may call the `/iam/v1` routes, and with what scope.
    pub iam_principals: Vec<(String, Scope)>,
    /// The CDN in front (on AWS): requests that went round it are refused (`crate::edge`).
    pub edge: crate::edge::Edge,
}

#[cfg(feature = "api")]
impl Api {
    pub async fn from_env(env: &crate::env::Env) -> anyhow::Result<Self> {
        use super::wiring;
        let aws = crate::adapters::aws::AwsConfig::from_env(env).await;
        let objects = wiring::objects(&aws, env)?;
        let state = wiring::state(&aws, env)?;
        let link_key = wiring::optional_secret(&aws, env, "CHARLIE_LINK_SECRET").await?;
        if let Some(k) = &link_key {
            crate::links::check_keys(k).map_err(anyhow::Error::msg)?;
        }
        let relay_key = wiring::optional_secret(&aws, env, "CHARLIE_RELAY_SECRET").await?;
        let origin = wiring::optional_secret(&aws, env, "CHARLIE_ORIGIN_SECRET").await?;
        let edge = crate::edge::Edge::new(origin.as_ref(), env.get("CHARLIE_API_BASE_URL"))
            .map_err(|e| anyhow::anyhow!("CHARLIE_ORIGIN_SECRET / CHARLIE_API_BASE_URL: {e}"))?;
        Ok(Api {
            edge,
            definitions: Arc::new(super::load_definitions(env, objects.as_ref()).await?),
            records: Arc::clone(&state) as _,
            claims: state,
            relay_key,
            objects,
            runs: wiring::queue(&aws, env, "CHARLIE_RUNS_QUEUE_URL")?,
            inbound: wiring::queue(&aws, env, "CHARLIE_INBOUND_QUEUE_URL")?,
            lifecycle: wiring::queue(&aws, env, "CHARLIE_LIFECYCLE_QUEUE_URL")?,
            queues: Arc::new(
                crate::adapters::aws::sqs::SqsQueueAdmin::from_json(
                    aws_sdk_sqs::Client::new(&aws.sdk),
                    env.required("CHARLIE_QUEUES")?,
                )?
                .with_cloudwatch(aws_sdk_cloudwatch::Client::new(&aws.sdk)),
            ),
            iam_principals: iam_principals(env.get("CHARLIE_IAM_PRINCIPALS"))?,
            max_message_age: chrono::Duration::seconds(env.in_range_or(
                "CHARLIE_MAX_MESSAGE_AGE_SECONDS",
                3600,
                60..=1_209_600,
            )?),
            link_key,
            poll_stale: chrono::Duration::minutes(env.in_range_or(
                "CHARLIE_POLL_STALE_MINUTES",
                30,
                1..=10_080,
            )?),
            relay_outbox_stale: chrono::Duration::minutes(env.in_range_or(
                "CHARLIE_RELAY_OUTBOX_STALE_MINUTES",
                240,
                5..=10_080,
            )?),
            limits: KeyLimits {
                calls_per_hour: env.in_range_or("CHARLIE_KEY_CALLS_PER_HOUR", 300, 1..=100_000)?,
                sends_per_report_per_hour: env.in_range_or(
                    "CHARLIE_KEY_SENDS_PER_REPORT_PER_HOUR",
                    10,
                    1..=10_000,
                )?,
            },
        })
    }
}

#[async_trait]
impl super::Handler for Api {
    async fn invoke(&self, event: Value, _invocation: &Invocation) -> anyhow::Result<Value> {
        let request: ApiGatewayV2httpRequest = super::parse_event(event)?;
        Ok(serde_json::to_value(Box::pin(self.handle(request)).await)?)
    }
}

/// A refusal or failure, as the client sees it: `{"error", "message", "field"?}`.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// Seconds after which a refused (429) call may be tried again (`Retry-After`).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.to_owned()),
            ..Self::new(400, "bad_request", message)
        }
    }

    fn not_found(what: impl Into<String>) -> Self {
        Self::new(404, "not_found", what)
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // The detail goes to the log, not to the caller.
        error!(error = %format!("{e:#}"), "API request failed");

        Self::new(
            503,
            "unavailable",
            "the request could not be completed now; try again (the API's log has the cause)",
        )
    }
}

/// A successful answer.
struct Reply {
    status: u16,
    body: ReplyBody,
    location: Option<String>,
    /// For the audit trail.
    summary: String,
}

enum ReplyBody {
    Json(Value),
    Html(String),
    Empty,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Reply {
            status,
            body: ReplyBody::Json(body),
            location: None,
            summary: String::new(),
        }
    }

    fn ok(body: Value) -> Self {
        Self::json(200, body)
    }

    /// An answer of the contract's types (`crate::contract`).
    fn typed<T: serde::Serialize>(status: u16, body: &T) -> Result<Self, ApiError> {
        Ok(Self::json(
            status,
            serde_json::to_value(body).map_err(anyhow::Error::from)?,
        ))
    }

    fn said(mut self, summary: impl Into<String>) -> Self {
        self.summary = summary.into();
        self
    }
}

/// An IAM principal allowed on the `/iam/v1` routes, with its scope.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct IamPrincipal {
    /// An IAM user or role ARN (`arn:aws:iam::123456789012:role/ops`); a role also matches
    /// its sessions (`arn:aws:sts::123456789012:assumed-role/ops/…`). A trailing `*` matches
    /// any rest.
    pub arn: String,
    pub scope: String,
}

/// The IAM principals from `CHARLIE_IAM_PRINCIPALS` (`[{"arn": …, "scope": …}]`); none when
/// unset. A bad entry fails the cold start: better than a principal silently refused.
pub fn iam_principals(json: Option<&str>) -> anyhow::Result<Vec<(String, Scope)>> {
    let Some(json) = json.filter(|j| !j.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let list: Vec<IamPrincipal> = serde_json::from_str(json).map_err(|e| {
        crate::failure::permanent(format!(
            "CHARLIE_IAM_PRINCIPALS is not a JSON list of {{\"arn\", \"scope\"}}: {e}"
        ))
    })?;
    list.into_iter()
        .map(|p| {
            let scope = Scope::parse(&p.scope).ok_or_else(|| {
                crate::failure::permanent(format!(
                    "CHARLIE_IAM_PRINCIPALS: {} has scope {:?}, not one of {}",
                    p.arn,
                    p.scope,
                    Scope::NAMES.join(", ")
                ))
            })?;
            if !p.arn.starts_with("arn:aws") {
                return Err(crate::failure::permanent(format!(
                    "CHARLIE_IAM_PRINCIPALS: {:?} is not an ARN",
                    p.arn
                )));
            }
            Ok((p.arn, scope))
        })
        .collect()
}

/// The ARNs a caller's principal answers to: itself, and for a role's session the role's ARN
/// (with no path: a session's ARN does not carry it; a configured role ARN with a path is
/// compared by account and name).
fn principal_matches(pattern: &str, principal: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return principal.starts_with(prefix);
    }
    if pattern == principal {
        return true;
    }
    // arn:aws:sts::{account}:assumed-role/{role}/{session}
    let session = principal
        .strip_prefix("arn:aws:sts::")
        .and_then(|r| r.split_once(":assumed-role/"))
        .and_then(|(account, rest)| Some((account, rest.split_once('/')?.0)));
    // arn:aws:iam::{account}:role/{path/}{role}
    let role = pattern
        .strip_prefix("arn:aws:iam::")
        .and_then(|r| r.split_once(":role/"))
        .map(|(account, rest)| (account, rest.rsplit('/').next().unwrap_or(rest)));
    matches!((session, role), (Some(s), Some(r)) if s == r)
}

/// The caller on an `/iam/v1` route as a key record (its name the principal's ARN, its scope
/// the highest configured for it), or why not.
fn iam_caller(
    principals: &[(String, Scope)],
    principal: Option<&str>,
) -> Result<ApiKeyRecord, ApiError> {
    let Some(principal) = principal else {
        return Err(ApiError::new(
            401,
            "unauthorized",
            "the /iam/v1 routes take SigV4-signed requests (API Gateway's AWS_IAM authorization); this one names no IAM principal",
        ));
    };
    let scope = principals
        .iter()
        .filter(|(arn, _)| principal_matches(arn, principal))
        .map(|(_, scope)| *scope)
        .max()
        .ok_or_else(|| {
            ApiError::new(
                403,
                "forbidden",
                format!(
                    "the IAM principal {principal} is not allowed on this API (add it to the deployment's api_iam_principals)"
                ),
            )
        })?;
    Ok(ApiKeyRecord {
        id: "iam".into(),
        name: principal.to_owned(),
        scopes: vec![scope.name().to_owned()],
        secret_sha256: String::new(),
        created_at: String::new(),
        created_by: "api_iam_principals".into(),
        revoked_at: None,
    })
}

/// `90061` → `1d 1h 1m 1s`, leaving out zero parts.
fn human_secs(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if text.is_empty() {
        "0s".into()
    } else {
        text.join(" ")
    }
}

/// How far back counters can be asked for.
const MAX_SINCE_DAYS: i64 = 31;

/// Counters as the API shows them: the hour they start from, totals by kind, and each
/// dataset's, report's and stage's own.
/// Bounds on one key's state-changing calls in an hour.
#[derive(Debug, Clone, Copy)]
pub struct KeyLimits {
    /// Every state-changing call.
    pub calls_per_hour: u32,
    /// Calls that mail a report's recipients (a run started or rerun), per report; and
    /// redrives, per queue.
    pub sends_per_report_per_hour: u32,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            calls_per_hour: 300,
            sends_per_report_per_hour: 10,
        }
    }
}

/// What the router needs of a request.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    segments: Vec<String>,
    query: &'a aws_lambda_events::query_map::QueryMap,
    body: Vec<u8>,
    request_id: String,
}

impl Request<'_> {
    /// (request id, method, path): what the audit trail records of a call.
    fn call(&self) -> (&str, &str, &str) {
        (&self.request_id, self.method, self.path)
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query.first(name).filter(|v| !v.is_empty())
    }

    /// A count parameter: `default` when absent, else a whole number from 1 to `max`.
    fn count(&self, name: &'static str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.query(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad(
                        name,
                        format!("{name} {v:?} is not a number from 1 to {max}"),
                    )
                }),
        }
    }

    /// The `since` parameter: an RFC 3339 time or a span back from `now` (`90m`, `24h`,
    /// `7d`); `default` when absent; never more than [`MAX_SINCE_DAYS`] back nor in the future.
    fn since(&self, now: DateTime<Utc>, default: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
        let Some(v) = self.query("since") else {
            return Ok(default.max(now - chrono::Duration::days(MAX_SINCE_DAYS)));
        };
        parse_since(v, now).map_err(|why| ApiError::bad("since", why))
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad("body", "the request needs a JSON body"));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            // serde names the field in its message ("missing field `report`", "unknown field").
            let field = field_of(&e.to_string());
            ApiError {
                field: Some(field.unwrap_or_else(|| "body".into())),
                ..ApiError::new(
                    400,
                    "bad_request",
                    format!("the JSON body is not valid: {e}"),
                )
            }
        })
    }
}

/// The field a serde error message names (`` `report` ``), if any.
fn field_of(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

impl Api {
    pub async fn handle(&self, req: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        let method = req.request_context.http.method.as_str().to_owned();
        let path = req
            .raw_path
            .clone()
            .unwrap_or_else(|| req.request_context.http.path.clone().unwrap_or_default());
        let body = match req.body.as_deref() {
            None => Vec::new(),
            Some(b) if req.is_base64_encoded => {
                match base64::engine::general_purpose::STANDARD.decode(b) {
                    Ok(b) => b,
                    Err(_) => {
                        return respond(Err(ApiError::bad(
                            "body",
                            "the body is marked base64 but is not",
                        )));
                    }
                }
            }
            Some(b) => b.as_bytes().to_vec(),
        };
        // Behind the CDN, only what came through it (the WAF) is served; the SigV4 routes are
        // checked by AWS before the function runs and signed for API Gateway's own host.
        let signed_by_aws = path == "/iam/v1" || path.starts_with("/iam/v1/");
        if !signed_by_aws && !self.edge.admits(&req.headers) {
            return respond(Err(ApiError::new(
                403,
                "forbidden",
                "this API is reached through its CDN",
            )));
        }
        // The dashboard's pages, with their own sign-in (a session cookie).
        if path == "/ui" || path.starts_with("/ui/") {
            return self.dashboard(&req, &method, &path, body).await;
        }
        // `/iam/v1/…` is the same API behind API Gateway's AWS_IAM authorization: the caller
        // signed with SigV4 and API Gateway checked it and names the principal.
        let (api_path, iam_route) = match path.strip_prefix("/iam") {
            Some(rest) if rest.starts_with("/v1") => (rest, true),
            _ => (path.as_str(), false),
        };
        let Some(rest) = api_path
            .strip_prefix("/v1/")
            .or(api_path.strip_prefix("/v1").filter(|r| r.is_empty()))
        else {
            return respond(Err(ApiError::not_found(format!(
                "no route {path}: routes are under /v1"
            ))));
        };
        let request = Request {
            method: &method,
            path: &path,
            segments: rest
                .split('/')
                .filter(|s| !s.is_empty())
                .map(crate::uri::decode)
                .collect(),
            query: &req.query_string_parameters,
            body,
            request_id: req
                .request_context
                .request_id
                .clone()
                .unwrap_or_else(crate::invocation::new_correlation_id),
        };
        let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
        let def = match routes::find(&method, &segments) {
            Ok(def) => def,
            Err(allowed) if allowed.is_empty() => {
                return respond(Err(ApiError::not_found(format!(
                    "no route {method} {path} (see /v1/openapi.json)"
                ))));
            }
            Err(allowed) => {
                let mut resp = respond(Err(ApiError::new(
                    405,
                    "method_not_allowed",
                    format!("{path} takes {}", allowed.join(", ")),
                )));
                if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                    resp.headers.insert("allow", v);
                }
                return resp;
            }
        };
        // Ids that cannot name anything stored (a key is at most 1 KiB in DynamoDB); a link's
        // token is checked by its signature instead.
        if def.route != Route::Link && segments.iter().any(|s| s.len() > MAX_ID_BYTES) {
            return respond(Err(ApiError::not_found(format!(
                "nothing is named by a path segment over {MAX_ID_BYTES} bytes"
            ))));
        }
        let needed = match (def.access, def.route) {
            (Access::Public, Route::Link) => {
                let result = self.follow_link(segments[1]).await;
                // Who: the link (its bearer is unknown); what: the run's workbook, or why not.
                let (status, summary) = match &result {
                    Ok(r) => (r.status, r.summary.clone()),
                    Err(e) => (e.status, format!("refused: {}", e.message)),
                };
                info!(status, summary, "download link followed");
                self.audit_as(request.call(), ("link", "download link"), status, summary)
                    .await;
                return respond(result);
            }
            (Access::Public, Route::OpenApi) => {
                let doc: Value = serde_json::from_str(OPENAPI).unwrap_or(Value::Null);
                return respond(Ok(Reply::ok(doc)));
            }
            (Access::Public, other) => {
                return respond(Err(
                    anyhow::anyhow!("public route {other:?} has no answer").into()
                ));
            }
            // A relay signs its calls with its own key.
            (Access::Relay, route) => {
                return respond(Box::pin(self.relay_call(&req, &request, route)).await);
            }
            (Access::Scope(needed), _) => needed,
        };
        let key = if iam_route {
            let principal = req
                .request_context
                .authorizer
                .as_ref()
                .and_then(|a| a.iam.as_ref())
                .and_then(|iam| iam.user_arn.clone());
            match iam_caller(&self.iam_principals, principal.as_deref()) {
                Ok(caller) => caller,
                Err(e) => {
                    let who = principal.as_deref().unwrap_or("none");
                    self.audit_as(
                        request.call(),
                        (who, "IAM caller"),
                        e.status,
                        format!("refused: {}", e.message),
                    )
                    .await;
                    return respond(Err(e));
                }
            }
        } else {
            let presented = bearer(&req.headers);
            match keys::authenticate(self.records.as_ref(), presented.as_deref()).await {
                Ok(Ok(key)) => key,
                Ok(Err(refused)) => {
                    // Audited with the key's id when it has one (never the key itself).
                    let who = presented
                        .as_deref()
                        .and_then(keys::presented_id)
                        .unwrap_or("none");
                    let refusal = ApiError::new(401, "unauthorized", refused.message());
                    self.audit_as(
                        request.call(),
                        (who, "unauthenticated caller"),
                        401,
                        format!("refused: {}", refused.message()),
                    )
                    .await;
                    return respond(Err(refusal));
                }
                Err(e) => return respond(Err(e.into())),
            }
        };
        let has = keys::granted(&key);
        if has.is_none_or(|s| s < needed) {
            let refused = Err(ApiError::new(
                403,
                "forbidden",
                format!(
                    "{method} {path} needs a {} with scope {}; this one ({}) has {}",
                    if iam_route { "caller" } else { "key" },
                    needed.name(),
                    key.name,
                    key.scopes.join(", ")
                ),
            ));
            self.audit(&request, &key, &refused).await;
            return respond(refused);
        }
        if method != "GET"
            && method != "HEAD"
            && let Err(limited) = self.within_limits(&request, &segments, &key).await
        {
            let refused = Err(limited);
            self.audit(&request, &key, &refused).await;
            return respond(refused);
        }
        let result = self.route(&request, def.route, &segments, &key).await;
        // Every state-changing call, and the reads that hand out data: a workbook or a
        // quarantined file.
        let download = matches!(
            segments.as_slice(),
            ["runs", _, "download"] | ["intake", "quarantine", "file"]
        );
        if (method != "GET" && method != "HEAD") || download {
            if download {
                info!(
                    key = key.name,
                    path,
                    status = result.as_ref().map_or_else(|e| e.status, |r| r.status),
                    "download"
                );
            }
            self.audit(&request, &key, &result).await;
        }
        respond(result)
    }

    /// Answers a route a caller may call (the scope checked): `segments[i]` is the path's
    /// i-th segment, as the route's pattern says it is there.
    async fn route(
        &self,
        req: &Request<'_>,
        route: Route,
        segments: &[&str],
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        let at = |i: usize| segments.get(i).copied().unwrap_or_default();
        match route {
            Route::Health => self.health().await,
            Route::Metrics => self.metrics(req).await,
            Route::Reports => {
                let reports = self
                    .definitions
                    .reports
                    .keys()
                    .map(|name| self.report_info(name))
                    .collect();
                Reply::typed(200, &contract::ReportList { reports })
            }
            Route::Report => self.report(at(1)),
            Route::ReportVersions => self.versions(req, at(1)).await,
            Route::Runs => self.list_runs(req).await,
            Route::StartRun => {
                let start: contract::StartRun = req.json()?;
                self.start_run(&start.report, &start.period, key).await
            }
            Route::Run => self.show_run(at(1)).await,
            Route::CancelRun => self.cancel_run(at(1), key).await,
            Route::RerunRun => {
                let run = self.run_record(at(1)).await?;
                self.start_run(&run.report, &run.period, key).await
            }
            Route::DownloadRun => self.download(at(1)).await,
            Route::RunDeliveries => {
                let id = at(1);
                self.run_record(id).await?;
                Reply::typed(
                    200,
                    &contract::RunDeliveries {
                        run_id: id.to_owned(),
                        deliveries: self.deliveries(id).await?,
                    },
                )
            }
            Route::StartReprocess => self.start_reprocess(req, key).await,
            Route::Reprocess => {
                let id = at(1);
                let record: Option<contract::ReprocessRecord> =
                    self.records.get_record(&RecordKey::reprocess(id)).await?;
                let record = record
                    .ok_or_else(|| ApiError::not_found(format!("no reprocess request {id:?}")))?;
                Reply::typed(200, &record)
            }
            Route::IntakeOutcomes => self.outcomes(req).await,
            Route::Intake => Reply::typed(200, &self.intake_state(Some(req)).await?),
            Route::PauseIntake => {
                use crate::intake_control::IntakeControl;
                let control = IntakeControl {
                    paused: true,
                    since: Utc::now().to_rfc3339(),
                    by: key.name.clone(),
                };
                self.records
                    .put_record(&RecordKey::intake_control(), &control, None)
                    .await?;
                info!(by = key.name, "intake paused");
                Ok(Reply::typed(200, &self.intake_state(None).await?)?.said("pause intake"))
            }
            Route::ResumeIntake => {
                use crate::intake_control::IntakeControl;
                let control = IntakeControl {
                    paused: false,
                    since: Utc::now().to_rfc3339(),
                    by: key.name.clone(),
                };
                self.records
                    .put_record(&RecordKey::intake_control(), &control, None)
                    .await?;
                // The webhook and poller trust their copy of the flag for a few seconds: what
                // they park meanwhile is queued by the next resume (or shows in the count).
                let resumed =
                    crate::intake_control::resume(self.records.as_ref(), self.inbound.as_ref())
                        .await?;
                info!(by = key.name, resumed, "intake resumed");
                let state = contract::IntakeState {
                    resumed: Some(resumed as u64),
                    ..self.intake_state(None).await?
                };
                Ok(Reply::typed(200, &state)?.said(format!("resume intake: {resumed} queued")))
            }
            Route::PollNow => {
                let asked = crate::messages::PollNow {
                    v: 1,
                    kind: crate::messages::PollNowKind::PollNow,
                    requested_by: Some(key.name.clone()),
                };
                self.lifecycle.send(&asked, &req.request_id).await?;
                Ok(Reply::json(202, json!({"queued": true})).said("poll now"))
            }
            Route::Quarantine => self.quarantine(req).await,
            Route::QuarantineFile => {
                let key = req
                    .query("key")
                    .ok_or_else(|| ApiError::bad("key", "give ?key= (a quarantined file's key)"))?;
                if !key.starts_with("quarantine/")
                    || key.ends_with(".reason.json")
                    || key.len() > 1024
                {
                    return Err(ApiError::bad(
                        "key",
                        "key is a quarantined file's key (quarantine/…)",
                    ));
                }
                if self.objects.versions(key).await?.is_empty() {
                    return Err(ApiError::not_found(format!("no quarantined file {key:?}")));
                }
                let url = self
                    .objects
                    .presigned_get(
                        key,
                        None,
                        std::time::Duration::from_secs(DOWNLOAD_MINUTES * 60),
                    )
                    .await?;
                Ok(redirect(url))
            }
            Route::Rejects => {
                let raw = req.query("raw_key").ok_or_else(|| {
                    ApiError::bad("raw_key", "give ?raw_key= (an outcome's raw_key)")
                })?;
                if !raw.starts_with("raw/") || !object_key_ok(raw) || raw.len() > 1000 {
                    return Err(ApiError::bad(
                        "raw_key",
                        "raw_key is an archived attachment's key (raw/…)",
                    ));
                }
                let key = format!("{raw}.rejects.json");
                if self.objects.versions(&key).await?.is_empty() {
                    return Err(ApiError::not_found(format!(
                        "no rejected rows recorded for {raw:?}"
                    )));
                }
                let bytes = self.objects.get(&key, None).await?;
                let rejects: Value = serde_json::from_slice(&bytes).map_err(anyhow::Error::from)?;
                Ok(Reply::ok(json!({"raw_key": raw, "rejects": rejects})))
            }
            Route::DeadLetterQueues => self.dead_letter_queues().await,
            Route::DeadLetters => self.peek(req, at(1)).await,
            Route::Redrive => self.redrive(req, at(1)).await,
            Route::DeleteDeadLetter => {
                let (queue, id) = (at(1), at(2));
                self.known_queue(queue)?;
                if self.queues.delete(queue, id).await? {
                    Ok(Reply {
                        status: 204,
                        body: ReplyBody::Empty,
                        location: None,
                        summary: format!("delete dead letter {queue}/{id}"),
                    })
                } else {
                    Err(ApiError::not_found(format!(
                        "no message {id} in {queue}'s dead-letter queue"
                    )))
                }
            }
            Route::Keys => self.list_keys().await,
            Route::CreateKey => self.create_key(req, key).await,
            Route::RevokeKey => self.revoke_key(at(1)).await,
            Route::Relays => self.list_relays().await,
            Route::CreateRelay => self.create_relay(req, key).await,
            Route::RevokeRelay => self.revoke_relay(at(1)).await,
            Route::Audit => self.audit_trail(req).await,
            // Answered before a key is looked at (`handle`).
            Route::OpenApi
            | Route::Link
            | Route::RelayHello
            | Route::RelayUpload
            | Route::RelayOutbox
            | Route::RelayAck
            | Route::RelayRefused
            | Route::RelayDeferred => Err(ApiError::not_found(format!(
                "no route {} {} for a key (see /v1/openapi.json)",
                req.method, req.path
            ))),
        }
    }

    // ---- reports -------------------------------------------------------------------------

    fn report_info(&self, name: &str) -> contract::ReportInfo {
        let r = &self.definitions.reports[name];
        let zone = r.time_zone.0;
        let next = crate::schedule::Expression::parse(&r.schedule)
            .ok()
            .and_then(|e| e.next_after(Utc::now(), zone));
        contract::ReportInfo {
            name: name.to_owned(),
            title: r.title.clone(),
            datasets: r.datasets.clone(),
            schedule: r.schedule.clone(),
            time_zone: zone.name().to_owned(),
            period: r.period,
            next_run_at: next.map(|t| t.to_rfc3339()),
            next_run_local: next.map(|t| {
                t.with_timezone(&zone)
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string()
            }),
            recipients: r.recipients.clone(),
            cc: r.cc.clone(),
            bcc: r.bcc.clone(),
            transport: r.transport,
            relay: r.relay.clone(),
            on_empty: r.on_empty,
            retain_days: r.retain_days,
            datasets_retain_days: r
                .datasets
                .iter()
                .map(|d| {
                    let days = self.definitions.datasets.get(d).and_then(|d| d.retain_days);
                    (d.clone(), days)
                })
                .collect(),
        }
    }

    fn report(&self, name: &str) -> Result<Reply, ApiError> {
        if !self.definitions.reports.contains_key(name) {
            return Err(ApiError::not_found(format!("no report {name:?}")));
        }
        Reply::typed(200, &self.report_info(name))
    }

    async fn versions(&self, req: &Request<'_>, name: &str) -> Result<Reply, ApiError> {
        if !self.definitions.reports.contains_key(name) {
            return Err(ApiError::not_found(format!("no report {name:?}")));
        }
        let period = parse_period(req.query("period").ok_or_else(|| {
            ApiError::bad(
                "period",
                "give ?period= (2024-03-14, 2024-W11, 2024-03 or a range a..b)",
            )
        })?)?;
        let key = crate::object_keys::workbook(name, &period.to_string());
        let versions = self.objects.versions(&key).await?;
        Reply::typed(
            200,
            &contract::WorkbookVersions {
                report: name.to_owned(),
                period: period.to_string(),
                key,
                versions,
            },
        )
    }

    // ---- runs ----------------------------------------------------------------------------

    async fn start_run(
        &self,
        report: &str,
        period: &str,
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        if !self.definitions.reports.contains_key(report) {
            return Err(ApiError {
                field: Some("report".into()),
                ..ApiError::new(
                    400,
                    "bad_request",
                    format!(
                        "no report {report:?}; the reports are {:?}",
                        self.definitions.reports.keys().collect::<Vec<_>>()
                    ),
                )
            });
        }
        let period = parse_period(period)?;
        let now = Utc::now();
        let run_id = format!(
            "{report}.{period}.api.{}",
            crate::invocation::new_correlation_id()
        );
        let requested_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let queued = RunRecord {
            requested_at: requested_at.clone(),
            requested_by: key.name.clone(),
            ..RunRecord::new(&run_id, report, &period.to_string(), RunStatus::Queued)
        };
        let index = state::run_index_sk(&requested_at, &run_id);
        self.records
            .put_record(
                &RecordKey::run(&run_id),
                &queued,
                Some((RUNS_INDEX, &index)),
            )
            .await?;
        let trigger = ReportTrigger::Run {
            v: 1,
            report: report.to_owned(),
            period,
            run_id: Some(run_id.clone()),
            requested_at: Some(now),
            requested_by: Some(key.name.clone()),
        };
        self.runs.send(&trigger, &run_id).await?;
        info!(run_id, report, %period, by = key.name, "run queued");
        let queued = contract::RunQueued {
            run_id: run_id.clone(),
            status: RunStatus::Queued,
            report: report.to_owned(),
            period: period.to_string(),
        };
        let mut reply = Reply::typed(202, &queued)?.said(format!("run {report} {period}"));
        reply.location = Some(format!("/v1/runs/{run_id}"));
        Ok(reply)
    }

    async fn run_record(&self, id: &str) -> Result<RunRecord, ApiError> {
        self.records
            .get_record(&RecordKey::run(id))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no run {id:?}")))
    }

    async fn list_runs(&self, req: &Request<'_>) -> Result<Reply, ApiError> {
        let limit = req.count("limit", 20, 100)?;
        let report = req.query("report");
        if let Some(r) = report
            && !self.definitions.reports.contains_key(r)
        {
            return Err(ApiError::bad("report", format!("no report {r:?}")));
        }
        let status = req
            .query("status")
            .map(|s| {
                s.parse::<RunStatus>()
                    .map_err(|e| ApiError::bad("status", format!("status {e}")))
            })
            .transpose()?;
        let day = |name: &'static str| -> Result<Option<NaiveDate>, ApiError> {
            req.query(name)
                .map(|d| {
                    d.parse::<NaiveDate>().map_err(|_| {
                        ApiError::bad(name, format!("{name} {d:?} is not a date (yyyy-mm-dd)"))
                    })
                })
                .transpose()
        };
        let (from, to) = (day("from")?, day("to")?);
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            return Err(ApiError::bad("to", "to is before from"));
        }
        let cursor = req.query("cursor").map(str::to_owned);
        if cursor.as_ref().is_some_and(|c| c.len() > MAX_ID_BYTES) {
            return Err(ApiError::bad("cursor", "cursor is not one this API gave"));
        }
        // Requested before the day after `to`, at or after `from` (index sk order = time).
        let upper = to
            .and_then(|t| t.succ_opt())
            .map(|t| format!("{t}T00:00:00"));
        let lower = from.map(|f| format!("{f}T00:00:00"));
        let mut before = match (&cursor, &upper) {
            (Some(c), Some(u)) => Some(c.clone().min(u.clone())),
            (Some(c), None) => Some(c.clone()),
            (None, u) => u.clone(),
        };
        let mut runs = Vec::new();
        let mut next_cursor = None;
        for _ in 0..20 {
            let page = self
                .records
                .query_index(RUNS_INDEX, before.as_deref(), lower.as_deref(), 100)
                .await?;
            let exhausted = page.len() < 100;
            for r in &page {
                before = Some(r.index_sk.clone());
                let Ok(run) = serde_json::from_str::<RunRecord>(&r.data) else {
                    warn!(
                        pk = r.pk,
                        "a run record that does not parse is left out of the list"
                    );
                    continue;
                };
                if report.is_some_and(|x| x != run.report)
                    || status.is_some_and(|x| x != run.status)
                {
                    continue;
                }
                runs.push(contract::RunSummary::from(&run));
                if runs.len() == limit {
                    next_cursor = Some(r.index_sk.clone());
                    break;
                }
            }
            if runs.len() == limit || exhausted {
                break;
            }
        }
        Reply::typed(200, &contract::RunList { runs, next_cursor })
    }

    async fn show_run(&self, id: &str) -> Result<Reply, ApiError> {
        let run = self.run_record(id).await?;
        let cancel: Option<RunCancel> = self.records.get_record(&RecordKey::run_cancel(id)).await?;
        let deliveries = self.deliveries(id).await?;
        let stale = run.status == RunStatus::Building
            && run
                .deadline
                .as_deref()
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .is_some_and(|d| d < Utc::now());
        Reply::typed(
            200,
            &contract::RunAnswer {
                run,
                deliveries,
                cancel_requested: cancel.is_some(),
                stale,
            },
        )
    }

    /// A run's deliveries, one per recipient group, with their status and SES events.
    async fn deliveries(&self, id: &str) -> Result<Vec<contract::Delivery>, ApiError> {
        let mut deliveries = Vec::new();
        for d in self.records.deliveries_of_run(id).await? {
            let news: Option<DeliveryNews> = self
                .records
                .get_record(&RecordKey::delivery_status(&d.delivery))
                .await?;
            let events = self
                .records
                .query(&d.delivery, "event#")
                .await?
                .into_iter()
                .filter_map(|(_, text)| serde_json::from_str(&text).ok())
                .collect();
            let result = d.result;
            deliveries.push(contract::Delivery {
                group: d.delivery.rsplit('#').next().unwrap_or_default().to_owned(),
                transport: result.transport,
                provider_message_id: result.provider_message_id,
                to: result.to,
                cc: result.cc,
                bcc: result.bcc,
                sent_at: result.sent_at,
                as_link: result.link.is_some(),
                link_expires: result.link,
                status: news.as_ref().map_or(result.status, |n| n.status),
                status_detail: news.map(|n| n.detail).filter(|d| !d.is_null()),
                events,
            });
        }
        Ok(deliveries)
    }

    // ---- intake --------------------------------------------------------------------------

    fn dataset_and_date(
        &self,
        req: &Request<'_>,
        date_field: &'static str,
    ) -> Result<(String, NaiveDate), ApiError> {
        let dataset = req
            .query("dataset")
            .ok_or_else(|| ApiError::bad("dataset", "give ?dataset="))?;
        if !self.definitions.datasets.contains_key(dataset) {
            return Err(ApiError::bad(
                "dataset",
                format!(
                    "no dataset {dataset:?}; the datasets are {:?}",
                    self.definitions.datasets.keys().collect::<Vec<_>>()
                ),
            ));
        }
        let date = req.query(date_field).ok_or_else(|| {
            ApiError::bad(date_field, format!("give ?{date_field}= (yyyy-mm-dd)"))
        })?;
        let date = date.parse::<NaiveDate>().map_err(|_| {
            ApiError::bad(
                date_field,
                format!("{date_field} {date:?} is not a date (yyyy-mm-dd)"),
            )
        })?;
        Ok((dataset.to_owned(), date))
    }

    /// Whether intake is paused, since when and by whom, how many mails wait for resume, and
    /// the intake's counters since `since` (default: the last pause or resume, the seed's
    /// "session", or a day back).
    async fn intake_state(
        &self,
        req: Option<&Request<'_>>,
    ) -> Result<contract::IntakeState, ApiError> {
        use crate::counters::kind;
        let control: Option<crate::intake_control::IntakeControl> = self
            .records
            .get_record(&RecordKey::intake_control())
            .await?;
        let parked = crate::intake_control::parked_count(self.records.as_ref()).await?;
        let now = Utc::now();
        let session = control
            .as_ref()
            .and_then(|c| DateTime::parse_from_rfc3339(&c.since).ok())
            .map_or(now - chrono::Duration::days(1), |t| t.with_timezone(&Utc));
        let since = match req {
            Some(req) => req.since(now, session)?,
            None => session.max(now - chrono::Duration::days(MAX_SINCE_DAYS)),
        };
        let (mut counts, start) = crate::counters::since(self.records.as_ref(), since, now).await?;
        let intake = [
            kind::MAILS_PROCESSED,
            kind::MAILS_IGNORED,
            kind::MAILS_DUPLICATE,
            kind::MAILS_QUARANTINED,
            kind::ATTACHMENTS,
            kind::ATTACHMENTS_QUARANTINED,
            kind::ROWS_NEW,
            kind::ROWS_DUPLICATE,
            kind::ROWS_REJECTED,
        ];
        counts.retain(|kind, about| {
            intake.contains(&kind) || (kind == kind::DEAD_LETTERED && about == "ingest")
        });
        Ok(contract::IntakeState {
            paused: control.as_ref().is_some_and(|c| c.paused),
            since: control.as_ref().map(|c| c.since.clone()),
            by: control.as_ref().map(|c| c.by.clone()),
            parked: parked as u64,
            counters: contract::Counters::new(&counts, start),
            resumed: None,
        })
    }

    /// A dataset's day: each attachment that had rows on it and what ingest made of it.
    async fn outcomes(&self, req: &Request<'_>) -> Result<Reply, ApiError> {
        let (dataset, date) = self.dataset_and_date(req, "date")?;
        let attachments: Vec<(String, state::DayAttachment)> = self
            .records
            .records(&state::day_index(&dataset, date), "RAW#")
            .await?;
        let mut outcomes = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut totals = contract::RowTotals::default();
        for (_, a) in attachments {
            let Some((mailbox, message_id)) = a.mail() else {
                continue;
            };
            if !seen.insert((mailbox.to_owned(), message_id.to_owned())) {
                continue;
            }
            for o in self.records.outcomes_of_mail(mailbox, message_id).await? {
                if o.dataset != dataset {
                    continue;
                }
                let rows = contract::RowTotals {
                    rows_total: o.rows_total,
                    rows_new: o.rows_new,
                    rows_duplicate: o.rows_duplicate,
                    rows_rejected: o.rows_rejected,
                };
                totals += rows;
                outcomes.push(contract::AttachmentOutcome {
                    mailbox: o.mailbox,
                    message_id: o.message_id,
                    attachment: o.attachment,
                    dates: o.dates,
                    rows,
                    raw_key: o.raw_key,
                    quarantine_reason: o.quarantined,
                    received: a.received.to_rfc3339(),
                });
            }
        }
        // And the mail received that day that no dataset took, with why: a forwarded export,
        // another sender, a failed sender check.
        let unmatched = self
            .records
            .records::<state::UnmatchedMail>(&state::unmatched_day(date), "")
            .await?
            .into_iter()
            .map(|(_, m)| contract::UnmatchedMail {
                mailbox: m.mailbox,
                message_id: m.message_id,
                sender: m.sender,
                subject: m.subject,
                received: m.received.to_rfc3339(),
                attachments: m.attachments,
                reasons: m.reasons,
            })
            .collect();
        Reply::typed(
            200,
            &contract::DayOutcomes {
                dataset,
                date: date.to_string(),
                totals,
                outcomes,
                unmatched,
            },
        )
    }

    /// Quarantined files, each with its reason, in key order.
    async fn quarantine(&self, req: &Request<'_>) -> Result<Reply, ApiError> {
        let prefix = match req.query("dataset") {
            Some(d) if self.definitions.datasets.contains_key(d) => format!("quarantine/{d}/"),
            Some(d) => return Err(ApiError::bad("dataset", format!("no dataset {d:?}"))),
            None => "quarantine/".to_owned(),
        };
        let limit = req.count("limit", 50, 200)?;
        let after = req.query("after");
        if after.is_some_and(|a| !a.starts_with(&prefix) || !object_key_ok(a)) {
            return Err(ApiError::bad(
                "after",
                "after is a next_after this API gave",
            ));
        }
        let mut files = Vec::new();
        let mut cursor = after.map(str::to_owned);
        let mut next = None;
        'pages: for _ in 0..10 {
            let page = self.objects.list(&prefix, cursor.as_deref(), 1000).await?;
            let exhausted = page.len() < 1000;
            for o in &page {
                cursor = Some(o.key.clone());
                let Some(file) = o.key.strip_suffix(".reason.json") else {
                    continue;
                };
                let reason: Option<contract::QuarantineReason> =
                    match self.objects.get(&o.key, None).await {
                        Ok(b) => serde_json::from_slice(&b)
                            .inspect_err(|e| warn!(key = o.key, error = %e, "a quarantine reason does not parse"))
                            .ok(),
                        Err(e) => {
                            warn!(key = o.key, error = %format!("{e:#}"), "a quarantine reason could not be read");
                            None
                        }
                    };
                files.push(contract::QuarantinedFile {
                    key: file.to_owned(),
                    reason: reason.as_ref().map(|r| r.reason.clone()),
                    dataset: reason.as_ref().and_then(|r| r.dataset.clone()),
                    attachment: reason.as_ref().and_then(|r| r.attachment.clone()),
                    mailbox: reason.as_ref().and_then(|r| r.mailbox.clone()),
                    message_id: reason.as_ref().map(|r| r.message_id.clone()),
                    downloaded: reason.as_ref().map(|r| r.downloaded),
                    quarantined_at: reason.map(|r| r.quarantined_at),
                });
                if files.len() == limit {
                    next = Some(o.key.clone());
                    break 'pages;
                }
            }
            if exhausted {
                break;
            }
        }
        Reply::typed(
            200,
            &contract::Quarantined {
                files,
                next_after: next,
            },
        )
    }

    async fn start_reprocess(
        &self,
        req: &Request<'_>,
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        let ask: contract::StartReprocess = req.json()?;
        if !self.definitions.datasets.contains_key(&ask.dataset) {
            return Err(ApiError::bad(
                "dataset",
                format!("no dataset {:?}", ask.dataset),
            ));
        }
        let date = ask.date.parse::<NaiveDate>().map_err(|_| {
            ApiError::bad(
                "date",
                format!("date {:?} is not a date (yyyy-mm-dd)", ask.date),
            )
        })?;
        let request_id = format!(
            "{}.{date}.{}",
            ask.dataset,
            crate::invocation::new_correlation_id()
        );
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let record = state::ReprocessRecord {
            request_id: request_id.clone(),
            dataset: ask.dataset.clone(),
            date,
            status: ReprocessStatus::Queued,
            requested_at: now,
            requested_by: key.name.clone(),
            finished_at: None,
            counts: Default::default(),
            error: None,
        };
        self.records
            .put_record(&RecordKey::reprocess(&request_id), &record, None)
            .await?;
        let message = crate::messages::InboundMessage::Reprocess {
            v: 1,
            request_id: request_id.clone(),
            dataset: ask.dataset.clone(),
            date,
        };
        self.inbound.send(&message, &request_id).await?;
        let queued = contract::ReprocessQueued {
            request_id: request_id.clone(),
            status: ReprocessStatus::Queued,
            dataset: ask.dataset.clone(),
            date: date.to_string(),
        };
        let mut reply =
            Reply::typed(202, &queued)?.said(format!("reprocess {} {date}", ask.dataset));
        reply.location = Some(format!("/v1/reprocess/{request_id}"));
        Ok(reply)
    }

    async fn cancel_run(&self, id: &str, key: &ApiKeyRecord) -> Result<Reply, ApiError> {
        let run = self.run_record(id).await?;
        if run.status.is_final() {
            return Err(ApiError::conflict(format!(
                "run {id} is {}: there is nothing to cancel",
                run.status
            )));
        }
        let cancel = RunCancel {
            requested_at: Utc::now().to_rfc3339(),
            by: key.name.clone(),
        };
        self.records
            .put_record(&RecordKey::run_cancel(id), &cancel, None)
            .await?;
        info!(
            run_id = id,
            by = key.name,
            status = %run.status,
            "cancel requested"
        );
        let asked = contract::CancelRequested {
            run_id: id.to_owned(),
            status: run.status,
            cancel_requested: true,
        };
        Ok(Reply::typed(202, &asked)?.said(format!("cancel run {id}")))
    }

    async fn download(&self, id: &str) -> Result<Reply, ApiError> {
        let run = self.run_record(id).await?;
        let Some(key) = &run.workbook_key else {
            return Err(ApiError::not_found(format!(
                "run {id} has no workbook (it is {})",
                run.status
            )));
        };
        let url = self
            .objects
            .presigned_get(
                key,
                run.workbook_version.as_deref(),
                std::time::Duration::from_secs(DOWNLOAD_MINUTES * 60),
            )
            .await?;
        Ok(redirect(url))
    }

    // ---- links -----------------------------------------------------------------------------

    async fn follow_link(&self, token: &str) -> Result<Reply, ApiError> {
        let refuse = |why: String| Reply {
            status: 403,
            summary: format!("refused: {why}"),
            body: ReplyBody::Html(link_page(&why)),
            location: None,
        };
        let Some(link_key) = &self.link_key else {
            return Ok(refuse(
                "download links are not enabled on this deployment".into(),
            ));
        };
        let claims = match crate::links::verify(link_key, token, Utc::now()) {
            Ok(c) => c,
            Err(e) => {
                warn!(reason = %e, "a download link was refused");
                return Ok(refuse(e.to_string()));
            }
        };
        // The run must still hold that version (a deleted run's link is dead).
        let run: Option<RunRecord> = self
            .records
            .get_record(&RecordKey::run(&claims.run_id))
            .await?;
        let current = run.as_ref().is_some_and(|r| {
            r.workbook_key.as_deref() == Some(claims.workbook_key.as_str())
                && r.workbook_version == claims.workbook_version
        });
        if !current {
            return Ok(refuse("this link's workbook is no longer stored".into()));
        }
        let url = self
            .objects
            .presigned_get(
                &claims.workbook_key,
                claims.workbook_version.as_deref(),
                std::time::Duration::from_secs(DOWNLOAD_MINUTES * 60),
            )
            .await?;
        info!(run_id = claims.run_id, "download link followed");
        Ok(redirect(url).said(format!(
            "download {} of run {}",
            claims.workbook_key, claims.run_id
        )))
    }

    // ---- queues and health -----------------------------------------------------------------

    fn known_queue(&self, queue: &str) -> Result<bool, ApiError> {
        self.queues
            .queues()
            .into_iter()
            .find(|(name, _)| name == queue)
            .map(|(_, redrivable)| redrivable)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no queue {queue:?}; the queues are {:?}",
                    self.queues
                        .queues()
                        .into_iter()
                        .map(|(n, _)| n)
                        .collect::<Vec<_>>()
                ))
            })
    }

    async fn dead_letter_queues(&self) -> Result<Reply, ApiError> {
        let mut out = Vec::new();
        for (name, redrivable) in self.queues.queues() {
            let dead = self.queues.depth(&name, true).await?;
            let oldest = if dead.visible > 0 {
                self.queues
                    .peek(&name, 10)
                    .await?
                    .into_iter()
                    .filter_map(|l| l.sent_at)
                    .min()
            } else {
                None
            };
            out.push(contract::DeadLetterQueue {
                queue: name,
                redrivable,
                messages: dead.visible + dead.in_flight,
                oldest_sent_at: oldest.map(|t| t.to_rfc3339()),
            });
        }
        Reply::typed(
            200,
            &contract::DeadLetterQueues {
                dead_letter_queues: out,
            },
        )
    }

    async fn peek(&self, req: &Request<'_>, queue: &str) -> Result<Reply, ApiError> {
        self.known_queue(queue)?;
        let max = req.count("max", 10, 100)?;
        let letters = self.queues.peek(queue, max).await?;
        Reply::typed(
            200,
            &contract::DeadLetters {
                queue: queue.to_owned(),
                messages: letters,
            },
        )
    }

    async fn redrive(&self, req: &Request<'_>, queue: &str) -> Result<Reply, ApiError> {
        let redrivable = self.known_queue(queue)?;
        let ask: contract::Redrive = req.json()?;
        if !redrivable {
            return Err(ApiError::conflict(format!(
                "{queue}'s dead letters have no source queue to go back to: start what they were for again (POST /v1/runs), then delete them"
            )));
        }
        let max = ask.max.unwrap_or(100);
        if !(1..=1000).contains(&max) {
            return Err(ApiError::bad("max", "max is a number from 1 to 1000"));
        }
        let ids = match (ask.message_ids, ask.all) {
            (Some(ids), false) if !ids.is_empty() && ids.len() <= 100 => Some(ids),
            (Some(_), false) => {
                return Err(ApiError::bad("message_ids", "give 1 to 100 message ids"));
            }
            (None, true) => None,
            (Some(_), true) => {
                return Err(ApiError::bad("all", "give message_ids or all, not both"));
            }
            (None, false) => {
                return Err(ApiError::bad(
                    "message_ids",
                    "give message_ids, or all: true",
                ));
            }
        };
        let done = self.queues.redrive(queue, ids.as_deref(), max).await?;
        info!(
            queue,
            moved = done.moved.len(),
            not_found = done.not_found.len(),
            "dead letters redriven"
        );
        let moved = done.moved.len();
        let answer = contract::Redriven {
            queue: queue.to_owned(),
            moved: done.moved,
            not_found: done.not_found,
        };
        Ok(Reply::typed(200, &answer)?.said(format!("redrive {queue}: {moved} moved")))
    }

    async fn health(&self) -> Result<Reply, ApiError> {
        let now = Utc::now();
        let mut problems: Vec<String> = Vec::new();
        let mut warnings: Vec<String> = Vec::new();
        let table = match self.records.get("HEALTH", "probe").await {
            Ok(_) => contract::Reachable { ok: true },
            Err(e) => {
                problems.push(cause("the state table", &e));
                contract::Reachable { ok: false }
            }
        };
        let bucket = match self.objects.versions("config/reports.toml").await {
            Ok(_) => contract::Reachable { ok: true },
            Err(e) => {
                problems.push(cause("the bucket", &e));
                contract::Reachable { ok: false }
            }
        };
        let mut queues = Vec::new();
        for (name, has_source) in self.queues.queues() {
            let source = if has_source {
                match self.queues.depth(&name, false).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        problems.push(cause(&format!("queue {name}"), &e));
                        None
                    }
                }
            } else {
                None
            };
            let dead = match self.queues.depth(&name, true).await {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(cause(&format!("{name}'s dead-letter queue"), &e));
                    None
                }
            };
            if let Some(d) = &dead
                && d.visible > 0
            {
                warnings.push(format!(
                    "{} message(s) in {name}'s dead-letter queue",
                    d.visible
                ));
            }
            let oldest = if has_source {
                match self.queues.oldest_age(&name).await {
                    Ok(age) => age,
                    Err(e) => {
                        warnings.push(cause(&format!("queue {name}'s oldest message"), &e));
                        None
                    }
                }
            } else {
                None
            };
            if let Some(age) = oldest
                && age > self.max_message_age.num_seconds() as u64
            {
                problems.push(format!(
                    "queue {name}: its oldest message has waited {} (more than {}, CHARLIE_MAX_MESSAGE_AGE_SECONDS): its consumer is stuck or failing",
                    human_secs(age),
                    human_secs(self.max_message_age.num_seconds() as u64)
                ));
            }
            queues.push(contract::QueueHealth {
                queue: name,
                depth: source,
                dead_letters: dead,
                oldest_message_age_seconds: oldest,
            });
        }
        let mut folders: BTreeMap<String, contract::FolderHealth> = BTreeMap::new();
        match self
            .records
            .query_index(FOLDERS_INDEX, None, None, 1000)
            .await
        {
            Ok(found) => {
                for r in found {
                    let Some((kind, folder)) = r.index_sk.split_once('#') else {
                        continue;
                    };
                    let entry = folders.entry(folder.to_owned()).or_insert_with(|| {
                        contract::FolderHealth {
                            folder: folder.to_owned(),
                            last_poll_at: None,
                            subscription_expires_at: None,
                        }
                    });
                    match kind {
                        "DELTA" => {
                            if let Ok(link) = serde_json::from_str::<state::DeltaLink>(&r.data) {
                                entry.last_poll_at = Some(link.saved_at);
                            }
                        }
                        "SUB" => {
                            if let Ok(sub) =
                                serde_json::from_str::<state::SubscriptionRecord>(&r.data)
                            {
                                entry.subscription_expires_at = Some(sub.expires_at.to_rfc3339());
                                if sub.expires_at <= now {
                                    problems.push(format!(
                                        "{folder}: its Graph subscription expired at {}",
                                        sub.expires_at
                                    ));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => problems.push(cause("the folders' poll records", &e)),
        }
        for (folder, f) in &folders {
            let last = f
                .last_poll_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.to_utc());
            match last {
                Some(t) if now - t > self.poll_stale => problems.push(format!(
                    "{folder}: no successful poll since {t} (over {} minutes)",
                    self.poll_stale.num_minutes()
                )),
                None => warnings.push(format!("{folder}: never polled")),
                _ => {}
            }
        }
        // The batch sender's circuit breaker, when the deployment has one.
        let downstream = match self.records.get("BREAKER#downstream", "state").await {
            Ok(Some(data)) => match serde_json::from_str::<crate::breaker::BreakerRecord>(&data) {
                Ok(b) => {
                    if b.state != crate::breaker::BreakerState::Closed {
                        warnings.push(format!(
                            "the downstream API's circuit breaker is {} since {}: outcomes wait in outbound{}",
                            if b.state == crate::breaker::BreakerState::Open { "open" } else { "half-open" },
                            b.changed_at.to_rfc3339(),
                            b.last_failure.as_deref().map(|f| format!(" (last failure: {f})")).unwrap_or_default(),
                        ));
                    }
                    Some(contract::DownstreamHealth {
                        breaker: b.state,
                        changed_at: Some(b.changed_at.to_rfc3339()),
                        opened_at: b.opened_at.map(|t| t.to_rfc3339()),
                        recent_failures: b.failures.len() as u64,
                        last_failure: b.last_failure,
                    })
                }
                Err(e) => {
                    warnings.push(format!(
                        "the downstream breaker's record is unreadable: {e}"
                    ));
                    None
                }
            },
            // Closed and never failed (a record is written at the first failure), when the
            // deployment forwards outcomes at all.
            Ok(None) if self.queues.queues().iter().any(|(q, _)| q == "outbound") => {
                Some(contract::DownstreamHealth {
                    breaker: crate::breaker::BreakerState::Closed,
                    changed_at: None,
                    opened_at: None,
                    recent_failures: 0,
                    last_failure: None,
                })
            }
            Ok(None) => None,
            Err(e) => {
                warnings.push(cause("the downstream breaker's record", &e));
                None
            }
        };
        let relays = self.relays_health(now, &mut problems, &mut warnings).await;
        let healthy = problems.is_empty();
        let health = contract::Health {
            status: if healthy {
                contract::HealthStatus::Ok
            } else {
                contract::HealthStatus::Unhealthy
            },
            checked_at: now.to_rfc3339(),
            problems,
            warnings,
            table,
            bucket,
            queues,
            folders: folders.into_values().collect(),
            downstream,
            relays,
        };
        Reply::typed(if healthy { 200 } else { 503 }, &health)
    }

    async fn metrics(&self, req: &Request<'_>) -> Result<Reply, ApiError> {
        let now = Utc::now();
        let since = req.since(now, now - chrono::Duration::days(1))?;
        let (counts, start) = crate::counters::since(self.records.as_ref(), since, now).await?;
        let mut runs: BTreeMap<String, u64> = BTreeMap::new();
        let from = since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for r in self
            .records
            .query_index(RUNS_INDEX, None, Some(&from), 1000)
            .await?
        {
            if let Ok(run) = serde_json::from_str::<RunRecord>(&r.data) {
                *runs.entry(run.status.to_string()).or_default() += 1;
            }
        }
        let mut queues = BTreeMap::new();
        for (name, has_source) in self.queues.queues() {
            let depth = if has_source {
                Some(self.queues.depth(&name, false).await?.visible)
            } else {
                None
            };
            let dead = self.queues.depth(&name, true).await?.visible;
            queues.insert(
                name,
                contract::QueueCounts {
                    depth,
                    dead_letters: dead,
                },
            );
        }
        Reply::typed(
            200,
            &contract::Metrics {
                since: since.to_rfc3339(),
                runs_by_status: runs,
                queues,
                counters: contract::Counters::new(&counts, start),
            },
        )
    }

    // ---- keys and audit ----------------------------------------------------------------------

    async fn list_keys(&self) -> Result<Reply, ApiError> {
        let found = self
            .records
            .query_index(state::API_KEYS_INDEX, None, None, 1000)
            .await?;
        let keys = found
            .iter()
            .filter_map(|r| serde_json::from_str::<ApiKeyRecord>(&r.data).ok())
            .map(|k| contract::KeyInfo::from(&k))
            .collect();
        Reply::typed(200, &contract::KeyList { keys })
    }

    async fn create_key(&self, req: &Request<'_>, by: &ApiKeyRecord) -> Result<Reply, ApiError> {
        let ask: contract::NewKey = req.json()?;
        let name = ask.name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(ApiError::bad(
                "name",
                "name is 1 to 64 printable characters",
            ));
        }
        let scopes = ask
            .scopes
            .iter()
            .map(|s| {
                Scope::parse(s).ok_or_else(|| {
                    ApiError::bad(
                        "scopes",
                        format!("scope {s:?} is not one of {:?}", Scope::NAMES),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(ApiError::bad("scopes", "give at least one scope"));
        }
        let (record, key) = keys::create(self.records.as_ref(), name, &scopes, &by.name).await?;
        // Shown this once; only its hash is kept.
        let created = contract::CreatedKey {
            info: contract::KeyInfo::from(&record),
            key: key.expose().to_owned(),
        };
        Ok(Reply::typed(201, &created)?.said(format!(
            "create key {} ({})",
            record.name,
            record.scopes.join(",")
        )))
    }

    async fn revoke_key(&self, id: &str) -> Result<Reply, ApiError> {
        let key = RecordKey::api_key(id);
        let Some(mut record) = self.records.get_record(&key).await? else {
            return Err(ApiError::not_found(format!("no key {id:?}")));
        };
        if record.revoked_at.is_none() {
            record.revoked_at = Some(Utc::now().to_rfc3339());
            let index = format!("{}#{}", record.created_at, record.id);
            self.records
                .put_record(&key, &record, Some((state::API_KEYS_INDEX, &index)))
                .await?;
        }
        Ok(Reply::typed(200, &contract::KeyInfo::from(&record))?
            .said(format!("revoke key {} ({})", record.name, record.id)))
    }

    async fn audit_trail(&self, req: &Request<'_>) -> Result<Reply, ApiError> {
        let limit = req.count("limit", 50, 500)?;
        let found = self
            .records
            .query_index(AUDIT_INDEX, None, None, limit)
            .await?;
        let entries: Vec<Value> = found
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.data).ok())
            .collect();
        Ok(Reply::ok(json!({"entries": entries})))
    }

    /// Counts a state-changing call against its key's bounds for this hour (a conditional
    /// write per bound, so concurrent calls count exactly); a 429 naming the bound and when to
    /// try again once one is reached.
    async fn within_limits(
        &self,
        req: &Request<'_>,
        segments: &[&str],
        key: &ApiKeyRecord,
    ) -> Result<(), ApiError> {
        let now = Utc::now();
        let hour = now.format("%Y-%m-%dT%H").to_string();
        let next_hour = now.timestamp() - now.timestamp().rem_euclid(3600) + 3600;
        let retry_after = u64::try_from(next_hour - now.timestamp())
            .unwrap_or(3600)
            .max(1);
        // What mails recipients: a run started (the body's report) or rerun (the run id's
        // report), and a redrive (per queue).
        let sends = match segments {
            ["runs"] => serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|b| b["report"].as_str().map(|r| format!("report {r}"))),
            ["runs", run, "rerun"] => {
                Some(format!("report {}", run.split('.').next().unwrap_or(run)))
            }
            ["dead-letters", queue, "redrive"] => Some(format!("redrive {queue}")),
            _ => None,
        };
        let mut bounds = vec![(
            "calls".to_owned(),
            self.limits.calls_per_hour,
            "state-changing calls".to_owned(),
        )];
        if let Some(what) = sends {
            bounds.push((
                what.clone(),
                self.limits.sends_per_report_per_hour,
                format!("{what} calls"),
            ));
        }
        for (bucket, limit, what) in bounds {
            // IAM callers share the record id `iam`: each is bounded by its principal.
            let who = if key.id == "iam" {
                format!("iam:{}", key.name)
            } else {
                key.id.clone()
            };
            let pk = format!("LIMIT#{who}#{hour}");
            let mut tries = 0;
            loop {
                tries += 1;
                let current = self.records.get_versioned(&pk, &bucket).await?;
                let (count, version) = match &current {
                    Some((data, v)) => (data.parse::<u32>().unwrap_or(0), Some(*v)),
                    None => (0, None),
                };
                if count >= limit {
                    warn!(
                        key = key.name,
                        bound = what,
                        limit,
                        "a key's hourly bound reached: 429"
                    );
                    return Err(ApiError {
                        retry_after: Some(retry_after),
                        ..ApiError::new(
                            429,
                            "too_many_requests",
                            format!(
                                "key {} made {limit} {what} this hour, its bound (CHARLIE_KEY_CALLS_PER_HOUR / CHARLIE_KEY_SENDS_PER_REPORT_PER_HOUR); try again in {retry_after} s",
                                key.name
                            ),
                        )
                    });
                }
                if self
                    .records
                    .put_versioned(&pk, &bucket, (count + 1).to_string(), version)
                    .await?
                {
                    break;
                }
                if tries >= 10 {
                    return Err(anyhow::anyhow!(
                        "the hourly bound {pk}/{bucket} kept changing under 10 tries"
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Records a state-changing call (or a refusal, a download); a failure to record is
    /// logged, not hidden.
    async fn audit(&self, req: &Request<'_>, key: &ApiKeyRecord, result: &Result<Reply, ApiError>) {
        let (status, summary) = match result {
            Ok(r) if r.summary.is_empty() => (r.status, format!("{} {}", req.method, req.path)),
            Ok(r) => (r.status, r.summary.clone()),
            Err(e) => (e.status, format!("refused: {}", e.message)),
        };
        self.audit_as(req.call(), (&key.id, &key.name), status, summary)
            .await;
    }

    /// Records what `who` (an id and a name; never a secret) did or was refused.
    async fn audit_as(
        &self,
        (request_id, method, path): (&str, &str, &str),
        (who_id, who_name): (&str, &str),
        status: u16,
        summary: String,
    ) {
        let at = Utc::now();
        let record = AuditRecord {
            at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: request_id.to_owned(),
            key_id: who_id.to_owned(),
            key_name: who_name.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            summary,
        };
        let rk = RecordKey::audit(&at, request_id);
        let index = rk.sk.clone();
        if let Err(e) = self
            .records
            .put_record(&rk, &record, Some((AUDIT_INDEX, &index)))
            .await
        {
            error!(error = %format!("{e:#}"), path, key = who_name, "could not write the audit record");
        }
    }
}

/// A text that can be an S3 key Charlie wrote: at most 1 KiB, no control characters.
fn object_key_ok(key: &str) -> bool {
    key.len() <= 1024 && !key.chars().any(char::is_control)
}

/// A `since` parameter: an RFC 3339 time or a span back from `now` (`90m`, `24h`, `7d`), never
/// more than [`MAX_SINCE_DAYS`] back nor in the future; else why not. Pure: a fuzz target
/// drives it.
pub fn parse_since(v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let limit = now - chrono::Duration::days(MAX_SINCE_DAYS);
    // A span is counted in whole units up to the limit: a huge number is too far back, not an
    // overflow.
    let span = |n: &str, minutes_per_unit: i64| {
        let n = n.parse::<i64>().ok().filter(|n| *n > 0)?;
        let minutes = n.checked_mul(minutes_per_unit)?;
        Some(if minutes > MAX_SINCE_DAYS * 24 * 60 {
            limit - chrono::Duration::minutes(1)
        } else {
            now - chrono::Duration::minutes(minutes)
        })
    };
    let at = match v.char_indices().last() {
        Some((i, 'm')) => span(&v[..i], 1),
        Some((i, 'h')) => span(&v[..i], 60),
        Some((i, 'd')) => span(&v[..i], 24 * 60),
        _ => DateTime::parse_from_rfc3339(v)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
    };
    let bad = |why: &str| format!("since {v:?} {why}");
    let at = at.ok_or_else(|| {
        bad("is neither an RFC 3339 time (2026-12-01T09:00:00Z) nor a span back (90m, 24h, 7d)")
    })?;
    if at > now {
        return Err(bad("is in the future"));
    }
    if at < limit {
        return Err(bad(&format!(
            "is more than {MAX_SINCE_DAYS} days back (the counters' markers last 35 days, their buckets as long as the table keeps them; ask for at most {MAX_SINCE_DAYS})"
        )));
    }
    Ok(at)
}

/// The fields of a dashboard form body and a cookie of a `Cookie` header, as the dashboard
/// reads them. Pure: a fuzz target drives them.
pub fn form_fields(body: &[u8]) -> std::collections::HashMap<String, String> {
    crate::uri::form(body)
}

/// The value of cookie `name` in a `Cookie` header value.
pub fn cookie_value(header: &str, name: &str) -> Option<String> {
    let mut headers = HeaderMap::new();
    headers.insert(
        "cookie",
        aws_lambda_events::http::HeaderValue::from_str(header).ok()?,
    );
    dashboard::cookie(&headers, name)
}

fn parse_period(text: &str) -> Result<Period, ApiError> {
    // The parse error names the text and the forms a period takes.
    Period::parse(text).map_err(|e| ApiError::bad("period", e.to_string()))
}

fn redirect(url: String) -> Reply {
    Reply {
        status: 302,
        body: ReplyBody::Empty,
        location: Some(url),
        summary: String::new(),
    }
}

/// The bearer token of `Authorization`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The page a refused download link shows.
fn link_page(why: &str) -> String {
    let why = minijinja::HtmlEscape(why);
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link not valid — Charlie</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem\">\
         <h1>This download link cannot be used</h1><p>{why}.</p>\
         <p>Ask the report's owner to send it again, or download the report from Charlie's dashboard.</p></body></html>"
    )
}

fn respond(result: Result<Reply, ApiError>) -> ApiGatewayV2httpResponse {
    let mut retry_after = None;
    let (status, body, content_type, location) = match result {
        Ok(r) => match r.body {
            ReplyBody::Json(v) => (
                r.status,
                v.to_string(),
                Some("application/json"),
                r.location,
            ),
            ReplyBody::Html(h) => (r.status, h, Some("text/html; charset=utf-8"), r.location),
            ReplyBody::Empty => (r.status, String::new(), None, r.location),
        },
        Err(e) => {
            retry_after = e.retry_after;
            let body = contract::Problem {
                error: e.code.to_owned(),
                message: e.message,
                field: e.field,
                retry_after: e.retry_after,
            };
            let text = serde_json::to_string(&body).unwrap_or_default();
            (e.status, text, Some("application/json"), None)
        }
    };
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    if let Some(ct) = content_type {
        set("content-type", ct);
    }
    if let Some(l) = &location {
        set("location", l);
    }
    set("x-content-type-options", "nosniff");
    set("cache-control", "no-store");
    set("x-frame-options", "DENY");
    set("referrer-policy", "no-referrer");
    set(
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    );
    set(
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    );
    if let Some(s) = retry_after {
        set("retry-after", &s.to_string());
    }
    if status == 401 {
        set("www-authenticate", "Bearer realm=\"charlie\"");
    }
    let mut r = ApiGatewayV2httpResponse::default();
    r.status_code = i64::from(status);
    r.headers = headers;
    r.body = (!body.is_empty()).then_some(Body::Text(body));
    r
}

/// What `/v1/health` says of a failed check: `what` and a short cause (the AWS error code when
/// there is one), never the raw error, whose ARNs, table and bucket names and request ids go to
/// the log only.
fn cause(what: &str, e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    warn!(check = what, error = %full, "health check failed");
    let code = full.split(|c: char| !c.is_ascii_alphanumeric()).find(|w| {
        w.len() > 9
            && w.starts_with(|c: char| c.is_ascii_uppercase())
            && (w.ends_with("Exception") || w.ends_with("Error") || w.ends_with("Denied"))
    });
    match code {
        Some(code) => format!("{what}: {code} (details in the API's log)"),
        None => format!("{what}: unavailable (details in the API's log)"),
    }
}

#[cfg(test)]
mod tests;
