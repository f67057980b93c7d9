//! The relays' outbox: report mail with `transport = "relay"` is queued here by the mailer (its
//! MIME in `outbox/relay/{relay}/{sha256(message id)}.eml`, a record `OUTBOX#{relay}` /
//! `MSG#{message id}`), fetched by the relay (`GET /v1/relay/outbox`, signed), sent through its
//! SMTP server and acknowledged (`POST /v1/relay/outbox/ack`), which marks the record sent and
//! the delivery `relayed`. Queueing is keyed by the mail's Message-ID (one per run and
//! recipient group), so the mailer's retries queue it once; the mailer's delivery record keeps
//! it from being queued again after it was.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ports::{Objects, StateRecords};
use crate::state::{DeliveryStatus, RecordKey};

/// One queued mail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
pub const RELAYED: (&str, u8) = ("relayed", 1);

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
    records.put_record(&key, &record, None).await?;
    Ok(record)
}

/// The relay's mails not acknowledged yet, oldest first, at most `limit`.
pub async fn pending(
    records: &dyn StateRecords,
    relay: &str,
    limit: usize,
) -> anyhow::Result<Vec<OutboxRecord>> {
    let mut waiting: Vec<OutboxRecord> = records
        .query(&format!("OUTBOX#{relay}"), "MSG#")
        .await?
        .into_iter()
        .filter_map(|(_, data)| serde_json::from_str::<OutboxRecord>(&data).ok())
        .filter(|r| r.sent_at.is_none())
        .collect();
    waiting.sort_by(|a, b| a.queued_at.cmp(&b.queued_at));
    waiting.truncate(limit);
    Ok(waiting)
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
    if record.sent_at.is_some() {
        return Ok(Some(record));
    }
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (status, rank) = RELAYED;
    records
        .put_ranked_record(
            &RecordKey::delivery_status(&record.delivery),
            &DeliveryStatus {
                status: status.into(),
                rank,
                ses_message_id: String::new(),
                detail: serde_json::json!({"relay": relay, "smtp_reply": smtp_reply}),
                at: now.clone(),
            },
            rank,
        )
        .await?;
    record.sent_at = Some(now);
    record.smtp_reply = Some(smtp_reply.to_owned());
    records.put_record(&key, &record, None).await?;
    Ok(Some(record))
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
        let waiting = pending(records, "b1", 10).await.unwrap();
        let ids: Vec<&str> = waiting.iter().map(|r| r.message_id.as_str()).collect();
        assert_eq!(ids, ["<m1@x>", "<m2@x>"], "oldest first");
        assert!(
            pending(records, "b2", 10).await.unwrap().is_empty(),
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
        assert_eq!(pending(records, "b1", 10).await.unwrap().len(), 1);
        let status = records
            .get_record(&RecordKey::delivery_status("DLV#run-<m1@x>#0"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((status.status.as_str(), status.rank), RELAYED);
        assert!(
            acknowledge(records, "b2", "<m2@x>", "x")
                .await
                .unwrap()
                .is_none()
        );
    }
}
