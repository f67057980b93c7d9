//! The JSON messages stages exchange through SQS (each carries `"v": 1`) and the events that
//! trigger them. A correlation id travels beside them as the SQS message attribute
//! [`CORRELATION_ATTRIBUTE`] from the first stage to the last.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

pub const CORRELATION_ATTRIBUTE: &str = "correlation_id";
pub const MESSAGE_VERSION: u8 = 1;

fn v1() -> u8 {
    MESSAGE_VERSION
}

/// How a mail reached the `inbound` queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    Webhook,
    Poller,
    Resync,
}

/// `inbound`: one mail to ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InboundMessage {
    GraphMessage {
        #[serde(default = "v1")]
        v: u8,
        mailbox: String,
        message_id: String,
        source: FoundBy,
    },
    /// Carries on with a mail whose ingest stopped before its invocation's deadline; `step`
    /// counts the continuations (1 for the first), and the mail's progress record says where
    /// to carry on.
    Continuation {
        #[serde(default = "v1")]
        v: u8,
        mailbox: String,
        message_id: String,
        step: u32,
        /// The relay that uploaded it, for raw mail (re-read from `inbox/relay/`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<String>,
    },
    /// Re-ingest a dataset's day from its archived attachments (the control API asks; the
    /// status is at `REPROCESS#{request_id}`).
    Reprocess {
        #[serde(default = "v1")]
        v: u8,
        request_id: String,
        dataset: String,
        date: NaiveDate,
    },
}

/// One object S3 says was created (an event notification record, S3's own shape).
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedObject {
    pub bucket: String,
    /// The key, decoded (S3 sends it URL-encoded, `+` for a space).
    pub key: String,
    pub size: Option<u64>,
    pub at: DateTime<Utc>,
}

/// What an `inbound` message body is.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Message(InboundMessage),
    /// An S3 event notification: relay uploads (other events are left out, with their names).
    Created {
        objects: Vec<CreatedObject>,
        other_events: Vec<String>,
    },
    /// The `s3:TestEvent` S3 sends once when a notification is configured: nothing to do.
    S3TestEvent,
}

#[derive(Deserialize)]
struct S3Notification {
    #[serde(rename = "Records")]
    records: Vec<S3Record>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct S3Record {
    event_source: String,
    event_name: String,
    /// RFC 3339 from S3 (`…Z`); moto leaves the zone out (UTC): both are read.
    event_time: String,
    s3: S3Entity,
}

#[derive(Deserialize)]
struct S3Entity {
    bucket: S3Bucket,
    object: S3Object,
}

#[derive(Deserialize)]
struct S3Bucket {
    name: String,
}

#[derive(Deserialize)]
struct S3Object {
    key: String,
    #[serde(default)]
    size: Option<u64>,
}

/// Reads an `inbound` body: one of Charlie's messages, or S3's event notification.
pub fn parse_inbound(body: &str) -> Result<Inbound, String> {
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if value.get("Records").is_some() {
        let n: S3Notification = serde_json::from_value(value)
            .map_err(|e| format!("an S3 event notification of an unexpected shape: {e}"))?;
        let mut objects = Vec::new();
        let mut other_events = Vec::new();
        for r in n.records {
            if r.event_source != "aws:s3" || !r.event_name.starts_with("ObjectCreated:") {
                other_events.push(format!("{} {}", r.event_source, r.event_name));
                continue;
            }
            objects.push(CreatedObject {
                bucket: r.s3.bucket.name,
                key: url_decode(&r.s3.object.key).ok_or_else(|| {
                    format!("an S3 key that does not decode: {:?}", r.s3.object.key)
                })?,
                size: r.s3.object.size,
                at: event_time(&r.event_time).ok_or_else(|| {
                    format!("an S3 event time that is no time: {:?}", r.event_time)
                })?,
            });
        }
        return Ok(Inbound::Created {
            objects,
            other_events,
        });
    }
    if value.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Inbound::S3TestEvent);
    }
    serde_json::from_value(value)
        .map(Inbound::Message)
        .map_err(|e| e.to_string())
}

fn event_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

/// An S3 event's key: `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte).
fn url_decode(key: &str) -> Option<String> {
    let mut out = Vec::with_capacity(key.len());
    let mut bytes = key.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// `outbound`: what ingesting one attachment of one mail produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestOutcome {
    #[serde(default = "v1")]
    pub v: u8,
    pub mailbox: String,
    pub message_id: String,
    pub attachment: String,
    pub dataset: String,
    /// Report dates the rows fell on (usually one).
    pub dates: Vec<NaiveDate>,
    pub rows_total: u64,
    pub rows_new: u64,
    pub rows_duplicate: u64,
    pub rows_rejected: u64,
    pub raw_key: String,
    /// Set when the attachment was unusable and went to `quarantine/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
    /// Every physical line of the file by what it held (absent when it could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<crate::csv_ingest::LineCounts>,
}

/// `mail`: a built workbook to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailRequest {
    #[serde(default = "v1")]
    pub v: u8,
    pub run_id: crate::ids::RunId,
    pub report: String,
    /// The report's title, for people.
    pub title: String,
    pub period: String,
    /// The workbook in S3; `None` for a "no data" notice (the report's `on_empty = "notice"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workbook_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workbook_version: Option<String>,
    pub workbook_size: u64,
    pub recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<String>,
    pub subject: String,
    pub rows: u64,
    pub time_zone: String,
    /// The run's warnings, for the mail to mention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The report-builder's trigger: its schedule (EventBridge Scheduler fills `scheduled_time`) or
/// an explicit run request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportTrigger {
    Scheduled {
        #[serde(default = "v1")]
        v: u8,
        report: String,
        scheduled_time: DateTime<Utc>,
    },
    /// A run request for any period: `2024-03-14`, `2024-W11`, `2024-03` or
    /// `2024-03-01..2024-03-14` (`date` is accepted for a day, as version 1 named it).
    Run {
        #[serde(default = "v1")]
        v: u8,
        report: String,
        #[serde(alias = "date")]
        period: crate::period::Period,
        /// Read only when it is a run id (`crate::ids::RunId`): a trigger naming another
        /// text is refused whole, for good.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_id: Option<crate::ids::RunId>,
        /// When it was asked for (the control API sets it; runs list by it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_at: Option<DateTime<Utc>>,
        /// Who asked (the API key's name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
    },
}

/// A Graph lifecycle event (`lifecycleEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LifecycleEvent {
    /// The subscription's access needs renewing: renew it.
    ReauthorizationRequired,
    /// Graph removed the subscription: create a new one, then resync the folder by delta.
    SubscriptionRemoved,
    /// Graph dropped notifications: resync the folder by delta.
    Missed,
}

/// `lifecycle`: work the webhook queued for the poller, so the webhook answers at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleWork {
    #[serde(default = "v1")]
    pub v: u8,
    pub subscription_id: String,
    pub event: LifecycleEvent,
}

/// `lifecycle`: an operator's "poll now" (the control API's `POST /v1/intake/poll`): the
/// poller runs its scheduled round at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollNow {
    #[serde(default = "v1")]
    pub v: u8,
    pub kind: PollNowKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

/// The one kind of [`PollNow`]: `"poll_now"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollNowKind {
    PollNow,
}

/// `runs`: the daily retention sweep (its EventBridge schedule, PostgreSQL row store only):
/// the report builder deletes the rows past their dataset's `retain_days` at `scheduled_time`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionSweep {
    #[serde(default = "v1")]
    pub v: u8,
    pub kind: RetentionKind,
    pub scheduled_time: DateTime<Utc>,
}

/// The one kind of [`RetentionSweep`]: `"retention"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionKind {
    Retention,
}

/// The poller's scheduled round (EventBridge Scheduler's input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollTrigger {
    #[serde(default = "v1")]
    pub v: u8,
    #[serde(default)]
    pub scheduled_time: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_messages_round_trip_in_the_documented_shape() {
        let json = r#"{"v":1,"kind":"graph_message","mailbox":"a@b.example","message_id":"AAMk=","source":"poller"}"#;
        let msg: InboundMessage = serde_json::from_str(json).unwrap();
        assert_eq!(
            msg,
            InboundMessage::GraphMessage {
                v: 1,
                mailbox: "a@b.example".into(),
                message_id: "AAMk=".into(),
                source: FoundBy::Poller
            }
        );
        let back: serde_json::Value = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    #[test]
    fn s3_event_notifications_and_s3s_test_event_are_read_in_s3s_own_shape() {
        // As S3 puts it on a queue (an ObjectCreated:Put and a removal in one notification).
        let body = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"eu-west-2",
            "eventTime":"2024-03-14T12:06:00.000Z","eventName":"ObjectCreated:Put",
            "s3":{"s3SchemaVersion":"1.0","configurationId":"relay-inbox",
              "bucket":{"name":"charlie-local","arn":"arn:aws:s3:::charlie-local"},
              "object":{"key":"inbox/relay/branch-1/ab%2Bc+d.eml","size":6800,"eTag":"x","sequencer":"0A"}}},
            {"eventSource":"aws:s3","eventName":"ObjectRemoved:Delete","eventTime":"2024-03-14T12:07:00.123456",
             "s3":{"bucket":{"name":"charlie-local"},"object":{"key":"inbox/relay/x.eml"}}}]}"#;
        let Inbound::Created {
            objects,
            other_events,
        } = parse_inbound(body).unwrap()
        else {
            panic!("not read as S3 events");
        };
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].key, "inbox/relay/branch-1/ab+c d.eml");
        assert_eq!(objects[0].bucket, "charlie-local");
        assert_eq!(objects[0].size, Some(6800));
        assert_eq!(
            objects[0].at,
            "2024-03-14T12:06:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(other_events, ["aws:s3 ObjectRemoved:Delete"]);
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2024-03-14T12:00:00.000Z","Bucket":"charlie-local","RequestId":"R","HostId":"H"}"#;
        assert_eq!(parse_inbound(test).unwrap(), Inbound::S3TestEvent);
        let graph = r#"{"v":1,"kind":"graph_message","mailbox":"a@b.example","message_id":"AAMk=","source":"webhook"}"#;
        assert!(matches!(parse_inbound(graph).unwrap(), Inbound::Message(_)));
        let bad = parse_inbound(r#"{"Records":[{"eventSource":"aws:s3"}]}"#).unwrap_err();
        assert!(bad.contains("unexpected shape"), "{bad}");
    }

    #[test]
    fn scheduler_input_parses_as_a_scheduled_trigger() {
        let json = r#"{"v":1,"kind":"scheduled","report":"daily","scheduled_time":"2024-03-15T06:00:00Z"}"#;
        let t: ReportTrigger = serde_json::from_str(json).unwrap();
        assert!(matches!(t, ReportTrigger::Scheduled { ref report, .. } if report == "daily"));
    }

    #[test]
    fn run_requests_name_any_period_and_bad_ones_say_why() {
        let t: ReportTrigger =
            serde_json::from_str(r#"{"kind":"run","report":"daily","period":"2024-W11"}"#).unwrap();
        assert!(matches!(t, ReportTrigger::Run { period, .. } if period.to_string() == "2024-W11"));
        let day: ReportTrigger =
            serde_json::from_str(r#"{"kind":"run","report":"daily","date":"2024-03-14"}"#).unwrap();
        assert!(
            matches!(day, ReportTrigger::Run { period, .. } if period.to_string() == "2024-03-14")
        );
        let bad = serde_json::from_str::<ReportTrigger>(
            r#"{"kind":"run","report":"daily","period":"2024-02-30"}"#,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("bad date"), "{bad}");
    }
}
