//! Re-processing a day: removes a dataset's rows of one day and re-ingests the archived
//! attachments that held rows of that day, in the order they were first received, so the result
//! is the rows a first ingest of those attachments produces (first occurrence wins).
//!
//! Ingest keeps the index this needs: one state item per (dataset, day, raw attachment),
//! `DAY#{dataset}#{day}` / `RAW#{received}#{raw key}`.

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::adapters::object_store::ObjectStore;
use crate::adapters::rows::RowStore;
use crate::adapters::state::StateStore;
use crate::csv_ingest::parse_attachment;
use crate::definitions::Definitions;

/// An archived attachment that held rows of a day.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DayAttachment {
    pub raw_key: String,
    pub source: String,
    pub received: DateTime<Utc>,
}

pub fn day_index_pk(dataset: &str, date: NaiveDate) -> String {
    format!("DAY#{dataset}#{date}")
}

/// Records that `attachment` held rows of `dataset` on `date`.
pub async fn index_day(
    state: &StateStore,
    dataset: &str,
    date: NaiveDate,
    attachment: &DayAttachment,
) -> anyhow::Result<()> {
    let sk = format!(
        "RAW#{}#{}",
        attachment.received.format("%Y%m%dT%H%M%S%.3fZ"),
        attachment.raw_key
    );
    state
        .put_record(
            &day_index_pk(dataset, date),
            &sk,
            &serde_json::to_value(attachment)?,
            None,
        )
        .await
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReprocessOutcome {
    pub rows_deleted: u64,
    pub attachments: u64,
    pub rows_stored: u64,
}

pub async fn reprocess_day(
    definitions: &Definitions,
    rows: &RowStore,
    state: &StateStore,
    objects: &ObjectStore,
    dataset_name: &str,
    date: NaiveDate,
) -> anyhow::Result<ReprocessOutcome> {
    let dataset = definitions
        .datasets
        .get(dataset_name)
        .with_context(|| format!("unknown dataset {dataset_name:?}"))?;
    // Sort keys start with the received time: the records come back in receiving order.
    let attachments: Vec<DayAttachment> = state
        .records(&day_index_pk(dataset_name, date), "RAW#")
        .await?
        .into_iter()
        .map(|(_, data)| serde_json::from_value(data))
        .collect::<Result<_, _>>()
        .context("a day index record")?;
    let rows_deleted = rows.delete_day(dataset_name, date).await?;
    let mut rows_stored = 0;
    for a in &attachments {
        let bytes = objects.get(&a.raw_key, None).await?;
        let parsed = parse_attachment(dataset, &bytes)
            .map_err(|e| anyhow::anyhow!("{} can no longer be parsed: {e}", a.raw_key))?;
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
