//! Adapters: each implements ports (`crate::ports`) for one thing it talks to, in the folder
//! named for it (`aws/…`, `graph`, `postgres`, `memory`). The AWS and Graph ones are compiled only with their Cargo features, so a
//! function links the clients its stage uses and no others; `memory` is always there.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "downstream")]
pub mod downstream;
#[cfg(feature = "graph")]
pub mod graph;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
/// Pure (std and rand): the adapters' retries and `idempotency::persist` use it.
pub mod retry;
