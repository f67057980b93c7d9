//! `charlie-local up` (`scripts/up`): the local cloud brought up as the demo brings it up (emulator, fake
//! Graph, Terraform applied, the runner, the API), the sample mailbox ingested, an admin key
//! made; then it stays up until Ctrl-C, doing what Lambda's event source mappings and
//! Scheduler do: the queues are drained every second and the poller fires every five minutes,
//! so runs started through the API (or `charlie runs start`) are built and mailed. An earlier
//! apply is replayed instead of applied again when nothing changed (`crate::reuse`; `--fresh`
//! applies anyway).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::demo::{LocalCloud, RowStoreKind, UpOptions};

pub async fn run_up(
    work_dir: std::path::PathBuf,
    row_store: RowStoreKind,
    fresh: bool,
) -> anyhow::Result<()> {
    println!("==> charlie-local up: the local cloud, kept running until Ctrl-C");
    // An unchanged apply is replayed (`crate::reuse`); not with PostgreSQL, whose throwaway
    // server gets a new port and database each time.
    let reuse = (row_store == RowStoreKind::DynamoDb)
        .then(|| crate::project::target_dir().join("charlie/up-cache"));
    let cloud = LocalCloud::up(UpOptions {
        progress: true,
        row_store,
        reuse,
        fresh,
        ..UpOptions::new(work_dir)
    })
    .await?;
    // The sample mailbox's mails were received on 2024-03-14: the first poll looks back from
    // the next night, as the demo's does.
    let first: DateTime<Utc> = "2024-03-15T00:10:00Z".parse()?;
    let (poll, drained) = cloud.poll(first).await?;
    println!(
        "      sample mailbox polled: {} mail(s) queued, {} message(s) handled",
        poll["queued"], drained.messages
    );
    let state = cloud.clients.state(&cloud.outputs.state_table);
    let (record, key) = charlie::stages::api::keys::create(
        &state,
        "local-admin",
        &[charlie::stages::api::keys::Scope::Admin],
        "charlie-local up",
    )
    .await?;
    let api = format!("http://{}", cloud.api);
    let cli = crate::project::target_dir().join("debug/charlie");
    println!();
    println!("The control API is at {api}/v1 (OpenAPI: {api}/v1/openapi.json).");
    println!("The dashboard is at {api}/ui (sign in with the key below).");
    println!(
        "A throwaway admin key of this local stack ({}, id {}):",
        record.name, record.id
    );
    println!();
    println!("  export CHARLIE_API_URL={api}");
    println!("  export CHARLIE_API_KEY={}", key.expose());
    println!("  alias charlie={}", cli.display());
    println!();
    println!("Try:");
    println!("  charlie health");
    println!("  charlie reports list");
    println!("  charlie runs start call_centre_daily 2024-03-14 --wait");
    println!("  charlie runs list");
    println!("  charlie runs show <run id>");
    println!("  charlie download <run id> -o /tmp/report.xlsx");
    println!("  charlie dlq list");
    println!(
        "  charlie metrics --since 1h        # counted once each: mails, rows, runs, mails sent"
    );
    println!("  charlie intake status");
    println!("  charlie keys create viewer --scope read");
    println!(
        "  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=eu-west-2 charlie --sigv4 runs list   # as an IAM caller"
    );
    println!();
    println!(
        "Queues are drained every second, the poller fires every 5 minutes. Ctrl-C stops everything."
    );
    let mut last_poll = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // One listener each for the whole run: a Ctrl-C (or a SIGTERM, as a service manager
    // stops things) while the queues are drained is not lost.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut terminated = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = terminated.recv() => break,
            _ = tick.tick() => {
                if last_poll.elapsed() >= Duration::from_secs(300) {
                    last_poll = Instant::now();
                    if let Err(e) = cloud.runner.fire_schedule("-poller", Utc::now()).await {
                        tracing::warn!(error = %format!("{e:#}"), "the poller's round failed");
                    }
                }
                match cloud.runner.drain().await {
                    Ok(d) if d.messages > 0 => println!(
                        "      handled {} message(s) in {} batch(es), {} to retry",
                        d.messages, d.batches, d.failures
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "draining the queues failed"),
                }
            }
        }
    }
    println!("==> stopping: the emulator, the fake Graph and the API go with this process");
    drop(cloud);
    Ok(())
}
