//! The integration tests, one binary: one build and one link for all of
//! them, and one `cargo test` process whose threads share the machine.
//!
//! Most modules start the real server binary (see [`support`]) on a free
//! loopback port, one server per test, so tests share no server state and
//! run in parallel. [`props`] and the manual-clock half of [`expiry`] run
//! requests in-process on a `LocalDispatcher` instead. The response checks
//! come from the oracle crate (`fuzz/oracle/`), shared with the fuzz target.
//!
//! Everything here is shared by one process: a test may not set environment
//! variables, change the working directory or keep global state; scratch
//! directories carry the process id and a name of their own.

mod durability;
mod end_all;
mod events;
mod expiry;
mod hostile;
mod limits;
mod logging;
mod observability;
mod owners;
mod persistence;
mod props;
mod security;
mod server;
mod support;
mod versions;
