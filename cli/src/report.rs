//! `charlie report build`: a report's workbook from CSV files, offline, with phase timings.
//!
//! It streams like the report builder: a reader thread parses each file in chunks of rows,
//! deduplicates and aggregates them, while this thread writes each chunk to its raw sheet; no
//! row is kept, so memory stays flat whatever the files' size. Each phase's time is summed over
//! the chunks; the reader's phases run beside the writer's, so they can add up to more than
//! `total_s`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use charlie::csv_ingest::{AttachmentReader, KeyedRow, Origin};
use charlie::definitions::Dataset;
use charlie::definitions::Report;
use charlie::key_set::KeySet;
use charlie::period::Period;
use charlie::summary::SummaryTable;
use charlie::workbook::{ReportSummaries, ReportWorkbook};
use chrono::{NaiveDate, Utc};

/// Rows per chunk, as the ingest stage stores them.
const CHUNK_ROWS: usize = 1_024;

fn usage(message: String) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(2)
}

/// Times `f`, adding its duration to `total`.
fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *total += t.elapsed();
    out
}

pub fn build(
    report_name: &str,
    config: &Path,
    specs: &[String],
    out: &Path,
    period: Option<Period>,
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
    let mut files: Vec<(usize, PathBuf)> = Vec::new();
    for spec in specs {
        let Some((ds, file)) = spec.split_once('=') else {
            return usage(format!("--csv {spec:?}: expected DATASET=FILE"));
        };
        let Some(i) = report.datasets.iter().position(|d| d == ds) else {
            return usage(format!(
                "--csv {spec:?}: report {report_name} uses datasets {:?}",
                report.datasets
            ));
        };
        files.push((i, PathBuf::from(file)));
    }
    // Datasets are written in the report's order; a dataset's files in the order given.
    files.sort_by_key(|(i, _)| *i);

    let datasets: Vec<(&str, &Dataset)> = report
        .datasets
        .iter()
        .map(|d| (d.as_str(), &defs.datasets[d]))
        .collect();
    let label = period.map(|p| p.to_string()).unwrap_or_default();
    let mut wb = match ReportWorkbook::new(report_name, report, &datasets, &label, Utc::now()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // A reader thread parses, deduplicates and aggregates while this one writes the rows it
    // keeps: the two overlap on two cores. Two chunks in flight bound the memory it adds.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Parsed>(2);
    let mut write = Duration::ZERO;
    let outcome = std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_files(report, &files, &datasets, period, tx));
        for msg in rx {
            match msg {
                Parsed::File(i) => wb.add_source_mails(i, 1),
                Parsed::Rows(i, chunk) => {
                    if let Err(e) = timed(&mut write, || {
                        chunk.iter().try_for_each(|r| wb.write_row(i, &r.values))
                    }) {
                        // Dropping the receiver stops the reader at its next chunk.
                        return Err(Failure::Write(e.to_string()));
                    }
                }
            }
        }
        reader.join().expect("the reader thread does not panic")
    });
    let read = match outcome {
        Ok(read) => read,
        Err(Failure::Unusable(json)) => {
            println!("{json}");
            return ExitCode::FAILURE;
        }
        Err(Failure::Write(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Without --period, the label says which days the rows cover.
    let label = match (period, read.days) {
        (Some(p), _) => p.to_string(),
        (None, Some((a, b))) if a == b => Period::Day(a).to_string(),
        (None, Some((a, b))) => Period::Range(a, b).to_string(),
        (None, None) => "no rows".to_owned(),
    };
    wb.set_period(&label);
    let saved = timed(&mut write, || {
        wb.finish_with(read.tables).and_then(|f| f.save(out))
    });
    let saved = match saved {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    };
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "report": report_name,
            "period": label,
            "out": out.display().to_string(),
            "size_bytes": size,
            "sheets": saved.sheets,
            "rows": saved.rows,
            "rows_rejected": read.rejected,
            "rows_outside_period": read.outside,
            "cross_file_duplicates": read.cross_file_duplicates,
            "warnings": saved.warnings,
            "parse_s": read.parse.as_secs_f64(),
            "dedupe_s": read.dedupe.as_secs_f64(),
            "aggregate_s": read.aggregate.as_secs_f64(),
            "write_s": write.as_secs_f64(),
            "total_s": started.elapsed().as_secs_f64(),
            "peak_rss_mb": charlie::telemetry::peak_rss_mib(),
        }))
        .expect("JSON")
    );
    ExitCode::SUCCESS
}

/// What the reader thread sends, in file order.
enum Parsed {
    /// A file of dataset `i` starts.
    File(usize),
    /// Rows of dataset `i` to write: unique, valid, in the period.
    Rows(usize, Vec<KeyedRow>),
}

enum Failure {
    /// A file could not be used (its JSON error record).
    Unusable(serde_json::Value),
    Write(String),
}

/// What the reader thread found, and how long each of its phases took.
#[derive(Default)]
struct Read {
    parse: Duration,
    dedupe: Duration,
    aggregate: Duration,
    tables: Vec<SummaryTable>,
    rejected: u64,
    outside: u64,
    cross_file_duplicates: u64,
    /// First and last day of the rows kept.
    days: Option<(NaiveDate, NaiveDate)>,
}

/// Reads every file in chunks: parses, keeps the rows of the period not seen in an earlier file
/// of the dataset, aggregates them and sends them on to be written.
fn read_files(
    report: &Report,
    files: &[(usize, PathBuf)],
    datasets: &[(&str, &Dataset)],
    period: Option<Period>,
    tx: std::sync::mpsc::SyncSender<Parsed>,
) -> Result<Read, Failure> {
    let mut read = Read::default();
    let mut summaries = ReportSummaries::new(report, datasets);
    let mut seen: Option<(usize, KeySet)> = None;
    for (i, file) in files {
        let (i, (name, dataset)) = (*i, datasets[*i]);
        let mut reader = timed(&mut read.parse, || {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            AttachmentReader::from_file(
                dataset,
                file,
                &Origin::named(name.as_deref().unwrap_or_default()),
            )
        })
        .map_err(|e| {
            Failure::Unusable(serde_json::json!({
                "file": file.display().to_string(), "dataset": name, "error": e.to_string(),
            }))
        })?;
        // Rows repeated across a dataset's files: the first file wins (as stored rows do). The
        // keys of all its files are kept, only when it has several.
        if seen.as_ref().is_none_or(|(j, _)| *j != i) {
            let several = files.iter().filter(|(j, _)| *j == i).count() > 1;
            seen = several.then(|| (i, KeySet::with_capacity(1 << 16, 1 << 20)));
        }
        if tx.send(Parsed::File(i)).is_err() {
            break; // the writer stopped
        }
        let unusable = |e: charlie::csv_ingest::Unusable| {
            Failure::Unusable(serde_json::json!({
                "file": file.display().to_string(), "dataset": name, "error": e.to_string(),
            }))
        };
        while let Some(mut chunk) =
            timed(&mut read.parse, || reader.next_chunk(CHUNK_ROWS)).map_err(unusable)?
        {
            timed(&mut read.dedupe, || {
                chunk.retain(|r| {
                    if period.is_some_and(|p| !p.contains(r.date)) {
                        read.outside += 1;
                        return false;
                    }
                    if let Some((_, seen)) = &mut seen
                        && !seen.insert(r.date, &r.key)
                    {
                        read.cross_file_duplicates += 1;
                        return false;
                    }
                    read.days = Some(
                        read.days
                            .map_or((r.date, r.date), |(a, b)| (a.min(r.date), b.max(r.date))),
                    );
                    true
                })
            });
            timed(&mut read.aggregate, || {
                chunk.iter().for_each(|r| summaries.add(i, &r.values))
            });
            if tx.send(Parsed::Rows(i, chunk)).is_err() {
                return Ok(read);
            }
        }
        read.rejected += reader.finish().rows_rejected;
    }
    read.tables = timed(&mut read.aggregate, || summaries.finish());
    Ok(read)
}
