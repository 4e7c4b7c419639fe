//! Mass expiry: how long does a request wait while a million sessions
//! expire in the same second?
//!
//! Starts a one-shard server in this process, creates N sessions (default
//! 1M, `MASS_EXPIRY_SESSIONS` to change) with two small keys each and
//! durations chosen so that every deadline falls in the same second, then
//! measures a client doing back-to-back `SH_GET`s on its own session across
//! that second, and how soon after it `SV_INFO` (which waits for background
//! expiry to catch up) reports the sessions gone.
//!
//! `cargo bench --bench mass_expiry`; pin with `taskset -c 0` for steadier numbers.

mod common;

use std::time::{Duration, Instant};

use common::{call, connect, field_u64, populate, probe, rss_mib, start_server, summary};
use nemesisdb::config::Flags;

// The server binary's allocator, so RSS after the expiry means what it
// means in production (memory given back, see src/allocator.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let sessions: usize = std::env::var("MASS_EXPIRY_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let server = start_server(Flags {
        shards: Some(1),
        ..Flags::default()
    });
    let rss_start = rss_mib();

    // Every deadline lands in [t0 + horizon, t0 + horizon + 1): a session
    // created `e` seconds in gets horizon - floor(e) seconds.
    let horizon = 30u64;
    let t0 = Instant::now();
    let mut ws = connect(server.local_addr());
    let params = || {
        let elapsed = t0.elapsed().as_secs();
        assert!(elapsed + 2 < horizon, "populating took too long");
        let duration = horizon - elapsed;
        format!(r#"{{"expiry":{{"duration":{duration},"deleteSession":true}}}}"#)
    };
    populate(
        &mut ws,
        sessions,
        params,
        r#"{"user":"u123456","cart":[1,2,3]}"#,
    );
    println!(
        "populated {sessions} sessions in {:.1} s; RSS {rss_start} -> {} MiB",
        t0.elapsed().as_secs_f64(),
        rss_mib()
    );

    // Probe from one second before the window to two seconds after it.
    let window = t0 + Duration::from_secs(horizon);
    let mut prober = connect(server.local_addr());
    let own = field_u64(&call(&mut prober, r#"{"SH_NEW":{}}"#), "tkn");
    let get = format!(r#"{{"SH_GET":{{"tkn":{own},"keys":["x"]}}}}"#);
    std::thread::sleep(window.saturating_duration_since(Instant::now() + Duration::from_secs(1)));
    let latencies = probe(&mut prober, &get, window + Duration::from_secs(3));
    // SV_INFO answers once background expiry has caught up.
    let asked = Instant::now();
    let left = field_u64(&call(&mut prober, r#"{"SV_INFO":{}}"#), "sessions");
    println!("during the expiry window: {}", summary(&latencies));
    println!(
        "SV_INFO 2 s after the last deadline: {left} sessions left (answered in {} us); RSS now {} MiB",
        asked.elapsed().as_micros(),
        rss_mib()
    );
    // Housekeeping (every 500 ms) shrinks the tables and has the
    // allocator give the pages back; the clients' own heaps go too.
    std::thread::sleep(Duration::from_secs(3));
    nemesisdb::allocator::give_back();
    println!(
        "RSS 5 s after the last deadline: {} MiB (before populating: {rss_start} MiB)",
        rss_mib()
    );
    server.stopper().stop();
    let _ = server.wait();
}
