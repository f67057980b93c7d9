//! Re-processing a day: rebuilds a dataset's rows of one day from the archived attachments that
//! held rows of that day, in the order they were first received, so the result is the rows a
//! first ingest of those attachments produces (first occurrence wins; a file that was unusable
//! part way gives the rows before the point where it stopped, as it did then).
//!
//! The day is rebuilt beside itself and replaced only once the rebuild is complete: every
//! archived file is read and its rows of the day stored under a staging name
//! ([`staging_name`]), then [`RowStore::replace_day`] swaps them in. A file that can no longer
//! be read (gone from the bucket, or unusable from its start under today's definition) fails
//! the reprocess for good with its key and reason, and the day keeps every row it had.
//!
//! Ingest keeps the index this needs: one state record per (dataset, day, raw attachment),
//! `DAY#{dataset}#{day}` / `RAW#{received}#{raw key}` ([`crate::state::DayAttachment`]).

use std::sync::Arc;

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use futures::TryStreamExt;

use crate::definitions::Definitions;
use crate::failure::permanent;
use crate::ports::{NoSuchObject, Objects, RowStore, StateRecords};
use crate::stages::ingest::IngestTuning;
use crate::stages::ingest::pipeline::{self, Ended, Input};
use crate::state::{DayAttachment, RecordKey, day_index};

/// Rows read from an archived file at a time.
const CHUNK_ROWS: usize = 5_000;

/// Records that `attachment` held rows of `dataset` on `date`.
pub async fn index_day(
    records: &dyn StateRecords,
    dataset: &str,
    date: NaiveDate,
    attachment: &DayAttachment,
) -> anyhow::Result<()> {
    records
        .put_record(
            &RecordKey::day_attachment(dataset, date, attachment),
            attachment,
            None,
        )
        .await
}

/// The name a day of `dataset` is rebuilt under in the row store before it replaces the day
/// (`@` is in no dataset's name: definitions refuse it).
pub fn staging_name(dataset: &str) -> String {
    format!("{dataset}@rebuild")
}

pub use crate::state::ReprocessOutcome;

pub async fn reprocess_day(
    definitions: Arc<Definitions>,
    rows: &dyn RowStore,
    records: &dyn StateRecords,
    objects: &dyn Objects,
    dataset_name: &str,
    date: NaiveDate,
) -> anyhow::Result<ReprocessOutcome> {
    let dataset = definitions
        .datasets
        .get(dataset_name)
        .ok_or_else(|| permanent(format!("unknown dataset {dataset_name:?}")))?;
    let started = Utc::now();
    // Sort keys start with the received time: the records come back in receiving order.
    let attachments: Vec<DayAttachment> = records
        .records(&day_index(dataset_name, date), "RAW#")
        .await
        .context("the day's attachment index")?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let staging = staging_name(dataset_name);
    // What an earlier, interrupted try left behind.
    rows.delete_day(&staging, date).await?;
    let rebuilt = rebuild(
        &definitions,
        rows,
        objects,
        dataset_name,
        date,
        &staging,
        &attachments,
    )
    .await;
    let (rows_stored, partly_read) = match rebuilt {
        Ok(done) => done,
        Err(e) => {
            if let Err(left) = rows.delete_day(&staging, date).await {
                tracing::warn!(dataset = dataset_name, %date, error = %format!("{left:#}"),
                    "the rebuild's staged rows could not be deleted; the next reprocess does");
            }
            return Err(e);
        }
    };
    let replaced = rows
        .replace_day(dataset_name, dataset, date, &staging, started)
        .await?;
    tracing::info!(dataset = dataset_name, %date, before = replaced.before, after = replaced.after,
        removed = replaced.removed, kept = replaced.kept, rows_stored,
        attachments = attachments.len(), "day re-processed");
    Ok(ReprocessOutcome {
        rows_deleted: replaced.before,
        attachments: attachments.len() as u64,
        rows_stored,
        rows_removed: replaced.removed,
        rows_kept: replaced.kept,
        partly_read,
    })
}

/// Reads each archived file and stores its rows of `date` under `staging`: the rows stored,
/// and how many files were unusable part way.
async fn rebuild(
    definitions: &Arc<Definitions>,
    rows: &dyn RowStore,
    objects: &dyn Objects,
    dataset_name: &str,
    date: NaiveDate,
    staging: &str,
    attachments: &[DayAttachment],
) -> anyhow::Result<(u64, u64)> {
    let dataset = &definitions.datasets[dataset_name];
    let (mut stored, mut partly_read) = (0, 0);
    for a in attachments {
        let (body, size) = objects.get_stream(&a.raw_key).await.map_err(|e| {
            if NoSuchObject::is(&e) {
                permanent(format!(
                    "the archived attachment {} is gone from the bucket, so the day cannot be rebuilt (it keeps its rows): {e:#}",
                    a.raw_key
                ))
            } else {
                e
            }
        })?;
        let file_name = match &a.name {
            Some(name) => name.clone(),
            None => a.raw_key.rsplit('/').next().unwrap_or_default().to_owned(),
        };
        // Read as its first ingest read it: a small file whole (its encoding chosen from all
        // of it), a large one as a stream.
        let input = if size > IngestTuning::default().stream_above {
            Input::Stream(body, size)
        } else {
            let bytes: Vec<bytes::Bytes> = body.try_collect().await?;
            Input::Bytes(bytes.concat())
        };
        let mut parsing = pipeline::parse(
            Arc::clone(definitions),
            dataset_name.to_owned(),
            input,
            file_name,
            a.received,
            CHUNK_ROWS,
        );
        while let Some(chunk) = parsing.next().await {
            let of_day: Vec<_> = chunk.into_iter().filter(|r| r.date == date).collect();
            if of_day.is_empty() {
                continue;
            }
            stored += rows
                .store(staging, dataset, &of_day, &a.source, Utc::now())
                .await?
                .new;
        }
        match parsing.finish().await? {
            Ended::Read(_) => {}
            Ended::Unusable(why, Some(summary)) => {
                // As its first ingest did: the rows before the point where it stopped.
                tracing::info!(raw_key = a.raw_key, reason = %why, rows = summary.rows_unique,
                    "an archived file unusable part way: its rows before that point are taken");
                partly_read += 1;
            }
            Ended::Unusable(why, None) => {
                return Err(permanent(format!(
                    "the archived attachment {} can no longer be read as {dataset_name}, so the day cannot be rebuilt (it keeps its rows): {why}",
                    a.raw_key
                )));
            }
        }
    }
    Ok((stored, partly_read))
}
