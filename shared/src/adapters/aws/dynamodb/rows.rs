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
use crate::ports::{Replaced, RowStore, StoreOutcome, StoredRow};
use crate::value::{Row, Value};

/// DynamoDB's BatchWriteItem limit.
pub const WRITE_BATCH: usize = 25;
/// DynamoDB's BatchGetItem limit.
pub const GET_BATCH: usize = 100;
/// DynamoDB's TransactWriteItems limits: actions and bytes per call.
pub const TRANSACT_ITEMS: usize = 100;
pub const TRANSACT_BYTES: usize = 4 * 1024 * 1024;
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
    /// TransactWriteItems calls (the conditional writes of `keep_first` datasets), each
    /// try counted.
    pub transact_write: std::sync::atomic::AtomicU64,
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
        r.batch_get.load(Relaxed)
            + r.batch_write.load(Relaxed)
            + r.transact_write.load(Relaxed)
            + r.query.load(Relaxed)
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
    ///
    /// `keep_first` holds under concurrency: a BatchGetItem first sets aside the rows already
    /// stored (the cheap, common case of a file delivered twice), then the rest are written by
    /// TransactWriteItems, each put conditional on its key being absent. Of two ingests that
    /// carry the same rows at once, each row goes to whichever writes it first; the other sees
    /// its condition fail and counts the row as a duplicate. (BatchWriteItem takes no
    /// conditions: a check then an unconditional write let both ingests count the same rows
    /// new and credit them to a mix of both mails.)
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
                fitting.push((row, size));
            }
        }
        let rows = fitting;
        let keyed: Vec<&KeyedRow> = rows.iter().map(|(r, _)| *r).collect();
        let existing = self.existing_keys(dataset_name, &keyed).await?;
        let keep_first = dataset.on_duplicate == OnDuplicate::KeepFirst;
        let mut writes = Vec::new();
        let mut absent = Vec::new();
        for (row, size) in rows {
            let pk = partition_key(dataset_name, row.date);
            let stored = existing.contains(&(pk.clone(), row.key.clone()));
            if stored {
                outcome.duplicate += 1;
                if keep_first {
                    continue;
                }
            } else if !keep_first {
                outcome.new += 1;
            }
            let mut item = to_item(pk, &row.key, dataset, &row.values, source, now);
            if let Some(at) = dataset.row_expiry(row.date) {
                item.insert(
                    EXPIRES_AT.into(),
                    AttributeValue::N(at.timestamp().to_string()),
                );
            }
            if keep_first {
                absent.push((item, size));
            } else {
                let put = PutRequest::builder().set_item(Some(item)).build()?;
                writes.push(WriteRequest::builder().put_request(put).build());
            }
        }
        if keep_first {
            let tried = absent.len() as u64;
            let written = self.put_absent(absent).await?;
            outcome.new += written;
            outcome.duplicate += tried - written;
        } else {
            self.write_batches(writes).await?;
        }
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
    /// Not atomic (DynamoDB has no transaction of a day's size), but ordered so that no row
    /// is ever missing: the staged rows are written over the day first, then the day is read
    /// in key order beside the staging (both partitions sort alike) and the rows the staging
    /// lacks are deleted, then the staging is emptied. Memory holds a page of each.
    async fn replace_day(
        &self,
        dataset_name: &str,
        _dataset: &Dataset,
        date: NaiveDate,
        staging: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Replaced> {
        let pk = partition_key(dataset_name, date);
        let staged_pk = partition_key(staging, date);
        let before = self.count_partition(&pk).await?;
        // 1. Every staged row over the day's.
        let mut start = None;
        loop {
            let (page, next) = self.page(&staged_pk, None, start).await?;
            let puts = page
                .into_iter()
                .map(|mut item| {
                    item.insert("pk".into(), AttributeValue::S(pk.clone()));
                    let put = PutRequest::builder().set_item(Some(item)).build()?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.write_batches(puts)
                .await
                .with_context(|| format!("writing the rebuilt rows of {pk}"))?;
            match next {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        // 2. The day's rows the staging lacks, unless stored since the rebuild began.
        let mut replaced = Replaced {
            before,
            ..Replaced::default()
        };
        let mut staged = SortKeys::new(self, staged_pk.clone());
        let mut deletes = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self.page(&pk, Some("pk, sk, ingested_at"), start).await?;
            for item in page {
                let Some(AttributeValue::S(sk)) = item.get("sk") else {
                    continue;
                };
                if staged.holds(sk).await? {
                    continue;
                }
                let stored_at = match item.get("ingested_at") {
                    Some(AttributeValue::S(t)) => DateTime::parse_from_rfc3339(t).ok(),
                    _ => None,
                };
                if stored_at.is_some_and(|t| t >= since) {
                    replaced.kept += 1;
                    continue;
                }
                replaced.removed += 1;
                let key = key_item(pk.clone(), sk);
                let delete = DeleteRequest::builder().set_key(Some(key)).build()?;
                deletes.push(WriteRequest::builder().delete_request(delete).build());
            }
            if deletes.len() >= WRITE_BATCH * self.concurrency {
                self.write_batches(std::mem::take(&mut deletes)).await?;
            }
            match next {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        self.write_batches(deletes)
            .await
            .with_context(|| format!("deleting the rows of {pk} not rebuilt"))?;
        // 3. The staging, emptied.
        self.delete_day(staging, date).await?;
        replaced.after = self.count_partition(&pk).await?;
        Ok(replaced)
    }
}

/// The sort keys of a partition in order, read a page at a time, for a merge with another
/// partition read in the same order.
struct SortKeys<'s> {
    store: &'s DynamoRowStore,
    pk: String,
    page: std::collections::VecDeque<String>,
    start: Option<Item>,
    done: bool,
}

impl<'s> SortKeys<'s> {
    fn new(store: &'s DynamoRowStore, pk: String) -> Self {
        SortKeys {
            store,
            pk,
            page: Default::default(),
            start: None,
            done: false,
        }
    }

    /// Whether the partition holds `sk`; keys must be asked in ascending order (the keys
    /// before `sk` are passed over for good).
    async fn holds(&mut self, sk: &str) -> anyhow::Result<bool> {
        loop {
            while let Some(first) = self.page.front() {
                match first.as_str().cmp(sk) {
                    std::cmp::Ordering::Less => {
                        self.page.pop_front();
                    }
                    std::cmp::Ordering::Equal => return Ok(true),
                    std::cmp::Ordering::Greater => return Ok(false),
                }
            }
            if self.done {
                return Ok(false);
            }
            let (items, next) = self
                .store
                .page(&self.pk, Some("pk, sk"), self.start.take())
                .await?;
            self.page
                .extend(items.into_iter().filter_map(|mut i| match i.remove("sk") {
                    Some(AttributeValue::S(sk)) => Some(sk),
                    _ => None,
                }));
            self.done = next.is_none();
            self.start = next;
        }
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

    /// Puts each item unless its key is stored, in TransactWriteItems calls of at most 100
    /// items and 4 MB, `concurrency` at a time; answers how many were written (the others were
    /// there already, written by someone else since the check).
    async fn put_absent(&self, items: Vec<(Item, usize)>) -> anyhow::Result<u64> {
        let mut groups: Vec<Vec<Item>> = Vec::new();
        let mut bytes = 0;
        for (item, size) in items {
            match groups.last_mut() {
                Some(group) if group.len() < TRANSACT_ITEMS && bytes + size <= TRANSACT_BYTES => {
                    bytes += size;
                    group.push(item);
                }
                _ => {
                    bytes = size;
                    groups.push(vec![item]);
                }
            }
        }
        let mut calls = futures::stream::iter(groups)
            .map(|group| self.put_group_absent(group))
            .buffer_unordered(self.concurrency);
        let mut written = 0;
        while let Some(done) = calls.next().await {
            written += done?;
        }
        Ok(written)
    }

    /// One group of conditional puts, as one transaction: when DynamoDB cancels it, the items
    /// whose condition failed are dropped (stored meanwhile by another writer) and the rest
    /// sent again; a conflict with another transaction or a throttle is retried after a
    /// backoff. Answers how many of the group were written.
    async fn put_group_absent(&self, mut group: Vec<Item>) -> anyhow::Result<u64> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
        let mut attempt = 0;
        while !group.is_empty() {
            self.count(&self.requests.transact_write);
            let actions = group
                .iter()
                .map(|item| {
                    let put = Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item.clone()))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()?;
                    Ok(TransactWriteItem::builder().put(put).build())
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions))
                .send()
                .await;
            let error = match sent {
                Ok(_) => return Ok(group.len() as u64),
                Err(e) => e,
            };
            let retry = match error.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
                    let reasons = cancelled.cancellation_reasons();
                    if reasons.len() != group.len() {
                        bail!(
                            "TransactWriteItems was cancelled with {} reason(s) for {} item(s): {}",
                            reasons.len(),
                            group.len(),
                            cancelled.message().unwrap_or_default()
                        );
                    }
                    let mut kept = Vec::with_capacity(group.len());
                    let mut retry = false;
                    for (item, reason) in group.into_iter().zip(reasons) {
                        match reason.code().unwrap_or("None") {
                            "ConditionalCheckFailed" => {}
                            "None" => kept.push(item),
                            "TransactionConflict"
                            | "ThrottlingError"
                            | "ProvisionedThroughputExceeded"
                            | "RequestLimitExceeded" => {
                                retry = true;
                                kept.push(item);
                            }
                            other => bail!(
                                "TransactWriteItems refused an item of the rows table: {other}: {}",
                                reason.message().unwrap_or_default()
                            ),
                        }
                    }
                    group = kept;
                    retry
                }
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => true,
                _ => {
                    let e = call_error("TransactWriteItems", error);
                    if !e.is::<Throttled>() {
                        return Err(e);
                    }
                    true
                }
            };
            if retry {
                attempt += 1;
                if attempt >= MAX_ATTEMPTS {
                    bail!(
                        "TransactWriteItems kept conflicting or throttled: {} item(s) unwritten after {attempt} attempts",
                        group.len()
                    );
                }
                tokio::time::sleep(backoff(
                    attempt,
                    Duration::from_millis(50),
                    Duration::from_secs(2),
                ))
                .await;
            }
        }
        Ok(0)
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

    /// How many items partition `pk` holds (Select COUNT, every page).
    async fn count_partition(&self, pk: &str) -> anyhow::Result<u64> {
        let mut total = 0;
        let mut start = None;
        loop {
            self.count(&self.requests.query);
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .with_context(|| format!("counting rows of {pk}"))?;
            total += page.count.max(0) as u64;
            match page.last_evaluated_key.filter(|k| !k.is_empty()) {
                Some(k) => start = Some(k),
                None => return Ok(total),
            }
        }
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
