//! AWS clients for the emulator, for the demo and the tests to look at what the stages did.

use anyhow::Context;
use charlie::adapters::aws::AwsConfig;
use charlie::adapters::aws::dynamodb::{DynamoRowStore, DynamoState};
use charlie::adapters::aws::s3::S3Objects;
use charlie::adapters::aws::sqs::SqsQueue;

#[derive(Clone, Debug)]
pub struct AwsClients {
    pub config: AwsConfig,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl AwsClients {
    /// `path_style`: S3 against an emulator needs path-style addressing.
    pub fn from_config(sdk: &aws_config::SdkConfig, path_style: bool) -> Self {
        let config = AwsConfig {
            sdk: sdk.clone(),
            path_style,
        };
        AwsClients {
            s3: S3Objects::client(&config),
            sqs: aws_sdk_sqs::Client::new(sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            config,
        }
    }

    pub fn objects(&self, bucket: &str) -> S3Objects {
        S3Objects::new(self.s3.clone(), bucket)
    }

    pub fn state(&self, table: &str) -> DynamoState {
        DynamoState::new(self.dynamodb.clone(), table)
    }

    pub fn rows(&self, table: &str) -> DynamoRowStore {
        DynamoRowStore::new(self.dynamodb.clone(), table)
    }

    pub fn queue(&self, url: &str) -> SqsQueue {
        SqsQueue::new(self.sqs.clone(), url)
    }

    /// A bucket in the emulator's region (eu-west-2), on demand.
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        self.s3
            .create_bucket()
            .bucket(name)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::EuWest2)
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("creating bucket {name}"))?;
        Ok(())
    }

    /// A table keyed like the module's `rows` and `state` tables (pk, sk), on demand.
    pub async fn create_pk_sk_table(&self, name: &str) -> anyhow::Result<()> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let attr = |n: &str| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |n: &str, t| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(t)
                .build()
        };
        self.dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .send()
            .await?;
        Ok(())
    }
}
