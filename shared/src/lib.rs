//! Charlie's library: everything the Lambda functions, the local runner and the CLI share.
//!
//! Layout (ports and adapters):
//! - pure logic (`definitions`, `csv_ingest`, `sender_auth`, `summary`, `workbook`,
//!   `report_mail`, `period`)
//!   touches no network and no clock it was not given;
//! - `ports`: the small traits the stages need from the world (`RowStore`, `Claims`,
//!   `StateRecords`, `Objects`, `WorkQueue`, `DeadLetters`, `MailSource`, `Subscriptions`,
//!   `MailTransport`, `ClientStateStore`);
//! - `adapters`: their implementations, in folders named for what they talk to
//!   (`aws::dynamodb`, `aws::s3`, `aws::sqs`, `aws::ses`, `aws::secrets`, `graph`, `memory`);
//! - `state` (state keys and typed records), `object_keys` (bucket layout), `idempotency` (the
//!   one claim → work → complete mechanism), `failure` (retryable or permanent);
//! - `stages`: one module per function, the business steps over ports, wired to adapters
//!   from the function's environment by its Cargo feature.

#![forbid(unsafe_code)]

pub mod adapters;
pub mod breaker;
pub mod contract;
pub mod counters;
pub mod csv_ingest;
pub mod csv_records;
pub mod definitions;
pub mod downstream;
#[cfg(feature = "stages")]
pub mod edge;
pub mod env;
pub mod failure;
pub mod idempotency;
pub mod ids;
pub mod intake_control;
pub mod invocation;
pub mod key_set;
#[cfg(feature = "lambda")]
pub mod lambda;
#[cfg(feature = "stages")]
pub mod links;
pub mod mail_template;
pub mod messages;
pub mod metrics;
#[cfg(test)]
mod module_graph;
pub mod object_keys;
pub mod period;
pub mod ports;
pub mod raw_mail;
pub mod relay_auth;
pub mod relay_outbox;
pub mod report_mail;
pub mod schedule;
pub mod secret;
pub mod sender_auth;
#[cfg(feature = "stages")]
pub mod sqs_batch;
#[cfg(feature = "stages")]
pub mod stages;
/// Rebuilding a day from its archived attachments drives ingest's pipeline: it lives there.
#[cfg(feature = "stages")]
pub use stages::ingest::reprocess;
pub mod state;
pub mod status;
pub mod summary;
pub mod telemetry;
pub mod uri;
pub mod value;
pub mod workbook;
