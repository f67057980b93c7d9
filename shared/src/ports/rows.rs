//! The row store: every row of a dataset once per (day, key).

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use futures::stream::BoxStream;

use crate::csv_ingest::KeyedRow;
use crate::definitions::Dataset;
use crate::value::Row;

/// What storing a batch of rows did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    pub new: u64,
    /// Rows whose key was already stored (kept as stored, or replaced if the dataset says so).
    pub duplicate: u64,
    /// Rows this store cannot hold (e.g. over DynamoDB's 400 KB item size), with the reason;
    /// the others of the batch are stored.
    pub rejected: Vec<crate::csv_ingest::Reject>,
}

impl std::ops::AddAssign for StoreOutcome {
    fn add_assign(&mut self, mut other: Self) {
        self.new += other.new;
        self.duplicate += other.duplicate;
        self.rejected.append(&mut other.rejected);
    }
}

/// What [`RowStore::replace_day`] did to a day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replaced {
    /// Rows the day held before.
    pub before: u64,
    /// Rows it holds after: the staged ones and those kept.
    pub after: u64,
    /// Rows of the day before whose key the staging did not hold: deleted.
    pub removed: u64,
    /// Rows stored since the rebuild began (by an ingest running beside it) whose key the
    /// staging did not hold: kept.
    pub kept: u64,
}

/// A stored row as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub key: String,
    pub values: Row,
    /// `mailbox/message id` of the mail that first brought it.
    pub source: String,
}

/// Rows by (dataset, day, key). Re-storing a row changes nothing (`keep_first`) or replaces
/// it (`replace`); both adapters (DynamoDB, PostgreSQL) keep exactly these semantics.
#[async_trait]
pub trait RowStore: Send + Sync {
    /// Stores each row once and says how many were new.
    async fn store(
        &self,
        dataset_name: &str,
        dataset: &Dataset,
        rows: &[KeyedRow],
        source: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<StoreOutcome>;

    /// Every stored row of `dataset` on `date`, in key order, a page at a time: memory holds
    /// the page being read, whatever the day's size.
    fn day_pages<'a>(
        &'a self,
        dataset_name: &'a str,
        dataset: &'a Dataset,
        date: NaiveDate,
    ) -> BoxStream<'a, anyhow::Result<Vec<StoredRow>>>;

    /// Deletes every stored row of `dataset` on `date`; returns how many there were.
    async fn delete_day(&self, dataset_name: &str, date: NaiveDate) -> anyhow::Result<u64>;

    /// Makes the rows of `dataset` on `date` the ones staged under the name `staging` (rows
    /// stored there with [`RowStore::store`], as if it were a dataset), then empties the
    /// staging. A row of the day whose key the staging lacks is deleted, unless it was stored
    /// at or after `since` (an ingest ran beside the rebuild: its rows stay). Rows are only
    /// deleted after every staged row is in place, so a failure part way leaves no row of the
    /// day missing (at worst old and rebuilt rows side by side, and a retry finishes it).
    async fn replace_day(
        &self,
        dataset_name: &str,
        dataset: &Dataset,
        date: NaiveDate,
        staging: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Replaced>;

    /// The retention sweep: deletes every stored row of `dataset` on a day before `cutoff`
    /// and says how many there were, or `None` when this store expires rows by itself (the
    /// DynamoDB table's TTL on the `expires_at` written with each row). Running it again
    /// deletes nothing more.
    async fn expire_before(
        &self,
        dataset_name: &str,
        cutoff: NaiveDate,
    ) -> anyhow::Result<Option<u64>>;
}

impl<'a> dyn RowStore + 'a {
    /// Every stored row of `dataset` on `date`, in key order (tests and small days only).
    pub async fn rows_for_day(
        &self,
        dataset_name: &str,
        dataset: &Dataset,
        date: NaiveDate,
    ) -> anyhow::Result<Vec<StoredRow>> {
        let pages: Vec<Vec<StoredRow>> = self
            .day_pages(dataset_name, dataset, date)
            .try_collect()
            .await?;
        Ok(pages.into_iter().flatten().collect())
    }
}
