//! `nemesisdb`: flags -> Config -> logging -> TLS and users -> Server::start
//! -> wait for a signal: SIGHUP reloads TLS and users, SIGINT/SIGTERM stop.

use std::process::ExitCode;

use clap::Parser;
use nemesisdb::config::{Config, Flags};
use nemesisdb::logging;
use nemesisdb::server::Server;
use std::sync::Arc;

use nemesisdb::security::Security;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    // Until the logger is installed, what stops the start is said plainly
    // on stderr.
    let config = match Config::resolve(flags, &cores) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("nemesisdb: {e}");
            return ExitCode::from(2);
        }
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    if let Err(e) = logging::init(config.logging, rust_log.as_deref()) {
        eprintln!("nemesisdb: {e}");
        return ExitCode::from(2);
    }
    // A file that cannot be read is a configuration error, like a bad flag.
    let security = match Security::load(config.security.clone()) {
        Ok(security) => Arc::new(security),
        Err(e) => {
            tracing::error!(error = %e, "cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    // Registered before the shards start, so no signal is lost to the
    // default handler (SIGHUP's would end the process).
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match Server::start(&config, security.clone()) {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let stopper = server.stopper();
    let watcher = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = match signal {
                    SIGHUP => {
                        reload(&security);
                        continue;
                    }
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "a signal",
                };
                tracing::info!(signal = name, "{name} received: stopping");
                stopper.stop();
                break;
            }
        });
    if let Err(e) = watcher {
        // Without it nothing could stop the server cleanly.
        tracing::error!(error = %e, "cannot watch for signals: {e}; stopping");
        server.stopper().stop();
        let _ = server.wait();
        return ExitCode::from(1);
    }
    match server.wait() {
        Ok(_) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            tracing::error!(
                shard = failure.shard,
                reason = %failure.reason,
                "fatal: {failure}; exiting"
            );
            ExitCode::from(70)
        }
    }
}

/// SIGHUP: reads the TLS and users files again; new connections use them,
/// open ones keep what they have. A bad file changes nothing.
fn reload(security: &Security) {
    match security.reload() {
        Ok(reloaded) => tracing::info!(
            tls = reloaded.tls,
            users = reloaded.users,
            "SIGHUP received: TLS and users reloaded"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "SIGHUP received: reload failed, keeping what was loaded: {e}"
        ),
    }
}

// mimalloc: fewer bytes per small allocation and faster frees than the
// system allocator for this workload of many small, short-lived buffers
// and many small long-lived values (measured: see README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
