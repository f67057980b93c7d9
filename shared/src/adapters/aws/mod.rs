//! The AWS adapters, one module per service, and the SDK configuration they share.

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "secrets")]
pub mod secrets;
#[cfg(feature = "ses")]
pub mod ses;
#[cfg(feature = "sqs")]
pub mod sqs;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

use crate::env::Env;

/// The SDK configuration of a function, from which each adapter builds its client (building
/// one makes no network call).
#[derive(Clone, Debug)]
pub struct AwsConfig {
    pub sdk: SdkConfig,
    /// S3 against an emulator needs path-style addressing (bucket in the path).
    pub path_style: bool,
}

impl AwsConfig {
    pub async fn from_env(env: &Env) -> Self {
        AwsConfig {
            sdk: sdk_config(env).await,
            path_style: env.get("AWS_ENDPOINT_URL").is_some(),
        }
    }
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
