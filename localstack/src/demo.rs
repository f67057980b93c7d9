//! The local cloud brought up end to end: emulator, fake Graph mailbox, Terraform applied, the
//! deployment read back and its functions running in-process. The demo binary and the
//! end-to-end tests both drive the pipeline through this.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde_json::Value;

use charlie::adapters::postgres::{PostgresRowStore, PostgresSettings};
use charlie::definitions::Definitions;
use charlie::messages::IngestOutcome;
use charlie::ports::{Objects, RowStore};
use futures::TryStreamExt;

use crate::clients::AwsClients;
use crate::deployment::Deployment;
use crate::emulator::Emulator;
use crate::fake_graph::FakeGraph;
use crate::packaging::package_functions;
use crate::postgres::PostgresServer;
use crate::project;
use crate::runner::{DrainStats, LocalRunner};
use crate::terraform::Terraform;

pub const PREFIX: &str = "charlie-local";
/// The fake downstream API's bearer token: a local value (the secret the batch sender reads).
pub const DOWNSTREAM_TOKEN: &str = "local-fake-downstream-token";

impl Drop for LocalCloud {
    fn drop(&mut self) {
        self.api_server.abort();
    }
}

/// Names Terraform gave the deployment (its `deployment` output).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Outputs {
    pub bucket: String,
    pub rows_table: String,
    pub state_table: String,
    pub queue_urls: std::collections::HashMap<String, String>,
    pub dlq_urls: std::collections::HashMap<String, String>,
}

pub struct LocalCloud {
    pub runner: Arc<LocalRunner>,
    /// Where the runner serves the API routes (Graph's notification URLs point here).
    pub api: std::net::SocketAddr,
    api_server: tokio::task::JoinHandle<()>,
    pub graph: FakeGraph,
    /// The fake downstream persistence API the batch sender forwards outcomes to.
    pub downstream: crate::fake_downstream::FakeDownstream,
    pub terraform: Terraform,
    pub outputs: Outputs,
    pub clients: AwsClients,
    pub apply_seconds: f64,
    /// The deployment's row store, as the functions reach it.
    pub rows: Arc<dyn RowStore>,
    pub definitions: Definitions,
    pub row_store: RowStoreKind,
    // Last: dropped after everything that talks to them.
    pub postgres: Option<PostgresServer>,
    pub emulator: Emulator,
}

/// Where a deployment keeps its rows (Terraform's `row_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStoreKind {
    DynamoDb,
    Postgres,
}

impl RowStoreKind {
    pub fn name(self) -> &'static str {
        match self {
            RowStoreKind::DynamoDb => "dynamodb",
            RowStoreKind::Postgres => "postgres",
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "dynamodb" => Ok(RowStoreKind::DynamoDb),
            "postgres" => Ok(RowStoreKind::Postgres),
            other => anyhow::bail!("row store {other:?} is neither dynamodb nor postgres"),
        }
    }
}

pub struct UpOptions {
    /// This run's Terraform state and logs.
    pub work_dir: PathBuf,
    /// The fake mailbox's `messages.json` and attachments.
    pub mailbox_dir: PathBuf,
    pub graph_page_size: usize,
    /// Prints progress lines when true.
    pub progress: bool,
    pub row_store: RowStoreKind,
    /// Reuse an earlier apply kept here when nothing changed (`crate::reuse`); `None`: apply.
    pub reuse: Option<PathBuf>,
    /// With `reuse`: apply (and record) even when the recorded apply would do.
    pub fresh: bool,
}

impl UpOptions {
    pub fn new(work_dir: PathBuf) -> Self {
        UpOptions {
            work_dir,
            mailbox_dir: project::root().join("events/mailbox"),
            graph_page_size: 2,
            progress: false,
            row_store: RowStoreKind::DynamoDb,
            reuse: None,
            fresh: false,
        }
    }
}

pub fn step(progress: bool, text: &str) {
    if progress {
        println!("{text}");
        let _ = std::io::stdout().flush();
    }
}

/// Functions, queue mappings, schedules and API routes.
fn shape(d: &Deployment) -> [usize; 4] {
    [
        d.functions.len(),
        d.mappings.len(),
        d.schedules.len(),
        d.routes.len(),
    ]
}

/// `terraform init` and `apply`, with a line every 15 s; the apply's seconds.
async fn apply(p: bool, terraform: Terraform) -> anyhow::Result<(Terraform, f64)> {
    step(
        p,
        "      terraform init + apply (infra/envs/local; about a minute and a half) …",
    );
    let ticker = p.then(|| {
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                println!("        … applying, {:.0} s", start.elapsed().as_secs_f64());
            }
        })
    });
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(Terraform, f64)> {
        terraform.init()?;
        let seconds = terraform.apply()?;
        Ok((terraform, seconds))
    })
    .await;
    if let Some(t) = ticker {
        t.abort();
    }
    result?
}

impl LocalCloud {
    pub async fn up(opts: UpOptions) -> anyhow::Result<Self> {
        let p = opts.progress;
        let t = Instant::now();
        // moto's recorder replays an apply; LocalStack has none, so with it every `up` applies.
        let kind = crate::emulator::EmulatorKind::from_env()?;
        let cache = opts
            .reuse
            .clone()
            .filter(|_| kind == crate::emulator::EmulatorKind::Moto)
            .map(crate::reuse::Cache::new);
        let recorded = cache
            .as_ref()
            .filter(|_| !opts.fresh)
            .and_then(crate::reuse::Cache::load);
        let wanted = |port: fn(&crate::reuse::Recorded) -> u16| recorded.as_ref().map_or(0, port);
        let emulator = match &cache {
            None => Emulator::start()?,
            Some(c) => {
                c.prepare()?;
                // The recorded ports, or free ones when they are taken (then nothing is reused).
                Emulator::start_recordable(wanted(|r| r.emulator_port), &c.recording())
                    .or_else(|_| Emulator::start_recordable(0, &c.recording()))?
            }
        };
        step(
            p,
            &format!(
                "      emulator ({}) at {} ({:.1} s)",
                emulator.kind().name(),
                emulator.endpoint(),
                t.elapsed().as_secs_f64()
            ),
        );
        let postgres = match opts.row_store {
            RowStoreKind::DynamoDb => None,
            RowStoreKind::Postgres => {
                let t = Instant::now();
                let server = PostgresServer::start()?;
                step(
                    p,
                    &format!(
                        "      PostgreSQL (row store) on 127.0.0.1:{} ({:.1} s)",
                        server.port(),
                        t.elapsed().as_secs_f64()
                    ),
                );
                Some(server)
            }
        };
        let graph = match FakeGraph::start_on(
            &opts.mailbox_dir,
            opts.graph_page_size,
            wanted(|r| r.graph_port),
        )
        .await
        {
            Ok(g) => g,
            Err(_) => FakeGraph::start(&opts.mailbox_dir, opts.graph_page_size).await?,
        };
        step(
            p,
            &format!(
                "      fake Graph mailbox at {} with {} mails",
                graph.base_url,
                graph.message_count()
            ),
        );

        let downstream = crate::fake_downstream::FakeDownstream::start_on(
            DOWNSTREAM_TOKEN,
            wanted(|r| r.downstream_port),
        )
        .or_else(|_| crate::fake_downstream::FakeDownstream::start(DOWNSTREAM_TOKEN))?;
        step(
            p,
            &format!("      fake downstream API at {}", downstream.base_url()),
        );

        let zips = package_functions(
            &project::target_dir().join("debug"),
            &project::target_dir().join("charlie/lambda"),
        )?;
        step(
            p,
            &format!(
                "      Lambda zips (bootstrap per function) in {}",
                zips.display()
            ),
        );

        // The API's port is taken now: Terraform gives its URL to the poller, which hands it to
        // Graph (the fake) when it subscribes.
        let api_listener =
            match tokio::net::TcpListener::bind(("127.0.0.1", wanted(|r| r.api_port))).await {
                Ok(l) => l,
                Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            };
        let api = api_listener.local_addr()?;
        let (mailbox, folder) = graph.mailbox();
        let mut vars = vec![
            ("webhook_base_url".to_owned(), format!("http://{api}")),
            ("endpoint".to_owned(), emulator.endpoint().to_owned()),
            ("name_prefix".to_owned(), PREFIX.to_owned()),
            ("lambda_zip_dir".to_owned(), zips.display().to_string()),
            (
                "config_file".to_owned(),
                project::root().join("reports.toml").display().to_string(),
            ),
            ("graph_base_url".to_owned(), graph.base_url.clone()),
            ("graph_token_url".to_owned(), graph.token_url.clone()),
            ("mailboxes".to_owned(), format!("[\"{mailbox}/{folder}\"]")),
            ("row_store".to_owned(), opts.row_store.name().to_owned()),
            ("downstream_base_url".to_owned(), downstream.base_url()),
            ("downstream_token".to_owned(), DOWNSTREAM_TOKEN.to_owned()),
        ];
        if let Some(pg) = &postgres {
            vars.push(("postgres_url".to_owned(), pg.url()));
        }
        let _ = std::fs::remove_dir_all(&opts.work_dir);
        let key = match &cache {
            Some(_) => Some(crate::reuse::key(&vars, &zips)?),
            None => None,
        };
        let mut terraform = Terraform::new(&opts.work_dir, vars)?;
        let config = emulator.sdk_config().await;
        let mut replayed = None;
        if let (Some(r), Some(key)) = (&recorded, &key)
            && *key == r.key
        {
            let t = Instant::now();
            step(
                p,
                &format!(
                    "      nothing changed since the apply recorded at {}: replaying it …",
                    r.recorded_at
                ),
            );
            emulator.seed().await?;
            // A replay that fails, or reads back as another deployment, is applied instead.
            let made = match emulator.replay().await {
                Ok(()) => Deployment::read(&config, PREFIX).await.ok(),
                Err(_) => None,
            };
            if let Some(deployment) = made.filter(|d| shape(d) == r.shape) {
                step(
                    p,
                    &format!(
                        "      replayed in {:.1} s (terraform apply skipped; `charlie-local up --fresh` applies)",
                        t.elapsed().as_secs_f64()
                    ),
                );
                replayed = Some((r.outputs.clone(), t.elapsed().as_secs_f64(), deployment));
            } else {
                step(
                    p,
                    "      the replay did not make the recorded deployment: applying instead",
                );
                if let Some(c) = &cache {
                    c.forget();
                }
                emulator.reset().await?;
            }
        }
        let (outputs_json, apply_seconds, deployment) = match replayed {
            Some(done) => done,
            None => {
                if cache.is_some() {
                    emulator.seed().await?;
                    emulator.start_recording().await?;
                }
                let seconds;
                (terraform, seconds) = apply(p, terraform).await?;
                step(p, &format!("      applied in {seconds:.1} s"));
                let outputs = terraform.output_json()?["deployment"]["value"].clone();
                if cache.is_some() {
                    emulator.stop_recording().await?;
                }
                let deployment = Deployment::read(&config, PREFIX).await?;
                if let (Some(c), Some(key)) = (&cache, key) {
                    c.save(&crate::reuse::Recorded {
                        key,
                        emulator_port: emulator.port(),
                        graph_port: graph.port(),
                        downstream_port: downstream.port(),
                        api_port: api.port(),
                        outputs: outputs.clone(),
                        shape: shape(&deployment),
                        recorded_at: Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
                    })?;
                }
                (outputs, seconds, deployment)
            }
        };
        let outputs: Outputs =
            serde_json::from_value(outputs_json).context("terraform output `deployment`")?;
        step(
            p,
            &format!(
                "      deployment read back: {} functions, {} queue mappings, {} schedules, {} API routes",
                deployment.functions.len(),
                deployment.mappings.len(),
                deployment.schedules.len(),
                deployment.routes.len()
            ),
        );
        let runner = Arc::new(LocalRunner::new(deployment, &config, &emulator.aws_env()).await?);
        let (_, api_server) = runner.serve_api_on(api_listener)?;
        step(p, &format!("      API routes served at http://{api}"));
        let clients = AwsClients::from_config(&config, true);
        let rows: Arc<dyn RowStore> = match &postgres {
            None => Arc::new(clients.rows(&outputs.rows_table)),
            Some(pg) => Arc::new(
                PostgresRowStore::connect(PostgresSettings {
                    url: pg.url(),
                    password: None,
                })
                .await?,
            ),
        };
        let definitions = Definitions::parse(&std::fs::read_to_string(
            project::root().join("reports.toml"),
        )?)?;
        Ok(LocalCloud {
            runner,
            api,
            api_server,
            graph,
            downstream,
            terraform,
            outputs,
            clients,
            apply_seconds,
            rows,
            definitions,
            row_store: opts.row_store,
            postgres,
            emulator,
        })
    }

    /// The runner's API URL of `path` (e.g. `/graph/notifications`).
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// The poller's schedule fires; the queues are drained (ingest runs).
    pub async fn poll(&self, at: DateTime<Utc>) -> anyhow::Result<(Value, DrainStats)> {
        let summary = self.runner.fire_schedule("-poller", at).await?;
        let drained = self.runner.drain().await?;
        Ok((summary, drained))
    }

    /// The report's schedule fires (a message on `runs`); the queues are drained (the
    /// report builder, then the mailer run); the run's record.
    pub async fn report(
        &self,
        report: &str,
        at: DateTime<Utc>,
    ) -> anyhow::Result<(Value, DrainStats)> {
        self.runner
            .fire_schedule(&format!("-report-{report}"), at)
            .await?;
        let drained = self.runner.drain().await?;
        let trigger = charlie::messages::ReportTrigger::Scheduled {
            v: 1,
            report: report.to_owned(),
            scheduled_time: at,
        };
        let (_, _, run_id) = charlie::stages::report::resolve(&self.definitions, &trigger)?;
        Ok((self.run_record(&run_id).await?, drained))
    }

    /// A run request on `runs`, as the control API sends one (a fresh run id unless
    /// `run_id`); the queues are drained; the run's record.
    pub async fn request_run(
        &self,
        report: &str,
        period: &str,
        run_id: Option<&str>,
    ) -> anyhow::Result<(Value, DrainStats)> {
        let run_id = run_id.map(str::to_owned).unwrap_or_else(|| {
            format!(
                "{report}.{period}.request.{}",
                charlie::invocation::new_correlation_id()
            )
        });
        let request = serde_json::json!({
            "v": 1, "kind": "run", "report": report, "period": period, "run_id": run_id,
        });
        let runs = self.clients.queue(&self.outputs.queue_urls["runs"]);
        let runs: &dyn charlie::ports::WorkQueue = &runs;
        runs.send(&request, &run_id).await?;
        let drained = self.runner.drain().await?;
        Ok((self.run_record(&run_id).await?, drained))
    }

    /// A run's record (`RUN#{id}` / `run`) as JSON; an error when there is none.
    pub async fn run_record(&self, run_id: &str) -> anyhow::Result<Value> {
        let state = self.clients.state(&self.outputs.state_table);
        let records: &dyn charlie::ports::StateRecords = &state;
        let record = records
            .get_record(&charlie::state::RecordKey::run(run_id))
            .await?
            .with_context(|| format!("no record of run {run_id}"))?;
        Ok(serde_json::to_value(record)?)
    }

    /// Rows stored for `dataset` on `date`, read back from the deployment's row store.
    pub async fn stored_rows(&self, dataset: &str, date: &str) -> anyhow::Result<usize> {
        let ds = self
            .definitions
            .datasets
            .get(dataset)
            .with_context(|| format!("no dataset {dataset}"))?;
        let mut pages = self.rows.day_pages(dataset, ds, date.parse()?);
        let mut count = 0;
        while let Some(page) = pages.try_next().await? {
            count += page.len();
        }
        Ok(count)
    }

    /// Every ingest outcome recorded in state.
    pub async fn outcomes(&self) -> anyhow::Result<Vec<IngestOutcome>> {
        let items: Vec<_> = self
            .clients
            .dynamodb
            .scan()
            .table_name(&self.outputs.state_table)
            .filter_expression("begins_with(sk, :p)")
            .expression_attribute_values(":p", AttributeValue::S("OUTCOME#".into()))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        items
            .iter()
            .map(|i| match i.get("data") {
                Some(AttributeValue::S(d)) => Ok(serde_json::from_str(d)?),
                _ => anyhow::bail!("an outcome record without data"),
            })
            .collect()
    }

    /// Messages waiting in the named queue's DLQ.
    pub async fn dlq_depth(&self, queue: &str) -> anyhow::Result<u64> {
        let url = &self.outputs.dlq_urls[queue];
        let attrs = self
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await?;
        Ok(attrs
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// An object of the bucket.
    pub async fn object(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        self.clients
            .objects(&self.outputs.bucket)
            .get(key, None)
            .await
    }
}

/// The demo: the whole path twice, results left under `out`.
pub async fn run_demo(out: &Path, row_store: RowStoreKind) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(out)?;
    println!(
        "[1/6] Bringing up the local cloud (rows in {})",
        row_store.name()
    );
    let cloud = LocalCloud::up(UpOptions {
        progress: true,
        row_store,
        ..UpOptions::new(project::target_dir().join("charlie/demo-run"))
    })
    .await?;
    let (mailbox, folder) = cloud.graph.mailbox();

    println!("[2/6] Poller schedule fires: Graph delta of {mailbox}/{folder} → inbound → ingest");
    let poll_at: DateTime<Utc> = "2024-03-15T00:10:00Z".parse()?;
    let (poll, drained) = cloud.poll(poll_at).await?;
    println!(
        "      mails found: {} in {} delta page(s); {} with attachments queued; ingest handled {} message(s), {} failed",
        poll["messages_seen"], poll["pages"], poll["queued"], drained.messages, drained.failures
    );
    for sub in cloud.graph.subscriptions() {
        println!(
            "      subscribed to {} (expires {}), notifications to {}",
            sub.resource,
            sub.expires.format("%Y-%m-%d %H:%M UTC"),
            sub.notification_url
        );
    }
    let outcomes = cloud.outcomes().await?;
    for o in &outcomes {
        println!(
            "      {} → {}: {} rows read, {} new, {} duplicate, {} rejected",
            o.attachment, o.dataset, o.rows_total, o.rows_new, o.rows_duplicate, o.rows_rejected
        );
    }
    let datasets: std::collections::BTreeSet<&str> =
        outcomes.iter().map(|o| o.dataset.as_str()).collect();
    // (dataset, rows stored, duplicates skipped) for the report day.
    let mut per_dataset = Vec::new();
    for d in &datasets {
        let stored = cloud.stored_rows(d, "2024-03-14").await?;
        let skipped: u64 = outcomes
            .iter()
            .filter(|o| o.dataset == *d)
            .map(|o| o.rows_duplicate)
            .sum();
        println!(
            "      rows stored for {d} on 2024-03-14 in {}: {stored} (duplicates skipped: {skipped})",
            cloud.row_store.name()
        );
        per_dataset.push((*d, stored, skipped));
    }

    println!(
        "[3/6] Report schedule fires (06:00 Europe/London on 2024-03-15) → workbook → mail → SES"
    );
    let report_at: DateTime<Utc> = "2024-03-15T06:00:00Z".parse()?;
    let (run, drained) = cloud.report("call_centre_daily", report_at).await?;
    println!(
        "      run {}: {} — {} rows, sheets {}, {} bytes; mailer handled {} message(s)",
        run["run_id"].as_str().unwrap_or("?"),
        run["status"].as_str().unwrap_or("?"),
        run["rows"],
        run["sheets"],
        run["size"],
        drained.messages
    );

    println!("[4/6] The same again (at-least-once delivery): poll, ingest, report");
    let (poll2, _) = cloud.poll(poll_at).await?;
    let graph_before = cloud.graph.message_count();
    // The Graph delta link is stored: the second round sees nothing new. Graph then notifies
    // every mail again through the subscription the poller made (duplicated notifications, as
    // Graph may send) to show ingest's claim at work.
    for msg_id in outcomes
        .iter()
        .map(|o| o.message_id.clone())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let statuses = cloud.graph.notify(&msg_id, 1).await;
        if statuses.iter().any(|s| *s != 202) {
            anyhow::bail!("the webhook answered {statuses:?} to a notification");
        }
    }
    let again = cloud.runner.drain().await?;
    let mut stored2 = Vec::new();
    for (d, _, _) in &per_dataset {
        stored2.push(format!("{d} {}", cloud.stored_rows(d, "2024-03-14").await?));
    }
    let stored2 = stored2.join(", ");
    let mails_before = cloud.emulator.sent_raw_mail().await?.len();
    let (run2, _) = cloud.report("call_centre_daily", report_at).await?;
    let mails_after = cloud.emulator.sent_raw_mail().await?.len();
    println!(
        "      delta round 2 found {} new mail(s) of {graph_before}; {} repeated notifications ingested once: rows stored still {stored2}",
        poll2["queued"], again.messages
    );
    println!(
        "      repeated report trigger: run {} unchanged (finished {}), mails sent {mails_before} → {mails_after}: nothing built or mailed again",
        if run2 == run {
            "record"
        } else {
            "RECORD CHANGED:"
        },
        run2["finished_at"].as_str().unwrap_or("?"),
    );
    if run2 != run || mails_after != mails_before {
        anyhow::bail!("the repeated firing built or mailed again: {run2}");
    }

    println!("[5/6] Collecting artefacts into {}", out.display());
    for entry in std::fs::read_dir(out)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "eml" || e == "xlsx") {
            std::fs::remove_file(p)?;
        }
    }
    let key = run["workbook_key"]
        .as_str()
        .context("the run stored no workbook")?;
    let workbook = cloud.object(key).await?;
    let wb_path = out.join(key.rsplit('/').next().unwrap_or("report.xlsx"));
    std::fs::write(&wb_path, &workbook)?;
    let sent = cloud.emulator.sent_raw_mail().await?;
    let mut eml_paths = Vec::new();
    for (i, m) in sent.iter().enumerate() {
        let path = out.join(format!("sent-{}.eml", i + 1));
        std::fs::write(&path, m.raw.as_bytes())?;
        eml_paths.push(path);
    }

    println!("[6/6] Done in {:.0} s", started.elapsed().as_secs_f64());
    println!();
    println!("  mails in mailbox        {graph_before}");
    println!(
        "  mails with a dataset    {}",
        outcomes
            .iter()
            .map(|o| &o.message_id)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    for (d, stored, skipped) in &per_dataset {
        println!("  {d:<24}{stored} rows stored, {skipped} duplicates skipped");
    }
    println!(
        "  workbook                {} ({} bytes)",
        wb_path.display(),
        workbook.len()
    );
    println!("  mails sent              {}", sent.len());
    for (m, p) in sent.iter().zip(&eml_paths) {
        let parsed = mail_parser::MessageParser::default()
            .parse(m.raw.as_bytes())
            .context("parsing the sent mail")?;
        println!("    {}", p.display());
        println!("      from        {}", m.source);
        // The envelope holds every recipient; the headers name To and Cc. What is only in the
        // envelope went as Bcc (moto also adds the header addresses to the envelope).
        let header = |a: Option<&mail_parser::Address>| -> Vec<String> {
            a.map(|a| {
                a.iter()
                    .filter_map(|x| x.address().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
        };
        let (to, cc) = (header(parsed.to()), header(parsed.cc()));
        let bcc: std::collections::BTreeSet<&String> = m
            .destinations
            .iter()
            .filter(|d| !to.contains(d) && !cc.contains(d))
            .collect();
        for (field, list) in [
            ("to", to.join(", ")),
            ("cc", cc.join(", ")),
            (
                "bcc",
                bcc.into_iter().cloned().collect::<Vec<_>>().join(", "),
            ),
        ] {
            if !list.is_empty() {
                println!("      {field:<12}{list}");
            }
        }
        println!("      subject     {}", parsed.subject().unwrap_or(""));
        for a in parsed.attachments() {
            use mail_parser::MimeHeaders;
            println!(
                "      attachment  {} ({} bytes)",
                a.attachment_name().unwrap_or("?"),
                a.contents().len()
            );
        }
    }
    let outcomes = cloud.outcomes().await?;
    let held = cloud.downstream.stored_count();
    println!(
        "  downstream API          holds {held} outcome(s) of the {} ingest recorded, each once ({} call(s), {} stored twice), at {}",
        outcomes.len(),
        cloud.downstream.calls(),
        cloud.downstream.stored_more_than_once().len(),
        cloud.downstream.base_url(),
    );
    println!("  terraform apply         {:.1} s", cloud.apply_seconds);
    println!(
        "  dashboard               served at http://{}/ui while the stack runs: `scripts/up` keeps it up and prints a key to sign in with",
        cloud.api
    );
    if sent.len() != 1 {
        anyhow::bail!("expected exactly one sent mail, found {}", sent.len());
    }
    if held != outcomes.len() || !cloud.downstream.stored_more_than_once().is_empty() {
        anyhow::bail!(
            "the downstream API holds {held} outcomes, ingest recorded {}",
            outcomes.len()
        );
    }
    Ok(())
}
