//! The end-to-end scenarios (`charlie_tests::e2e`, `tests/scenarios.rs`) on one deployment with
//! rows in PostgreSQL: a real server from the machine's packages, started on a free port for
//! this test binary. `-- NAME` runs the scenarios whose names contain NAME; each passes alone.

fn main() -> std::process::ExitCode {
    charlie_tests::e2e::main(charlie_local::demo::RowStoreKind::Postgres)
}
