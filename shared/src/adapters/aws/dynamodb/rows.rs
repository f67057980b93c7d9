//! The row store on the DynamoDB `rows` table. pk `"{dataset}#{yyyy-mm-dd}"`, sk the row's key,
//! the row's columns in the map `cols`, its source mail in `src`.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, KeysAndAttributes, PutRequest, WriteRequest,
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::adapters::retry::backoff;
use crate::csv_ingest::KeyedRow;
use crate::definitions::{ColumnType, Dataset, OnDuplicate};
use crate::ports::{RowStore, StoreOutcome, StoredRow};
use crate::value::{Row, Value};

/// DynamoDB's BatchWriteItem limit.
pub const WRITE_BATCH: usize = 25;
/// DynamoDB's BatchGetItem limit.
pub const GET_BATCH: usize = 100;
const MAX_ATTEMPTS: u32 = 10;
/// The table's TTL attribute: when a row of a dataset with `retain_days` expires (epoch seconds).
pub const EXPIRES_AT: &str = "expires_at";
/// DynamoDB's largest item; a row over it is rejected, not retried.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// Batch calls in flight at once per `store` call, unless configured.
pub const DEFAULT_CONCURRENCY: usize = 8;

#[derive(Clone, Debug)]
pub struct DynamoRowStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// Batch calls in flight at once (`CHARLIE_ROW_WRITE_CONCURRENCY`): with on-demand
    /// capacity a table takes thousands of writes a second; provisioned tables throttle, and
    /// throttled calls back off (they never push past the table's rate on purpose).
    concurrency: usize,
    /// Requests sent so far, by operation (for the benchmarks).
    requests: std::sync::Arc<RequestCounts>,
}

/// Calls made, by operation.
#[derive(Debug, Default)]
pub struct RequestCounts {
    pub batch_get: std::sync::atomic::AtomicU64,
    pub batch_write: std::sync::atomic::AtomicU64,
    pub query: std::sync::atomic::AtomicU64,
    /// Calls DynamoDB throttled (each retried after a backoff).
    pub throttled: std::sync::atomic::AtomicU64,
}

/// A throttled call (`ProvisionedThroughputExceededException`, `ThrottlingException`,
/// `RequestLimitExceeded`): retried after a backoff.
#[derive(Debug, thiserror::Error)]
#[error("DynamoDB throttled {0}: {1}")]
struct Throttled(&'static str, String);

/// The error of a batch call, marked [`Throttled`] when DynamoDB asked us to slow down.
fn call_error<E>(op: &'static str, e: aws_sdk_dynamodb::error::SdkError<E>) -> anyhow::Error
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    let code = e.code().unwrap_or_default().to_owned();
    if matches!(
        code.as_str(),
        "ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded"
    ) {
        anyhow::Error::new(Throttled(op, code))
    } else {
        anyhow::Error::new(e).context(format!("{op} on the rows table"))
    }
}

pub fn partition_key(dataset: &str, date: NaiveDate) -> String {
    format!("{dataset}#{}", date.format("%Y-%m-%d"))
}

impl DynamoRowStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoRowStore {
            client,
            table: table.into(),
            concurrency: DEFAULT_CONCURRENCY,
            requests: Default::default(),
        }
    }

    /// At most `n` (≥ 1) batch calls in flight per `store` call.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Requests sent so far, all operations (for the store benchmark).
    pub fn requests(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let r = &self.requests;
        r.batch_get.load(Relaxed) + r.batch_write.load(Relaxed) + r.query.load(Relaxed)
    }

    /// Requests sent so far, by operation.
    pub fn request_counts(&self) -> &RequestCounts {
        &self.requests
    }

    fn count(&self, op: &std::sync::atomic::AtomicU64) {
        op.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait]
impl RowStore for DynamoRowStore {
    /// Stores each row once. With `keep_first`, rows already stored are left as they are and
    /// counted as duplicates; with `replace`, they are overwritten.
    async fn store(
        &self,
        dataset_name: &str,
        dataset: &Dataset,
        rows: &[KeyedRow],
        source: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<StoreOutcome> {
        let mut outcome = StoreOutcome::default();
        let mut fitting = Vec::with_capacity(rows.len());
        for row in rows {
            let size = item_size(dataset, &row.key, &row.values, source);
            if size > MAX_ITEM_BYTES {
                outcome.rejected.push(crate::csv_ingest::Reject {
                    line: row.line,
                    reason: format!(
                        "the row takes {} KB as a DynamoDB item, over the item limit of 400 KB",
                        size.div_ceil(1024)
                    ),
                });
            } else {
                fitting.push(row);
            }
        }
        let rows = fitting;
        let existing = self.existing_keys(dataset_name, &rows).await?;
        let mut writes = Vec::new();
        for row in rows {
            let pk = partition_key(dataset_name, row.date);
            let stored = existing.contains(&(pk.clone(), row.key.clone()));
            if stored {
                outcome.duplicate += 1;
                if dataset.on_duplicate == OnDuplicate::KeepFirst {
                    continue;
                }
            } else {
                outcome.new += 1;
            }
            let mut item = to_item(pk, &row.key, dataset, &row.values, source, now);
            if let Some(at) = dataset.row_expiry(row.date) {
                item.insert(
                    EXPIRES_AT.into(),
                    AttributeValue::N(at.timestamp().to_string()),
                );
            }
            let put = PutRequest::builder().set_item(Some(item)).build()?;
            writes.push(WriteRequest::builder().put_request(put).build());
        }
        self.write_batches(writes).await?;
        Ok(outcome)
    }

    /// Hands every stored row of `dataset` on `date` to `each`, in key order, a page at a time:
    /// memory holds one page (at most 1 MB of items), whatever the day's size.
    fn day_pages<'a>(
        &'a self,
        dataset_name: &'a str,
        dataset: &'a Dataset,
        date: NaiveDate,
    ) -> BoxStream<'a, anyhow::Result<Vec<StoredRow>>> {
        let pk = partition_key(dataset_name, date);
        // (the next page's start, whether a page is still to come)
        futures::stream::try_unfold((None, true), move |(start, more)| {
            let pk = pk.clone();
            async move {
                if !more {
                    return Ok(None);
                }
                let (items, next) = self.page(&pk, None, start).await?;
                let rows = items
                    .iter()
                    .map(|item| {
                        from_item(dataset, item)
                            .with_context(|| format!("reading a stored row of {pk}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let more = next.is_some();
                Ok(Some((rows, (next, more))))
            }
        })
        .boxed()
    }

    /// Nothing to do: every row of a dataset with `retain_days` carries its `expires_at`, and
    /// the table's TTL deletes it (within a few days of that time, at no write cost).
    async fn expire_before(
        &self,
        _dataset_name: &str,
        _cutoff: NaiveDate,
    ) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }

    /// Deletes every stored row of `dataset` on `date`; returns how many there were.
    async fn delete_day(&self, dataset_name: &str, date: NaiveDate) -> anyhow::Result<u64> {
        let pk = partition_key(dataset_name, date);
        let deletes = self
            .partition(&pk, Some("pk, sk"))
            .await?
            .into_iter()
            .map(|key| {
                let key = DeleteRequest::builder().set_key(Some(key)).build()?;
                Ok(WriteRequest::builder().delete_request(key).build())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let count = deletes.len() as u64;
        self.write_batches(deletes).await?;
        Ok(count)
    }
}

impl DynamoRowStore {
    /// Puts or deletes in batches of 25, `concurrency` at a time, each retried until DynamoDB
    /// processed all of it.
    async fn write_batches(&self, requests: Vec<WriteRequest>) -> anyhow::Result<()> {
        let mut requests = requests.into_iter().peekable();
        let mut batches = Vec::new();
        while requests.peek().is_some() {
            batches.push(requests.by_ref().take(WRITE_BATCH).collect::<Vec<_>>());
        }
        let mut calls = futures::stream::iter(batches)
            .map(|batch| {
                write_all(batch, |batch| {
                    let client = self.client.clone();
                    let table = self.table.clone();
                    self.count(&self.requests.batch_write);
                    async move {
                        let out = client
                            .batch_write_item()
                            .request_items(&table, batch)
                            .send()
                            .await
                            .map_err(|e| call_error("BatchWriteItem", e))?;
                        Ok(out
                            .unprocessed_items
                            .and_then(|mut m| m.remove(&table))
                            .unwrap_or_default())
                    }
                })
            })
            .buffer_unordered(self.concurrency);
        while let Some(done) = calls.next().await {
            done?;
        }
        Ok(())
    }

    async fn existing_keys(
        &self,
        dataset_name: &str,
        rows: &[&KeyedRow],
    ) -> anyhow::Result<std::collections::HashSet<(String, String)>> {
        let mut found = std::collections::HashSet::new();
        let batches: Vec<Vec<HashMap<String, AttributeValue>>> = rows
            .chunks(GET_BATCH)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|r| key_item(partition_key(dataset_name, r.date), &r.key))
                    .collect()
            })
            .collect();
        let mut calls = futures::stream::iter(batches)
            .map(|keys| {
                until_processed(keys, "BatchGetItem", "keys", |batch| {
                    let client = self.client.clone();
                    let table = self.table.clone();
                    self.count(&self.requests.batch_get);
                    async move {
                        let keys = KeysAndAttributes::builder()
                            .set_keys(Some(batch))
                            .projection_expression("pk, sk")
                            .build()?;
                        let out = client
                            .batch_get_item()
                            .request_items(&table, keys)
                            .send()
                            .await
                            .map_err(|e| call_error("BatchGetItem", e))?;
                        let stored = out
                            .responses
                            .and_then(|mut r| r.remove(&table))
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|item| match (item.get("pk"), item.get("sk")) {
                                (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => {
                                    Some((pk.clone(), sk.clone()))
                                }
                                _ => None,
                            })
                            .collect();
                        let unprocessed = out
                            .unprocessed_keys
                            .and_then(|mut m| m.remove(&table))
                            .map(|k| k.keys)
                            .unwrap_or_default();
                        Ok((stored, unprocessed))
                    }
                })
            })
            .buffer_unordered(self.concurrency);
        while let Some(stored) = calls.next().await {
            found.extend(stored?);
        }
        Ok(found)
    }

    /// Every item of partition `pk`, all pages, with only `projection`'s attributes if given.
    async fn partition(&self, pk: &str, projection: Option<&str>) -> anyhow::Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self.page(pk, projection, start).await?;
            items.extend(page);
            match next {
                Some(k) => start = Some(k),
                None => return Ok(items),
            }
        }
    }

    /// One page of partition `pk` from `start`, with only `projection`'s attributes if
    /// given, and where the next page starts (`None`: this was the last).
    async fn page(
        &self,
        pk: &str,
        projection: Option<&str>,
        start: Option<HashMap<String, AttributeValue>>,
    ) -> anyhow::Result<(Vec<Item>, Option<Item>)> {
        self.count(&self.requests.query);
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
            .set_projection_expression(projection.map(str::to_owned))
            .set_exclusive_start_key(start)
            .send()
            .await
            .with_context(|| format!("querying rows of {pk}"))?;
        let next = page.last_evaluated_key.filter(|k| !k.is_empty());
        Ok((page.items.unwrap_or_default(), next))
    }
}

type Item = HashMap<String, AttributeValue>;

/// Writes `items` with BatchWriteItem through `send` (which returns the unprocessed ones),
/// retrying what DynamoDB left unprocessed with jittered backoff until none remain.
pub async fn write_all<F, Fut>(items: Vec<WriteRequest>, mut send: F) -> anyhow::Result<()>
where
    F: FnMut(Vec<WriteRequest>) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<WriteRequest>>>,
{
    until_processed(items, "BatchWriteItem", "items", |batch| {
        let sent = send(batch);
        async move { Ok((Vec::<()>::new(), sent.await?)) }
    })
    .await?;
    Ok(())
}

/// Runs a DynamoDB batch call through `send` (which returns its results and what DynamoDB left
/// unprocessed) until nothing is left, with jittered backoff between tries; the results of
/// every try are collected. `op` and `noun` name the call in the error.
async fn until_processed<T, R, F, Fut>(
    items: Vec<T>,
    op: &str,
    noun: &str,
    mut send: F,
) -> anyhow::Result<Vec<R>>
where
    T: Clone,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<R>, Vec<T>)>>,
{
    let mut results = Vec::new();
    let mut pending = items;
    let mut attempt = 0;
    while !pending.is_empty() {
        let (done, left) = match send(pending.clone()).await {
            Ok(sent) => sent,
            Err(e) if e.is::<Throttled>() && attempt + 1 < MAX_ATTEMPTS => {
                // Slowed down by the table: the same batch again after a longer backoff.
                attempt += 1;
                tracing::warn!(op, attempt, error = %e, "throttled: backing off");
                tokio::time::sleep(backoff(
                    attempt,
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                ))
                .await;
                continue;
            }
            Err(e) => return Err(e),
        };
        results.extend(done);
        pending = left;
        if pending.is_empty() {
            break;
        }
        attempt += 1;
        if attempt >= MAX_ATTEMPTS {
            bail!(
                "{op} left {} {noun} unprocessed after {attempt} attempts",
                pending.len()
            );
        }
        tokio::time::sleep(backoff(
            attempt,
            Duration::from_millis(50),
            Duration::from_secs(2),
        ))
        .await;
    }
    Ok(results)
}

fn key_item(pk: String, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk)),
        ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

fn to_item(
    pk: String,
    key: &str,
    dataset: &Dataset,
    values: &Row,
    source: &str,
    now: DateTime<Utc>,
) -> HashMap<String, AttributeValue> {
    let cols: HashMap<String, AttributeValue> = dataset
        .columns
        .iter()
        .zip(values)
        .filter_map(|(c, v)| v.as_ref().map(|v| (c.name.clone(), to_attr(v))))
        .collect();
    let mut item = key_item(pk, key);
    item.insert("cols".into(), AttributeValue::M(cols));
    item.insert("src".into(), AttributeValue::S(source.to_owned()));
    item.insert("ingested_at".into(), AttributeValue::S(now.to_rfc3339()));
    item
}

/// About how many bytes the row's item takes in DynamoDB's accounting (attribute names plus
/// values; numbers as their digits), a little over rather than under.
fn item_size(dataset: &Dataset, key: &str, values: &Row, source: &str) -> usize {
    let fixed = "pk".len() + 64 + "sk".len() + key.len() + "src".len() + source.len();
    let fixed = fixed + "ingested_at".len() + 32 + "cols".len() + 3 + EXPIRES_AT.len() + 12;
    let cols: usize = dataset
        .columns
        .iter()
        .zip(values)
        .filter_map(|(c, v)| {
            let value = match v.as_ref()? {
                Value::Text(s) => s.len(),
                Value::Bool(_) => 1,
                _ => 32,
            };
            Some(c.name.len() + value + 1)
        })
        .sum();
    fixed + cols
}

fn to_attr(v: &Value) -> AttributeValue {
    match v {
        Value::Int(i) => AttributeValue::N(i.to_string()),
        Value::Dec(d) => AttributeValue::N(d.to_string()),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Text(s) => AttributeValue::S(s.to_string()),
        Value::DateTime(t) => AttributeValue::S(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
        Value::Date(d) => AttributeValue::S(d.format("%Y-%m-%d").to_string()),
    }
}

fn from_item(
    dataset: &Dataset,
    item: &HashMap<String, AttributeValue>,
) -> anyhow::Result<StoredRow> {
    let key = match item.get("sk") {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => bail!("item without a string sk"),
    };
    let source = match item.get("src") {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => String::new(),
    };
    let empty = HashMap::new();
    let cols = match item.get("cols") {
        Some(AttributeValue::M(m)) => m,
        _ => &empty,
    };
    let mut values = Vec::with_capacity(dataset.columns.len());
    for c in &dataset.columns {
        let v = match cols.get(&c.name) {
            None | Some(AttributeValue::Null(_)) => None,
            Some(attr) => {
                Some(from_attr(c.kind, attr).with_context(|| format!("column {}", c.name))?)
            }
        };
        values.push(v);
    }
    Ok(StoredRow {
        key,
        values,
        source,
    })
}

fn from_attr(kind: ColumnType, attr: &AttributeValue) -> anyhow::Result<Value> {
    Ok(match (kind, attr) {
        (ColumnType::Integer | ColumnType::Duration, AttributeValue::N(n)) => {
            Value::Int(n.parse()?)
        }
        (ColumnType::Decimal, AttributeValue::N(n)) => Value::Dec(n.parse()?),
        (ColumnType::Boolean, AttributeValue::Bool(b)) => Value::Bool(*b),
        (ColumnType::Datetime, AttributeValue::S(s)) => {
            Value::DateTime(NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")?)
        }
        (ColumnType::Date, AttributeValue::S(s)) => {
            Value::Date(NaiveDate::parse_from_str(s, "%Y-%m-%d")?)
        }
        (ColumnType::Text, AttributeValue::S(s)) => Value::Text(s.as_str().into()),
        (kind, other) => bail!("stored as {other:?}, which does not fit type {kind:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn put(n: usize) -> WriteRequest {
        let item = key_item(format!("d#{n}"), "k");
        WriteRequest::builder()
            .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
            .build()
    }

    #[tokio::test(start_paused = true)]
    async fn unprocessed_items_are_retried_until_written() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        // DynamoDB accepts only the first two items of each call.
        write_all((0..5).map(put).collect(), move |batch| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(batch.len());
                Ok(batch.into_iter().skip(2).collect())
            }
        })
        .await
        .unwrap();
        assert_eq!(*calls.lock().unwrap(), vec![5, 3, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_never_drains_fails_loudly() {
        let err = write_all(vec![put(1)], |batch| async move { Ok(batch) })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1 items unprocessed"), "{err}");
    }

    #[test]
    fn values_round_trip_through_attributes() {
        let cases = [
            (ColumnType::Integer, Value::Int(-42)),
            (ColumnType::Decimal, Value::Dec(1.25)),
            (ColumnType::Boolean, Value::Bool(true)),
            (ColumnType::Text, Value::Text("=SUM(A1)".into())),
            (
                ColumnType::Datetime,
                Value::DateTime("2024-03-14T09:00:00".parse().unwrap()),
            ),
            (ColumnType::Date, Value::Date("2024-03-14".parse().unwrap())),
        ];
        for (kind, v) in cases {
            assert_eq!(from_attr(kind, &to_attr(&v)).unwrap(), v);
        }
    }
}
