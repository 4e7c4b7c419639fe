//! `loadtest`: the load generator for nemesisdb (`ws://`, `wss://`) and
//! Redis (`redis://`, `rediss://`), in the manner of memtier_benchmark and redis-benchmark.
//!
//! A run connects every connection (untimed), creates the sessions the
//! workload reads (untimed), then runs the workload for `--duration` seconds
//! or exactly `--requests` operations, closed loop or open loop (`--rate`),
//! and reports throughput, errors and latency (HDR histogram). Finally it
//! ends the sessions it created for the workload (untimed), so repeated runs
//! leave nothing behind.
//!
//! # Layout
//! - `config`   flags -> validated `Config`
//! - `run`      the phases of a run, threads, output
//! - `driver`   one thread's mio event loop over many connections
//! - `client`   one blocking connection (subscriber, expiry-events)
//! - `net`      opening a connection (TCP, TLS, upgrade or AUTH); streams
//! - `tls`      rustls (ring): trust from the flags, the non-blocking stream
//! - `events`   the event subscriber (`--subscribe`) and event lag statistics
//! - `expiry_events` the expiry-events workload: its own phases and report
//! - `workload` what an operation is on each target; pre-encoded requests
//! - `ws`       WebSocket client framing, handshake, response scanning
//! - `resp`     Redis RESP encoding and reply boundaries
//! - `save`     `--save-at`: a snapshot during the run, latency while it ran
//! - `stats`    per-second series, totals, progress bar, summary
//! - `report`   `--out`: report.json and latency.svg
//! - `timer`    timerfd wake-ups for the open loop
//! - `scrape`   `--scrape`: the server's /metrics before and after the run
//! - `buckets`  a Prometheus histogram's buckets: scrape differences, quantiles
//! - `rng`      the seeded generator
//! - `shards`   `--locality`: which shard owns a token, pools per shard

mod buckets;
mod client;
mod config;
mod driver;
mod events;
mod expiry_events;
mod net;
mod report;
mod resp;
mod rng;
mod run;
mod save;
mod scrape;
mod shards;
mod stats;
mod timer;
mod tls;
mod workload;
mod ws;

use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match config::Config::from_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    match run::run(&config) {
        Ok(summary) if summary.errors == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}
