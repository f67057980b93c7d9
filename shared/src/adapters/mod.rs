//! Adapters: the AWS services and Microsoft Graph, each behind a small type named for what it
//! does for Charlie (`RowStore`, `StateStore`, `ObjectStore`, `Queue`, `Mailbox`, `SesTransport`).

pub mod aws;
pub mod client_state;
pub mod graph;
pub mod object_store;
pub mod queue;
pub mod retry;
pub mod rows;
pub mod ses;
pub mod state;
