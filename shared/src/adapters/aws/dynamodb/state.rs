//! Claims and typed records on the DynamoDB `state` table (pk, sk).
//!
//! A claim is one conditional put (the Powertools idempotency record): it succeeds when no
//! record exists, when the record's TTL passed (DynamoDB deletes expired items lazily), or when
//! an in-progress claim passed its in-progress expiry. Completing stores the result; releasing
//! deletes an in-progress claim. Records hold one JSON document in `data`.

use std::collections::HashMap;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};

use super::{n, s, str_attr};
use crate::ports::{Claim, Claims, StateRecords};

const CLAIM_SK: &str = "claim";
/// A counter bucket's attributes are `c.{name}` (numbers, added to atomically).
const COUNTER_PREFIX: &str = "c.";
const IN_PROGRESS: &str = "IN_PROGRESS";
const COMPLETE: &str = "COMPLETE";

#[derive(Clone, Debug)]
pub struct DynamoState {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoState {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoState {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Every item under `pk` (whose sk starts with `sk_prefix`, when given), page after page.
    async fn items_under(
        &self,
        pk: &str,
        sk_prefix: Option<&str>,
        consistent: bool,
    ) -> anyhow::Result<Vec<HashMap<String, AttributeValue>>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let mut req = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", s(pk))
                .consistent_read(consistent)
                .set_exclusive_start_key(start.take());
            // DynamoDB refuses an empty string as a key value: no prefix is the whole partition.
            req = match sk_prefix.filter(|p| !p.is_empty()) {
                Some(prefix) => req
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix)),
                None => req.key_condition_expression("pk = :pk"),
            };
            let page = req.send().await.with_context(|| {
                format!("querying state records {pk}/{}*", sk_prefix.unwrap_or(""))
            })?;
            out.extend(page.items().iter().cloned());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn item(
        &self,
        pk: &str,
        sk: &str,
    ) -> anyhow::Result<Option<HashMap<String, AttributeValue>>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .with_context(|| format!("reading state {pk}/{sk}"))?;
        Ok(out.item)
    }
}

#[async_trait]
impl Claims for DynamoState {
    async fn claim(
        &self,
        key: &str,
        payload_hash: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<Claim> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(key))
            .item("sk", s(CLAIM_SK))
            .item("status", s(IN_PROGRESS))
            .item("payload_hash", s(payload_hash))
            .item("in_progress_until", n(in_progress_until.timestamp()))
            .item("claimed_at", s(&now.to_rfc3339()))
            .item("expires_at", n(expires_at.timestamp()))
            .condition_expression(
                "attribute_not_exists(pk) OR expires_at < :now OR (#status = :in_progress AND in_progress_until < :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .expression_attribute_values(":now", n(now.timestamp()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Claim::Acquired),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
            {
                let old = match e.err() {
                    PutItemError::ConditionalCheckFailedException(c) => c.item.clone(),
                    _ => None,
                };
                // Not every emulator returns the old item; read it when missing.
                let item = match old {
                    Some(i) => Some(i),
                    None => self.item(key, CLAIM_SK).await?,
                };
                let status = item.as_ref().and_then(|i| str_attr(i, "status"));
                Ok(if status.as_deref() == Some(COMPLETE) {
                    Claim::AlreadyDone {
                        result: item
                            .as_ref()
                            .and_then(|i| str_attr(i, "result"))
                            .unwrap_or_default(),
                        payload_hash: item
                            .as_ref()
                            .and_then(|i| str_attr(i, "payload_hash"))
                            .filter(|h| !h.is_empty()),
                    }
                } else {
                    Claim::InProgressElsewhere
                })
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("claiming {key}"))),
        }
    }

    async fn complete(&self, key: &str, result: &str, now: DateTime<Utc>) -> anyhow::Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .key("sk", s(CLAIM_SK))
            .update_expression("SET #status = :complete, #result = :result, completed_at = :now REMOVE in_progress_until")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":complete", s(COMPLETE))
            .expression_attribute_values(":result", s(result))
            .expression_attribute_values(":now", s(&now.to_rfc3339()))
            .send()
            .await
            .with_context(|| format!("completing claim {key}"))?;
        Ok(())
    }

    async fn release(&self, key: &str) -> anyhow::Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .key("sk", s(CLAIM_SK))
            .condition_expression("#status = :in_progress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .send()
            .await
            .with_context(|| format!("releasing claim {key}"))?;
        Ok(())
    }
}

#[async_trait]
impl StateRecords for DynamoState {
    async fn put(
        &self,
        pk: &str,
        sk: &str,
        data: String,
        index: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item("data", AttributeValue::S(data));
        if let Some((gpk, gsk)) = index {
            req = req.item("gsi1pk", s(gpk)).item("gsi1sk", s(gsk));
        }
        req.send()
            .await
            .with_context(|| format!("writing state record {pk}/{sk}"))?;
        Ok(())
    }

    async fn put_ranked(&self, pk: &str, sk: &str, data: String, rank: u8) -> anyhow::Result<bool> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item("data", AttributeValue::S(data))
            .item("rank", n(i64::from(rank)))
            .condition_expression("attribute_not_exists(#rank) OR #rank <= :rank")
            .expression_attribute_names("#rank", "rank")
            .expression_attribute_values(":rank", n(i64::from(rank)))
            .send()
            .await;
        conditional_put(result, || format!("writing ranked record {pk}/{sk}"))
    }

    async fn get_versioned(&self, pk: &str, sk: &str) -> anyhow::Result<Option<(String, u64)>> {
        Ok(self.item(pk, sk).await?.and_then(|item| {
            let version = item
                .get("ver")
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Some((str_attr(&item, "data")?, version))
        }))
    }

    async fn put_versioned(
        &self,
        pk: &str,
        sk: &str,
        data: String,
        expected: Option<u64>,
    ) -> anyhow::Result<bool> {
        let next = expected.map_or(1, |v| v + 1);
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item("data", AttributeValue::S(data))
            .item("ver", n(next as i64));
        req = match expected {
            None => req.condition_expression("attribute_not_exists(pk)"),
            // A record written without a version counts as version 0.
            Some(0) => req
                .condition_expression("attribute_not_exists(ver) OR ver = :v")
                .expression_attribute_values(":v", n(0)),
            Some(v) => req
                .condition_expression("ver = :v")
                .expression_attribute_values(":v", n(v as i64)),
        };
        conditional_put(req.send().await, || {
            format!("writing versioned record {pk}/{sk}")
        })
    }

    async fn get(&self, pk: &str, sk: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .item(pk, sk)
            .await?
            .and_then(|item| str_attr(&item, "data")))
    }

    async fn query(&self, pk: &str, sk_prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .items_under(pk, Some(sk_prefix), false)
            .await?
            .iter()
            .filter_map(|item| Some((str_attr(item, "sk")?, str_attr(item, "data")?)))
            .collect())
    }

    async fn query_index(
        &self,
        index_pk: &str,
        before: Option<&str>,
        from: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<crate::ports::IndexedRecord>> {
        // One condition on the sort key: BETWEEN is inclusive, so `before` itself is dropped.
        let condition = match (before, from) {
            (Some(_), Some(_)) => "gsi1pk = :pk AND gsi1sk BETWEEN :from AND :before",
            (Some(_), None) => "gsi1pk = :pk AND gsi1sk < :before",
            (None, Some(_)) => "gsi1pk = :pk AND gsi1sk >= :from",
            (None, None) => "gsi1pk = :pk",
        };
        let mut out = Vec::new();
        let mut start = None;
        while out.len() < limit {
            let mut req = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi1")
                .key_condition_expression(condition)
                .expression_attribute_values(":pk", s(index_pk))
                .scan_index_forward(false)
                .limit(i32::try_from(limit - out.len() + 1).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            if let Some(b) = before {
                req = req.expression_attribute_values(":before", s(b));
            }
            if let Some(f) = from {
                req = req.expression_attribute_values(":from", s(f));
            }
            let page = req
                .send()
                .await
                .with_context(|| format!("querying the state index under {index_pk}"))?;
            for item in page.items() {
                let (Some(pk), Some(sk), Some(index_sk), Some(data)) = (
                    str_attr(item, "pk"),
                    str_attr(item, "sk"),
                    str_attr(item, "gsi1sk"),
                    str_attr(item, "data"),
                ) else {
                    continue;
                };
                if before.is_some_and(|b| index_sk.as_str() >= b) || out.len() >= limit {
                    continue;
                }
                out.push(crate::ports::IndexedRecord {
                    pk,
                    sk,
                    index_sk,
                    data,
                });
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn count_once(
        &self,
        event: &str,
        bucket: (&str, &str),
        increments: &[(String, u64)],
        keep_marker_until: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
        if increments.is_empty() {
            return Ok(false);
        }
        let marker = Put::builder()
            .table_name(&self.table)
            .item("pk", s(&format!("COUNTED#{event}")))
            .item("sk", s("counted"))
            .item("expires_at", n(keep_marker_until.timestamp()))
            .condition_expression("attribute_not_exists(pk)")
            .build()?;
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(bucket.0))
            .key("sk", s(bucket.1));
        let mut adds = Vec::new();
        for (i, (name, v)) in increments.iter().enumerate() {
            adds.push(format!("#c{i} :v{i}"));
            update = update
                .expression_attribute_names(format!("#c{i}"), format!("{COUNTER_PREFIX}{name}"))
                .expression_attribute_values(format!(":v{i}"), AttributeValue::N(v.to_string()));
        }
        let update = update
            .update_expression(format!("ADD {}", adds.join(", ")))
            .build()?;
        let sent = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(marker).build())
            .transact_items(TransactWriteItem::builder().update(update).build())
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err(),
                    TransactWriteItemsError::TransactionCanceledException(c)
                        if c.cancellation_reasons().first().and_then(|r| r.code())
                            == Some("ConditionalCheckFailed")
                ) =>
            {
                Ok(false) // counted before
            }
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("counting {event} in {}/{}", bucket.0, bucket.1))),
        }
    }

    async fn counters(
        &self,
        pk: &str,
    ) -> anyhow::Result<Vec<(String, crate::ports::CounterValues)>> {
        let items = self.items_under(pk, None, true).await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let values = item
                    .iter()
                    .filter_map(|(k, v)| {
                        let name = k.strip_prefix(COUNTER_PREFIX)?;
                        Some((name.to_owned(), v.as_n().ok()?.parse().ok()?))
                    })
                    .collect();
                Some((str_attr(item, "sk")?, values))
            })
            .collect())
    }
}

/// A conditional PutItem's result: written (true), refused by its condition (false), or an
/// error with `what` as its context.
fn conditional_put<O>(
    result: Result<O, SdkError<PutItemError, aws_sdk_dynamodb::config::http::HttpResponse>>,
    what: impl FnOnce() -> String,
) -> anyhow::Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(e))
            if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
        {
            Ok(false)
        }
        Err(e) => Err(anyhow::Error::new(e).context(what())),
    }
}
