//! The store benchmark: stores ib_calls exports through each row store exactly as the ingest
//! stage does (the attachment read in chunks of 5,000 rows, each chunk stored and dropped),
//! against the emulator's DynamoDB and a real PostgreSQL server, and prints per file and
//! store: rows, seconds, rows/s, and requests (DynamoDB) or statements (PostgreSQL) per 1,000
//! rows. Each store starts empty for each file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use charlie::adapters::aws::dynamodb::DynamoRowStore;
use charlie::adapters::postgres::{PostgresRowStore, PostgresSettings};
use charlie::csv_ingest::{AttachmentReader, Origin};
use charlie::definitions::{Dataset, Definitions};
use charlie::ports::RowStore;
use chrono::Utc;

use crate::clients::AwsClients;
use crate::emulator::Emulator;
use crate::postgres::PostgresServer;
use crate::project;

/// As the ingest stage stores them.
const CHUNK_ROWS: usize = 5_000;

pub async fn bench_stores(files: &[PathBuf]) -> anyhow::Result<()> {
    let defs = Definitions::parse(&std::fs::read_to_string(
        project::root().join("reports.toml"),
    )?)?;
    let ds = &defs.datasets["ib_calls"];
    let emulator = Emulator::start()?;
    let clients = AwsClients::from_config(&emulator.sdk_config().await, true);
    let postgres = PostgresServer::start()?;
    println!(
        "machine: {} cores; DynamoDB: moto at {}; PostgreSQL on 127.0.0.1:{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        emulator.endpoint(),
        postgres.port()
    );
    for (i, file) in files.iter().enumerate() {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let name = file.file_name().unwrap_or_default().to_string_lossy();

        let table = format!("bench-rows-{i}");
        clients.create_pk_sk_table(&table).await?;
        let dynamo = DynamoRowStore::new(clients.dynamodb.clone(), &table);
        let (rows, secs) = store_file(&dynamo, ds, &bytes).await?;
        report(&name, "dynamodb", rows, secs, dynamo.requests(), "requests");

        let db = format!("bench_{i}");
        postgres.create_database(&db)?;
        let pg = PostgresRowStore::connect(PostgresSettings {
            url: postgres.url_of(&db),
            password: None,
        })
        .await?;
        let before = pg.statements();
        let (rows, secs) = store_file(&pg, ds, &bytes).await?;
        report(
            &name,
            "postgres",
            rows,
            secs,
            pg.statements() - before,
            "statements",
        );
    }
    Ok(())
}

/// Stores every unique row of the file; returns how many and the seconds it took.
async fn store_file(
    store: &dyn RowStore,
    ds: &Dataset,
    bytes: &[u8],
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut reader = AttachmentReader::new(ds, bytes, &Origin::named("bench.csv"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut stored = 0;
    while let Some(chunk) = reader.next_chunk(CHUNK_ROWS)? {
        stored += store
            .store("ib_calls", ds, &chunk, "bench/mail", Utc::now())
            .await?
            .new;
    }
    Ok((stored, started.elapsed().as_secs_f64()))
}

fn report(file: &str, store: &str, rows: u64, secs: f64, requests: u64, unit: &str) {
    println!(
        "{}",
        serde_json::json!({
            "file": file, "store": store, "rows": rows, "seconds": (secs * 100.0).round() / 100.0,
            "rows_per_s": (rows as f64 / secs).round(),
            unit: requests,
            format!("{unit}_per_1000_rows"): ((requests as f64 / rows as f64 * 1000.0) * 100.0).round() / 100.0,
        })
    );
}
