//! The relays' outbox: report mail with `transport = "relay"` is queued here by the mailer (its
//! MIME in `outbox/relay/{relay}/{sha256(message id)}.eml`, a record `OUTBOX#{relay}` /
//! `MSG#{message id}`), fetched by the relay (`GET /v1/relay/outbox`, signed), sent through its
//! SMTP server and acknowledged (`POST /v1/relay/outbox/ack`), which marks the record sent and
//! the delivery `relayed` — or refused for good by that server (`POST
//! /v1/relay/outbox/refused`, with its answer), which takes it off the outbox and marks the
//! delivery `refused`, as a bounce is. Queueing is keyed by the mail's Message-ID (one per run and
//! recipient group), so the mailer's retries queue it once; the mailer's delivery record keeps
//! it from being queued again after it was.
//!
//! A mail the relay's sender cannot take now (an SMTP 4xx for it) is reported deferred (`POST
//! /v1/relay/outbox/deferred`, with the answer): it stays queued, counts its attempts and is
//! not offered again before its backoff (1 minute, doubling, at most an hour) is over, so it
//! never holds up the mail behind it; `charlie relay list` and health show it with the answer.
//!
//! Waiting mail is on the state table's index (`gsi1pk` `OUTBOX#{relay}`, `gsi1sk` the queued
//! time and Message-ID); settling a mail writes it without, so the outbox costs what is waiting,
//! not every mail the relay ever sent. Records queued before the index are put on it once
//! (the marker `OUTBOX#{relay}` / `INDEXED`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ports::{Objects, StateRecords};
use crate::state::{DeliveryNews, RecordKey};
use crate::status::DeliveryStatus;

impl RecordKey<OutboxRecord> {
    /// `OUTBOX#{relay}` / `MSG#{message id}`: a mail queued for a relay.
    pub fn outbox(relay: &str, message_id: &str) -> Self {
        Self::new(format!("OUTBOX#{relay}"), format!("MSG#{message_id}"))
    }
}

/// One queued mail.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OutboxRecord {
    /// `<…@…>`, as in the MIME.
    pub message_id: String,
    /// The delivery (`DLV#{run}#{group}`) it is.
    pub delivery: String,
    pub run_id: String,
    /// The SMTP envelope: sender and every recipient (to, cc and bcc).
    pub from: String,
    pub recipients: Vec<String>,
    /// The MIME's key in the bucket, and its size.
    pub key: String,
    pub size: u64,
    pub queued_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// What the relay's SMTP server answered (its queue id, typically).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_reply: Option<String>,
    /// When the relay said its sender refused it for good, and why (then it is off the outbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Times the relay's sender deferred it (an SMTP 4xx), the last time and answer, and when
    /// it is offered again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A deferred mail is offered again after 1 minute, doubling with each deferral up to an hour.
pub fn backoff(attempts: u32) -> chrono::Duration {
    let minutes = 1i64 << attempts.saturating_sub(1).min(6);
    chrono::Duration::minutes(minutes.min(60))
}

/// Its place on the index of waiting mail.
fn index_sk(record: &OutboxRecord) -> String {
    format!("{}#{}", record.queued_at, record.message_id)
}

fn index_pk(relay: &str) -> String {
    format!("OUTBOX#{relay}")
}

/// Writes a waiting record on the index, a settled one off it.
async fn put(records: &dyn StateRecords, relay: &str, record: &OutboxRecord) -> anyhow::Result<()> {
    let key = RecordKey::outbox(relay, &record.message_id);
    if record.settled() {
        records.put_record(&key, record, None).await
    } else {
        let (pk, sk) = (index_pk(relay), index_sk(record));
        records.put_record(&key, record, Some((&pk, &sk))).await
    }
}

impl OutboxRecord {
    /// Acknowledged or refused: off the outbox.
    pub fn settled(&self) -> bool {
        self.sent_at.is_some() || self.refused_at.is_some()
    }
}

/// Where a queued mail's MIME is kept.
pub fn object_key(relay: &str, message_id: &str) -> String {
    format!(
        "outbox/relay/{relay}/{}.eml",
        hex::encode(Sha256::digest(message_id.as_bytes()))
    )
}

/// The status an acknowledged relay mail gives its delivery: as SES's `delivered` (the next
/// hop took it), below a bounce or complaint.
pub const RELAYED: DeliveryStatus = DeliveryStatus::Relayed;
/// The status a relay mail its sender refused for good gives its delivery: as SES's `bounced`.
pub const REFUSED: DeliveryStatus = DeliveryStatus::Refused;

/// Queues one mail (again, harmlessly, when it is queued already: the same key and record).
pub async fn queue(
    objects: &dyn Objects,
    records: &dyn StateRecords,
    relay: &str,
    mut record: OutboxRecord,
    mime: Vec<u8>,
) -> anyhow::Result<OutboxRecord> {
    let key = RecordKey::outbox(relay, &record.message_id);
    if let Some(queued) = records.get_record(&key).await? {
        return Ok(queued);
    }
    record.key = object_key(relay, &record.message_id);
    record.size = mime.len() as u64;
    objects.put(&record.key, mime, "message/rfc822").await?;
    put(records, relay, &record).await?;
    Ok(record)
}

/// Puts the relay's waiting records queued before the index on it, once.
async fn ensure_indexed(records: &dyn StateRecords, relay: &str) -> anyhow::Result<()> {
    let marker = index_pk(relay);
    if records.get(&marker, "INDEXED").await?.is_some() {
        return Ok(());
    }
    for (_, data) in records.query(&marker, "MSG#").await? {
        if let Ok(record) = serde_json::from_str::<OutboxRecord>(&data)
            && !record.settled()
        {
            put(records, relay, &record).await?;
        }
    }
    records
        .put(&marker, "INDEXED", "{\"v\":1}".into(), None)
        .await
}

/// Every waiting record of the relay (off the index: what waits, not what was ever sent),
/// oldest first.
async fn all_waiting(records: &dyn StateRecords, relay: &str) -> anyhow::Result<Vec<OutboxRecord>> {
    ensure_indexed(records, relay).await?;
    const PAGE: usize = 500;
    let pk = index_pk(relay);
    let mut waiting = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = records
            .query_index(&pk, before.as_deref(), None, PAGE)
            .await?;
        let full = page.len() == PAGE;
        before = page.last().map(|r| r.index_sk.clone());
        waiting.extend(
            page.into_iter()
                .filter_map(|r| serde_json::from_str::<OutboxRecord>(&r.data).ok())
                .filter(|r| !r.settled()),
        );
        if !full {
            break;
        }
    }
    waiting.sort_by(|a, b| a.queued_at.cmp(&b.queued_at));
    Ok(waiting)
}

/// The relay's mails not acknowledged yet and due at `now` (not in a deferral's backoff), oldest
/// first, at most `limit`.
pub async fn pending(
    records: &dyn StateRecords,
    relay: &str,
    limit: usize,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<OutboxRecord>> {
    let mut due: Vec<OutboxRecord> = all_waiting(records, relay)
        .await?
        .into_iter()
        .filter(|r| {
            r.next_attempt_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_none_or(|t| t <= now)
        })
        .collect();
    due.truncate(limit);
    Ok(due)
}

/// Notes that the relay's sender could not take a mail now (`answer`: what it said): one more
/// attempt, offered again after its backoff. `None`: no such mail in this relay's outbox; a
/// settled one is answered as it is.
pub async fn defer(
    records: &dyn StateRecords,
    relay: &str,
    message_id: &str,
    answer: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<OutboxRecord>> {
    let key = RecordKey::outbox(relay, message_id);
    let Some(mut record) = records.get_record(&key).await? else {
        return Ok(None);
    };
    if record.settled() {
        return Ok(Some(record));
    }
    record.attempts += 1;
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    record.last_attempt_at = Some(at(now));
    record.last_answer = Some(answer.to_owned());
    record.next_attempt_at = Some(at(now + backoff(record.attempts)));
    put(records, relay, &record).await?;
    Ok(Some(record))
}

/// Marks a mail sent by the relay (once: a second acknowledgement changes nothing) and its
/// delivery `relayed`. `None`: no such mail in this relay's outbox.
pub async fn acknowledge(
    records: &dyn StateRecords,
    relay: &str,
    message_id: &str,
    smtp_reply: &str,
) -> anyhow::Result<Option<OutboxRecord>> {
    let key = RecordKey::outbox(relay, message_id);
    let Some(mut record) = records.get_record(&key).await? else {
        return Ok(None);
    };
    if record.settled() {
        return Ok(Some(record));
    }
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let detail = serde_json::json!({"relay": relay, "smtp_reply": smtp_reply});
    set_status(records, &record.delivery, RELAYED, detail, &now).await?;
    record.sent_at = Some(now);
    record.smtp_reply = Some(smtp_reply.to_owned());
    put(records, relay, &record).await?;
    Ok(Some(record))
}

/// Takes a mail its relay's sender refused for good off the outbox (once: a second refusal,
/// or one of a mail acknowledged before, changes nothing) and marks its delivery `refused`
/// with the sender's answer. `None`: no such mail in this relay's outbox; else the record and
/// whether it was refused now.
pub async fn refuse(
    records: &dyn StateRecords,
    relay: &str,
    message_id: &str,
    reason: &str,
) -> anyhow::Result<Option<(OutboxRecord, bool)>> {
    let key = RecordKey::outbox(relay, message_id);
    let Some(mut record) = records.get_record(&key).await? else {
        return Ok(None);
    };
    if record.settled() {
        return Ok(Some((record, false)));
    }
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let detail = serde_json::json!({"relay": relay, "refusal": reason});
    set_status(records, &record.delivery, REFUSED, detail, &now).await?;
    record.refused_at = Some(now);
    record.refusal = Some(reason.to_owned());
    put(records, relay, &record).await?;
    Ok(Some((record, true)))
}

/// Raises a delivery's status (one conditional write on its rank).
async fn set_status(
    records: &dyn StateRecords,
    delivery: &str,
    status: DeliveryStatus,
    detail: serde_json::Value,
    at: &str,
) -> anyhow::Result<()> {
    records
        .put_ranked_record(
            &RecordKey::delivery_status(delivery),
            &DeliveryNews {
                status,
                rank: status.rank(),
                ses_message_id: String::new(),
                detail,
                at: at.to_owned(),
            },
            status.rank(),
        )
        .await?;
    Ok(())
}

/// A relay's outbox at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// Mails waiting (not acknowledged, not refused).
    pub count: usize,
    /// The oldest's queued time.
    pub oldest: Option<DateTime<Utc>>,
    /// The waiting mail deferred most often (the oldest of those), with its last answer.
    pub stuck: Option<OutboxRecord>,
}

/// The relay's mail waiting (not acknowledged, not refused).
pub async fn waiting(records: &dyn StateRecords, relay: &str) -> anyhow::Result<Waiting> {
    let all = all_waiting(records, relay).await?;
    let oldest = all
        .first()
        .and_then(|r| DateTime::parse_from_rfc3339(&r.queued_at).ok())
        .map(|t| t.with_timezone(&Utc));
    let stuck = all
        .iter()
        .filter(|r| r.attempts > 0)
        .max_by(|a, b| {
            a.attempts
                .cmp(&b.attempts)
                .then_with(|| b.queued_at.cmp(&a.queued_at))
        })
        .cloned();
    Ok(Waiting {
        count: all.len(),
        oldest,
        stuck,
    })
}

/// Each relay (revoked ones too: mail queued for one waits all the same) with its outbox, by id.
pub async fn overview(
    records: &dyn StateRecords,
) -> anyhow::Result<Vec<(crate::state::RelayRecord, Waiting)>> {
    let found = records
        .query_index(crate::state::RELAYS_INDEX, None, None, 1000)
        .await?;
    let mut relays: Vec<crate::state::RelayRecord> = found
        .iter()
        .filter_map(|r| serde_json::from_str(&r.data).ok())
        .collect();
    relays.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = Vec::with_capacity(relays.len());
    for relay in relays {
        let w = waiting(records, &relay.id).await?;
        out.push((relay, w));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::{MemoryObjects, MemoryState};

    fn record(id: &str, at: &str) -> OutboxRecord {
        OutboxRecord {
            message_id: id.into(),
            delivery: format!("DLV#run-{id}#0"),
            run_id: format!("run-{id}"),
            from: "reports@branch.example".into(),
            recipients: vec!["a@branch.example".into()],
            key: String::new(),
            size: 0,
            queued_at: at.into(),
            sent_at: None,
            smtp_reply: None,
            refused_at: None,
            refusal: None,
            attempts: 0,
            last_attempt_at: None,
            last_answer: None,
            next_attempt_at: None,
        }
    }

    #[tokio::test]
    async fn a_mail_is_queued_once_listed_until_acknowledged_and_its_delivery_marked() {
        let objects = MemoryObjects::default();
        let state = MemoryState::default();
        let records: &dyn StateRecords = &state;
        let q = queue(
            &objects,
            records,
            "b1",
            record("<m2@x>", "2024-01-02"),
            b"mime 2".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(q.size, 6);
        queue(
            &objects,
            records,
            "b1",
            record("<m1@x>", "2024-01-01"),
            b"mime 1".to_vec(),
        )
        .await
        .unwrap();
        // Queued again (a retry): the same record, nothing new.
        let again = queue(
            &objects,
            records,
            "b1",
            record("<m2@x>", "2024-01-03"),
            b"other".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(again, q);
        let objs: &dyn Objects = &objects;
        assert_eq!(objs.get(&q.key, None).await.unwrap(), b"mime 2");
        let waiting = pending(records, "b1", 10, Utc::now()).await.unwrap();
        let ids: Vec<&str> = waiting.iter().map(|r| r.message_id.as_str()).collect();
        assert_eq!(ids, ["<m1@x>", "<m2@x>"], "oldest first");
        assert!(
            pending(records, "b2", 10, Utc::now())
                .await
                .unwrap()
                .is_empty(),
            "another relay's"
        );
        let acked = acknowledge(records, "b1", "<m1@x>", "250 2.0.0 Ok: queued as ABC")
            .await
            .unwrap()
            .unwrap();
        assert!(acked.sent_at.is_some());
        let twice = acknowledge(records, "b1", "<m1@x>", "other")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            twice.smtp_reply.as_deref(),
            Some("250 2.0.0 Ok: queued as ABC")
        );
        assert_eq!(
            pending(records, "b1", 10, Utc::now()).await.unwrap().len(),
            1
        );
        let status = records
            .get_record(&RecordKey::delivery_status("DLV#run-<m1@x>#0"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status.status, status.rank), (RELAYED, 1));
        assert!(
            acknowledge(records, "b2", "<m2@x>", "x")
                .await
                .unwrap()
                .is_none()
        );

        // Refused for good: off the outbox, its delivery refused with the answer, once.
        let (refused, now) = refuse(records, "b1", "<m2@x>", "550 5.1.1 no such user")
            .await
            .unwrap()
            .unwrap();
        assert!(now && refused.refused_at.is_some());
        assert!(
            pending(records, "b1", 10, Utc::now())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(super::waiting(records, "b1").await.unwrap().count, 0);
        let (again, now) = refuse(records, "b1", "<m2@x>", "other")
            .await
            .unwrap()
            .unwrap();
        assert!(!now);
        assert_eq!(again.refusal.as_deref(), Some("550 5.1.1 no such user"));
        let status = records
            .get_record(&RecordKey::delivery_status("DLV#run-<m2@x>#0"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status.status, status.rank), (REFUSED, 2));
        assert_eq!(status.detail["refusal"], "550 5.1.1 no such user");
        // An acknowledgement after it changes nothing; nor does a refusal of a sent mail.
        let acked = acknowledge(records, "b1", "<m2@x>", "250 ok")
            .await
            .unwrap()
            .unwrap();
        assert!(acked.sent_at.is_none());
        let (sent, now) = refuse(records, "b1", "<m1@x>", "550")
            .await
            .unwrap()
            .unwrap();
        assert!(!now && sent.refused_at.is_none() && sent.sent_at.is_some());
        assert!(
            refuse(records, "b2", "<m1@x>", "550")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn waiting_counts_the_outbox_and_names_the_oldest() {
        let objects = MemoryObjects::default();
        let state = MemoryState::default();
        let records: &dyn StateRecords = &state;
        assert_eq!(waiting(records, "b1").await.unwrap().count, 0);
        for (id, at) in [
            ("<b@x>", "2024-01-02T00:00:00.000Z"),
            ("<a@x>", "2024-01-01T00:00:00.000Z"),
        ] {
            queue(&objects, records, "b1", record(id, at), b"m".to_vec())
                .await
                .unwrap();
        }
        let w = waiting(records, "b1").await.unwrap();
        assert_eq!(
            (w.count, w.oldest),
            (2, Some("2024-01-01T00:00:00Z".parse().unwrap()))
        );
    }

    /// A mail its relay's server keeps deferring waits out its backoff without holding up the
    /// mail behind it, is shown as stuck with its last answer, and is offered again when due.
    #[tokio::test]
    async fn a_deferred_mail_backs_off_alone_and_is_shown_with_its_answer() {
        let objects = MemoryObjects::default();
        let state = MemoryState::default();
        let records: &dyn StateRecords = &state;
        for (id, at) in [
            ("<stuck@x>", "2024-01-01T00:00:00.000Z"),
            ("<next@x>", "2024-01-01T00:01:00.000Z"),
        ] {
            queue(&objects, records, "b1", record(id, at), b"m".to_vec())
                .await
                .unwrap();
        }
        let now: DateTime<Utc> = "2024-01-01T09:00:00Z".parse().unwrap();
        let ids = |v: Vec<OutboxRecord>| v.into_iter().map(|r| r.message_id).collect::<Vec<_>>();
        for attempt in 1..=3u32 {
            let at = now + chrono::Duration::minutes(10 * i64::from(attempt));
            let deferred = defer(records, "b1", "<stuck@x>", "452 4.2.2 mailbox full", at)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(deferred.attempts, attempt);
            assert_eq!(
                ids(pending(records, "b1", 10, at).await.unwrap()),
                ["<next@x>"],
                "in its backoff, the stuck mail is not offered; the next one is"
            );
            let due = at + backoff(attempt);
            assert_eq!(
                ids(pending(records, "b1", 10, due).await.unwrap()),
                ["<stuck@x>", "<next@x>"],
                "offered again once due"
            );
        }
        assert_eq!(backoff(1), chrono::Duration::minutes(1));
        assert_eq!(backoff(3), chrono::Duration::minutes(4));
        assert_eq!(backoff(30), chrono::Duration::minutes(60));
        let w = waiting(records, "b1").await.unwrap();
        assert_eq!(w.count, 2);
        let stuck = w.stuck.unwrap();
        assert_eq!(
            (
                stuck.message_id.as_str(),
                stuck.attempts,
                stuck.last_answer.as_deref()
            ),
            ("<stuck@x>", 3, Some("452 4.2.2 mailbox full"))
        );
        // Sent at last: off the outbox and off the index.
        acknowledge(records, "b1", "<stuck@x>", "250 ok")
            .await
            .unwrap();
        assert_eq!(waiting(records, "b1").await.unwrap().stuck, None);
        let indexed = records
            .query_index("OUTBOX#b1", None, None, 100)
            .await
            .unwrap();
        assert_eq!(indexed.len(), 1, "only the waiting mail is on the index");
        assert!(
            defer(records, "b2", "<stuck@x>", "452", now)
                .await
                .unwrap()
                .is_none()
        );
    }

    /// Records queued before the index (no index entry) are found and put on it, once; settled
    /// ones stay off it.
    #[tokio::test]
    async fn mail_queued_before_the_index_is_indexed_once() {
        let state = MemoryState::default();
        let records: &dyn StateRecords = &state;
        let mut sent = record("<old-sent@x>", "2023-12-01T00:00:00.000Z");
        sent.sent_at = Some("2023-12-01T00:05:00.000Z".into());
        for r in [record("<old@x>", "2023-12-02T00:00:00.000Z"), sent] {
            records
                .put_record(&RecordKey::outbox("b1", &r.message_id), &r, None)
                .await
                .unwrap();
        }
        let due = pending(records, "b1", 10, Utc::now()).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].message_id, "<old@x>");
        assert!(records.get("OUTBOX#b1", "INDEXED").await.unwrap().is_some());
        assert_eq!(
            records
                .query_index("OUTBOX#b1", None, None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}
