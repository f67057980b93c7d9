//! Charlie's local cloud: the AWS emulator (moto, on a free port), the Terraform driver that
//! applies `infra/envs/local` to it, the local runner that executes the functions in-process as
//! the deployment wires them (queues, schedules, API routes), a fake Microsoft Graph mailbox and
//! a fake downstream persistence API.

pub mod bench;
pub mod bench_sender;
pub mod clients;
pub mod demo;
pub mod deployment;
pub mod dovecot;
pub mod emulator;
pub mod fake_downstream;
pub mod fake_graph;
pub mod keyring;
pub mod load;
pub mod packaging;
pub mod postgres;
pub mod project;
pub mod reuse;
pub mod runner;
pub mod terraform;
pub mod up;
pub mod wine;
