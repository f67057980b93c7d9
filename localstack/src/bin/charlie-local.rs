//! `charlie-local demo [--out DIR]`: the whole pipeline on the local cloud, artefacts in DIR.

use std::path::PathBuf;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = charlie_local::project::root().join("out");
    let mut command = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => match it.next() {
                Some(v) => out = PathBuf::from(v),
                None => return usage("--out needs a folder"),
            },
            "-h" | "--help" => return usage(""),
            c if command.is_none() => command = Some(c.to_owned()),
            other => return usage(&format!("unexpected argument {other:?}")),
        }
    }
    let env = charlie::env::Env::from_process().with(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    charlie::telemetry::init(&env);
    match command.as_deref() {
        Some("demo") => match charlie_local::demo::run_demo(&out).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        _ => usage("which command?"),
    }
}

fn usage(problem: &str) -> std::process::ExitCode {
    if !problem.is_empty() {
        eprintln!("charlie-local: {problem}");
    }
    eprintln!("usage: charlie-local demo [--out DIR]");
    std::process::ExitCode::from(2)
}
