//! The integration tests, one binary: each file of `tests/` is a module here.
//!
//! One binary instead of one per file: ~40 test binaries of ~110 MB each filled a CI disk at
//! link time (ld: Bus error) and took minutes to link on two cores. nextest still runs every
//! test in its own process, so tests keep their own globals; a test's name starts with its
//! file's (`stomp::receipts_...`), and `-E 'test(/^stomp::/)'` selects one file.

mod support;

mod actors;
mod auth;
mod auth_leaks;
mod blob_store;
mod browser_call;
mod call_media;
mod calls;
mod cli;
mod crash;
mod deploy;
mod erasure;
mod faults;
mod http;
mod image;
mod images;
mod keys;
mod leaks;
mod log_tools;
mod media_sfu;
mod metrics;
mod nginx;
mod parsers;
mod privacy;
mod projections;
mod providers;
mod read_api;
mod revocation;
mod rooms;
mod signaling_leaks;
mod sockjs;
mod sockjs_client;
mod sockjs_conformance;
mod sockjs_leaks;
mod stomp;
mod stomp_clients;
mod stomp_leaks;
mod store_contract;
mod tls;
mod tracing;
mod turn;
mod two_nodes;
mod web_client;
