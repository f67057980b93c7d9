//! `charlie`, the operator CLI. Offline commands (`config`, `ingest`, `report`) run the exact
//! library code the functions run; the others talk to a deployment's control API (`remote`).
//!
//! Exit codes: 0 success, 1 the input is invalid or unusable (offline) or what was asked for
//! failed (remote), 2 bad usage or a bad request, 3-6 see `remote`.

/// mimalloc: ingest makes a few small allocations per row, and glibc's malloc spent a fifth
/// of its time on them (`bench/ingest`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use charlie::csv_ingest::{Origin, read_attachment};
use charlie::definitions::{DateSource, Definitions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "charlie",
    version,
    about = "Operate Charlie: check definitions and try exports offline; see and steer a deployment through its control API (--api or CHARLIE_API_URL, the key in CHARLIE_API_KEY)"
)]
struct Cli {
    #[command(flatten)]
    remote: remote::Remote,
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
    /// A deployment, through its control API
    #[command(flatten)]
    Remote(remote::RemoteCommand),
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
    /// Write what Terraform reads from the definitions (`infra_file`): each report's schedule,
    /// time zone and workbook retention, each dataset's retention; reports.toml stays their one
    /// source. With --check, write nothing and exit 1 when OUT is stale.
    #[command(alias = "schedules")]
    Infra {
        /// The definitions file
        #[arg(default_value = "reports.toml")]
        file: PathBuf,
        /// Where Terraform reads them
        #[arg(short, long, default_value = "reports.infra.json")]
        out: PathBuf,
        /// Only compare OUT with what would be written
        #[arg(long)]
        check: bool,
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
        Command::Remote(command) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("charlie: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(remote::run(&cli.remote, command))
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Config {
            command: ConfigCommand::Infra { file, out, check },
        } => config_infra(&file, &out, check),
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

mod remote;
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
            for warning in defs.warnings() {
                eprintln!("{}: warning: {warning}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn config_infra(file: &Path, out: &Path, check: bool) -> ExitCode {
    let defs = match load(file) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let text = defs.infra_json();
    if check {
        return match std::fs::read_to_string(out) {
            Ok(current) if current == text => {
                println!("{}: up to date with {}", out.display(), file.display());
                ExitCode::SUCCESS
            }
            Ok(_) => {
                eprintln!(
                    "{}: stale: the schedules or retention in {} changed; run `charlie config infra {} -o {}` and commit it",
                    out.display(),
                    file.display(),
                    file.display(),
                    out.display()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("{}: cannot read: {e}", out.display());
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = std::fs::write(out, &text) {
        eprintln!("{}: cannot write: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!(
        "{}: {} report schedule(s), {} dataset(s) from {}",
        out.display(),
        defs.reports.len(),
        defs.datasets.len(),
        file.display()
    );
    ExitCode::SUCCESS
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
    match read_attachment(ds, &bytes, &origin) {
        Ok(parsed) => {
            let dates: std::collections::BTreeSet<String> =
                parsed.rows.iter().map(|r| r.date.to_string()).collect();
            let mut out = serde_json::json!({
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
            // Unusable part way: ingest stores the rows before and quarantines the file.
            if let Some(why) = &parsed.stopped {
                out["error"] = why.to_string().into();
                out["kind"] = why.kind().into();
            }
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
            if parsed.stopped.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
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
