//! The stages: one handler per Lambda function, each built once (at cold start) from the
//! function's environment map and then invoked with the function's event JSON.
//!
//! `Stage::invoke` is the Lambda contract itself (event JSON in, response JSON out): the Lambda
//! binaries and the local runner both call it, so the runner executes exactly the deployed path.

pub mod ingest;
pub mod mailer;
pub mod poller;
pub mod report;
pub mod webhook;

use std::sync::Arc;

use anyhow::Context;

use crate::adapters::aws::{AwsClients, read_secret};
use crate::adapters::graph::{GraphCredentials, Mailbox};
use crate::adapters::object_store::ObjectStore;
use crate::adapters::rows::RowStore;
use crate::adapters::state::StateStore;
use crate::definitions::Definitions;
use crate::env::Env;

/// The stage names, as in `CHARLIE_STAGE` and the `functions/` folders.
pub const STAGES: [&str; 5] = [
    "graph-webhook",
    "poller",
    "ingest",
    "report-builder",
    "mailer",
];

pub enum Stage {
    GraphWebhook(webhook::GraphWebhook),
    Poller(poller::Poller),
    Ingest(ingest::Ingest),
    ReportBuilder(report::ReportBuilder),
    Mailer(mailer::Mailer),
}

impl Stage {
    /// Builds the stage named `name` from `env`.
    pub async fn from_env(name: &str, env: &Env) -> anyhow::Result<Self> {
        let clients = AwsClients::from_env(env).await;
        Ok(match name {
            "graph-webhook" => {
                Stage::GraphWebhook(webhook::GraphWebhook::from_env(env, &clients).await?)
            }
            "poller" => Stage::Poller(poller::Poller::from_env(env, &clients).await?),
            "ingest" => Stage::Ingest(ingest::Ingest::from_env(env, &clients).await?),
            "report-builder" => {
                Stage::ReportBuilder(report::ReportBuilder::from_env(env, &clients).await?)
            }
            "mailer" => Stage::Mailer(mailer::Mailer::from_env(env, &clients).await?),
            other => anyhow::bail!("unknown stage {other:?}; expected one of {STAGES:?}"),
        })
    }

    /// Handles one invocation: the function's event JSON in, its response JSON out.
    pub async fn invoke(&self, event: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        // Each stage's future is boxed: they are deep (Graph, AWS SDK calls), and the runner
        // nests many of them in one task.
        let out = match self {
            Stage::GraphWebhook(s) => {
                serde_json::to_value(Box::pin(s.handle(parse(event)?)).await)?
            }
            // Its schedule, or the `lifecycle` queue.
            Stage::Poller(s) if event.get("Records").is_some() => {
                serde_json::to_value(Box::pin(s.handle(parse(event)?)).await)?
            }
            Stage::Poller(s) => serde_json::to_value(Box::pin(s.poll(parse(event)?)).await?)?,
            Stage::Ingest(s) => serde_json::to_value(Box::pin(s.handle(parse(event)?)).await)?,
            Stage::ReportBuilder(s) => serde_json::to_value(Box::pin(s.run(parse(event)?)).await?)?,
            Stage::Mailer(s) => serde_json::to_value(Box::pin(s.handle(parse(event)?)).await)?,
        };
        Ok(out)
    }
}

fn parse<T: serde::de::DeserializeOwned>(event: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(event)
        .with_context(|| format!("the event is not a {}", std::any::type_name::<T>()))
}

/// A Lambda function's `main`: builds the stage from the process environment once, then serves
/// invocations until the runtime stops.
pub async fn run_lambda(name: &str) -> Result<(), lambda_runtime::Error> {
    let env = Env::from_process();
    crate::telemetry::init(&env);
    let stage = Stage::from_env(name, &env).await.map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), stage = name, "cold start failed");
        e
    })?;
    let stage = &stage;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            stage.invoke(event.payload).await.map_err(|e| {
                tracing::error!(error = %format!("{e:#}"), "invocation failed");
                lambda_runtime::Error::from(format!("{e:#}"))
            })
        },
    ))
    .await
}

/// What most stages share: the bucket, the tables and the definitions (read once at cold start).
#[derive(Clone)]
pub(crate) struct Common {
    pub objects: ObjectStore,
    pub rows: RowStore,
    pub state: StateStore,
    pub definitions: Arc<Definitions>,
}

impl Common {
    pub async fn from_env(env: &Env, clients: &AwsClients) -> anyhow::Result<Self> {
        let objects = ObjectStore::new(clients.s3.clone(), env.required("CHARLIE_BUCKET")?);
        let definitions = load_definitions(env, &objects).await?;
        Ok(Common {
            objects,
            rows: RowStore::new(
                clients.dynamodb.clone(),
                env.required("CHARLIE_ROWS_TABLE")?,
            ),
            state: StateStore::new(
                clients.dynamodb.clone(),
                env.required("CHARLIE_STATE_TABLE")?,
            ),
            definitions: Arc::new(definitions),
        })
    }
}

/// `reports.toml` from S3 (`CHARLIE_CONFIG_KEY`), checked before use.
async fn load_definitions(env: &Env, objects: &ObjectStore) -> anyhow::Result<Definitions> {
    let key = env
        .get("CHARLIE_CONFIG_KEY")
        .unwrap_or("config/reports.toml");
    let bytes = objects
        .get(key, None)
        .await
        .context("loading the definitions")?;
    let text = String::from_utf8(bytes).with_context(|| format!("{key} is not UTF-8"))?;
    Definitions::parse(&text).with_context(|| format!("s3://{}/{key}", objects.bucket()))
}

/// The Graph client, with the app credentials from Secrets Manager.
pub(crate) async fn mailbox_from_env(
    env: &Env,
    clients: &AwsClients,
) -> anyhow::Result<Arc<Mailbox>> {
    let secret_id = env.required("CHARLIE_GRAPH_SECRET")?;
    let secret = read_secret(&clients.secrets, secret_id).await?;
    let credentials: GraphCredentials = serde_json::from_str(secret.expose()).map_err(|e| {
        anyhow::anyhow!(
            "secret {secret_id} is not {{client_id, client_secret}} JSON (at line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let base = env
        .get("GRAPH_BASE_URL")
        .unwrap_or("https://graph.microsoft.com/v1.0");
    let token_url = env.required("GRAPH_TOKEN_URL")?;
    Ok(Arc::new(Mailbox::new(base, token_url, credentials)?))
}

/// A fresh correlation id for work that starts here.
pub fn new_correlation_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Queues messages that each start their own piece of work (each gets a fresh correlation id),
/// trying every batch: how many SQS took, and the first failure if any.
pub(crate) async fn queue_new_work<T: serde::Serialize>(
    queue: &crate::adapters::queue::Queue,
    messages: &[T],
) -> (usize, Option<anyhow::Error>) {
    if messages.is_empty() {
        return (0, None);
    }
    let ids: Vec<String> = messages.iter().map(|_| new_correlation_id()).collect();
    let pairs: Vec<(&T, &str)> = messages
        .iter()
        .zip(&ids)
        .map(|(m, c)| (m, c.as_str()))
        .collect();
    queue.send_each(&pairs).await
}
