//! `charlie report build`: a report's workbook from CSV files, offline, with phase timings.
//!
//! It streams like the report builder: a reader thread parses each file in chunks of rows while
//! this thread deduplicates, aggregates and writes each chunk to its raw sheet, so no row is
//! kept and memory stays flat whatever the files' size. Each phase's time is summed over the
//! chunks; parsing runs beside the others, so the phases can add up to more than `total_s`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use charlie::csv_ingest::{AttachmentReader, KeyedRow};
use charlie::definitions::Dataset;
use charlie::key_set::KeySet;
use charlie::period::Period;
use charlie::workbook::ReportWorkbook;
use chrono::{NaiveDate, Utc};

/// Rows per chunk, as the ingest stage stores them.
const CHUNK_ROWS: usize = 5_000;

fn usage(message: String) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(2)
}

#[derive(Default)]
struct Phases {
    parse: Duration,
    dedupe: Duration,
    aggregate: Duration,
    write: Duration,
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
    let mut phases = Phases::default();
    let (mut rejected, mut outside, mut cross_file_duplicates) = (0u64, 0u64, 0u64);
    let mut days: Option<(NaiveDate, NaiveDate)> = None;
    let mut seen: Option<(usize, KeySet)> = None;
    // A reader thread parses the files while this one dedups, aggregates and writes: the two
    // overlap on two cores. A few chunks in flight bound the memory it adds.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Parsed>(4);
    let outcome = std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_files(&files, &datasets, tx));
        for msg in rx {
            let (i, chunk) = match msg {
                Parsed::File(i) => {
                    // Rows repeated across a dataset's files: the first file wins (as stored
                    // rows do). The keys of all its files are kept, only when it has several.
                    if seen.as_ref().is_none_or(|(j, _)| *j != i) {
                        let several = files.iter().filter(|(j, _)| *j == i).count() > 1;
                        seen = several.then(|| (i, KeySet::with_capacity(1 << 16, 1 << 20)));
                    }
                    wb.add_source_mails(i, 1);
                    continue;
                }
                Parsed::Rejected(n) => {
                    rejected += n;
                    continue;
                }
                Parsed::Rows(i, chunk) => (i, chunk),
            };
            let keep: Vec<bool> = timed(&mut phases.dedupe, || {
                chunk
                    .iter()
                    .map(|r| {
                        if period.is_some_and(|p| !p.contains(r.date)) {
                            outside += 1;
                            return false;
                        }
                        if let Some((_, seen)) = &mut seen
                            && !seen.insert(r.date, &r.key)
                        {
                            cross_file_duplicates += 1;
                            return false;
                        }
                        days = Some(
                            days.map_or((r.date, r.date), |(a, b)| (a.min(r.date), b.max(r.date))),
                        );
                        true
                    })
                    .collect()
            });
            let rows = || {
                chunk
                    .iter()
                    .zip(&keep)
                    .filter(|(_, k)| **k)
                    .map(|(r, _)| &r.values)
            };
            timed(&mut phases.aggregate, || {
                rows().for_each(|r| wb.aggregate(i, r))
            });
            if let Err(e) = timed(&mut phases.write, || {
                rows().try_for_each(|r| wb.write_row(i, r))
            }) {
                // Dropping the receiver stops the reader at its next chunk.
                return Err(Failure::Write(e.to_string()));
            }
        }
        reader.join().expect("the reader thread does not panic")
    });
    match outcome {
        Ok(parse) => phases.parse = parse,
        Err(Failure::Unusable(json)) => {
            println!("{json}");
            return ExitCode::FAILURE;
        }
        Err(Failure::Write(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    // Without --period, the label says which days the rows cover.
    let label = match (period, days) {
        (Some(p), _) => p.to_string(),
        (None, Some((a, b))) if a == b => Period::Day(a).to_string(),
        (None, Some((a, b))) => Period::Range(a, b).to_string(),
        (None, None) => "no rows".to_owned(),
    };
    wb.set_period(&label);
    let saved = timed(&mut phases.write, || wb.finish().and_then(|f| f.save(out)));
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
            "rows_rejected": rejected,
            "rows_outside_period": outside,
            "cross_file_duplicates": cross_file_duplicates,
            "warnings": saved.warnings,
            "parse_s": phases.parse.as_secs_f64(),
            "dedupe_s": phases.dedupe.as_secs_f64(),
            "aggregate_s": phases.aggregate.as_secs_f64(),
            "write_s": phases.write.as_secs_f64(),
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
    /// Unique, valid rows of dataset `i`.
    Rows(usize, Vec<KeyedRow>),
    /// Rows a file rejected.
    Rejected(u64),
}

enum Failure {
    /// A file could not be used (its JSON error record).
    Unusable(serde_json::Value),
    Write(String),
}

/// Reads every file in chunks, sending them on; returns the time spent parsing.
fn read_files(
    files: &[(usize, PathBuf)],
    datasets: &[(&str, &Dataset)],
    tx: std::sync::mpsc::SyncSender<Parsed>,
) -> Result<Duration, Failure> {
    let mut parse = Duration::ZERO;
    for (i, file) in files {
        let (i, (name, dataset)) = (*i, datasets[*i]);
        let mut reader =
            timed(&mut parse, || AttachmentReader::from_file(dataset, file)).map_err(|e| {
                Failure::Unusable(serde_json::json!({
                    "file": file.display().to_string(), "dataset": name, "error": e.to_string(),
                }))
            })?;
        if tx.send(Parsed::File(i)).is_err() {
            break; // the writer stopped
        }
        while let Some(chunk) = timed(&mut parse, || reader.next_chunk(CHUNK_ROWS)) {
            if tx.send(Parsed::Rows(i, chunk)).is_err() {
                return Ok(parse);
            }
        }
        let rejects = reader.finish().rejects.len() as u64;
        if tx.send(Parsed::Rejected(rejects)).is_err() {
            break;
        }
    }
    Ok(parse)
}
