//! `nemesisdb`: flags -> Config -> Server::start -> wait for a signal -> stop.

use std::process::ExitCode;

use clap::Parser;
use nemesisdb::config::{Config, Flags};
use nemesisdb::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let config = match Config::resolve(flags, &cores) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("nemesisdb: {e}");
            return ExitCode::from(2);
        }
    };
    // Registered before the shards start, so no signal is lost to the
    // default handler.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("nemesisdb: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match Server::start(&config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("nemesisdb: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "nemesisdb {} listening on {} (shards: {}, pinning: {}, max payload: {} bytes, connections: up to {}{})",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        config.shards,
        config.pinning,
        config.max_payload,
        server.connection_capacity(),
        if server.connection_capacity() < config.max_connections {
            " (open-file limit)"
        } else {
            ""
        },
    );
    if let Some(load) = server.loaded() {
        println!(
            "loaded {} sessions, {} keys of dataset {} ({}) in {} ms",
            load.sessions,
            load.keys,
            load.name,
            load.version.display(),
            load.took.as_millis()
        );
    }
    if let Some(r) = server.recovery() {
        for warning in &r.warnings {
            eprintln!("nemesisdb: recovery: warning: {warning}");
        }
        println!(
            "recovered {} sessions from {} and {} log records in {} ms{}",
            r.sessions,
            r.base
                .as_deref()
                .map_or("no snapshot".into(), |b| format!("snapshot {b}")),
            r.replayed,
            r.took.as_millis(),
            r.checkpoint
                .as_deref()
                .map_or(String::new(), |c| format!("; checkpoint {c}")),
        );
    }
    if let Some(path) = &config.persist {
        let d = &config.durability;
        println!(
            "persistence: {} (change log: {}, snapshots: {})",
            path.display(),
            d.log.map_or("off", |p| p.name()),
            if d.snapshot_every_s > 0 {
                format!(
                    "every {} s as dataset {}, keeping {}",
                    d.snapshot_every_s, d.snapshot_name, d.snapshot_keep
                )
            } else {
                "on request".into()
            },
        );
    }
    let stopper = server.stopper();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("nemesisdb: signal {signal}: stopping");
            stopper.stop();
        }
    });
    match server.wait() {
        Ok(saved) => {
            if let Some(save) = saved {
                eprintln!(
                    "nemesisdb: saved {} sessions, {} keys to {} in {} ms",
                    save.sessions,
                    save.keys,
                    save.version.display(),
                    save.took.as_millis()
                );
            }
            eprintln!("nemesisdb: stopped");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("nemesisdb: fatal: {failure}; exiting");
            ExitCode::from(70)
        }
    }
}

// mimalloc: fewer bytes per small allocation and faster frees than the
// system allocator for this workload of many small, short-lived buffers
// and many small long-lived values (measured: see README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
