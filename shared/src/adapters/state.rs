//! `StateStore`: the DynamoDB `state` table of typed items (pk, sk).
//!
//! Claims follow the idempotency-record design of AWS Powertools: a claim is one conditional put
//! that succeeds when no record exists, or when an earlier in-progress claim has expired (its
//! holder crashed). Completing stores the result; releasing (on failure) deletes the claim so a
//! retry can take it. Records expire by TTL (`expires_at`).

use std::collections::HashMap;

use anyhow::Context;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Duration, Utc};

const CLAIM_SK: &str = "claim";
const IN_PROGRESS: &str = "IN_PROGRESS";
const COMPLETE: &str = "COMPLETE";

#[derive(Clone, Debug)]
pub struct StateStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Ours: do the work, then `complete` or `release`.
    Acquired,
    /// Done before; carries the stored result.
    AlreadyDone(String),
    /// Someone else is on it right now (until the claim expires).
    InProgressElsewhere,
}

impl StateStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        StateStore {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Claims `pk` for `hold`; the claim record is kept for `keep` after that.
    pub async fn claim(
        &self,
        pk: &str,
        now: DateTime<Utc>,
        hold: Duration,
        keep: Duration,
    ) -> anyhow::Result<Claim> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(CLAIM_SK))
            .item("status", s(IN_PROGRESS))
            .item("in_progress_until", n((now + hold).timestamp()))
            .item("claimed_at", s(&now.to_rfc3339()))
            .item("expires_at", n((now + keep).timestamp()))
            .condition_expression(
                "attribute_not_exists(pk) OR (#status = :in_progress AND in_progress_until < :now)",
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
                    None => self.get(pk, CLAIM_SK).await?,
                };
                let status = item.as_ref().and_then(|i| str_attr(i, "status"));
                Ok(if status.as_deref() == Some(COMPLETE) {
                    Claim::AlreadyDone(
                        item.as_ref()
                            .and_then(|i| str_attr(i, "result"))
                            .unwrap_or_default(),
                    )
                } else {
                    Claim::InProgressElsewhere
                })
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("claiming {pk}"))),
        }
    }

    /// Marks a claim done with its result (JSON text, shown to operators and to later claims).
    pub async fn complete(&self, pk: &str, result: &str, now: DateTime<Utc>) -> anyhow::Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(CLAIM_SK))
            .update_expression("SET #status = :complete, #result = :result, completed_at = :now REMOVE in_progress_until")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":complete", s(COMPLETE))
            .expression_attribute_values(":result", s(result))
            .expression_attribute_values(":now", s(&now.to_rfc3339()))
            .send()
            .await
            .with_context(|| format!("completing claim {pk}"))?;
        Ok(())
    }

    /// [`StateStore::release`] for a caller that carries on either way: a failure is logged,
    /// and the claim frees itself when its hold ends.
    pub async fn release_or_let_expire(&self, pk: &str) {
        if let Err(e) = self.release(pk).await {
            tracing::warn!(error = %format!("{e:#}"), claim = pk, "could not release the claim; it expires by itself");
        }
    }

    /// Gives a claim back after a failure, so the retry can take it at once.
    pub async fn release(&self, pk: &str) -> anyhow::Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(CLAIM_SK))
            .condition_expression("#status = :in_progress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .send()
            .await
            .with_context(|| format!("releasing claim {pk}"))?;
        Ok(())
    }

    /// Writes a record (an ingest outcome, a run, a delta link) with a JSON `data` attribute.
    pub async fn put_record(
        &self,
        pk: &str,
        sk: &str,
        data: &serde_json::Value,
        index: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item("data", s(&data.to_string()));
        if let Some((gpk, gsk)) = index {
            req = req.item("gsi1pk", s(gpk)).item("gsi1sk", s(gsk));
        }
        req.send()
            .await
            .with_context(|| format!("writing state record {pk}/{sk}"))?;
        Ok(())
    }

    /// The `data` of a record written by `put_record`.
    pub async fn get_record(
        &self,
        pk: &str,
        sk: &str,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(item) = self.get(pk, sk).await? else {
            return Ok(None);
        };
        let Some(data) = str_attr(&item, "data") else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_str(&data).with_context(|| {
            format!("state record {pk}/{sk} holds invalid JSON")
        })?))
    }

    /// Every record under `pk` whose sk starts with `prefix`.
    pub async fn records(
        &self,
        pk: &str,
        prefix: &str,
    ) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":prefix", s(prefix))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .with_context(|| format!("querying state records {pk}/{prefix}*"))?;
            for item in page.items() {
                if let (Some(sk), Some(data)) = (str_attr(item, "sk"), str_attr(item, "data")) {
                    out.push((sk, serde_json::from_str(&data)?));
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn get(
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

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn str_attr(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}
