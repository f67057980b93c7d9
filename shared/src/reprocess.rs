//! Re-processing a day: removes a dataset's rows of one day and re-ingests the archived
//! attachments that held rows of that day, in the order they were first received, so the result
//! is the rows a first ingest of those attachments produces (first occurrence wins).
//!
//! Ingest keeps the index this needs: one state record per (dataset, day, raw attachment),
//! `DAY#{dataset}#{day}` / `RAW#{received}#{raw key}` ([`crate::state::DayAttachment`]).

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use serde::Serialize;

use crate::csv_ingest::{Origin, parse_attachment};
use crate::definitions::Definitions;
use crate::failure::permanent;
use crate::ports::{Objects, RowStore, StateRecords};
use crate::state::{DayAttachment, RecordKey, day_index};

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

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReprocessOutcome {
    pub rows_deleted: u64,
    pub attachments: u64,
    pub rows_stored: u64,
}

pub async fn reprocess_day(
    definitions: &Definitions,
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
    // Sort keys start with the received time: the records come back in receiving order.
    let attachments: Vec<DayAttachment> = records
        .records(&day_index(dataset_name, date), "RAW#")
        .await
        .context("the day's attachment index")?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let rows_deleted = rows.delete_day(dataset_name, date).await?;
    let mut rows_stored = 0;
    for a in &attachments {
        let bytes = objects.get(&a.raw_key, None).await?;
        let origin = Origin {
            file_name: a.raw_key.rsplit('/').next().unwrap_or_default(),
            received: Some(a.received),
        };
        let parsed = parse_attachment(dataset, &bytes, &origin)
            .map_err(|e| permanent(format!("{} can no longer be parsed: {e}", a.raw_key)))?;
        let of_day: Vec<_> = parsed.rows.into_iter().filter(|r| r.date == date).collect();
        rows_stored += rows
            .store(dataset_name, dataset, &of_day, &a.source, Utc::now())
            .await?
            .new;
    }
    tracing::info!(dataset = dataset_name, %date, rows_deleted, rows_stored, attachments = attachments.len(), "day re-processed");
    Ok(ReprocessOutcome {
        rows_deleted,
        attachments: attachments.len() as u64,
        rows_stored,
    })
}
