//! `charlie`, the operator CLI. Offline commands run the exact library code the functions run.
//!
//! Exit codes: 0 success, 1 the input is invalid or unusable, 2 bad usage.

/// mimalloc: ingest makes a few small allocations per row, and glibc's malloc spent a fifth
/// of its time on them (`bench/ingest`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use charlie::csv_ingest::{Origin, parse_attachment};
use charlie::definitions::{DateSource, Definitions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "charlie",
    version,
    about = "Operate Charlie: check definitions, try an export offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Definitions (reports.toml)
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Ingest logic, offline
    Ingest {
        #[command(subcommand)]
        command: IngestCommand,
    },
    /// Reports, offline
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Build a report's workbook from CSV exports through the same ingest and workbook code the
    /// functions run (no AWS), and print one JSON object of timings per phase.
    Build {
        /// The report to build
        #[arg(long)]
        report: String,
        /// The definitions file
        #[arg(long, default_value = "reports.toml")]
        config: PathBuf,
        /// An export for one of the report's datasets; repeat for several
        #[arg(long = "csv", value_name = "DATASET=FILE", required = true)]
        csv: Vec<String>,
        /// Where to write the workbook
        #[arg(long)]
        out: PathBuf,
        /// Keep only rows of this period: a day (2024-03-14), an ISO week (2024-W11), a month
        /// (2024-03) or a range (2024-03-01..2024-03-14). Default: every row of the files,
        /// labelled by the days they cover.
        #[arg(long, value_parser = |s: &str| charlie::period::Period::parse(s).map_err(|e| e.to_string()))]
        period: Option<charlie::period::Period>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a definitions file; every problem is printed with its line. Exit 1 when invalid.
    Check {
        /// The file to check
        #[arg(default_value = "reports.toml")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum IngestCommand {
    /// Run the ingest logic on a CSV file and print one JSON object of what it found.
    /// Exit 0 when the file is usable (even with rejected rows), 1 when it is not.
    Check {
        /// The dataset whose definition applies
        #[arg(long)]
        dataset: String,
        /// The definitions file
        #[arg(long, default_value = "reports.toml")]
        config: PathBuf,
        /// The mail's received time (RFC 3339), for datasets with `date = "received"`
        #[arg(long, value_parser = |s: &str| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.to_utc()).map_err(|e| e.to_string()))]
        received: Option<chrono::DateTime<chrono::Utc>>,
        /// The attachment's name as mailed, for datasets that take the date from it (default:
        /// the file's name)
        #[arg(long)]
        name: Option<String>,
        /// The CSV export
        csv_file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Report {
            command:
                ReportCommand::Build {
                    report,
                    config,
                    csv,
                    out,
                    period,
                },
        } => report::build(&report, &config, &csv, &out, period),
        Command::Ingest {
            command:
                IngestCommand::Check {
                    dataset,
                    config,
                    received,
                    name,
                    csv_file,
                },
        } => ingest_check(&dataset, &config, &csv_file, name.as_deref(), received),
    }
}

mod report;

pub(crate) fn load(file: &Path) -> Result<Definitions, ExitCode> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return Err(ExitCode::from(2));
        }
    };
    Definitions::parse(&text).map_err(|err| {
        for p in &err.problems {
            match p.line {
                Some(l) => eprintln!("{}:{l}: {}", file.display(), p.message),
                None => eprintln!("{}: {}", file.display(), p.message),
            }
        }
        eprintln!(
            "{}: invalid ({} problem(s))",
            file.display(),
            err.problems.len()
        );
        ExitCode::FAILURE
    })
}

fn config_check(file: &Path) -> ExitCode {
    match load(file) {
        Ok(defs) => {
            let names = |it: Vec<&String>| it.into_iter().cloned().collect::<Vec<_>>().join(", ");
            println!(
                "{}: valid — {} dataset(s) ({}), {} report(s) ({})",
                file.display(),
                defs.datasets.len(),
                names(defs.datasets.keys().collect()),
                defs.reports.len(),
                names(defs.reports.keys().collect()),
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn ingest_check(
    dataset: &str,
    config: &Path,
    csv_file: &Path,
    name: Option<&str>,
    received: Option<chrono::DateTime<chrono::Utc>>,
) -> ExitCode {
    let defs = match load(config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let Some(ds) = defs.datasets.get(dataset) else {
        let known: Vec<&String> = defs.datasets.keys().collect();
        eprintln!(
            "unknown dataset {dataset:?}; {} defines {known:?}",
            config.display()
        );
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(csv_file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", csv_file.display());
            return ExitCode::from(2);
        }
    };
    let file_name = name.map(str::to_owned).unwrap_or_else(|| {
        csv_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let origin = Origin {
        file_name: &file_name,
        received,
    };
    let date_source = match ds.date_source() {
        Some(DateSource::Column(c)) => format!("column {c}"),
        Some(DateSource::FileName { pattern, .. }) => {
            format!("file name {file_name:?} (pattern {:?})", pattern.as_str())
        }
        Some(DateSource::Received) => match received {
            Some(t) => format!("received {} in {}", t.to_rfc3339(), ds.time_zone.0.name()),
            None => "received (give --received)".to_owned(),
        },
        None => "none".to_owned(),
    };
    match parse_attachment(ds, &bytes, &origin) {
        Ok(parsed) => {
            let dates: std::collections::BTreeSet<String> =
                parsed.rows.iter().map(|r| r.date.to_string()).collect();
            let out = serde_json::json!({
                "file": csv_file.display().to_string(),
                "dataset": dataset,
                "encoding": parsed.encoding,
                "delimiter": parsed.delimiter.to_string(),
                "date_source": date_source,
                "date": parsed.fixed_date.map(|d| d.to_string()),
                "rows_total": parsed.rows_total,
                "rows_valid": parsed.rows_total - parsed.rows_rejected,
                "rows_rejected": parsed.rows_rejected,
                "duplicates": parsed.duplicates,
                "rows_unique": parsed.rows.len(),
                "dates": dates,
                "lines": parsed.lines,
                "rejects": parsed.rejects,
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
            ExitCode::SUCCESS
        }
        Err(unusable) => {
            let out = serde_json::json!({
                "file": csv_file.display().to_string(),
                "dataset": dataset,
                "date_source": date_source,
                "error": unusable.to_string(),
                "kind": unusable.kind(),
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
            ExitCode::FAILURE
        }
    }
}
