//! The relays' outbox: report mail with `transport = "relay"` is queued here by the mailer (its
//! MIME in `outbox/relay/{relay}/{sha256(message id)}.eml`, a record `OUTBOX#{relay}` /
//! `MSG#{message id}`), fetched by the relay (`GET /v1/relay/outbox`, signed), sent through its
//! SMTP server and acknowledged (`POST /v1/relay/outbox/ack`), which marks the record sent and
//! the delivery `relayed` — or refused for good by that server (`POST
//! /v1/relay/outbox/refused`, with its answer), which takes it off the outbox and marks the
//! delivery `refused`, as a bounce is. Queueing is keyed by the mail's Message-ID (one per run and
//! recipient group), so the mailer's retries queue it once; the mailer's delivery record keeps
//! it from being queued again after it was.

use chrono::{DateTime, Utc};
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
    /// When the relay said its sender refused it for good, and why (then it is off the outbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
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
pub const RELAYED: (&str, u8) = ("relayed", 1);
/// The status a relay mail its sender refused for good gives its delivery: as SES's `bounced`.
pub const REFUSED: (&str, u8) = ("refused", 2);

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
        .filter(|r| !r.settled())
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
    if record.settled() {
        return Ok(Some(record));
    }
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let detail = serde_json::json!({"relay": relay, "smtp_reply": smtp_reply});
    set_status(records, &record.delivery, RELAYED, detail, &now).await?;
    record.sent_at = Some(now);
    record.smtp_reply = Some(smtp_reply.to_owned());
    records.put_record(&key, &record, None).await?;
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
    records.put_record(&key, &record, None).await?;
    Ok(Some((record, true)))
}

/// Raises a delivery's status (one conditional write on its rank).
async fn set_status(
    records: &dyn StateRecords,
    delivery: &str,
    (status, rank): (&str, u8),
    detail: serde_json::Value,
    at: &str,
) -> anyhow::Result<()> {
    records
        .put_ranked_record(
            &RecordKey::delivery_status(delivery),
            &DeliveryStatus {
                status: status.into(),
                rank,
                ses_message_id: String::new(),
                detail,
                at: at.to_owned(),
            },
            rank,
        )
        .await?;
    Ok(())
}

/// The relay's mail waiting (not acknowledged, not refused): how many, and the oldest's
/// queued time.
pub async fn waiting(
    records: &dyn StateRecords,
    relay: &str,
) -> anyhow::Result<(usize, Option<DateTime<Utc>>)> {
    let all = pending(records, relay, usize::MAX).await?;
    let oldest = all
        .first()
        .and_then(|r| DateTime::parse_from_rfc3339(&r.queued_at).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok((all.len(), oldest))
}

/// Each relay (revoked ones too: mail queued for one waits all the same) with its outbox:
/// `(relay, waiting, oldest queued time)`, by id.
pub async fn overview(
    records: &dyn StateRecords,
) -> anyhow::Result<Vec<(crate::state::RelayRecord, usize, Option<DateTime<Utc>>)>> {
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
        let (n, oldest) = waiting(records, &relay.id).await?;
        out.push((relay, n, oldest));
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

        // Refused for good: off the outbox, its delivery refused with the answer, once.
        let (refused, now) = refuse(records, "b1", "<m2@x>", "550 5.1.1 no such user")
            .await
            .unwrap()
            .unwrap();
        assert!(now && refused.refused_at.is_some());
        assert!(pending(records, "b1", 10).await.unwrap().is_empty());
        assert_eq!(super::waiting(records, "b1").await.unwrap(), (0, None));
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
        assert_eq!((status.status.as_str(), status.rank), REFUSED);
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
        assert_eq!(waiting(records, "b1").await.unwrap(), (0, None));
        for (id, at) in [
            ("<b@x>", "2024-01-02T00:00:00.000Z"),
            ("<a@x>", "2024-01-01T00:00:00.000Z"),
        ] {
            queue(&objects, records, "b1", record(id, at), b"m".to_vec())
                .await
                .unwrap();
        }
        assert_eq!(
            waiting(records, "b1").await.unwrap(),
            (2, Some("2024-01-01T00:00:00Z".parse().unwrap()))
        );
    }
}
