use super::*;
use crate::adapters::memory::{MemoryObjects, MemoryQueue, MemoryQueueAdmin, MemoryState};
use crate::ports::Letter;
use crate::stages::testkit;
use crate::state::RelayRecord;
use serde_json::json;

struct World {
    records: Arc<MemoryState>,
    runs: Arc<MemoryQueue>,
    queues: Arc<MemoryQueueAdmin>,
    objects: Arc<MemoryObjects>,
    api: Arc<Api>,
    /// Keys by scope.
    read: String,
    operate: String,
    admin: String,
}

fn rec(w: &World) -> &dyn StateRecords {
    w.records.as_ref()
}

const LINK_KEY: &str = "link-key-for-tests-0123456789abcdef";
const RELAY_KEY: &str = "relay-key-for-tests-0123456789abcdef";

async fn world() -> World {
    let records: Arc<MemoryState> = Arc::default();
    let runs: Arc<MemoryQueue> = Arc::default();
    let objects: Arc<MemoryObjects> = Arc::default();
    let queues = Arc::new(MemoryQueueAdmin::with_queues(&[
        ("inbound", true),
        ("runs", true),
        ("scheduler", false),
    ]));
    let api = Api {
        definitions: testkit::definitions(),
        records: Arc::clone(&records) as _,
        claims: Arc::new(crate::adapters::memory::MemoryClaims::default()),
        objects: Arc::clone(&objects) as _,
        runs: Arc::clone(&runs) as _,
        inbound: Arc::new(MemoryQueue::default()),
        lifecycle: Arc::new(MemoryQueue::default()),
        queues: Arc::clone(&queues) as _,
        link_key: Some(Secret::new(LINK_KEY)),
        relay_key: Some(Secret::new(RELAY_KEY)),
        poll_stale: chrono::Duration::minutes(30),
        max_message_age: chrono::Duration::hours(1),
        relay_outbox_stale: chrono::Duration::hours(4),
        limits: Default::default(),
        iam_principals: vec![
            (
                "arn:aws:iam::123456789012:role/ops/charlie-operator".into(),
                keys::Scope::Operate,
            ),
            (
                "arn:aws:iam::123456789012:user/auditor".into(),
                keys::Scope::Read,
            ),
        ],
        edge: Default::default(),
    };
    let key = |name: &str, scope: Scope| {
        let records = Arc::clone(&records);
        let name = name.to_owned();
        async move {
            keys::create(records.as_ref(), &name, &[scope], "test")
                .await
                .unwrap()
                .1
                .expose()
                .to_owned()
        }
    };
    let read = key("viewer", Scope::Read).await;
    let operate = key("operator", Scope::Operate).await;
    let admin = key("admin", Scope::Admin).await;
    World {
        records,
        runs,
        queues,
        objects,
        api: Arc::new(api),
        read,
        operate,
        admin,
    }
}

/// (status, headers, body as JSON or text).
async fn call(
    w: &World,
    method: &str,
    path_and_query: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, HeaderMap, Value) {
    let mut headers = serde_json::Map::new();
    if let Some(k) = key {
        headers.insert("authorization".into(), format!("Bearer {k}").into());
    }
    let event = gateway_event(
        "ANY /v1/{proxy+}",
        method,
        path_and_query,
        headers,
        body.map(|b| b.to_string()),
    );
    send(w, event).await
}

/// An API Gateway (payload 2.0) event for `method path?query` with these headers and body.
fn gateway_event(
    route_key: &str,
    method: &str,
    path_and_query: &str,
    headers: serde_json::Map<String, Value>,
    body: Option<String>,
) -> Value {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut params = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(k.into(), v.into());
    }
    // API Gateway (payload 2.0) moves the `Cookie` header into `cookies`, one per entry.
    let mut headers = headers;
    let cookies: Vec<String> = headers
        .remove("cookie")
        .and_then(|c| c.as_str().map(str::to_owned))
        .map(|c| c.split(';').map(|c| c.trim().to_owned()).collect())
        .unwrap_or_default();
    json!({
        "version": "2.0", "routeKey": route_key, "rawPath": path, "rawQueryString": query,
        "headers": headers, "queryStringParameters": params, "cookies": cookies,
        "requestContext": {"http": {"method": method, "path": path}, "requestId": crate::invocation::new_correlation_id()},
        "body": body, "isBase64Encoded": false,
    })
}

/// The entry of `queue` in a list of queues.
fn queue(list: &Value, queue: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == queue)
        .unwrap_or_else(|| panic!("no {queue} in {list}"))
        .clone()
}

/// An API Gateway event through the API: (status, headers, body as JSON or text).
async fn send(w: &World, event: Value) -> (u16, HeaderMap, Value) {
    let req: ApiGatewayV2httpRequest = serde_json::from_value(event).unwrap();
    let resp = w.api.handle(req).await;
    let text = match resp.body {
        Some(Body::Text(t)) => t,
        _ => String::new(),
    };
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    // Payload 2.0 answers cookies apart from the headers; API Gateway sends each as a
    // `Set-Cookie` header.
    let mut headers = resp.headers;
    for c in &resp.cookies {
        headers.append("set-cookie", c.parse().unwrap());
    }
    (resp.status_code as u16, headers, body)
}

#[tokio::test]
async fn the_openapi_document_is_served_without_a_key_and_names_every_route() {
    let w = world().await;
    let (status, headers, doc) = call(&w, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/health",
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/cancel",
        "/v1/runs/{run_id}/rerun",
        "/v1/runs/{run_id}/download",
        "/v1/reports",
        "/v1/reports/{report}/versions",
        "/v1/dead-letters",
        "/v1/dead-letters/{queue}",
        "/v1/dead-letters/{queue}/redrive",
        "/v1/dead-letters/{queue}/{message_id}",
        "/v1/keys",
        "/v1/keys/{key_id}",
        "/v1/links/{token}",
        "/v1/metrics",
        "/v1/audit",
        "/v1/relays",
        "/v1/relays/{relay_id}",
        "/v1/relay/uploads",
        "/v1/relay/outbox/deferred",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
}

#[tokio::test]
async fn a_missing_wrong_or_revoked_key_is_401_and_a_weak_one_403_naming_the_scope() {
    let w = world().await;
    let (status, headers, body) = call(&w, "GET", "/v1/runs", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"charlie\"");
    assert!(body["message"].as_str().unwrap().contains("no API key"));
    let (status, _, body) = call(
        &w,
        "GET",
        "/v1/runs",
        Some("chk_0123456789abcdef_nope"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );

    let start = json!({"report": "call_centre_daily", "period": "2024-03-14"});
    let (status, _, body) = call(&w, "POST", "/v1/runs", Some(&w.read), Some(start.clone())).await;
    assert_eq!(status, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("needs a key with scope operate"),
        "{body}"
    );
    let (status, _, _) = call(&w, "GET", "/v1/keys", Some(&w.operate), None).await;
    assert_eq!(status, 403, "keys are admin's");
    assert!(w.runs.sent().is_empty(), "nothing queued by a refused call");

    // Revoked by an admin: refused from then on.
    let (_, _, keys) = call(&w, "GET", "/v1/keys", Some(&w.admin), None).await;
    let viewer = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, revoked) = call(
        &w,
        "DELETE",
        &format!("/v1/keys/{viewer}"),
        Some(&w.admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string());
    let (status, _, body) = call(&w, "GET", "/v1/runs", Some(&w.read), None).await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("revoked"));
}

#[tokio::test]
async fn a_run_is_queued_listed_shown_cancelled_and_rerun() {
    let w = world().await;
    let start = json!({"report": "call_centre_daily", "period": "2024-03-14"});
    let (status, headers, started) =
        call(&w, "POST", "/v1/runs", Some(&w.operate), Some(start)).await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    assert_eq!(headers["location"], format!("/v1/runs/{run_id}").as_str());
    let queued: Vec<ReportTrigger> = w.runs.bodies();
    assert!(
        matches!(&queued[..], [ReportTrigger::Run { run_id: Some(id), requested_by: Some(by), .. }] if id.as_str() == run_id && by == "operator"),
        "{queued:?}"
    );

    let (status, _, list) = call(
        &w,
        "GET",
        "/v1/runs?report=call_centre_daily",
        Some(&w.read),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["runs"][0]["run_id"], run_id.as_str());
    assert_eq!(list["runs"][0]["status"], "queued");
    let (_, _, none) = call(&w, "GET", "/v1/runs?status=built", Some(&w.read), None).await;
    assert_eq!(none["runs"], json!([]));

    let (status, _, shown) = call(
        &w,
        "GET",
        &format!("/v1/runs/{run_id}"),
        Some(&w.read),
        None,
    )
    .await;
    assert_eq!((status, shown["status"].as_str()), (200, Some("queued")));
    assert_eq!(shown["cancel_requested"], false);

    let (status, _, cancelled) = call(
        &w,
        "POST",
        &format!("/v1/runs/{run_id}/cancel"),
        Some(&w.operate),
        None,
    )
    .await;
    assert_eq!(status, 202, "{cancelled}");
    let cancel = rec(&w)
        .get_record(&RecordKey::run_cancel(&run_id))
        .await
        .unwrap();
    assert_eq!(cancel.map(|c| c.by), Some("operator".into()));

    // A finished run cannot be cancelled.
    let mut built: RunRecord = rec(&w)
        .get_record(&RecordKey::run(&run_id))
        .await
        .unwrap()
        .unwrap();
    built.status = RunStatus::Built;
    rec(&w)
        .put_record(&RecordKey::run(&run_id), &built, None)
        .await
        .unwrap();
    let (status, _, body) = call(
        &w,
        "POST",
        &format!("/v1/runs/{run_id}/cancel"),
        Some(&w.operate),
        None,
    )
    .await;
    assert_eq!(status, 409);
    assert!(body["message"].as_str().unwrap().contains("is built"));

    let (status, _, rerun) = call(
        &w,
        "POST",
        &format!("/v1/runs/{run_id}/rerun"),
        Some(&w.operate),
        None,
    )
    .await;
    assert_eq!(status, 202);
    assert_ne!(rerun["run_id"], run_id.as_str());
    assert_eq!(rerun["period"], "2024-03-14");

    // Every state-changing call is audited, refusals too.
    let (_, _, audit) = call(&w, "GET", "/v1/audit", Some(&w.admin), None).await;
    let lines: Vec<(String, u64)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|(p, s)| p.ends_with("/cancel") && *s == 409)
    );
    assert!(lines.iter().any(|(p, s)| p == "/v1/runs" && *s == 202));
}

#[tokio::test]
async fn bad_input_names_the_field_and_unknown_ids_are_404() {
    let w = world().await;
    for (body, field) in [
        (json!({"period": "2024-03-14"}), "report"),
        (
            json!({"report": "call_centre_daily", "period": "2024-13-45"}),
            "period",
        ),
        (json!({"report": "nope", "period": "2024-03-14"}), "report"),
        (
            json!({"report": "call_centre_daily", "period": "2024-03-14", "colour": "red"}),
            "colour",
        ),
    ] {
        let (status, _, resp) =
            call(&w, "POST", "/v1/runs", Some(&w.operate), Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(resp["field"], field, "{body}: {resp}");
    }
    let (status, _, resp) = call(&w, "GET", "/v1/runs?limit=0", Some(&w.read), None).await;
    assert_eq!((status, resp["field"].as_str()), (400, Some("limit")));
    let (status, _, resp) = call(&w, "GET", "/v1/runs?from=yesterday", Some(&w.read), None).await;
    assert_eq!((status, resp["field"].as_str()), (400, Some("from")));
    for path in [
        "/v1/runs/no-such-run",
        "/v1/reports/nope",
        "/v1/dead-letters/nope",
        "/v1/nothing-here",
    ] {
        let (status, _, _) = call(&w, "GET", path, Some(&w.read), None).await;
        assert_eq!(status, 404, "{path}");
    }
    assert!(w.runs.sent().is_empty());
}

fn letter(id: &str) -> Letter {
    Letter {
        message_id: id.into(),
        body: "{\"v\":1}".into(),
        sent_at: Some(Utc::now()),
        receive_count: 1,
        cause: Some("not an inbound message".into()),
        failed_stage: Some("ingest".into()),
        source_message_id: Some("src-1".into()),
        correlation_id: Some("c-1".into()),
    }
}

#[tokio::test]
async fn dead_letters_are_peeked_redriven_and_deleted() {
    let w = world().await;
    for id in ["d-1", "d-2", "d-3"] {
        w.queues.add_letter("inbound", letter(id));
    }
    let (_, _, all) = call(&w, "GET", "/v1/dead-letters", Some(&w.read), None).await;
    let inbound = queue(&all["dead_letter_queues"], "inbound");
    assert_eq!(inbound["messages"], 3);
    let (status, _, peeked) = call(
        &w,
        "GET",
        "/v1/dead-letters/inbound?max=2",
        Some(&w.read),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(peeked["messages"].as_array().unwrap().len(), 2);
    assert_eq!(peeked["messages"][0]["cause"], "not an inbound message");

    let (status, _, moved) = call(
        &w,
        "POST",
        "/v1/dead-letters/inbound/redrive",
        Some(&w.operate),
        Some(json!({"message_ids": ["d-1", "gone"]})),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["moved"], json!(["d-1"]));
    assert_eq!(moved["not_found"], json!(["gone"]));
    assert_eq!(
        w.queues.redriven(),
        vec![("inbound".to_owned(), "d-1".to_owned())]
    );

    let (status, _, _) = call(
        &w,
        "DELETE",
        "/v1/dead-letters/inbound/d-2",
        Some(&w.operate),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, _) = call(
        &w,
        "DELETE",
        "/v1/dead-letters/inbound/d-2",
        Some(&w.operate),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, body) = call(
        &w,
        "POST",
        "/v1/dead-letters/inbound/redrive",
        Some(&w.operate),
        Some(json!({})),
    )
    .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("message_ids")));

    w.queues.add_letter("scheduler", letter("s-1"));
    let (status, _, body) = call(
        &w,
        "POST",
        "/v1/dead-letters/scheduler/redrive",
        Some(&w.operate),
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn a_mail_link_redirects_while_valid_and_a_forged_or_expired_one_gets_a_page_saying_so() {
    let w = world().await;
    let stored = w
        .objects
        .put(
            "reports/r/2024-03-14/r-2024-03-14.xlsx",
            b"xlsx".to_vec(),
            "x",
        )
        .await
        .unwrap();
    let run = RunRecord {
        status: RunStatus::Built,
        workbook_key: Some(stored.key.clone()),
        workbook_version: stored.version_id.clone(),
        ..serde_json::from_value(json!({
            "run_id": "r-1", "report": "call_centre_daily", "period": "2024-03-14", "status": "built",
            "rows": 1, "started_at": "", "finished_at": ""
        }))
        .unwrap()
    };
    rec(&w)
        .put_record(&RecordKey::run("r-1"), &run, None)
        .await
        .unwrap();
    let claims = |expires: i64| crate::links::LinkClaims {
        run_id: "r-1".into(),
        workbook_key: stored.key.clone(),
        workbook_version: stored.version_id.clone(),
        expires,
    };
    let key = Secret::new(LINK_KEY);
    let valid = crate::links::sign(&key, &claims(Utc::now().timestamp() + 3600));
    let (status, headers, _) = call(&w, "GET", &format!("/v1/links/{valid}"), None, None).await;
    assert_eq!(status, 302);
    let location = headers["location"].to_str().unwrap();
    assert!(
        location.contains(&stored.key) && location.contains("X-Amz-Expires=300"),
        "{location}"
    );

    let expired = crate::links::sign(&key, &claims(Utc::now().timestamp() - 1));
    let forged = crate::links::sign(
        &Secret::new("another key"),
        &claims(Utc::now().timestamp() + 3600),
    );
    for (token, says) in [
        (expired, "expired"),
        (forged, "signature"),
        ("x.y".to_owned(), "not a Charlie"),
    ] {
        let (status, headers, page) =
            call(&w, "GET", &format!("/v1/links/{token}"), None, None).await;
        assert_eq!(status, 403);
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert!(page.as_str().unwrap().contains(says), "{page}");
    }
}

#[tokio::test]
async fn health_is_503_with_the_reason_when_a_subscription_expired() {
    let w = world().await;
    let (status, _, body) = call(&w, "GET", "/v1/health", Some(&w.read), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");

    let sub = state::SubscriptionRecord {
        id: "s-1".into(),
        expires_at: Utc::now() - chrono::Duration::minutes(1),
        created_at: Utc::now() - chrono::Duration::days(3),
        renewed_at: None,
    };
    let index = state::folder_index_sk("SUB", "mb", "inbox");
    rec(&w)
        .put_record(
            &RecordKey::subscription("mb", "inbox"),
            &sub,
            Some((FOLDERS_INDEX, &index)),
        )
        .await
        .unwrap();
    let (status, _, body) = call(&w, "GET", "/v1/health", Some(&w.read), None).await;
    assert_eq!(status, 503);
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .contains("subscription expired"),
        "{body}"
    );
}

#[tokio::test]
async fn counters_are_summed_since_the_time_or_span_asked_for_and_a_bad_since_is_400() {
    let w = world().await;
    let now = Utc::now();
    let mut mail = crate::counters::Counts::default();
    mail.add(
        crate::counters::Kind::MailsProcessed,
        "ops@contoso.example",
        1,
    );
    mail.add(crate::counters::Kind::RowsNew, "ib_calls", 40);
    let hours_ago = |h| now - chrono::Duration::hours(h);
    crate::counters::count(w.records.as_ref(), "mail/a", hours_ago(30), &mail)
        .await
        .unwrap();
    crate::counters::count(w.records.as_ref(), "mail/b", hours_ago(2), &mail)
        .await
        .unwrap();
    crate::counters::count(w.records.as_ref(), "mail/b", now, &mail)
        .await
        .unwrap();
    let (status, _, m) = call(&w, "GET", "/v1/metrics", Some(&w.read), None).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        m["counters"]["totals"]["mails_processed"], 1,
        "a day back by default: {m}"
    );
    assert_eq!(m["counters"]["by"]["ib_calls"]["rows_new"], 40, "{m}");
    let (_, _, m) = call(&w, "GET", "/v1/metrics?since=2d", Some(&w.read), None).await;
    assert_eq!(m["counters"]["totals"]["rows_new"], 80, "{m}");
    let (_, _, i) = call(&w, "GET", "/v1/intake?since=3h", Some(&w.read), None).await;
    assert_eq!(i["counters"]["totals"]["mails_processed"], 1, "{i}");
    for bad in ["yesterday", "0h", "40d", "2999-01-01T00:00:00Z"] {
        let (status, _, body) = call(
            &w,
            "GET",
            &format!("/v1/metrics?since={bad}"),
            Some(&w.read),
            None,
        )
        .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some("since")),
            "{bad}: {body}"
        );
    }
}

#[tokio::test]
async fn a_queue_whose_oldest_message_waits_too_long_makes_health_503_naming_it() {
    let w = world().await;
    w.queues.set_oldest_age("inbound", 42);
    let (_, _, body) = call(&w, "GET", "/v1/health", Some(&w.read), None).await;
    let inbound = queue(&body["queues"], "inbound");
    assert_eq!(inbound["oldest_message_age_seconds"], 42, "{body}");
    assert!(
        !body["problems"].to_string().contains("inbound"),
        "42 s is fine: {body}"
    );
    w.queues.set_oldest_age("runs", 2 * 3600 + 5);
    let (status, _, body) = call(&w, "GET", "/v1/health", Some(&w.read), None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["problems"]
            .to_string()
            .contains("queue runs: its oldest message has waited 2h 5s (more than 1h"),
        "{body}"
    );
}

/// A request on the `/iam/v1` route as API Gateway passes it on once it checked the SigV4
/// signature: the principal in `requestContext.authorizer.iam`.
async fn call_iam(w: &World, method: &str, path: &str, principal: Option<&str>) -> (u16, Value) {
    let mut context = json!({"http": {"method": method, "path": path}, "requestId": "r-iam"});
    if let Some(arn) = principal {
        context["authorizer"] =
            json!({"iam": {"accountId": "123456789012", "userArn": arn, "accessKey": "ASIA…"}});
    }
    let event = json!({
        "version": "2.0", "routeKey": "ANY /iam/v1/{proxy+}", "rawPath": path, "rawQueryString": "",
        "headers": {}, "requestContext": context, "isBase64Encoded": false,
    });
    let (status, _, body) = send(w, event).await;
    (status, body)
}

#[tokio::test]
async fn iam_callers_get_the_scope_configured_for_their_role_or_user_and_others_are_refused() {
    let w = world().await;
    let session = "arn:aws:sts::123456789012:assumed-role/charlie-operator/deploy-42";
    let (status, body) = call_iam(&w, "GET", "/iam/v1/runs", Some(session)).await;
    assert_eq!(status, 200, "a role's session is the role: {body}");
    let (status, body) = call_iam(&w, "POST", "/iam/v1/intake/pause", Some(session)).await;
    assert_eq!(status, 200, "operate: {body}");
    let audit = w.records.count("AUDIT#");
    assert!(audit > 0, "its call is audited under its ARN");
    let (status, body) = call_iam(&w, "GET", "/iam/v1/keys", Some(session)).await;
    assert_eq!(status, 403, "keys are admin's: {body}");
    let auditor = "arn:aws:iam::123456789012:user/auditor";
    let (status, _) = call_iam(&w, "GET", "/iam/v1/metrics", Some(auditor)).await;
    assert_eq!(status, 200);
    let (status, body) = call_iam(&w, "POST", "/iam/v1/intake/resume", Some(auditor)).await;
    assert_eq!(status, 403, "read only: {body}");
    let other = "arn:aws:sts::999999999999:assumed-role/charlie-operator/x";
    let (status, body) = call_iam(&w, "GET", "/iam/v1/runs", Some(other)).await;
    assert_eq!(
        status, 403,
        "another account's role of the same name: {body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("api_iam_principals"),
        "{body}"
    );
    let (status, body) = call_iam(&w, "GET", "/iam/v1/runs", None).await;
    assert_eq!(status, 401, "{body}");
    // The key route ignores an IAM context it could not have come with.
    let (status, _, _) = call(&w, "GET", "/v1/runs", None, None).await;
    assert_eq!(status, 401);
}

#[test]
fn iam_principals_are_read_strictly() {
    let ok = iam_principals(Some(
        r#"[{"arn":"arn:aws:iam::1:role/ops","scope":"operate"}]"#,
    ))
    .unwrap();
    assert_eq!(
        ok,
        vec![("arn:aws:iam::1:role/ops".to_owned(), keys::Scope::Operate)]
    );
    assert!(iam_principals(None).unwrap().is_empty());
    for bad in [
        r#"[{"arn":"arn:aws:iam::1:role/ops","scope":"root"}]"#,
        r#"[{"arn":"ops","scope":"read"}]"#,
        "{}",
    ] {
        assert!(iam_principals(Some(bad)).is_err(), "{bad}");
    }
}

// ---- the dashboard ----------------------------------------------------------------------

/// A browser's request to the dashboard: (status, headers, HTML).
async fn ui(
    w: &World,
    method: &str,
    path_and_query: &str,
    cookie: Option<&str>,
    form: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, HeaderMap, String) {
    let mut headers = serde_json::Map::new();
    if let Some(c) = cookie {
        headers.insert("cookie".into(), c.into());
    }
    if form.is_some() {
        headers.insert(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        );
    }
    for (k, v) in extra {
        headers.insert((*k).into(), (*v).into());
    }
    let event = gateway_event(
        "ANY /ui/{proxy+}",
        method,
        path_and_query,
        headers,
        form.map(str::to_owned),
    );
    let (status, headers, body) = send(w, event).await;
    (
        status,
        headers,
        body.as_str().unwrap_or_default().to_owned(),
    )
}

/// Signs in with `key`: the session cookie (`name=value`).
async fn sign_in(w: &World, key: &str) -> String {
    let (status, headers, _) = ui(
        w,
        "POST",
        "/ui/login",
        None,
        Some(&format!("key={key}")),
        &[],
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/ui");
    let set = headers["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attribute), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

/// The CSRF token a page's forms carry.
fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"_csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 20;
    html[at..at + 64].to_owned()
}

#[tokio::test]
async fn the_dashboard_signs_in_with_a_key_and_refuses_everything_before() {
    let w = world().await;
    let (status, headers, _) = ui(&w, "GET", "/ui", None, None, &[]).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/ui/login");
    let (status, headers, login) = ui(&w, "GET", "/ui/login", None, None, &[]).await;
    assert_eq!(status, 200);
    assert!(login.contains("name=\"key\""));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let (status, _, page) = ui(
        &w,
        "POST",
        "/ui/login",
        None,
        Some("key=chk_0123456789abcdef_wrong"),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    assert!(page.contains("not known"), "{page}");

    let cookie = sign_in(&w, &w.operate).await;
    let (status, _, overview) = ui(&w, "GET", "/ui", Some(&cookie), None, &[]).await;
    assert_eq!(status, 200, "{overview}");
    for part in [
        "Overview",
        "Mail folders",
        "Queues",
        "Today's intake",
        "Rows stored per day",
        "Recent runs",
        "operator",
    ] {
        assert!(overview.contains(part), "no {part} in the overview");
    }
    // The session's secret never appears in a page; only its hash is stored.
    let token = cookie.split_once('=').unwrap().1;
    assert!(!overview.contains(token));
    assert_eq!(w.records.count(&format!("SESSION#{token}")), 0);
    for page in [
        "/ui/runs",
        "/ui/intake",
        "/ui/dead-letters",
        "/ui/reports",
        "/ui/static/app.css",
    ] {
        let (status, _, body) = ui(&w, "GET", page, Some(&cookie), None, &[]).await;
        assert_eq!(status, 200, "{page}: {body}");
    }
}

#[tokio::test]
async fn a_dashboard_form_needs_its_session_s_csrf_token_and_a_same_site_request() {
    let w = world().await;
    let cookie = sign_in(&w, &w.operate).await;
    let (_, _, runs) = ui(&w, "GET", "/ui/runs", Some(&cookie), None, &[]).await;
    let csrf = csrf_of(&runs);
    let (status, _, page) = ui(
        &w,
        "POST",
        "/ui/runs",
        Some(&cookie),
        Some("report=call_centre_daily&period=2024-03-14"),
        &[],
    )
    .await;
    assert_eq!(status, 403, "no token");
    assert!(page.contains("CSRF"), "{page}");
    let forged = format!(
        "report=call_centre_daily&period=2024-03-14&_csrf={}",
        "0".repeat(64)
    );
    let (status, _, _) = ui(&w, "POST", "/ui/runs", Some(&cookie), Some(&forged), &[]).await;
    assert_eq!(status, 403, "another token");
    let good = format!("report=call_centre_daily&period=2024-03-14&_csrf={csrf}");
    let (status, _, _) = ui(
        &w,
        "POST",
        "/ui/runs",
        Some(&cookie),
        Some(&good),
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(status, 403, "cross-site");
    assert!(w.runs.sent().is_empty(), "nothing refused was queued");

    let (status, headers, _) = ui(
        &w,
        "POST",
        "/ui/runs",
        Some(&cookie),
        Some(&good),
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(status, 303);
    let to = headers["location"].to_str().unwrap().to_owned();
    assert!(
        to.starts_with("/ui/runs/call_centre_daily.2024-03-14."),
        "{to}"
    );
    assert_eq!(w.runs.sent().len(), 1);
    let (status, _, run) = ui(&w, "GET", &to, Some(&cookie), None, &[]).await;
    assert_eq!(status, 200);
    assert!(
        run.contains("queued") && run.contains("http-equiv=\"refresh\""),
        "{run}"
    );
    // The start is in the audit trail under the key that signed in.
    let (_, _, audit) = call(&w, "GET", "/v1/audit", Some(&w.admin), None).await;
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/ui/runs" && e["status"] == 202)
        .unwrap_or_else(|| panic!("the start is audited: {audit}"));
    assert_eq!(entry["key_name"], "operator");
    // And the refused posts before it, under who was refused.
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == 403 && e["path"] == "/ui/runs"),
        "{audit}"
    );
}

#[tokio::test]
async fn a_read_key_sees_no_forms_and_a_revoked_key_ends_its_sessions() {
    let w = world().await;
    let cookie = sign_in(&w, &w.read).await;
    let (_, _, runs) = ui(&w, "GET", "/ui/runs", Some(&cookie), None, &[]).await;
    assert!(!runs.contains("Start run"), "a read key cannot start runs");
    let (_, _, overview) = ui(&w, "GET", "/ui", Some(&cookie), None, &[]).await;
    let csrf = csrf_of(&overview); // the sign-out form
    let form = format!("report=call_centre_daily&_csrf={csrf}");
    let (status, _, page) = ui(&w, "POST", "/ui/runs", Some(&cookie), Some(&form), &[]).await;
    assert_eq!(status, 403);
    assert!(page.contains("scope operate"), "{page}");

    let id = w.read.split('_').nth(1).unwrap().to_owned();
    let (status, _, _) = call(
        &w,
        "DELETE",
        &format!("/v1/keys/{id}"),
        Some(&w.admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, headers, _) = ui(&w, "GET", "/ui", Some(&cookie), None, &[]).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/ui/login");
}

#[tokio::test]
async fn signing_out_ends_the_session() {
    let w = world().await;
    let cookie = sign_in(&w, &w.operate).await;
    let (_, _, overview) = ui(&w, "GET", "/ui", Some(&cookie), None, &[]).await;
    let csrf = csrf_of(&overview);
    let (status, headers, _) = ui(
        &w,
        "POST",
        "/ui/logout",
        Some(&cookie),
        Some(&format!("_csrf={csrf}")),
        &[],
    )
    .await;
    assert_eq!(status, 303);
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _, _) = ui(&w, "GET", "/ui", Some(&cookie), None, &[]).await;
    assert_eq!(status, 303, "the old cookie opens nothing");
}

/// A call signed as the relay with this key (`relay_auth::sign`), at `at` (Unix seconds).
async fn relay_signed(
    w: &World,
    key: &str,
    path: &str,
    body: &Value,
    at: i64,
    nonce: &str,
) -> (u16, Value) {
    relay_signed_as(w, key, "POST", path, Some(body), at, nonce).await
}

async fn relay_signed_as(
    w: &World,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    at: i64,
    nonce: &str,
) -> (u16, Value) {
    let (relay, secret) = crate::relay_auth::parse_key(key).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (name, value) in
        crate::relay_auth::sign(&relay, &secret, method, path, body.as_bytes(), at, nonce)
    {
        headers.insert(name.into(), value.into());
    }
    let body = (!body.is_empty()).then_some(body);
    let event = gateway_event("ANY /v1/{proxy+}", method, path, headers, body);
    let (status, _, body) = send(w, event).await;
    (status, body)
}

#[tokio::test]
async fn an_admin_creates_lists_and_revokes_relays_and_the_key_is_shown_once() {
    let w = world().await;
    let body = json!({"id": "branch-7", "mailbox": "ops@contoso.example"});
    let (status, _, created) = call(
        &w,
        "POST",
        "/v1/relays",
        Some(&w.operate),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 403, "relays are for admins: {created}");
    let (status, _, created) =
        call(&w, "POST", "/v1/relays", Some(&w.admin), Some(body.clone())).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("chr_branch-7_"));
    let stored: RelayRecord = rec(&w)
        .get_record(&RecordKey::relay("branch-7"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !serde_json::to_string(&stored)
            .unwrap()
            // The whole secret (base64url: it may hold `_` itself).
            .contains(&key["chr_branch-7_".len()..])
    );
    assert_eq!(stored.mailbox.as_deref(), Some("ops@contoso.example"));
    let (status, _, again) =
        call(&w, "POST", "/v1/relays", Some(&w.admin), Some(body.clone())).await;
    assert_eq!(status, 409, "{again}");
    let (_, _, list) = call(&w, "GET", "/v1/relays", Some(&w.admin), None).await;
    assert_eq!(list["relays"][0]["id"], "branch-7");
    assert!(list["relays"][0].get("key").is_none() && !list.to_string().contains("salt"));
    let (status, _, revoked) =
        call(&w, "DELETE", "/v1/relays/branch-7", Some(&w.admin), None).await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string());
    // Revoked, it is not made again while upload URLs issued to the old key may still work.
    let (status, _, early) =
        call(&w, "POST", "/v1/relays", Some(&w.admin), Some(body.clone())).await;
    assert_eq!(status, 409, "{early}");
    assert!(
        early["message"]
            .as_str()
            .unwrap()
            .contains("can be made again from"),
        "{early}"
    );
    // Fifteen minutes later it can: a new salt, so a new key, and the old one is dead; the
    // revoked stretch is remembered.
    let mut record: RelayRecord = rec(&w)
        .get_record(&RecordKey::relay("branch-7"))
        .await
        .unwrap()
        .unwrap();
    let revoked_at = (Utc::now() - chrono::Duration::minutes(16))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    record.revoked_at = Some(revoked_at.clone());
    rec(&w)
        .put_record(&RecordKey::relay("branch-7"), &record, None)
        .await
        .unwrap();
    let (status, _, renewed) = call(&w, "POST", "/v1/relays", Some(&w.admin), Some(body)).await;
    assert_eq!(status, 201);
    let record: RelayRecord = rec(&w)
        .get_record(&RecordKey::relay("branch-7"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.revoked_windows.len(), 1);
    assert_eq!(record.revoked_windows[0].0, revoked_at);
    assert_ne!(renewed["key"], created["key"]);
    let upload = json!({"sha256": "ab".repeat(32), "size": 10});
    let now = Utc::now().timestamp();
    let (status, refused) =
        relay_signed(&w, &key, "/v1/relay/uploads", &upload, now, &"n".repeat(16)).await;
    assert_eq!(status, 401, "the old key: {refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("signature"),
        "{refused}"
    );
    // Bad input names the field.
    for (body, field) in [
        (json!({"id": "Branch 7"}), "id"),
        (json!({"id": "b", "mailbox": ""}), "mailbox"),
        (json!({"id": "b", "colour": "red"}), "colour"),
        (
            json!({"id": "b", "trusted_authserv_ids": ["mx branch;example"]}),
            "trusted_authserv_ids",
        ),
    ] {
        let (status, _, err) = call(&w, "POST", "/v1/relays", Some(&w.admin), Some(body)).await;
        assert_eq!((status, err["field"].as_str()), (400, Some(field)), "{err}");
    }
    let (status, _, _) = call(&w, "DELETE", "/v1/relays/nobody", Some(&w.admin), None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_relay_gets_a_presigned_upload_once_per_nonce_and_none_for_a_file_already_there() {
    let w = world().await;
    let key = new_relay_key(&w, "branch-1").await;
    let mail = b"From: a@b.example\r\n\r\nhello".to_vec();
    let sha = crate::raw_mail::content_id(&mail);
    let upload = json!({"sha256": sha, "size": mail.len()});
    let now = Utc::now().timestamp();
    let nonce = crate::relay_auth::new_nonce();
    let (status, answer) = relay_signed(&w, &key, "/v1/relay/uploads", &upload, now, &nonce).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["exists"], false);
    assert_eq!(answer["key"], format!("inbox/relay/branch-1/{sha}.eml"));
    assert_eq!(answer["method"], "PUT");
    assert_eq!(answer["headers"]["content-type"], "message/rfc822");
    assert_eq!(answer["headers"]["content-length"], mail.len().to_string());
    let checksum = answer["headers"]["x-amz-checksum-sha256"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(checksum)
            .unwrap(),
        hex::decode(&sha).unwrap()
    );
    assert!(
        answer["url"]
            .as_str()
            .unwrap()
            .contains(&format!("inbox/relay/branch-1/{sha}.eml"))
    );
    // The same request again is a replay.
    let (status, replay) = relay_signed(&w, &key, "/v1/relay/uploads", &upload, now, &nonce).await;
    assert_eq!(status, 401);
    assert!(
        replay["message"].as_str().unwrap().contains("replayed"),
        "{replay}"
    );
    // A skewed clock is refused, saying so.
    let (status, skewed) = relay_signed(
        &w,
        &key,
        "/v1/relay/uploads",
        &upload,
        now - 3600,
        &crate::relay_auth::new_nonce(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        skewed["message"].as_str().unwrap().contains("clock"),
        "{skewed}"
    );
    // Once the file is there, the relay is told so and gets no URL.
    w.objects
        .put(
            &crate::object_keys::relay_inbox("branch-1", &sha),
            mail.clone(),
            "message/rfc822",
        )
        .await
        .unwrap();
    let (status, there) = relay_signed(
        &w,
        &key,
        "/v1/relay/uploads",
        &upload,
        now,
        &crate::relay_auth::new_nonce(),
    )
    .await;
    assert_eq!((status, &there["exists"]), (200, &json!(true)), "{there}");
    assert!(there.get("url").is_none());
    // The relay was seen, and its calls are on the audit trail as its own.
    let seen: RelayRecord = rec(&w)
        .get_record(&RecordKey::relay("branch-1"))
        .await
        .unwrap()
        .unwrap();
    assert!(seen.last_seen_at.is_some());
    let (_, _, audit) = call(&w, "GET", "/v1/audit", Some(&w.admin), None).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key_id"] == "relay/branch-1" && e["status"] == 200),
        "{audit}"
    );
    // Bad bodies name the field; an unsigned call is told how to sign.
    for (body, field) in [
        (json!({"sha256": "xyz", "size": 1}), "sha256"),
        (json!({"sha256": sha, "size": 0}), "size"),
        (json!({"sha256": sha, "size": 65 * 1024 * 1024}), "size"),
    ] {
        let (status, err) = relay_signed(
            &w,
            &key,
            "/v1/relay/uploads",
            &body,
            now,
            &crate::relay_auth::new_nonce(),
        )
        .await;
        assert_eq!((status, err["field"].as_str()), (400, Some(field)), "{err}");
    }
    let (status, _, unsigned) = call(
        &w,
        "POST",
        "/v1/relay/uploads",
        Some(&w.admin),
        Some(upload.clone()),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        unsigned["message"]
            .as_str()
            .unwrap()
            .contains("x-charlie-relay"),
        "{unsigned}"
    );
    // Revoked, the relay is refused by name.
    call(&w, "DELETE", "/v1/relays/branch-1", Some(&w.admin), None).await;
    let (status, revoked) = relay_signed(
        &w,
        &key,
        "/v1/relay/uploads",
        &upload,
        now,
        &crate::relay_auth::new_nonce(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        revoked["message"].as_str().unwrap().contains("revoked"),
        "{revoked}"
    );
    // Without the relay's key, a revoked relay, an unknown one and a wrong key get one answer:
    // relay ids cannot be enumerated.
    let forged = |relay: &str| format!("chr_{relay}_{}", "A".repeat(43));
    let mut answers = Vec::new();
    for relay in ["branch-1", "no-such-relay"] {
        let (status, refused) = relay_signed(
            &w,
            &forged(relay),
            "/v1/relay/uploads",
            &upload,
            now,
            &crate::relay_auth::new_nonce(),
        )
        .await;
        assert_eq!(status, 401);
        answers.push(refused);
    }
    assert_eq!(answers[0], answers[1]);
    let message = answers[0]["message"].as_str().unwrap();
    assert!(message.contains("signature"), "{message}");
    assert!(
        !message.contains("revoked") && !message.contains("known"),
        "{message}"
    );
}

/// A new relay `id`, made by the admin: its key.
async fn new_relay_key(w: &World, id: &str) -> String {
    let (status, _, created) = call(
        w,
        "POST",
        "/v1/relays",
        Some(&w.admin),
        Some(json!({"id": id})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().unwrap().to_owned()
}

/// Queues a mail of `run` (recipient group `group`) for `relay`, queued `hours_ago`.
async fn queued_for_relay(w: &World, relay: &str, run: &str, group: u32, hours_ago: i64) {
    let record = crate::relay_outbox::OutboxRecord {
        message_id: format!("<{run}.{group}@branch.example>"),
        delivery: format!("DLV#{run}#{group}"),
        run_id: run.into(),
        from: "reports@branch.example".into(),
        recipients: vec!["leads@branch.example".into()],
        key: String::new(),
        size: 0,
        queued_at: (Utc::now() - chrono::Duration::hours(hours_ago))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ..Default::default()
    };
    crate::relay_outbox::queue(w.objects.as_ref(), rec(w), relay, record, b"MIME".to_vec())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_relay_sees_only_its_own_outbox_and_acknowledges_a_mail_once() {
    let w = world().await;
    let keys = [
        new_relay_key(&w, "branch-1").await,
        new_relay_key(&w, "branch-2").await,
    ];
    queued_for_relay(&w, "branch-1", "run-1", 0, 0).await;
    let now = Utc::now().timestamp();
    let nonce = crate::relay_auth::new_nonce;
    let (status, outbox) =
        relay_signed_as(&w, &keys[0], "GET", "/v1/relay/outbox", None, now, &nonce()).await;
    assert_eq!(status, 200, "{outbox}");
    let mails = outbox["mails"].as_array().unwrap();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["recipients"], json!(["leads@branch.example"]));
    assert!(
        mails[0]["url"]
            .as_str()
            .unwrap()
            .contains("outbox/relay/branch-1/")
    );
    let (_, other) =
        relay_signed_as(&w, &keys[1], "GET", "/v1/relay/outbox", None, now, &nonce()).await;
    assert_eq!(
        other["mails"],
        json!([]),
        "another relay's outbox is its own"
    );
    let ack =
        json!({"message_id": "<run-1.0@branch.example>", "smtp_reply": "250 2.0.0 queued as 4F2"});
    let (status, _) = relay_signed(&w, &keys[1], "/v1/relay/outbox/ack", &ack, now, &nonce()).await;
    assert_eq!(status, 404, "not another relay's to acknowledge");
    let (status, acked) =
        relay_signed(&w, &keys[0], "/v1/relay/outbox/ack", &ack, now, &nonce()).await;
    assert_eq!(status, 200, "{acked}");
    assert!(acked["sent_at"].is_string());
    let (_, outbox) =
        relay_signed_as(&w, &keys[0], "GET", "/v1/relay/outbox", None, now, &nonce()).await;
    assert_eq!(outbox["mails"], json!([]));
    let status: DeliveryNews = rec(&w)
        .get_record(&RecordKey::delivery_status("DLV#run-1#0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.status, crate::contract::DeliveryStatus::Relayed);
    let (status, err) = relay_signed(
        &w,
        &keys[0],
        "/v1/relay/outbox/ack",
        &json!({"message_id": "", "smtp_reply": ""}),
        now,
        &nonce(),
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("message_id")),
        "{err}"
    );
}

#[tokio::test]
async fn a_relay_reports_a_mail_its_sender_refused_once_and_its_delivery_shows_it() {
    let w = world().await;
    let key = new_relay_key(&w, "branch-1").await;
    for group in [0, 1] {
        queued_for_relay(&w, "branch-1", "run-1", group, 0).await;
    }
    let now = Utc::now().timestamp();
    let nonce = crate::relay_auth::new_nonce;
    let refused = json!({"message_id": "<run-1.0@branch.example>", "reason": "550 5.1.1 <leads@branch.example>: Recipient address rejected\n"});
    let path = "/v1/relay/outbox/refused";
    let (status, said) = relay_signed(&w, &key, path, &refused, now, &nonce()).await;
    assert_eq!(status, 200, "{said}");
    assert_eq!(
        said["refusal"], "550 5.1.1 <leads@branch.example>: Recipient address rejected",
        "control characters dropped"
    );
    let status: DeliveryNews = rec(&w)
        .get_record(&RecordKey::delivery_status("DLV#run-1#0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.status, crate::contract::DeliveryStatus::Refused);
    assert_eq!(status.detail["relay"], "branch-1");
    // Off the outbox; said again, nothing changes and it is counted once.
    let (_, outbox) =
        relay_signed_as(&w, &key, "GET", "/v1/relay/outbox", None, now, &nonce()).await;
    let left: Vec<&str> = outbox["mails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["<run-1.1@branch.example>"]);
    let again = json!({"message_id": "<run-1.0@branch.example>", "reason": "other"});
    let (status, said) = relay_signed(&w, &key, path, &again, now, &nonce()).await;
    assert_eq!(
        (status, said["refusal"].as_str()),
        (
            200,
            Some("550 5.1.1 <leads@branch.example>: Recipient address rejected")
        )
    );
    let (counts, _) =
        crate::counters::since(rec(&w), Utc::now() - chrono::Duration::hours(1), Utc::now())
            .await
            .unwrap();
    assert_eq!(
        counts
            .totals()
            .get(&crate::counters::Kind::RelayRefused.word()),
        Some(&1),
        "{counts:?}"
    );
    // Refused, it cannot be acknowledged; acknowledged, it cannot be refused.
    let ack = json!({"message_id": "<run-1.0@branch.example>", "smtp_reply": "250 ok"});
    let (status, said) = relay_signed(&w, &key, "/v1/relay/outbox/ack", &ack, now, &nonce()).await;
    assert_eq!(status, 409, "{said}");
    assert!(
        said["message"].as_str().unwrap().contains("was refused"),
        "{said}"
    );
    let ack = json!({"message_id": "<run-1.1@branch.example>", "smtp_reply": "250 ok"});
    let (status, _) = relay_signed(&w, &key, "/v1/relay/outbox/ack", &ack, now, &nonce()).await;
    assert_eq!(status, 200);
    let late = json!({"message_id": "<run-1.1@branch.example>", "reason": "550"});
    let (status, said) = relay_signed(&w, &key, path, &late, now, &nonce()).await;
    assert_eq!(status, 409, "{said}");
    // A reason is required, and named when missing; an unknown mail is a 404.
    let (status, err) = relay_signed(
        &w,
        &key,
        path,
        &json!({"message_id": "<run-1.1@branch.example>", "reason": " "}),
        now,
        &nonce(),
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("reason")),
        "{err}"
    );
    let (status, _) = relay_signed(
        &w,
        &key,
        path,
        &json!({"message_id": "<nope@x>", "reason": "550"}),
        now,
        &nonce(),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn report_mail_waiting_too_long_for_its_relay_makes_the_deployment_unhealthy() {
    let w = world().await;
    for id in ["branch-1", "branch-2"] {
        call(
            &w,
            "POST",
            "/v1/relays",
            Some(&w.admin),
            Some(json!({"id": id})),
        )
        .await;
    }
    // An hour: within the 4 hours allowed.
    queued_for_relay(&w, "branch-1", "run-a", 0, 1).await;
    let (status, _, body) = call(&w, "GET", "/v1/health", Some(&w.read), None).await;
    assert_eq!(status, 200, "{body}");
    let relays = body["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 2);
    assert_eq!(
        (
            relays[0]["id"].as_str(),
            relays[0]["outbox_waiting"].as_u64()
        ),
        (Some("branch-1"), Some(1))
    );
    assert_eq!(relays[1]["outbox_waiting"], 0);
    // Five hours: the relay is not sending.
    queued_for_relay(&w, "branch-1", "run-b", 0, 5).await;
    let (status, _, body) = call(&w, "GET", "/v1/health", Some(&w.read), None).await;
    assert_eq!(status, 503, "{body}");
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("relay branch-1: 2 report mail(s) not sent")
            && problems.contains("last seen never"),
        "{problems}"
    );
    let (_, _, listed) = call(&w, "GET", "/v1/relays", Some(&w.admin), None).await;
    assert_eq!(listed["relays"][0]["outbox_waiting"], 2, "{listed}");
    assert!(
        listed["relays"][0]["outbox_oldest_queued_at"].is_string(),
        "{listed}"
    );
    // Revoked, its mail is a warning: it will never go.
    call(&w, "DELETE", "/v1/relays/branch-1", Some(&w.admin), None).await;
    let (status, _, body) = call(&w, "GET", "/v1/health", Some(&w.read), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["warnings"]
            .to_string()
            .contains("relay branch-1: 2 report mail(s) wait for it, but it is revoked"),
        "{body}"
    );
}

/// `/v1/health` names what failed and the AWS error code, never the raw error with its ARNs,
/// table names and request ids (those go to the log).
#[test]
fn a_failed_health_check_gives_a_short_cause() {
    let raw = anyhow::anyhow!(
        "AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/charlie-api/x is not authorized to perform: dynamodb:GetItem on resource: arn:aws:dynamodb:eu-west-2:123456789012:table/charlie-state (request id 7Q3…)"
    )
    .context("reading HEALTH/probe from table charlie-state");
    let said = super::cause("the state table", &raw);
    assert_eq!(
        said,
        "the state table: AccessDeniedException (details in the API's log)"
    );
    let said = super::cause(
        "the bucket",
        &anyhow::anyhow!("connection refused to 10.0.3.7:443"),
    );
    assert_eq!(said, "the bucket: unavailable (details in the API's log)");
}

/// Login CSRF: a sign-in posted from another site (by the browser's Sec-Fetch-Site or the
/// Origin) is refused, so no one can sign a visitor in under their own key; the same origin
/// signs in.
#[tokio::test]
async fn a_sign_in_posted_from_another_site_is_refused() {
    let w = world().await;
    let form = format!("key={}", w.operate);
    for extra in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")][..],
        &[("origin", "https://evil.example"), ("host", "api.example")][..],
        &[("origin", "null")][..],
    ] {
        let (status, headers, page) = ui(&w, "POST", "/ui/login", None, Some(&form), extra).await;
        assert_eq!(status, 403, "{extra:?}: {page}");
        assert!(headers.get("set-cookie").is_none(), "{extra:?}");
    }
    let same = [
        ("sec-fetch-site", "same-origin"),
        ("origin", "https://api.example"),
        ("host", "api.example"),
    ];
    let (status, headers, _) = ui(&w, "POST", "/ui/login", None, Some(&form), &same).await;
    assert_eq!(status, 303);
    assert!(headers.get("set-cookie").is_some());
}

/// Behind the CDN (AWS), a request that went round it to the execute-api endpoint is refused
/// on every route but the SigV4 ones; through it, everything works as before, and a sign-in
/// posted from the CDN's host (API Gateway sees its own `Host`) is same-origin.
#[tokio::test]
async fn behind_the_edge_only_requests_through_it_are_served() {
    const ORIGIN: &str = "origin-value-for-tests-0123456789abcdef";
    let mut w = world().await;
    Arc::get_mut(&mut w.api).unwrap().edge = crate::edge::Edge::new(
        Some(&Secret::new(ORIGIN)),
        Some("https://d111111abcdef8.cloudfront.net"),
    )
    .unwrap();
    let (status, _, body) = call(&w, "GET", "/v1/runs", Some(&w.read), None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    let (status, _, _) = call(&w, "GET", "/v1/links/anything", None, None).await;
    assert_eq!(status, 403);
    let (status, _, page) = ui(&w, "GET", "/ui/login", None, None, &[]).await;
    assert_eq!(status, 403, "{page}");
    let (status, body) = call_iam(
        &w,
        "GET",
        "/iam/v1/runs",
        Some("arn:aws:iam::123456789012:user/auditor"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let mut headers = serde_json::Map::new();
    headers.insert("authorization".into(), format!("Bearer {}", w.read).into());
    headers.insert(crate::edge::ORIGIN_HEADER.into(), ORIGIN.into());
    let event = gateway_event("ANY /v1/{proxy+}", "GET", "/v1/runs", headers, None);
    let (status, _, body) = send(&w, event).await;
    assert_eq!(status, 200, "{body}");

    let form = format!("key={}", w.operate);
    let through = [
        (crate::edge::ORIGIN_HEADER, ORIGIN),
        ("origin", "https://d111111abcdef8.cloudfront.net"),
        ("host", "abc123.execute-api.eu-west-2.amazonaws.com"),
    ];
    let (status, headers, page) = ui(&w, "POST", "/ui/login", None, Some(&form), &through).await;
    assert_eq!(status, 303, "{page}");
    assert!(headers.get("set-cookie").is_some());
    let elsewhere = [
        (crate::edge::ORIGIN_HEADER, ORIGIN),
        ("origin", "https://evil.example"),
        ("host", "abc123.execute-api.eu-west-2.amazonaws.com"),
    ];
    let (status, _, _) = ui(&w, "POST", "/ui/login", None, Some(&form), &elsewhere).await;
    assert_eq!(status, 403);
}

/// A mail the relay's SMTP server defers (452) stays queued but leaves the outbox's head until
/// its backoff is over, so the mail behind it goes; the relay list and health show it with the
/// server's last answer; bad input names the field.
#[tokio::test]
async fn a_deferred_relay_mail_steps_aside_and_shows_its_last_answer() {
    let w = world().await;
    let key = new_relay_key(&w, "branch-1").await;
    for group in [0, 1] {
        queued_for_relay(&w, "branch-1", "run-1", group, 1 - i64::from(group)).await;
    }
    let now = Utc::now().timestamp();
    let nonce = crate::relay_auth::new_nonce;
    assert_eq!(
        relay_outbox_ids(&w, &key).await,
        ["<run-1.0@branch.example>", "<run-1.1@branch.example>"]
    );
    let path = "/v1/relay/outbox/deferred";
    let deferred = json!({"message_id": "<run-1.0@branch.example>", "answer": "452 4.2.2 <leads@branch.example>: Mailbox full"});
    let (status, said) = relay_signed(&w, &key, path, &deferred, now, &nonce()).await;
    assert_eq!(status, 200, "{said}");
    assert_eq!(said["attempts"], 1);
    assert!(said["next_attempt_at"].is_string());
    assert_eq!(
        relay_outbox_ids(&w, &key).await,
        ["<run-1.1@branch.example>"],
        "the deferred mail waits out its backoff; the next one is offered"
    );
    let (_, _, listed) = call(&w, "GET", "/v1/relays", Some(&w.admin), None).await;
    let stuck = &listed["relays"][0]["outbox_stuck"];
    assert_eq!(stuck["message_id"], "<run-1.0@branch.example>", "{listed}");
    assert_eq!(stuck["attempts"], 1);
    assert_eq!(
        stuck["last_answer"],
        "452 4.2.2 <leads@branch.example>: Mailbox full"
    );
    let (_, _, health) = call(&w, "GET", "/v1/health", Some(&w.read), None).await;
    let warnings = health["warnings"].to_string();
    assert!(
        warnings.contains("mail <run-1.0@branch.example> deferred 1 time(s)")
            && warnings.contains("Mailbox full"),
        "{warnings}"
    );
    for (body, field) in [
        (
            json!({"message_id": "<run-1.0@branch.example>", "answer": " "}),
            "answer",
        ),
        (json!({"message_id": "<run-1.0@branch.example>"}), "answer"),
    ] {
        let (status, err) = relay_signed(&w, &key, path, &body, now, &nonce()).await;
        assert_eq!(status, 400, "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    let unknown = json!({"message_id": "<nope@branch.example>", "answer": "452"});
    let (status, _) = relay_signed(&w, &key, path, &unknown, now, &nonce()).await;
    assert_eq!(status, 404);
}

/// The Message-IDs the relay's outbox offers it now.
async fn relay_outbox_ids(w: &World, key: &str) -> Vec<String> {
    let now = Utc::now().timestamp();
    let nonce = crate::relay_auth::new_nonce();
    let (_, outbox) = relay_signed_as(w, key, "GET", "/v1/relay/outbox", None, now, &nonce).await;
    outbox["mails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A relay made to trust its mail server's authserv-id keeps it (lower case) and shows it.
#[tokio::test]
async fn a_relay_made_to_trust_its_mail_server_says_so() {
    let w = world().await;
    let body = json!({"id": "branch-8", "trusted_authserv_ids": ["MX.Branch.Example"]});
    let (status, _, created) = call(&w, "POST", "/v1/relays", Some(&w.admin), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["trusted_authserv_ids"],
        json!(["mx.branch.example"])
    );
    let stored: crate::state::RelayRecord = rec(&w)
        .get_record(&RecordKey::relay("branch-8"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.trusted_authserv_ids, ["mx.branch.example"]);
}

/// A day's outcomes name relay mail too (its mailbox `relay/{relay}` holds a `/`, in records of
/// before the mailbox was kept as in new ones), and list the mail of that day no dataset took,
/// with why.
#[tokio::test]
async fn outcomes_of_a_day_show_relay_mail_and_the_mail_no_dataset_took() {
    let w = world().await;
    let day: chrono::NaiveDate = "2024-03-14".parse().unwrap();
    let received: DateTime<Utc> = "2024-03-14T09:00:00Z".parse().unwrap();
    for (i, mailbox, kept) in [
        (1, "relay/branch-1", false),
        (2, "relay/branch-1", true),
        (3, "ops@contoso.example", true),
    ] {
        let message_id = format!("sha{i}");
        let outcome = crate::messages::IngestOutcome {
            v: 1,
            mailbox: mailbox.into(),
            message_id: message_id.clone(),
            attachment: format!("ib_calls_{i}.csv"),
            dataset: "ib_calls".into(),
            dates: vec![day],
            rows_total: 10,
            rows_new: 10,
            rows_duplicate: 0,
            rows_rejected: 0,
            raw_key: format!("raw/ib_calls/2024-03-14/{message_id}/ib_calls_{i}.csv"),
            quarantined: None,
            lines: None,
        };
        rec(&w)
            .put_record(&RecordKey::outcome(&outcome), &outcome, None)
            .await
            .unwrap();
        let attachment = state::DayAttachment {
            raw_key: outcome.raw_key.clone(),
            source: format!("{mailbox}/{message_id}"),
            mailbox: kept.then(|| mailbox.to_owned()),
            received,
            name: None,
        };
        crate::stages::ingest::reprocess::index_day(rec(&w), "ib_calls", day, &attachment)
            .await
            .unwrap();
    }
    let forwarded = state::UnmatchedMail {
        mailbox: "ops@contoso.example".into(),
        message_id: "fwd-1".into(),
        sender: "colleague@contoso.example".into(),
        subject: "FW: IB calls export 2024-03-14".into(),
        received,
        attachments: vec!["ib_calls_2024-03-14.csv".into()],
        reasons: vec!["ib_calls: sender \"colleague@contoso.example\" does not match \"^exports@dialer\\\\.example$\"".into()],
    };
    rec(&w)
        .put_record(&RecordKey::unmatched(&forwarded), &forwarded, None)
        .await
        .unwrap();
    let (status, _, body) = call(
        &w,
        "GET",
        "/v1/intake/outcomes?dataset=ib_calls&date=2024-03-14",
        Some(&w.read),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mailboxes: Vec<&str> = body["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["mailbox"].as_str().unwrap())
        .collect();
    assert_eq!(
        mailboxes,
        ["relay/branch-1", "relay/branch-1", "ops@contoso.example"],
        "{body}"
    );
    assert_eq!(body["totals"]["rows_total"], 30);
    let unmatched = &body["unmatched"][0];
    assert_eq!(unmatched["sender"], "colleague@contoso.example");
    assert!(
        unmatched["reasons"][0]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{body}"
    );
}

/// `charlie intake status` counts quarantined mails beside the ignored and duplicate ones
/// (they were left to `charlie metrics`).
#[tokio::test]
async fn intake_status_counts_quarantined_mails() {
    let w = world().await;
    let mut counts = crate::counters::Counts::default();
    counts.add(crate::counters::Kind::MailsQuarantined, "relay/branch-1", 1);
    crate::counters::count(rec(&w), "mail/relay/branch-1/sha", Utc::now(), &counts)
        .await
        .unwrap();
    let (status, _, body) = call(&w, "GET", "/v1/intake", Some(&w.read), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["counters"]["totals"]["mails_quarantined"], 1, "{body}");
}

/// A span of any size is too far back, never an overflow (`Duration::days` panicked past
/// about 10^14 days: a 500 for `?since=200000000000000d`).
#[test]
fn a_since_of_any_size_is_refused_with_a_reason_not_a_panic() {
    let now = Utc::now();
    for v in ["200000000000000d", "9223372036854775807m", "32d"] {
        let why = super::parse_since(v, now).unwrap_err();
        assert!(why.contains("more than 31 days back"), "{v}: {why}");
    }
    assert_eq!(
        super::parse_since("90m", now).unwrap(),
        now - chrono::Duration::minutes(90)
    );
    assert!(super::parse_since("0d", now).is_err());
    assert!(
        super::parse_since("2099-01-01T00:00:00Z", now)
            .unwrap_err()
            .contains("future")
    );
}

/// Refusals and reads that hand out data leave a trace: a 401 (by the refused key's id, never
/// the key), a 403 for a weak key, a followed download link (refused or not), a workbook
/// download, a dashboard sign-in (failed and succeeded) and a cross-site post to it, a relay's
/// refused call; no entry holds a secret.
#[tokio::test]
async fn refusals_downloads_and_sign_ins_are_audited_without_a_secret() {
    let w = world().await;
    let wrong = "chk_0123456789abcdef_not-the-secret-at-all";
    let (status, _, _) = call(&w, "GET", "/v1/runs", Some(wrong), None).await;
    assert_eq!(status, 401);
    let (status, _, _) = call(
        &w,
        "POST",
        "/v1/keys",
        Some(&w.read),
        Some(json!({"name": "x", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = call(&w, "GET", "/v1/links/not.a-token.at-all", None, None).await;
    assert_eq!(status, 403);
    let (status, _, _) = call(
        &w,
        "GET",
        "/v1/runs/no-such-run/download",
        Some(&w.read),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = ui(
        &w,
        "POST",
        "/ui/login",
        None,
        Some(&format!("key={wrong}")),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    sign_in(&w, &w.operate).await;
    let (status, _, _) = ui(
        &w,
        "POST",
        "/ui/login",
        None,
        Some("key=x"),
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(status, 403);
    let forged = format!("chr_branch-1_{}", "A".repeat(43));
    let (status, _) = relay_signed_as(
        &w,
        &forged,
        "GET",
        "/v1/relay/outbox",
        None,
        Utc::now().timestamp(),
        &crate::relay_auth::new_nonce(),
    )
    .await;
    assert_eq!(status, 401);

    let (_, _, audit) = call(&w, "GET", "/v1/audit?limit=100", Some(&w.admin), None).await;
    let entries = audit["entries"].as_array().unwrap();
    let find = |method: &str, path: &str, status: u16| {
        entries
            .iter()
            .find(|e| e["method"] == method && e["path"] == path && e["status"] == status)
            .unwrap_or_else(|| panic!("no audit entry for {method} {path} {status}: {audit}"))
    };
    assert_eq!(find("GET", "/v1/runs", 401)["key_id"], "0123456789abcdef");
    assert!(
        find("POST", "/v1/keys", 403)["summary"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
    assert_eq!(
        find("GET", "/v1/links/not.a-token.at-all", 403)["key_id"],
        "link"
    );
    find("GET", "/v1/runs/no-such-run/download", 404);
    assert_eq!(find("POST", "/ui/login", 401)["key_id"], "0123456789abcdef");
    assert_eq!(
        find("POST", "/ui/login", 303)["summary"],
        "dashboard sign-in"
    );
    find("POST", "/ui/login", 403);
    assert_eq!(
        find("GET", "/v1/relay/outbox", 401)["key_id"],
        "relay/branch-1"
    );
    let text = audit.to_string();
    for secret in ["not-the-secret-at-all", &"A".repeat(43), w.operate.as_str()] {
        assert!(!text.contains(secret), "the audit trail holds a secret");
    }
}

/// One key cannot mail-bomb: past its bound of runs started or rerun for a report in an hour
/// (and of all its state-changing calls), it gets a 429 that says when to try again, audited;
/// another report, and another key, are not held back.
#[tokio::test]
async fn a_key_that_reruns_in_a_loop_is_bounded_per_report_per_hour() {
    let mut w = world().await;
    Arc::get_mut(&mut w.api).unwrap().limits = KeyLimits {
        calls_per_hour: 8,
        sends_per_report_per_hour: 3,
    };
    let start = |report: &str| json!({"report": report, "period": "2024-03-14"});
    for _ in 0..3 {
        let (status, _, body) = call(
            &w,
            "POST",
            "/v1/runs",
            Some(&w.operate),
            Some(start("call_centre_daily")),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, headers, body) = call(
        &w,
        "POST",
        "/v1/runs",
        Some(&w.operate),
        Some(start("call_centre_daily")),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(body["retry_after"], retry);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("report call_centre_daily"),
        "{body}"
    );
    // Another report goes; so does another key.
    let (status, _, _) = call(
        &w,
        "POST",
        "/v1/runs",
        Some(&w.operate),
        Some(start("call_centre_weekly")),
    )
    .await;
    assert_ne!(status, 429);
    let (status, _, _) = call(
        &w,
        "POST",
        "/v1/runs",
        Some(&w.admin),
        Some(start("call_centre_daily")),
    )
    .await;
    assert_eq!(status, 202);
    // Every state-changing call counts against the key's hourly bound.
    let mut last = 0;
    for _ in 0..6 {
        last = call(
            &w,
            "POST",
            "/v1/runs",
            Some(&w.operate),
            Some(start("call_centre_weekly")),
        )
        .await
        .0;
    }
    assert_eq!(last, 429);
    let (_, _, audit) = call(&w, "GET", "/v1/audit?limit=100", Some(&w.admin), None).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == 429),
        "the bound is audited: {audit}"
    );
}

#[tokio::test]
async fn the_dashboard_shows_rejected_rows_the_last_period_s_workbooks_and_starts_it_by_default() {
    let w = world().await;
    let cookie = sign_in(&w, &w.operate).await;
    // A rejects file as ingest writes it, and one of a version before the line counts.
    let file = contract::RejectsFile {
        attachment: "ib_calls.csv".into(),
        raw_key: "raw/ib_calls/a.csv".into(),
        rows_rejected: 2,
        lines: Default::default(),
        rejects: vec![crate::csv_ingest::Reject {
            line: 7,
            reason: "started_at \"yesterday\" is not a date-time".into(),
        }],
    };
    let objects: &dyn Objects = w.objects.as_ref();
    objects
        .put(
            "raw/ib_calls/a.csv.rejects.json",
            serde_json::to_vec(&file).unwrap(),
            "application/json",
        )
        .await
        .unwrap();
    let old = json!({"attachment": "b.csv", "raw_key": "raw/ib_calls/b.csv", "rejects": [{"line": 3, "reason": "call_id is empty"}]});
    objects
        .put(
            "raw/ib_calls/b.csv.rejects.json",
            serde_json::to_vec(&old).unwrap(),
            "application/json",
        )
        .await
        .unwrap();
    let (status, _, page) = ui(
        &w,
        "GET",
        "/ui/intake/rejects?raw_key=raw/ib_calls/a.csv",
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(">7<"), "the line: {page}");
    assert!(page.contains("is not a date-time"), "the reason: {page}");
    assert!(page.contains("the first 1 are shown"), "{page}");
    let (status, _, page) = ui(
        &w,
        "GET",
        "/ui/intake/rejects?raw_key=raw/ib_calls/b.csv",
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200, "an older file is read too: {page}");
    assert!(page.contains("call_id is empty"), "{page}");

    // The reports page lists the workbooks stored for each report's last complete period.
    let r = &w.api.definitions.reports["call_centre_daily"];
    let last = crate::period::Period::previous(r.period, Utc::now(), r.time_zone.0).to_string();
    objects
        .put(
            &crate::object_keys::workbook("call_centre_daily", &last),
            b"PK".to_vec(),
            crate::report_mail::XLSX_CONTENT_TYPE,
        )
        .await
        .unwrap();
    let (status, _, page) = ui(&w, "GET", "/ui/reports", Some(&cookie), None, &[]).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("({last})")), "{page}");
    assert_eq!(
        page.matches("No workbook stored for the last period")
            .count(),
        w.api.definitions.reports.len() - 1,
        "the period's workbook is listed: {page}"
    );

    // A run started with the form's period left empty builds that period.
    let (_, _, runs) = ui(&w, "GET", "/ui/runs", Some(&cookie), None, &[]).await;
    let form = format!("report=call_centre_daily&period=&_csrf={}", csrf_of(&runs));
    let (status, headers, page) = ui(&w, "POST", "/ui/runs", Some(&cookie), Some(&form), &[]).await;
    assert_eq!(status, 303, "{page}");
    let to = headers["location"].to_str().unwrap();
    assert!(
        to.starts_with(&format!("/ui/runs/call_centre_daily.{last}.")),
        "{to}"
    );
}

#[tokio::test]
async fn the_router_answers_an_unknown_path_404_a_wrong_method_405_with_allow_and_ignores_empty_segments()
 {
    let w = world().await;
    let (status, _, body) = call(&w, "GET", "/v1/nothing/here", Some(&w.read), None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    assert!(
        body["message"].as_str().unwrap().contains("openapi.json"),
        "{body}"
    );
    let (status, _, body) = call(&w, "GET", "/v2/runs", Some(&w.read), None).await;
    assert_eq!(status, 404);
    assert!(
        body["message"].as_str().unwrap().contains("under /v1"),
        "{body}"
    );
    let (status, headers, body) = call(&w, "PUT", "/v1/runs", Some(&w.operate), None).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(headers["allow"], "GET, POST");
    assert_eq!(body["error"], "method_not_allowed");
    // A static segment and a parameter at the same place: the method decides, as the table
    // says, and the answer names what the path takes.
    let (status, headers, _) = call(
        &w,
        "GET",
        "/v1/dead-letters/inbound/redrive",
        Some(&w.operate),
        None,
    )
    .await;
    assert_eq!(
        (status, headers["allow"].to_str().unwrap()),
        (405, "POST, DELETE")
    );
    for path in ["/v1/runs/", "/v1//runs", "/v1/reports//"] {
        let (status, _, body) = call(&w, "GET", path, Some(&w.read), None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // HEAD is GET without a body, with the same key check.
    let (status, _, _) = call(&w, "HEAD", "/v1/runs", None, None).await;
    assert_eq!(status, 401);
    let (status, _, body) = call(&w, "HEAD", "/v1/runs", Some(&w.read), None).await;
    assert_eq!((status, body), (200, Value::String(String::new())));
}

#[tokio::test]
async fn every_route_in_the_table_is_routed_with_its_access() {
    let w = world().await;
    for def in routes::ROUTES {
        let path: String = def
            .path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        // No key: a route that needs a scope says 401; a relay's, 401 for its signature; a
        // public one answers (the document) or judges its token (a link).
        let (status, _, body) = call(&w, def.method, &format!("/v1{path}"), None, None).await;
        let expected = match def.access {
            Access::Scope(_) | Access::Relay => 401,
            Access::Public if def.route == Route::OpenApi => 200,
            // A link whose token is not one: its page says so.
            Access::Public => 403,
        };
        assert_eq!(status, expected, "{} /v1{path}: {body}", def.method);
        // One scope short of the route's: 403 naming the scope.
        let short = match def.scope() {
            Some(Scope::Operate) => &w.read,
            Some(Scope::Admin) => &w.operate,
            _ => continue,
        };
        let (status, _, body) =
            call(&w, def.method, &format!("/v1{path}"), Some(short), None).await;
        assert_eq!(status, 403, "{} /v1{path}: {body}", def.method);
        let needed = def.scope().unwrap().name();
        assert!(body["message"].as_str().unwrap().contains(needed), "{body}");
    }
}

#[tokio::test]
async fn an_event_lambda_http_cannot_read_is_a_400_not_a_panic() {
    let w = world().await;
    let mut headers = serde_json::Map::new();
    headers.insert("authorization".into(), format!("Bearer {}", w.read).into());
    let mut event = gateway_event(
        "ANY /v1/{proxy+}",
        "POST",
        "/v1/runs",
        headers.clone(),
        Some("%%%".into()),
    );
    event["isBase64Encoded"] = json!(true);
    let (status, _, body) = send(&w, event).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("body")),
        "{body}"
    );

    let event = gateway_event(
        "ANY /v1/{proxy+}",
        "GET",
        "/v1/runs?a=\"b c\"",
        headers.clone(),
        None,
    );
    let (status, _, body) = send(&w, event).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("query")),
        "{body}"
    );

    // Characters a client may send raw in a path: answered, whatever they are.
    for path in [
        "/v1/runs/a^b",
        "/v1/runs/a|b",
        "/v1/runs/{x}",
        "/v1/runs/a`b",
        "/v1/runs/a\\b",
        "/v1/runs/a\"b",
        "/v1/runs/%zz",
        "/v1/runs/\u{e9}",
    ] {
        let event = gateway_event("ANY /v1/{proxy+}", "GET", path, headers.clone(), None);
        let (status, _, body) = send(&w, event).await;
        assert!(matches!(status, 400 | 404), "{path}: {status} {body}");
    }
    // A Host or X-Forwarded-Proto the URL cannot be built from is not the caller's to break.
    for (name, value) in [
        ("host", "a:b:c"),
        ("host", "[::1"),
        ("host", "x:99999"),
        ("x-forwarded-proto", "ht tp"),
    ] {
        let mut headers = headers.clone();
        headers.insert(name.into(), value.into());
        let event = gateway_event("ANY /v1/{proxy+}", "GET", "/v1/runs", headers, None);
        let (status, _, body) = send(&w, event).await;
        assert_eq!(status, 200, "{name}: {value}: {body}");
    }
}

#[tokio::test]
async fn an_id_that_breaks_its_kind_s_rule_names_nothing_and_says_what_the_id_looks_like() {
    let w = world().await;
    for (method, path, kind) in [
        ("DELETE", "/v1/relays/Branch%207", "relay id"),
        ("DELETE", "/v1/keys/not-a-key", "key id"),
        ("GET", "/v1/runs/a%0Ab", "run id"),
        ("POST", "/v1/runs/a%0Ab/cancel", "run id"),
    ] {
        let (status, _, body) = call(&w, method, path, Some(&w.admin), None).await;
        assert_eq!(status, 404, "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(&format!("no such {kind}")), "{message}");
    }
    let (status, _, body) = call(
        &w,
        "POST",
        "/v1/relays",
        Some(&w.admin),
        Some(json!({"id": "Branch 7"})),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("id")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("1 to 40 of a-z"),
        "{body}"
    );
}
