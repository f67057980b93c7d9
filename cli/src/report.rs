//! `charlie report build`: a report's workbook from CSV files, offline, with phase timings.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use charlie::csv_ingest::{KeyedRow, parse_attachment};
use charlie::value::Row;
use charlie::workbook::{DatasetRows, WorkbookInput, summaries, write};
use chrono::{NaiveDate, Utc};

fn usage(message: String) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(2)
}

pub fn build(
    report_name: &str,
    config: &Path,
    specs: &[String],
    out: &Path,
    period: Option<NaiveDate>,
) -> ExitCode {
    let started = Instant::now();
    let defs = match crate::load(config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let Some(report) = defs.reports.get(report_name) else {
        return usage(format!(
            "unknown report {report_name:?}; {} defines {:?}",
            config.display(),
            defs.reports.keys().collect::<Vec<_>>()
        ));
    };
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for spec in specs {
        let Some((ds, file)) = spec.split_once('=') else {
            return usage(format!("--csv {spec:?}: expected DATASET=FILE"));
        };
        if !report.datasets.iter().any(|d| d == ds) {
            return usage(format!(
                "--csv {spec:?}: report {report_name} uses datasets {:?}",
                report.datasets
            ));
        }
        files.push((ds.to_owned(), PathBuf::from(file)));
    }

    // Parse: decode, type, validate, key and dedup within each file (fused, as ingest does).
    let t = Instant::now();
    let mut by_dataset: BTreeMap<String, Vec<Vec<KeyedRow>>> = BTreeMap::new();
    let mut mails: BTreeMap<String, usize> = BTreeMap::new();
    let mut rejected = 0u64;
    for (ds_name, file) in &files {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => return usage(format!("{}: cannot read: {e}", file.display())),
        };
        let parsed = match parse_attachment(&defs.datasets[ds_name], &bytes) {
            Ok(p) => p,
            Err(e) => {
                println!(
                    "{}",
                    serde_json::json!({ "file": file.display().to_string(), "dataset": ds_name, "error": e.to_string() })
                );
                return ExitCode::FAILURE;
            }
        };
        rejected += parsed.rejects.len() as u64;
        by_dataset
            .entry(ds_name.clone())
            .or_default()
            .push(parsed.rows);
        *mails.entry(ds_name.clone()).or_default() += 1;
    }
    let parse_s = t.elapsed().as_secs_f64();

    // Dedup across files of one dataset (first file wins), then keep the period's day.
    let t = Instant::now();
    let period = period.or_else(|| {
        report
            .datasets
            .iter()
            .filter_map(|d| by_dataset.get(d))
            .flat_map(|files| files.iter().flatten().map(|r| r.date))
            .min()
    });
    let Some(period) = period else {
        return usage("no valid rows in the files and no --period: nothing to report".into());
    };
    let mut rows_by_dataset: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut outside = 0u64;
    let mut cross_file_duplicates = 0u64;
    for (ds, file_rows) in by_dataset {
        let several = file_rows.len() > 1;
        let mut seen: HashSet<String> = HashSet::new();
        let mut rows = Vec::new();
        for r in file_rows.into_iter().flatten() {
            if r.date != period {
                outside += 1;
                continue;
            }
            if several && !seen.insert(r.key.clone()) {
                cross_file_duplicates += 1;
                continue;
            }
            rows.push(r.values);
        }
        rows_by_dataset.insert(ds, rows);
    }
    let dedupe_s = t.elapsed().as_secs_f64();

    let period_label = period.format("%Y-%m-%d").to_string();
    let empty: Vec<Row> = Vec::new();
    let input = WorkbookInput {
        report_name,
        report,
        period: &period_label,
        generated_at: Utc::now(),
        datasets: report
            .datasets
            .iter()
            .map(|d| DatasetRows {
                name: d,
                dataset: &defs.datasets[d],
                rows: rows_by_dataset.get(d).unwrap_or(&empty),
                source_mails: mails.get(d).copied().unwrap_or(0),
            })
            .collect(),
    };
    let t = Instant::now();
    let tables = summaries(&input);
    let aggregate_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let built = match write(&input, &tables) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(out, &built.bytes) {
        return usage(format!("{}: cannot write: {e}", out.display()));
    }
    let write_s = t.elapsed().as_secs_f64();

    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "report": report_name,
            "period": period_label,
            "out": out.display().to_string(),
            "size_bytes": built.bytes.len(),
            "sheets": built.sheets,
            "rows": built.rows,
            "rows_rejected": rejected,
            "rows_outside_period": outside,
            "cross_file_duplicates": cross_file_duplicates,
            "warnings": built.warnings,
            "parse_s": parse_s,
            "dedupe_s": dedupe_s,
            "aggregate_s": aggregate_s,
            "write_s": write_s,
            "total_s": started.elapsed().as_secs_f64(),
            "peak_rss_mb": charlie::telemetry::peak_rss_mib(),
        }))
        .expect("JSON")
    );
    ExitCode::SUCCESS
}
