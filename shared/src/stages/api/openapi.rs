//! The control API's OpenAPI document, built from what the API itself is made of: the route
//! table (method, path, who may call it), the contract's types (their JSON Schemas, derived
//! with `schemars`) and, per route, what only a reader needs (its summary, its query
//! parameters, which type it answers with). `Api` serves this document at `/v1/openapi.json`;
//! `docs/openapi.json` is the same document as `charlie-local openapi` writes it, and a test
//! fails when the committed file is not what the code builds.
//!
//! A [`Route`] without an operation here does not compile ([`op`] matches every one), so a
//! route added to the table is in the document with the scope the table gives it.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::routes::{Access, ROUTES, Route, RouteDef};
use crate::contract::{self as c};

/// The document, as JSON.
pub fn document() -> Value {
    let mut s = Schemas::new();
    let mut paths = Map::new();
    for def in ROUTES {
        let op = op(def.route, &mut s);
        let item = paths
            .entry(format!("/v1{}", def.path))
            .or_insert_with(|| json!({}));
        item[def.method.to_ascii_lowercase()] = operation(def, op, &mut s);
    }
    let problem = s.answer::<c::Problem>();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Charlie control API",
            "version": "1.0.0",
            "description": INFO,
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A Charlie API key, chk_<id>_<secret>",
                },
                "relay": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": RELAY_SIGNATURE,
                },
            },
            "schemas": s.into_definitions(),
            "responses": responses(&problem),
            "parameters": {
                "Since": query(
                    "since",
                    false,
                    "Count from this time: RFC 3339 (2026-12-01T09:00:00Z) or a span back (90m, \
                     24h, 7d); at most 31 days back. Counters are kept by the hour: the answer's \
                     counters.since is the hour they start from.",
                    json!({"type": "string", "maxLength": 64}),
                ),
            },
        },
    })
}

/// The document as `docs/openapi.json` holds it.
pub fn text() -> String {
    let mut t = serde_json::to_string_pretty(&document()).expect("a JSON value always prints");
    t.push('\n');
    t
}

const INFO: &str = "See and steer Charlie: runs, reports, dead letters, health, keys. Every route \
    but this document and download links needs `Authorization: Bearer <key>`; GET routes need \
    scope read, state-changing ones operate, keys, relays and audit admin (each operation's \
    x-charlie-scope names its scope). Errors are JSON {error, message, field?}. Callers inside \
    AWS may instead sign with SigV4 (service execute-api) and call the same operations under \
    /iam/v1 (API Gateway's AWS_IAM authorization); the deployment's api_iam_principals gives \
    each IAM user or role its scope.";

const RELAY_SIGNATURE: &str = "Charlie-HMAC-SHA256 <hex HMAC-SHA256 with the relay's key of: \
    scheme, method, path, X-Charlie-Timestamp, X-Charlie-Nonce, X-Charlie-Content-SHA256, one \
    per line>, with X-Charlie-Relay, X-Charlie-Timestamp (Unix seconds, within 300 s), \
    X-Charlie-Nonce (used once) and X-Charlie-Content-SHA256 (of the body)";

/// The contract's schemas: answers as the API writes them, request bodies as it reads them (a
/// field with a default may be left out of a request, and is always in an answer).
struct Schemas {
    answers: SchemaGenerator,
    requests: SchemaGenerator,
}

impl Schemas {
    fn new() -> Self {
        let settings = SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        });
        Schemas {
            answers: settings.clone().for_serialize().into_generator(),
            requests: settings.for_deserialize().into_generator(),
        }
    }

    fn answer<T: JsonSchema>(&mut self) -> Value {
        self.answers.subschema_for::<T>().to_value()
    }

    fn request<T: JsonSchema>(&mut self) -> Value {
        self.requests.subschema_for::<T>().to_value()
    }

    /// Every named schema; a type read and written with different schemas under one name would
    /// make one of them wrong, so that stops the build of the document.
    fn into_definitions(mut self) -> Map<String, Value> {
        let mut all = self.answers.take_definitions(true);
        for (name, schema) in self.requests.take_definitions(true) {
            match all.get(&name) {
                Some(other) if *other != schema => panic!(
                    "{name} is read and written with different schemas: give the request \
                     type a name of its own"
                ),
                _ => {
                    all.insert(name, schema);
                }
            }
        }
        for schema in all.values_mut() {
            unwrap_descriptions(schema);
        }
        all
    }
}

/// A description from a doc comment reads as its paragraphs: the comment's line breaks inside
/// a paragraph are spaces.
fn unwrap_descriptions(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match v {
                    Value::String(text) if k == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unwrap_descriptions(v),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// What the route table does not say about a route: how a reader finds and understands it.
struct Op {
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: Option<&'static str>,
    query: Vec<Value>,
    body: Option<Value>,
    /// Its answers (the refusals every route of its access can give are added to them).
    answers: Vec<(u16, Value)>,
    /// Further refusals of its own, with the `Error` body: 404, 409.
    refusals: &'static [u16],
}

impl Op {
    fn new(id: &'static str, tag: &'static str, summary: &'static str) -> Self {
        Op {
            id,
            tag,
            summary,
            description: None,
            query: Vec::new(),
            body: None,
            answers: Vec::new(),
            refusals: &[],
        }
    }

    fn answers(mut self, status: u16, answer: Value) -> Self {
        self.answers.push((status, answer));
        self
    }

    fn query(mut self, name: &str, required: bool, description: &str, schema: Value) -> Self {
        self.query.push(query(name, required, description, schema));
        self
    }

    fn since(mut self) -> Self {
        self.query
            .push(json!({"$ref": "#/components/parameters/Since"}));
        self
    }

    fn body(mut self, schema: Value) -> Self {
        self.body = Some(schema);
        self
    }

    fn refusals(mut self, statuses: &'static [u16]) -> Self {
        self.refusals = statuses;
        self
    }

    fn described(mut self, description: &'static str) -> Self {
        self.description = Some(description);
        self
    }
}

fn query(name: &str, required: bool, description: &str, schema: Value) -> Value {
    json!({
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    })
}

/// A JSON answer.
fn answer(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// A JSON answer with a `Location` header.
fn located(description: &str, schema: Value, location: &str) -> Value {
    let mut a = answer(description, schema);
    a["headers"] = json!({"Location": {"description": location, "schema": {"type": "string"}}});
    a
}

/// A redirect to a presigned URL.
fn redirect(description: &str) -> Value {
    json!({
        "description": description,
        "headers": {"Location": {
            "description": "Where the file downloads (a presigned URL valid for minutes)",
            "schema": {"type": "string"},
        }},
    })
}

fn string(min: u32, max: u32) -> Value {
    json!({"type": "string", "minLength": min, "maxLength": max})
}

fn count(max: u32, default: u32) -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": max, "default": default})
}

/// A day, `yyyy-mm-dd`.
fn date() -> Value {
    json!({"type": "string", "format": "date"})
}

/// Each route's operation.
fn op(route: Route, s: &mut Schemas) -> Op {
    use Route::*;
    match route {
        OpenApi => Op::new("openapi", "meta", "This document").answers(
            200,
            answer("The OpenAPI document", json!({"type": "object"})),
        ),
        Link => Op::new(
            "followLink",
            "runs",
            "A report mail's download link: redirects to the workbook while valid",
        )
        .answers(302, redirect("Redirect to the workbook"))
        .answers(
            403,
            json!({
                "description": "Expired, altered or forged: a page says which",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }),
        ),
        Health => Op::new(
            "health",
            "health",
            "Health: table, bucket, queues, dead letters, polls and subscriptions, the \
             downstream API's breaker, relays and their outboxes",
        )
        .answers(200, answer("Healthy", s.answer::<c::Health>()))
        .answers(
            503,
            answer("Unhealthy: problems says why", s.answer::<c::Health>()),
        ),
        Metrics => Op::new(
            "metrics",
            "health",
            "Counters since a point in time (default a day back): mails, rows, runs, mails \
             sent and SES events; runs by status; queue depths",
        )
        .since()
        .answers(200, answer("Metrics", s.answer::<c::Metrics>())),
        Reports => Op::new(
            "listReports",
            "reports",
            "The report definitions, with their next firing",
        )
        .answers(200, answer("Reports", s.answer::<c::ReportList>())),
        Report => Op::new("showReport", "reports", "One report definition")
            .answers(200, answer("The report", s.answer::<c::ReportInfo>()))
            .refusals(&[404]),
        ReportVersions => Op::new(
            "reportVersions",
            "reports",
            "The stored versions of a period's workbook",
        )
        .query(
            "period",
            true,
            "The period: 2024-03-14, 2024-W11, 2024-03 or a..b",
            json!({"type": "string", "minLength": 1}),
        )
        .answers(
            200,
            answer("Versions, newest first", s.answer::<c::WorkbookVersions>()),
        )
        .refusals(&[404]),
        Runs => Op::new("listRuns", "runs", "Runs, newest first (by request time)")
            .query(
                "report",
                false,
                "Only this report's runs",
                json!({"type": "string"}),
            )
            .query(
                "status",
                false,
                "Only runs with this status",
                s.answer::<c::RunStatus>(),
            )
            .query("from", false, "Requested on or after this day", date())
            .query("to", false, "Requested on or before this day", date())
            .query("limit", false, "Runs per page", count(100, 20))
            .query(
                "cursor",
                false,
                "next_cursor of the page before",
                json!({"type": "string", "maxLength": 300}),
            )
            .answers(200, answer("A page of runs", s.answer::<c::RunList>())),
        StartRun => Op::new(
            "startRun",
            "runs",
            "Start a run of a report for a period (queued on the runs queue)",
        )
        .body(s.request::<c::StartRun>())
        .answers(
            202,
            located("Queued", s.answer::<c::RunQueued>(), "The run"),
        ),
        Run => Op::new(
            "showRun",
            "runs",
            "One run: status, timings, rows, sheets, workbook, error, deliveries",
        )
        .answers(200, answer("The run", s.answer::<c::RunAnswer>()))
        .refusals(&[404]),
        CancelRun => Op::new(
            "cancelRun",
            "runs",
            "Cancel a queued or building run (honoured before it starts and between pages; \
             never after its workbook is stored)",
        )
        .answers(
            202,
            answer("Cancel requested", s.answer::<c::CancelRequested>()),
        )
        .refusals(&[404, 409]),
        RerunRun => Op::new(
            "rerunRun",
            "runs",
            "Run the same report and period again (a new run, a new version)",
        )
        .answers(
            202,
            located("Queued", s.answer::<c::RunQueued>(), "The new run"),
        )
        .refusals(&[404]),
        DownloadRun => Op::new(
            "downloadRun",
            "runs",
            "Download the run's workbook (a redirect to a presigned URL)",
        )
        .answers(302, redirect("Redirect to the workbook"))
        .refusals(&[404]),
        RunDeliveries => Op::new(
            "runDeliveries",
            "runs",
            "A run's deliveries per recipient group: transport, provider message id, status, \
             bounce and complaint events",
        )
        .answers(200, answer("Deliveries", s.answer::<c::RunDeliveries>()))
        .refusals(&[404]),
        StartReprocess => Op::new(
            "startReprocess",
            "intake",
            "Re-ingest a dataset's day from its archived attachments (asynchronously; poll the \
             status)",
        )
        .body(s.request::<c::StartReprocess>())
        .answers(
            202,
            located(
                "Queued",
                s.answer::<c::ReprocessQueued>(),
                "The request's status",
            ),
        ),
        Reprocess => Op::new(
            "showReprocess",
            "intake",
            "A reprocess request's status: queued, running, retrying, done or failed",
        )
        .answers(200, answer("The request", s.answer::<c::ReprocessRecord>()))
        .refusals(&[404]),
        Intake => Op::new(
            "intakeState",
            "intake",
            "Whether intake is paused, how many mails wait for resume, and the intake's \
             counters since a point in time (default: the last pause or resume)",
        )
        .since()
        .answers(200, answer("Intake", s.answer::<c::IntakeState>())),
        IntakeOutcomes => Op::new(
            "intakeOutcomes",
            "intake",
            "What ingest made of each attachment with rows on a dataset's day",
        )
        .query(
            "dataset",
            true,
            "A dataset of reports.toml",
            json!({"type": "string", "minLength": 1}),
        )
        .query("date", true, "The day (yyyy-mm-dd)", date())
        .answers(
            200,
            answer("Outcomes and totals", s.answer::<c::DayOutcomes>()),
        ),
        PauseIntake => Op::new(
            "pauseIntake",
            "intake",
            "Pause intake: notifications and polls are recorded, nothing is queued",
        )
        .answers(200, answer("Intake", s.answer::<c::IntakeState>())),
        ResumeIntake => Op::new(
            "resumeIntake",
            "intake",
            "Resume intake: what arrived while paused is queued, oldest first",
        )
        .answers(
            200,
            answer(
                "Intake, and how many were queued (resumed)",
                s.answer::<c::IntakeState>(),
            ),
        ),
        PollNow => Op::new(
            "pollNow",
            "intake",
            "Poll every folder now (the poller's scheduled round, at once)",
        )
        .answers(
            202,
            answer("Queued for the poller", s.answer::<c::PollQueued>()),
        ),
        Quarantine => Op::new(
            "quarantine",
            "intake",
            "Quarantined files with their reasons, in key order",
        )
        .query(
            "dataset",
            false,
            "Only this dataset's",
            json!({"type": "string"}),
        )
        .query("limit", false, "At most this many", count(200, 50))
        .query(
            "after",
            false,
            "next_after of the page before",
            json!({"type": "string", "maxLength": 1024}),
        )
        .answers(200, answer("Files", s.answer::<c::Quarantined>())),
        QuarantineFile => Op::new(
            "quarantinedFile",
            "intake",
            "Download a quarantined file (a redirect to a presigned URL)",
        )
        .query(
            "key",
            true,
            "The file's key (quarantine/…)",
            string(1, 1024),
        )
        .answers(302, redirect("Redirect to the file"))
        .refusals(&[404]),
        Rejects => Op::new(
            "rejects",
            "intake",
            "The rejected rows of an archived attachment, with line numbers and reasons",
        )
        .query(
            "raw_key",
            true,
            "An outcome's raw_key (raw/…)",
            string(1, 1000),
        )
        .answers(200, answer("Rejects", s.answer::<c::Rejects>()))
        .refusals(&[404]),
        DeadLetterQueues => Op::new(
            "listDeadLetterQueues",
            "dead letters",
            "Every dead-letter queue with its depth",
        )
        .answers(200, answer("Queues", s.answer::<c::DeadLetterQueues>())),
        DeadLetters => Op::new(
            "peekDeadLetters",
            "dead letters",
            "Peek at a queue's dead letters (left where they are)",
        )
        .query("max", false, "At most this many", count(100, 10))
        .answers(
            200,
            answer("Messages, oldest first", s.answer::<c::DeadLetters>()),
        )
        .refusals(&[404]),
        Redrive => Op::new(
            "redriveDeadLetters",
            "dead letters",
            "Move dead letters back to their source queue: some by id, or all",
        )
        .body(s.request::<c::Redrive>())
        .answers(200, answer("What moved", s.answer::<c::Redriven>()))
        .refusals(&[404, 409]),
        DeleteDeadLetter => Op::new("deleteDeadLetter", "dead letters", "Delete one dead letter")
            .answers(204, json!({"description": "Deleted"}))
            .refusals(&[404]),
        Keys => Op::new("listKeys", "keys", "API keys (never their secrets)")
            .answers(200, answer("Keys", s.answer::<c::KeyList>())),
        CreateKey => Op::new(
            "createKey",
            "keys",
            "Create an API key (admin); the key is in the answer, once",
        )
        .body(s.request::<c::NewKey>())
        .answers(201, answer("The new key", s.answer::<c::CreatedKey>())),
        RevokeKey => Op::new("revokeKey", "keys", "Revoke an API key (admin)")
            .answers(200, answer("The revoked key", s.answer::<c::KeyInfo>()))
            .refusals(&[404]),
        Audit => Op::new(
            "auditTrail",
            "keys",
            "The audit trail of state-changing calls, newest first (admin)",
        )
        .query("limit", false, "At most this many", count(500, 50))
        .answers(200, answer("Entries", s.answer::<c::AuditTrail>())),
        Relays => Op::new("listRelays", "relays", "Relays (never their keys; admin)")
            .answers(200, answer("Relays", s.answer::<c::RelayList>())),
        CreateRelay => Op::new(
            "createRelay",
            "relays",
            "Create a relay, or give a revoked one a new key (admin); the key is in the \
             answer, once",
        )
        .body(s.request::<c::NewRelay>())
        .answers(201, answer("The new relay", s.answer::<c::CreatedRelay>()))
        .refusals(&[409]),
        RevokeRelay => Op::new(
            "revokeRelay",
            "relays",
            "Revoke a relay (admin): its key is refused and what it uploads after is \
             quarantined",
        )
        .answers(200, answer("The revoked relay", s.answer::<c::RelayInfo>()))
        .refusals(&[404]),
        RelayHello => Op::new(
            "relayWhoami",
            "relays",
            "Who the API takes the signing relay for, and the API's clock",
        )
        .answers(200, answer("The relay", s.answer::<c::RelayHello>())),
        RelayUpload => Op::new(
            "relayUpload",
            "relays",
            "A relay asks where to upload one raw mail",
        )
        .body(s.request::<c::UploadRequest>())
        .answers(
            200,
            answer(
                "A presigned upload, or exists: true",
                s.answer::<c::UploadTicket>(),
            ),
        ),
        RelayOutbox => Op::new(
            "relayOutbox",
            "relays",
            "Report mail queued for the signing relay (transport = \"relay\"), oldest first, \
             each with a presigned GET of its MIME",
        )
        .answers(200, answer("Queued mail", s.answer::<c::Outbox>())),
        RelayAck => Op::new(
            "relayAck",
            "relays",
            "The signing relay sent a queued mail: its SMTP server's answer",
        )
        .body(s.request::<c::MailSent>())
        .answers(200, answer("Marked sent", s.answer::<c::SentRecorded>()))
        .refusals(&[404, 409]),
        RelayRefused => Op::new(
            "relayRefused",
            "relays",
            "The signing relay's sender refused a queued mail for good: its answer",
        )
        .described(
            "Takes the mail off the relay's outbox and marks its delivery refused with the \
             reason (as a bounce). Once: a second refusal changes nothing; a mail acknowledged \
             as sent is a 409.",
        )
        .body(s.request::<c::MailRefused>())
        .answers(
            200,
            answer("Refused, off the outbox", s.answer::<c::RefusalRecorded>()),
        )
        .refusals(&[404, 409]),
        RelayDeferred => Op::new(
            "relayDeferred",
            "relays",
            "The signing relay's sender could not take a queued mail now (an SMTP 4xx): its \
             answer; the mail stays queued and is offered again after its backoff (1 minute, \
             doubling, at most an hour)",
        )
        .described(
            "Counts the attempt, keeps the answer and sets when the mail is offered again; GET \
             /v1/relay/outbox leaves it out until then, so it never holds up the mail behind \
             it. A settled mail is a 409, one not in the relay's outbox a 404.",
        )
        .body(s.request::<c::MailDeferred>())
        .answers(
            200,
            answer(
                "Deferred: still queued, not offered before next_attempt_at",
                s.answer::<c::DeferralRecorded>(),
            ),
        )
        .refusals(&[404, 409]),
    }
}

/// A `{name}` segment of a path: what it names and what it may be.
fn path_parameter(name: &str, s: &mut Schemas) -> Value {
    let (description, schema) = match name {
        "report" => ("A report's name", s.answer::<c::ReportName>()),
        "run_id" => ("A run's id", s.answer::<c::RunId>()),
        "request_id" => ("A reprocess request's id", string(1, 256)),
        "queue" => (
            "A queue's name: inbound, outbound, mail, ses_events, lifecycle, runs, scheduler",
            string(1, 64),
        ),
        "message_id" => ("The message's id", string(1, 128)),
        "key_id" => ("The key's id", s.answer::<c::KeyId>()),
        "relay_id" => ("The relay's id", s.answer::<c::RelayId>()),
        "token" => ("The link's signed token", string(1, 2048)),
        other => panic!("the path parameter {{{other}}} is not described: add it here"),
    };
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": description,
        "schema": schema,
    })
}

/// One operation: the route's own parts, and what its access adds (security, the refusals
/// every route of that access can give, its scope).
fn operation(def: &RouteDef, op: Op, s: &mut Schemas) -> Value {
    let mut o = Map::new();
    o.insert("operationId".into(), op.id.into());
    o.insert("summary".into(), op.summary.into());
    o.insert("tags".into(), json!([op.tag]));
    // Who may call it: the operation's security (a scope's is the document's bearer key) and
    // the sentence that says so.
    let who = match def.access {
        Access::Public => {
            o.insert("security".into(), json!([]));
            "No key: anyone may call it.".to_owned()
        }
        Access::Relay => {
            o.insert("security".into(), json!([{"relay": []}]));
            "Signed with a relay's key (the relay scheme; see docs/relay.md).".to_owned()
        }
        Access::Scope(scope) => {
            o.insert("x-charlie-scope".into(), scope.name().into());
            format!(
                "Scope: {} (an API key, a dashboard session or an IAM principal with it).",
                scope.name()
            )
        }
    };
    let description = match op.description {
        Some(d) => format!("{d}\n\n{who}"),
        None => who,
    };
    o.insert("description".into(), description.into());
    let mut parameters: Vec<Value> = def
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| path_parameter(name, s))
        .collect();
    parameters.extend(op.query);
    if !parameters.is_empty() {
        o.insert("parameters".into(), parameters.into());
    }
    if let Some(schema) = op.body {
        o.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": schema}}}),
        );
    }
    let mut answers = Map::new();
    for (status, a) in op.answers {
        answers.insert(status.to_string(), a);
    }
    let reference = |name: &str| json!({"$ref": format!("#/components/responses/{name}")});
    let mut refusal = |status: u16, name: &str| {
        answers
            .entry(status.to_string())
            .or_insert_with(|| reference(name));
    };
    // A body or query API Gateway passes on but no one can read is refused before any route.
    refusal(400, "BadRequest");
    match def.access {
        Access::Scope(_) => {
            refusal(401, "Unauthorized");
            refusal(403, "Forbidden");
            if def.method != "GET" {
                refusal(429, "TooManyCalls");
            }
        }
        Access::Relay => {
            refusal(401, "BadSignature");
            refusal(429, "Throttled");
        }
        Access::Public => {
            if def.route == Route::Link {
                refusal(429, "Throttled");
            }
        }
    }
    for status in op.refusals {
        match status {
            404 => refusal(404, "NotFound"),
            409 => refusal(409, "Conflict"),
            other => panic!("{other} is not a refusal this document describes"),
        }
    }
    if def.route != Route::OpenApi {
        refusal(503, "Unavailable");
    }
    o.insert("responses".into(), answers.into());
    o.into()
}

/// The refusals operations share.
fn responses(problem: &Value) -> Value {
    let error = |description: &str| answer(description, problem.clone());
    json!({
        "BadRequest": error("The request is not valid; field names the part at fault"),
        "Unauthorized": error("No key, or a malformed, unknown or revoked one (message says which)"),
        "Forbidden": error("The key lacks the route's scope (message names it)"),
        "BadSignature": error(
            "No relay signature, or a wrong, stale or replayed one, or an unknown or revoked \
             relay (message says which)"
        ),
        "NotFound": error("No such run, report, request, queue, message, key, relay or file"),
        "Conflict": error("Not possible in the thing's present state"),
        "Unavailable": error("A dependency failed; try again"),
        "TooManyCalls": {
            "description": "The key made its bound of state-changing calls this hour \
                (CHARLIE_KEY_CALLS_PER_HOUR; runs started or rerun per report and redrives \
                per queue: CHARLIE_KEY_SENDS_PER_REPORT_PER_HOUR); Retry-After says when to \
                try again",
            "headers": {"Retry-After": {
                "description": "Seconds until the hour's bound resets",
                "schema": {"type": "integer"},
            }},
            "content": {"application/json": {"schema": problem}},
        },
        "Throttled": {
            "description": "Throttled by API Gateway: this route has its own limit \
                (api_route_throttles), so a flood of it starves no other route; try again \
                shortly",
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"message": {"type": "string"}},
            }}},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is what the code builds: a route, a field or a description changed
    /// in the code and not written out fails here.
    #[test]
    fn the_committed_document_is_the_one_the_code_builds() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == text(),
            "docs/openapi.json is not the document the code builds: write it with \
             `cargo run -p charlie-local -- openapi` and commit it"
        );
    }

    /// Each route is one operation with an id of its own, and says who may call it the way
    /// the table does.
    #[test]
    fn every_route_is_an_operation_with_its_access() {
        let doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for def in ROUTES {
            let op = &doc["paths"][format!("/v1{}", def.path)][def.method.to_ascii_lowercase()];
            assert!(ids.insert(op["operationId"].as_str().unwrap()), "{op}");
            let security = &op["security"];
            match def.access {
                Access::Public => assert_eq!(security, &json!([]), "{}", def.path),
                Access::Relay => assert_eq!(security, &json!([{"relay": []}]), "{}", def.path),
                Access::Scope(scope) => {
                    assert!(security.is_null(), "{}", def.path);
                    assert_eq!(op["x-charlie-scope"], scope.name(), "{}", def.path);
                    assert!(op["responses"]["403"].is_object(), "{}", def.path);
                }
            }
        }
        let operations: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(operations, ROUTES.len());
    }

    /// Every `$ref` points at something the document has.
    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, doc: &Value, seen: &mut usize) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let pointer = r.strip_prefix('#').unwrap();
                        assert!(doc.pointer(pointer).is_some(), "{r} resolves to nothing");
                        *seen += 1;
                    }
                    m.values().for_each(|v| walk(v, doc, seen));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, doc, seen)),
                _ => {}
            }
        }
        let doc = document();
        let mut seen = 0;
        walk(&doc, &doc, &mut seen);
        assert!(seen > 100, "{seen}");
    }

    /// The answers are described by the types the API answers with: a run's status is one of
    /// `RunStatus`'s words, a request body refuses fields it does not know.
    #[test]
    fn schemas_come_from_the_contract_types() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let statuses = serde_json::to_string(&schemas["RunStatus"]).unwrap();
        for status in c::RunStatus::ALL {
            assert!(statuses.contains(&format!("\"{status}\"")), "{statuses}");
        }
        assert_eq!(schemas["StartRun"]["additionalProperties"], false);
        assert_eq!(
            schemas["StartRun"]["required"],
            json!(["report", "period"]),
            "{}",
            schemas["StartRun"]
        );
        assert_eq!(
            schemas["RunSummary"]["properties"]["status"]["$ref"],
            "#/components/schemas/RunStatus"
        );
    }
}
