//! The `charlie` binary, run as an operator would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn charlie(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_charlie"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("charlie-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Terraform reads the schedules and retention from reports.infra.json; reports.toml is their
/// source.
#[test]
fn what_terraform_reads_of_the_definitions_is_that_of_reports_toml() {
    let out = charlie(&["config", "infra", "--check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And a changed schedule is caught.
    let changed = std::fs::read_to_string(root().join("reports.toml"))
        .unwrap()
        .replace("cron(0 6 * * ? *)", "cron(30 6 * * ? *)");
    let file = temp_file("changed.toml", changed.as_bytes());
    let stale = |file: &std::path::Path| {
        let out = charlie(&[
            "config",
            "infra",
            file.to_str().unwrap(),
            "--check",
            "-o",
            "reports.infra.json",
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("stale"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    stale(&file);
    // So is a changed retention.
    let shipped = std::fs::read_to_string(root().join("reports.toml")).unwrap();
    let retention = shipped.replacen("retain_days = ", "retain_days = 1", 1);
    assert_ne!(retention, shipped, "reports.toml sets no retain_days");
    stale(&temp_file("retention.toml", retention.as_bytes()));
}

#[test]
fn config_check_accepts_the_shipped_definitions() {
    let out = charlie(&["config", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("valid") && text.contains("ib_calls") && text.contains("call_centre_daily"),
        "{text}"
    );
}

/// The shipped datasets require an authenticated sender; one that matches by sender without
/// it is valid but warned about by name (exit 0).
#[test]
fn config_check_warns_of_a_dataset_that_trusts_a_forgeable_from() {
    let out = charlie(&["config", "check"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = std::fs::read_to_string(root().join("reports.toml")).unwrap();
    let trusting = shipped.replacen("require_authenticated_sender = true\n", "", 1);
    assert_ne!(trusting, shipped);
    let file = temp_file("trusting.toml", trusting.as_bytes());
    let out = charlie(&["config", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: dataset ib_calls: matches by sender without require_authenticated_sender = true"),
        "{err}"
    );
    assert!(!err.contains("dataset dials"), "{err}");
}

#[test]
fn config_check_reports_every_problem_with_its_line_and_exits_1() {
    let shipped = std::fs::read_to_string(root().join("reports.toml")).unwrap();
    let broken = shipped
        .replacen("key = [\"call_id\"]", "key = [\"call_uuid\"]", 1)
        .replacen(
            "recipients = [\"ops-leads@contoso.example\"",
            "recipients = [\"ops-leads\"",
            1,
        );
    let file = temp_file("broken.toml", broken.as_bytes());
    let out = charlie(&["config", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let key_line = shipped
        .lines()
        .position(|l| l.starts_with("key = [\"call_id\"]"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "broken.toml:{key_line}: dataset ib_calls: key column \"call_uuid\""
        )),
        "{err}"
    );
    assert!(
        err.contains("recipients entry \"ops-leads\" is not a mail address"),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
}

#[test]
fn ingest_check_prints_what_the_ingest_would_do() {
    let out = charlie(&[
        "ingest",
        "check",
        "--dataset",
        "ib_calls",
        "events/mailbox/ib_calls_2024-03-14_morning.csv",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["encoding"], "utf-8-bom");
    assert_eq!(v["delimiter"], ",");
    assert_eq!(v["rows_total"], 250);
    assert_eq!(v["rows_rejected"], 0);
    assert_eq!(v["rows_valid"], 250);
    assert_eq!(
        v["rows_unique"].as_u64().unwrap() + v["duplicates"].as_u64().unwrap(),
        250
    );
    assert_eq!(v["dates"], serde_json::json!(["2024-03-14"]));
}

#[test]
fn ingest_check_reads_excels_unicode_text_export() {
    // Excel's "Unicode text": UTF-16 LE with BOM, tab-delimited, CRLF.
    let text = "call_id\tstarted_at\tqueue\twait_seconds\r\nc1\t2024-03-14T09:00:00\tVentes – Île\t12\r\nc2\t2024-03-14T09:05:00\tSales\tten\r\n";
    let mut bytes = vec![0xFF, 0xFE];
    for u in text.encode_utf16() {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    let file = temp_file("unicode.txt", &bytes);
    let out = charlie(&[
        "ingest",
        "check",
        "--dataset",
        "ib_calls",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["encoding"], "utf-16le");
    assert_eq!(v["delimiter"], "\t");
    assert_eq!(
        (v["rows_total"].as_u64(), v["rows_rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(v["rejects"][0]["line"], 3);
    assert!(
        v["rejects"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("wait_seconds")
    );
}

#[test]
fn ingest_check_reads_windows_1252_with_semicolons() {
    let bytes = b"call_id;started_at;agent_name\r\nc1;2024-03-14T09:00:00;Ren\xe9e M\xfcller\r\n";
    let file = temp_file("cp1252.csv", bytes);
    // The delimiter given in the definition wins over sniffing.
    let defs = std::fs::read_to_string(root().join("reports.toml"))
        .unwrap()
        .replacen(
            "[[datasets.ib_calls.columns]]",
            "[datasets.ib_calls.csv]\ndelimiter = \";\"\n\n[[datasets.ib_calls.columns]]",
            1,
        );
    let config = temp_file("semicolon.toml", defs.as_bytes());
    let out = charlie(&[
        "ingest",
        "check",
        "--dataset",
        "ib_calls",
        "--config",
        config.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["encoding"].as_str(), v["delimiter"].as_str()),
        (Some("windows-1252"), Some(";"))
    );
    assert_eq!(v["rows_valid"], 1);
}

#[test]
fn an_unusable_file_is_an_error_object_and_exit_1() {
    let file = temp_file("no-key.csv", b"agent_id,queue\r\nA1,Sales\r\n");
    let out = charlie(&[
        "ingest",
        "check",
        "--dataset",
        "ib_calls",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "missing_columns");
    assert!(v["error"].as_str().unwrap().contains("call_id"), "{v}");
}

#[test]
fn an_unknown_dataset_is_a_usage_error() {
    let out = charlie(&[
        "ingest",
        "check",
        "--dataset",
        "nope",
        "events/mailbox/dials_2024-03-14.csv",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ib_calls"));
}

#[test]
fn report_build_writes_the_workbook_from_csv_files_and_times_each_phase() {
    use calamine::{Data, Reader, Xlsx};
    let out = std::env::temp_dir().join(format!("charlie-cli-{}-report.xlsx", std::process::id()));
    let run = charlie(&[
        "report",
        "build",
        "--report",
        "call_centre_daily",
        "--csv",
        "ib_calls=events/mailbox/ib_calls_2024-03-14_morning.csv",
        "--csv",
        "ib_calls=events/mailbox/ib_calls_2024-03-14_afternoon.csv",
        "--csv",
        "dials=events/mailbox/dials_2024-03-14.csv",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    for phase in ["parse_s", "dedupe_s", "aggregate_s", "write_s", "total_s"] {
        assert!(v[phase].as_f64().unwrap() >= 0.0, "{phase} in {v}");
    }
    assert_eq!(v["period"], "2024-03-14");
    let mut book = Xlsx::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap())).unwrap();
    assert_eq!(
        book.sheet_names(),
        vec!["Summary", "ib_calls", "dials", "About"]
    );
    let ib_rows = book.worksheet_range("ib_calls").unwrap().height() as u64 - 1;
    let dial_rows = book.worksheet_range("dials").unwrap().height() as u64 - 1;
    assert_eq!(ib_rows + dial_rows, v["rows"].as_u64().unwrap());
    // The two ib_calls exports overlap: rows repeated across files are kept once.
    assert!(v["cross_file_duplicates"].as_u64().unwrap() > 0);
    let summary = book.worksheet_range("Summary").unwrap();
    assert_eq!(
        summary.get((0, 0)),
        Some(&Data::String(
            "Call-centre daily report — 2024-03-14".into()
        ))
    );
}

#[test]
fn report_build_refuses_a_dataset_the_report_does_not_use() {
    let run = charlie(&[
        "report",
        "build",
        "--report",
        "call_centre_daily",
        "--csv",
        "nope=x.csv",
        "--out",
        "/tmp/x.xlsx",
    ]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("uses datasets"));
}

#[test]
fn a_run_status_filter_is_one_of_the_statuses_before_anything_is_asked() {
    // Refused by the argument parser (exit 2), naming every status, with no API called.
    let out = charlie(&["runs", "list", "--status", "sent"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"sent\" is not one of") && err.contains("skipped_empty"),
        "{err}"
    );
}
