//! The tools over the log that operators and auditors run from the command line: export and
//! import, replay, synthetic history for demos and benchmarks.

pub mod bench_fixture;
pub mod healthcheck;
pub mod replay;
pub mod seed;
pub mod transfer;
