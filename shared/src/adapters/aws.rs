//! AWS SDK configuration from a function's environment map.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

use crate::env::Env;

/// Clients for every AWS service the stages use. Building them makes no network call.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub sesv2: aws_sdk_sesv2::Client,
}

/// The SDK configuration for `env`: region, endpoint override (`AWS_ENDPOINT_URL`, for
/// emulators) and static credentials when the map carries them (as Lambda's environment does);
/// otherwise the default provider chain.
pub async fn sdk_config(env: &Env) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = env.get("AWS_REGION").or(env.get("AWS_DEFAULT_REGION")) {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(endpoint) = env.get("AWS_ENDPOINT_URL") {
        loader = loader.endpoint_url(endpoint);
    }
    if let (Some(key), Some(secret)) = (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        let token = env.get("AWS_SESSION_TOKEN").map(str::to_owned);
        loader = loader.credentials_provider(Credentials::new(
            key,
            secret,
            token,
            None,
            "environment-map",
        ));
    }
    loader.load().await
}

impl AwsClients {
    pub async fn from_env(env: &Env) -> Self {
        let config = sdk_config(env).await;
        Self::from_config(&config, env.get("AWS_ENDPOINT_URL").is_some())
    }

    /// `path_style`: S3 against an emulator needs path-style addressing (bucket in the path).
    pub fn from_config(config: &SdkConfig, path_style: bool) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build();
        AwsClients {
            s3: aws_sdk_s3::Client::from_conf(s3),
            sqs: aws_sdk_sqs::Client::new(config),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
            sesv2: aws_sdk_sesv2::Client::new(config),
        }
    }
}

/// Reads a secret's string value. The value is wrapped so it cannot be logged.
pub async fn read_secret(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> anyhow::Result<crate::secret::Secret> {
    use anyhow::Context;
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .with_context(|| format!("reading secret {id}"))?;
    let value = out
        .secret_string()
        .with_context(|| format!("secret {id} has no string value"))?;
    Ok(crate::secret::Secret::new(value))
}
