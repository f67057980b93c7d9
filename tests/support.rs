//! Helpers for the adapter and end-to-end tests: one emulator per test binary (stopped when the
//! binary exits), unique resource names per test, tables shaped like the Terraform ones.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use charlie::adapters::aws::AwsClients;
use charlie_local::emulator::Emulator;

static EMULATOR: OnceLock<Emulator> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The test binary's emulator, started on first use.
pub fn emulator() -> &'static Emulator {
    EMULATOR.get_or_init(|| Emulator::start().expect("starting the emulator"))
}

/// Clients for the shared emulator (build them inside each test's runtime).
pub async fn clients() -> AwsClients {
    let config = emulator().sdk_config().await;
    AwsClients::from_config(&config, true)
}

/// A name no other test in this run uses.
pub fn unique(base: &str) -> String {
    format!(
        "{base}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A pk/sk table like the module's `rows` and `state` tables.
pub async fn create_table(clients: &AwsClients, name: &str) -> anyhow::Result<()> {
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
    clients
        .dynamodb
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
