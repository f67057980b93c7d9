//! `charlie-bench ingest --dataset NAME [--config FILE] [--reps N] CSV_FILE...`
//!
//! Times the exact ingest logic (decode, parse, type, validate, key, dedup: `AttachmentReader`,
//! yielding chunks of rows as the ingest stage stores them; files over 4 MiB read as a stream, as
//! the stage reads a large attachment) on each file, on one thread, and prints one JSON object
//! per file: rows, best and median seconds over the repetitions, rows per second (best), and the
//! process's peak RSS.

/// mimalloc: ingest makes a few small allocations per row, and glibc's malloc spent a fifth
/// of its time on them (`bench/ingest`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Instant;

use charlie::csv_ingest::AttachmentReader;
use charlie::definitions::Definitions;

/// Rows per chunk, as the ingest stage stores them.
const CHUNK_ROWS: usize = 5_000;
/// Files larger than this are read as a stream, as the ingest stage reads an attachment over
/// its `IngestTuning::stream_above` (from S3's body); smaller ones are held in memory.
const STREAM_ABOVE: u64 = 4 * 1024 * 1024;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("ingest") {
        eprintln!(
            "usage: charlie-bench ingest --dataset NAME [--config FILE] [--reps N] CSV_FILE..."
        );
        return std::process::ExitCode::from(2);
    }
    let (mut dataset, mut config, mut reps, mut files) =
        (None, PathBuf::from("reports.toml"), 3usize, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dataset" => dataset = args.next(),
            "--config" => config = args.next().map(PathBuf::from).unwrap_or(config),
            "--reps" => {
                reps = args
                    .next()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(reps)
                    .max(1)
            }
            f => files.push(PathBuf::from(f)),
        }
    }
    let Some(dataset) = dataset else {
        eprintln!("--dataset is required");
        return std::process::ExitCode::from(2);
    };
    let defs = match std::fs::read_to_string(&config)
        .map_err(|e| e.to_string())
        .and_then(|t| Definitions::parse(&t).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    let Some(ds) = defs.datasets.get(&dataset) else {
        eprintln!("unknown dataset {dataset}");
        return std::process::ExitCode::from(2);
    };
    for file in files {
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let streamed = size > STREAM_ABOVE;
        let bytes = if streamed {
            Vec::new()
        } else {
            match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
        };
        let mut times = Vec::with_capacity(reps);
        let mut summary = None;
        for _ in 0..reps {
            let start = Instant::now();
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let origin = charlie::csv_ingest::Origin::named(name.as_deref().unwrap_or_default());
            let opened = if streamed {
                AttachmentReader::from_file(ds, &file, &origin)
            } else {
                AttachmentReader::new(ds, &bytes, &origin)
            };
            let mut reader = match opened {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    return std::process::ExitCode::FAILURE;
                }
            };
            // As ingest does: chunks of rows go to the store (here: dropped).
            loop {
                match reader.next_chunk(CHUNK_ROWS) {
                    Ok(Some(chunk)) => {
                        std::hint::black_box(chunk);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("{}: {e}", file.display());
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
            let s = reader.finish();
            times.push(start.elapsed().as_secs_f64());
            summary = Some((
                s.rows_total,
                s.rows_unique as usize,
                s.duplicates,
                s.rows_rejected,
            ));
        }
        times.sort_by(f64::total_cmp);
        let (total, unique, duplicates, rejected) = summary.expect("at least one repetition");
        let best = times[0];
        println!(
            "{}",
            serde_json::json!({
                "engine": "charlie", "file": file.display().to_string(), "bytes": size, "streamed": streamed,
                "rows_total": total, "rows_unique": unique, "duplicates": duplicates, "rejected": rejected,
                "reps": reps, "best_s": best, "median_s": times[times.len() / 2],
                "rows_per_s": total as f64 / best, "peak_rss_mib": charlie::telemetry::peak_rss_mib(),
            })
        );
    }
    std::process::ExitCode::SUCCESS
}
