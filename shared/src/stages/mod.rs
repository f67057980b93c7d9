//! The stages: one module per Lambda function, each the business steps of that function over
//! ports (`crate::ports`), with no SDK type in sight. Each stage's `from_env` (compiled with
//! the stage's Cargo feature) builds its adapters once, at cold start, from the function's
//! environment map; unit tests build the same stage on `adapters::memory` instead.
//!
//! [`Handler::invoke`] is the Lambda contract itself (event JSON in, response JSON out): the
//! function binaries and the local runner both call it, so the runner executes exactly the
//! deployed path.

pub mod api;
pub mod batch_sender;
pub mod ingest;
pub mod mailer;
pub mod poller;
pub mod report;
pub mod webhook;

#[cfg(test)]
mod testkit;

use anyhow::Context;
use async_trait::async_trait;

use crate::definitions::Definitions;
use crate::env::Env;
use crate::failure::permanent;
use crate::invocation::Invocation;
use crate::ports::{DeadLetters, Objects};
use crate::sqs_batch::{self, Consumer};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

/// The stage names, as in the `functions/` folders and the deployed function names.
pub const STAGES: [&str; 7] = [
    "graph-webhook",
    "poller",
    "ingest",
    "report-builder",
    "mailer",
    "api",
    "batch-sender",
];

/// One function's handler.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Handles one invocation: the function's event JSON in, its response JSON out.
    async fn invoke(
        &self,
        event: serde_json::Value,
        invocation: &Invocation,
    ) -> anyhow::Result<serde_json::Value>;
}

/// A stage that consumes an SQS queue, a message at a time.
#[async_trait]
pub(crate) trait MessageHandler: Send + Sync {
    /// The stage's name, as its dead letters carry it.
    const STAGE: &'static str;
    fn dead_letters(&self) -> &dyn DeadLetters;
    /// Where the messages it gives up on are counted (`crate::counters`).
    fn records(&self) -> &dyn crate::ports::StateRecords;
    async fn handle_message(&self, msg: SqsMessage, invocation: &Invocation) -> anyhow::Result<()>;
}

/// A batch through `sqs_batch::process`, each message to `handler`.
pub(crate) async fn handle_batch<H: MessageHandler>(
    handler: &H,
    event: SqsEvent,
    invocation: &Invocation,
) -> SqsBatchResponse {
    let consumer = Consumer {
        stage: H::STAGE,
        dead_letters: handler.dead_letters(),
        counters: Some(handler.records()),
    };
    sqs_batch::process(event, invocation, consumer, |m| {
        handler.handle_message(m, invocation)
    })
    .await
}

/// [`Handler::invoke`] of a message handler: the SQS event in, the batch response out.
pub(crate) async fn invoke_batch<H: MessageHandler>(
    handler: &H,
    event: serde_json::Value,
    invocation: &Invocation,
) -> anyhow::Result<serde_json::Value> {
    let event = parse_event(event)?;
    Ok(serde_json::to_value(
        Box::pin(handle_batch(handler, event, invocation)).await,
    )?)
}

/// The event as the type the stage expects; anything else is a permanent error.
pub(crate) fn parse_event<T: serde::de::DeserializeOwned>(
    event: serde_json::Value,
) -> anyhow::Result<T> {
    serde_json::from_value(event).map_err(|e| {
        permanent(format!(
            "the event is not a {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// `reports.toml` from the bucket, by the S3 version Terraform uploaded
/// (`CHARLIE_CONFIG_KEY`, `CHARLIE_CONFIG_VERSION`), so a warm and a fresh instance never run
/// different definitions; checked before use.
pub async fn load_definitions(env: &Env, objects: &dyn Objects) -> anyhow::Result<Definitions> {
    let key = env
        .get("CHARLIE_CONFIG_KEY")
        .unwrap_or("config/reports.toml");
    let version = env.get("CHARLIE_CONFIG_VERSION");
    let bytes = objects
        .get(key, version)
        .await
        .with_context(|| format!("loading the definitions (version {version:?})"))?;
    let text = String::from_utf8(bytes).with_context(|| format!("{key} is not UTF-8"))?;
    Definitions::parse(&text).with_context(|| objects.locate(key))
}

/// Building blocks of the stages' `from_env`: each adapter from its settings.
#[cfg(feature = "aws")]
pub mod wiring {
    #[cfg(any(
        feature = "sqs",
        feature = "dynamodb",
        feature = "s3",
        feature = "secrets"
    ))]
    use std::sync::Arc;

    use crate::adapters::aws::AwsConfig;
    use crate::env::Env;

    #[cfg(feature = "sqs")]
    pub fn queue(
        aws: &AwsConfig,
        env: &Env,
        name: &'static str,
    ) -> anyhow::Result<Arc<crate::adapters::aws::sqs::SqsQueue>> {
        Ok(Arc::new(crate::adapters::aws::sqs::SqsQueue::new(
            aws_sdk_sqs::Client::new(&aws.sdk),
            env.required(name)?,
        )))
    }

    /// The dead-letter queues of the queues this function consumes.
    #[cfg(feature = "sqs")]
    pub fn dead_letters(
        aws: &AwsConfig,
        env: &Env,
    ) -> anyhow::Result<Arc<crate::adapters::aws::sqs::SqsDeadLetters>> {
        let max_receives = match env.get("CHARLIE_MAX_RECEIVE_COUNT") {
            None => None,
            Some(_) => Some(env.in_range_or("CHARLIE_MAX_RECEIVE_COUNT", 5, 1..=1000)?),
        };
        Ok(Arc::new(
            crate::adapters::aws::sqs::SqsDeadLetters::from_json(
                aws_sdk_sqs::Client::new(&aws.sdk),
                env.get("CHARLIE_DEAD_LETTER_QUEUES").unwrap_or("{}"),
            )?
            .with_max_receives(max_receives),
        ))
    }

    #[cfg(feature = "s3")]
    pub fn objects(
        aws: &AwsConfig,
        env: &Env,
    ) -> anyhow::Result<Arc<crate::adapters::aws::s3::S3Objects>> {
        use crate::adapters::aws::s3::S3Objects;
        Ok(Arc::new(S3Objects::new(
            S3Objects::client(aws),
            env.required("CHARLIE_BUCKET")?,
        )))
    }

    #[cfg(feature = "dynamodb")]
    pub fn state(
        aws: &AwsConfig,
        env: &Env,
    ) -> anyhow::Result<Arc<crate::adapters::aws::dynamodb::DynamoState>> {
        Ok(Arc::new(crate::adapters::aws::dynamodb::DynamoState::new(
            aws_sdk_dynamodb::Client::new(&aws.sdk),
            env.required("CHARLIE_STATE_TABLE")?,
        )))
    }

    /// The row store the deployment chose (`CHARLIE_ROW_STORE`: `dynamodb`, the default, or
    /// `postgres` with `CHARLIE_POSTGRES_URL` and, when the server wants a password,
    /// `CHARLIE_POSTGRES_SECRET` holding `{"password": …}` as RDS keeps it).
    #[cfg(all(feature = "dynamodb", feature = "postgres", feature = "secrets"))]
    pub async fn rows(
        aws: &AwsConfig,
        env: &Env,
    ) -> anyhow::Result<Arc<dyn crate::ports::RowStore>> {
        match env.get("CHARLIE_ROW_STORE").unwrap_or("dynamodb") {
            "dynamodb" => Ok(Arc::new(
                crate::adapters::aws::dynamodb::DynamoRowStore::new(
                    aws_sdk_dynamodb::Client::new(&aws.sdk),
                    env.required("CHARLIE_ROWS_TABLE")?,
                )
                .with_concurrency(env.in_range_or(
                    "CHARLIE_ROW_WRITE_CONCURRENCY",
                    crate::adapters::aws::dynamodb::DEFAULT_CONCURRENCY,
                    1..=64,
                )?),
            )),
            "postgres" => {
                let password = match env.get("CHARLIE_POSTGRES_SECRET") {
                    None => None,
                    Some(id) => {
                        let secrets = aws_sdk_secretsmanager::Client::new(&aws.sdk);
                        let secret =
                            crate::adapters::aws::secrets::read_secret(&secrets, id).await?;
                        #[derive(serde::Deserialize)]
                        struct Credentials {
                            password: String,
                        }
                        let c: Credentials = serde_json::from_str(secret.expose()).map_err(|e| {
                            anyhow::anyhow!(
                                "secret {id} is not {{\"password\": …}} JSON (line {}, column {})",
                                e.line(),
                                e.column()
                            )
                        })?;
                        Some(crate::secret::Secret::new(c.password))
                    }
                };
                let settings = crate::adapters::postgres::PostgresSettings {
                    url: env.required("CHARLIE_POSTGRES_URL")?.to_owned(),
                    password,
                };
                Ok(Arc::new(
                    crate::adapters::postgres::PostgresRowStore::connect(settings).await?,
                ))
            }
            other => Err(crate::env::SettingError::Invalid {
                name: "CHARLIE_ROW_STORE",
                reason: format!("{other:?} is neither \"dynamodb\" nor \"postgres\""),
            }
            .into()),
        }
    }

    /// The secret named by the setting `name`, when it is set.
    #[cfg(feature = "secrets")]
    pub async fn optional_secret(
        aws: &AwsConfig,
        env: &Env,
        name: &str,
    ) -> anyhow::Result<Option<crate::secret::Secret>> {
        match env.get(name) {
            None => Ok(None),
            Some(id) => {
                let secrets = aws_sdk_secretsmanager::Client::new(&aws.sdk);
                Ok(Some(
                    crate::adapters::aws::secrets::read_secret(&secrets, id).await?,
                ))
            }
        }
    }

    #[cfg(feature = "secrets")]
    pub fn client_states(
        aws: &AwsConfig,
        env: &Env,
    ) -> anyhow::Result<Arc<crate::adapters::aws::secrets::SecretClientStates>> {
        Ok(Arc::new(
            crate::adapters::aws::secrets::SecretClientStates::new(
                aws_sdk_secretsmanager::Client::new(&aws.sdk),
                env.required("CHARLIE_CLIENT_STATE_SECRET")?,
            ),
        ))
    }

    /// The Graph client, with the app credentials from Secrets Manager.
    #[cfg(all(feature = "graph", feature = "secrets"))]
    pub async fn graph(
        aws: &AwsConfig,
        env: &Env,
    ) -> anyhow::Result<Arc<crate::adapters::graph::GraphClient>> {
        use crate::adapters::graph::{GraphClient, GraphCredentials};
        let secret_id = env.required("CHARLIE_GRAPH_SECRET")?;
        let secrets = aws_sdk_secretsmanager::Client::new(&aws.sdk);
        let secret = crate::adapters::aws::secrets::read_secret(&secrets, secret_id).await?;
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
        let stage = env.get("CHARLIE_STAGE").unwrap_or("graph");
        if let Some(expires) = credentials.client_secret_expires_at {
            crate::metrics::level(
                stage,
                crate::metrics::name::GRAPH_SECRET_SECONDS_TO_EXPIRY,
                (expires - chrono::Utc::now()).num_seconds() as f64,
            );
        }
        Ok(Arc::new(
            GraphClient::new(base, token_url, credentials)?.for_stage(stage),
        ))
    }
}
