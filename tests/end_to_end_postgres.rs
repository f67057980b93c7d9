//! The end-to-end scenarios (`scenarios.rs`) on a deployment whose rows live in PostgreSQL: a
//! real server from the machine's packages, started on a free port for this test binary.

include!("scenarios.rs");

fn main() -> std::process::ExitCode {
    run_scenarios(RowStoreKind::Postgres)
}
