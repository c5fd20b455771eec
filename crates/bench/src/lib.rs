//! Shared pieces of the `bench` binary and its criterion benches: the sample
//! messages and the report format every scenario ends with.

pub mod report;
pub mod samples;
