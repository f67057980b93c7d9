//! Charlie's library: everything the Lambda functions, the local runner and the CLI share.
//!
//! Layout: pure logic (`definitions`, `csv_ingest`, `workbook`, `report_mail`, `period`) touches no
//! network and no clock it was not given; `adapters` talk to AWS and Microsoft Graph; `stages`
//! hold each function's handler, built from a map of environment variables so several stages can
//! run in one process with different settings.

#[cfg(feature = "cloud")]
pub mod adapters;
pub mod csv_ingest;
pub mod definitions;
pub mod env;
pub mod key_set;
pub mod mail_template;
pub mod messages;
pub mod period;
pub mod report_mail;
#[cfg(feature = "cloud")]
pub mod reprocess;
pub mod secret;
#[cfg(feature = "cloud")]
pub mod sqs_batch;
#[cfg(feature = "cloud")]
pub mod stages;
pub mod summary;
pub mod telemetry;
pub mod value;
pub mod workbook;

/// Every binary built on this library (the Lambda functions, the CLI, the benchmark, the local
/// runner) allocates through mimalloc: ingest makes a few small allocations per row (the row,
/// its longer texts, its key), and glibc's malloc spent a fifth of ingest's time on them
/// (`bench/ingest`: 0.60 s → 0.48 s for a million rows).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
