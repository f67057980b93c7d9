//! The Graph adapter against the fake Graph, which follows Graph's published contract (Graph
//! itself cannot run here): sending as a mailbox user, inline and through an upload session.

use charlie::adapters::graph::{
    GraphClient, GraphCredentials, INLINE_ATTACHMENT_MAX, UPLOAD_CHUNK,
};
use charlie::ports::{MailSource, OutgoingAttachment, OutgoingMail};
use charlie::report_mail::{Recipients, XLSX_CONTENT_TYPE};
use charlie_local::fake_graph::{self, FakeGraph, SendPath};
use futures::TryStreamExt;

async fn fake() -> (FakeGraph, GraphClient) {
    let graph = FakeGraph::start(&charlie_local::project::root().join("events/mailbox"), 2)
        .await
        .unwrap();
    let credentials: GraphCredentials = serde_json::from_value(serde_json::json!({
        "client_id": fake_graph::CLIENT_ID, "client_secret": fake_graph::CLIENT_SECRET,
    }))
    .unwrap();
    let mailbox = GraphClient::new(&graph.base_url, &graph.token_url, credentials).unwrap();
    (graph, mailbox)
}

fn people() -> Recipients {
    Recipients {
        to: vec!["ops-leads@contoso.example".into()],
        cc: vec!["floor-managers@contoso.example".into()],
        bcc: vec!["audit@contoso.example".into()],
    }
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

#[tokio::test]
async fn the_work_s_correlation_id_goes_to_graph_as_client_request_id() {
    let (graph, mailbox) = fake().await;
    let (user, folder) = graph.mailbox();
    let correlation = charlie::invocation::new_correlation_id();
    let start = mailbox.delta_start_url(&user, &folder, None);
    charlie::invocation::with_correlation(Some(correlation.clone()), async {
        mailbox.mailbox_id(&user).await.unwrap();
        mailbox.delta_page(&start).await.unwrap();
    })
    .await;
    // Outside any work: no id is made up.
    mailbox.delta_page(&start).await.unwrap();
    let ids = graph.client_request_ids();
    assert!(ids.len() >= 2, "{ids:?}");
    assert!(
        ids.iter().all(|id| *id == correlation),
        "{ids:?} vs {correlation}"
    );
    assert_eq!(
        ids.len() as u64 + 1,
        graph.requests(),
        "the last call carried none"
    );
}

#[tokio::test]
async fn a_small_workbook_goes_inline_in_one_send_mail() {
    let (graph, mailbox) = fake().await;
    let (user, _) = graph.mailbox();
    let file = bytes(200_000);
    let recipients = people();
    let sent = mailbox
        .send_mail(&OutgoingMail {
            from: &user,
            mime: b"",
            subject: "Call-centre weekly report for 2024-W11",
            html: "<p>attached</p>",
            recipients: &recipients,
            internet_message_id: "<run-1.abc@contoso.example>",
            attachment: Some(OutgoingAttachment {
                name: "weekly.xlsx",
                content_type: XLSX_CONTENT_TYPE,
                bytes: &file,
            }),
        })
        .await
        .unwrap();
    assert_eq!(sent.provider_message_id, "<run-1.abc@contoso.example>");
    assert_eq!(sent.draft_id, None);
    let out = graph.sent_mail();
    assert_eq!(out.len(), 1);
    let m = &out[0];
    assert_eq!(m.path, SendPath::SendMail);
    assert_eq!(m.from_user, user);
    assert_eq!(
        (m.to.clone(), m.cc.clone(), m.bcc.clone()),
        (recipients.to, recipients.cc, recipients.bcc)
    );
    assert_eq!(m.body_type, "HTML");
    assert_eq!(m.body, "<p>attached</p>");
    assert_eq!(
        m.internet_message_id.as_deref(),
        Some("<run-1.abc@contoso.example>")
    );
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].name, "weekly.xlsx");
    assert_eq!(m.attachments[0].content_type, XLSX_CONTENT_TYPE);
    assert_eq!(m.attachments[0].bytes, file);
}

#[tokio::test]
async fn a_large_workbook_goes_through_a_draft_and_an_upload_session() {
    let (graph, mailbox) = fake().await;
    let (user, _) = graph.mailbox();
    // Over the inline limit and over two ranges, so the session takes three PUTs.
    let file = bytes(2 * UPLOAD_CHUNK + 12_345);
    assert!(file.len() > INLINE_ATTACHMENT_MAX);
    let recipients = people();
    let sent = mailbox
        .send_mail(&OutgoingMail {
            from: &user,
            mime: b"",
            subject: "Big",
            html: "<p>big</p>",
            recipients: &recipients,
            internet_message_id: "<run-2.abc@contoso.example>",
            attachment: Some(OutgoingAttachment {
                name: "big.xlsx",
                content_type: XLSX_CONTENT_TYPE,
                bytes: &file,
            }),
        })
        .await
        .unwrap();
    assert!(sent.draft_id.is_some());
    let out = graph.sent_mail();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, SendPath::Draft { ranges: 3 });
    assert_eq!(out[0].attachments.len(), 1);
    assert_eq!(out[0].attachments[0].bytes, file, "every byte, in order");
    assert_eq!(out[0].bcc, vec!["audit@contoso.example".to_owned()]);
    assert_eq!(
        graph.draft_count(),
        0,
        "the draft was sent, not left behind"
    );
}

#[tokio::test]
async fn a_failed_send_names_graphs_error_and_leaves_no_draft() {
    let (graph, mailbox) = fake().await;
    let file = bytes(INLINE_ATTACHMENT_MAX + 1);
    let recipients = people();
    let mail = OutgoingMail {
        from: "someone-else@contoso.example",
        mime: b"",
        subject: "x",
        html: "<p>x</p>",
        recipients: &recipients,
        internet_message_id: "<run-3.abc@contoso.example>",
        attachment: Some(OutgoingAttachment {
            name: "x.xlsx",
            content_type: XLSX_CONTENT_TYPE,
            bytes: &file,
        }),
    };
    let err = mailbox.send_mail(&mail).await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("ErrorInvalidUser"), "{err}");
    // A bad recipient is refused when the draft is sent: the draft is deleted again.
    let (user, _) = graph.mailbox();
    let nobody = Recipients {
        to: vec!["not-an-address".into()],
        ..Default::default()
    };
    let err = mailbox
        .send_mail(&OutgoingMail {
            from: &user,
            recipients: &nobody,
            ..mail
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ErrorInvalidRecipients"), "{err}");
    assert_eq!(graph.draft_count(), 0);
    assert!(graph.sent_mail().is_empty());
}

#[tokio::test]
async fn at_most_four_requests_are_in_flight_per_mailbox() {
    let (graph, mailbox) = fake().await;
    let (user, _) = graph.mailbox();
    graph.set_slow(std::time::Duration::from_millis(150));
    let calls = (0..12).map(|_| mailbox.message(&user, "AAMkAGI2TG93AAA=morning"));
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let most = graph.take_max_in_flight();
    assert!(
        (2..=charlie::adapters::graph::MAX_CONCURRENT_PER_MAILBOX as u32).contains(&most),
        "{most} in flight at once"
    );
}

#[tokio::test]
async fn throttled_calls_wait_out_retry_after_and_succeed() {
    let (graph, mailbox) = fake().await;
    let (user, _) = graph.mailbox();
    graph.throttle(2, 1);
    let started = std::time::Instant::now();
    let m = mailbox
        .message(&user, "AAMkAGI2TG93AAA=morning")
        .await
        .unwrap();
    assert_eq!(m.id, "AAMkAGI2TG93AAA=morning");
    assert_eq!(graph.throttled(), 2);
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn an_expired_delta_link_is_answered_410_sync_state_not_found() {
    let (graph, mailbox) = fake().await;
    let (user, folder) = graph.mailbox();
    let mut url = mailbox.delta_start_url(&user, &folder, None);
    let delta = loop {
        let page = mailbox.delta_page(&url).await.unwrap();
        match (page.next_link, page.delta_link) {
            (Some(n), _) => url = n,
            (None, Some(d)) => break d,
            _ => panic!("a page without links"),
        }
    };
    graph.expire_delta_links();
    let err = mailbox.delta_page(&delta).await.unwrap_err();
    assert_eq!(err.status(), Some(410));
    assert!(err.is_expired_sync_state(), "{err}");
    // A fresh round limited to mail received since the 15th sees only those.
    let since = "2024-03-15T00:00:00Z".parse().unwrap();
    let mut url = mailbox.delta_start_url(&user, &folder, Some(since));
    let mut seen = 0;
    loop {
        let page = mailbox.delta_page(&url).await.unwrap();
        seen += page.value.len();
        match page.next_link {
            Some(n) => url = n,
            None => break,
        }
    }
    assert_eq!(seen, 2, "the two mails of the 15th");
}

#[tokio::test]
async fn calls_without_an_issued_token_are_refused_401() {
    let (graph, _) = fake().await;
    let (user, _) = graph.mailbox();
    let http = reqwest::Client::new();
    let calls = [
        http.get(format!("{}/users/{user}/messages/any", graph.base_url)),
        http.post(format!("{}/users/{user}/sendMail", graph.base_url))
            .body("{}"),
        http.get(format!("{}/subscriptions/any", graph.base_url))
            .bearer_auth("a-token-the-fake-never-issued"),
    ];
    for call in calls {
        let resp = call.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    }
    assert_eq!(graph.requests(), 3, "every Graph call is counted");
    assert!(graph.sent_mail().is_empty());
}

#[tokio::test]
async fn links_to_another_host_are_refused_before_any_request() {
    let (graph, client) = fake().await;
    let before = graph.requests();
    for link in [
        "https://evil.example/v1.0/users/x/mailFolders/inbox/messages/delta?$skiptoken=1",
        "http://127.0.0.2:1/v1.0/users/x/messages/delta",
    ] {
        let err = client.delta_page(link).await.unwrap_err();
        assert!(
            matches!(err, charlie::ports::GraphError::ForeignHost { .. }),
            "{err}"
        );
        assert!(err.is_permanent());
    }
    assert_eq!(
        graph.requests(),
        before,
        "nothing was sent, so no token left"
    );
}

#[tokio::test]
async fn mailboxes_resolve_to_their_object_id_and_ids_are_immutable() {
    let (graph, client) = fake().await;
    let (user, folder) = graph.mailbox();
    let id = client.mailbox_id(&user).await.unwrap();
    assert_eq!(id, fake_graph::MAILBOX_OBJECT_ID);
    // The delta round by object id lists the immutable ids the notifications carry.
    let page = client
        .delta_page(&client.delta_start_url(&id, &folder, None))
        .await
        .unwrap();
    let first = &page.value[0];
    assert!(!first.id.ends_with("-default"), "{}", first.id);
    let message = client.message(&id, &first.id).await.unwrap();
    assert_eq!(message.id, first.id);
    assert!(message.internet_message_id.is_some());
    let listed = client.attachment_list(&id, &first.id).await.unwrap();
    let bytes = client
        .attachment_content(&id, &first.id, &listed[0].id)
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, listed[0].size);
    // The same content as a stream, held in pieces.
    let streamed: Vec<bytes::Bytes> = client
        .attachment_stream(&id, &first.id, &listed[0].id)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(streamed.concat(), bytes);
    // The transport headers come when selected, with Exchange's Authentication-Results.
    let sender = message.sender().to_owned();
    assert_eq!(
        charlie::sender_auth::check(
            &message.headers,
            &sender,
            charlie::sender_auth::Trust::ReceivingServer
        ),
        Ok(()),
        "{:?}",
        message.headers
    );
}
