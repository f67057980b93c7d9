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

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue};
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::definitions::Definitions;
use crate::invocation::Invocation;
use crate::messages::ReportTrigger;
use crate::period::Period;
use crate::ports::{Claims, Objects, QueueAdmin, StateRecords, WorkQueue};
use crate::secret::Secret;
use crate::state::{
    self, AUDIT_INDEX, ApiKeyRecord, AuditRecord, DeliveryStatus, FOLDERS_INDEX, RUNS_INDEX,
    RecordKey, RunCancel, RunRecord,
};
use keys::Scope;

/// The OpenAPI 3.1 document of these routes.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// The routes (`*`: any one segment), for 404 and 405 before a key is even looked at.
const ROUTES: &[(&str, &[&str])] = &[
    ("GET", &["openapi.json"]),
    ("GET", &["links", "*"]),
    ("GET", &["health"]),
    ("GET", &["metrics"]),
    ("GET", &["reports"]),
    ("GET", &["reports", "*"]),
    ("GET", &["reports", "*", "versions"]),
    ("GET", &["runs"]),
    ("POST", &["runs"]),
    ("GET", &["runs", "*"]),
    ("POST", &["runs", "*", "cancel"]),
    ("POST", &["runs", "*", "rerun"]),
    ("GET", &["runs", "*", "download"]),
    ("GET", &["runs", "*", "deliveries"]),
    ("POST", &["reprocess"]),
    ("GET", &["reprocess", "*"]),
    ("GET", &["intake", "outcomes"]),
    ("GET", &["intake", "quarantine"]),
    ("GET", &["intake", "quarantine", "file"]),
    ("GET", &["intake", "rejects"]),
    ("POST", &["intake", "poll"]),
    ("GET", &["intake"]),
    ("POST", &["intake", "pause"]),
    ("POST", &["intake", "resume"]),
    ("GET", &["dead-letters"]),
    ("GET", &["dead-letters", "*"]),
    ("POST", &["dead-letters", "*", "redrive"]),
    ("DELETE", &["dead-letters", "*", "*"]),
    ("GET", &["keys"]),
    ("POST", &["keys"]),
    ("DELETE", &["keys", "*"]),
    ("GET", &["audit"]),
    ("GET", &["relays"]),
    ("POST", &["relays"]),
    ("DELETE", &["relays", "*"]),
    ("GET", &["relay"]),
    ("POST", &["relay", "uploads"]),
    ("GET", &["relay", "outbox"]),
    ("POST", &["relay", "outbox", "ack"]),
    ("POST", &["relay", "outbox", "refused"]),
];

/// The scope a route needs: `GET` reads, anything else operates, keys and the audit trail are
/// for admins (the JSON routes and the dashboard's calls of them alike).
fn scope_for(method: &str, segments: &[&str]) -> Scope {
    match (method, segments.first().copied()) {
        (_, Some("keys" | "relays")) | ("GET", Some("audit")) => Scope::Admin,
        ("GET" | "HEAD", _) => Scope::Read,
        _ => Scope::Operate,
    }
}

fn matches_pattern(pattern: &[&str], segments: &[&str]) -> bool {
    pattern.len() == segments.len()
        && pattern
            .iter()
            .zip(segments)
            .all(|(p, s)| *p == "*" || p == s)
}

/// The longest path segment or cursor that can name something stored.
const MAX_ID_BYTES: usize = 512;

/// How long the presigned URL a download redirects to lasts.
const DOWNLOAD_MINUTES: u64 = 5;
/// Runs whose status is final: a cancel has nothing to stop.
const FINAL: [&str; 5] = [
    "built",
    "skipped_empty",
    "notice_sent",
    "failed",
    "cancelled",
];

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
    /// Who may call the `/iam/v1` routes, and with what scope.
    pub iam_principals: Vec<(String, Scope)>,
}

#[cfg(feature = "api")]
impl Api {
    pub async fn from_env(env: &crate::env::Env) -> anyhow::Result<Self> {
        use super::wiring;
        let aws = crate::adapters::aws::AwsConfig::from_env(env).await;
        let objects = wiring::objects(&aws, env)?;
        let state = wiring::state(&aws, env)?;
        let link_key = wiring::optional_secret(&aws, env, "CHARLIE_LINK_SECRET").await?;
        let relay_key = wiring::optional_secret(&aws, env, "CHARLIE_RELAY_SECRET").await?;
        Ok(Api {
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
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
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
fn counters_json(counts: &crate::counters::Counts, start: DateTime<Utc>) -> Value {
    json!({
        "since": start.to_rfc3339(),
        "totals": counts.totals(),
        "by": counts.by_about(),
    })
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
        let span = |n: &str, unit: fn(i64) -> chrono::Duration| {
            n.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| now - unit(n))
        };
        let at = match v.char_indices().last() {
            Some((i, 'm')) => span(&v[..i], chrono::Duration::minutes),
            Some((i, 'h')) => span(&v[..i], chrono::Duration::hours),
            Some((i, 'd')) => span(&v[..i], chrono::Duration::days),
            _ => DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        };
        let bad = |why: &str| ApiError::bad("since", format!("since {v:?} {why}"));
        let at = at.ok_or_else(|| {
            bad("is neither an RFC 3339 time (2026-12-01T09:00:00Z) nor a span back (90m, 24h, 7d)")
        })?;
        if at > now {
            return Err(bad("is in the future"));
        }
        if at < now - chrono::Duration::days(MAX_SINCE_DAYS) {
            return Err(bad(&format!(
                "is more than {MAX_SINCE_DAYS} days back (the counters' markers last 35 days, their buckets as long as the table keeps them; ask for at most {MAX_SINCE_DAYS})"
            )));
        }
        Ok(at)
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
                .map(percent_decode)
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
        if !ROUTES
            .iter()
            .any(|(m, p)| *m == method && matches_pattern(p, &segments))
        {
            let allowed: Vec<&str> = ROUTES
                .iter()
                .filter(|(_, p)| matches_pattern(p, &segments))
                .map(|(m, _)| *m)
                .collect();
            if allowed.is_empty() {
                return respond(Err(ApiError::not_found(format!(
                    "no route {method} {path} (see /v1/openapi.json)"
                ))));
            }
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
        // Ids that cannot name anything stored (a key is at most 1 KiB in DynamoDB); a link's
        // token is checked by its signature instead.
        if segments.first() != Some(&"links") && segments.iter().any(|s| s.len() > MAX_ID_BYTES) {
            return respond(Err(ApiError::not_found(format!(
                "nothing is named by a path segment over {MAX_ID_BYTES} bytes"
            ))));
        }
        // Routes that need no key.
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["openapi.json"]) => {
                let doc: Value = serde_json::from_str(OPENAPI).unwrap_or(Value::Null);
                return respond(Ok(Reply::ok(doc)));
            }
            ("GET", ["links", token]) => return respond(self.follow_link(token).await),
            // A relay signs its calls with its own key.
            (_, ["relay", ..]) => {
                return respond(Box::pin(self.relay_call(&req, &request, &segments)).await);
            }
            _ => {}
        }
        let key = if iam_route {
            let principal = req
                .request_context
                .authorizer
                .as_ref()
                .and_then(|a| a.iam.as_ref())
                .and_then(|iam| iam.user_arn.clone());
            match iam_caller(&self.iam_principals, principal.as_deref()) {
                Ok(caller) => caller,
                Err(e) => return respond(Err(e)),
            }
        } else {
            let presented = bearer(&req.headers);
            match keys::authenticate(self.records.as_ref(), presented.as_deref()).await {
                Ok(Ok(key)) => key,
                Ok(Err(refused)) => {
                    return respond(Err(ApiError::new(401, "unauthorized", refused.message())));
                }
                Err(e) => return respond(Err(e.into())),
            }
        };
        let needed = scope_for(&method, &segments);
        let has = keys::granted(&key);
        if has.is_none_or(|s| s < needed) {
            return respond(Err(ApiError::new(
                403,
                "forbidden",
                format!(
                    "{method} {path} needs a {} with scope {}; this one ({}) has {}",
                    if iam_route { "caller" } else { "key" },
                    needed.name(),
                    key.name,
                    key.scopes.join(", ")
                ),
            )));
        }
        let result = self.route(&request, &segments, &key).await;
        if method != "GET" && method != "HEAD" {
            self.audit(&request, &key, &result).await;
        }
        respond(result)
    }

    async fn route(
        &self,
        req: &Request<'_>,
        segments: &[&str],
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        match (req.method, segments) {
            ("GET", ["health"]) => self.health().await,
            ("GET", ["metrics"]) => self.metrics(req).await,
            ("GET", ["reports"]) => Ok(Reply::ok(json!({
                "reports": self
                    .definitions
                    .reports
                    .keys()
                    .map(|name| self.report_json(name))
                    .collect::<Vec<_>>()
            }))),
            ("GET", ["reports", name]) => self.report(name),
            ("GET", ["reports", name, "versions"]) => self.versions(req, name).await,
            ("GET", ["runs"]) => self.list_runs(req).await,
            ("POST", ["runs"]) => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Start {
                    report: String,
                    period: String,
                }
                let start: Start = req.json()?;
                self.start_run(&start.report, &start.period, key).await
            }
            ("GET", ["runs", id]) => self.show_run(id).await,
            ("POST", ["runs", id, "cancel"]) => self.cancel_run(id, key).await,
            ("POST", ["runs", id, "rerun"]) => {
                let run = self.run_record(id).await?;
                self.start_run(&run.report, &run.period, key).await
            }
            ("GET", ["runs", id, "download"]) => self.download(id).await,
            ("GET", ["runs", id, "deliveries"]) => {
                self.run_record(id).await?;
                Ok(Reply::ok(
                    json!({"run_id": id, "deliveries": self.deliveries(id).await?}),
                ))
            }
            ("POST", ["reprocess"]) => self.start_reprocess(req, key).await,
            ("GET", ["reprocess", id]) => {
                let record: Option<state::ReprocessRecord> =
                    self.records.get_record(&RecordKey::reprocess(id)).await?;
                let record = record
                    .ok_or_else(|| ApiError::not_found(format!("no reprocess request {id:?}")))?;
                Ok(Reply::ok(
                    serde_json::to_value(record).map_err(anyhow::Error::from)?,
                ))
            }
            ("GET", ["intake", "outcomes"]) => self.outcomes(req).await,
            ("GET", ["intake"]) => self.intake_state(Some(req)).await,
            ("POST", ["intake", "pause"]) => {
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
                Ok(self.intake_state(None).await?.said("pause intake"))
            }
            ("POST", ["intake", "resume"]) => {
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
                let mut reply = self.intake_state(None).await?;
                if let ReplyBody::Json(body) = &mut reply.body {
                    body["resumed"] = json!(resumed);
                }
                Ok(reply.said(format!("resume intake: {resumed} queued")))
            }
            ("POST", ["intake", "poll"]) => {
                let asked = crate::messages::PollNow {
                    v: 1,
                    kind: crate::messages::PollNowKind::PollNow,
                    requested_by: Some(key.name.clone()),
                };
                self.lifecycle.send(&asked, &req.request_id).await?;
                Ok(Reply::json(202, json!({"queued": true})).said("poll now"))
            }
            ("GET", ["intake", "quarantine"]) => self.quarantine(req).await,
            ("GET", ["intake", "quarantine", "file"]) => {
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
            ("GET", ["intake", "rejects"]) => {
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
            ("GET", ["dead-letters"]) => self.dead_letter_queues().await,
            ("GET", ["dead-letters", queue]) => self.peek(req, queue).await,
            ("POST", ["dead-letters", queue, "redrive"]) => self.redrive(req, queue).await,
            ("DELETE", ["dead-letters", queue, id]) => {
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
            ("GET", ["keys"]) => self.list_keys().await,
            ("POST", ["keys"]) => self.create_key(req, key).await,
            ("DELETE", ["keys", id]) => self.revoke_key(id).await,
            ("GET", ["relays"]) => self.list_relays().await,
            ("POST", ["relays"]) => self.create_relay(req, key).await,
            ("DELETE", ["relays", id]) => self.revoke_relay(id).await,
            ("GET", ["audit"]) => self.audit_trail(req).await,
            _ => Err(ApiError::not_found(format!(
                "no route {} {} (see /v1/openapi.json)",
                req.method, req.path
            ))),
        }
    }

    // ---- reports -------------------------------------------------------------------------

    fn report_json(&self, name: &str) -> Value {
        let r = &self.definitions.reports[name];
        let zone = r.time_zone.0;
        let next = crate::schedule::Expression::parse(&r.schedule)
            .ok()
            .and_then(|e| e.next_after(Utc::now(), zone));
        json!({
            "name": name,
            "title": r.title,
            "datasets": r.datasets,
            "schedule": r.schedule,
            "time_zone": zone.name(),
            "period": r.period,
            "next_run_at": next.map(|t| t.to_rfc3339()),
            "next_run_local": next.map(|t| t.with_timezone(&zone).format("%Y-%m-%d %H:%M %Z").to_string()),
            "recipients": r.recipients,
            "cc": r.cc,
            "bcc": r.bcc,
            "transport": r.transport,
            "relay": r.relay,
            "on_empty": r.on_empty,
            "retain_days": r.retain_days,
            "datasets_retain_days": r.datasets.iter()
                .map(|d| (d.clone(), self.definitions.datasets.get(d).and_then(|d| d.retain_days)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        })
    }

    fn report(&self, name: &str) -> Result<Reply, ApiError> {
        if !self.definitions.reports.contains_key(name) {
            return Err(ApiError::not_found(format!("no report {name:?}")));
        }
        Ok(Reply::ok(self.report_json(name)))
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
        Ok(Reply::ok(
            json!({"report": name, "period": period.to_string(), "key": key, "versions": versions}),
        ))
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
            status: "queued".into(),
            requested_at: requested_at.clone(),
            requested_by: key.name.clone(),
            ..RunRecord::new(&run_id, report, &period.to_string())
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
        let mut reply = Reply::json(202, json!({"run_id": run_id, "status": "queued", "report": report, "period": period.to_string()}))
            .said(format!("run {report} {period}"));
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
        let status = req.query("status");
        const STATUSES: [&str; 8] = [
            "queued",
            "building",
            "retrying",
            "built",
            "skipped_empty",
            "notice_sent",
            "failed",
            "cancelled",
        ];
        if let Some(s) = status
            && !STATUSES.contains(&s)
        {
            return Err(ApiError::bad(
                "status",
                format!("status {s:?} is not one of {STATUSES:?}"),
            ));
        }
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
                runs.push(run_summary(&run));
                if runs.len() == limit {
                    next_cursor = Some(r.index_sk.clone());
                    break;
                }
            }
            if runs.len() == limit || exhausted {
                break;
            }
        }
        Ok(Reply::ok(json!({"runs": runs, "next_cursor": next_cursor})))
    }

    async fn show_run(&self, id: &str) -> Result<Reply, ApiError> {
        let run = self.run_record(id).await?;
        let cancel: Option<RunCancel> = self.records.get_record(&RecordKey::run_cancel(id)).await?;
        let deliveries = self.deliveries(id).await?;
        let stale = run.status == "building"
            && run
                .deadline
                .as_deref()
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .is_some_and(|d| d < Utc::now());
        let mut body = serde_json::to_value(&run).map_err(anyhow::Error::from)?;
        body["deliveries"] = Value::Array(deliveries);
        body["cancel_requested"] = json!(cancel.is_some());
        // A build past its deadline died (timed out or crashed); the queue delivers it again.
        body["stale"] = json!(stale);
        Ok(Reply::ok(body))
    }

    /// A run's deliveries, one per recipient group, with their status and SES events.
    async fn deliveries(&self, id: &str) -> Result<Vec<Value>, ApiError> {
        let mut deliveries = Vec::new();
        for d in self.records.deliveries_of_run(id).await? {
            let status: Option<DeliveryStatus> = self
                .records
                .get_record(&RecordKey::delivery_status(&d.delivery))
                .await?;
            let events = self
                .records
                .query(&d.delivery, "event#")
                .await?
                .into_iter()
                .filter_map(|(_, text)| serde_json::from_str::<Value>(&text).ok())
                .collect::<Vec<_>>();
            deliveries.push(json!({
                "group": d.delivery.rsplit('#').next().unwrap_or_default(),
                "transport": d.result.transport,
                "provider_message_id": d.result.provider_message_id,
                "to": d.result.to, "cc": d.result.cc, "bcc": d.result.bcc,
                "sent_at": d.result.sent_at,
                "as_link": d.result.link.is_some(),
                "link_expires": d.result.link,
                "status": status.as_ref().map_or(d.result.status.as_str(), |s| s.status.as_str()),
                "status_detail": status.as_ref().map(|s| &s.detail).filter(|d| !d.is_null()),
                "events": events,
            }));
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
    async fn intake_state(&self, req: Option<&Request<'_>>) -> Result<Reply, ApiError> {
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
            kind::ATTACHMENTS,
            kind::ATTACHMENTS_QUARANTINED,
            kind::ROWS_NEW,
            kind::ROWS_DUPLICATE,
            kind::ROWS_REJECTED,
        ];
        counts.retain(|kind, about| {
            intake.contains(&kind) || (kind == kind::DEAD_LETTERED && about == "ingest")
        });
        Ok(Reply::ok(json!({
            "paused": control.as_ref().is_some_and(|c| c.paused),
            "since": control.as_ref().map(|c| c.since.clone()),
            "by": control.as_ref().map(|c| c.by.clone()),
            "parked": parked,
            "counters": counters_json(&counts, start),
        })))
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
        let (mut total, mut new, mut duplicate, mut rejected) = (0u64, 0u64, 0u64, 0u64);
        for (_, a) in attachments {
            let Some((mailbox, message_id)) = a.source.split_once('/') else {
                continue;
            };
            if !seen.insert((mailbox.to_owned(), message_id.to_owned())) {
                continue;
            }
            for o in self.records.outcomes_of_mail(mailbox, message_id).await? {
                if o.dataset != dataset {
                    continue;
                }
                total += o.rows_total;
                new += o.rows_new;
                duplicate += o.rows_duplicate;
                rejected += o.rows_rejected;
                outcomes.push(json!({
                    "mailbox": o.mailbox, "message_id": o.message_id, "attachment": o.attachment,
                    "dates": o.dates, "rows_total": o.rows_total, "rows_new": o.rows_new,
                    "rows_duplicate": o.rows_duplicate, "rows_rejected": o.rows_rejected,
                    "raw_key": o.raw_key, "quarantine_reason": o.quarantined,
                    "received": a.received.to_rfc3339(),
                }));
            }
        }
        Ok(Reply::ok(json!({
            "dataset": dataset, "date": date.to_string(),
            "totals": {"rows_total": total, "rows_new": new, "rows_duplicate": duplicate, "rows_rejected": rejected},
            "outcomes": outcomes,
        })))
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
                let reason: Value = match self.objects.get(&o.key, None).await {
                    Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
                    Err(e) => {
                        warn!(key = o.key, error = %format!("{e:#}"), "a quarantine reason could not be read");
                        Value::Null
                    }
                };
                files.push(json!({
                    "key": file,
                    "reason": reason["reason"],
                    "dataset": reason["dataset"],
                    "attachment": reason["attachment"],
                    "mailbox": reason["mailbox"],
                    "message_id": reason["message_id"],
                    "downloaded": reason["downloaded"],
                    "quarantined_at": reason["quarantined_at"],
                }));
                if files.len() == limit {
                    next = Some(o.key.clone());
                    break 'pages;
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(Reply::ok(json!({"files": files, "next_after": next})))
    }

    async fn start_reprocess(
        &self,
        req: &Request<'_>,
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Ask {
            dataset: String,
            date: String,
        }
        let ask: Ask = req.json()?;
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
            status: "queued".into(),
            requested_at: now,
            requested_by: key.name.clone(),
            finished_at: None,
            attachments: 0,
            rows_deleted: 0,
            rows_stored: 0,
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
        let mut reply = Reply::json(202, json!({"request_id": request_id, "status": "queued", "dataset": ask.dataset, "date": date.to_string()}))
            .said(format!("reprocess {} {date}", ask.dataset));
        reply.location = Some(format!("/v1/reprocess/{request_id}"));
        Ok(reply)
    }

    async fn cancel_run(&self, id: &str, key: &ApiKeyRecord) -> Result<Reply, ApiError> {
        let run = self.run_record(id).await?;
        if FINAL.contains(&run.status.as_str()) {
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
            status = run.status,
            "cancel requested"
        );
        Ok(Reply::json(
            202,
            json!({"run_id": id, "status": run.status, "cancel_requested": true}),
        )
        .said(format!("cancel run {id}")))
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
            body: ReplyBody::Html(link_page(&why)),
            location: None,
            summary: String::new(),
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
        Ok(redirect(url))
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
            out.push(json!({
                "queue": name,
                "redrivable": redrivable,
                "messages": dead.visible + dead.in_flight,
                "oldest_sent_at": oldest.map(|t| t.to_rfc3339()),
            }));
        }
        Ok(Reply::ok(json!({"dead_letter_queues": out})))
    }

    async fn peek(&self, req: &Request<'_>, queue: &str) -> Result<Reply, ApiError> {
        self.known_queue(queue)?;
        let max = req.count("max", 10, 100)?;
        let letters = self.queues.peek(queue, max).await?;
        Ok(Reply::ok(json!({"queue": queue, "messages": letters})))
    }

    async fn redrive(&self, req: &Request<'_>, queue: &str) -> Result<Reply, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Redrive {
            #[serde(default)]
            message_ids: Option<Vec<String>>,
            #[serde(default)]
            all: bool,
            #[serde(default)]
            max: Option<usize>,
        }
        let redrivable = self.known_queue(queue)?;
        let ask: Redrive = req.json()?;
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
        Ok(
            Reply::ok(json!({"queue": queue, "moved": done.moved, "not_found": done.not_found}))
                .said(format!("redrive {queue}: {} moved", done.moved.len())),
        )
    }

    async fn health(&self) -> Result<Reply, ApiError> {
        let now = Utc::now();
        let mut problems: Vec<String> = Vec::new();
        let mut warnings: Vec<String> = Vec::new();
        let table = match self.records.get("HEALTH", "probe").await {
            Ok(_) => json!({"ok": true}),
            Err(e) => {
                problems.push(format!("the state table: {e:#}"));
                json!({"ok": false})
            }
        };
        let bucket = match self.objects.versions("config/reports.toml").await {
            Ok(_) => json!({"ok": true}),
            Err(e) => {
                problems.push(format!("the bucket: {e:#}"));
                json!({"ok": false})
            }
        };
        let mut queues = Vec::new();
        for (name, has_source) in self.queues.queues() {
            let source = if has_source {
                match self.queues.depth(&name, false).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        problems.push(format!("queue {name}: {e:#}"));
                        None
                    }
                }
            } else {
                None
            };
            let dead = match self.queues.depth(&name, true).await {
                Ok(d) => Some(d),
                Err(e) => {
                    problems.push(format!("{name}'s dead-letter queue: {e:#}"));
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
                        warnings.push(format!("queue {name}'s oldest message: {e:#}"));
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
            queues.push(json!({"queue": name, "depth": source, "dead_letters": dead, "oldest_message_age_seconds": oldest}));
        }
        let mut folders: BTreeMap<String, Value> = BTreeMap::new();
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
                    let entry = folders
                        .entry(folder.to_owned())
                        .or_insert_with(|| json!({"folder": folder}));
                    match kind {
                        "DELTA" => {
                            if let Ok(link) = serde_json::from_str::<state::DeltaLink>(&r.data) {
                                entry["last_poll_at"] = json!(link.saved_at);
                            }
                        }
                        "SUB" => {
                            if let Ok(sub) =
                                serde_json::from_str::<state::SubscriptionRecord>(&r.data)
                            {
                                entry["subscription_expires_at"] =
                                    json!(sub.expires_at.to_rfc3339());
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
            Err(e) => problems.push(format!("the folders' poll records: {e:#}")),
        }
        for (folder, f) in &folders {
            let last = f["last_poll_at"]
                .as_str()
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
                    json!({
                        "breaker": b.state,
                        "changed_at": b.changed_at.to_rfc3339(),
                        "opened_at": b.opened_at.map(|t| t.to_rfc3339()),
                        "recent_failures": b.failures.len(),
                        "last_failure": b.last_failure,
                    })
                }
                Err(e) => {
                    warnings.push(format!(
                        "the downstream breaker's record is unreadable: {e}"
                    ));
                    Value::Null
                }
            },
            // Closed and never failed (a record is written at the first failure), when the
            // deployment forwards outcomes at all.
            Ok(None) if self.queues.queues().iter().any(|(q, _)| q == "outbound") => json!({
                "breaker": crate::breaker::BreakerState::Closed,
                "changed_at": null,
                "opened_at": null,
                "recent_failures": 0,
                "last_failure": null,
            }),
            Ok(None) => Value::Null,
            Err(e) => {
                warnings.push(format!("the downstream breaker's record: {e:#}"));
                Value::Null
            }
        };
        let relays = self.relays_health(now, &mut problems, &mut warnings).await;
        let healthy = problems.is_empty();
        let body = json!({
            "downstream": downstream,
            "relays": relays,
            "status": if healthy { "ok" } else { "unhealthy" },
            "checked_at": now.to_rfc3339(),
            "problems": problems,
            "warnings": warnings,
            "table": table,
            "bucket": bucket,
            "queues": queues,
            "folders": folders.into_values().collect::<Vec<_>>(),
        });
        Ok(Reply::json(if healthy { 200 } else { 503 }, body))
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
                *runs.entry(run.status).or_default() += 1;
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
            queues.insert(name, json!({"depth": depth, "dead_letters": dead}));
        }
        Ok(Reply::ok(json!({
            "since": since.to_rfc3339(),
            "runs_by_status": runs,
            "queues": queues,
            "counters": counters_json(&counts, start),
        })))
    }

    // ---- keys and audit ----------------------------------------------------------------------

    async fn list_keys(&self) -> Result<Reply, ApiError> {
        let found = self
            .records
            .query_index(state::API_KEYS_INDEX, None, None, 1000)
            .await?;
        let keys: Vec<Value> = found
            .iter()
            .filter_map(|r| serde_json::from_str::<ApiKeyRecord>(&r.data).ok())
            .map(|k| key_json(&k))
            .collect();
        Ok(Reply::ok(json!({"keys": keys})))
    }

    async fn create_key(&self, req: &Request<'_>, by: &ApiKeyRecord) -> Result<Reply, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NewKey {
            name: String,
            scopes: Vec<String>,
        }
        let ask: NewKey = req.json()?;
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
        let mut body = key_json(&record);
        // Shown this once; only its hash is kept.
        body["key"] = json!(key.expose());
        Ok(Reply::json(201, body).said(format!(
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
        Ok(
            Reply::ok(key_json(&record))
                .said(format!("revoke key {} ({})", record.name, record.id)),
        )
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

    /// Records a state-changing call; a failure to record is logged, not hidden.
    async fn audit(&self, req: &Request<'_>, key: &ApiKeyRecord, result: &Result<Reply, ApiError>) {
        let at = Utc::now();
        let (status, summary) = match result {
            Ok(r) => (r.status, r.summary.clone()),
            Err(e) => (e.status, format!("refused: {}", e.message)),
        };
        let record = AuditRecord {
            at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: req.request_id.clone(),
            key_id: key.id.clone(),
            key_name: key.name.clone(),
            method: req.method.to_owned(),
            path: req.path.to_owned(),
            status,
            summary,
        };
        let rk = RecordKey::audit(&at, &req.request_id);
        let index = rk.sk.clone();
        if let Err(e) = self
            .records
            .put_record(&rk, &record, Some((AUDIT_INDEX, &index)))
            .await
        {
            error!(error = %format!("{e:#}"), path = req.path, key = key.name, "could not write the audit record");
        }
    }
}

/// A text that can be an S3 key Charlie wrote: at most 1 KiB, no control characters.
fn object_key_ok(key: &str) -> bool {
    key.len() <= 1024 && !key.chars().any(char::is_control)
}

fn key_json(k: &ApiKeyRecord) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "scopes": k.scopes,
        "created_at": k.created_at,
        "created_by": k.created_by,
        "revoked_at": k.revoked_at,
    })
}

fn run_summary(run: &RunRecord) -> Value {
    json!({
        "run_id": run.run_id,
        "report": run.report,
        "period": run.period,
        "status": run.status,
        "rows": run.rows,
        "size": run.size,
        "attempts": run.attempts,
        "requested_at": run.requested_at,
        "requested_by": run.requested_by,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": run.error,
    })
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

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The page a refused download link shows.
fn link_page(why: &str) -> String {
    let why = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Link not valid — Charlie</title></head>\
         <body style=\"font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem\">\
         <h1>This download link cannot be used</h1><p>{why}.</p>\
         <p>Ask the report's owner to send it again, or download the report from Charlie's dashboard.</p></body></html>"
    )
}

fn respond(result: Result<Reply, ApiError>) -> ApiGatewayV2httpResponse {
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
            let mut body = json!({"error": e.code, "message": e.message});
            if let Some(f) = e.field {
                body["field"] = json!(f);
            }
            (e.status, body.to_string(), Some("application/json"), None)
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
    if status == 401 {
        set("www-authenticate", "Bearer realm=\"charlie\"");
    }
    let mut r = ApiGatewayV2httpResponse::default();
    r.status_code = i64::from(status);
    r.headers = headers;
    r.body = (!body.is_empty()).then_some(Body::Text(body));
    r
}

#[cfg(test)]
mod tests;
