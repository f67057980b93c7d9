//! End to end on the local cloud: Terraform applied to the emulator, the sample mailbox pushed
//! through every stage, faults included. One test, because applying the infrastructure takes
//! a minute and a half; each section asserts one behaviour.

use std::collections::HashSet;
use std::io::Cursor;

use calamine::{Data, Reader, Xlsx};
use charlie_local::demo::{LocalCloud, UpOptions};
use charlie_local::fake_graph::{FakeAttachment, FakeMessage, SendPath};
use chrono::{DateTime, Utc};
use mail_parser::{MessageParser, MimeHeaders};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_path_runs_on_the_local_cloud() {
    // On the heap: the whole path is one long future, too large for a test thread's stack in a
    // debug build.
    Box::pin(whole_path()).await;
}

async fn whole_path() {
    let work =
        charlie_local::project::target_dir().join(format!("charlie/e2e-{}", std::process::id()));
    let cloud = LocalCloud::up(UpOptions::new(work.clone()))
        .await
        .expect("local cloud up");

    // Terraform: a second plan changes nothing.
    if let Err(plan) = cloud.terraform.plan_is_noop().unwrap() {
        panic!("a second plan is not a no-op:\n{plan}");
    }
    assert_eq!(
        cloud.runner.deployment.mappings.len(),
        4,
        "inbound, mail, ses_events, lifecycle"
    );
    assert!(
        cloud
            .runner
            .deployment
            .mappings
            .iter()
            .all(|m| m.report_batch_item_failures && !m.enabled)
    );

    // The webhook routes: the handshake on both URLs; a body that is not a notification
    // collection gets 400.
    let hook = cloud.api_url("/graph/notifications");
    for url in [&hook, &cloud.api_url("/graph/lifecycle")] {
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
    let (status, _, body) = post(&hook, "{\"value\": 3}".into()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("notification collection"), "{body}");

    // Poll: the poller subscribes to the folder (Graph runs the handshake against the webhook
    // first), then the delta round pages through the mailbox and ingest stores each row once.
    let at: DateTime<Utc> = "2024-03-15T00:10:00Z".parse().unwrap();
    let (mailbox, _) = cloud.graph.mailbox();
    let (poll, drained) = cloud.poll(at).await.unwrap();
    assert_eq!(poll["subscriptions_created"], 1, "{poll}");
    let subs = cloud.graph.subscriptions();
    assert_eq!(subs.len(), 1);
    let sub = subs[0].clone();
    assert_eq!(sub.notification_url, hook);
    assert_eq!(
        sub.lifecycle_url.as_deref(),
        Some(cloud.api_url("/graph/lifecycle").as_str())
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
    let expected = expected_unique(&[
        "ib_calls_2024-03-14_morning.csv",
        "ib_calls_2024-03-14_afternoon.csv",
    ]);
    let expected_dials = expected_unique(&["dials_2024-03-14.csv"]);
    assert_eq!(
        cloud.stored_rows("ib_calls", "2024-03-14").await.unwrap(),
        expected
    );
    assert_eq!(
        cloud.stored_rows("dials", "2024-03-14").await.unwrap(),
        expected_dials
    );
    let outcomes = cloud.outcomes().await.unwrap();
    assert_eq!(outcomes.len(), 3);
    let new: u64 = outcomes
        .iter()
        .filter(|o| o.dataset == "ib_calls")
        .map(|o| o.rows_new)
        .sum();
    assert_eq!(new as usize, expected);
    for o in &outcomes {
        let raw = cloud.object(&o.raw_key).await.unwrap();
        let sample = std::fs::read(
            charlie_local::project::root()
                .join("events/mailbox")
                .join(&o.attachment),
        )
        .unwrap();
        assert_eq!(raw, sample, "the raw attachment is archived as received");
    }

    // A notification with a wrong clientState, or for a subscription Charlie did not make,
    // queues nothing.
    for (subscription, state) in [
        (sub.id.as_str(), "not-the-secret"),
        ("sub-1", client_state.as_str()),
    ] {
        let (status, _, _) = post(
            &hook,
            notification(subscription, &mailbox, "AAMkAGI2TG93AAA=morning", state),
        )
        .await;
        assert_eq!(status, 202);
    }
    assert_eq!(
        cloud.runner.drain().await.unwrap().messages,
        0,
        "dropped, not queued"
    );

    // The same mail notified three times by Graph: still each row once, one outcome each.
    assert_eq!(
        cloud.graph.notify("AAMkAGI2TG93AAA=morning", 3).await,
        vec![202, 202, 202]
    );
    let drained = cloud.runner.drain().await.unwrap();
    assert_eq!((drained.messages, drained.failures), (3, 0));
    assert_eq!(
        cloud.stored_rows("ib_calls", "2024-03-14").await.unwrap(),
        expected
    );
    assert_eq!(cloud.outcomes().await.unwrap().len(), 3);

    // Re-processing the day removes its rows and re-ingests the archived attachments: same rows.
    let day: chrono::NaiveDate = "2024-03-14".parse().unwrap();
    let store = charlie::adapters::rows::RowStore::new(
        cloud.clients.dynamodb.clone(),
        &cloud.outputs.rows_table,
    );
    let defs = charlie::definitions::Definitions::parse(
        &std::fs::read_to_string(charlie_local::project::root().join("reports.toml")).unwrap(),
    )
    .unwrap();
    let before = store
        .rows_for_day("ib_calls", &defs.datasets["ib_calls"], day)
        .await
        .unwrap();
    let outcome = charlie::reprocess::reprocess_day(
        &defs,
        &store,
        &charlie::adapters::state::StateStore::new(
            cloud.clients.dynamodb.clone(),
            &cloud.outputs.state_table,
        ),
        &charlie::adapters::object_store::ObjectStore::new(
            cloud.clients.s3.clone(),
            &cloud.outputs.bucket,
        ),
        "ib_calls",
        day,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            outcome.rows_deleted,
            outcome.attachments,
            outcome.rows_stored
        ),
        (expected as u64, 2, expected as u64)
    );
    let after = store
        .rows_for_day("ib_calls", &defs.datasets["ib_calls"], day)
        .await
        .unwrap();
    let strip = |rows: &[charlie::adapters::rows::StoredRow]| {
        rows.iter()
            .map(|r| (r.key.clone(), r.values.clone(), r.source.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&after),
        strip(&before),
        "re-processing produces the same rows"
    );

    // Report: workbook in S3, read back with a real XLSX reader.
    let report_at: DateTime<Utc> = "2024-03-15T06:00:00Z".parse().unwrap();
    let (run, _) = cloud.report("call_centre_daily", report_at).await.unwrap();
    assert_eq!(run["status"], "built");
    assert_eq!(run["period"], "2024-03-14");
    let key = run["workbook_key"].as_str().unwrap();
    assert_eq!(
        key,
        "reports/call_centre_daily/2024-03-14/call_centre_daily-2024-03-14.xlsx"
    );
    let workbook = cloud.object(key).await.unwrap();
    let mut book = Xlsx::new(Cursor::new(workbook.clone())).unwrap();
    assert_eq!(
        book.sheet_names(),
        vec!["Summary", "ib_calls", "dials", "About"]
    );
    let dials = book.worksheet_range("dials").unwrap();
    assert_eq!(dials.height(), expected_dials + 1);
    assert!(
        matches!(dials.get((1, 0)), Some(Data::Float(_))),
        "dial_id is a number"
    );
    let raw = book.worksheet_range("ib_calls").unwrap();
    assert_eq!(
        raw.height(),
        expected + 1,
        "header + one row per stored call"
    );
    assert_eq!(raw.get((0, 0)), Some(&Data::String("call_id".into())));
    assert!(
        matches!(raw.get((1, 4)), Some(Data::DateTime(_))),
        "started_at is a date cell: {:?}",
        raw.get((1, 4))
    );
    let summary = book.worksheet_range("Summary").unwrap();
    let total_row = (0..summary.height() as u32)
        .find(|r| summary.get((*r as usize, 0)) == Some(&Data::String("Total".into())))
        .expect("a Total row");
    assert_eq!(
        summary.get((total_row as usize, 1)),
        Some(&Data::Float(expected as f64))
    );

    // Mail: exactly one, parsed with a real MIME parser; the attachment is the S3 object.
    let sent = cloud.emulator.sent_raw_mail().await.unwrap();
    assert_eq!(sent.len(), 1);
    let msg = MessageParser::default()
        .parse(sent[0].raw.as_bytes())
        .unwrap();
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
        !sent[0].raw.contains("reports-archive@"),
        "a blind copy is not in the headers"
    );
    assert!(
        sent[0]
            .destinations
            .contains(&"reports-archive@contoso.example".to_owned()),
        "but it is in the envelope: {:?}",
        sent[0].destinations
    );
    let envelope: HashSet<&String> = sent[0].destinations.iter().collect();
    assert_eq!(envelope.len(), 4, "to, cc and bcc: {envelope:?}");
    let deliveries = charlie::adapters::state::StateStore::new(
        cloud.clients.dynamodb.clone(),
        &cloud.outputs.state_table,
    )
    .records(
        &format!("RUN#{}", run["run_id"].as_str().unwrap()),
        "delivery#",
    )
    .await
    .unwrap();
    assert_eq!(deliveries.len(), 1, "one delivery for one recipient group");
    let result = &deliveries[0].1["result"];
    assert_eq!(result["transport"], "ses");
    assert_eq!(result["provider_message_id"], sent[0].id.as_str());
    assert_eq!(result["bcc"][0], "reports-archive@contoso.example");
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
    let (again, _) = cloud.report("call_centre_daily", report_at).await.unwrap();
    assert_eq!(again["repeated"], true);
    assert_eq!(cloud.emulator.sent_raw_mail().await.unwrap().len(), 1);

    // Run requests name any period. The ISO week holding the 14th has the day's rows.
    let run_request = |report: &str, period: &str, run_id: Option<&str>| {
        let mut event =
            serde_json::json!({"v": 1, "kind": "run", "report": report, "period": period});
        if let Some(id) = run_id {
            event["run_id"] = id.into();
        }
        cloud.runner.invoke("report-builder", event)
    };
    let week = run_request("call_centre_daily", "2024-W11", None)
        .await
        .unwrap();
    assert_eq!(week["status"], "built", "{week}");
    assert_eq!(
        week["workbook_key"],
        "reports/call_centre_daily/2024-W11/call_centre_daily-2024-W11.xlsx"
    );
    let weekly_book = cloud
        .object(week["workbook_key"].as_str().unwrap())
        .await
        .unwrap();
    let mut weekly_book = Xlsx::new(Cursor::new(weekly_book)).unwrap();
    assert_eq!(
        weekly_book.worksheet_range("ib_calls").unwrap().height(),
        expected + 1
    );
    cloud.runner.drain().await.unwrap();
    let sent = cloud.emulator.sent_raw_mail().await.unwrap();
    assert_eq!(sent.len(), 2);
    let msg = MessageParser::default()
        .parse(sent[1].raw.as_bytes())
        .unwrap();
    assert_eq!(msg.subject(), Some("Call-centre daily report for 2024-W11"));

    // A re-run of the day writes a new S3 version and mails that one; the first is not re-sent.
    let rerun = run_request("call_centre_daily", "2024-03-14", None)
        .await
        .unwrap();
    assert_eq!(rerun["status"], "built");
    assert_eq!(rerun["workbook_key"], run["workbook_key"]);
    assert_ne!(rerun["workbook_version"], run["workbook_version"]);
    cloud.runner.drain().await.unwrap();
    let sent = cloud.emulator.sent_raw_mail().await.unwrap();
    assert_eq!(sent.len(), 3);
    let msg = MessageParser::default()
        .parse(sent[2].raw.as_bytes())
        .unwrap();
    assert_eq!(
        msg.attachment(0).unwrap().contents(),
        &cloud.object(key).await.unwrap()[..],
        "the mail carries the new version"
    );

    // Two runs of one report and period never build at once: while another holds the period,
    // a run fails (to be retried) and builds nothing; once it is free, the same run goes ahead.
    let state = charlie::adapters::state::StateStore::new(
        cloud.clients.dynamodb.clone(),
        &cloud.outputs.state_table,
    );
    let lock = "LOCK#call_centre_daily#2024-03-13";
    let held = state
        .claim(
            lock,
            Utc::now(),
            chrono::Duration::minutes(15),
            chrono::Duration::days(1),
        )
        .await
        .unwrap();
    assert!(matches!(held, charlie::adapters::state::Claim::Acquired));
    let busy = run_request("call_centre_daily", "2024-03-13", Some("held-period"))
        .await
        .unwrap_err();
    assert!(format!("{busy:#}").contains("is building"), "{busy:#}");
    state.release(lock).await.unwrap();
    // The 13th has no rows: call_centre_daily skips an empty period and mails nothing.
    let empty = run_request("call_centre_daily", "2024-03-13", Some("held-period"))
        .await
        .unwrap();
    assert_eq!(empty["status"], "skipped_empty", "{empty}");
    cloud.runner.drain().await.unwrap();
    assert_eq!(cloud.emulator.sent_raw_mail().await.unwrap().len(), 3);

    // The weekly report's Monday schedule covers the week before; it goes out through Graph
    // sendMail as the team's mailbox (transport = "graph"), the workbook inline. An empty week
    // sends a "no data" notice (on_empty = "notice"), without a workbook.
    let monday: DateTime<Utc> = "2024-03-18T07:00:00Z".parse().unwrap();
    let (weekly, _) = cloud.report("call_centre_weekly", monday).await.unwrap();
    assert_eq!(weekly["status"], "built", "{weekly}");
    assert_eq!(weekly["period"], "2024-W11");
    let notice = run_request("call_centre_weekly", "2024-W12", None)
        .await
        .unwrap();
    assert_eq!(notice["status"], "notice_sent", "{notice}");
    assert!(notice["workbook_key"].is_null());
    cloud.runner.drain().await.unwrap();
    assert_eq!(
        cloud.emulator.sent_raw_mail().await.unwrap().len(),
        3,
        "nothing more through SES"
    );
    let outlook = cloud.graph.sent_mail();
    assert_eq!(outlook.len(), 2);
    let (weekly_mail, notice_mail) = (&outlook[0], &outlook[1]);
    assert_eq!(weekly_mail.from_user, mailbox);
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
        cloud
            .object(weekly["workbook_key"].as_str().unwrap())
            .await
            .unwrap(),
        "the inline attachment is the S3 object"
    );
    let weekly_deliveries = state
        .records(
            &format!("RUN#{}", weekly["run_id"].as_str().unwrap()),
            "delivery#",
        )
        .await
        .unwrap();
    assert_eq!(weekly_deliveries[0].1["result"]["transport"], "graph");
    assert_eq!(
        weekly_deliveries[0].1["result"]["provider_message_id"].as_str(),
        weekly_mail.internet_message_id.as_deref()
    );
    assert_eq!(
        notice_mail.subject,
        "Call-centre weekly report for 2024-W12"
    );
    assert!(notice_mail.body.contains("no data"), "{}", notice_mail.body);
    assert!(notice_mail.attachments.is_empty());

    // A weekly workbook over Graph's 3 MB inline limit (but under the 10 MiB mail limit) goes
    // through a draft and an upload session, in ranges; the same message three times sends it
    // once.
    let objects = charlie::adapters::object_store::ObjectStore::new(
        cloud.clients.s3.clone(),
        &cloud.outputs.bucket,
    );
    let mail_queue = charlie::adapters::queue::Queue::new(
        cloud.clients.sqs.clone(),
        &cloud.outputs.queue_urls["mail"],
    );
    let large: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 9) as u8)
        .collect();
    let large_key = "reports/call_centre_weekly/2024-W11/call_centre_weekly-large.xlsx";
    let stored = objects
        .put(
            large_key,
            large.clone(),
            charlie::report_mail::XLSX_CONTENT_TYPE,
        )
        .await
        .unwrap();
    let large_request = charlie::messages::MailRequest {
        v: 1,
        run_id: "large-weekly".into(),
        report: "call_centre_weekly".into(),
        title: "Call-centre weekly report".into(),
        period: "2024-W11".into(),
        workbook_key: Some(large_key.into()),
        workbook_version: stored.version_id,
        workbook_size: large.len() as u64,
        recipients: vec!["ops-leads@contoso.example".into()],
        cc: vec!["floor-managers@contoso.example".into()],
        bcc: vec![],
        subject: "Call-centre weekly report for 2024-W11".into(),
        rows: 500_000,
        time_zone: "Europe/London".into(),
        warnings: vec![],
    };
    for _ in 0..3 {
        mail_queue
            .send(&large_request, "large-weekly")
            .await
            .unwrap();
    }
    let drained = cloud.runner.drain().await.unwrap();
    assert_eq!(drained.failures, 0);
    let outlook = cloud.graph.sent_mail();
    assert_eq!(outlook.len(), 3, "one more mail, not three");
    assert!(
        matches!(outlook[2].path, SendPath::Draft { ranges } if ranges >= 2),
        "{:?}",
        outlook[2].path
    );
    assert_eq!(
        outlook[2].cc,
        vec!["floor-managers@contoso.example".to_owned()]
    );
    assert_eq!(
        outlook[2].attachments[0].bytes, large,
        "uploaded byte for byte"
    );
    assert_eq!(cloud.graph.draft_count(), 0);

    // Size policy: a 12 MB workbook over the 10 MiB limit (infra/envs/local) goes as a download
    // link that works, and the mail says so.
    let big: Vec<u8> = (0..12_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big_key = "reports/call_centre_daily/2024-03-14/call_centre_daily-big.xlsx";
    let stored = objects
        .put(
            big_key,
            big.clone(),
            charlie::report_mail::XLSX_CONTENT_TYPE,
        )
        .await
        .unwrap();
    let big_request = charlie::messages::MailRequest {
        v: 1,
        run_id: "big-workbook".into(),
        report: "call_centre_daily".into(),
        title: "Call-centre daily report".into(),
        period: "2024-03-14".into(),
        workbook_key: Some(big_key.into()),
        workbook_version: stored.version_id,
        workbook_size: big.len() as u64,
        recipients: vec!["ops-leads@contoso.example".into()],
        cc: vec![],
        bcc: vec![],
        subject: "Call-centre daily report for 2024-03-14".into(),
        rows: 1_000_000,
        time_zone: "Europe/London".into(),
        warnings: vec![],
    };
    mail_queue.send(&big_request, "big-workbook").await.unwrap();
    cloud.runner.drain().await.unwrap();
    let sent = cloud.emulator.sent_raw_mail().await.unwrap();
    assert_eq!(sent.len(), 4);
    // The same mail message delivered twice more (SQS is at-least-once) sends nothing more.
    for _ in 0..2 {
        mail_queue.send(&big_request, "big-workbook").await.unwrap();
    }
    cloud.runner.drain().await.unwrap();
    assert_eq!(cloud.emulator.sent_raw_mail().await.unwrap().len(), 4);
    assert!(
        sent[3].raw.len() < 1_000_000,
        "no 12 MB attachment in the mail"
    );
    let msg = MessageParser::default()
        .parse(sent[3].raw.as_bytes())
        .unwrap();
    assert_eq!(msg.attachment_count(), 0);
    let text = msg.body_text(0).unwrap();
    assert!(text.contains("too large to attach"), "{text}");
    let link = text
        .lines()
        .find(|l| l.starts_with("http"))
        .expect("the download link");
    assert!(link.contains("X-Amz-Signature"), "{link}");
    let downloaded = reqwest::get(link).await.unwrap().bytes().await.unwrap();
    assert_eq!(&downloaded[..], &big[..], "the link serves the workbook");

    // SES events: a bounce of the first report mail, as the configuration set publishes it
    // through SNS (the emulator cannot bounce a mail), marks its delivery bounced; a later
    // delivery event does not lower that.
    let ses_event = |event_type: &str| {
        let mut event = serde_json::json!({
            "eventType": event_type,
            "mail": {
                "timestamp": "2024-03-15T06:00:01.000Z",
                "source": "reports@charlie.example",
                "messageId": sent[0].id,
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
    let ses_events = charlie::adapters::queue::Queue::new(
        cloud.clients.sqs.clone(),
        &cloud.outputs.queue_urls["ses_events"],
    );
    let delivery_status = || async {
        let link = state
            .get_record(&format!("SESMSG#{}", sent[0].id), "delivery")
            .await
            .unwrap()
            .expect("the first mail's delivery is indexed by its SES message id");
        state
            .get_record(link["delivery"].as_str().unwrap(), "status")
            .await
            .unwrap()
            .map(|s| s["status"].as_str().unwrap().to_owned())
    };
    ses_events
        .send(&ses_event("Bounce"), "bounce")
        .await
        .unwrap();
    let drained = cloud.runner.drain().await.unwrap();
    assert_eq!(drained.failures, 0);
    assert_eq!(delivery_status().await.as_deref(), Some("bounced"));
    ses_events
        .send(&ses_event("Delivery"), "delivery")
        .await
        .unwrap();
    cloud.runner.drain().await.unwrap();
    assert_eq!(delivery_status().await.as_deref(), Some("bounced"));

    // An unusable attachment is quarantined with its reason; the mail counts as handled.
    cloud.graph.deliver(FakeMessage {
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
    });
    let (poll, drained) = cloud.poll(at).await.unwrap();
    assert_eq!(
        poll["queued"], 1,
        "only the new mail: the delta link was kept"
    );
    assert_eq!(drained.failures, 0, "no retry loop for bad input");
    let reason = cloud
        .object("quarantine/ib_calls/2024-03-15/AAMkAGI2TG93AAA=broken/ib_calls_2024-03-15.csv.reason.json")
        .await
        .unwrap();
    let reason: serde_json::Value = serde_json::from_slice(&reason).unwrap();
    assert!(
        reason["reason"].as_str().unwrap().contains("call_id"),
        "{reason}"
    );

    // Graph intake under faults. Each new mail is a small ib_calls export of its own day.
    let export = |day: &str, n: usize| -> Vec<u8> {
        let mut csv = String::from(
            "call_id,agent_id,agent_name,queue,started_at,answered_at,ended_at,duration_seconds,wait_seconds,disposition,caller_number,notes\n",
        );
        for i in 0..n {
            csv.push_str(&format!("{day}-call-{i},A0075,Anne-Marie Nowak,Support,{day}T09:0{i}:00,{day}T09:0{i}:05,{day}T09:0{i}:50,45,5,RESOLVED,+44 20 7946 0000,\n"));
        }
        csv.into_bytes()
    };
    let new_mail = |id: &str, day: &str, n: usize| FakeMessage {
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
    };
    let cloud_ref = &cloud;
    let outcomes_of = move |id: &str| {
        let id = id.to_owned();
        let cloud = cloud_ref;
        async move {
            cloud
                .outcomes()
                .await
                .unwrap()
                .into_iter()
                .filter(|o| o.message_id == id)
                .count()
        }
    };

    // A mail notified three times by webhook and also found by the poller is ingested once.
    cloud
        .graph
        .deliver(new_mail("AAMkAGI2TG93AAA=day16", "2024-03-16", 3));
    assert_eq!(
        cloud.graph.notify("AAMkAGI2TG93AAA=day16", 3).await,
        vec![202, 202, 202]
    );
    let drained = cloud.runner.drain().await.unwrap();
    assert_eq!((drained.messages, drained.failures), (3, 0));
    let later: DateTime<Utc> = "2024-03-16T12:00:00Z".parse().unwrap();
    let (poll, _) = cloud.poll(later).await.unwrap();
    assert_eq!(poll["queued"], 1, "the poller finds it too: {poll}");
    assert_eq!(
        cloud.stored_rows("ib_calls", "2024-03-16").await.unwrap(),
        3
    );
    assert_eq!(
        outcomes_of("AAMkAGI2TG93AAA=day16").await,
        1,
        "ingested once"
    );

    // A mail whose notification was dropped is found by the resync a `missed` lifecycle event
    // starts (webhook → lifecycle queue → poller → delta → inbound → ingest).
    cloud
        .graph
        .deliver(new_mail("AAMkAGI2TG93AAA=day17", "2024-03-17", 2));
    assert_eq!(cloud.graph.lifecycle("missed").await, vec![202]);
    let drained = cloud.runner.drain().await.unwrap();
    assert_eq!(drained.failures, 0);
    assert_eq!(
        cloud.stored_rows("ib_calls", "2024-03-17").await.unwrap(),
        2
    );
    assert_eq!(outcomes_of("AAMkAGI2TG93AAA=day17").await, 1);

    // A subscription near its expiry is renewed by the next round; a reauthorizationRequired
    // event renews it too.
    let soon = Utc::now() + chrono::Duration::hours(1);
    cloud.graph.set_subscription_expiry(&sub.id, soon);
    let sub_pk = format!("SUB#{mailbox}#inbox");
    let mut record = state
        .get_record(&sub_pk, "subscription")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record["id"], sub.id.as_str());
    record["expires_at"] = soon.to_rfc3339().into();
    state
        .put_record(&sub_pk, "subscription", &record, None)
        .await
        .unwrap();
    let (poll, _) = cloud.poll(later).await.unwrap();
    assert_eq!(poll["subscriptions_renewed"], 1, "{poll}");
    let renewed = cloud.graph.subscriptions();
    assert_eq!(
        (renewed.len(), renewed[0].id.as_str(), renewed[0].renewals),
        (1, sub.id.as_str(), 1)
    );
    assert!(renewed[0].expires > Utc::now() + chrono::Duration::days(6));
    let (poll, _) = cloud.poll(later).await.unwrap();
    assert_eq!(
        poll["subscriptions_renewed"], 0,
        "not again while far from expiry"
    );
    assert_eq!(
        cloud.graph.lifecycle("reauthorizationRequired").await,
        vec![202]
    );
    assert_eq!(cloud.runner.drain().await.unwrap().failures, 0);
    assert_eq!(cloud.graph.subscriptions()[0].renewals, 2);

    // subscriptionRemoved: the poller subscribes again (new id, new clientState) and resyncs;
    // notifications of the old subscription no longer count.
    cloud
        .graph
        .deliver(new_mail("AAMkAGI2TG93AAA=day18", "2024-03-18", 2));
    assert_eq!(
        cloud.graph.lifecycle("subscriptionRemoved").await,
        vec![202]
    );
    assert_eq!(cloud.runner.drain().await.unwrap().failures, 0);
    let replaced = cloud.graph.subscriptions();
    assert_eq!(replaced.len(), 1);
    assert_ne!(replaced[0].id, sub.id);
    assert_ne!(
        replaced[0].client_state.as_deref(),
        Some(client_state.as_str())
    );
    assert_eq!(
        cloud.stored_rows("ib_calls", "2024-03-18").await.unwrap(),
        2,
        "resynced"
    );
    // The webhook trusts its copy of the clientStates for client_state_cache_seconds (1 here).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _, _) = post(
        &hook,
        notification(&sub.id, &mailbox, "AAMkAGI2TG93AAA=day18", &client_state),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        cloud.runner.drain().await.unwrap().messages,
        0,
        "the old subscription is unknown now"
    );

    // A 429 storm slows the poller down (it waits out each Retry-After) and loses nothing.
    cloud
        .graph
        .deliver(new_mail("AAMkAGI2TG93AAA=day19", "2024-03-19", 4));
    cloud.graph.throttle(4, 1);
    let started = std::time::Instant::now();
    let (poll, drained) = cloud.poll(later).await.unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(cloud.graph.throttled(), 4);
    assert_eq!((poll["queued"].as_u64(), drained.failures), (Some(1), 0));
    assert_eq!(
        cloud.stored_rows("ib_calls", "2024-03-19").await.unwrap(),
        4
    );

    // Graph forgets the delta link (410 SyncStateNotFound): a fresh sync over the look-back
    // window (72 h) finds the mails received since, and ingest's claims keep them once.
    cloud.graph.expire_delta_links();
    let rows_before = cloud.stored_rows("ib_calls", "2024-03-16").await.unwrap();
    let at_19: DateTime<Utc> = "2024-03-19T09:00:00Z".parse().unwrap();
    let (poll, drained) = cloud.poll(at_19).await.unwrap();
    assert_eq!(poll["resyncs"], 1, "{poll}");
    assert_eq!(
        poll["queued"], 4,
        "the mails of the 16th to the 19th: {poll}"
    );
    assert_eq!(drained.failures, 0);
    assert_eq!(
        cloud.stored_rows("ib_calls", "2024-03-16").await.unwrap(),
        rows_before
    );
    assert_eq!(outcomes_of("AAMkAGI2TG93AAA=day16").await, 1);

    // A poison message ends in the DLQ after the queue's max receives.
    charlie::adapters::queue::Queue::new(
        cloud.clients.sqs.clone(),
        &cloud.outputs.queue_urls["inbound"],
    )
    .send(&serde_json::json!({"v": 1, "kind": "nonsense"}), "poison")
    .await
    .unwrap();
    let drained = cloud.runner.drain().await.unwrap();
    assert_eq!(
        drained.failures, 5,
        "received and failed maxReceiveCount times"
    );
    assert_eq!(cloud.dlq_depth("inbound").await.unwrap(), 1);

    drop(cloud);
    let _ = std::fs::remove_dir_all(work);
}
