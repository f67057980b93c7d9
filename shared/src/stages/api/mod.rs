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

mod audit;
mod dashboard;
mod dead_letters;
mod health;
mod http;
mod iam;
mod intake;
pub mod keys;
mod links;
mod metrics;
pub mod openapi;
mod relay;
mod reply;
mod reports;
pub mod routes;
mod runs;

pub use http::{ApiFunction, http_request_of};
use routes::{Access, Route};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use tracing::{error, info, warn};

use crate::contract::{self, KeyId, ReportName, ReprocessStatus, RunId, RunStatus};
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
use health::cause;
use iam::iam_caller;
pub use iam::{IamPrincipal, iam_principals};
use keys::Scope;
use reply::{ApiError, Reply, ReplyBody, link_page, redirect, respond};

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

/// How far back counters can be asked for.
const MAX_SINCE_DAYS: i64 = 31;

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

/// What the API reads of a request, whichever route it takes (`http` builds it).
pub(super) struct Request {
    method: String,
    path: String,
    /// The path's segments after `/v1` (or `/iam/v1`, `/ui`), percent-decoded.
    segments: Vec<String>,
    /// The query's parameters, decoded (`crate::uri::form`: of one given twice, the last).
    query: HashMap<String, String>,
    /// The query as sent (a relay signs it).
    raw_query: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
    request_id: String,
    /// The host API Gateway was called on.
    domain_name: Option<String>,
}

impl Request {
    /// A request the dashboard makes of a route on its session's behalf.
    fn internal(
        method: &str,
        path: &str,
        segments: &[&str],
        query: HashMap<String, String>,
        body: Vec<u8>,
        request_id: &str,
    ) -> Self {
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            segments: segments.iter().map(|s| (*s).to_owned()).collect(),
            query,
            raw_query: None,
            headers: HeaderMap::new(),
            body,
            request_id: request_id.to_owned(),
            domain_name: None,
        }
    }

    /// (request id, method, path): what the audit trail records of a call.
    fn call(&self) -> (&str, &str, &str) {
        (&self.request_id, &self.method, &self.path)
    }

    /// The path's `i`-th segment (after `/v1`), as the route's pattern says it is there.
    fn segment(&self, i: usize) -> &str {
        self.segments.get(i).map_or("", String::as_str)
    }

    /// Ids that cannot name anything stored (a key is at most 1 KiB in DynamoDB): a 404
    /// before anything is looked up. A link's token is checked by its signature instead.
    fn ids_fit(&self) -> Result<(), ApiError> {
        if self.segments.iter().any(|s| s.len() > MAX_ID_BYTES) {
            return Err(ApiError::not_found(format!(
                "nothing is named by a path segment over {MAX_ID_BYTES} bytes"
            )));
        }
        Ok(())
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
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
    /// Answers a route a caller may call (the scope checked): `segments[i]` is the path's
    /// i-th segment, as the route's pattern says it is there.
    async fn route(
        &self,
        req: &Request,
        route: Route,
        segments: &[&str],
        key: &ApiKeyRecord,
    ) -> Result<Reply, ApiError> {
        let at = |i: usize| segments.get(i).copied().unwrap_or_default();
        match route {
            Route::Health => self.health().await,
            Route::Metrics => self.metrics(req).await,
            Route::Reports => self.reports(),
            Route::Report => self.report(&path_id::<ReportName>(at(1))?),
            Route::ReportVersions => self.versions(req, &path_id::<ReportName>(at(1))?).await,
            Route::Runs => self.list_runs(req).await,
            Route::StartRun => {
                let start: contract::StartRun = req.json()?;
                self.start_run(&start.report, &start.period, key).await
            }
            Route::Run => self.show_run(&path_id(at(1))?).await,
            Route::CancelRun => self.cancel_run(&path_id(at(1))?, key).await,
            Route::RerunRun => self.rerun(&path_id(at(1))?, key).await,
            Route::DownloadRun => self.download(&path_id(at(1))?).await,
            Route::RunDeliveries => self.run_deliveries(&path_id(at(1))?).await,
            Route::StartReprocess => self.start_reprocess(req, key).await,
            Route::Reprocess => self.reprocess_request(at(1)).await,
            Route::IntakeOutcomes => self.outcomes(req).await,
            Route::Intake => Reply::typed(200, &self.intake_state(Some(req)).await?),
            Route::PauseIntake => self.pause_intake(key).await,
            Route::ResumeIntake => self.resume_intake(key).await,
            Route::PollNow => self.poll_now(req, key).await,
            Route::Quarantine => self.quarantine(req).await,
            Route::QuarantineFile => self.quarantine_file(req).await,
            Route::Rejects => self.rejects(req).await,
            Route::DeadLetterQueues => self.dead_letter_queues().await,
            Route::DeadLetters => self.peek(req, at(1)).await,
            Route::Redrive => self.redrive(req, at(1)).await,
            Route::DeleteDeadLetter => self.delete_dead_letter(at(1), at(2)).await,
            Route::Keys => self.list_keys().await,
            Route::CreateKey => self.create_key(req, key).await,
            Route::RevokeKey => self.revoke_key(&path_id(at(1))?).await,
            Route::Relays => self.list_relays().await,
            Route::CreateRelay => self.create_relay(req, key).await,
            Route::RevokeRelay => self.revoke_relay(&path_id(at(1))?).await,
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

/// The value of cookie `name` in a `Cookie` header's value (as API Gateway passes it on, in
/// the event's `cookies`).
pub fn cookie_value(header: &str, name: &str) -> Option<String> {
    dashboard::cookie(&[header.to_owned()], name)
}

/// An id in the path, of the kind its route names; one that breaks the kind's rule names
/// nothing stored: 404, saying what the id looks like.
fn path_id<T: std::str::FromStr<Err = contract::BadId>>(text: &str) -> Result<T, ApiError> {
    text.parse()
        .map_err(|e: contract::BadId| ApiError::not_found(format!("no such {}: {e}", e.kind)))
}

fn parse_period(text: &str) -> Result<Period, ApiError> {
    // The parse error names the text and the forms a period takes.
    Period::parse(text).map_err(|e| ApiError::bad("period", e.to_string()))
}

/// The bearer token of `Authorization`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

#[cfg(test)]
mod tests;
