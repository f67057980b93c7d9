//! The row store on PostgreSQL (RDS or any server): one `rows` table keyed by
//! (dataset, day, key), its columns one `jsonb` document typed by the dataset's definition.
//!
//! - **Migrations** (`shared/migrations/postgres/*.sql`) are applied at connect, in order,
//!   each once (`charlie_migrations`), under an advisory lock so concurrent cold starts take
//!   turns; every file is idempotent on its own too.
//! - **Storing** a chunk: `COPY` (binary) into a temporary staging table, then one
//!   `INSERT … SELECT … ON CONFLICT`: `DO NOTHING` for `keep_first`, `DO UPDATE` for
//!   `replace`, counting new and already-stored rows exactly as the DynamoDB adapter does.
//!   Four statements per chunk, whatever its size, in one transaction.
//! - **Reading** a day: keyset pages (`key > last ORDER BY key LIMIT n`) on the primary key,
//!   so memory holds one page, and no transaction or server-side cursor stays open between
//!   pages (which would pin the connection behind RDS Proxy).

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::Mutex;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::csv_ingest::KeyedRow;
use crate::definitions::{ColumnType, Dataset, OnDuplicate};
use crate::ports::{Replaced, RowStore, StoreOutcome, StoredRow};
use crate::secret::Secret;
use crate::value::{Row, Value};

/// The migrations, in the order they apply.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "rows",
    include_str!("../../migrations/postgres/0001_rows.sql"),
)];
/// Rows per page when reading a day.
const PAGE_ROWS: i64 = 1_000;
/// The advisory lock migrations hold (any constant the deployment uses for nothing else).
const MIGRATION_LOCK: i64 = 0x0063_6861_726c_6965; // "charlie"

/// How to reach the server: a libpq-style URL or key/value string without the password
/// (`CHARLIE_POSTGRES_URL`), and the password from a secret when the server needs one.
#[derive(Clone)]
pub struct PostgresSettings {
    pub url: String,
    pub password: Option<Secret>,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &self.url)
            .field("password", &self.password)
            .finish()
    }
}

pub struct PostgresRowStore {
    settings: PostgresSettings,
    /// One connection per function instance (SQS hands it one batch at a time); it is
    /// reopened when the server or a proxy closed it.
    client: Mutex<Option<Client>>,
    statements: Arc<AtomicU64>,
}

impl PostgresRowStore {
    /// Connects and applies the migrations.
    pub async fn connect(settings: PostgresSettings) -> anyhow::Result<Self> {
        let store = PostgresRowStore {
            settings,
            client: Mutex::new(None),
            statements: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Statements sent so far (for the store benchmark).
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    fn count(&self, n: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
    }

    async fn open(&self) -> anyhow::Result<Client> {
        let mut config: tokio_postgres::Config = self
            .settings
            .url
            .parse()
            .context("CHARLIE_POSTGRES_URL is not a PostgreSQL connection string")?;
        if let Some(p) = &self.settings.password {
            config.password(p.expose());
        }
        config.application_name("charlie");
        config.connect_timeout(std::time::Duration::from_secs(10));
        let where_to = describe(&config);
        let client = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => {
                let (client, connection) = config
                    .connect(NoTls)
                    .await
                    .with_context(|| format!("connecting to PostgreSQL at {where_to}"))?;
                tokio::spawn(drive(connection));
                client
            }
            _ => {
                let tls = rustls_tokio_postgres::config_platform_verifier()
                    .map_err(|e| anyhow::anyhow!("the system's root certificates: {e}"))?;
                let (client, connection) = config
                    .connect(rustls_tokio_postgres::MakeRustlsConnect::new(tls))
                    .await
                    .with_context(|| format!("connecting to PostgreSQL at {where_to} (TLS)"))?;
                tokio::spawn(drive(connection));
                client
            }
        };
        Ok(client)
    }

    /// The connection, opened (again) when there is none or it was closed.
    async fn client(&self) -> anyhow::Result<tokio::sync::MutexGuard<'_, Option<Client>>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(self.open().await?);
        }
        Ok(guard)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("opened");
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS charlie_migrations (
                version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        for (version, name, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    "SELECT 1 FROM charlie_migrations WHERE version = $1",
                    &[version],
                )
                .await?
                .is_some();
            if done {
                continue;
            }
            tx.batch_execute(sql)
                .await
                .with_context(|| format!("migration {version:04}_{name}"))?;
            tx.execute(
                "INSERT INTO charlie_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            tracing::info!(version, name, "migration applied");
        }
        tx.commit().await.context("committing the migrations")?;
        Ok(())
    }
}

/// Runs a connection until it closes, logging why.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "the PostgreSQL connection closed");
    }
}

/// Host, port and database of a connection (never the password), for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

#[async_trait]
impl RowStore for PostgresRowStore {
    async fn store(
        &self,
        dataset_name: &str,
        dataset: &Dataset,
        rows: &[KeyedRow],
        source: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<StoreOutcome> {
        if rows.is_empty() {
            return Ok(StoreOutcome::default());
        }
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("opened");
        let tx = client.transaction().await?;
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS rows_in (day date, key text, cols jsonb) ON COMMIT DELETE ROWS",
        )
        .await?;
        let sink = tx
            .copy_in("COPY rows_in (day, key, cols) FROM STDIN (FORMAT binary)")
            .await?;
        let mut writer = pin!(BinaryCopyInWriter::new(
            sink,
            &[Type::DATE, Type::TEXT, Type::JSONB]
        ));
        for row in rows {
            let cols = to_json(dataset, &row.values);
            let values: [&(dyn ToSql + Sync); 3] = [&row.date, &row.key, &cols];
            writer.as_mut().write(&values).await?;
        }
        writer
            .as_mut()
            .finish()
            .await
            .context("COPY into rows_in")?;
        let conflict = match dataset.on_duplicate {
            OnDuplicate::KeepFirst => "DO NOTHING",
            OnDuplicate::Replace => {
                "DO UPDATE SET cols = EXCLUDED.cols, src = EXCLUDED.src, ingested_at = EXCLUDED.ingested_at"
            }
        };
        // `xmax = 0` tells an inserted row from an updated one; with DO NOTHING only the
        // inserted come back.
        let counted = tx
            .query_one(
                &format!(
                    "WITH written AS (
                        INSERT INTO rows (dataset, day, key, cols, src, ingested_at)
                        SELECT $1, day, key, cols, $2, $3 FROM rows_in
                        ON CONFLICT (dataset, day, key) {conflict}
                        RETURNING (xmax = 0) AS inserted)
                     SELECT count(*) FILTER (WHERE inserted) FROM written"
                ),
                &[&dataset_name, &source, &now],
            )
            .await
            .with_context(|| format!("storing {} rows of {dataset_name}", rows.len()))?;
        tx.commit().await?;
        self.count(4);
        let new: i64 = counted.get(0);
        let new = new as u64;
        Ok(StoreOutcome {
            new,
            duplicate: rows.len() as u64 - new,
            rejected: Vec::new(),
        })
    }

    fn day_pages<'a>(
        &'a self,
        dataset_name: &'a str,
        dataset: &'a Dataset,
        date: NaiveDate,
    ) -> BoxStream<'a, anyhow::Result<Vec<StoredRow>>> {
        // (the last key read, whether a page is still to come)
        futures::stream::try_unfold((String::new(), true), move |(after, more)| async move {
            if !more {
                return Ok(None);
            }
            let guard = self.client().await?;
            let client = guard.as_ref().expect("opened");
            let found = client
                .query(
                    "SELECT key, cols, src FROM rows
                     WHERE dataset = $1 AND day = $2 AND key > $3
                     ORDER BY key LIMIT $4",
                    &[&dataset_name, &date, &after, &PAGE_ROWS],
                )
                .await
                .with_context(|| format!("reading rows of {dataset_name} on {date}"))?;
            drop(guard);
            self.count(1);
            let more = found.len() as i64 == PAGE_ROWS;
            let rows = found
                .iter()
                .map(|r| {
                    let key: String = r.get(0);
                    let cols: serde_json::Value = r.get(1);
                    Ok(StoredRow {
                        values: from_json(dataset, &cols)
                            .with_context(|| format!("stored row {key:?} of {dataset_name}"))?,
                        key,
                        source: r.get(2),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let last = rows.last().map(|r| r.key.clone()).unwrap_or(after);
            Ok(Some((rows, (last, more))))
        })
        .boxed()
    }

    async fn delete_day(&self, dataset_name: &str, date: NaiveDate) -> anyhow::Result<u64> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("opened");
        let n = client
            .execute(
                "DELETE FROM rows WHERE dataset = $1 AND day = $2",
                &[&dataset_name, &date],
            )
            .await
            .with_context(|| format!("deleting rows of {dataset_name} on {date}"))?;
        self.count(1);
        Ok(n)
    }

    /// In one transaction: the day's rows the staging lacks (and stored before `since`)
    /// deleted, the staged rows moved in over any stored under their key, the staging
    /// emptied. Readers see the day before or after, never between.
    async fn replace_day(
        &self,
        dataset_name: &str,
        _dataset: &Dataset,
        date: NaiveDate,
        staging: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Replaced> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().expect("opened");
        let tx = client.transaction().await?;
        let count = "SELECT count(*) FROM rows WHERE dataset = $1 AND day = $2";
        let before: i64 = tx.query_one(count, &[&dataset_name, &date]).await?.get(0);
        let gone = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE r.ingested_at < $4), count(*) FILTER (WHERE r.ingested_at >= $4)
                 FROM rows r
                 WHERE r.dataset = $1 AND r.day = $2 AND NOT EXISTS (
                     SELECT 1 FROM rows s WHERE s.dataset = $3 AND s.day = $2 AND s.key = r.key)",
                &[&dataset_name, &date, &staging, &since],
            )
            .await?;
        let (removed, kept): (i64, i64) = (gone.get(0), gone.get(1));
        tx.execute(
            "DELETE FROM rows r
             WHERE r.dataset = $1 AND r.day = $2 AND r.ingested_at < $4 AND NOT EXISTS (
                 SELECT 1 FROM rows s WHERE s.dataset = $3 AND s.day = $2 AND s.key = r.key)",
            &[&dataset_name, &date, &staging, &since],
        )
        .await
        .with_context(|| format!("deleting the rows of {dataset_name} on {date} not rebuilt"))?;
        tx.execute(
            "INSERT INTO rows (dataset, day, key, cols, src, ingested_at)
             SELECT $1, day, key, cols, src, ingested_at FROM rows WHERE dataset = $3 AND day = $2
             ON CONFLICT (dataset, day, key)
             DO UPDATE SET cols = EXCLUDED.cols, src = EXCLUDED.src, ingested_at = EXCLUDED.ingested_at",
            &[&dataset_name, &date, &staging],
        )
        .await
        .with_context(|| format!("moving the rebuilt rows of {dataset_name} on {date} in"))?;
        tx.execute(
            "DELETE FROM rows WHERE dataset = $1 AND day = $2",
            &[&staging, &date],
        )
        .await?;
        let after: i64 = tx.query_one(count, &[&dataset_name, &date]).await?.get(0);
        tx.commit()
            .await
            .with_context(|| format!("replacing the rows of {dataset_name} on {date}"))?;
        self.count(7);
        Ok(Replaced {
            before: before as u64,
            after: after as u64,
            removed: removed as u64,
            kept: kept as u64,
        })
    }

    /// Deletes in slices of [`EXPIRE_SLICE`] rows, each its own short transaction (the primary
    /// key's range on (dataset, day) finds them), so a large backlog neither holds one long
    /// lock nor one huge WAL record; a sweep cut short by a timeout is finished by the next.
    async fn expire_before(
        &self,
        dataset_name: &str,
        cutoff: NaiveDate,
    ) -> anyhow::Result<Option<u64>> {
        let guard = self.client().await?;
        let client = guard.as_ref().expect("opened");
        let mut total = 0;
        loop {
            let n = client
                .execute(
                    "DELETE FROM rows WHERE ctid IN (
                         SELECT ctid FROM rows WHERE dataset = $1 AND day < $2 LIMIT $3)",
                    &[&dataset_name, &cutoff, &EXPIRE_SLICE],
                )
                .await
                .with_context(|| {
                    format!("deleting rows of {dataset_name} before {cutoff} (retention)")
                })?;
            self.count(1);
            total += n;
            if n < EXPIRE_SLICE as u64 {
                return Ok(Some(total));
            }
        }
    }
}

/// Rows one statement of the retention sweep deletes.
const EXPIRE_SLICE: i64 = 10_000;

/// A row's values as the JSON document of its columns (absent values left out), typed as the
/// DynamoDB adapter stores them: numbers as numbers, date-times and dates as ISO text.
fn to_json(dataset: &Dataset, values: &Row) -> serde_json::Value {
    let cols: serde_json::Map<String, serde_json::Value> = dataset
        .columns
        .iter()
        .zip(values)
        .filter_map(|(c, v)| {
            let v = v.as_ref()?;
            let json = match v {
                Value::Int(i) => serde_json::Value::from(*i),
                Value::Dec(d) => serde_json::Value::from(*d),
                Value::Bool(b) => serde_json::Value::Bool(*b),
                Value::Text(s) => serde_json::Value::String(s.to_string()),
                Value::DateTime(t) => {
                    serde_json::Value::String(t.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
                }
                Value::Date(d) => serde_json::Value::String(d.format("%Y-%m-%d").to_string()),
            };
            Some((c.name.clone(), json))
        })
        .collect();
    serde_json::Value::Object(cols)
}

fn from_json(dataset: &Dataset, cols: &serde_json::Value) -> anyhow::Result<Row> {
    let empty = serde_json::Map::new();
    let cols = cols.as_object().unwrap_or(&empty);
    dataset
        .columns
        .iter()
        .map(|c| match cols.get(&c.name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => from_value(c.kind, v)
                .map(Some)
                .with_context(|| format!("column {}", c.name)),
        })
        .collect()
}

fn from_value(kind: ColumnType, v: &serde_json::Value) -> anyhow::Result<Value> {
    use serde_json::Value as J;
    Ok(match (kind, v) {
        (ColumnType::Integer | ColumnType::Duration, J::Number(n)) => {
            Value::Int(n.as_i64().context("not an integer")?)
        }
        (ColumnType::Decimal, J::Number(n)) => Value::Dec(n.as_f64().context("not a number")?),
        (ColumnType::Boolean, J::Bool(b)) => Value::Bool(*b),
        (ColumnType::Datetime, J::String(s)) => {
            Value::DateTime(NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")?)
        }
        (ColumnType::Date, J::String(s)) => Value::Date(NaiveDate::parse_from_str(s, "%Y-%m-%d")?),
        (ColumnType::Text, J::String(s)) => Value::Text(s.as_str().into()),
        (kind, other) => bail!("stored as {other}, which does not fit type {kind:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_json_columns() {
        let defs =
            crate::definitions::Definitions::parse(include_str!("../../../reports.toml")).unwrap();
        let ds = &defs.datasets["ib_calls"];
        let parsed = crate::csv_ingest::parse_attachment(
            ds,
            include_bytes!("../../../events/mailbox/ib_calls_2024-03-14_morning.csv"),
            &crate::csv_ingest::Origin::default(),
        )
        .unwrap();
        for row in parsed.rows.iter().take(50) {
            let json = to_json(ds, &row.values);
            assert_eq!(from_json(ds, &json).unwrap(), row.values);
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named() {
        let err = from_value(ColumnType::Integer, &serde_json::json!("x")).unwrap_err();
        assert!(err.to_string().contains("Integer"), "{err}");
    }
}
