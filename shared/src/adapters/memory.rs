//! In-memory adapters of every port, for unit tests of the stages: the same semantics as the
//! AWS and Graph adapters (dedup by key, conditional claims, versioned objects, paged delta
//! rounds), with switches that make a call fail the way the real service can.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use anyhow::bail;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::csv_ingest::KeyedRow;
use crate::definitions::{Dataset, OnDuplicate, TransportKind};
use crate::ports::{
    AttachmentInfo, ByteChunks, Claim, Claims, ClientStateStore, DeadLetter, DeadLetters,
    DeltaEntry, DeltaPage, FileAttachment, GraphError, MailMessage, MailSource, MailTransport,
    NoSuchObject, ObjectInfo, Objects, OutgoingMail, QueuedMessage, Replaced, RowStore, SentMail,
    StateRecords, StoreOutcome, StoredObject, StoredRow, Subscription, SubscriptionRequest,
    Subscriptions, WorkQueue,
};
use crate::report_mail::Recipients;
use crate::value::Row;

/// `bytes` as a stream of 64 KiB pieces, as a network body arrives.
fn chunked(bytes: Vec<u8>) -> ByteChunks {
    let bytes = bytes::Bytes::from(bytes);
    let pieces: Vec<anyhow::Result<bytes::Bytes>> = (0..bytes.len())
        .step_by(64 * 1024)
        .map(|at| Ok(bytes.slice(at..(at + 64 * 1024).min(bytes.len()))))
        .collect();
    futures::stream::iter(pieces).boxed()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A switch that makes the next calls of an adapter fail with a message: every call until
/// cleared, or only the next few.
#[derive(Default)]
pub struct Fault(Mutex<Option<(String, Option<u32>)>>);

impl Fault {
    /// Every call fails with `message` until [`Fault::clear`].
    pub fn set(&self, message: &str) {
        *lock(&self.0) = Some((message.to_owned(), None));
    }

    /// The next `calls` calls fail with `message`, the ones after succeed (a transient fault).
    pub fn fail_next(&self, calls: u32, message: &str) {
        *lock(&self.0) = (calls > 0).then(|| (message.to_owned(), Some(calls)));
    }

    pub fn clear(&self) {
        *lock(&self.0) = None;
    }

    fn check(&self) -> anyhow::Result<()> {
        let mut fault = lock(&self.0);
        let Some((message, left)) = fault.as_mut() else {
            return Ok(());
        };
        let message = message.clone();
        if let Some(left) = left {
            *left -= 1;
            if *left == 0 {
                *fault = None;
            }
        }
        bail!("{message}")
    }
}

/// Rows by (dataset, day, key), in key order, each with when it was stored.
#[derive(Default)]
pub struct MemoryRowStore {
    rows: Mutex<MemoryRows>,
    pub fault: Fault,
}

impl MemoryRowStore {
    pub fn count(&self, dataset: &str, date: NaiveDate) -> usize {
        lock(&self.rows)
            .keys()
            .filter(|(d, day, _)| d == dataset && *day == date)
            .count()
    }

    /// A day's rows: (key, values), in key order.
    pub fn rows_of(&self, dataset: &str, date: NaiveDate) -> Vec<(String, Row)> {
        lock(&self.rows)
            .iter()
            .filter(|((d, day, _), _)| d == dataset && *day == date)
            .map(|((_, _, key), (row, _))| (key.clone(), row.values.clone()))
            .collect()
    }

    /// The datasets (or staging names) holding rows on `date`.
    pub fn names_on(&self, date: NaiveDate) -> BTreeSet<String> {
        lock(&self.rows)
            .keys()
            .filter(|(_, day, _)| *day == date)
            .map(|(d, _, _)| d.clone())
            .collect()
    }
}

#[async_trait]
impl RowStore for MemoryRowStore {
    async fn store(
        &self,
        dataset_name: &str,
        dataset: &Dataset,
        rows: &[KeyedRow],
        source: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<StoreOutcome> {
        self.fault.check()?;
        let mut stored = lock(&self.rows);
        let mut outcome = StoreOutcome::default();
        for row in rows {
            let key = (dataset_name.to_owned(), row.date, row.key.clone());
            let value = (
                StoredRow {
                    key: row.key.clone(),
                    values: row.values.clone(),
                    source: source.to_owned(),
                },
                now,
            );
            match stored.entry(key) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    outcome.duplicate += 1;
                    if dataset.on_duplicate == OnDuplicate::Replace {
                        e.insert(value);
                    }
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    outcome.new += 1;
                    e.insert(value);
                }
            }
        }
        Ok(outcome)
    }

    fn day_pages<'a>(
        &'a self,
        dataset_name: &'a str,
        _dataset: &'a Dataset,
        date: NaiveDate,
    ) -> BoxStream<'a, anyhow::Result<Vec<StoredRow>>> {
        // Pages of 100 rows, so callers see more than one page.
        let pages: Vec<anyhow::Result<Vec<StoredRow>>> = match self.fault.check() {
            Err(e) => vec![Err(e)],
            Ok(()) => {
                let rows: Vec<StoredRow> = lock(&self.rows)
                    .iter()
                    .filter(|((d, day, _), _)| d == dataset_name && *day == date)
                    .map(|(_, (r, _))| r.clone())
                    .collect();
                rows.chunks(100).map(|c| Ok(c.to_vec())).collect()
            }
        };
        futures::stream::iter(pages).boxed()
    }

    async fn delete_day(&self, dataset_name: &str, date: NaiveDate) -> anyhow::Result<u64> {
        self.fault.check()?;
        let mut rows = lock(&self.rows);
        let before = rows.len();
        rows.retain(|(d, day, _), _| !(d == dataset_name && *day == date));
        Ok((before - rows.len()) as u64)
    }

    async fn replace_day(
        &self,
        dataset_name: &str,
        _dataset: &Dataset,
        date: NaiveDate,
        staging: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Replaced> {
        self.fault.check()?;
        let mut rows = lock(&self.rows);
        let staged = day_of(&rows, staging, date);
        let day = day_of(&rows, dataset_name, date);
        let staged_keys: BTreeSet<&String> = staged.iter().map(|(k, _)| k).collect();
        let mut replaced = Replaced {
            before: day.len() as u64,
            ..Replaced::default()
        };
        for (k, (_, at)) in &day {
            if !staged_keys.contains(k) {
                if *at >= since {
                    replaced.kept += 1;
                } else {
                    rows.remove(&(dataset_name.to_owned(), date, k.clone()));
                    replaced.removed += 1;
                }
            }
        }
        for (k, v) in staged {
            rows.remove(&(staging.to_owned(), date, k.clone()));
            rows.insert((dataset_name.to_owned(), date, k), v);
        }
        replaced.after = day_of(&rows, dataset_name, date).len() as u64;
        Ok(replaced)
    }

    async fn expire_before(
        &self,
        dataset_name: &str,
        cutoff: NaiveDate,
    ) -> anyhow::Result<Option<u64>> {
        self.fault.check()?;
        let mut rows = lock(&self.rows);
        let before = rows.len();
        rows.retain(|(d, day, _), _| !(d == dataset_name && *day < cutoff));
        Ok(Some((before - rows.len()) as u64))
    }
}

type MemoryRows = BTreeMap<(String, NaiveDate, String), (StoredRow, DateTime<Utc>)>;

/// The rows of `name` on `date`, by key.
fn day_of(
    rows: &MemoryRows,
    name: &str,
    date: NaiveDate,
) -> Vec<(String, (StoredRow, DateTime<Utc>))> {
    rows.iter()
        .filter(|((d, day, _), _)| d == name && *day == date)
        .map(|((_, _, k), v)| (k.clone(), v.clone()))
        .collect()
}

#[derive(Debug, Clone)]
struct ClaimRecord {
    complete: bool,
    payload_hash: String,
    in_progress_until: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    result: String,
}

/// Claims with the conditional write's semantics.
#[derive(Default)]
pub struct MemoryClaims {
    records: Mutex<HashMap<String, ClaimRecord>>,
    pub fault: Fault,
}

impl MemoryClaims {
    /// The stored result of a completed claim.
    pub fn result(&self, key: &str) -> Option<String> {
        lock(&self.records)
            .get(key)
            .filter(|r| r.complete)
            .map(|r| r.result.clone())
    }

    /// Makes an in-progress claim look abandoned (its holder's deadline passed), as a retry
    /// after the holder died would find it.
    pub fn expire_in_progress(&self, key: &str) {
        if let Some(r) = lock(&self.records).get_mut(key).filter(|r| !r.complete) {
            r.in_progress_until = DateTime::<Utc>::MIN_UTC;
        }
    }

    /// True while `key` is claimed and not completed.
    pub fn in_progress(&self, key: &str) -> bool {
        lock(&self.records).get(key).is_some_and(|r| !r.complete)
    }
}

#[async_trait]
impl Claims for MemoryClaims {
    async fn claim(
        &self,
        key: &str,
        payload_hash: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<Claim> {
        self.fault.check()?;
        let mut records = lock(&self.records);
        if let Some(r) = records.get(key) {
            let free = r.expires_at < now || (!r.complete && r.in_progress_until < now);
            if !free {
                return Ok(if r.complete {
                    Claim::AlreadyDone {
                        result: r.result.clone(),
                        payload_hash: Some(r.payload_hash.clone()).filter(|h| !h.is_empty()),
                    }
                } else {
                    Claim::InProgressElsewhere
                });
            }
        }
        records.insert(
            key.to_owned(),
            ClaimRecord {
                complete: false,
                payload_hash: payload_hash.to_owned(),
                in_progress_until,
                expires_at,
                result: String::new(),
            },
        );
        Ok(Claim::Acquired)
    }

    async fn complete(&self, key: &str, result: &str, _now: DateTime<Utc>) -> anyhow::Result<()> {
        self.fault.check()?;
        match lock(&self.records).get_mut(key) {
            Some(r) => {
                r.complete = true;
                r.result = result.to_owned();
                Ok(())
            }
            None => bail!("completing claim {key}: no such claim"),
        }
    }

    async fn release(&self, key: &str) -> anyhow::Result<()> {
        self.fault.check()?;
        let mut records = lock(&self.records);
        match records.get(key) {
            Some(r) if !r.complete => {
                records.remove(key);
                Ok(())
            }
            _ => bail!("releasing claim {key}: not in progress"),
        }
    }
}

/// Counter buckets by (pk, sk), and the events counted (the table's markers).
type MemoryCounters = (
    BTreeMap<(String, String), crate::ports::CounterValues>,
    HashSet<String>,
);

/// Records by (pk, sk), in sk order.
#[derive(Default)]
pub struct MemoryState {
    records: Mutex<BTreeMap<(String, String), String>>,
    counters: Mutex<MemoryCounters>,
    /// (pk, sk) → the record's place on the secondary index.
    index: Mutex<HashMap<(String, String), (String, String)>>,
    /// (pk, sk) → the rank of a record written with `put_ranked`.
    ranks: Mutex<HashMap<(String, String), u8>>,
    versions: Mutex<HashMap<(String, String), u64>>,
    pub fault: Fault,
}

impl MemoryState {
    /// How many records have a pk starting with `prefix`.
    pub fn count(&self, pk_prefix: &str) -> usize {
        lock(&self.records)
            .keys()
            .filter(|(pk, _)| pk.starts_with(pk_prefix))
            .count()
    }
}

#[async_trait]
impl StateRecords for MemoryState {
    async fn put(
        &self,
        pk: &str,
        sk: &str,
        data: String,
        index: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        self.fault.check()?;
        let key = (pk.to_owned(), sk.to_owned());
        match index {
            Some((gpk, gsk)) => {
                lock(&self.index).insert(key.clone(), (gpk.to_owned(), gsk.to_owned()));
            }
            None => {
                lock(&self.index).remove(&key);
            }
        }
        lock(&self.records).insert(key, data);
        Ok(())
    }

    async fn put_ranked(&self, pk: &str, sk: &str, data: String, rank: u8) -> anyhow::Result<bool> {
        self.fault.check()?;
        let key = (pk.to_owned(), sk.to_owned());
        let mut ranks = lock(&self.ranks);
        if ranks.get(&key).is_some_and(|stored| *stored > rank) {
            return Ok(false);
        }
        ranks.insert(key.clone(), rank);
        lock(&self.records).insert(key, data);
        Ok(true)
    }

    async fn get_versioned(&self, pk: &str, sk: &str) -> anyhow::Result<Option<(String, u64)>> {
        self.fault.check()?;
        let key = (pk.to_owned(), sk.to_owned());
        let version = lock(&self.versions).get(&key).copied().unwrap_or(0);
        Ok(lock(&self.records).get(&key).map(|d| (d.clone(), version)))
    }

    async fn put_versioned(
        &self,
        pk: &str,
        sk: &str,
        data: String,
        expected: Option<u64>,
    ) -> anyhow::Result<bool> {
        self.fault.check()?;
        let key = (pk.to_owned(), sk.to_owned());
        let mut records = lock(&self.records);
        let mut versions = lock(&self.versions);
        let stored = records
            .contains_key(&key)
            .then(|| versions.get(&key).copied().unwrap_or(0));
        if stored != expected {
            return Ok(false);
        }
        versions.insert(key.clone(), expected.map_or(1, |v| v + 1));
        records.insert(key, data);
        Ok(true)
    }

    async fn get(&self, pk: &str, sk: &str) -> anyhow::Result<Option<String>> {
        self.fault.check()?;
        Ok(lock(&self.records)
            .get(&(pk.to_owned(), sk.to_owned()))
            .cloned())
    }

    async fn query(&self, pk: &str, sk_prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.fault.check()?;
        Ok(lock(&self.records)
            .iter()
            .filter(|((p, s), _)| p == pk && s.starts_with(sk_prefix))
            .map(|((_, s), d)| (s.clone(), d.clone()))
            .collect())
    }

    async fn query_index(
        &self,
        index_pk: &str,
        before: Option<&str>,
        from: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<crate::ports::IndexedRecord>> {
        self.fault.check()?;
        let records = lock(&self.records);
        let mut found: Vec<crate::ports::IndexedRecord> = lock(&self.index)
            .iter()
            .filter(|(_, (gpk, gsk))| {
                gpk == index_pk
                    && before.is_none_or(|b| gsk.as_str() < b)
                    && from.is_none_or(|f| gsk.as_str() >= f)
            })
            .filter_map(|((pk, sk), (_, gsk))| {
                Some(crate::ports::IndexedRecord {
                    pk: pk.clone(),
                    sk: sk.clone(),
                    index_sk: gsk.clone(),
                    data: records.get(&(pk.clone(), sk.clone()))?.clone(),
                })
            })
            .collect();
        found.sort_by(|a, b| b.index_sk.cmp(&a.index_sk));
        found.truncate(limit);
        Ok(found)
    }

    async fn count_once(
        &self,
        event: &str,
        bucket: (&str, &str),
        increments: &[(String, u64)],
        _keep_marker_until: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
        self.fault.check()?;
        let mut guard = lock(&self.counters);
        let (buckets, events) = &mut *guard;
        if !events.insert(event.to_owned()) {
            return Ok(false);
        }
        let values = buckets
            .entry((bucket.0.to_owned(), bucket.1.to_owned()))
            .or_default();
        for (name, n) in increments {
            *values.entry(name.clone()).or_default() += n;
        }
        Ok(true)
    }

    async fn counters(
        &self,
        pk: &str,
    ) -> anyhow::Result<Vec<(String, crate::ports::CounterValues)>> {
        self.fault.check()?;
        Ok(lock(&self.counters)
            .0
            .iter()
            .filter(|((p, _), _)| p == pk)
            .map(|((_, sk), v)| (sk.clone(), v.clone()))
            .collect())
    }
}

/// (version id, bytes, content type, stored at).
type ObjectVersion = (String, Vec<u8>, String, DateTime<Utc>);

/// A versioned bucket.
#[derive(Default)]
pub struct MemoryObjects {
    /// Every version of each key, oldest first.
    objects: Mutex<HashMap<String, Vec<ObjectVersion>>>,
    pub fault: Fault,
}

impl MemoryObjects {
    /// Removes `key` and every version of it, as an operator or a lifecycle rule would.
    pub fn remove(&self, key: &str) {
        lock(&self.objects).remove(key);
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.objects).keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The current version's bytes.
    pub fn current(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.objects)
            .get(key)
            .and_then(|v| v.last())
            .map(|(_, b, _, _)| b.clone())
    }
}

#[async_trait]
impl Objects for MemoryObjects {
    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<StoredObject> {
        self.fault.check()?;
        let mut objects = lock(&self.objects);
        let versions = objects.entry(key.to_owned()).or_default();
        let version = format!("v{}", versions.len() + 1);
        versions.push((version.clone(), bytes, content_type.to_owned(), Utc::now()));
        Ok(StoredObject {
            key: key.to_owned(),
            version_id: Some(version),
        })
    }

    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        content_type: &str,
    ) -> anyhow::Result<StoredObject> {
        let bytes = std::fs::read(path)?;
        self.put(key, bytes, content_type).await
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: ByteChunks,
        content_type: &str,
    ) -> anyhow::Result<StoredObject> {
        let mut bytes = Vec::new();
        while let Some(piece) = body.next().await {
            bytes.extend_from_slice(&piece?);
        }
        self.put(key, bytes, content_type).await
    }

    async fn copy(&self, from: &str, to: &str) -> anyhow::Result<StoredObject> {
        let bytes = self.get(from, None).await?;
        let content_type = lock(&self.objects)
            .get(from)
            .and_then(|v| v.last())
            .map(|(_, _, t, _)| t.clone())
            .unwrap_or_default();
        self.put(to, bytes, &content_type).await
    }

    async fn get_stream(&self, key: &str) -> anyhow::Result<(ByteChunks, u64)> {
        let bytes = self.get(key, None).await?;
        let size = bytes.len() as u64;
        Ok((chunked(bytes), size))
    }

    async fn get(&self, key: &str, version_id: Option<&str>) -> anyhow::Result<Vec<u8>> {
        self.fault.check()?;
        let objects = lock(&self.objects);
        let versions = objects
            .get(key)
            .ok_or_else(|| anyhow::Error::new(NoSuchObject(format!("memory://{key}"))))?;
        let found = match version_id {
            Some(v) => versions.iter().find(|(id, _, _, _)| id == v),
            None => versions.last(),
        };
        match found {
            Some((_, bytes, _, _)) => Ok(bytes.clone()),
            None => Err(anyhow::Error::new(NoSuchObject(format!(
                "memory://{key} version {version_id:?}"
            )))),
        }
    }

    async fn presigned_get(
        &self,
        key: &str,
        version_id: Option<&str>,
        expires_in: std::time::Duration,
    ) -> anyhow::Result<String> {
        Ok(format!(
            "https://memory.invalid/{key}?versionId={}&X-Amz-Expires={}",
            version_id.unwrap_or(""),
            expires_in.as_secs()
        ))
    }

    async fn presigned_put(
        &self,
        key: &str,
        content_type: &str,
        sha256_base64: &str,
        size: u64,
        expires_in: std::time::Duration,
    ) -> anyhow::Result<String> {
        self.fault.check()?;
        Ok(format!(
            "https://memory.invalid/{key}?content-type={content_type}&x-amz-checksum-sha256={sha256_base64}&content-length={size}&X-Amz-Expires={}",
            expires_in.as_secs()
        ))
    }

    async fn versions(&self, key: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        self.fault.check()?;
        let objects = lock(&self.objects);
        let Some(versions) = objects.get(key) else {
            return Ok(vec![]);
        };
        let n = versions.len();
        Ok(versions
            .iter()
            .enumerate()
            .rev()
            .map(|(i, (id, bytes, _, at))| ObjectInfo {
                key: key.to_owned(),
                version_id: Some(id.clone()),
                size: bytes.len() as u64,
                modified: *at,
                latest: i + 1 == n,
            })
            .collect())
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<ObjectInfo>> {
        self.fault.check()?;
        let objects = lock(&self.objects);
        let mut keys: Vec<&String> = objects
            .keys()
            .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
            .collect();
        keys.sort();
        Ok(keys
            .into_iter()
            .take(limit)
            .filter_map(|k| {
                let (id, bytes, _, at) = objects[k].last()?;
                Some(ObjectInfo {
                    key: k.clone(),
                    version_id: Some(id.clone()),
                    size: bytes.len() as u64,
                    modified: *at,
                    latest: true,
                })
            })
            .collect())
    }

    fn locate(&self, key: &str) -> String {
        format!("memory://{key}")
    }
}

/// A queue that keeps what was sent.
#[derive(Default)]
pub struct MemoryQueue {
    sent: Mutex<Vec<QueuedMessage>>,
    pub fault: Fault,
}

impl MemoryQueue {
    pub fn sent(&self) -> Vec<QueuedMessage> {
        lock(&self.sent).clone()
    }

    /// The sent bodies, parsed.
    pub fn bodies<T: serde::de::DeserializeOwned>(&self) -> Vec<T> {
        self.sent()
            .iter()
            .map(|m| serde_json::from_str(&m.body).expect("a JSON body"))
            .collect()
    }

    /// Takes what was sent so far.
    pub fn take(&self) -> Vec<QueuedMessage> {
        std::mem::take(&mut *lock(&self.sent))
    }
}

#[async_trait]
impl WorkQueue for MemoryQueue {
    async fn send_each(&self, messages: &[QueuedMessage]) -> (usize, Option<anyhow::Error>) {
        if let Err(e) = self.fault.check() {
            return (0, Some(e));
        }
        lock(&self.sent).extend_from_slice(messages);
        (messages.len(), None)
    }

    fn name(&self) -> &str {
        "memory-queue"
    }
}

#[derive(Default)]
pub struct MemoryDeadLetters {
    letters: Mutex<Vec<DeadLetter>>,
    pub fault: Fault,
    /// The consumed queue's `maxReceiveCount`, when a test gives one.
    pub max_receives: Option<u32>,
}

impl MemoryDeadLetters {
    /// Dead letters for a queue whose `maxReceiveCount` is `max`.
    pub fn with_max_receives(max: u32) -> Self {
        MemoryDeadLetters {
            max_receives: Some(max),
            ..Default::default()
        }
    }

    pub fn letters(&self) -> Vec<DeadLetter> {
        lock(&self.letters).clone()
    }
}

#[async_trait]
impl DeadLetters for MemoryDeadLetters {
    async fn send(&self, letter: &DeadLetter) -> anyhow::Result<()> {
        self.fault.check()?;
        lock(&self.letters).push(letter.clone());
        Ok(())
    }

    fn max_receives(&self) -> Option<u32> {
        self.max_receives
    }
}

/// A mail in a [`MemoryMailbox`].
#[derive(Debug, Clone)]
pub struct MemoryMail {
    pub mailbox: String,
    pub folder: String,
    pub message: MailMessage,
    pub attachments: Vec<FileAttachment>,
}

/// Mail folders with Graph's delta and subscription behaviour: a delta link remembers how
/// many mails the folder had; an expired one answers `410 Gone` (`syncStateNotFound`).
#[derive(Default)]
pub struct MemoryMailbox {
    mails: Mutex<Vec<MemoryMail>>,
    subscriptions: Mutex<BTreeMap<String, Subscription>>,
    next_id: Mutex<u32>,
    links_expired: Mutex<bool>,
    /// Every Graph call answers this status while set (e.g. 503, 404).
    status: Mutex<Option<u16>>,
    /// Attachment contents fetched so far (whole or streamed).
    content_fetches: Mutex<u32>,
    /// Of those, how many were streamed.
    streamed: Mutex<u32>,
}

impl MemoryMailbox {
    pub fn deliver(&self, mail: MemoryMail) {
        lock(&self.mails).push(mail);
    }

    pub fn subscriptions(&self) -> Vec<Subscription> {
        lock(&self.subscriptions).values().cloned().collect()
    }

    /// Graph forgets every delta link issued so far.
    pub fn expire_delta_links(&self) {
        *lock(&self.links_expired) = true;
    }

    /// Graph forgets a subscription (as after `subscriptionRemoved`).
    pub fn forget_subscription(&self, id: &str) {
        lock(&self.subscriptions).remove(id);
    }

    /// How many attachment contents were fetched.
    pub fn content_fetches(&self) -> u32 {
        *lock(&self.content_fetches)
    }

    /// How many attachment contents were streamed rather than fetched whole.
    pub fn streamed(&self) -> u32 {
        *lock(&self.streamed)
    }

    pub fn answer_every_call_with(&self, status: Option<u16>) {
        *lock(&self.status) = status;
    }

    fn check(&self, what: &str) -> Result<(), GraphError> {
        match *lock(&self.status) {
            Some(status) => Err(GraphError::Status {
                status,
                what: what.into(),
                code: "injected".into(),
                message: format!("the memory mailbox answers {status}"),
            }),
            None => Ok(()),
        }
    }

    fn not_found(what: &str) -> GraphError {
        GraphError::Status {
            status: 404,
            what: what.into(),
            code: "ErrorItemNotFound".into(),
            message: "not found".into(),
        }
    }

    fn fresh_id(&self, prefix: &str) -> String {
        let mut n = lock(&self.next_id);
        *n += 1;
        format!("{prefix}-{n}")
    }
}

#[async_trait]
impl MailSource for MemoryMailbox {
    async fn message(&self, mailbox: &str, id: &str) -> Result<MailMessage, GraphError> {
        self.check("get message")?;
        lock(&self.mails)
            .iter()
            .find(|m| m.mailbox == mailbox && m.message.id == id)
            .map(|m| m.message.clone())
            .ok_or_else(|| Self::not_found("get message"))
    }

    async fn mailbox_id(&self, mailbox: &str) -> Result<String, GraphError> {
        self.check("get user")?;
        Ok(mailbox.to_owned())
    }

    async fn attachment_list(
        &self,
        mailbox: &str,
        id: &str,
    ) -> Result<Vec<AttachmentInfo>, GraphError> {
        self.check("list attachments")?;
        lock(&self.mails)
            .iter()
            .find(|m| m.mailbox == mailbox && m.message.id == id)
            .map(|m| {
                m.attachments
                    .iter()
                    .map(|a| AttachmentInfo {
                        id: a.id.clone(),
                        name: a.name.clone(),
                        content_type: a.content_type.clone(),
                        size: a.bytes.len() as u64,
                    })
                    .collect()
            })
            .ok_or_else(|| Self::not_found("list attachments"))
    }

    async fn attachment_content(
        &self,
        mailbox: &str,
        message_id: &str,
        attachment_id: &str,
    ) -> Result<Vec<u8>, GraphError> {
        self.check("get attachment content")?;
        *lock(&self.content_fetches) += 1;
        lock(&self.mails)
            .iter()
            .find(|m| m.mailbox == mailbox && m.message.id == message_id)
            .and_then(|m| m.attachments.iter().find(|a| a.id == attachment_id))
            .map(|a| a.bytes.clone())
            .ok_or_else(|| Self::not_found("get attachment content"))
    }

    async fn attachment_stream(
        &self,
        mailbox: &str,
        message_id: &str,
        attachment_id: &str,
    ) -> Result<ByteChunks, GraphError> {
        let bytes = self
            .attachment_content(mailbox, message_id, attachment_id)
            .await?;
        *lock(&self.streamed) += 1;
        Ok(chunked(bytes))
    }

    fn delta_start_url(&self, mailbox: &str, folder: &str, since: Option<DateTime<Utc>>) -> String {
        let since = since.map(|t| t.timestamp()).unwrap_or(i64::MIN);
        format!("memory-delta:{mailbox}:{folder}:start:{since}")
    }

    async fn delta_page(&self, url: &str) -> Result<DeltaPage, GraphError> {
        self.check("messages delta")?;
        let parts: Vec<&str> = url.splitn(5, ':').collect();
        let [_, mailbox, folder, kind, arg] = parts[..] else {
            return Err(Self::not_found("messages delta"));
        };
        if kind == "link" && *lock(&self.links_expired) {
            return Err(GraphError::Status {
                status: 410,
                what: "messages delta".into(),
                code: "syncStateNotFound".into(),
                message: "the sync state is gone".into(),
            });
        }
        let mails = lock(&self.mails);
        let in_folder: Vec<&MemoryMail> = mails
            .iter()
            .filter(|m| m.mailbox == mailbox && m.folder == folder)
            .collect();
        let (skip, since) = match kind {
            "link" => (arg.parse().unwrap_or(0), i64::MIN),
            _ => (0, arg.parse().unwrap_or(i64::MIN)),
        };
        let value = in_folder
            .iter()
            .skip(skip)
            .filter(|m| m.message.received.is_none_or(|r| r.timestamp() >= since))
            .map(|m| DeltaEntry {
                id: m.message.id.clone(),
                has_attachments: !m.attachments.is_empty(),
                subject: m.message.subject.clone(),
                removed: None,
            })
            .collect();
        *lock(&self.links_expired) = false;
        Ok(DeltaPage {
            value,
            next_link: None,
            delta_link: Some(format!(
                "memory-delta:{mailbox}:{folder}:link:{}",
                in_folder.len()
            )),
        })
    }
}

#[async_trait]
impl Subscriptions for MemoryMailbox {
    async fn create(&self, request: &SubscriptionRequest<'_>) -> Result<Subscription, GraphError> {
        self.check("create subscription")?;
        let sub = Subscription {
            id: self.fresh_id("sub"),
            expires: request.expires,
            resource: request.resource.to_owned(),
        };
        lock(&self.subscriptions).insert(sub.id.clone(), sub.clone());
        Ok(sub)
    }

    async fn renew(&self, id: &str, expires: DateTime<Utc>) -> Result<Subscription, GraphError> {
        self.check("renew subscription")?;
        let mut subs = lock(&self.subscriptions);
        let sub = subs
            .get_mut(id)
            .ok_or_else(|| Self::not_found("renew subscription"))?;
        sub.expires = expires;
        Ok(sub.clone())
    }

    async fn delete(&self, id: &str) -> Result<(), GraphError> {
        self.check("delete subscription")?;
        match lock(&self.subscriptions).remove(id) {
            Some(_) => Ok(()),
            None => Err(Self::not_found("delete subscription")),
        }
    }
}

/// A mail a [`MemoryTransport`] sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SentByMemory {
    pub from: String,
    pub recipients: Recipients,
    pub subject: String,
    pub html: String,
    pub mime: Vec<u8>,
    pub internet_message_id: String,
    pub attachment: Option<(String, Vec<u8>)>,
    pub provider_message_id: String,
}

/// A transport that keeps what it sent.
pub struct MemoryTransport {
    kind: TransportKind,
    sent: Mutex<Vec<SentByMemory>>,
    /// Runs after each accepted mail (a test breaks something the instant the mail is out).
    after_send: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    pub fault: Fault,
}

impl MemoryTransport {
    pub fn new(kind: TransportKind) -> Self {
        MemoryTransport {
            kind,
            sent: Mutex::default(),
            after_send: Mutex::default(),
            fault: Fault::default(),
        }
    }

    /// Calls `hook` each time a mail has been accepted, before `send` returns.
    pub fn on_send(&self, hook: Box<dyn Fn() + Send + Sync>) {
        *lock(&self.after_send) = Some(hook);
    }

    pub fn sent(&self) -> Vec<SentByMemory> {
        lock(&self.sent).clone()
    }
}

#[async_trait]
impl MailTransport for MemoryTransport {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    async fn send(&self, mail: &OutgoingMail<'_>) -> anyhow::Result<SentMail> {
        self.fault.check()?;
        let mut sent = lock(&self.sent);
        let id = format!("{}-{}", self.kind.name(), sent.len() + 1);
        sent.push(SentByMemory {
            from: mail.from.to_owned(),
            recipients: mail.recipients.clone(),
            subject: mail.subject.to_owned(),
            html: mail.html.to_owned(),
            mime: mail.mime.to_vec(),
            internet_message_id: mail.internet_message_id.to_owned(),
            attachment: mail
                .attachment
                .as_ref()
                .map(|a| (a.name.to_owned(), a.bytes.to_vec())),
            provider_message_id: id.clone(),
        });
        drop(sent);
        if let Some(hook) = lock(&self.after_send).as_ref() {
            hook();
        }
        Ok(SentMail {
            provider_message_id: id,
            draft_id: None,
        })
    }
}

#[derive(Default)]
pub struct MemoryClientStates {
    states: Mutex<HashMap<String, crate::ports::Subscribed>>,
    pub fault: Fault,
}

#[async_trait]
impl ClientStateStore for MemoryClientStates {
    async fn load(&self) -> anyhow::Result<HashMap<String, crate::ports::Subscribed>> {
        self.fault.check()?;
        Ok(lock(&self.states).clone())
    }

    async fn save(&self, states: &HashMap<String, crate::ports::Subscribed>) -> anyhow::Result<()> {
        self.fault.check()?;
        *lock(&self.states) = states.clone();
        Ok(())
    }
}

/// One queue of a [`MemoryQueueAdmin`]: (has a source queue, source depth, dead letters).
type MemoryQueueState = (bool, u64, Vec<crate::ports::Letter>);

/// Queues and their dead letters in memory, for the control API's tests.
#[derive(Default)]
pub struct MemoryQueueAdmin {
    queues: Mutex<BTreeMap<String, MemoryQueueState>>,
    /// (queue, message id) of every letter redriven.
    redriven: Mutex<Vec<(String, String)>>,
    /// Each queue's age of oldest message, as CloudWatch would report it.
    ages: Mutex<HashMap<String, u64>>,
    pub fault: Fault,
}

impl MemoryQueueAdmin {
    pub fn with_queues(names: &[(&str, bool)]) -> Self {
        let admin = MemoryQueueAdmin::default();
        for (n, source) in names {
            lock(&admin.queues).insert((*n).to_owned(), (*source, 0, vec![]));
        }
        admin
    }

    /// A dead letter in `queue`'s DLQ.
    pub fn add_letter(&self, queue: &str, letter: crate::ports::Letter) {
        lock(&self.queues)
            .entry(queue.to_owned())
            .or_insert((true, 0, vec![]))
            .2
            .push(letter);
    }

    pub fn redriven(&self) -> Vec<(String, String)> {
        lock(&self.redriven).clone()
    }

    /// Sets `queue`'s age of oldest message, in seconds.
    pub fn set_oldest_age(&self, queue: &str, seconds: u64) {
        lock(&self.ages).insert(queue.to_owned(), seconds);
    }

    fn with<T>(
        &self,
        queue: &str,
        f: impl FnOnce(&mut MemoryQueueState) -> T,
    ) -> anyhow::Result<T> {
        self.fault.check()?;
        let mut queues = lock(&self.queues);
        match queues.get_mut(queue) {
            Some(q) => Ok(f(q)),
            None => Err(crate::failure::permanent(format!(
                "no queue named {queue:?}"
            ))),
        }
    }
}

#[async_trait]
impl crate::ports::QueueAdmin for MemoryQueueAdmin {
    fn queues(&self) -> Vec<(String, bool)> {
        lock(&self.queues)
            .iter()
            .map(|(n, (source, _, _))| (n.clone(), *source))
            .collect()
    }

    async fn oldest_age(&self, queue: &str) -> anyhow::Result<Option<u64>> {
        self.fault.check()?;
        Ok(lock(&self.ages).get(queue).copied())
    }

    async fn depth(&self, queue: &str, dead: bool) -> anyhow::Result<crate::ports::QueueDepth> {
        self.with(queue, |(_, depth, letters)| crate::ports::QueueDepth {
            visible: if dead { letters.len() as u64 } else { *depth },
            ..Default::default()
        })
    }

    async fn peek(&self, queue: &str, max: usize) -> anyhow::Result<Vec<crate::ports::Letter>> {
        self.with(queue, |(_, _, letters)| {
            letters.iter().take(max).cloned().collect()
        })
    }

    async fn redrive(
        &self,
        queue: &str,
        ids: Option<&[String]>,
        max: usize,
    ) -> anyhow::Result<crate::ports::Redriven> {
        let done = self.with(queue, |(source, depth, letters)| {
            if !*source {
                return Err(crate::failure::permanent(format!(
                    "{queue} has no source queue"
                )));
            }
            let mut done = crate::ports::Redriven::default();
            letters.retain(|l| {
                let wanted = match ids {
                    Some(ids) => ids.contains(&l.message_id),
                    None => done.moved.len() < max,
                };
                if wanted {
                    done.moved.push(l.message_id.clone());
                    *depth += 1;
                }
                !wanted
            });
            if let Some(ids) = ids {
                done.not_found = ids
                    .iter()
                    .filter(|i| !done.moved.contains(i))
                    .cloned()
                    .collect();
            }
            Ok(done)
        })??;
        lock(&self.redriven).extend(done.moved.iter().map(|id| (queue.to_owned(), id.clone())));
        Ok(done)
    }

    async fn delete(&self, queue: &str, message_id: &str) -> anyhow::Result<bool> {
        self.with(queue, |(_, _, letters)| {
            let before = letters.len();
            letters.retain(|l| l.message_id != message_id);
            letters.len() < before
        })
    }
}

/// What the in-memory downstream API answers to its next call, when scripted.
#[derive(Debug, Clone)]
pub enum DownstreamScript {
    /// This status, `Retry-After` and body, storing nothing.
    Reply(u16, Option<std::time::Duration>, String),
    /// No answer (a timeout or a reset), storing nothing.
    NoAnswer(String),
    /// Stores the batch, then gives no answer (a timeout after the work was done).
    StoreThenNoAnswer,
}

/// The downstream API's contract in memory: items stored once by id (`duplicate` after),
/// items rejected by id, and scripted answers for the next calls.
#[derive(Default)]
pub struct MemoryDownstream {
    stored: Mutex<BTreeMap<String, u32>>,
    rejects: Mutex<HashMap<String, String>>,
    script: Mutex<std::collections::VecDeque<DownstreamScript>>,
    calls: Mutex<Vec<(String, usize)>>,
    refreshed: std::sync::atomic::AtomicU32,
}

impl MemoryDownstream {
    pub fn then(&self, answer: DownstreamScript) -> &Self {
        lock(&self.script).push_back(answer);
        self
    }

    pub fn reject(&self, id: &str, reason: &str) {
        lock(&self.rejects).insert(id.to_owned(), reason.to_owned());
    }

    /// Stored item ids, each with how many times it was stored (always 1).
    pub fn stored(&self) -> BTreeMap<String, u32> {
        lock(&self.stored).clone()
    }

    /// Each call's idempotency key and item count.
    pub fn calls(&self) -> Vec<(String, usize)> {
        lock(&self.calls).clone()
    }

    pub fn refreshes(&self) -> u32 {
        self.refreshed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn store(&self, ids: &[String]) -> Vec<serde_json::Value> {
        let rejects = lock(&self.rejects);
        let mut stored = lock(&self.stored);
        ids.iter()
            .map(|id| {
                if let Some(reason) = rejects.get(id) {
                    serde_json::json!({"id": id, "status": "rejected", "reason": reason})
                } else if stored.contains_key(id) {
                    serde_json::json!({"id": id, "status": "duplicate"})
                } else {
                    stored.insert(id.clone(), 1);
                    serde_json::json!({"id": id, "status": "accepted"})
                }
            })
            .collect()
    }
}

#[async_trait]
impl crate::ports::Downstream for MemoryDownstream {
    async fn post_batch(
        &self,
        body: &[u8],
        idempotency_key: &str,
        _correlation_id: &str,
    ) -> Result<crate::ports::DownstreamReply, crate::ports::DownstreamError> {
        use crate::ports::{DownstreamError, DownstreamReply};
        let parsed: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| DownstreamError(format!("the fake could not read the body: {e}")))?;
        let ids: Vec<String> = parsed["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        lock(&self.calls).push((idempotency_key.to_owned(), ids.len()));
        let scripted = lock(&self.script).pop_front();
        match scripted {
            Some(DownstreamScript::Reply(status, retry_after, body)) => Ok(DownstreamReply {
                status,
                retry_after,
                body,
            }),
            Some(DownstreamScript::NoAnswer(why)) => Err(DownstreamError(why)),
            Some(DownstreamScript::StoreThenNoAnswer) => {
                self.store(&ids);
                Err(DownstreamError("timed out".into()))
            }
            None => {
                let results = self.store(&ids);
                let all_accepted = results.iter().all(|r| r["status"] == "accepted");
                Ok(DownstreamReply {
                    status: if all_accepted { 200 } else { 207 },
                    retry_after: None,
                    body: serde_json::json!({ "results": results }).to_string(),
                })
            }
        }
    }

    async fn refresh_credentials(&self) -> anyhow::Result<()> {
        self.refreshed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Visibility changes as asked, by receipt handle.
#[derive(Default)]
pub struct MemoryVisibility {
    set: Mutex<Vec<(String, u32)>>,
}

impl MemoryVisibility {
    pub fn changes(&self) -> Vec<(String, u32)> {
        lock(&self.set).clone()
    }
}

#[async_trait]
impl crate::ports::MessageVisibility for MemoryVisibility {
    async fn set_visibility(&self, messages: &[(String, u32)]) -> anyhow::Result<()> {
        lock(&self.set).extend_from_slice(messages);
        Ok(())
    }
}
