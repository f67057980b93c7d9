//! The dashboard: server-rendered pages under `/ui`, served by the api function beside the
//! JSON routes and built from their answers (the same checks, scopes and audit trail).
//!
//! - **Login**: an API key typed into a form; the answer is a session cookie
//!   (`charlie_session`: `HttpOnly; Secure; SameSite=Strict; Path=/ui`, 8 hours). The session
//!   record (`SESSION#{sha256 of the token}`) names the key, so a revoked key ends its
//!   sessions at their next request; only the token's hash is stored.
//! - **CSRF**: every form that changes state carries the session's own token (`_csrf`),
//!   compared in constant time; a request a browser marks `Sec-Fetch-Site: cross-site` is
//!   refused whatever it carries. The login form (no session yet, so no token) is refused when
//!   `Sec-Fetch-Site` is other than `same-origin`/`none` or `Origin` names another host.
//! - **CSP**: `default-src 'none'`, the stylesheet from `/ui/static/` only, forms to this
//!   origin only, no scripts, no framing. Charts are inline SVG drawn here.
//! - Pages: overview (health, today's intake, recent runs, rows stored per day for 30 days),
//!   runs (filters, detail, start, re-run, cancel, download), intake (outcomes by day,
//!   quarantined files and their reasons, rejects with line numbers), dead letters (peek,
//!   redrive, delete), reports (definitions, next fire time in the report's zone, versions).

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderMap, HeaderValue};
use chrono::{Duration, Utc};
use minijinja::{Environment, context};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys;
use super::{Api, ApiError, Reply, ReplyBody, Request, routes};
use crate::contract;
use crate::secret::Secret;
use crate::state::{ApiKeyRecord, RecordKey, SessionRecord};

/// How long a session lasts from login.
const SESSION_HOURS: i64 = 8;
const COOKIE: &str = "charlie_session";
/// Days the overview's chart covers.
const CHART_DAYS: i64 = 30;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("ui/app.css");
const ICON: &str = include_str!("ui/favicon.svg");

/// A signed-in request: the key it acts as and the session's CSRF token.
struct Session {
    key: ApiKeyRecord,
    csrf: String,
    token: String,
}

/// What a page handler answers.
enum Page {
    Html(u16, String),
    /// 303 to a path under `/ui` (after a form), with an optional cookie to set.
    SeeOther(String, Option<String>),
    /// 302 to a presigned download.
    Download(String),
    Css,
    Icon,
}

fn templates() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // A field an answer leaves out (an optional one) renders as nothing, not an error.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, source) in [
            ("base.html", include_str!("ui/base.html")),
            ("login.html", include_str!("ui/login.html")),
            ("overview.html", include_str!("ui/overview.html")),
            ("runs.html", include_str!("ui/runs.html")),
            ("runs_table.html", include_str!("ui/runs_table.html")),
            ("run.html", include_str!("ui/run.html")),
            ("intake.html", include_str!("ui/intake.html")),
            ("rejects.html", include_str!("ui/rejects.html")),
            ("dead_letters.html", include_str!("ui/dead_letters.html")),
            (
                "dead_letter_queue.html",
                include_str!("ui/dead_letter_queue.html"),
            ),
            ("reports.html", include_str!("ui/reports.html")),
            ("error.html", include_str!("ui/error.html")),
        ] {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name}: {e}"));
        }
        env.add_filter("status_class", status_class);
        env.add_filter("status_mark", status_mark);
        env.add_filter("when", when);
        env.add_filter("bytes", bytes);
        env.add_filter("urlencode", |s: String| crate::uri::segment(&s));
        env.add_filter("tojson", |v: minijinja::Value| {
            serde_json::to_string_pretty(&v).unwrap_or_default()
        });
        env.add_filter("truncate", |s: String, n: usize| {
            match s.char_indices().nth(n) {
                Some((at, _)) => format!("{}…", &s[..at]),
                None => s,
            }
        });
        env
    })
}

/// The colour class of a run's or a delivery's status word, as its type gives it; the word
/// itself and a mark are always shown too.
fn status_class(status: String) -> String {
    use crate::contract::{DeliveryStatus, RunStatus, Tone};
    let tone = if let Ok(s) = status.parse::<RunStatus>() {
        s.tone()
    } else if let Ok(s) = status.parse::<DeliveryStatus>() {
        s.tone()
    } else {
        Tone::Neutral
    };
    tone.class().to_owned()
}

fn status_mark(status: String) -> String {
    match status_class(status).as_str() {
        "good" => "✓",
        "bad" => "✗",
        "wait" => "◷",
        _ => "•",
    }
    .to_owned()
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM UTC` (anything else as it is).
fn when(value: Option<String>) -> String {
    let Some(v) = value else {
        return "—".to_owned();
    };
    chrono::DateTime::parse_from_rfc3339(&v)
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or(v)
}

fn bytes(n: Option<u64>) -> String {
    match n {
        None | Some(0) => "—".to_owned(),
        Some(n) if n < 1024 => format!("{n} B"),
        Some(n) if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        Some(n) => format!("{:.1} MiB", n as f64 / 1024.0 / 1024.0),
    }
}

fn render_raw(name: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
    templates().get_template(name).and_then(|t| t.render(ctx))
}

/// Why a POST to the login form comes from another site, if it does: a browser's
/// `Sec-Fetch-Site` other than `same-origin` / `none` (typed or bookmarked), or an `Origin` that
/// is `null` or names another host than the request's (or, behind the CDN, the public one).
fn foreign_post(req: &Request, edge: &crate::edge::Edge) -> Option<&'static str> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Some("a sign-in posted from another site is refused");
    }
    let origin = header("origin")?;
    if origin == "null" {
        return Some("a sign-in posted from an opaque origin is refused");
    }
    let host = header("host").or(req.domain_name.as_deref())?;
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    (!origin_host.eq_ignore_ascii_case(host) && !edge.is_public_host(origin_host))
        .then_some("a sign-in posted from another origin is refused")
}

fn render(name: &str, ctx: minijinja::Value) -> Result<String, ApiError> {
    render_raw(name, ctx).map_err(|e| ApiError::from(anyhow::anyhow!("rendering {name}: {e:#}")))
}

/// The value of cookie `name` among a request's cookies: `Cookie` headers, each of one cookie
/// or several (`a=1; b=2`). API Gateway (payload 2.0) hands them over in the event's
/// `cookies`, one per entry; lambda_http joins them into one `Cookie` header again.
pub(super) fn cookie(cookies: &[String], name: &str) -> Option<String> {
    cookies
        .iter()
        .flat_map(|c| cookie::Cookie::split_parse(c.as_str()))
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Api {
    /// Serves `/ui…`.
    pub(super) async fn dashboard(&self, req: &Request) -> axum::response::Response {
        let page = match self.dashboard_page(req).await {
            Ok(p) => p,
            Err(e) => {
                let html = render(
                    "error.html",
                    context! { status => e.status, message => e.message, signed_in => false },
                )
                .unwrap_or_else(|_| "error".to_owned());
                Page::Html(e.status, html)
            }
        };
        ui_respond(page)
    }

    async fn dashboard_page(&self, req: &Request) -> Result<Page, ApiError> {
        let (request_id, method, path) = req.call();
        let segments: Vec<&str> = req.segments.iter().map(String::as_str).collect();
        let segments = segments.as_slice();
        let body = &req.body;
        match (method, segments) {
            ("GET", ["static", "app.css"]) => return Ok(Page::Css),
            ("GET", ["static", "favicon.svg"]) => return Ok(Page::Icon),
            ("GET", ["login"]) => {
                return Ok(Page::Html(
                    200,
                    render("login.html", context! { signed_in => false })?,
                ));
            }
            ("POST", ["login"]) => {
                let call = (request_id, method, path);
                // Login CSRF: another site must not sign a visitor in under its own key.
                if let Some(why) = foreign_post(req, &self.edge) {
                    self.audit_as(
                        call,
                        ("none", "dashboard sign-in"),
                        403,
                        format!("refused: {why}"),
                    )
                    .await;
                    return Err(ApiError::new(403, "forbidden", why));
                }
                return self.login(body, call).await;
            }
            _ => {}
        }
        if req
            .headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            == Some("cross-site")
        {
            let why = "a cross-site request to the dashboard is refused";
            self.audit_as(
                (request_id, method, path),
                ("none", "dashboard visitor"),
                403,
                format!("refused: {why}"),
            )
            .await;
            return Err(ApiError::new(403, "forbidden", why));
        }
        let cookies: Vec<String> = req
            .headers
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let Some(session) = self.session(&cookies).await? else {
            return Ok(Page::SeeOther("/ui/login".into(), None));
        };
        let fields = if method == "POST" {
            let fields = crate::uri::form(body);
            let sent = fields.get("_csrf").map(String::as_str).unwrap_or("");
            if !Secret::new(session.csrf.clone()).matches(sent) {
                self.audit_as(
                    (request_id, method, path),
                    (&session.key.id, &session.key.name),
                    403,
                    "refused: a form without this session's CSRF token".into(),
                )
                .await;
                return Err(ApiError::new(
                    403,
                    "forbidden",
                    "the form's CSRF token is missing or not this session's: reload the page and try again",
                ));
            }
            fields
        } else {
            HashMap::new()
        };
        let query = |name: &str| -> Option<String> { req.query(name).map(str::to_owned) };
        let cx = Cx {
            api: self,
            session: &session,
            path,
            request_id,
        };
        match (method, segments) {
            ("GET", []) => self.overview(&cx).await,
            ("POST", ["logout"]) => {
                // Ended: the record stays, expired (the table has no deletes for records).
                let ended = SessionRecord {
                    key_id: session.key.id.clone(),
                    csrf: random_hex(),
                    created_at: Utc::now().to_rfc3339(),
                    expires_at: Utc::now().to_rfc3339(),
                };
                self.records
                    .put_record(&RecordKey::session(&session.token), &ended, None)
                    .await?;
                Ok(Page::SeeOther(
                    "/ui/login".into(),
                    Some(format!(
                        "{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/ui; Max-Age=0"
                    )),
                ))
            }
            ("GET", ["runs"]) => {
                let mut q = vec![("limit", "50".to_owned())];
                for name in ["report", "status"] {
                    if let Some(v) = query(name) {
                        q.push((name, v));
                    }
                }
                let runs: contract::RunList = cx.get(&["runs"], &q).await?;
                cx.page(
                    "runs.html",
                    context! {
                        runs => runs.runs,
                        reports => self.definitions.reports.keys().collect::<Vec<_>>(),
                        report => query("report"),
                        status => query("status"),
                        statuses => contract::RunStatus::words(),
                    },
                )
            }
            ("POST", ["runs"]) => {
                let report = fields.get("report").cloned().unwrap_or_default();
                // The form's empty period is the report's last complete one, as it says.
                let period = match fields.get("period").map(|p| p.trim()) {
                    Some(p) if !p.is_empty() => p.to_owned(),
                    _ => self.last_period(&report).unwrap_or_default(),
                };
                let start = contract::StartRun { report, period };
                let queued: contract::RunQueued = cx.post(&["runs"], &start).await?;
                Ok(Page::SeeOther(
                    format!("/ui/runs/{}", crate::uri::segment(&queued.run_id)),
                    None,
                ))
            }
            ("GET", ["runs", id]) => {
                let run: contract::RunAnswer = cx.get(&["runs", id], &[]).await?;
                let done = run.run.status.is_final();
                let delivered = !run.deliveries.is_empty();
                let built = run.run.status == contract::RunStatus::Built;
                cx.page(
                    "run.html",
                    context! {
                        run => run,
                        cancellable => !done,
                        // Reload by itself while there is more to see.
                        refresh => !(done && (delivered || !built)),
                    },
                )
            }
            ("POST", ["runs", id, action @ ("rerun" | "cancel")]) => {
                // A rerun is a new run, shown next; a cancelled one stays in view.
                let to = if *action == "rerun" {
                    let queued: contract::RunQueued = cx.post(&["runs", id, action], &()).await?;
                    queued.run_id
                } else {
                    let asked: contract::CancelRequested =
                        cx.post(&["runs", id, action], &()).await?;
                    asked.run_id
                };
                Ok(Page::SeeOther(
                    format!("/ui/runs/{}", crate::uri::segment(&to)),
                    None,
                ))
            }
            ("GET", ["runs", id, "download"]) => cx.download(&["runs", id, "download"], &[]).await,
            ("GET", ["intake"]) => self.intake_page(&cx, query("date"), query("dataset")).await,
            ("GET", ["intake", "file"]) => {
                let key = query("key").unwrap_or_default();
                cx.download(&["intake", "quarantine", "file"], &[("key", key)])
                    .await
            }
            ("GET", ["intake", "rejects"]) => {
                let raw = query("raw_key").unwrap_or_default();
                let rejects: contract::Rejects = cx
                    .get(&["intake", "rejects"], &[("raw_key", raw.clone())])
                    .await?;
                cx.page(
                    "rejects.html",
                    context! { raw_key => raw, file => rejects.rejects },
                )
            }
            ("GET", ["dead-letters"]) => {
                let queues: contract::DeadLetterQueues = cx.get(&["dead-letters"], &[]).await?;
                cx.page(
                    "dead_letters.html",
                    context! { queues => queues.dead_letter_queues },
                )
            }
            ("GET", ["dead-letters", queue]) => {
                let peeked: contract::DeadLetters = cx
                    .get(&["dead-letters", queue], &[("max", "10".to_owned())])
                    .await?;
                cx.page(
                    "dead_letter_queue.html",
                    context! { queue => queue, messages => peeked.messages, moved => query("moved") },
                )
            }
            ("POST", ["dead-letters", queue, "redrive"]) => {
                let asked = match fields.get("message_id").filter(|m| !m.is_empty()) {
                    Some(id) => contract::Redrive {
                        message_ids: Some(vec![id.clone()]),
                        ..Default::default()
                    },
                    None => contract::Redrive {
                        all: true,
                        ..Default::default()
                    },
                };
                let done: contract::Redriven =
                    cx.post(&["dead-letters", queue, "redrive"], &asked).await?;
                Ok(Page::SeeOther(
                    format!(
                        "/ui/dead-letters/{}?moved={}",
                        crate::uri::segment(queue),
                        done.moved.len()
                    ),
                    None,
                ))
            }
            ("POST", ["dead-letters", queue, "delete"]) => {
                let id = fields.get("message_id").cloned().unwrap_or_default();
                cx.call("DELETE", &["dead-letters", queue, &id], &[], None)
                    .await?;
                Ok(Page::SeeOther(
                    format!("/ui/dead-letters/{}", crate::uri::segment(queue)),
                    None,
                ))
            }
            ("GET", ["reports"]) => {
                let mut reports = Vec::new();
                for name in self.definitions.reports.keys() {
                    let info: contract::ReportInfo = cx.get(&["reports", name], &[]).await?;
                    let last = self.last_period(name).unwrap_or_default();
                    let stored: contract::WorkbookVersions = cx
                        .get(&["reports", name, "versions"], &[("period", last)])
                        .await?;
                    reports.push(ReportCard {
                        info,
                        last_period: stored.period,
                        versions: stored.versions,
                    });
                }
                cx.page("reports.html", context! { reports => reports })
            }
            _ => Err(ApiError::not_found(format!("no page {method} {path}"))),
        }
    }

    async fn login(&self, body: &[u8], call: (&str, &str, &str)) -> Result<Page, ApiError> {
        let fields = crate::uri::form(body);
        let presented = fields.get("key").map(|k| k.trim().to_owned());
        let outcome = keys::authenticate(self.records.as_ref(), presented.as_deref()).await?;
        match &outcome {
            Ok(key) => {
                self.audit_as(call, (&key.id, &key.name), 303, "dashboard sign-in".into())
                    .await;
            }
            Err(refused) => {
                let who = presented
                    .as_deref()
                    .and_then(keys::presented_id)
                    .unwrap_or("none");
                self.audit_as(
                    call,
                    (who, "dashboard sign-in"),
                    401,
                    format!("refused: {}", refused.message()),
                )
                .await;
            }
        }
        match outcome {
            Ok(key) => {
                let token = random_hex();
                let now = Utc::now();
                let record = SessionRecord {
                    key_id: key.id.clone(),
                    csrf: random_hex(),
                    created_at: now.to_rfc3339(),
                    expires_at: (now + Duration::hours(SESSION_HOURS)).to_rfc3339(),
                };
                self.records
                    .put_record(&RecordKey::session(&token), &record, None)
                    .await?;
                tracing::info!(key = key.name, "dashboard sign-in");
                Ok(Page::SeeOther(
                    "/ui".into(),
                    Some(format!(
                        "{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/ui; Max-Age={}",
                        SESSION_HOURS * 3600
                    )),
                ))
            }
            Err(refused) => Ok(Page::Html(
                401,
                render(
                    "login.html",
                    context! { signed_in => false, error => refused.message() },
                )?,
            )),
        }
    }

    /// The request's session, when its cookie names a live one whose key is not revoked.
    async fn session(&self, cookies: &[String]) -> Result<Option<Session>, ApiError> {
        let Some(token) = cookie(cookies, COOKIE).filter(|t| t.len() == 64) else {
            return Ok(None);
        };
        let Some(record) = self.records.get_record(&RecordKey::session(&token)).await? else {
            return Ok(None);
        };
        let live =
            chrono::DateTime::parse_from_rfc3339(&record.expires_at).is_ok_and(|t| t > Utc::now());
        if !live {
            return Ok(None);
        }
        let Some(key) = self
            .records
            .get_record(&RecordKey::api_key(&record.key_id))
            .await?
            .filter(|k| k.revoked_at.is_none())
        else {
            return Ok(None);
        };
        Ok(Some(Session {
            key,
            csrf: record.csrf,
            token,
        }))
    }

    async fn overview(&self, cx: &Cx<'_>) -> Result<Page, ApiError> {
        // Unhealthy is a 503 with the same body: shown, not an error page.
        let health: contract::Health = cx.get(&["health"], &[]).await?;
        let today = Utc::now().format("%Y-%m-%dT00:00:00Z").to_string();
        let intake: contract::IntakeState = cx.get(&["intake"], &[("since", today)]).await?;
        let runs: contract::RunList = cx.get(&["runs"], &[("limit", "10".to_owned())]).await?;
        let mut recent = Vec::new();
        for run in runs.runs {
            let d: contract::RunDeliveries =
                cx.get(&["runs", &run.run_id, "deliveries"], &[]).await?;
            recent.push(RecentRun {
                run,
                deliveries: d.deliveries,
            });
        }
        let chart = self.rows_chart().await?;
        cx.page(
            "overview.html",
            context! {
                healthy => health.status == contract::HealthStatus::Ok,
                health => health,
                intake => intake,
                by_dataset => self.per_dataset(&intake),
                runs => recent,
                chart => chart,
            },
        )
    }

    /// The last complete period of `report` now, in its time zone: what a run started with no
    /// period builds. `None` for a report the definitions do not name.
    fn last_period(&self, report: &str) -> Option<String> {
        let r = self.definitions.reports.get(report)?;
        Some(crate::period::Period::previous(r.period, Utc::now(), r.time_zone.0).to_string())
    }

    /// Rows stored per day and dataset over the last [`CHART_DAYS`] days, as an SVG drawing
    /// (one line per dataset) with its legend and the figures as a table.
    async fn rows_chart(&self) -> Result<Chart, ApiError> {
        let today = Utc::now().date_naive();
        let days: Vec<chrono::NaiveDate> = (0..CHART_DAYS)
            .rev()
            .map(|back| today - Duration::days(back))
            .collect();
        let mut by_dataset: BTreeMap<String, Vec<u64>> = self
            .definitions
            .datasets
            .keys()
            .map(|d| (d.clone(), vec![0; days.len()]))
            .collect();
        for (i, day) in days.iter().enumerate() {
            for (_, values) in self.records.counters(&format!("COUNTS#{day}")).await? {
                for (kind, dataset, n) in crate::counters::Counts(values).kinds() {
                    if kind == crate::counters::Kind::RowsNew
                        && let Some(series) = by_dataset.get_mut(dataset)
                    {
                        series[i] += n;
                    }
                }
            }
        }
        let (w, h, left, bottom) = (720.0, 220.0, 48.0, 24.0);
        let top = by_dataset
            .values()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0)
            .max(1);
        let x = |i: usize| left + (w - left - 8.0) * i as f64 / (days.len() - 1).max(1) as f64;
        let y = |v: u64| (h - bottom) - (h - bottom - 8.0) * v as f64 / top as f64;
        const COLOURS: [&str; 6] = [
            "#2563eb", "#d97706", "#059669", "#7c3aed", "#dc2626", "#0891b2",
        ];
        // Dashes as well as colours tell the lines apart.
        const DASHES: [&str; 4] = ["", "6 3", "2 3", "8 3 2 3"];
        let series = by_dataset
            .into_iter()
            .enumerate()
            .map(|(n, (dataset, values))| {
                let points: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
                    .collect();
                Series {
                    dataset,
                    colour: COLOURS[n % COLOURS.len()],
                    points: points.join(" "),
                    dash: DASHES[n % DASHES.len()],
                    total: values.iter().sum(),
                    values,
                }
            })
            .collect();
        Ok(Chart {
            width: w,
            height: h,
            left,
            bottom: h - bottom,
            top,
            mid: top / 2,
            y_mid: y(top / 2),
            y_top: y(top),
            first: days.first().map(ToString::to_string),
            last: days.last().map(ToString::to_string),
            days: days.iter().map(|d| d.format("%m-%d").to_string()).collect(),
            series,
        })
    }

    /// Each defined dataset's counters from an intake answer (`by` is keyed by what a
    /// counter is about: datasets, mailboxes, reports), zeros for one with none.
    fn per_dataset(
        &self,
        intake: &contract::IntakeState,
    ) -> BTreeMap<String, BTreeMap<String, u64>> {
        let by = &intake.counters.by;
        self.definitions
            .datasets
            .keys()
            .map(|d| (d.clone(), by.get(d).cloned().unwrap_or_default()))
            .collect()
    }

    async fn intake_page(
        &self,
        cx: &Cx<'_>,
        date: Option<String>,
        dataset: Option<String>,
    ) -> Result<Page, ApiError> {
        let date = date.unwrap_or_else(|| Utc::now().format("%Y-%m-%d").to_string());
        let dataset = dataset.or_else(|| self.definitions.datasets.keys().next().cloned());
        let outcomes: Option<contract::DayOutcomes> = match &dataset {
            Some(d) => Some(
                cx.get(
                    &["intake", "outcomes"],
                    &[("dataset", d.clone()), ("date", date.clone())],
                )
                .await?,
            ),
            None => None,
        };
        let quarantine: contract::Quarantined = cx
            .get(&["intake", "quarantine"], &[("limit", "50".to_owned())])
            .await?;
        let intake: contract::IntakeState =
            cx.get(&["intake"], &[("since", "7d".to_owned())]).await?;
        cx.page(
            "intake.html",
            context! {
                date => date,
                dataset => dataset,
                datasets => self.definitions.datasets.keys().collect::<Vec<_>>(),
                outcomes => outcomes,
                quarantined => quarantine.files,
                by_dataset => self.per_dataset(&intake),
                intake => intake,
            },
        )
    }
}

/// A page's context: the API, the session, the request.
struct Cx<'a> {
    api: &'a Api,
    session: &'a Session,
    path: &'a str,
    request_id: &'a str,
}

impl Cx<'_> {
    /// Calls an API route as the session's key would (its scope checked, state changes
    /// audited) and gives its JSON.
    async fn call(
        &self,
        method: &str,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ApiError> {
        // Only the routes a key may call; the page's own path names one.
        let def = routes::find(method, segments)
            .ok()
            .filter(|d| d.scope().is_some())
            .ok_or_else(|| {
                ApiError::not_found(format!("no route {method} /v1/{}", segments.join("/")))
            })?;
        let needed = def.scope().unwrap_or(super::keys::Scope::Admin);
        let key = &self.session.key;
        if keys::granted(key).is_none_or(|s| s < needed) {
            return Err(ApiError::new(
                403,
                "forbidden",
                format!(
                    "this needs a key with scope {}; {} has {}",
                    needed.name(),
                    key.name,
                    key.scopes.join(", ")
                ),
            ));
        }
        let query: HashMap<String, String> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let request = Request::internal(
            method,
            self.path,
            segments,
            query,
            body.unwrap_or_default(),
            self.request_id,
        );
        let result = self.api.route(&request, def.route, segments, key).await;
        if method != "GET" {
            self.api.audit(request.call(), key, &result).await;
        }
        result
    }

    /// A `GET` route's answer, read as the contract's type for it.
    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, ApiError> {
        typed_of(self.call("GET", segments, query, None).await?, segments)
    }

    /// A `POST` route's answer to `body`, read as the contract's type for it.
    async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &impl Serialize,
    ) -> Result<T, ApiError> {
        let body = serde_json::to_vec(body).map_err(anyhow::Error::from)?;
        typed_of(
            self.call("POST", segments, &[], Some(body)).await?,
            segments,
        )
    }

    async fn download(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Page, ApiError> {
        let reply = self.call("GET", segments, query, None).await?;
        reply
            .location
            .map(Page::Download)
            .ok_or_else(|| ApiError::not_found("nothing to download"))
    }

    fn page(&self, name: &str, ctx: minijinja::Value) -> Result<Page, ApiError> {
        let common = context! {
            signed_in => true,
            key_name => self.session.key.name,
            scopes => self.session.key.scopes,
            csrf => self.session.csrf,
            nav => self.path,
            now => Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        };
        Ok(Page::Html(200, render(name, context! { ..ctx, ..common })?))
    }
}

/// An answer of the API's own routes as the page reads it: a route whose answer is not its
/// contract's type is a bug, shown as one.
fn typed_of<T: DeserializeOwned>(reply: Reply, segments: &[&str]) -> Result<T, ApiError> {
    let route = segments.join("/");
    match reply.body {
        ReplyBody::Json(v) => serde_json::from_value(v).map_err(|e| {
            anyhow::anyhow!("the answer of /v1/{route} is not its contract's type: {e}").into()
        }),
        _ => Err(anyhow::anyhow!("/v1/{route} answered no JSON").into()),
    }
}

/// The overview's chart of rows stored per day and dataset, in the SVG's coordinates.
#[derive(Serialize)]
struct Chart {
    width: f64,
    height: f64,
    left: f64,
    bottom: f64,
    /// The highest day's count, and half of it: the y axis' labels, at `y_top` and `y_mid`.
    top: u64,
    mid: u64,
    y_mid: f64,
    y_top: f64,
    first: Option<String>,
    last: Option<String>,
    days: Vec<String>,
    series: Vec<Series>,
}

/// One dataset's line: its points, how it is drawn, and the figures behind it.
#[derive(Serialize)]
struct Series {
    dataset: String,
    colour: &'static str,
    points: String,
    dash: &'static str,
    total: u64,
    values: Vec<u64>,
}

/// A run on the overview, with its deliveries.
#[derive(Serialize)]
struct RecentRun {
    #[serde(flatten)]
    run: contract::RunSummary,
    deliveries: Vec<contract::Delivery>,
}

/// A report on the reports page, with the workbooks stored for its last complete period.
#[derive(Serialize)]
struct ReportCard {
    #[serde(flatten)]
    info: contract::ReportInfo,
    last_period: String,
    versions: Vec<contract::ObjectInfo>,
}

fn ui_respond(page: Page) -> axum::response::Response {
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    let (status, body) = match page {
        Page::Html(status, html) => {
            set("content-type", "text/html; charset=utf-8");
            (status, html)
        }
        Page::SeeOther(to, cookie) => {
            set("location", &to);
            if let Some(c) = cookie {
                set("set-cookie", &c);
            }
            (303, String::new())
        }
        Page::Download(url) => {
            set("location", &url);
            (302, String::new())
        }
        Page::Css => {
            set("content-type", "text/css; charset=utf-8");
            (200, STYLE.to_owned())
        }
        Page::Icon => {
            set("content-type", "image/svg+xml");
            (200, ICON.to_owned())
        }
    };
    set("content-security-policy", CSP);
    set("x-content-type-options", "nosniff");
    set("cache-control", "no-store");
    set("x-frame-options", "DENY");
    set("referrer-policy", "same-origin");
    let mut r = axum::response::Response::new(axum::body::Body::from(body));
    *r.status_mut() = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    *r.headers_mut() = headers;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_form_body_decodes_plus_and_percent() {
        let f = crate::uri::form(b"key=chk_ab%2Bc&period=2024-03-14&_csrf=x+y");
        assert_eq!(f["key"], "chk_ab+c");
        assert_eq!(f["_csrf"], "x y");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let given = |list: &[&str]| list.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        let split = given(&["a=1", "charlie_session=abc", "b=2"]);
        assert_eq!(cookie(&split, COOKIE).as_deref(), Some("abc"));
        let joined = given(&["a=1; charlie_session=abc; b=2"]);
        assert_eq!(cookie(&joined, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&split, "missing"), None);
        assert_eq!(cookie(&given(&["charlie_session"]), COOKIE), None);
    }

    #[test]
    fn every_template_renders_with_an_empty_context() {
        for name in templates()
            .templates()
            .map(|(n, _)| n.to_owned())
            .collect::<Vec<_>>()
        {
            render_raw(&name, context! { signed_in => true })
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn pages_render_with_every_optional_part_filled() {
        let reason = "the header has no call_id column (it is the dataset's key)".repeat(2);
        let intake = render_raw(
            "intake.html",
            context! {
                signed_in => true,
                quarantined => vec![json!({"key": "quarantine/ib_calls/x.csv", "reason": reason, "dataset": "ib_calls", "quarantined_at": "2024-03-15T12:00:00Z"})],
                outcomes => json!({"dataset": "ib_calls", "date": "2024-03-14", "totals": {}, "outcomes": [{"attachment": "a.csv", "rows_total": 3, "rows_rejected": 1, "raw_key": "raw/a.csv", "received": "2024-03-14T08:00:00Z"}]}),
                by_dataset => json!({"ib_calls": {"rows_new": 3}}),
            },
        )
        .unwrap();
        assert!(
            intake.contains("the header has no call_id column"),
            "{intake}"
        );
        assert!(intake.contains("…"), "the summary is shortened");
        let run = render_raw(
            "run.html",
            context! {
                signed_in => true, scopes => vec!["operate"],
                run => json!({"run_id": "r-1", "status": "built", "workbook_key": "k", "warnings": ["w"], "deliveries": [{"status": "bounced", "to": ["a@b.example"], "events": [{"type": "Bounce", "at": "2024-03-15T12:00:00Z", "detail": {"bounceType": "Permanent"}}]}]}),
            },
        )
        .unwrap();
        assert!(
            run.contains("Permanent") && run.contains("✗ bounced"),
            "{run}"
        );
        let run = render_raw(
            "run.html",
            context! {
                signed_in => true, scopes => vec!["operate"],
                run => json!({"run_id": "r-2", "status": "built", "deliveries": [
                    {"status": "refused", "transport": "relay", "to": ["a@b.example"], "status_detail": {"relay": "branch-out", "refusal": "the SMTP server refused it: 550 5.1.1 no such user"}},
                    {"status": "relayed", "transport": "relay", "to": ["c@b.example"], "status_detail": {"relay": "branch-out", "smtp_reply": "250 2.0.0 Ok: queued as 4F2"}},
                ]}),
            },
        )
        .unwrap();
        assert!(
            run.contains("✗ refused")
                && run.contains("550 5.1.1 no such user")
                && run.contains("✓ relayed")
                && run.contains("relay branch-out: 250 2.0.0 Ok: queued as 4F2"),
            "{run}"
        );
    }
}
