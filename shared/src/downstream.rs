//! The downstream persistence API's contract (`docs/downstream-api.md`), as the batch sender
//! keeps it: the items and their stable ids, the canonical body and its idempotency key, and
//! what each answer means for each item. Pure: no I/O, so every rule is tested here.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::messages::IngestOutcome;

/// The most items one call may carry (the contract's bound on `max_items`).
pub const MAX_ITEMS: usize = 500;
/// The most bytes one body may have.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An outcome as the downstream API takes it (field order is the body's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub correlation_id: Option<String>,
    pub mailbox: String,
    pub message_id: String,
    pub attachment: String,
    pub dataset: String,
    pub dates: Vec<chrono::NaiveDate>,
    pub rows_total: u64,
    pub rows_new: u64,
    pub rows_duplicate: u64,
    pub rows_rejected: u64,
    pub raw_key: String,
    pub quarantined: Option<String>,
}

/// The stable id of an outcome: 32 hex digits of SHA-256 over its mailbox, message id,
/// attachment and dataset joined with NUL. The same outcome always has the same id.
pub fn item_id(o: &IngestOutcome) -> String {
    let mut h = Sha256::new();
    for (i, part) in [&o.mailbox, &o.message_id, &o.attachment, &o.dataset]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())[..32].to_owned()
}

impl Item {
    pub fn of(o: &IngestOutcome, correlation_id: Option<&str>) -> Item {
        Item {
            id: item_id(o),
            correlation_id: correlation_id.map(str::to_owned),
            mailbox: o.mailbox.clone(),
            message_id: o.message_id.clone(),
            attachment: o.attachment.clone(),
            dataset: o.dataset.clone(),
            dates: o.dates.clone(),
            rows_total: o.rows_total,
            rows_new: o.rows_new,
            rows_duplicate: o.rows_duplicate,
            rows_rejected: o.rows_rejected,
            raw_key: o.raw_key.clone(),
            quarantined: o.quarantined.clone(),
        }
    }
}

/// One call's body, canonical (items sorted by id), and its `Idempotency-Key` (SHA-256 hex of
/// the body): the same items always make the same body and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub ids: Vec<String>,
    pub body: Vec<u8>,
    pub key: String,
}

impl Batch {
    pub fn of(items: &[&Item]) -> Batch {
        let mut sorted: Vec<&Item> = items.to_vec();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.dedup_by(|a, b| a.id == b.id);
        #[derive(Serialize)]
        struct Body<'a> {
            items: &'a [&'a Item],
        }
        let body = serde_json::to_vec(&Body { items: &sorted }).unwrap_or_default();
        let key = hex::encode(Sha256::digest(&body));
        Batch {
            ids: sorted.iter().map(|i| i.id.clone()).collect(),
            body,
            key,
        }
    }
}

/// What the API said of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemVerdict {
    /// Stored, by this call or before (`accepted`, `duplicate`, or a 200).
    Delivered { duplicate: bool },
    /// Can never be stored; the reason goes to the dead-letter queue.
    Rejected(String),
    /// Not stored now; try again later.
    Retry(String),
}

/// What an answer means for the whole call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A verdict per item of the call (200 or 207).
    Items(BTreeMap<String, ItemVerdict>),
    /// 400: the batch is malformed; resend the items one by one to find the bad ones (a
    /// single item's 400 is its rejection).
    Malformed(String),
    /// 413: too big; resend in halves.
    TooLarge,
    /// 401: the token may have been rotated; read it again once.
    Unauthorized(String),
    /// 429: slow down (not the downstream failing).
    Throttled { retry_after: Option<Duration> },
    /// 503, other 5xx, 403, 409, anything unexpected: a transient failure the breaker counts.
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

#[derive(Deserialize)]
struct Results {
    #[serde(default)]
    results: Vec<ResultItem>,
}

#[derive(Deserialize)]
struct ResultItem {
    id: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    field: Option<String>,
}

/// The error body's message (and field), or a short piece of the body.
fn error_text(status: u16, body: &str) -> String {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody {
            message: Some(m),
            field,
        }) => match field {
            Some(f) => format!("{status}: {m} (field {f})"),
            None => format!("{status}: {m}"),
        },
        _ => {
            let short: String = body.chars().take(200).collect();
            if short.is_empty() {
                format!("{status}")
            } else {
                format!("{status}: {short}")
            }
        }
    }
}

/// What `status` with `body` (and `Retry-After`) means for a call that sent `ids`.
pub fn classify(status: u16, retry_after: Option<Duration>, body: &str, ids: &[String]) -> Answer {
    match status {
        200 => Answer::Items(
            ids.iter()
                .map(|id| (id.clone(), ItemVerdict::Delivered { duplicate: false }))
                .collect(),
        ),
        207 => {
            let listed: BTreeMap<String, ResultItem> = match serde_json::from_str::<Results>(body) {
                Ok(r) => r.results.into_iter().map(|i| (i.id.clone(), i)).collect(),
                Err(e) => {
                    return Answer::Failed {
                        reason: format!("207 with a body that is not a result list: {e}"),
                        retry_after: None,
                    };
                }
            };
            Answer::Items(
                ids.iter()
                    .map(|id| {
                        let verdict = match listed.get(id) {
                            None => ItemVerdict::Retry("207 did not list the item".into()),
                            Some(r) => match r.status.as_str() {
                                "accepted" => ItemVerdict::Delivered { duplicate: false },
                                "duplicate" => ItemVerdict::Delivered { duplicate: true },
                                "rejected" => ItemVerdict::Rejected(
                                    r.reason
                                        .clone()
                                        .unwrap_or_else(|| "rejected without a reason".into()),
                                ),
                                "retry" => ItemVerdict::Retry(
                                    r.reason.clone().unwrap_or_else(|| "207 retry".into()),
                                ),
                                other => ItemVerdict::Retry(format!("207 item status {other:?}")),
                            },
                        };
                        (id.clone(), verdict)
                    })
                    .collect(),
            )
        }
        400 => Answer::Malformed(error_text(status, body)),
        401 => Answer::Unauthorized(error_text(status, body)),
        413 => Answer::TooLarge,
        429 => Answer::Throttled { retry_after },
        _ => Answer::Failed {
            reason: error_text(status, body),
            retry_after,
        },
    }
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110), as a wait from `now`; a date in the
/// past is no wait, garbage is none.
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(attachment: &str) -> IngestOutcome {
        IngestOutcome {
            v: 1,
            mailbox: "ops@contoso.example".into(),
            message_id: "AAMk=".into(),
            attachment: attachment.into(),
            dataset: "ib_calls".into(),
            dates: vec!["2024-03-14".parse().unwrap()],
            rows_total: 3,
            rows_new: 2,
            rows_duplicate: 1,
            rows_rejected: 0,
            raw_key: "raw/ib_calls/x".into(),
            quarantined: None,
            lines: None,
        }
    }

    #[test]
    fn an_outcome_always_has_the_same_id_and_two_outcomes_never_share_one() {
        let a = outcome("a.csv");
        assert_eq!(item_id(&a), item_id(&a.clone()));
        assert_eq!(item_id(&a).len(), 32);
        assert_ne!(item_id(&a), item_id(&outcome("b.csv")));
        // The separator keeps "ab" + "c" apart from "a" + "bc".
        let mut x = outcome("c");
        x.message_id = "ab".into();
        let mut y = outcome("bc");
        y.message_id = "a".into();
        assert_ne!(item_id(&x), item_id(&y));
    }

    #[test]
    fn the_same_items_in_any_order_make_the_same_body_and_key() {
        let (a, b) = (
            Item::of(&outcome("a.csv"), None),
            Item::of(&outcome("b.csv"), Some("c-1")),
        );
        let one = Batch::of(&[&a, &b]);
        let two = Batch::of(&[&b, &a, &b]);
        assert_eq!(one, two);
        assert_eq!(one.key.len(), 64);
        assert_eq!(one.ids.len(), 2);
        assert_ne!(Batch::of(&[&a]).key, one.key);
        let body: serde_json::Value = serde_json::from_slice(&one.body).unwrap();
        assert_eq!(body["items"][0]["dates"][0], "2024-03-14");
        assert!(body["items"][0]["quarantined"].is_null());
    }

    #[test]
    fn every_answer_says_what_becomes_of_each_item() {
        let ids: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let Answer::Items(all) = classify(200, None, "", &ids) else {
            panic!()
        };
        assert!(
            all.values()
                .all(|v| *v == ItemVerdict::Delivered { duplicate: false })
        );
        let body = r#"{"results":[{"id":"a","status":"accepted"},{"id":"b","status":"duplicate"},
            {"id":"c","status":"rejected","reason":"unknown dataset"},{"id":"d","status":"retry"},
            {"id":"zz","status":"accepted"}]}"#;
        let Answer::Items(v) = classify(207, None, body, &ids) else {
            panic!()
        };
        assert_eq!(v["a"], ItemVerdict::Delivered { duplicate: false });
        assert_eq!(v["b"], ItemVerdict::Delivered { duplicate: true });
        assert_eq!(v["c"], ItemVerdict::Rejected("unknown dataset".into()));
        assert!(matches!(v["d"], ItemVerdict::Retry(_)));
        assert!(matches!(&v["e"], ItemVerdict::Retry(r) if r.contains("did not list")));
        assert_eq!(v.len(), 5, "only the ids sent");
        assert!(matches!(
            classify(207, None, "not json", &ids),
            Answer::Failed { .. }
        ));
        assert_eq!(
            classify(
                400,
                None,
                r#"{"error":"bad_request","message":"bad date","field":"items[0].dates"}"#,
                &ids
            ),
            Answer::Malformed("400: bad date (field items[0].dates)".into())
        );
        assert!(matches!(
            classify(401, None, "", &ids),
            Answer::Unauthorized(_)
        ));
        assert_eq!(classify(413, None, "", &ids), Answer::TooLarge);
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            classify(429, wait, "", &ids),
            Answer::Throttled { retry_after: wait }
        );
        for status in [403, 409, 500, 502, 503, 504, 302] {
            assert!(
                matches!(classify(status, None, "", &ids), Answer::Failed { .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
    }
}
