//! What the stages' unit tests share: the shipped definitions, SQS events, a fresh
//! invocation, and mails for the in-memory mailbox.

use std::sync::Arc;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};

use crate::adapters::memory::MemoryMail;
use crate::definitions::Definitions;
use crate::invocation::Invocation;
use crate::ports::{EmailAddress, FileAttachment, MailMessage, Recipient};

pub const MAILBOX: &str = "ops-reports@contoso.example";
pub const QUEUE_ARN: &str = "arn:aws:sqs:eu-west-2:123456789012:charlie-inbound";

pub fn definitions() -> Arc<Definitions> {
    Arc::new(Definitions::parse(include_str!("../../../reports.toml")).unwrap())
}

pub fn invocation() -> Invocation {
    Invocation::with_timeout(std::time::Duration::from_secs(300))
}

/// An SQS event of these bodies, as Lambda delivers it from [`QUEUE_ARN`].
pub fn sqs_event(bodies: &[String]) -> SqsEvent {
    let records: Vec<serde_json::Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            serde_json::json!({
                "messageId": format!("m{i}"), "body": b, "eventSourceARN": QUEUE_ARN,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {"correlation_id": {"stringValue": format!("corr-{i}"), "dataType": "String"}},
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
}

/// The ids of the messages a batch response leaves for retry.
pub fn failures(resp: &SqsBatchResponse) -> Vec<&str> {
    resp.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect()
}

/// The `Authentication-Results` Exchange Online writes for mail from the dialer.
pub const EXCHANGE_PASS: &str = "spf=pass (sender IP is 203.0.113.7) smtp.mailfrom=dialer.example; dkim=pass (signature was verified) header.d=dialer.example;dmarc=pass action=none header.from=dialer.example;compauth=pass reason=100";

/// A mail from the dialer with one attachment.
pub fn mail(id: &str, received: &str, subject: &str, file: &str, bytes: &[u8]) -> MemoryMail {
    MemoryMail {
        mailbox: MAILBOX.into(),
        folder: "inbox".into(),
        message: MailMessage {
            id: id.into(),
            subject: Some(subject.into()),
            from: Some(Recipient {
                email_address: EmailAddress {
                    name: Some("Dialer Exports".into()),
                    address: Some("exports@dialer.example".into()),
                },
            }),
            received: Some(received.parse().unwrap()),
            internet_message_id: Some(format!("<{id}@dialer.example>")),
            // As Exchange Online writes it for a genuine sender (the datasets require one).
            headers: vec![crate::ports::MessageHeader {
                name: "Authentication-Results".into(),
                value: EXCHANGE_PASS.into(),
            }],
        },
        attachments: vec![FileAttachment {
            id: format!("{id}-att"),
            name: file.into(),
            content_type: "text/csv".into(),
            bytes: bytes.to_vec(),
        }],
    }
}

/// An ib_calls export of `n` calls on `day`.
pub fn ib_calls(day: &str, n: usize) -> Vec<u8> {
    let mut csv = String::from(
        "call_id,agent_id,agent_name,queue,started_at,answered_at,ended_at,duration_seconds,wait_seconds,disposition,caller_number,notes\n",
    );
    for i in 0..n {
        csv.push_str(&format!("{day}-call-{i},A0075,Anne-Marie Nowak,Support,{day}T09:{:02}:00,{day}T09:{:02}:05,{day}T09:{:02}:50,45,5,RESOLVED,+44 20 7946 0000,\n", i % 60, i % 60, i % 60));
    }
    csv.into_bytes()
}

/// An ib_calls export of `n` good calls on `day`, then a record whose quote never closes and
/// so runs past the default `max_field_bytes` (64 KiB): unusable part way, after `n` rows.
pub fn ib_calls_cut_short(day: &str, n: usize) -> Vec<u8> {
    let mut csv = ib_calls(day, n);
    csv.extend_from_slice(
        format!("{day}-call-broken,A0075,Anne,Support,{day}T10:00:00,,,1,1,X,,\"").as_bytes(),
    );
    for _ in 0..1100 {
        csv.extend_from_slice(&[b'x'; 63]);
        csv.push(b'\n');
    }
    csv
}

/// A mail carrying an ib_calls export of `n` calls on `day`.
pub fn ib_calls_mail(id: &str, day: &str, n: usize) -> MemoryMail {
    mail(
        id,
        &format!("{day}T12:00:00Z"),
        &format!("IB calls export {day}"),
        &format!("ib_calls_{day}.csv"),
        &ib_calls(day, n),
    )
}

/// The inbound message announcing a mail.
pub fn inbound(id: &str) -> String {
    serde_json::json!({"v": 1, "kind": "graph_message", "mailbox": MAILBOX, "message_id": id, "source": "webhook"}).to_string()
}
