//! The state table, as two ports: claims (idempotency records and locks) and typed records.
//! Keys and record types live in `crate::state`; nothing outside reads state as raw text.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Ours: do the work, then complete or release.
    Acquired,
    /// Done before; carries the stored result and the hash of the payload it was done for
    /// (`None` on records written before hashes were kept).
    AlreadyDone {
        result: String,
        payload_hash: Option<String>,
    },
    /// Someone else holds it right now (until its in-progress expiry).
    InProgressElsewhere,
}

/// Idempotency records in the shape of AWS Powertools': one conditional write claims a key
/// when no record exists, when the record expired, or when an earlier in-progress claim
/// passed its in-progress expiry (its holder died).
#[async_trait]
pub trait Claims: Send + Sync {
    /// Claims `key` for work on the payload hashed as `payload_hash`, held until
    /// `in_progress_until`; the record is kept until `expires_at`.
    async fn claim(
        &self,
        key: &str,
        payload_hash: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<Claim>;

    /// Marks a claim done with its result (JSON text, shown to operators and later claims).
    async fn complete(&self, key: &str, result: &str, now: DateTime<Utc>) -> anyhow::Result<()>;

    /// Gives an in-progress claim back after a failure, so a retry can take it at once.
    async fn release(&self, key: &str) -> anyhow::Result<()>;
}

/// Records by (pk, sk), each holding one JSON document; `crate::state` types them.
#[async_trait]
pub trait StateRecords: Send + Sync {
    /// Writes a record; `index` puts it on the secondary index (`gsi1pk`, `gsi1sk`).
    async fn put(
        &self,
        pk: &str,
        sk: &str,
        data: String,
        index: Option<(&str, &str)>,
    ) -> anyhow::Result<()>;
    /// Writes a record unless the one stored has a higher `rank`, in one conditional write, so
    /// two writers racing cannot lower it (a delivery's status). True when it wrote.
    async fn put_ranked(&self, pk: &str, sk: &str, data: String, rank: u8) -> anyhow::Result<bool>;
    /// A record with its version (see [`StateRecords::put_versioned`]); 0 for a record never
    /// written that way.
    async fn get_versioned(&self, pk: &str, sk: &str) -> anyhow::Result<Option<(String, u64)>>;
    /// Writes a record as version `expected + 1` only if the stored one is still version
    /// `expected` (`None`: only if there is none), in one conditional write: of two writers
    /// that read the same version, one wins and the other rereads (compare-and-set, e.g. the
    /// downstream circuit breaker shared by every invocation). True when it wrote.
    async fn put_versioned(
        &self,
        pk: &str,
        sk: &str,
        data: String,
        expected: Option<u64>,
    ) -> anyhow::Result<bool>;
    async fn get(&self, pk: &str, sk: &str) -> anyhow::Result<Option<String>>;
    /// Every record under `pk` whose sk starts with `sk_prefix`, in sk order.
    async fn query(&self, pk: &str, sk_prefix: &str) -> anyhow::Result<Vec<(String, String)>>;
    /// Records on the secondary index under `index_pk`, highest index sk first: up to
    /// `limit` of those whose index sk is below `before` (the last one of the page before)
    /// and at or above `from`.
    async fn query_index(
        &self,
        index_pk: &str,
        before: Option<&str>,
        from: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<IndexedRecord>>;

    /// Adds each of `increments` to the counters of `bucket` (pk, sk) once per `event`: in
    /// one transaction with a marker for the event (kept until `keep_marker_until`), so the
    /// same event counted again changes nothing. True when it counted. See `crate::counters`.
    async fn count_once(
        &self,
        event: &str,
        bucket: (&str, &str),
        increments: &[(String, u64)],
        keep_marker_until: DateTime<Utc>,
    ) -> anyhow::Result<bool>;

    /// The counters of each bucket under `pk`, by sk.
    async fn counters(&self, pk: &str) -> anyhow::Result<Vec<(String, CounterValues)>>;
}

/// Counter values by name.
pub type CounterValues = std::collections::BTreeMap<String, u64>;

/// A record found on the secondary index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedRecord {
    pub pk: String,
    pub sk: String,
    pub index_sk: String,
    pub data: String,
}
