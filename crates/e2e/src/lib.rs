//! Harness for switchyard's end-to-end tests: the whole flow with the real
//! binaries against the real brokers, observed through what they export.
//!
//! - [`collector`]: an OTLP/gRPC trace receiver that runs inside the test, so
//!   a test can assert which spans each service exported and how they chain.
//! - [`process`]: spawns the workspace's binaries with their own ports and
//!   settings and stops them (SIGTERM, then SIGKILL) when dropped.
//! - [`steady`]: every service as a process under a steady load of fixed
//!   rates (`bench memory`, the leak check).
//! - [`growth`]: whether a series of memory samples is still growing.

pub mod collector;
pub mod growth;
pub mod process;
pub mod steady;
