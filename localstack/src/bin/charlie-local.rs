//! `charlie-local demo [--out DIR] [--row-store dynamodb|postgres]`: the whole pipeline on the
//! local cloud, artefacts in DIR.
//! `charlie-local bench-stores FILE…`: ingests each ib_calls export into each row store.
//! `charlie-local load [--mails N] [--rows R]`: the load run (see `charlie_local::load`).
//! `charlie-local bench-sender [--items N] [--latency-ms L]`: the batch sender against the fake
//! downstream API, batched and one call per item (see `charlie_local::bench_sender`).
//! `charlie-local up [--row-store dynamodb|postgres] [--fresh]`: the local cloud kept running, with the
//! control API, until Ctrl-C (see `charlie_local::up`).

use std::path::PathBuf;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = charlie_local::project::root().join("out");
    let mut fresh = false;
    let mut row_store = charlie_local::demo::RowStoreKind::DynamoDb;
    let mut files = Vec::new();
    let (mut mails, mut rows) = (10_000usize, 20usize);
    let (mut items, mut latency_ms) = (10_000usize, 50u64);
    let mut command = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => match it.next() {
                Some(v) => out = PathBuf::from(v),
                None => return usage("--out needs a folder"),
            },
            "--row-store" => match it
                .next()
                .map(|v| charlie_local::demo::RowStoreKind::parse(v))
            {
                Some(Ok(k)) => row_store = k,
                Some(Err(e)) => return usage(&e.to_string()),
                None => return usage("--row-store needs dynamodb or postgres"),
            },
            "--mails" | "--rows" => match it.next().and_then(|v| v.parse().ok()) {
                Some(v) if a == "--mails" => mails = v,
                Some(v) => rows = v,
                None => return usage(&format!("{a} needs a number")),
            },
            "--items" => match it.next().and_then(|v| v.parse().ok()) {
                Some(v) => items = v,
                None => return usage("--items needs a number"),
            },
            "--latency-ms" => match it.next().and_then(|v| v.parse().ok()) {
                Some(v) => latency_ms = v,
                None => return usage("--latency-ms needs a number"),
            },
            "--fresh" => fresh = true,
            "-h" | "--help" => return usage(""),
            c if command.is_none() => command = Some(c.to_owned()),
            f if command.as_deref() == Some("bench-stores") => files.push(PathBuf::from(f)),
            other => return usage(&format!("unexpected argument {other:?}")),
        }
    }
    let env = charlie::env::Env::from_process().with(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    charlie::telemetry::init(&env);
    match command.as_deref() {
        Some("demo") => match charlie_local::demo::run_demo(&out, row_store).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Some("up") => {
            let work = charlie_local::project::target_dir()
                .join(format!("charlie/up-{}", std::process::id()));
            let result = charlie_local::up::run_up(work.clone(), row_store, fresh).await;
            let _ = std::fs::remove_dir_all(&work);
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("up failed: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Some("bench-stores") if !files.is_empty() => {
            match charlie_local::bench::bench_stores(&files).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench-stores failed: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Some("load") => {
            let opts = charlie_local::load::LoadOptions {
                mails,
                rows_per_mail: rows,
                work_dir: charlie_local::project::target_dir().join("charlie/load"),
            };
            match charlie_local::load::run_load(opts).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("load run failed: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Some("bench-sender") => {
            let bench = charlie_local::bench_sender::SenderBench {
                items,
                latency: std::time::Duration::from_millis(latency_ms),
                batch: 100,
                concurrency: 5,
                max_items: 100,
            };
            match charlie_local::bench_sender::bench_sender(bench).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench-sender failed: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Some("functions") => {
            for name in charlie::stages::STAGES {
                println!("{name}");
            }
            std::process::ExitCode::SUCCESS
        }
        Some("package") => {
            let root = charlie_local::project::root();
            let lambda = charlie_local::project::target_dir().join("lambda");
            match charlie_local::packaging::package_lambda_builds(
                &lambda,
                &root.join("dist/lambda"),
            ) {
                Ok(out) => {
                    for name in charlie::stages::STAGES {
                        println!("{}", out.join(format!("{name}.zip")).display());
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("charlie-local package: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Some("openapi") => {
            let path = charlie_local::project::root().join("docs/openapi.json");
            match std::fs::write(&path, charlie::stages::api::openapi::text()) {
                Ok(()) => {
                    println!("wrote {}", path.display());
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("charlie-local openapi: {}: {e}", path.display());
                    std::process::ExitCode::FAILURE
                }
            }
        }
        _ => usage("which command?"),
    }
}

fn usage(problem: &str) -> std::process::ExitCode {
    if !problem.is_empty() {
        eprintln!("charlie-local: {problem}");
    }
    eprintln!("usage: charlie-local demo [--out DIR] [--row-store dynamodb|postgres]");
    eprintln!("       charlie-local bench-stores IB_CALLS_CSV...");
    eprintln!("       charlie-local load [--mails N] [--rows R]");
    eprintln!("       charlie-local up [--row-store dynamodb|postgres] [--fresh]");
    eprintln!("       charlie-local bench-sender [--items N] [--latency-ms L]");
    eprintln!("       charlie-local openapi   (writes docs/openapi.json from the code)");
    eprintln!("       charlie-local functions (the functions Terraform deploys, one per line)");
    eprintln!(
        "       charlie-local package   (zips target/lambda/<fn>/bootstrap into dist/lambda; scripts/package)"
    );
    std::process::ExitCode::from(2)
}
