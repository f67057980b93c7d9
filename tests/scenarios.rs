//! The end-to-end scenarios: one list, run on a deployment whose rows live in DynamoDB
//! (`tests/end_to_end.rs`) or in PostgreSQL (`tests/end_to_end_postgres.rs`). Setup applies the
//! Terraform to the emulator once per test binary and polls the sample mailbox once
//! ([`FirstPoll`]); each scenario then makes or finds what it needs and checks one behaviour, so
//! `cargo test --test end_to_end -- NAME` runs any one of them alone. libtest-mimic is the
//! harness: libtest's command line (`--list`, a filter, `--exact`, `--skip`) and its report; the
//! scenarios run in order, one at a time, and a failing one fails alone.

use std::collections::HashSet;
use std::io::Cursor;

use calamine::{Data, Reader, Xlsx};
use charlie::adapters::aws::dynamodb::DynamoState;
use charlie::adapters::aws::s3::S3Objects;
use charlie::adapters::aws::sqs::{CAUSE_ATTRIBUTE, STAGE_ATTRIBUTE, SqsQueue};
use charlie::definitions::Definitions;
use charlie::messages::MailRequest;
use charlie::ports::{Claim, Claims, Objects, RowStore, StateRecords, StoredRow, WorkQueue};
use charlie::state::{DeliveryNews, RecordKey, SesMessage, SubscriptionRecord};
use charlie_local::demo::{LocalCloud, RowStoreKind, UpOptions};
use charlie_local::emulator::SentMail;
use charlie_local::fake_graph::{FakeAttachment, FakeMessage, SendPath};
use chrono::{DateTime, NaiveDate, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use libtest_mimic::{Arguments, Failed, Trial};
use mail_parser::{MessageParser, MimeHeaders};
use std::panic::AssertUnwindSafe;

/// What every scenario shares: the deployment and handles on what it wrote.
struct Ctx {
    cloud: LocalCloud,
    defs: Definitions,
    state: DynamoState,
    objects: S3Objects,
    mailbox: String,
    /// The mailbox's directory object id: the name Charlie keys it by.
    mailbox_id: String,
    /// Unique keys of the sample mailbox's day, counted without Charlie's code.
    expected_calls: usize,
    expected_dials: usize,
    /// Every API key the scenarios made, and every error answer the API gave: the secrets
    /// scenario looks for the one in the other and in the logs.
    keys_made: std::sync::Mutex<Vec<String>>,
    /// Each API answer the scenarios got (label, body), for the secrets search.
    answers: std::sync::Mutex<Vec<(String, String)>>,
    /// Where this process's log lines go (the stages' JSON logs, as CloudWatch would get them).
    log_file: std::path::PathBuf,
    /// What setup's first poll of the sample mailbox did and found.
    first_poll: FirstPoll,
}

/// Setup polls the sample mailbox once (at [`FIRST_POLL`]): the folder is subscribed, its delta
/// link stored and the sample day's rows are in, for every scenario, alone or in a run of all.
/// What that poll did, as it was right after it.
struct FirstPoll {
    summary: serde_json::Value,
    drained: charlie_local::runner::DrainStats,
    subscriptions: Vec<charlie_local::fake_graph::FakeSubscription>,
    outcomes: Vec<charlie::messages::IngestOutcome>,
    /// Rows of ib_calls and dials on 2024-03-14.
    rows: (usize, usize),
}

impl Ctx {
    fn records(&self) -> &dyn StateRecords {
        &self.state
    }

    fn queue(&self, name: &str) -> SqsQueue {
        self.cloud
            .clients
            .queue(&self.cloud.outputs.queue_urls[name])
    }

    async fn ses_mail(&self) -> Vec<SentMail> {
        self.cloud.emulator.sent_raw_mail().await.unwrap()
    }

    async fn rows_of(&self, dataset: &str, day: &str) -> usize {
        self.cloud.stored_rows(dataset, day).await.unwrap()
    }

    /// The number of outcomes recorded for one mail.
    async fn outcomes_of(&self, message_id: &str) -> usize {
        self.records()
            .outcomes_of_mail(&self.mailbox_id, message_id)
            .await
            .unwrap()
            .len()
    }

    fn hook(&self) -> String {
        self.cloud.api_url("/graph/notifications")
    }

    /// A run request on the `runs` queue, the queues drained: the run's record.
    async fn run_request(
        &self,
        report: &str,
        period: &str,
        run_id: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        Ok(self.cloud.request_run(report, period, run_id).await?.0)
    }

    /// A control API call through the API routes: (status, JSON body or text).
    async fn api(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut req = client.request(method.parse().unwrap(), self.cloud.api_url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        // Every answer is searched for secrets later, but those that hand out a new key once.
        let hands_out_a_key = method == "POST" && (path == "/v1/keys" || path == "/v1/relays");
        if !hands_out_a_key {
            self.answers
                .lock()
                .unwrap()
                .push((format!("{method} {path} → {status}"), text.clone()));
        }
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// A control API key with `scope`, made as `charlie keys create` makes the first one.
    async fn key(&self, name: &str, scope: charlie::stages::api::keys::Scope) -> String {
        let (_, key) = charlie::stages::api::keys::create(self.records(), name, &[scope], "e2e")
            .await
            .unwrap();
        self.keys_made.lock().unwrap().push(key.expose().to_owned());
        key.expose().to_owned()
    }

    /// Puts a mail request for run `run_id` (its workbook `file` stored for 2024-03-14) into the
    /// mail DLQ, as the mailer leaves one that failed on every receive, cause included.
    async fn mail_dead_letter(&self, run_id: &str, file: &str) {
        let key = format!("reports/call_centre_daily/2024-03-14/{file}");
        let stored = self
            .objects
            .put(
                &key,
                b"a workbook".to_vec(),
                charlie::report_mail::XLSX_CONTENT_TYPE,
            )
            .await
            .unwrap();
        let request = mail_request(run_id, "call_centre_daily", &key, stored.version_id);
        self.cloud
            .clients
            .sqs
            .send_message()
            .queue_url(&self.cloud.outputs.dlq_urls["mail"])
            .message_body(serde_json::to_string(&request).unwrap())
            .message_attributes(
                CAUSE_ATTRIBUTE,
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("failed on each of its 5 receives; the last time: SES throttled")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }

    /// The messages in `queue`'s dead-letter queue (left there: visibility 0).
    async fn dead_letters(&self, queue: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let mut all = Vec::new();
        for _ in 0..5 {
            let got = self
                .cloud
                .clients
                .sqs
                .receive_message()
                .queue_url(&self.cloud.outputs.dlq_urls[queue])
                .message_attribute_names("All")
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            for m in got {
                if !all
                    .iter()
                    .any(|a: &aws_sdk_sqs::types::Message| a.message_id == m.message_id)
                {
                    all.push(m);
                }
            }
        }
        all
    }
}

/// A scenario: its name and its body.
struct Scenario {
    name: &'static str,
    run: for<'a> fn(&'a Ctx) -> BoxFuture<'a, ()>,
}

/// `Scenario`s from async functions `fn(&Ctx)`, named after them.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        vec![$(
            Scenario {
                name: stringify!($name),
                run: {
                    fn run<'a>(cx: &'a Ctx) -> BoxFuture<'a, ()> {
                        Box::pin($name(cx))
                    }
                    run
                },
            }
        ),*]
    };
}

/// Every scenario, in the order a whole run takes them.
fn all() -> Vec<Scenario> {
    scenarios!(
        terraform_plans_nothing_after_apply,
        webhook_answers_the_handshake_and_refuses_a_body_that_is_no_notification,
        the_first_poll_subscribes_and_stores_every_row_once,
        notifications_with_a_wrong_client_state_queue_nothing,
        a_mail_notified_three_times_is_stored_once,
        reprocessing_a_day_gives_the_same_rows,
        a_scheduled_report_is_built_and_mailed_once,
        run_requests_name_any_period,
        a_rerun_mails_the_new_version_only,
        a_run_that_keeps_failing_ends_failed_in_the_dead_letter_queue_with_its_cause,
        the_weekly_report_goes_through_graph_and_an_empty_week_sends_a_notice,
        a_large_workbook_goes_through_a_graph_upload_session_once,
        an_oversized_workbook_goes_as_a_download_link,
        an_ses_bounce_marks_the_delivery_and_is_never_lowered,
        an_unusable_attachment_is_quarantined_with_its_reason,
        relay_mail_in_the_inbox_reaches_ingest_by_s3_notification_once,
        a_relay_killed_mid_batch_uploads_its_drop_folder_once,
        a_relay_reads_an_imap_folder_by_uid_once_with_idle,
        a_report_for_a_relay_goes_out_through_its_smtp_server_once,
        the_relays_windows_build_under_wine_uploads_a_drop_folder_once,
        retention_expires_rows_and_files_as_the_definitions_say,
        the_dashboard_works_in_a_real_browser,
        a_mail_found_by_webhook_and_poll_is_ingested_once,
        a_missed_lifecycle_event_resyncs_the_folder,
        subscriptions_are_renewed_near_expiry_and_on_reauthorization,
        a_removed_subscription_is_recreated_and_the_folder_resynced,
        a_429_storm_slows_the_poll_and_loses_nothing,
        an_expired_delta_link_resyncs_over_the_look_back_window,
        a_poison_message_goes_to_the_dead_letter_queue_at_once_with_its_cause,
        every_outcome_reaches_the_downstream_api_once,
        a_storm_of_each_downstream_fault_ends_with_every_outcome_stored_once,
        a_run_is_started_listed_shown_and_cancelled_through_the_api,
        wrong_expired_or_weak_keys_are_refused_on_every_route_class,
        a_dead_letter_is_peeked_and_redriven_through_the_api,
        intake_is_seen_and_a_day_reprocessed_through_the_api,
        reprocessing_never_leaves_a_day_with_fewer_rows,
        paused_intake_records_mails_and_resume_ingests_them,
        a_flood_of_download_link_requests_starves_neither_operators_nor_graph,
        an_iam_caller_signs_with_sigv4_and_an_unsigned_or_forged_request_is_refused,
        // Late: the requests it generates (runs of odd periods) are left queued.
        the_control_api_keeps_to_its_openapi_document_under_schemathesis,
        // Last: it reads what every scenario before it left behind.
        no_secret_is_in_a_log_line_an_error_a_stored_record_or_an_object,
    )
}

/// The deployment the scenarios share: set up by the first scenario that runs (listing runs
/// none), torn down when all are done.
struct Shared {
    runtime: tokio::runtime::Runtime,
    row_store: RowStoreKind,
    work: std::path::PathBuf,
    log_file: std::path::PathBuf,
    cx: std::sync::OnceLock<Result<Ctx, String>>,
}

impl Shared {
    /// Runs one scenario on the deployment, setting it up first if no scenario has.
    fn run(&self, scenario: for<'a> fn(&'a Ctx) -> BoxFuture<'a, ()>) -> Result<(), Failed> {
        self.runtime.block_on(async {
            if self.cx.get().is_none() {
                let setup = Box::pin(up(self.work.clone(), self.row_store, self.log_file.clone()));
                let made = AssertUnwindSafe(setup)
                    .catch_unwind()
                    .await
                    .map_err(|panic| format!("setup failed: {}", panic_text(&panic)));
                let _ = self.cx.set(made);
            }
            match self.cx.get().expect("set above") {
                Ok(cx) => {
                    scenario(cx).await;
                    Ok(())
                }
                Err(why) => Err(why.as_str().into()),
            }
        })
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Runs the scenarios the command line selects (all by default) on one deployment whose rows
/// live in `row_store`.
pub fn main(row_store: RowStoreKind) -> std::process::ExitCode {
    let mut args = Arguments::from_args();
    // In order, one at a time: they share one deployment.
    args.test_threads = Some(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // The stages' futures are deep in a debug build.
        .thread_stack_size(16 * 1024 * 1024)
        .enable_all()
        .build()
        .unwrap();
    let work = charlie_local::project::target_dir().join(format!(
        "charlie/e2e-{}-{}",
        row_store.name(),
        std::process::id()
    ));
    // The stages' log lines, as their log groups would hold them.
    let log_file = work.with_extension("log");
    if !args.list {
        std::fs::create_dir_all(log_file.parent().unwrap()).unwrap();
        let writer = std::sync::Mutex::new(std::fs::File::create(&log_file).unwrap());
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,charlie=debug"))
            .with_writer(writer)
            .try_init();
    }
    let shared = std::sync::Arc::new(Shared {
        runtime,
        row_store,
        work: work.clone(),
        log_file: log_file.clone(),
        cx: std::sync::OnceLock::new(),
    });
    let trials = all()
        .into_iter()
        .map(|s| {
            let shared = shared.clone();
            Trial::test(s.name, move || shared.run(s.run))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Down with the deployment (the trials, and their handles on it, are gone).
    let Ok(Shared { runtime, cx, .. }) = std::sync::Arc::try_unwrap(shared) else {
        panic!("a scenario kept the deployment");
    };
    runtime.block_on(async move { drop(cx) });
    let _ = std::fs::remove_dir_all(&work);
    if !conclusion.has_failed() {
        let _ = std::fs::remove_file(&log_file);
    }
    conclusion.exit_code()
}

async fn up(
    work: std::path::PathBuf,
    row_store: RowStoreKind,
    log_file: std::path::PathBuf,
) -> Ctx {
    let cloud = LocalCloud::up(UpOptions {
        row_store,
        ..UpOptions::new(work)
    })
    .await
    .expect("local cloud up");
    let defs = Definitions::parse(
        &std::fs::read_to_string(charlie_local::project::root().join("reports.toml")).unwrap(),
    )
    .unwrap();
    let (mailbox, _) = cloud.graph.mailbox();
    let (summary, drained) = cloud.poll(at(FIRST_POLL)).await.expect("the first poll");
    let first_poll = FirstPoll {
        summary,
        drained,
        subscriptions: cloud.graph.subscriptions(),
        outcomes: cloud.outcomes().await.unwrap(),
        rows: (
            cloud.stored_rows("ib_calls", "2024-03-14").await.unwrap(),
            cloud.stored_rows("dials", "2024-03-14").await.unwrap(),
        ),
    };
    Ctx {
        first_poll,
        state: cloud.clients.state(&cloud.outputs.state_table),
        objects: cloud.clients.objects(&cloud.outputs.bucket),
        defs,
        mailbox,
        mailbox_id: charlie_local::fake_graph::MAILBOX_OBJECT_ID.to_owned(),
        expected_calls: expected_unique(&[
            "ib_calls_2024-03-14_morning.csv",
            "ib_calls_2024-03-14_afternoon.csv",
        ]),
        expected_dials: expected_unique(&["dials_2024-03-14.csv"]),
        keys_made: Default::default(),
        answers: Default::default(),
        log_file,
        cloud,
    }
}

/// Unique keys (first column) over sample attachments, counted without Charlie's code.
fn expected_unique(files: &[&str]) -> usize {
    let root = charlie_local::project::root().join("events/mailbox");
    let mut ids = HashSet::new();
    for f in files {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let mut rdr = csv::Reader::from_reader(text.trim_start_matches('\u{feff}').as_bytes());
        for rec in rdr.records() {
            ids.insert(rec.unwrap()[0].to_owned());
        }
    }
    ids.len()
}

async fn post(url: &str, body: String) -> (u16, String, String) {
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

fn notification(subscription: &str, mailbox: &str, id: &str, client_state: &str) -> String {
    serde_json::json!({ "value": [{
        "subscriptionId": subscription, "changeType": "created", "clientState": client_state,
        "resource": format!("Users/{mailbox}/Messages/{id}"),
        "resourceData": { "@odata.type": "#Microsoft.Graph.Message", "id": id },
        "tenantId": "t"
    }]})
    .to_string()
}

/// A small ib_calls export of one day.
fn export(day: &str, n: usize) -> Vec<u8> {
    let mut csv = String::from(
        "call_id,agent_id,agent_name,queue,started_at,answered_at,ended_at,duration_seconds,wait_seconds,disposition,caller_number,notes\n",
    );
    for i in 0..n {
        csv.push_str(&format!("{day}-call-{i},A0075,Anne-Marie Nowak,Support,{day}T09:0{i}:00,{day}T09:0{i}:05,{day}T09:0{i}:50,45,5,RESOLVED,+44 20 7946 0000,\n"));
    }
    csv.into_bytes()
}

fn new_mail(id: &str, day: &str, n: usize) -> FakeMessage {
    FakeMessage {
        id: id.into(),
        subject: format!("IB calls export {day}"),
        from_name: "Dialer Exports".into(),
        from_address: "exports@dialer.example".into(),
        received: format!("{day}T10:00:00Z"),
        attachments: vec![FakeAttachment {
            name: format!("ib_calls_{day}.csv"),
            content_type: "text/csv".into(),
            bytes: export(day, n),
        }],
        authentication_results: None,
    }
}

fn parse_mail(raw: &str) -> mail_parser::Message<'_> {
    MessageParser::default().parse(raw.as_bytes()).unwrap()
}

fn mail_request(run_id: &str, report: &str, key: &str, version: Option<String>) -> MailRequest {
    MailRequest {
        v: 1,
        run_id: charlie::contract::RunId::parse(run_id).unwrap(),
        report: report.into(),
        title: "Call-centre report".into(),
        period: "2024-W11".into(),
        workbook_key: Some(key.into()),
        workbook_version: version,
        workbook_size: 0,
        recipients: vec!["ops-leads@contoso.example".into()],
        cc: vec![],
        bcc: vec![],
        subject: format!("Call-centre report {run_id}"),
        rows: 500_000,
        time_zone: "Europe/London".into(),
        warnings: vec![],
    }
}

/// Setup's poll of the sample mailbox (`FirstPoll`): every scenario finds the day stored.
const FIRST_POLL: &str = "2024-03-15T00:10:00Z";
const LATER: &str = "2024-03-16T12:00:00Z";

fn at(t: &str) -> DateTime<Utc> {
    t.parse().unwrap()
}

async fn terraform_plans_nothing_after_apply(cx: &Ctx) {
    if let Err(plan) = cx.cloud.terraform.plan_is_noop().unwrap() {
        panic!("a second plan is not a no-op:\n{plan}");
    }
    let mappings = &cx.cloud.runner.deployment.mappings;
    assert_eq!(
        mappings.len(),
        6,
        "inbound, outbound, mail, ses_events, lifecycle, runs"
    );
    assert!(
        mappings
            .iter()
            .all(|m| m.report_batch_item_failures && !m.enabled)
    );
    // The report schedules put their firings on `runs`; Scheduler's own DLQ catches what it
    // could not deliver.
    let runs_arn = &cx
        .cloud
        .runner
        .deployment
        .mappings
        .iter()
        .find(|m| m.queue_url == cx.cloud.outputs.queue_urls["runs"])
        .expect("the runs mapping")
        .queue_arn;
    let reports: Vec<_> = cx
        .cloud
        .runner
        .deployment
        .schedules
        .iter()
        .filter(|s| s.name.contains("-report-"))
        .collect();
    assert_eq!(
        reports.len(),
        cx.defs.reports.len(),
        "one per report of reports.toml"
    );
    assert!(
        reports.iter().all(|s| &s.target_arn == runs_arn),
        "{reports:?}"
    );
}

async fn webhook_answers_the_handshake_and_refuses_a_body_that_is_no_notification(cx: &Ctx) {
    for url in [cx.hook(), cx.cloud.api_url("/graph/lifecycle")] {
        let (status, ctype, body) = post(
            &format!("{url}?validationToken=Validation%3A%20Testing%20client"),
            String::new(),
        )
        .await;
        assert_eq!(
            (status, ctype.as_str(), body.as_str()),
            (200, "text/plain", "Validation: Testing client")
        );
    }
    let (status, _, body) = post(&cx.hook(), "{\"value\": 3}".into()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("notification collection"), "{body}");
}

/// Each route callers reach without a key has its own throttle (Terraform's
/// api_route_throttles, read back from the stage and applied by the runner as API Gateway
/// does): 30 requests at once for download links get 429s once their burst is spent, while an
/// operator's call and Graph's handshake at the same moment still go through.
async fn a_flood_of_download_link_requests_starves_neither_operators_nor_graph(cx: &Ctx) {
    let routes = &cx.cloud.runner.deployment.routes;
    let throttle = |key: &str| {
        routes
            .iter()
            .find(|r| r.route_key == key)
            .unwrap_or_else(|| panic!("no route {key}"))
            .throttle
    };
    for key in [
        "GET /v1/links/{proxy+}",
        "ANY /v1/relay",
        "ANY /v1/relay/{proxy+}",
        "POST /ui/login",
        "POST /graph/notifications",
    ] {
        assert!(throttle(key).is_some(), "{key} has no throttle of its own");
    }
    let (links, _) = throttle("GET /v1/links/{proxy+}").unwrap();
    let (graph, _) = throttle("POST /graph/notifications").unwrap();
    assert!(
        graph >= 10.0 * links,
        "Graph's notifications have headroom: {graph} vs {links}"
    );
    let paths: Vec<String> = (0..30)
        .map(|i| format!("/v1/links/not-a-token-{i}"))
        .collect();
    let flood = paths.iter().map(|p| cx.api("GET", p, None, None));
    let statuses: Vec<u16> = futures::future::join_all(flood)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(throttled >= 10, "the flood was throttled: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 429 || *s == 403),
        "refused or throttled: {statuses:?}"
    );
    let read = cx
        .key("throttle-read", charlie::stages::api::keys::Scope::Read)
        .await;
    let (status, body) = cx.api("GET", "/v1/runs?limit=1", Some(&read), None).await;
    assert_eq!(status, 200, "operators are not starved: {body}");
    let (status, _, said) = post(
        &format!("{}?validationToken=still-here", cx.hook()),
        String::new(),
    )
    .await;
    assert_eq!((status, said.as_str()), (200, "still-here"), "nor is Graph");
    // A second later the links route takes requests again.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (status, _) = cx
        .api("GET", "/v1/links/not-a-token-again", None, None)
        .await;
    assert_ne!(status, 429);
}

/// The poller subscribes to the folder (Graph runs the handshake against the webhook first),
/// then the delta round pages through the mailbox and ingest stores each row once. (Setup made
/// that first poll, so that every scenario finds the folder subscribed and the day stored; this
/// one checks what it did and found, as it was right after it.)
async fn the_first_poll_subscribes_and_stores_every_row_once(cx: &Ctx) {
    let FirstPoll {
        summary: poll,
        drained,
        subscriptions: subs,
        outcomes,
        rows,
    } = &cx.first_poll;
    assert_eq!(poll["subscriptions_created"], 1, "{poll}");
    assert_eq!(subs.len(), 1);
    let sub = &subs[0];
    assert_eq!(sub.notification_url, cx.hook());
    assert_eq!(
        sub.lifecycle_url.as_deref(),
        Some(cx.cloud.api_url("/graph/lifecycle").as_str())
    );
    let client_state = sub.client_state.clone().unwrap();
    assert!(
        client_state.len() == 64 && client_state.chars().all(|c| c.is_ascii_hexdigit()),
        "a fresh random clientState"
    );
    assert!(sub.expires > Utc::now() + chrono::Duration::days(6));
    assert_eq!(poll["messages_seen"], 4);
    assert_eq!(
        poll["queued"], 3,
        "the mail without attachments is not queued"
    );
    assert!(
        poll["pages"].as_u64().unwrap() >= 2,
        "the fake pages by 2: {poll}"
    );
    assert_eq!(drained.failures, 0);
    assert_eq!(*rows, (cx.expected_calls, cx.expected_dials));
    assert_eq!(outcomes.len(), 3);
    let new: u64 = outcomes
        .iter()
        .filter(|o| o.dataset == "ib_calls")
        .map(|o| o.rows_new)
        .sum();
    assert_eq!(new as usize, cx.expected_calls);
    for o in outcomes {
        let raw = cx.cloud.object(&o.raw_key).await.unwrap();
        let sample = std::fs::read(
            charlie_local::project::root()
                .join("events/mailbox")
                .join(&o.attachment),
        )
        .unwrap();
        assert_eq!(raw, sample, "the raw attachment is archived as received");
    }
}

async fn notifications_with_a_wrong_client_state_queue_nothing(cx: &Ctx) {
    let sub = cx.cloud.graph.subscriptions()[0].clone();
    let client_state = sub.client_state.clone().unwrap();
    for (subscription, state) in [
        (sub.id.as_str(), "not-the-secret"),
        ("sub-1", client_state.as_str()),
    ] {
        let (status, _, _) = post(
            &cx.hook(),
            notification(
                subscription,
                &cx.mailbox_id,
                "AAMkAGI2TG93AAA=morning",
                state,
            ),
        )
        .await;
        assert_eq!(status, 202);
    }
    assert_eq!(
        cx.cloud.runner.drain().await.unwrap().messages,
        0,
        "dropped, not queued"
    );
}

async fn a_mail_notified_three_times_is_stored_once(cx: &Ctx) {
    let before = cx.cloud.outcomes().await.unwrap().len();
    assert_eq!(
        cx.cloud.graph.notify("AAMkAGI2TG93AAA=morning", 3).await,
        vec![202, 202, 202]
    );
    let drained = cx.cloud.runner.drain().await.unwrap();
    assert_eq!((drained.messages, drained.failures), (3, 0));
    assert_eq!(
        cx.rows_of("ib_calls", "2024-03-14").await,
        cx.expected_calls
    );
    assert_eq!(cx.cloud.outcomes().await.unwrap().len(), before);
}

/// Re-processing the day removes its rows and re-ingests the archived attachments.
async fn reprocessing_a_day_gives_the_same_rows(cx: &Ctx) {
    let day: NaiveDate = "2024-03-14".parse().unwrap();
    let ds = &cx.defs.datasets["ib_calls"];
    let rows: &dyn RowStore = cx.cloud.rows.as_ref();
    let before = rows.rows_for_day("ib_calls", ds, day).await.unwrap();
    let outcome = charlie::reprocess::reprocess_day(
        std::sync::Arc::new(
            Definitions::parse(
                &std::fs::read_to_string(charlie_local::project::root().join("reports.toml"))
                    .unwrap(),
            )
            .unwrap(),
        ),
        rows,
        cx.records(),
        &cx.objects,
        "ib_calls",
        day,
    )
    .await
    .unwrap();
    let expected = cx.expected_calls as u64;
    assert_eq!(
        (
            outcome.rows_deleted,
            outcome.attachments,
            outcome.rows_stored
        ),
        (expected, 2, expected)
    );
    let after = rows.rows_for_day("ib_calls", ds, day).await.unwrap();
    let strip = |rows: &[StoredRow]| {
        rows.iter()
            .map(|r| (r.key.clone(), r.values.clone(), r.source.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&after),
        strip(&before),
        "re-processing produces the same rows"
    );
}

/// The workbook is in S3 (read back with a real XLSX reader), one mail (read with a real MIME
/// parser) carries it, and the same firing again builds and sends nothing.
async fn a_scheduled_report_is_built_and_mailed_once(cx: &Ctx) {
    let mails_before = cx.ses_mail().await.len();
    let report_at = at("2024-03-15T06:00:00Z");
    let (run, _) = cx
        .cloud
        .report("call_centre_daily", report_at)
        .await
        .unwrap();
    assert_eq!(run["status"], "built", "{run}");
    assert_eq!(run["period"], "2024-03-14");
    let key = run["workbook_key"].as_str().unwrap();
    assert_eq!(
        key,
        "reports/call_centre_daily/2024-03-14/call_centre_daily-2024-03-14.xlsx"
    );
    let workbook = cx.cloud.object(key).await.unwrap();
    let mut book = Xlsx::new(Cursor::new(workbook.clone())).unwrap();
    assert_eq!(
        book.sheet_names(),
        vec!["Summary", "ib_calls", "dials", "About"]
    );
    let dials = book.worksheet_range("dials").unwrap();
    assert_eq!(dials.height(), cx.expected_dials + 1);
    assert!(
        matches!(dials.get((1, 0)), Some(Data::Float(_))),
        "dial_id is a number"
    );
    let raw = book.worksheet_range("ib_calls").unwrap();
    assert_eq!(
        raw.height(),
        cx.expected_calls + 1,
        "header + one row per stored call"
    );
    assert_eq!(raw.get((0, 0)), Some(&Data::String("call_id".into())));
    assert!(
        matches!(raw.get((1, 4)), Some(Data::DateTime(_))),
        "started_at is a date cell: {:?}",
        raw.get((1, 4))
    );
    let summary = book.worksheet_range("Summary").unwrap();
    let total_row = (0..summary.height())
        .find(|r| summary.get((*r, 0)) == Some(&Data::String("Total".into())))
        .expect("a Total row");
    assert_eq!(
        summary.get((total_row, 1)),
        Some(&Data::Float(cx.expected_calls as f64))
    );

    let sent = cx.ses_mail().await;
    assert_eq!(sent.len(), mails_before + 1, "exactly one mail");
    let mail = &sent[mails_before];
    let msg = parse_mail(&mail.raw);
    assert_eq!(
        msg.subject(),
        Some("Call-centre daily report for 2024-03-14")
    );
    let to: Vec<&str> = msg
        .to()
        .unwrap()
        .iter()
        .filter_map(|a| a.address())
        .collect();
    assert_eq!(
        to,
        vec![
            "ops-leads@contoso.example",
            "floor-managers@contoso.example"
        ]
    );
    let cc: Vec<&str> = msg
        .cc()
        .unwrap()
        .iter()
        .filter_map(|a| a.address())
        .collect();
    assert_eq!(cc, vec!["wfm-analysts@contoso.example"]);
    assert!(
        !mail.raw.contains("reports-archive@"),
        "a blind copy is not in the headers"
    );
    assert!(
        mail.destinations
            .contains(&"reports-archive@contoso.example".to_owned()),
        "but it is in the envelope: {:?}",
        mail.destinations
    );
    let envelope: HashSet<&String> = mail.destinations.iter().collect();
    assert_eq!(envelope.len(), 4, "to, cc and bcc: {envelope:?}");
    let deliveries = cx
        .records()
        .deliveries_of_run(run["run_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1, "one delivery for one recipient group");
    let result = &deliveries[0].result;
    assert_eq!(result.transport, "ses");
    assert_eq!(result.provider_message_id, mail.id);
    assert_eq!(
        result.bcc,
        vec!["reports-archive@contoso.example".to_owned()]
    );
    assert!(
        msg.body_text(0)
            .unwrap()
            .contains("Call-centre daily report")
    );
    assert!(msg.body_html(0).unwrap().contains("<b>2024-03-14</b>"));
    let att = msg.attachment(0).unwrap();
    assert_eq!(
        att.attachment_name(),
        Some("call_centre_daily-2024-03-14.xlsx")
    );
    assert_eq!(att.contents(), &workbook[..]);

    // The same schedule firing again: no second build, no second mail.
    let (again, _) = cx
        .cloud
        .report("call_centre_daily", report_at)
        .await
        .unwrap();
    assert_eq!(
        again, run,
        "the run's record is as the first firing left it"
    );
    assert_eq!(cx.ses_mail().await.len(), mails_before + 1);
}

/// The ISO week holding the 14th has the day's rows, under its own key and subject.
async fn run_requests_name_any_period(cx: &Ctx) {
    let before = cx.ses_mail().await.len();
    let week = cx
        .run_request("call_centre_daily", "2024-W11", None)
        .await
        .unwrap();
    assert_eq!(week["status"], "built", "{week}");
    assert_eq!(
        week["workbook_key"],
        "reports/call_centre_daily/2024-W11/call_centre_daily-2024-W11.xlsx"
    );
    let book = cx
        .cloud
        .object(week["workbook_key"].as_str().unwrap())
        .await
        .unwrap();
    let mut book = Xlsx::new(Cursor::new(book)).unwrap();
    assert_eq!(
        book.worksheet_range("ib_calls").unwrap().height(),
        cx.expected_calls + 1
    );
    cx.cloud.runner.drain().await.unwrap();
    let sent = cx.ses_mail().await;
    assert_eq!(sent.len(), before + 1);
    let msg = parse_mail(&sent[before].raw);
    assert_eq!(msg.subject(), Some("Call-centre daily report for 2024-W11"));
}

/// A re-run of a day writes a new S3 version and mails that one; the first is not re-sent.
async fn a_rerun_mails_the_new_version_only(cx: &Ctx) {
    let first = cx
        .run_request("call_centre_daily", "2024-03-14", None)
        .await
        .unwrap();
    cx.cloud.runner.drain().await.unwrap();
    let before = cx.ses_mail().await.len();
    let rerun = cx
        .run_request("call_centre_daily", "2024-03-14", None)
        .await
        .unwrap();
    assert_eq!(rerun["status"], "built");
    assert_eq!(rerun["workbook_key"], first["workbook_key"]);
    assert_ne!(rerun["workbook_version"], first["workbook_version"]);
    cx.cloud.runner.drain().await.unwrap();
    let sent = cx.ses_mail().await;
    assert_eq!(sent.len(), before + 1, "one mail: the re-run's");
    let msg = parse_mail(&sent[before].raw);
    let key = rerun["workbook_key"].as_str().unwrap();
    assert_eq!(
        msg.attachment(0).unwrap().contents(),
        &cx.cloud.object(key).await.unwrap()[..],
        "the mail carries the new version"
    );
}

/// While another run holds the period, a run fails (to be retried) and builds nothing. On
/// the queue's last receive (the 5th) it is `failed`, with the error, and in the runs DLQ
/// with its cause. Once the period is free, a redriven copy of the request goes ahead: the
/// 13th has no rows, and call_centre_daily skips an empty period and mails nothing.
async fn a_run_that_keeps_failing_ends_failed_in_the_dead_letter_queue_with_its_cause(cx: &Ctx) {
    let before = cx.ses_mail().await.len();
    let lock = charlie::state::period_lock("call_centre_daily", "2024-03-13");
    let now = Utc::now();
    let held = cx
        .state
        .claim(
            &lock,
            "",
            now,
            now + chrono::Duration::minutes(15),
            now + chrono::Duration::days(1),
        )
        .await
        .unwrap();
    assert_eq!(held, Claim::Acquired);
    let depth = cx.cloud.dlq_depth("runs").await.unwrap();
    let (failed, drained) = cx
        .cloud
        .request_run("call_centre_daily", "2024-03-13", Some("held-period"))
        .await
        .unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["attempts"], 5, "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("is building"), "{error}");
    assert_eq!(drained.failures, 4, "retried 4 times, then handed over");
    assert_eq!(cx.cloud.dlq_depth("runs").await.unwrap(), depth + 1);
    let letter = cx
        .dead_letters("runs")
        .await
        .into_iter()
        .find(|m| m.body().is_some_and(|b| b.contains("held-period")))
        .expect("the run request in the runs DLQ");
    let attrs = letter.message_attributes().unwrap();
    let cause = attrs[CAUSE_ATTRIBUTE].string_value().unwrap();
    assert!(
        cause.starts_with("failed on each of its 5 receives; the last time: ")
            && cause.contains("is building"),
        "{cause}"
    );
    assert_eq!(
        attrs[STAGE_ATTRIBUTE].string_value(),
        Some("report-builder")
    );
    assert_eq!(attrs["correlation_id"].string_value(), Some("held-period"));

    cx.state.release(&lock).await.unwrap();
    let runs: &dyn WorkQueue = &cx.queue("runs");
    runs.send(
        &serde_json::from_str::<serde_json::Value>(letter.body().unwrap()).unwrap(),
        "held-period",
    )
    .await
    .unwrap();
    cx.cloud.runner.drain().await.unwrap();
    let empty = cx.cloud.run_record("held-period").await.unwrap();
    assert_eq!(empty["status"], "skipped_empty", "{empty}");
    assert!(empty["error"].is_null(), "{empty}");
    assert_eq!(cx.ses_mail().await.len(), before);
}

/// The weekly report's Monday schedule covers the week before; it goes out through Graph
/// sendMail as the team's mailbox (transport = "graph"), the workbook inline. An empty week
/// sends a "no data" notice (on_empty = "notice"), without a workbook.
async fn the_weekly_report_goes_through_graph_and_an_empty_week_sends_a_notice(cx: &Ctx) {
    let ses_before = cx.ses_mail().await.len();
    let outlook_before = cx.cloud.graph.sent_mail().len();
    let (weekly, _) = cx
        .cloud
        .report("call_centre_weekly", at("2024-03-18T07:00:00Z"))
        .await
        .unwrap();
    assert_eq!(weekly["status"], "built", "{weekly}");
    assert_eq!(weekly["period"], "2024-W11");
    let notice = cx
        .run_request("call_centre_weekly", "2024-W12", None)
        .await
        .unwrap();
    assert_eq!(notice["status"], "notice_sent", "{notice}");
    assert!(notice["workbook_key"].is_null());
    cx.cloud.runner.drain().await.unwrap();
    assert_eq!(cx.ses_mail().await.len(), ses_before, "nothing through SES");
    let outlook = cx.cloud.graph.sent_mail();
    assert_eq!(outlook.len(), outlook_before + 2);
    let (weekly_mail, notice_mail) = (&outlook[outlook_before], &outlook[outlook_before + 1]);
    assert_eq!(weekly_mail.from_user, cx.mailbox);
    assert_eq!(weekly_mail.path, SendPath::SendMail);
    assert_eq!(
        weekly_mail.subject,
        "Call-centre weekly report for 2024-W11"
    );
    assert_eq!(weekly_mail.to, vec!["ops-leads@contoso.example".to_owned()]);
    assert_eq!(weekly_mail.body_type, "HTML");
    assert!(
        weekly_mail.body.contains("<b>2024-W11</b>"),
        "{}",
        weekly_mail.body
    );
    assert_eq!(weekly_mail.attachments.len(), 1);
    assert_eq!(
        weekly_mail.attachments[0].bytes,
        cx.cloud
            .object(weekly["workbook_key"].as_str().unwrap())
            .await
            .unwrap(),
        "the inline attachment is the S3 object"
    );
    let deliveries = cx
        .records()
        .deliveries_of_run(weekly["run_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(deliveries[0].result.transport, "graph");
    assert_eq!(
        Some(deliveries[0].result.provider_message_id.as_str()),
        weekly_mail.internet_message_id.as_deref()
    );
    assert_eq!(
        notice_mail.subject,
        "Call-centre weekly report for 2024-W12"
    );
    assert!(notice_mail.body.contains("no data"), "{}", notice_mail.body);
    assert!(notice_mail.attachments.is_empty());
}

/// A weekly workbook over Graph's 3 MB inline limit (but under the 10 MiB mail limit) goes
/// through a draft and an upload session, in ranges; the same message three times sends it
/// once.
async fn a_large_workbook_goes_through_a_graph_upload_session_once(cx: &Ctx) {
    let before = cx.cloud.graph.sent_mail().len();
    let large: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 9) as u8)
        .collect();
    let key = "reports/call_centre_weekly/2024-W11/call_centre_weekly-large.xlsx";
    let stored = cx
        .objects
        .put(key, large.clone(), charlie::report_mail::XLSX_CONTENT_TYPE)
        .await
        .unwrap();
    let mut request = mail_request("large-weekly", "call_centre_weekly", key, stored.version_id);
    request.cc = vec!["floor-managers@contoso.example".into()];
    let queue: &dyn WorkQueue = &cx.queue("mail");
    for _ in 0..3 {
        queue.send(&request, "large-weekly").await.unwrap();
    }
    let drained = cx.cloud.runner.drain().await.unwrap();
    assert_eq!(drained.failures, 0);
    let outlook = cx.cloud.graph.sent_mail();
    assert_eq!(outlook.len(), before + 1, "one more mail, not three");
    let sent = &outlook[before];
    assert!(
        matches!(sent.path, SendPath::Draft { ranges } if ranges >= 2),
        "{:?}",
        sent.path
    );
    assert_eq!(sent.cc, vec!["floor-managers@contoso.example".to_owned()]);
    assert_eq!(sent.attachments[0].bytes, large, "uploaded byte for byte");
    assert_eq!(cx.cloud.graph.draft_count(), 0);
}

/// A 12 MB workbook over the 10 MiB limit (infra/envs/local) goes as a download link that
/// works, and the mail says so; the same message twice more sends nothing more.
async fn an_oversized_workbook_goes_as_a_download_link(cx: &Ctx) {
    let before = cx.ses_mail().await.len();
    let big: Vec<u8> = (0..12_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let key = "reports/call_centre_daily/2024-03-14/call_centre_daily-big.xlsx";
    let stored = cx
        .objects
        .put(key, big.clone(), charlie::report_mail::XLSX_CONTENT_TYPE)
        .await
        .unwrap();
    // The run the mail is for (the download route checks the run still holds that version).
    let run: charlie::state::RunRecord = serde_json::from_value(serde_json::json!({
        "run_id": "big-workbook", "report": "call_centre_daily", "period": "2024-03-14",
        "status": "built", "rows": 1, "workbook_key": key, "workbook_version": stored.version_id,
        "started_at": "", "finished_at": "",
    }))
    .unwrap();
    cx.records()
        .put_record(&RecordKey::run("big-workbook"), &run, None)
        .await
        .unwrap();
    let request = mail_request("big-workbook", "call_centre_daily", key, stored.version_id);
    let queue: &dyn WorkQueue = &cx.queue("mail");
    queue.send(&request, "big-workbook").await.unwrap();
    cx.cloud.runner.drain().await.unwrap();
    let sent = cx.ses_mail().await;
    assert_eq!(sent.len(), before + 1);
    for _ in 0..2 {
        queue.send(&request, "big-workbook").await.unwrap();
    }
    cx.cloud.runner.drain().await.unwrap();
    assert_eq!(cx.ses_mail().await.len(), before + 1);
    let mail = &sent[before];
    assert!(
        mail.raw.len() < 1_000_000,
        "no 12 MB attachment in the mail"
    );
    let msg = parse_mail(&mail.raw);
    assert_eq!(msg.attachment_count(), 0);
    let text = msg.body_text(0).unwrap();
    assert!(text.contains("too large to attach"), "{text}");
    let link = text
        .lines()
        .find(|l| l.starts_with("http"))
        .expect("the download link");
    // The link is the API's download route with a signed token: no credentials of the
    // mailer's (whose role session ends in hours) are in it.
    assert!(
        link.starts_with(&cx.cloud.api_url("/v1/links/")) && !link.contains("X-Amz"),
        "{link}"
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = no_redirects.get(link).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 302);
    let fresh = answer.headers()["location"].to_str().unwrap().to_owned();
    // Presigned now, by the API, for minutes: valid whatever became of the mailer's keys.
    assert!(fresh.contains("X-Amz-Expires=300"), "{fresh}");
    let downloaded = reqwest::get(link).await.unwrap().bytes().await.unwrap();
    assert_eq!(&downloaded[..], &big[..], "the link serves the workbook");
    // One character changed: refused, with a page that says why.
    let mut altered = link.to_owned();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    let refused = no_redirects.get(&altered).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let page = refused.text().await.unwrap();
    assert!(page.contains("cannot be used"), "{page}");
}

/// A bounce, as the configuration set publishes it through SNS (the emulator cannot bounce a
/// mail), marks the delivery bounced; a later delivery event does not lower that.
async fn an_ses_bounce_marks_the_delivery_and_is_never_lowered(cx: &Ctx) {
    let before = cx.ses_mail().await.len();
    let run = cx
        .run_request("call_centre_daily", "2024-03-14", Some("bounced-run"))
        .await
        .unwrap();
    assert_eq!(run["status"], "built", "{run}");
    cx.cloud.runner.drain().await.unwrap();
    let sent = cx.ses_mail().await;
    assert_eq!(sent.len(), before + 1);
    let ses_id = sent[before].id.clone();
    let ses_event = |event_type: &str| {
        let mut event = serde_json::json!({
            "eventType": event_type,
            "mail": {
                "timestamp": "2024-03-15T06:00:01.000Z",
                "source": "reports@charlie.example",
                "messageId": ses_id,
                "destination": ["ops-leads@contoso.example", "floor-managers@contoso.example"],
            },
        });
        if event_type == "Bounce" {
            event["bounce"] = serde_json::json!({
                "bounceType": "Permanent", "bounceSubType": "General",
                "bouncedRecipients": [{
                    "emailAddress": "ops-leads@contoso.example", "action": "failed",
                    "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }],
                "timestamp": "2024-03-15T06:01:00.000Z", "feedbackId": "0100018e-bounce-1",
            });
        }
        serde_json::json!({
            "Type": "Notification",
            "MessageId": format!("sns-{event_type}"),
            "TopicArn": "arn:aws:sns:eu-west-2:123456789012:charlie-local-ses-events",
            "Message": event.to_string(),
            "Timestamp": "2024-03-15T06:01:01.000Z",
            "SignatureVersion": "1",
        })
    };
    let status = || async {
        let link: SesMessage = cx
            .records()
            .get_record(&RecordKey::ses_message(&ses_id))
            .await
            .unwrap()
            .expect("the mail's delivery is indexed by its SES message id");
        assert_eq!(link.run_id, "bounced-run");
        cx.records()
            .get_record(&RecordKey::delivery_status(&link.delivery))
            .await
            .unwrap()
            .map(|s: DeliveryNews| s.status.to_string())
    };
    let events: &dyn WorkQueue = &cx.queue("ses_events");
    events.send(&ses_event("Bounce"), "bounce").await.unwrap();
    assert_eq!(cx.cloud.runner.drain().await.unwrap().failures, 0);
    assert_eq!(status().await.as_deref(), Some("bounced"));
    events
        .send(&ses_event("Delivery"), "delivery")
        .await
        .unwrap();
    cx.cloud.runner.drain().await.unwrap();
    assert_eq!(status().await.as_deref(), Some("bounced"));
}

/// An export whose header lacks the dataset's key column: quarantined with its reason.
fn unusable_export() -> FakeMessage {
    FakeMessage {
        id: "AAMkAGI2TG93AAA=broken".into(),
        subject: "IB calls export 2024-03-15".into(),
        from_name: "Dialer Exports".into(),
        from_address: "exports@dialer.example".into(),
        received: "2024-03-15T12:00:00Z".into(),
        attachments: vec![FakeAttachment {
            name: "ib_calls_2024-03-15.csv".into(),
            content_type: "text/csv".into(),
            bytes: b"agent_id,queue\r\nA1,Sales\r\n".to_vec(),
        }],
        authentication_results: None,
    }
}

/// Where ingest writes the reason it quarantined [`unusable_export`] for.
const UNUSABLE_REASON: &str =
    "quarantine/ib_calls/2024-03-15/AAMkAGI2TG93AAA=broken/ib_calls_2024-03-15.csv.reason.json";

/// A quarantined file for the scenarios that show one: [`unusable_export`]'s, as
/// `an_unusable_attachment_is_quarantined_with_its_reason` leaves it (made here when that
/// scenario has not run).
async fn ensure_quarantined(cx: &Ctx) {
    if cx.cloud.object(UNUSABLE_REASON).await.is_ok() {
        return;
    }
    cx.cloud.graph.deliver(unusable_export());
    let (_, drained) = cx.cloud.poll(at(FIRST_POLL)).await.unwrap();
    assert_eq!(drained.failures, 0);
    assert!(cx.cloud.object(UNUSABLE_REASON).await.is_ok());
}

/// The mail counts as handled: no retry loop for bad input.
async fn an_unusable_attachment_is_quarantined_with_its_reason(cx: &Ctx) {
    cx.cloud.graph.deliver(unusable_export());
    let (poll, drained) = cx.cloud.poll(at(FIRST_POLL)).await.unwrap();
    assert_eq!(
        poll["queued"], 1,
        "only the new mail: the delta link was kept"
    );
    assert_eq!(drained.failures, 0, "no retry loop for bad input");
    let reason = cx.cloud.object(UNUSABLE_REASON).await.unwrap();
    let reason: serde_json::Value = serde_json::from_slice(&reason).unwrap();
    assert!(
        reason["reason"].as_str().unwrap().contains("call_id"),
        "{reason}"
    );
}

/// The branch's mail server, whose Authentication-Results the scenarios' relays trust.
const BRANCH_MX: &str = "mx.branch.example";

/// A raw export mail as a relay uploads it (8bit CSV, CRLF lines), with the pass the branch's
/// mail server wrote on receiving it.
fn raw_export_mail(message_id: &str, day: &str, n: usize) -> Vec<u8> {
    let csv = String::from_utf8(export(day, n)).unwrap();
    format!(
        "Authentication-Results: {BRANCH_MX}; spf=pass smtp.mailfrom=dialer.example; dmarc=pass (p=reject) header.from=dialer.example\r\n\
         From: Dialer Exports <exports@dialer.example>\r\nTo: ops@branch.example\r\n\
         Date: Thu, 2 Apr 2024 10:00:00 +0000\r\nSubject: IB calls export {day}\r\n\
         Message-ID: <{message_id}@dialer.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
         Content-Type: text/plain\r\n\r\nExport attached.\r\n--b\r\n\
         Content-Type: text/csv; name=\"ib_calls_{day}.csv\"\r\n\
         Content-Disposition: attachment; filename=\"ib_calls_{day}.csv\"\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{}\r\n--b--\r\n",
        csv.replace('\n', "\r\n").trim_end()
    )
    .into_bytes()
}

/// A raw mail put in `inbox/relay/{relay}/{sha256}.eml` reaches ingest through the bucket's
/// event notification (Terraform's, on the emulator) in S3's own shape: its rows are stored
/// once though S3 announces it twice, and a file cut short is quarantined whole with why.
async fn relay_mail_in_the_inbox_reaches_ingest_by_s3_notification_once(cx: &Ctx) {
    use charlie::object_keys::{quarantined_mail, relay_inbox};
    use charlie::raw_mail::content_id;
    let relay = charlie::state::RelayRecord {
        trusted_authserv_ids: vec![BRANCH_MX.into()],
        ..charlie::state::RelayRecord::new(
            charlie::contract::RelayId::parse("branch-e2e").unwrap(),
            None,
            "e2e",
        )
    };
    cx.records()
        .put_record(&RecordKey::relay("branch-e2e"), &relay, None)
        .await
        .unwrap();
    let mail = raw_export_mail("relay-e2e-1", "2024-04-02", 7);
    let sha = content_id(&mail);
    for _ in 0..2 {
        cx.objects
            .put(
                &relay_inbox("branch-e2e", &sha),
                mail.clone(),
                "message/rfc822",
            )
            .await
            .unwrap();
    }
    let cut = std::fs::read(charlie_local::project::root().join("events/relay/bad-truncated.eml"))
        .unwrap();
    let cut_sha = content_id(&cut);
    cx.objects
        .put(&relay_inbox("branch-e2e", &cut_sha), cut, "message/rfc822")
        .await
        .unwrap();
    let drained = cx.cloud.runner.drain().await.unwrap();
    assert!(
        drained.messages >= 3,
        "S3 announced each upload: {drained:?}"
    );
    // The two announcements of the one mail may be read by two invocations at once: the second
    // then meets the first's claim in progress and is retried (as on AWS), never ingested twice.
    assert!(
        drained.failures <= 1,
        "only a copy met while the other held its claim is retried: {drained:?}"
    );
    assert!(
        cx.dead_letters("inbound").await.is_empty(),
        "S3's events are read"
    );
    assert_eq!(cx.rows_of("ib_calls", "2024-04-02").await, 7);
    let outcomes = cx
        .records()
        .outcomes_of_mail("relay/branch-e2e", &sha)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!((outcomes[0].rows_new, outcomes[0].rows_duplicate), (7, 0));
    let reason = cx
        .cloud
        .object(&format!(
            "{}.reason.json",
            quarantined_mail("branch-e2e", &cut_sha)
        ))
        .await
        .unwrap();
    let reason: serde_json::Value = serde_json::from_slice(&reason).unwrap();
    assert!(
        reason["reason"].as_str().unwrap().contains("cut short"),
        "{reason}"
    );
}

/// A relay made with `charlie relay create` (its key in a file), its work folder, and the real
/// `charlie-relay` binary run with a config whose `[source]` the scenario gives.
struct RelayRig {
    id: String,
    key: String,
    admin: String,
    api: String,
    work: std::path::PathBuf,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    /// Run the Windows build under this Wine prefix instead of the Linux binary.
    wine: Option<charlie_local::wine::Wine>,
    /// The Secret Service its Linux build's keyring is.
    secret_service: Option<charlie_local::keyring::SecretService>,
}

impl RelayRig {
    /// A relay `id` with these top-level `settings` and the `[source]` that `source` makes of
    /// its work folder.
    async fn new(
        cx: &Ctx,
        id: &str,
        settings: &str,
        source: impl FnOnce(&std::path::Path) -> String,
    ) -> RelayRig {
        let admin = cx
            .key(
                &format!("{id}-admin"),
                charlie::stages::api::keys::Scope::Admin,
            )
            .await;
        let work = charlie_local::project::target_dir()
            .join(format!("charlie/relay-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let source = source(&work);
        let mut rig = RelayRig {
            id: id.into(),
            key: String::new(),
            admin,
            api: cx.cloud.api_url(""),
            config: work.join("relay.toml"),
            log: work.join("relay.log"),
            work,
            wine: None,
            secret_service: None,
        };
        let created: serde_json::Value = serde_json::from_str(&rig.charlie(&[
            "--json",
            "relay",
            "create",
            id,
            "--trust-authserv-id",
            BRANCH_MX,
        ]))
        .unwrap();
        rig.key = created["key"].as_str().unwrap().to_owned();
        cx.keys_made.lock().unwrap().push(rig.key.clone());
        std::fs::write(rig.work.join("key"), format!("{}\n", rig.key)).unwrap();
        std::fs::write(
            &rig.config,
            format!(
                "api = \"{}\"\nkey_file = \"{}\"\njournal = \"{}\"\n{settings}\n[source]\n{source}\n",
                rig.api,
                rig.work.join("key").display(),
                rig.work.join("journal.redb").display(),
            ),
        )
        .unwrap();
        rig
    }

    /// `charlie --api … ARGS` with an admin key: its stdout (it must succeed).
    fn charlie(&self, args: &[&str]) -> String {
        let out =
            std::process::Command::new(charlie_local::project::target_dir().join("debug/charlie"))
                .args(["--api", &self.api])
                .args(args)
                .env("CHARLIE_API_KEY", &self.admin)
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "charlie {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `charlie-relay ARGS` (the Linux build, or the Windows one under Wine), with the rig's
    /// keyring.
    fn relay_bare(&self, args: &[&str]) -> std::process::Command {
        let mut c = match &self.wine {
            None => std::process::Command::new(
                charlie_local::project::target_dir().join("debug/charlie-relay"),
            ),
            Some(wine) => wine.command(&charlie_local::wine::relay_exe().unwrap()),
        };
        match &self.secret_service {
            Some(s) => c.env(charlie_local::keyring::BUS_VARIABLE, s.bus_address()),
            None => c.env_remove(charlie_local::keyring::BUS_VARIABLE),
        };
        c.args(args);
        c
    }

    /// `charlie-relay keyring set NAME` given `secret` on stdin (it must succeed).
    fn keyring_set(&self, name: &str, secret: &str) -> String {
        use std::io::Write;
        let mut child = self
            .relay_bare(&["keyring", "set", name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{secret}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "keyring set {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The config with `from` (a line of it) put `to` instead.
    fn reconfigure(&self, from: &str, to: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let start = config
            .find(from)
            .unwrap_or_else(|| panic!("no {from:?} in {config}"));
        let end = start + config[start..].find('\n').unwrap();
        std::fs::write(
            &self.config,
            format!("{}{to}{}", &config[..start], &config[end..]),
        )
        .unwrap();
    }

    /// `charlie-relay ARGS --config …`, its log appended to `relay.log`.
    fn relay(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.relay_bare(args);
        c.arg("--config")
            .arg(&self.config)
            .env_remove("CHARLIE_RELAY_KEY")
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            );
        c
    }

    /// `charlie-relay check`'s report (it must pass).
    fn check(&self) -> String {
        let checked = self.relay(&["check"]).output().unwrap();
        let said = String::from_utf8_lossy(&checked.stdout).into_owned();
        assert!(checked.status.success(), "{said}");
        assert!(said.contains(&format!("knows relay {}", self.id)), "{said}");
        said
    }

    fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The relay's log is JSON lines holding no part of its key (as it is, in base64, URL- or
    /// JSON-escaped) and no upload URL.
    fn assert_log_clean(&self) {
        let logged = self.logged();
        assert!(
            !logged.contains(&self.key[self.key.len() - 20..]),
            "the relay logs no part of its key"
        );
        for (form, text) in encoded_forms(&self.key) {
            assert!(!logged.contains(&text), "the relay logs its key ({form})");
        }
        assert!(!logged.contains("X-Amz-Signature"), "nor an upload URL");
        for line in logged.lines() {
            let _: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a relay log line is not JSON ({e}): {line}"));
        }
    }

    /// The relay's uploads in the inbox.
    async fn uploads(&self, cx: &Ctx) -> Vec<charlie::ports::ObjectInfo> {
        cx.objects
            .list(&format!("inbox/relay/{}/", self.id), None, 1000)
            .await
            .unwrap()
    }

    /// The relay's uploads in the inbox, each checked to have been put once (one S3 version).
    async fn uploaded_once(&self, cx: &Ctx) -> usize {
        let uploaded = self.uploads(cx).await;
        for o in &uploaded {
            assert_eq!(
                cx.objects.versions(&o.key).await.unwrap().len(),
                1,
                "{} sent twice",
                o.key
            );
        }
        uploaded.len()
    }

    /// Waits (at most a minute) until the inbox holds `n` of the relay's uploads.
    async fn wait_for_uploads(&self, cx: &Ctx, n: usize) {
        let started = std::time::Instant::now();
        loop {
            let have = self.uploads(cx).await.len();
            if have >= n {
                return;
            }
            assert!(
                started.elapsed().as_secs() < 60,
                "{have} of {n} uploads after a minute: {}",
                self.logged()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// `charlie-relay` (the real binary) takes a drop folder of `.eml` files to the inbox through
/// the control API's signed upload route and presigned S3 PUTs: the relay is made with `charlie
/// relay create`, checked with `charlie-relay check`, killed (SIGKILL) in the middle of its
/// batch and started again; every mail is then in the inbox exactly once (one S3 version each),
/// its rows stored once, a mail cut short is in `failed/` with its reason, a second copy is not
/// sent, and once revoked the relay is refused and sends nothing.
async fn a_relay_killed_mid_batch_uploads_its_drop_folder_once(cx: &Ctx) {
    let rig = RelayRig::new(
        cx,
        "branch-drop",
        "poll_seconds = 1\nmax_uploads_per_second = 4\n",
        |work| {
            format!(
                "kind = \"folder\"\npath = \"{}\"\nsettle_seconds = 0",
                work.join("drop").display()
            )
        },
    )
    .await;
    let drop = rig.work.join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let days: Vec<String> = (3..=8).map(|d| format!("2024-04-0{d}")).collect();
    for (i, day) in days.iter().enumerate() {
        std::fs::write(
            drop.join(format!("export-{i}.eml")),
            raw_export_mail(&format!("drop-{i}"), day, 4),
        )
        .unwrap();
    }
    std::fs::write(
        drop.join("export-0-copy.eml"),
        raw_export_mail("drop-0", &days[0], 4),
    )
    .unwrap();
    std::fs::copy(
        charlie_local::project::root().join("events/relay/bad-truncated.eml"),
        drop.join("zz-cut.eml"),
    )
    .unwrap();
    let relay = |args: &[&str]| rig.relay(args);
    let log = rig.log.clone();
    let charlie = |args: &[&str]| rig.charlie(args);
    let said = rig.check();
    assert!(said.contains("8 .eml file(s) waiting"), "{said}");

    // Killed once a few mails are through, before the last.
    let mut running = relay(&["run"]).spawn().unwrap();
    let done = drop.join("done");
    let count = |dir: &std::path::Path| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                .count()
        })
    };
    let started = std::time::Instant::now();
    while count(&done) < 2 {
        assert!(
            started.elapsed().as_secs() < 60,
            "the relay sent nothing: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    running.kill().unwrap();
    running.wait().unwrap();
    let before = count(&done);
    assert!(before < 7, "killed mid-batch: {before} of 7 done");

    let again = relay(&["run", "--once"]).status().unwrap();
    assert!(
        again.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(count(&drop), 0, "every file settled");
    assert_eq!(count(&done), 7);
    let reason = std::fs::read_to_string(drop.join("failed/zz-cut.eml.reason.txt")).unwrap();
    assert!(reason.contains("cut short"), "{reason}");
    assert!(done.join("export-0.eml").exists() && done.join("export-0-copy.eml").exists());

    // In the inbox once each: one S3 version per mail, nothing for the copy.
    assert_eq!(rig.uploaded_once(cx).await, 6);
    cx.cloud.runner.drain().await.unwrap();
    for day in &days {
        assert_eq!(cx.rows_of("ib_calls", day).await, 4, "{day}");
    }
    let listed: serde_json::Value =
        serde_json::from_str(&charlie(&["--json", "relay", "list"])).unwrap();
    let me = listed["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "branch-drop")
        .unwrap();
    assert!(
        me["last_seen_at"].is_string() && me["revoked_at"].is_null(),
        "{listed}"
    );
    assert!(charlie(&["relay", "list"]).contains("branch-drop"));

    // Revoked: refused by name, and the mail waits in the folder.
    charlie(&["relay", "revoke", "branch-drop"]);
    std::fs::write(
        drop.join("late.eml"),
        raw_export_mail("drop-late", "2024-04-09", 2),
    )
    .unwrap();
    let refused = relay(&["run", "--once"]).status().unwrap();
    assert!(!refused.success());
    assert!(drop.join("late.eml").exists());
    let logged = rig.logged();
    assert!(logged.contains("was revoked"), "{logged}");
    rig.assert_log_clean();
    let _ = std::fs::remove_dir_all(&rig.work);
}

/// The relay's Windows build (`charlie-relay.exe` for x86_64-pc-windows-gnu) run under Wine,
/// its key stored with `charlie-relay keyring set` in Wine's Credential Manager and read from
/// there: `check` passes, one pass over a drop folder uploads each mail once through the signed API
/// and presigned PUTs (its journal a redb file on Windows' file API), a mail cut short goes to
/// `failed\` with its reason, a second pass sends nothing, and with an Outlook source `check`
/// says Outlook is not installed.
async fn the_relays_windows_build_under_wine_uploads_a_drop_folder_once(cx: &Ctx) {
    let mut rig = RelayRig::new(cx, "branch-wine", "poll_seconds = 1\n", |work| {
        format!(
            "kind = \"folder\"\npath = \"{}\"\nsettle_seconds = 0",
            work.join("drop").display()
        )
    })
    .await;
    rig.wine = Some(charlie_local::wine::Wine::start().unwrap());
    // The key from Windows' Credential Manager, not the file.
    let stored = rig.keyring_set("branch-wine", &rig.key);
    assert!(stored.contains("Windows Credential Manager"), "{stored}");
    std::fs::remove_file(rig.work.join("key")).unwrap();
    rig.reconfigure("key_file = ", "key_keyring = \"branch-wine\"");
    let drop = rig.work.join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let days = ["2024-04-21", "2024-04-22", "2024-04-23"];
    for (i, day) in days.iter().enumerate() {
        std::fs::write(
            drop.join(format!("export-{i}.eml")),
            raw_export_mail(&format!("wine-{i}"), day, 3),
        )
        .unwrap();
    }
    std::fs::copy(
        charlie_local::project::root().join("events/relay/bad-truncated.eml"),
        drop.join("zz-cut.eml"),
    )
    .unwrap();
    let said = rig.check();
    assert!(said.contains("4 .eml file(s) waiting"), "{said}");
    assert!(
        said.contains("from the keyring entry \"branch-wine\" in Windows Credential Manager"),
        "{said}"
    );

    let once = rig.relay(&["run", "--once"]).status().unwrap();
    assert!(once.success(), "{}", rig.logged());
    assert_eq!(rig.uploaded_once(cx).await, 3);
    let reason = std::fs::read_to_string(drop.join("failed/zz-cut.eml.reason.txt")).unwrap();
    assert!(reason.contains("cut short"), "{reason}");
    cx.cloud.runner.drain().await.unwrap();
    for day in days {
        assert_eq!(cx.rows_of("ib_calls", day).await, 3, "{day}");
    }
    // The same mails dropped again: known to the journal, nothing sent.
    for i in 0..2 {
        std::fs::copy(
            drop.join(format!("done/export-{i}.eml")),
            drop.join(format!("again-{i}.eml")),
        )
        .unwrap();
    }
    let again = rig.relay(&["run", "--once"]).status().unwrap();
    assert!(again.success(), "{}", rig.logged());
    assert_eq!(rig.uploaded_once(cx).await, 3);
    assert!(rig.logged().contains("uploaded before: not sent again"));
    rig.assert_log_clean();

    // An Outlook source where there is no Outlook: check fails and says why.
    let config = std::fs::read_to_string(&rig.config).unwrap();
    let source = config.find("[source]").unwrap();
    std::fs::write(
        &rig.config,
        format!(
            "{}[source]\nkind = \"outlook\"\nfolder = \"Inbox/Exports\"\n",
            &config[..source]
        ),
    )
    .unwrap();
    let checked = rig.relay(&["check"]).output().unwrap();
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{said}");
    assert!(
        said.contains("FAIL  source")
            && said.contains("Outlook is not installed")
            && said.contains("0x800401F3"),
        "{said}"
    );
    assert!(said.contains(&format!("knows relay {}", rig.id)), "{said}");
    let _ = std::fs::remove_dir_all(&rig.work);
}

/// `charlie-relay` reads an IMAP folder of a real Dovecot (TLS with the server's certificate as
/// the CA, the password from the OS keyring: a throwaway GNOME Keyring on its own D-Bus,
/// stored there with `charlie-relay keyring set`): the mail there is uploaded once, a mail delivered while it
/// runs is taken at once through IDLE (the poll interval is ten minutes), the folder rebuilt
/// (a new UIDVALIDITY, the same mails and one more) sends only the new one, and SIGTERM stops
/// it cleanly. The mailbox is read-only to it: every mail stays.
async fn a_relay_reads_an_imap_folder_by_uid_once_with_idle(cx: &Ctx) {
    let dovecot = charlie_local::dovecot::Dovecot::start().unwrap();
    dovecot.create_folder("Exports").unwrap();
    let mails: Vec<Vec<u8>> = (10..=14)
        .map(|d| raw_export_mail(&format!("imap-{d}"), &format!("2024-04-{d}"), 3))
        .collect();
    for m in &mails[..3] {
        dovecot.deliver("Exports", m).unwrap();
    }
    // Not an export: no attachment, so not sent.
    dovecot
        .deliver("Exports", b"From: someone@branch.example\r\nSubject: lunch\r\nMessage-ID: <lunch@branch.example>\r\n\r\nAt noon?\r\n")
        .unwrap();
    let mut rig = RelayRig::new(cx, "branch-imap", "poll_seconds = 600\n", |_| {
        format!(
            "kind = \"imap\"\nhost = \"localhost\"\nport = {}\nca_file = \"{}\"\nuser = \"{}\"\npassword_keyring = \"branch-imap\"\nfolder = \"Exports\"",
            dovecot.port(),
            dovecot.ca_file().display(),
            charlie_local::dovecot::USER,
        )
    })
    .await;
    // Not in the keyring yet: check says so, and how to put it there.
    rig.secret_service = Some(charlie_local::keyring::SecretService::start().unwrap());
    let checked = rig.relay(&["check"]).output().unwrap();
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        !checked.status.success() && said.contains("charlie-relay keyring set branch-imap"),
        "{said}"
    );
    let stored = rig.keyring_set("branch-imap", charlie_local::dovecot::Dovecot::password());
    assert!(stored.contains("Secret Service"), "{stored}");
    let said = rig.check();
    assert!(
        said.contains("4 mail(s)") && said.contains("IDLE offered"),
        "{said}"
    );

    let once = rig.relay(&["run", "--once"]).status().unwrap();
    assert!(once.success(), "{}\n{}", rig.logged(), dovecot.log());
    assert_eq!(rig.uploaded_once(cx).await, 3);
    assert!(rig.logged().contains("the mail has no attachment"));

    // Running: a new mail is seen through IDLE, long before the 10-minute poll.
    let mut running = rig.relay(&["run"]).spawn().unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    dovecot.deliver("Exports", &mails[3]).unwrap();
    rig.wait_for_uploads(cx, 4).await;
    assert!(rig.logged().contains("IDLE: new mail"), "{}", rig.logged());
    // The folder rebuilt: UIDs start again under a new UIDVALIDITY; only the new mail goes.
    dovecot.delete_folder("Exports").unwrap();
    dovecot.create_folder("Exports").unwrap();
    for m in &mails {
        dovecot.deliver("Exports", m).unwrap();
    }
    // The deletion ends the relay's IDLE (or its session): it reconnects, finds the new
    // UIDVALIDITY and reads the folder from the start.
    rig.wait_for_uploads(cx, 5).await;
    assert_eq!(rig.uploaded_once(cx).await, 5);
    assert!(
        rig.logged().contains("UIDVALIDITY changed"),
        "{}",
        rig.logged()
    );
    // SIGTERM: it stops between mails, exit 0.
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &running.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = running.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", rig.logged());
    assert!(rig.logged().contains("charlie-relay stopped"));
    // The same server by STARTTLS (its port 143's role): TLS before the login, the same folder;
    // implicit TLS spoken to that port fails at once, saying so.
    rig.reconfigure(
        "port = ",
        &format!("port = {}\ntls = \"starttls\"", dovecot.starttls_port()),
    );
    let said = rig.check();
    assert!(
        said.contains("(STARTTLS)") && said.contains("5 mail(s)"),
        "{said}"
    );
    rig.reconfigure("tls = ", "tls = \"tls\"");
    let checked = rig.relay(&["check"]).output().unwrap();
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        !checked.status.success() && said.contains("FAIL  source") && said.contains("TLS with"),
        "{said}"
    );

    cx.cloud.runner.drain().await.unwrap();
    for d in 10..=14 {
        assert_eq!(
            cx.rows_of("ib_calls", &format!("2024-04-{d}")).await,
            3,
            "2024-04-{d}"
        );
    }
    rig.assert_log_clean();
    assert!(
        !rig.logged()
            .contains(charlie_local::dovecot::Dovecot::password()),
        "nor the IMAP password"
    );
    let _ = std::fs::remove_dir_all(&rig.work);
}

/// Python's aiosmtpd (a real SMTP server) on a free loopback port, storing what it takes in a
/// maildir; stopped when dropped.
struct SmtpSink {
    child: std::process::Child,
    port: u16,
    maildir: std::path::PathBuf,
}

/// An aiosmtpd handler that refuses every recipient for good, as a server does an unknown user.
const REFUSING_HANDLER: &str = "class Refuse:\n    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):\n        return '550 5.1.1 <%s>: Recipient address rejected: User unknown' % address\n";

impl SmtpSink {
    fn start(dir: &std::path::Path) -> SmtpSink {
        SmtpSink::start_with(dir, None)
    }

    /// One that refuses every recipient (550).
    fn refusing(dir: &std::path::Path) -> SmtpSink {
        SmtpSink::start_with(dir, Some(REFUSING_HANDLER))
    }

    fn start_with(dir: &std::path::Path, handler: Option<&str>) -> SmtpSink {
        let python = std::env::var("CHARLIE_AIOSMTPD_PYTHON").map_or_else(
            |_| charlie_local::project::root().join(".venv-smtp/bin/python"),
            std::path::PathBuf::from,
        );
        assert!(
            python.exists(),
            "aiosmtpd is not installed at {} (scripts/test installs it)",
            python.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = dir.join(format!("smtp-maildir-{port}"));
        let mut command = std::process::Command::new(python);
        command.args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
        ]);
        match handler {
            None => command.arg("aiosmtpd.handlers.Mailbox").arg(&maildir),
            Some(code) => {
                let module = dir.join(format!("smtp_handler_{port}"));
                std::fs::create_dir_all(&module).unwrap();
                std::fs::write(module.join("handler.py"), code).unwrap();
                command.arg("handler.Refuse").env("PYTHONPATH", &module)
            }
        };
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed().as_secs() < 20, "aiosmtpd did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        SmtpSink {
            child,
            port,
            maildir,
        }
    }

    /// Every message it took, raw.
    fn received(&self) -> Vec<Vec<u8>> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| std::fs::read(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A report with `transport = "relay"` (`branch_calls_daily`) is queued for its relay, which
/// fetches it (signed), sends the mailer's MIME through a real SMTP server (aiosmtpd) to the
/// report's recipients and acknowledges it: the delivery goes from `queued` to `relayed`, and a
/// second pass, or the same run mailed again, sends nothing. Through a server that refuses the
/// recipient (550) the next run's delivery is `refused` with the server's answer, once.
async fn a_report_for_a_relay_goes_out_through_its_smtp_server_once(cx: &Ctx) {
    let rig = RelayRig::new(cx, "branch-out", "poll_seconds = 600\n", |work| {
        format!(
            "kind = \"folder\"\npath = \"{}\"",
            work.join("drop").display()
        )
    })
    .await;
    let smtp = SmtpSink::start(&rig.work);
    let mut config = std::fs::read_to_string(&rig.config).unwrap();
    config.push_str(&format!(
        "\n[outbox]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_tls = \"none\"\n",
        smtp.port
    ));
    std::fs::write(&rig.config, config).unwrap();
    let said = rig.check();
    assert!(said.contains("ok    outbox"), "{said}");

    let run = cx
        .run_request("branch_calls_daily", "2024-03-14", None)
        .await
        .unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let deliveries = |rig: &RelayRig| {
        let shown: serde_json::Value =
            serde_json::from_str(&rig.charlie(&["--json", "deliveries", &run_id])).unwrap();
        shown["deliveries"].as_array().unwrap().clone()
    };
    let before = deliveries(&rig);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(
        (
            before[0]["transport"].as_str(),
            before[0]["status"].as_str()
        ),
        (Some("relay"), Some("queued"))
    );
    assert!(
        smtp.received().is_empty(),
        "nothing is sent before the relay runs"
    );

    let once = rig.relay(&["run", "--once"]).status().unwrap();
    assert!(once.success(), "{}", rig.logged());
    let got = smtp.received();
    assert_eq!(got.len(), 1, "{}", rig.logged());
    let mail = MessageParser::default().parse(&got[0]).unwrap();
    assert_eq!(
        mail.from().unwrap().first().unwrap().address(),
        Some("reports@branch.example")
    );
    assert_eq!(
        mail.to().unwrap().first().unwrap().address(),
        Some("branch-leads@branch.example")
    );
    assert_eq!(
        mail.message_id(),
        before[0]["provider_message_id"]
            .as_str()
            .map(|m| m.trim_matches(['<', '>']))
    );
    let xlsx = mail.attachments().next().expect("the workbook is attached");
    assert!(xlsx.attachment_name().unwrap().ends_with(".xlsx"));
    let book: Xlsx<_> = Xlsx::new(Cursor::new(xlsx.contents().to_vec())).unwrap();
    let sheets = book.sheet_names();
    assert!(
        sheets.iter().any(|n| n == "Summary") && sheets.iter().any(|n| n == "ib_calls"),
        "{sheets:?}"
    );
    let after = deliveries(&rig);
    assert_eq!(after[0]["status"], "relayed", "{after:?}");

    // Nothing twice: another pass, and the same run's mail request again.
    let again = rig.relay(&["run", "--once"]).status().unwrap();
    assert!(again.success());
    cx.run_request("branch_calls_daily", "2024-03-14", Some(&run_id))
        .await
        .unwrap();
    let again = rig.relay(&["run", "--once"]).status().unwrap();
    assert!(again.success());
    assert_eq!(smtp.received().len(), 1, "sent once: {}", rig.logged());
    assert!(rig.logged().contains("outbox mail sent"));

    // A server that refuses the recipient for good (550): the relay reports it, the delivery
    // is refused with the server's answer, and the mail is off the outbox: nothing is tried
    // again. Until the relay runs, `charlie relay list` shows it waiting.
    let refusing = SmtpSink::refusing(&rig.work);
    rig.reconfigure("smtp_port = ", &format!("smtp_port = {}", refusing.port));
    let run = cx
        .run_request("branch_calls_daily", "2024-03-14", None)
        .await
        .unwrap();
    let refused_run = run["run_id"].as_str().unwrap().to_owned();
    assert_ne!(refused_run, run_id);
    assert!(
        rig.charlie(&["relay", "list"]).contains("1 waiting since"),
        "{}",
        rig.charlie(&["relay", "list"])
    );
    let once = rig.relay(&["run", "--once"]).status().unwrap();
    assert!(once.success(), "{}", rig.logged());
    let shown: serde_json::Value =
        serde_json::from_str(&rig.charlie(&["--json", "deliveries", &refused_run])).unwrap();
    let d = &shown["deliveries"][0];
    assert_eq!(d["status"], "refused", "{shown}");
    assert_eq!(d["status_detail"]["relay"], "branch-out", "{shown}");
    let why = d["status_detail"]["refusal"].as_str().unwrap();
    assert!(why.contains("550") && why.contains("User unknown"), "{why}");
    assert!(
        rig.charlie(&["deliveries", &refused_run])
            .contains("refused (the SMTP server refused it")
    );
    assert!(!rig.charlie(&["relay", "list"]).contains("waiting since"));
    let again = rig.relay(&["run", "--once"]).status().unwrap();
    assert!(again.success());
    assert_eq!(
        rig.logged()
            .matches("outbox mail refused by its sender")
            .count(),
        1,
        "{}",
        rig.logged()
    );
    assert!(refusing.received().is_empty() && smtp.received().len() == 1);
    rig.assert_log_clean();
    drop((smtp, refusing));
    let _ = std::fs::remove_dir_all(&rig.work);
}

/// The dashboard driven in Debian's headless Chromium (`tests/browser/dashboard.mjs`, through
/// playwright-core): signs in, starts a run and waits until its mail shows as sent while the
/// queues are drained as Lambda would, opens a quarantine reason (the file quarantined by the
/// scenario before), redrives a dead letter; screenshots go to
/// `target/charlie/screenshots/{row store}/`.
/// Each dataset's `retain_days` reaches the deployment: the bucket's lifecycle expires its raw
/// and quarantined files and each report's workbooks (replaced versions on their own rule); the
/// rows table has its TTL and each stored row its `expires_at` (DynamoDB), or the daily sweep
/// deletes the rows of days past it (PostgreSQL).
async fn retention_expires_rows_and_files_as_the_definitions_say(cx: &Ctx) {
    let rules = cx
        .cloud
        .clients
        .s3
        .get_bucket_lifecycle_configuration()
        .bucket(&cx.cloud.outputs.bucket)
        .send()
        .await
        .unwrap()
        .rules
        .unwrap_or_default();
    let by_prefix = |prefix: &str| {
        rules
            .iter()
            .find(|r| r.filter.as_ref().and_then(|f| f.prefix.as_deref()) == Some(prefix))
            .unwrap_or_else(|| panic!("no lifecycle rule on {prefix}: {rules:#?}"))
    };
    for (prefix, days, noncurrent) in [
        ("raw/ib_calls/", 730, 1),
        ("quarantine/ib_calls/", 730, 1),
        ("raw/dials/", 400, 1),
        ("quarantine/dials/", 400, 1),
        ("reports/call_centre_daily/", 400, 30),
    ] {
        let rule = by_prefix(prefix);
        assert_eq!(
            rule.status,
            aws_sdk_s3::types::ExpirationStatus::Enabled,
            "{prefix}"
        );
        assert_eq!(
            rule.expiration.as_ref().and_then(|e| e.days),
            Some(days),
            "{prefix}"
        );
        assert_eq!(
            rule.noncurrent_version_expiration
                .as_ref()
                .and_then(|e| e.noncurrent_days),
            Some(noncurrent),
            "{prefix}"
        );
    }
    assert!(
        rules
            .iter()
            .all(|r| r.filter.as_ref().and_then(|f| f.prefix.as_deref())
                != Some("reports/call_centre_weekly/")),
        "the weekly report sets no retain_days: its workbooks are kept"
    );
    let replaced = by_prefix("reports/");
    assert_eq!(
        replaced
            .noncurrent_version_expiration
            .as_ref()
            .and_then(|e| e.noncurrent_days),
        Some(30)
    );

    let ds = &cx.defs.datasets["ib_calls"];
    let sweeps: Vec<_> = cx
        .cloud
        .runner
        .deployment
        .schedules
        .iter()
        .filter(|s| s.name.ends_with("-retention"))
        .collect();
    match cx.cloud.row_store {
        RowStoreKind::DynamoDb => {
            let ttl = cx
                .cloud
                .clients
                .dynamodb
                .describe_time_to_live()
                .table_name(&cx.cloud.outputs.rows_table)
                .send()
                .await
                .unwrap()
                .time_to_live_description
                .unwrap();
            assert_eq!(ttl.attribute_name.as_deref(), Some("expires_at"));
            assert_eq!(
                ttl.time_to_live_status,
                Some(aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled)
            );
            let item = cx
                .cloud
                .clients
                .dynamodb
                .get_item()
                .table_name(&cx.cloud.outputs.rows_table)
                .key(
                    "pk",
                    aws_sdk_dynamodb::types::AttributeValue::S("ib_calls#2024-03-14".into()),
                )
                .key(
                    "sk",
                    aws_sdk_dynamodb::types::AttributeValue::S(
                        "99ee1bb9-6f0e-409b-bd26-6b01de3f7fb0".into(),
                    ),
                )
                .send()
                .await
                .unwrap()
                .item
                .expect("a sample row");
            let expires = ds.row_expiry("2024-03-14".parse().unwrap()).unwrap();
            assert_eq!(
                item.get("expires_at").and_then(|v| v.as_n().ok()),
                Some(&expires.timestamp().to_string())
            );
            assert!(sweeps.is_empty(), "DynamoDB needs no sweep: {sweeps:?}");
        }
        RowStoreKind::Postgres => {
            assert_eq!(sweeps.len(), 1, "one daily sweep");
            // Rows of a day long past, beside the sample's.
            let old = "call_id,agent_id,queue,started_at\nold-1,A1,Sales,2023-01-01T09:00:00\nold-2,A1,Sales,2023-01-01T10:00:00\n";
            let parsed = charlie::csv_ingest::parse_attachment(
                ds,
                old.as_bytes(),
                &charlie::csv_ingest::Origin::default(),
            )
            .unwrap();
            let rows: &dyn RowStore = cx.cloud.rows.as_ref();
            rows.store("ib_calls", ds, &parsed.rows, "e2e/old", Utc::now())
                .await
                .unwrap();
            let count = |day: &'static str| async move {
                rows.rows_for_day("ib_calls", ds, day.parse().unwrap())
                    .await
                    .unwrap()
                    .len()
            };
            assert_eq!(count("2023-01-01").await, 2);
            // The sweep of 2025-03-01: ib_calls keeps days from 2023-03-02 on.
            cx.cloud
                .runner
                .fire_schedule("-retention", at("2025-03-01T03:15:00Z"))
                .await
                .unwrap();
            let drained = cx.cloud.runner.drain().await.unwrap();
            assert_eq!((drained.messages, drained.failures), (1, 0));
            assert_eq!(count("2023-01-01").await, 0, "past retain_days: deleted");
            assert_eq!(
                count("2024-03-14").await,
                cx.expected_calls,
                "the sample's day is kept"
            );
        }
    }
}

async fn the_dashboard_works_in_a_real_browser(cx: &Ctx) {
    use charlie::stages::api::keys::Scope;
    use std::sync::atomic::{AtomicBool, Ordering};
    let root = charlie_local::project::root();
    let script = root.join("tests/browser/dashboard.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is not installed in tests/browser (scripts/test installs it: ensure_browser)"
    );
    let operator = cx.key("dashboard-operator", Scope::Operate).await;
    // A quarantined file for the intake page.
    ensure_quarantined(cx).await;
    // A dead letter to redrive: a mail request for a workbook that exists.
    cx.mail_dead_letter("dashboard-redrive", "from-the-dashboard.xlsx")
        .await;
    let mails = cx.ses_mail().await.len();
    // What Lambda's event source mappings do, while the browser works.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let drainer = {
        let (runner, stop) = (
            std::sync::Arc::clone(&cx.cloud.runner),
            std::sync::Arc::clone(&stop),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = runner.drain().await {
                    eprintln!("draining failed: {e:#}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        })
    };
    let shots = charlie_local::project::target_dir()
        .join("charlie/screenshots")
        .join(cx.cloud.row_store.name());
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new("node")
            .arg(&script)
            .env("CHARLIE_UI", format!("http://{}/ui", cx.cloud.api))
            .env("CHARLIE_UI_KEY", &operator)
            .env("CHARLIE_UI_REPORT", "call_centre_daily")
            .env("CHARLIE_UI_PERIOD", "2024-03-14")
            .env("CHARLIE_UI_LETTER", "dashboard-redrive")
            .env("CHARLIE_UI_SHOTS", &shots)
            .output(),
    )
    .await
    .expect("the browser test finished within 5 minutes")
    .expect("node runs");
    stop.store(true, Ordering::Relaxed);
    drainer.await.unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    )
    .replace(&operator, "chk_***");
    println!("{out}");
    assert!(run.status.success(), "the browser test failed:\n{out}");
    assert!(!out.contains(&operator));
    // What the browser did happened: the run's mail and the redriven one went out, once each.
    cx.cloud.runner.drain().await.unwrap();
    let sent = cx.ses_mail().await;
    assert_eq!(
        sent.len(),
        mails + 2,
        "the started run's mail and the redriven one"
    );
    assert!(
        sent[mails..].iter().any(|m| parse_mail(&m.raw)
            .subject()
            .unwrap_or("")
            .contains("dashboard-redrive")),
        "the redriven mail went out"
    );
    assert!(
        !cx.dead_letters("mail")
            .await
            .iter()
            .any(|m| m.body().unwrap_or("").contains("dashboard-redrive")),
        "the letter left the DLQ"
    );
    for shot in [
        "02-overview",
        "03-run-sent",
        "05-intake-quarantine",
        "08-redriven",
    ] {
        assert!(
            shots.join(format!("{shot}.png")).exists(),
            "no screenshot {shot}"
        );
    }
}

/// The deployment's secrets (every value in its Secrets Manager secrets: the Graph client
/// secret, the subscriptions' clientStates, the link key, the relay secret) and every API and
/// relay key the scenarios made
/// appear in no log line of the stages, no error answer of the API, no record of the state or
/// rows table and no object of the bucket; no log line carries a presigned URL's signature.
async fn no_secret_is_in_a_log_line_an_error_a_stored_record_or_an_object(cx: &Ctx) {
    use charlie::stages::api::keys::Scope;
    // Keys and answers of its own to search for (run alone, nothing else made any): refusals
    // and answers of every scope, a forged key among them.
    let read = cx.key("secrets-read", Scope::Read).await;
    let operate = cx.key("secrets-operate", Scope::Operate).await;
    let admin = cx.key("secrets-admin", Scope::Admin).await;
    for name in ["secrets-spare-1", "secrets-spare-2"] {
        cx.key(name, Scope::Read).await;
    }
    let forged = "chk_0123456789abcdef_not-a-real-secret";
    for (method, path, key, body) in [
        ("GET", "/v1/runs", None, None),
        ("GET", "/v1/runs", Some(forged), None),
        ("GET", "/v1/keys", Some(read.as_str()), None),
        ("GET", "/v1/runs/no-such-run", Some(read.as_str()), None),
        (
            "POST",
            "/v1/runs",
            Some(operate.as_str()),
            Some(serde_json::json!({"report": "no_such_report", "period": "2024-03-14"})),
        ),
        (
            "POST",
            "/v1/reprocess",
            Some(operate.as_str()),
            Some(serde_json::json!({"dataset": "ib_calls"})),
        ),
        ("GET", "/v1/keys", Some(admin.as_str()), None),
        ("GET", "/v1/audit", Some(admin.as_str()), None),
        ("GET", "/v1/health", Some(read.as_str()), None),
        ("GET", "/v1/intake", Some(read.as_str()), None),
        ("GET", "/v1/dead-letters/mail", Some(read.as_str()), None),
    ] {
        let (status, _) = cx.api(method, path, key, body).await;
        assert_ne!(status, 500, "{method} {path}");
    }
    let sm = &cx.cloud.clients.secrets;
    let mut secrets: Vec<(String, String)> = Vec::new();
    let listed = sm.list_secrets().max_results(100).send().await.unwrap();
    for entry in listed.secret_list() {
        let name = entry.name().unwrap_or_default().to_owned();
        let Ok(value) = sm.get_secret_value().secret_id(&name).send().await else {
            continue; // a secret without a value yet
        };
        let text = value.secret_string().unwrap_or_default().to_owned();
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(map)) => {
                for (k, v) in map {
                    // Names, not secrets: the app's id and the secret's end date.
                    if matches!(k.as_str(), "client_id" | "client_secret_expires_at") {
                        continue;
                    }
                    if let Some(v) = v.as_str() {
                        secrets.push((format!("{name}/{k}"), v.to_owned()));
                    }
                }
            }
            _ => secrets.push((name, text)),
        }
    }
    for key in cx.keys_made.lock().unwrap().iter() {
        // The whole key, and its secret part alone (`chk_{id}_{secret}`, `chr_{relay}_{secret}`:
        // neither id holds a `_`; a base64url secret may).
        secrets.push(("an API or relay key".into(), key.clone()));
        if let Some(secret) = key.splitn(3, '_').nth(2) {
            secrets.push((
                "an API or relay key's secret part".into(),
                secret.to_owned(),
            ));
        }
    }
    secrets.retain(|(_, v)| v.len() >= 12);
    assert!(
        secrets.iter().any(|(n, _)| n.contains("graph"))
            && secrets.iter().any(|(n, _)| n.contains("link"))
            && secrets.iter().any(|(n, _)| n.contains("downstream"))
            && secrets.iter().any(|(n, _)| n.contains("relay-signing-key")),
        "the deployment's secrets were found: {:?}",
        secrets.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    assert!(
        cx.keys_made.lock().unwrap().len() >= 5,
        "the scenarios made keys"
    );

    assert_encoded_forms_are_found_wherever_they_sit();
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    let logs = std::fs::read(&cx.log_file).unwrap();
    assert!(
        logs.len() > 10_000,
        "the stages logged ({} bytes)",
        logs.len()
    );
    // The search finds what is there: the mailbox's id is in many log lines.
    assert!(
        memchr::memmem::find(&logs, cx.mailbox_id.as_bytes()).is_some(),
        "the log search is blind"
    );
    places.push(("the stages' log".into(), logs.clone()));
    let answers = cx.answers.lock().unwrap().clone();
    assert!(
        answers.len() > 10,
        "the scenarios' answers were kept ({})",
        answers.len()
    );
    for (label, body) in answers {
        places.push((format!("the answer to {label}"), body.into_bytes()));
    }
    for table in [&cx.cloud.outputs.state_table, &cx.cloud.outputs.rows_table] {
        let mut start = None;
        loop {
            let page = cx
                .cloud
                .clients
                .dynamodb
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .unwrap();
            let text = format!("{:?}", page.items());
            places.push((format!("table {table}"), text.into_bytes()));
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
    }
    let s3 = &cx.cloud.clients.s3;
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(&cx.cloud.outputs.bucket)
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap();
        for o in page.contents() {
            let key = o.key().unwrap_or_default();
            if o.size().unwrap_or(0) > 20 * 1024 * 1024 {
                continue;
            }
            let bytes = cx.objects.get(key, None).await.unwrap();
            places.push((format!("object {key}"), bytes));
        }
        match page.next_continuation_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let mut found = Vec::new();
    for (place, bytes) in &places {
        for (name, secret) in &secrets {
            for (form, text) in encoded_forms(secret) {
                if memchr::memmem::find(bytes, text.as_bytes()).is_some() {
                    found.push(format!("{name} ({form}) in {place}"));
                }
            }
        }
    }
    if memchr::memmem::find(&logs, b"X-Amz-Signature=").is_some() {
        found.push("a presigned URL's signature in the stages' log".into());
    }
    assert!(found.is_empty(), "secrets found:\n{}", found.join("\n"));
    println!(
        "  {} secret values looked for in {} places ({} bytes of log): none found",
        secrets.len(),
        places.len(),
        logs.len()
    );
}

/// A secret as it would show when written out some way other than as it is: in base64 (either
/// alphabet, at any alignment in a longer stream: the part its own bytes alone decide),
/// percent-encoded and JSON-escaped. (form, text) pairs; the secret itself first.
fn encoded_forms(secret: &str) -> Vec<(&'static str, String)> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let mut forms = vec![("as it is", secret.to_owned())];
    for offset in 0..3 {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(secret.as_bytes());
        for (form, encoded) in [
            ("base64", STANDARD.encode(&bytes)),
            ("base64url", URL_SAFE_NO_PAD.encode(&bytes)),
        ] {
            // Drop the groups a neighbour's bytes or padding share.
            if encoded.len() > 12 {
                forms.push((form, encoded[4..encoded.len() - 4].to_owned()));
            }
        }
    }
    let url: String = secret
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    if url != secret {
        forms.push(("URL-encoded", url));
    }
    let json = serde_json::to_string(secret).unwrap();
    let json = json.trim_matches('"');
    if json != secret {
        forms.push(("JSON-escaped", json.to_owned()));
    }
    forms
}

/// The forms looked for find what they should: a secret base64-encoded inside a longer text at
/// each alignment, percent-encoded, and JSON-escaped (the search proves itself first).
fn assert_encoded_forms_are_found_wherever_they_sit() {
    use base64::Engine;
    let secret = "s3cr3t/with+odd\"chars\\ok";
    for prefix in ["", "a", "ab", "abc"] {
        let stream =
            base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{secret}tail"));
        assert!(
            encoded_forms(secret)
                .iter()
                .any(|(_, t)| stream.contains(t.as_str())),
            "{prefix:?}"
        );
    }
    let json = serde_json::to_string(&serde_json::json!({"v": secret})).unwrap();
    assert!(
        encoded_forms(secret)
            .iter()
            .any(|(f, t)| *f == "JSON-escaped" && json.contains(t.as_str()))
    );
    assert!(
        encoded_forms(secret)
            .iter()
            .any(|(f, t)| *f == "URL-encoded" && t.contains("%2F"))
    );
}

async fn a_mail_found_by_webhook_and_poll_is_ingested_once(cx: &Ctx) {
    cx.cloud
        .graph
        .deliver(new_mail("AAMkAGI2TG93AAA=day16", "2024-03-16", 3));
    assert_eq!(
        cx.cloud.graph.notify("AAMkAGI2TG93AAA=day16", 3).await,
        vec![202, 202, 202]
    );
    let drained = cx.cloud.runner.drain().await.unwrap();
    // The three notifications, and the one outcome forwarded to the downstream API, each handled
    // once. Two notifications of one mail taken by invocations at the same time: the second
    // finds the claim held, is left on the queue ("busy") and, received again, finds it done;
    // such a retry is the only failure there may be.
    assert_eq!(drained.messages - drained.failures, 4, "{drained:?}");
    assert!(drained.failures <= 2, "{drained:?}");
    assert!(cx.dead_letters("inbound").await.is_empty());
    let (poll, _) = cx.cloud.poll(at(LATER)).await.unwrap();
    assert_eq!(poll["queued"], 1, "the poller finds it too: {poll}");
    assert_eq!(cx.rows_of("ib_calls", "2024-03-16").await, 3);
    assert_eq!(
        cx.outcomes_of("AAMkAGI2TG93AAA=day16").await,
        1,
        "ingested once"
    );
}

/// webhook → lifecycle queue → poller → delta → inbound → ingest.
async fn a_missed_lifecycle_event_resyncs_the_folder(cx: &Ctx) {
    cx.cloud
        .graph
        .deliver(new_mail("AAMkAGI2TG93AAA=day17", "2024-03-17", 2));
    assert_eq!(cx.cloud.graph.lifecycle("missed").await, vec![202]);
    let drained = cx.cloud.runner.drain().await.unwrap();
    assert_eq!(drained.failures, 0);
    assert_eq!(cx.rows_of("ib_calls", "2024-03-17").await, 2);
    assert_eq!(cx.outcomes_of("AAMkAGI2TG93AAA=day17").await, 1);
}

async fn subscriptions_are_renewed_near_expiry_and_on_reauthorization(cx: &Ctx) {
    let sub = cx.cloud.graph.subscriptions()[0].clone();
    let renewals = sub.renewals;
    let soon = Utc::now() + chrono::Duration::hours(1);
    cx.cloud.graph.set_subscription_expiry(&sub.id, soon);
    let key = RecordKey::<SubscriptionRecord>::subscription(&cx.mailbox_id, "inbox");
    let mut record = cx.records().get_record(&key).await.unwrap().unwrap();
    assert_eq!(record.id, sub.id);
    record.expires_at = soon;
    cx.records().put_record(&key, &record, None).await.unwrap();
    let (poll, _) = cx.cloud.poll(at(LATER)).await.unwrap();
    assert_eq!(poll["subscriptions_renewed"], 1, "{poll}");
    let renewed = cx.cloud.graph.subscriptions();
    assert_eq!(
        (renewed.len(), renewed[0].id.as_str(), renewed[0].renewals),
        (1, sub.id.as_str(), renewals + 1)
    );
    assert!(renewed[0].expires > Utc::now() + chrono::Duration::days(6));
    let (poll, _) = cx.cloud.poll(at(LATER)).await.unwrap();
    assert_eq!(
        poll["subscriptions_renewed"], 0,
        "not again while far from expiry"
    );
    assert_eq!(
        cx.cloud.graph.lifecycle("reauthorizationRequired").await,
        vec![202]
    );
    assert_eq!(cx.cloud.runner.drain().await.unwrap().failures, 0);
    assert_eq!(cx.cloud.graph.subscriptions()[0].renewals, renewals + 2);
}

/// The poller subscribes again (new id, new clientState) and resyncs; notifications of the
/// old subscription no longer count.
async fn a_removed_subscription_is_recreated_and_the_folder_resynced(cx: &Ctx) {
    let sub = cx.cloud.graph.subscriptions()[0].clone();
    let client_state = sub.client_state.clone().unwrap();
    cx.cloud
        .graph
        .deliver(new_mail("AAMkAGI2TG93AAA=day18", "2024-03-18", 2));
    assert_eq!(
        cx.cloud.graph.lifecycle("subscriptionRemoved").await,
        vec![202]
    );
    assert_eq!(cx.cloud.runner.drain().await.unwrap().failures, 0);
    let replaced = cx.cloud.graph.subscriptions();
    assert_eq!(replaced.len(), 1);
    assert_ne!(replaced[0].id, sub.id);
    assert_ne!(
        replaced[0].client_state.as_deref(),
        Some(client_state.as_str())
    );
    assert_eq!(cx.rows_of("ib_calls", "2024-03-18").await, 2, "resynced");
    // The webhook trusts its copy of the clientStates for client_state_cache_seconds (1 here).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _, _) = post(
        &cx.hook(),
        notification(
            &sub.id,
            &cx.mailbox_id,
            "AAMkAGI2TG93AAA=day18",
            &client_state,
        ),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        cx.cloud.runner.drain().await.unwrap().messages,
        0,
        "the old subscription is unknown now"
    );
}

/// The poller waits out each Retry-After.
async fn a_429_storm_slows_the_poll_and_loses_nothing(cx: &Ctx) {
    cx.cloud
        .graph
        .deliver(new_mail("AAMkAGI2TG93AAA=day19", "2024-03-19", 4));
    let throttled = cx.cloud.graph.throttled();
    cx.cloud.graph.throttle(4, 1);
    let started = std::time::Instant::now();
    let (poll, drained) = cx.cloud.poll(at(LATER)).await.unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(cx.cloud.graph.throttled(), throttled + 4);
    assert_eq!((poll["queued"].as_u64(), drained.failures), (Some(1), 0));
    assert_eq!(cx.rows_of("ib_calls", "2024-03-19").await, 4);
}

/// Graph forgets the delta link (410 SyncStateNotFound): a fresh sync over the look-back
/// window (72 h) finds the mails received since, and ingest's claims keep them once.
async fn an_expired_delta_link_resyncs_over_the_look_back_window(cx: &Ctx) {
    for (id, day) in [
        ("AAMkAGI2TG93AAA=lb16", "2024-03-16"),
        ("AAMkAGI2TG93AAA=lb19", "2024-03-19"),
    ] {
        cx.cloud.graph.deliver(new_mail(id, day, 1));
    }
    cx.cloud.poll(at(LATER)).await.unwrap();
    let rows_before = cx.rows_of("ib_calls", "2024-03-16").await;
    cx.cloud.graph.expire_delta_links();
    let (poll, drained) = cx.cloud.poll(at("2024-03-19T09:00:00Z")).await.unwrap();
    assert_eq!(poll["resyncs"], 1, "{poll}");
    // Every mail with attachments received in the window, each already ingested.
    let in_window = cx
        .cloud
        .graph
        .with_attachments_since(at("2024-03-16T09:00:00Z"));
    assert!(in_window >= 2, "{in_window}");
    assert_eq!(poll["queued"].as_u64(), Some(in_window as u64), "{poll}");
    assert_eq!(drained.failures, 0);
    assert_eq!(cx.rows_of("ib_calls", "2024-03-16").await, rows_before);
    assert_eq!(cx.outcomes_of("AAMkAGI2TG93AAA=lb16").await, 1);
}

/// A malformed message cannot succeed on a retry: it goes to the DLQ on its first failure,
/// with the cause and the stage as message attributes.
async fn a_poison_message_goes_to_the_dead_letter_queue_at_once_with_its_cause(cx: &Ctx) {
    let depth = cx.cloud.dlq_depth("inbound").await.unwrap();
    let inbound: &dyn WorkQueue = &cx.queue("inbound");
    inbound
        .send(&serde_json::json!({"v": 1, "kind": "nonsense"}), "poison")
        .await
        .unwrap();
    let drained = cx.cloud.runner.drain().await.unwrap();
    assert_eq!((drained.messages, drained.failures), (1, 0), "not retried");
    assert_eq!(cx.cloud.dlq_depth("inbound").await.unwrap(), depth + 1);
    let letter = cx
        .cloud
        .clients
        .sqs
        .receive_message()
        .queue_url(&cx.cloud.outputs.dlq_urls["inbound"])
        .message_attribute_names("All")
        .visibility_timeout(0)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.body().is_some_and(|b| b.contains("nonsense")))
        .expect("the poison message in the dead-letter queue");
    let attrs = letter.message_attributes().unwrap();
    let cause = attrs[CAUSE_ATTRIBUTE].string_value().unwrap();
    assert!(cause.contains("not an inbound message"), "{cause}");
    assert_eq!(attrs[STAGE_ATTRIBUTE].string_value(), Some("ingest"));
    assert_eq!(attrs["correlation_id"].string_value(), Some("poison"));
}

/// Through the control API: a run started (202), listed, shown once built with its delivery;
/// another cancelled before the builder reached it, which then builds and mails nothing.
/// Drains the queues (again after the batch sender's messages come back from the wait it set)
/// until `done` holds or `within` passes; whether it held.
async fn drain_until(
    cx: &Ctx,
    within: std::time::Duration,
    done: impl Fn() -> bool + Send + Sync,
) -> bool {
    let started = std::time::Instant::now();
    loop {
        cx.cloud
            .runner
            .drain_for(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        if done() {
            return true;
        }
        if started.elapsed() > within {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A queue's message counts, as SQS gives them (for failure messages).
async fn queue_state(cx: &Ctx, queue: &str) -> String {
    let attrs = cx
        .cloud
        .clients
        .sqs
        .get_queue_attributes()
        .queue_url(&cx.cloud.outputs.queue_urls[queue])
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    format!("{:?}", attrs.attributes)
}

/// The breaker's record (closed when there is none).
async fn breaker(cx: &Ctx) -> charlie::breaker::BreakerRecord {
    match cx
        .records()
        .get("BREAKER#downstream", "state")
        .await
        .unwrap()
    {
        Some(data) => serde_json::from_str(&data).unwrap(),
        None => {
            serde_json::from_value(serde_json::json!({"state": "closed", "changed_at": Utc::now()}))
                .unwrap()
        }
    }
}

/// `n` outcomes of made-up mails, tagged `tag`, put on `outbound` as ingest puts them.
async fn queue_outcomes(cx: &Ctx, tag: &str, n: usize) -> Vec<String> {
    let outcomes: Vec<charlie::messages::IngestOutcome> = (0..n)
        .map(|i| charlie::messages::IngestOutcome {
            v: 1,
            mailbox: cx.mailbox_id.clone(),
            message_id: format!("AAMk-{tag}-{i}"),
            attachment: format!("ib_calls_{tag}_{i}.csv"),
            dataset: "ib_calls".into(),
            dates: vec!["2024-03-14".parse().unwrap()],
            rows_total: 10,
            rows_new: 10,
            rows_duplicate: 0,
            rows_rejected: 0,
            raw_key: format!("raw/ib_calls/2024-03-14/AAMk-{tag}-{i}/ib_calls_{tag}_{i}.csv"),
            quarantined: None,
            lines: None,
        })
        .collect();
    let correlation = charlie::invocation::new_correlation_id();
    let pairs: Vec<(&charlie::messages::IngestOutcome, &str)> =
        outcomes.iter().map(|o| (o, correlation.as_str())).collect();
    let outbound: &dyn WorkQueue = &cx.queue("outbound");
    outbound.send_all(&pairs).await.unwrap();
    outcomes.iter().map(charlie::downstream::item_id).collect()
}

/// What ingest recorded reached the downstream API (the fake stores what it accepts): each
/// outcome once, under the id the contract derives, with an idempotency key that is its body's
/// hash; the sender's breaker is closed and the control API's health says so.
async fn every_outcome_reaches_the_downstream_api_once(cx: &Ctx) {
    let down = &cx.cloud.downstream;
    let recorded: HashSet<String> = cx
        .cloud
        .outcomes()
        .await
        .unwrap()
        .iter()
        .map(charlie::downstream::item_id)
        .collect();
    assert!(
        recorded.len() >= 3,
        "the sample mailbox's three files at least"
    );
    // The batch sender holds a batch for its window: drain until every outcome is in.
    let all_in = || {
        let stored: HashSet<String> = down.stored_ids().into_iter().collect();
        recorded.is_subset(&stored)
    };
    drain_until(cx, std::time::Duration::from_secs(60), all_in).await;
    let stored: HashSet<String> = down.stored_ids().into_iter().collect();
    let missing: Vec<_> = recorded.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "outcomes the downstream never got: {missing:?} ({})",
        queue_state(cx, "outbound").await
    );
    assert!(down.stored_more_than_once().is_empty());
    assert!(
        down.underived_ids().is_empty(),
        "{:?}",
        down.underived_ids()
    );
    assert_eq!(down.key_mismatches(), 0);
    assert_eq!(cx.cloud.dlq_depth("outbound").await.unwrap(), 0);
    assert_eq!(
        breaker(cx).await.state,
        charlie::breaker::BreakerState::Closed
    );
    let key = cx
        .key("downstream-health", charlie::stages::api::keys::Scope::Read)
        .await;
    let (status, health) = cx.api("GET", "/v1/health", Some(&key), None).await;
    assert!(status == 200 || status == 503, "{status}");
    assert_eq!(health["downstream"]["breaker"], "closed", "{health}");
}

/// Each fault kind in turn, then recovery: 500s, 429 with Retry-After, answers slower than the
/// sender's 2 s timeout (the items stored all the same), connection resets, partial 207s with
/// rejects and retries, and a full outage. After each the downstream holds every outcome
/// exactly once; rejected items are in the outbound DLQ with the reason; the breaker opened in
/// the outage and closed after; nothing was dead-lettered because the downstream was down.
async fn a_storm_of_each_downstream_fault_ends_with_every_outcome_stored_once(cx: &Ctx) {
    use charlie_local::fake_downstream::Fault;
    let down = &cx.cloud.downstream;
    let within = std::time::Duration::from_secs(60);
    let mut expected: HashSet<String> = down.stored_ids().into_iter().collect();
    let dlq_before = cx.cloud.dlq_depth("outbound").await.unwrap();
    let storms = [
        ("500s", 5, Fault::ServerError),
        (
            "429s",
            3,
            Fault::Throttle {
                retry_after_secs: 1,
            },
        ),
        (
            "slow",
            2,
            Fault::Slow {
                delay: std::time::Duration::from_secs(3),
            },
        ),
        ("resets", 4, Fault::Reset),
    ];
    for (name, n, fault) in storms {
        let calls = down.calls();
        down.fail_next(n, fault);
        let ids = queue_outcomes(cx, name, 25).await;
        expected.extend(ids.iter().cloned());
        let all_in = drain_until(cx, within, || {
            let stored: HashSet<String> = down.stored_ids().into_iter().collect();
            ids.iter().all(|id| stored.contains(id))
        })
        .await;
        if !all_in {
            let stored: HashSet<String> = down.stored_ids().into_iter().collect();
            let missing: Vec<&String> = ids.iter().filter(|id| !stored.contains(*id)).collect();
            panic!(
                "{name}: not every outcome reached the downstream API: missing {missing:?}; outbound: {}",
                queue_state(cx, "outbound").await
            );
        }
        assert!(
            down.calls() > calls + 1,
            "{name}: the fault was met and retried"
        );
        assert!(
            down.stored_more_than_once().is_empty(),
            "{name}: stored twice"
        );
        assert_eq!(
            cx.cloud.dlq_depth("outbound").await.unwrap(),
            dlq_before,
            "{name}: nothing dead-lettered"
        );
    }

    // Partial answers: 207s that reject some items for good and ask for others again.
    down.reject_where(
        "ib_calls_partial_1.csv",
        "attachment kind not accepted downstream",
    );
    down.reject_where(
        "ib_calls_partial_7.csv",
        "attachment kind not accepted downstream",
    );
    down.retry_first(2);
    let ids = queue_outcomes(cx, "partial", 20).await;
    let rejected: HashSet<String> = [1, 7].iter().map(|i| ids[*i].clone()).collect();
    let kept: Vec<String> = ids
        .iter()
        .filter(|id| !rejected.contains(*id))
        .cloned()
        .collect();
    expected.extend(kept.iter().cloned());
    assert!(
        drain_until(cx, within, || {
            let stored: HashSet<String> = down.stored_ids().into_iter().collect();
            kept.iter().all(|id| stored.contains(id))
        })
        .await,
        "partial: the accepted ones are stored"
    );
    down.retry_first(0);
    down.clear_rejections();
    assert_eq!(
        cx.cloud.dlq_depth("outbound").await.unwrap(),
        dlq_before + 2,
        "the two rejected items, at once"
    );
    let letters = cx.dead_letters("outbound").await;
    let causes: Vec<String> = letters
        .iter()
        .filter_map(|m| {
            m.message_attributes()?
                .get(CAUSE_ATTRIBUTE)?
                .string_value()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        causes
            .iter()
            .filter(|c| c.contains("attachment kind not accepted downstream"))
            .count(),
        2,
        "{causes:?}"
    );

    // A full outage: the breaker opens, nothing is called while it is open, the outcomes wait.
    down.set_fault(Some(Fault::Outage));
    let ids = queue_outcomes(cx, "outage", 30).await;
    expected.extend(ids.iter().cloned());
    let mut opened = false;
    for _ in 0..8 {
        cx.cloud
            .runner
            .drain_for(std::time::Duration::from_secs(1))
            .await
            .unwrap();
        opened |= breaker(cx).await.state != charlie::breaker::BreakerState::Closed;
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    assert!(opened, "the breaker opened during the outage");
    let key = cx
        .key("downstream-outage", charlie::stages::api::keys::Scope::Read)
        .await;
    let (_, health) = cx.api("GET", "/v1/health", Some(&key), None).await;
    assert_ne!(health["downstream"]["breaker"], "closed", "{health}");
    let calls_in_outage = down.calls();
    assert_eq!(
        cx.cloud.dlq_depth("outbound").await.unwrap(),
        dlq_before + 2,
        "no outcome dead-lettered because the downstream was down"
    );
    down.set_fault(None);
    assert!(
        drain_until(cx, within, || {
            let stored: HashSet<String> = down.stored_ids().into_iter().collect();
            ids.iter().all(|id| stored.contains(id))
        })
        .await,
        "after the outage every waiting outcome is delivered"
    );
    assert!(down.calls() > calls_in_outage);
    assert_eq!(
        breaker(cx).await.state,
        charlie::breaker::BreakerState::Closed,
        "closed after"
    );

    // The end state: every outcome exactly once, the rejected ones nowhere.
    let stored: HashSet<String> = down.stored_ids().into_iter().collect();
    let lost: Vec<_> = expected.difference(&stored).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(rejected.iter().all(|id| !stored.contains(id)));
    assert!(down.stored_more_than_once().is_empty(), "duplicates stored");
    assert_eq!(down.key_mismatches(), 0);
    assert_eq!(
        cx.cloud.dlq_depth("outbound").await.unwrap(),
        dlq_before + 2
    );
}

async fn a_run_is_started_listed_shown_and_cancelled_through_the_api(cx: &Ctx) {
    use charlie::stages::api::keys::Scope;
    let operator = cx.key("operator", Scope::Operate).await;
    let mails = cx.ses_mail().await.len();
    let (status, started) = cx
        .api(
            "POST",
            "/v1/runs",
            Some(&operator),
            Some(serde_json::json!({"report": "call_centre_daily", "period": "2024-03-14"})),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["run_id"].as_str().unwrap().to_owned();
    let (_, listed) = cx
        .api(
            "GET",
            "/v1/runs?report=call_centre_daily&limit=5",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(
        listed["runs"][0]["run_id"],
        run_id.as_str(),
        "newest first: {listed}"
    );
    assert_eq!(listed["runs"][0]["status"], "queued");

    let (_, second) = cx
        .api(
            "POST",
            "/v1/runs",
            Some(&operator),
            Some(serde_json::json!({"report": "call_centre_daily", "period": "2024-W11"})),
        )
        .await;
    let cancelled_id = second["run_id"].as_str().unwrap().to_owned();
    let (status, cancel) = cx
        .api(
            "POST",
            &format!("/v1/runs/{cancelled_id}/cancel"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 202, "{cancel}");

    cx.cloud.runner.drain().await.unwrap();
    let (status, shown) = cx
        .api("GET", &format!("/v1/runs/{run_id}"), Some(&operator), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["status"], "built", "{shown}");
    assert_eq!(shown["requested_by"], "operator");
    assert_eq!(shown["deliveries"][0]["transport"], "ses", "{shown}");
    assert_eq!(shown["deliveries"][0]["status"], "sent", "no SES event yet");
    let (_, gone) = cx
        .api(
            "GET",
            &format!("/v1/runs/{cancelled_id}"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(gone["status"], "cancelled", "{gone}");
    assert_eq!(gone["cancel_requested"], true);
    assert_eq!(
        cx.ses_mail().await.len(),
        mails + 1,
        "the cancelled run mailed nothing"
    );
    let (status, again) = cx
        .api(
            "POST",
            &format!("/v1/runs/{run_id}/cancel"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 409, "a built run cannot be cancelled: {again}");

    // The workbook downloads through the API (a redirect to a short presigned URL).
    let (status, _) = cx
        .api(
            "GET",
            &format!("/v1/runs/{run_id}/download"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 302);
}

/// 401 for a missing, wrong or revoked key and 403 for a key without the scope, on each route
/// class (read, operate, admin); nothing changes on a refused call.
async fn wrong_expired_or_weak_keys_are_refused_on_every_route_class(cx: &Ctx) {
    use charlie::stages::api::keys::Scope;
    let viewer = cx.key("viewer", Scope::Read).await;
    let operator = cx.key("operator-2", Scope::Operate).await;
    let admin = cx.key("admin", Scope::Admin).await;
    let routes: [(&str, &str, Option<serde_json::Value>, Scope); 3] = [
        ("GET", "/v1/runs", None, Scope::Read),
        (
            "POST",
            "/v1/runs",
            Some(serde_json::json!({"report": "call_centre_daily", "period": "2024-03-13"})),
            Scope::Operate,
        ),
        ("GET", "/v1/keys", None, Scope::Admin),
    ];
    let queued = cx.cloud.dlq_depth("runs").await.unwrap();
    for (method, path, body, needs) in &routes {
        let wrong = "chk_0123456789abcdef_not-a-real-secret";
        for key in [None, Some(wrong)] {
            let (status, answer) = cx.api(method, path, key, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {answer}");
        }
        for (key, has) in [
            (&viewer, Scope::Read),
            (&operator, Scope::Operate),
            (&admin, Scope::Admin),
        ] {
            let (status, answer) = cx.api(method, path, Some(key), body.clone()).await;
            if has >= *needs {
                assert!(
                    status < 400,
                    "{method} {path} as {has:?}: {status} {answer}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} as {has:?}: {answer}");
                assert!(
                    answer["message"].as_str().unwrap().contains(needs.name()),
                    "{answer}"
                );
            }
        }
    }
    // Revoked: refused from then on.
    let (_, keys) = cx.api("GET", "/v1/keys", Some(&admin), None).await;
    let id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "viewer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = cx
        .api("DELETE", &format!("/v1/keys/{id}"), Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    let (status, answer) = cx.api("GET", "/v1/runs", Some(&viewer), None).await;
    assert_eq!(status, 401);
    assert!(answer["message"].as_str().unwrap().contains("revoked"));
    cx.cloud.runner.drain().await.unwrap();
    assert_eq!(cx.cloud.dlq_depth("runs").await.unwrap(), queued);
}

/// A mail request that died (as in an SES outage) sits in the mail DLQ with its cause; the
/// API shows it without consuming it, redrives it, and the mailer then sends it once.
async fn a_dead_letter_is_peeked_and_redriven_through_the_api(cx: &Ctx) {
    use charlie::stages::api::keys::Scope;
    let operator = cx.key("operator-3", Scope::Operate).await;
    cx.mail_dead_letter("redriven-run", "redriven.xlsx").await;
    let (status, peeked) = cx
        .api("GET", "/v1/dead-letters/mail", Some(&operator), None)
        .await;
    assert_eq!(status, 200, "{peeked}");
    let found = peeked["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["body"].as_str().unwrap().contains("redriven-run"))
        .expect("the dead letter")
        .clone();
    assert!(found["cause"].as_str().unwrap().contains("SES throttled"));
    let (_, again) = cx
        .api("GET", "/v1/dead-letters/mail", Some(&operator), None)
        .await;
    assert_eq!(
        again["messages"].as_array().unwrap().len(),
        peeked["messages"].as_array().unwrap().len(),
        "peeking consumed nothing"
    );

    let mails = cx.ses_mail().await.len();
    let (status, moved) = cx
        .api(
            "POST",
            "/v1/dead-letters/mail/redrive",
            Some(&operator),
            Some(serde_json::json!({"message_ids": [found["message_id"]]})),
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["moved"][0], found["message_id"]);
    cx.cloud.runner.drain().await.unwrap();
    let sent = cx.ses_mail().await;
    assert_eq!(sent.len(), mails + 1);
    assert!(
        parse_mail(&sent[mails].raw)
            .subject()
            .unwrap()
            .contains("redriven-run")
    );
    let (_, after) = cx
        .api("GET", "/v1/dead-letters/mail", Some(&operator), None)
        .await;
    assert!(
        !after["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["message_id"] == found["message_id"]),
        "{after}"
    );
    // Scheduler's DLQ has no source queue: redrive is refused, saying what to do.
    let (status, refused) = cx
        .api(
            "POST",
            "/v1/dead-letters/scheduler/redrive",
            Some(&operator),
            Some(serde_json::json!({"all": true})),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
}

/// The API shows a day's outcomes and the quarantined file with its reason (and hands the file
/// out), and a reprocess asked for through it (asynchronously) gives the same rows.
async fn intake_is_seen_and_a_day_reprocessed_through_the_api(cx: &Ctx) {
    use charlie::stages::api::keys::Scope;
    let operator = cx.key("operator-4", Scope::Operate).await;
    let (status, day) = cx
        .api(
            "GET",
            "/v1/intake/outcomes?dataset=ib_calls&date=2024-03-14",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 200, "{day}");
    let outcomes = day["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "morning and afternoon: {day}");
    assert_eq!(
        day["totals"]["rows_new"].as_u64().unwrap() as usize,
        cx.expected_calls,
        "{day}"
    );
    ensure_quarantined(cx).await;
    let (status, q) = cx
        .api(
            "GET",
            "/v1/intake/quarantine?dataset=ib_calls",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 200, "{q}");
    let broken = q["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"].as_str().unwrap().contains("broken"))
        .expect("the quarantined file")
        .clone();
    assert!(
        broken["reason"].as_str().unwrap().contains("call_id"),
        "{broken}"
    );
    let (status, _) = cx
        .api(
            "GET",
            &format!(
                "/v1/intake/quarantine/file?key={}",
                broken["key"].as_str().unwrap().replace('=', "%3D")
            ),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 302);

    let day_: NaiveDate = "2024-03-14".parse().unwrap();
    let ds = &cx.defs.datasets["ib_calls"];
    let rows: &dyn RowStore = cx.cloud.rows.as_ref();
    let before = rows.rows_for_day("ib_calls", ds, day_).await.unwrap();
    let (status, asked) = cx
        .api(
            "POST",
            "/v1/reprocess",
            Some(&operator),
            Some(serde_json::json!({"dataset": "ib_calls", "date": "2024-03-14"})),
        )
        .await;
    assert_eq!(status, 202, "{asked}");
    let id = asked["request_id"].as_str().unwrap().to_owned();
    cx.cloud.runner.drain().await.unwrap();
    let (_, done) = cx
        .api("GET", &format!("/v1/reprocess/{id}"), Some(&operator), None)
        .await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(
        done["rows_stored"].as_u64().unwrap() as usize,
        cx.expected_calls,
        "{done}"
    );
    let after = rows.rows_for_day("ib_calls", ds, day_).await.unwrap();
    let strip = |rows: &[StoredRow]| {
        rows.iter()
            .map(|r| (r.key.clone(), r.values.clone(), r.source.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&after), strip(&before), "the same rows");

    // Poll now: a new mail is found without waiting for the schedule.
    cx.cloud
        .graph
        .deliver(new_mail("AAMkAGI2TG93AAA=day21", "2024-03-21", 4));
    let (status, _) = cx
        .api("POST", "/v1/intake/poll", Some(&operator), None)
        .await;
    assert_eq!(status, 202);
    cx.cloud.runner.drain().await.unwrap();
    assert_eq!(cx.rows_of("ib_calls", "2024-03-21").await, 4);
}

/// An ib_calls export of `n` calls on `day` (times that stay valid past ten rows), followed,
/// when `cut_short`, by a record whose quote never closes and runs past `max_field_bytes`.
fn large_export(day: &str, n: usize, cut_short: bool) -> Vec<u8> {
    let mut csv = export(day, 0);
    for i in 0..n {
        let m = i % 60;
        csv.extend_from_slice(format!("{day}-call-{i},A0075,Anne,Support,{day}T09:{m:02}:00,{day}T09:{m:02}:05,{day}T09:{m:02}:50,45,5,RESOLVED,,\n").as_bytes());
    }
    if cut_short {
        csv.extend_from_slice(
            format!("{day}-call-broken,A0075,Anne,Support,{day}T10:00:00,,,1,1,X,,\"").as_bytes(),
        );
        for _ in 0..1100 {
            csv.extend_from_slice(&[b'x'; 63]);
            csv.push(b'\n');
        }
    }
    csv
}

/// Asks for a reprocess of `dataset` on `day` through the API, lets it run, and answers its
/// record.
async fn reprocess_through_the_api(
    cx: &Ctx,
    key: &str,
    dataset: &str,
    day: &str,
) -> serde_json::Value {
    let body = serde_json::json!({"dataset": dataset, "date": day});
    let (status, asked) = cx.api("POST", "/v1/reprocess", Some(key), Some(body)).await;
    assert_eq!(status, 202, "{asked}");
    let id = asked["request_id"].as_str().unwrap().to_owned();
    cx.cloud.runner.drain().await.unwrap();
    let (status, record) = cx
        .api("GET", &format!("/v1/reprocess/{id}"), Some(key), None)
        .await;
    assert_eq!(status, 200, "{record}");
    record
}

/// Reprocessing cannot empty a day. A day of a clean mail (300 rows) and a file unusable part
/// way (2,000 more rows before its error) is rebuilt to the same 2,300 rows; once the clean
/// mail's archived file is deleted, a reprocess fails at once (not retried) with the key named,
/// and the day keeps every row.
async fn reprocessing_never_leaves_a_day_with_fewer_rows(cx: &Ctx) {
    use charlie::stages::api::keys::Scope;
    let operator = cx.key("operator-rp", Scope::Operate).await;
    let day = "2024-05-07";
    let (clean, cut) = ("AAMkAGI2TG93AAA=rp-clean", "AAMkAGI2TG93AAA=rp-cut");
    cx.cloud.graph.deliver(FakeMessage {
        attachments: vec![FakeAttachment {
            name: format!("ib_calls_{day}.csv"),
            content_type: "text/csv".into(),
            bytes: large_export(day, 300, false),
        }],
        ..new_mail(clean, day, 0)
    });
    cx.cloud.graph.deliver(FakeMessage {
        received: format!("{day}T11:00:00Z"),
        attachments: vec![FakeAttachment {
            name: format!("ib_calls_{day}_b.csv"),
            content_type: "text/csv".into(),
            // Its first 300 calls are the clean mail's.
            bytes: large_export(day, 2_300, true),
        }],
        ..new_mail(cut, day, 0)
    });
    // A poll that day finds both (a first one syncs the days before it, a later one reads on
    // from the last).
    let (_, drained) = cx
        .cloud
        .poll(at(&format!("{day}T12:00:00Z")))
        .await
        .unwrap();
    assert_eq!(drained.failures, 0);
    assert_eq!(cx.rows_of("ib_calls", day).await, 2_300);

    let done = reprocess_through_the_api(cx, &operator, "ib_calls", day).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(
        (
            &done["attachments"],
            &done["rows_deleted"],
            &done["rows_stored"],
            &done["partly_read"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!(2_300),
            &serde_json::json!(2_300),
            &serde_json::json!(1)
        ),
        "{done}"
    );
    assert_eq!(cx.rows_of("ib_calls", day).await, 2_300, "never fewer rows");

    let raw_key = cx
        .records()
        .outcomes_of_mail(&cx.mailbox_id, clean)
        .await
        .unwrap()[0]
        .raw_key
        .clone();
    cx.cloud
        .clients
        .s3
        .delete_object()
        .bucket(&cx.cloud.outputs.bucket)
        .key(&raw_key)
        .send()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let failed = reprocess_through_the_api(cx, &operator, "ib_calls", day).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(&raw_key) && error.contains("keeps its rows"),
        "{error}"
    );
    assert_eq!(
        (&failed["rows_deleted"], &failed["rows_stored"]),
        (&serde_json::json!(0), &serde_json::json!(0))
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "not retried"
    );
    assert_eq!(
        cx.rows_of("ib_calls", day).await,
        2_300,
        "the day as it was"
    );
    // The dead letter it left (with its cause) is this scenario's: removed for the next ones.
    let letters = cx.dead_letters("inbound").await;
    let ours: Vec<_> = letters
        .iter()
        .filter(|m| {
            m.body
                .as_deref()
                .unwrap_or_default()
                .contains(failed["request_id"].as_str().unwrap())
        })
        .collect();
    assert_eq!(ours.len(), 1, "dead-lettered once, with its cause");
    let cause = ours[0].message_attributes.as_ref().unwrap()[CAUSE_ATTRIBUTE]
        .string_value()
        .unwrap();
    assert!(cause.contains(&raw_key), "{cause}");
    let (status, _) = cx
        .api(
            "DELETE",
            &format!(
                "/v1/dead-letters/inbound/{}",
                ours[0].message_id.as_deref().unwrap()
            ),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 204);
}

/// Paused, the webhook records the mail it is told of instead of queueing it (nothing is
/// ingested); resumed, what was recorded is queued and ingested once.
async fn paused_intake_records_mails_and_resume_ingests_them(cx: &Ctx) {
    use charlie::stages::api::keys::Scope;
    let operator = cx.key("operator-5", Scope::Operate).await;
    // Something counted in each kind it looks at: setup's poll processed mails; a run is
    // built and its mail sent here.
    let run = cx
        .run_request("call_centre_daily", "2024-03-14", None)
        .await
        .unwrap();
    assert_eq!(run["status"], "built", "{run}");
    let counted =
        |m: &serde_json::Value, kind: &str| m["counters"]["totals"][kind].as_u64().unwrap_or(0);
    let (status, before) = cx
        .api("GET", "/v1/metrics?since=6h", Some(&operator), None)
        .await;
    assert_eq!(status, 200, "{before}");
    assert!(
        counted(&before, "mails_processed") > 0 && counted(&before, "runs_built") > 0,
        "{before}"
    );
    assert!(counted(&before, "mails_sent") > 0, "{before}");
    let (status, paused) = cx
        .api("POST", "/v1/intake/pause", Some(&operator), None)
        .await;
    assert_eq!(
        (status, paused["paused"].as_bool()),
        (200, Some(true)),
        "{paused}"
    );
    // The webhook trusts its copy of the flag for 5 s.
    tokio::time::sleep(charlie::intake_control::GATE_TTL + std::time::Duration::from_secs(1)).await;
    let id = "AAMkAGI2TG93AAA=day22";
    cx.cloud.graph.deliver(new_mail(id, "2024-03-22", 3));
    let statuses = cx.cloud.graph.notify(id, 1).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    cx.cloud.runner.drain().await.unwrap();
    assert_eq!(
        cx.rows_of("ib_calls", "2024-03-22").await,
        0,
        "nothing ingested while paused"
    );
    let (_, state) = cx.api("GET", "/v1/intake", Some(&operator), None).await;
    assert_eq!(state["parked"], 1, "{state}");

    let (status, resumed) = cx
        .api("POST", "/v1/intake/resume", Some(&operator), None)
        .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(
        (resumed["resumed"].as_u64(), resumed["paused"].as_bool()),
        (Some(1), Some(false))
    );
    cx.cloud.runner.drain().await.unwrap();
    assert_eq!(cx.rows_of("ib_calls", "2024-03-22").await, 3);
    let (_, state) = cx.api("GET", "/v1/intake", Some(&operator), None).await;
    assert_eq!(state["parked"], 0, "{state}");
    // Counted once each: the one mail and its three rows, whatever paths announced it.
    let (_, after) = cx
        .api("GET", "/v1/metrics?since=6h", Some(&operator), None)
        .await;
    assert_eq!(
        counted(&after, "mails_processed"),
        counted(&before, "mails_processed") + 1,
        "{after}"
    );
    assert_eq!(
        counted(&after, "rows_new"),
        counted(&before, "rows_new") + 3,
        "{after}"
    );
    // Health reads each queue's age of oldest message from CloudWatch (the runner publishes it
    // as SQS does); the queues were just drained.
    let (_, health) = cx.api("GET", "/v1/health", Some(&operator), None).await;
    let inbound = health["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "inbound")
        .unwrap()
        .clone();
    assert!(
        inbound["oldest_message_age_seconds"]
            .as_u64()
            .is_some_and(|a| a < 600),
        "{health}"
    );
    // The session's counters: from the hour of the resume.
    assert!(
        state["counters"]["by"]["ib_calls"]["rows_new"]
            .as_u64()
            .unwrap()
            >= 3,
        "{state}"
    );
}

/// Callers inside AWS use the `/iam/v1` routes (API Gateway's AWS_IAM authorization): `charlie
/// --sigv4` signs with the caller's AWS credentials, the local runner checks the signature as
/// API Gateway does, and the API maps the principal to its scope (`api_iam_principals`).
async fn an_iam_caller_signs_with_sigv4_and_an_unsigned_or_forged_request_is_refused(cx: &Ctx) {
    let cli = charlie_local::project::target_dir().join("debug/charlie");
    let charlie = |secret: &str, args: &[&str]| {
        let mut c = std::process::Command::new(&cli);
        c.args(["--api", &cx.cloud.api_url(""), "--sigv4"])
            .args(args)
            .env_remove("CHARLIE_API_KEY")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", "eu-west-2")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        c.output().unwrap()
    };
    // A run to list (a skipped one is listed too).
    cx.run_request("call_centre_daily", "2024-03-13", None)
        .await
        .unwrap();
    let out = charlie("test", &["--json", "runs", "list", "--limit", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!listed["runs"].as_array().unwrap().is_empty(), "{listed}");
    // A state-changing call, signed with its body, is audited under the principal.
    let out = charlie("test", &["intake", "poll"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = cx
        .key("iam-auditor", charlie::stages::api::keys::Scope::Admin)
        .await;
    let (_, audit) = cx.api("GET", "/v1/audit", Some(&admin), None).await;
    assert!(
        audit
            .to_string()
            .contains("arn:aws:iam::123456789012:user/charlie-local"),
        "{audit}"
    );
    // operate, not admin: keys are refused with the scope named.
    let out = charlie("test", &["keys", "list"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A signature made with another secret, or none at all, never reaches the function.
    let out = charlie("not-the-secret", &["runs", "list"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = cx.api("GET", "/iam/v1/runs", None, None).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (403, Some("Forbidden")),
        "{body}"
    );
    // A key does not open the IAM routes, and an IAM context cannot be smuggled onto /v1.
    let (status, _) = cx.api("GET", "/iam/v1/runs", Some(&admin), None).await;
    assert_eq!(status, 403);
    cx.cloud.runner.drain().await.unwrap();
}

/// schemathesis generates requests for every operation of `docs/openapi.json` (valid ones, and
/// edge cases from the schemas) against the deployed API: no answer is a 5xx, and every answer
/// (status, content type, headers, body) is what the document says.
async fn the_control_api_keeps_to_its_openapi_document_under_schemathesis(cx: &Ctx) {
    use charlie::stages::api::keys::Scope;
    let admin = cx.key("schemathesis", Scope::Admin).await;
    let bin = std::env::var("CHARLIE_SCHEMATHESIS").map_or_else(
        |_| charlie_local::project::root().join(".venv-schemathesis/bin/schemathesis"),
        std::path::PathBuf::from,
    );
    assert!(
        bin.exists(),
        "schemathesis is not at {} (scripts/test installs it: ensure_schemathesis)",
        bin.display()
    );
    // Its cache of found crashes goes to target/, not the source tree.
    let scratch = charlie_local::project::target_dir().join("charlie/schemathesis");
    std::fs::create_dir_all(&scratch).unwrap();
    let out = tokio::process::Command::new(&bin)
        .current_dir(&scratch)
        .arg("run")
        .arg(cx.cloud.api_url("/v1/openapi.json"))
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "25", "--seed", "1", "--no-color"])
        .args(["--header", &format!("Authorization: Bearer {admin}")])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    // Its reproduction commands carry the header: the key is blanked before anything prints.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace(&admin, "chk_***");
    let tail: String = report
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    println!("{tail}");
}
