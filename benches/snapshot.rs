//! Snapshots of a million sessions: save time, bytes on disk, load time,
//! and how long requests wait while the save runs.
//!
//! Starts a one-shard server in this process with persistence in a temp
//! directory, creates N sessions (default 1M, `SNAPSHOT_SESSIONS`) with two
//! small keys each, then saves while a second client does back-to-back
//! `SH_GET`s, ends everything and loads it back.
//!
//! `cargo bench --bench snapshot`; pin with `taskset -c 0` for steadier numbers.

mod common;

use std::time::{Duration, Instant};

use common::{
    call, connect, dir_bytes, field_u64, populate, probe, rss_mib, start_server, summary,
};
use nemesisdb::config::Flags;

fn main() {
    let sessions: usize = std::env::var("SNAPSHOT_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("ndb-bench-snapshot-{}", std::process::id()));
    let server = start_server(Flags {
        shards: Some(1),
        persist_path: Some(dir.clone()),
        ..Flags::default()
    });
    let addr = server.local_addr();
    let mut ws = connect(addr);
    let t0 = Instant::now();
    populate(
        &mut ws,
        sessions,
        || r#"{"expiry":{"duration":3600}}"#.to_string(),
        r#"{"user":"u123456","cart":[1,2,3]}"#,
    );
    println!(
        "populated {sessions} sessions in {:.1} s; RSS {} MiB",
        t0.elapsed().as_secs_f64(),
        rss_mib()
    );

    let prober = std::thread::spawn(move || {
        let mut ws = connect(addr);
        let own = field_u64(&call(&mut ws, r#"{"SH_NEW":{}}"#), "tkn");
        let get = format!(r#"{{"SH_GET":{{"tkn":{own},"keys":["x"]}}}}"#);
        probe(&mut ws, &get, Instant::now() + Duration::from_secs(4))
    });
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    let saved = call(&mut ws, r#"{"SH_SAVE":{"name":"bench"}}"#);
    let save_wall = asked.elapsed();
    let latencies = prober.join().expect("prober");
    println!(
        "save: {saved} in {} ms wall; {} bytes on disk",
        save_wall.as_millis(),
        dir_bytes(&dir)
    );
    println!(
        "requests from 0.5 s before to ~3 s after the save began: {}",
        summary(&latencies)
    );

    call(&mut ws, r#"{"SH_END_ALL":{}}"#);
    let asked = Instant::now();
    let loaded = call(&mut ws, r#"{"SH_LOAD":{"name":"bench"}}"#);
    println!("load: {loaded} in {} ms", asked.elapsed().as_millis());
    server.stopper().stop();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
