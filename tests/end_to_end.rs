//! End to end on the local cloud, as named scenarios (`scenarios.rs`): Terraform is applied to
//! the emulator once for this test binary, the sample mailbox is ingested, then each scenario
//! pushes its own mail through the stages and checks one behaviour. A failing scenario is
//! reported by name and the others still run (`cargo test --test end_to_end -- NAME` runs the
//! scenarios whose names contain NAME). Rows live in DynamoDB here; `end_to_end_postgres` runs
//! the same scenarios with rows in PostgreSQL.

include!("scenarios.rs");

fn main() -> std::process::ExitCode {
    run_scenarios(RowStoreKind::DynamoDb)
}
