//! `SH_END_ALL` on many sessions through the real binary: it ends them all
//! while other connections on both shards keep getting right answers, and
//! the server's memory comes back afterwards. No timing is asserted: how
//! long others wait is `benches/end_all.rs`'s figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use simd_json::prelude::*;

use crate::support::{Client, Server, one_client_per_shard, rss_kib, st};

const SHARDS: usize = 2;
const KEYS: &str = r#"{"user":"u123456","cart":[1,2,3]}"#;
/// Status of an answer about a session that does not exist.
const NO_SESSION: u64 = 100;

/// Creates `count` sessions with `KEYS` from `client` (on its shard),
/// pipelined in batches.
fn populate(client: &mut Client, count: usize) {
    let batch = 1000;
    let mut created = 0;
    while created < count {
        let n = batch.min(count - created);
        for _ in 0..n {
            client.queue_text(r#"{"SH_NEW":{}}"#.to_string());
        }
        client.flush();
        let tokens: Vec<u64> = (0..n)
            .map(|_| {
                let r = client.recv_json();
                r["SH_NEW_RSP"]["tkn"].as_u64().expect("tkn")
            })
            .collect();
        for tkn in tokens {
            client.queue_text(format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{KEYS}}}}}"#));
        }
        client.flush();
        for _ in 0..n {
            let r = client.recv_json();
            assert_eq!(r["SH_SET_RSP"]["st"].as_u64(), Some(1), "SH_SET: {r}");
        }
        created += n;
    }
}

/// Sessions over all shards.
fn live_sessions(client: &mut Client) -> u64 {
    let r = client.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(st(&r), 1, "SH_INFO_ALL: {r}");
    r["totalSessions"].as_u64().expect("totalSessions")
}

/// `count` sessions from one client per shard, in parallel.
fn populate_on_every_shard(server: &Server, count: usize) {
    let threads: Vec<JoinHandle<()>> = one_client_per_shard(server, SHARDS)
        .into_iter()
        .enumerate()
        .map(|(shard, (mut client, tkn))| {
            client.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#));
            let n = count / SHARDS + usize::from(shard < count % SHARDS);
            std::thread::spawn(move || populate(&mut client, n))
        })
        .collect();
    for thread in threads {
        thread.join().expect("populate");
    }
}

/// What one prober saw: its session's key until the end-all reached its
/// shard, "no session" after, and then a new session that works.
struct Probed {
    answers: u64,
    sessions_after: u64,
}

/// Reads its own session's key until told to stop. Every answer must be
/// the key, or "no session" once the end-all reached this shard; after
/// that a new session on the same shard must survive and read back.
fn probe(mut client: Client, tkn: u64, stop: Arc<AtomicBool>) -> Probed {
    client.call(&format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{KEYS}}}}}"#));
    let mut probed = Probed {
        answers: 0,
        sessions_after: 0,
    };
    let mut tkn = tkn;
    let mut ended = false;
    // At least a few answers after the stop, so both sides of the end-all
    // are seen even on a slow machine.
    let mut after_stop = 0;
    while after_stop < 20 {
        if stop.load(Ordering::Relaxed) {
            after_stop += 1;
        }
        let r = client.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["user"]}}}}"#));
        probed.answers += 1;
        match st(&r) {
            1 => assert_eq!(r["keys"]["user"].as_str(), Some("u123456"), "{r}"),
            NO_SESSION if !ended => {
                // The end-all has run on this shard: what is created now
                // stays.
                ended = true;
                tkn = client.new_session("{}");
                let set = client.call(&format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{KEYS}}}}}"#));
                assert_eq!(st(&set), 1, "{set}");
                probed.sessions_after += 1;
            }
            _ => panic!("probe of session {tkn} (ended: {ended}): {r}"),
        }
    }
    assert!(ended, "the end-all never reached this shard");
    probed
}

#[test]
fn end_all_ends_every_session_while_other_clients_are_served() {
    let sessions = 100_000;
    let server = Server::start(&["--shards", "2"]);
    populate_on_every_shard(&server, sessions);
    let mut admin = server.client();
    assert_eq!(live_sessions(&mut admin), sessions as u64);

    let stop = Arc::new(AtomicBool::new(false));
    let probers: Vec<JoinHandle<Probed>> = one_client_per_shard(&server, SHARDS)
        .into_iter()
        .map(|(client, tkn)| {
            let stop = stop.clone();
            std::thread::spawn(move || probe(client, tkn, stop))
        })
        .collect();
    let r = admin.call(r#"{"SH_END_ALL":{}}"#);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(st(&r), 1, "SH_END_ALL: {r}");
    // Every populated session and the probers' own.
    assert_eq!(r["cnt"].as_u64(), Some(sessions as u64 + SHARDS as u64));
    let mut after = 0;
    for prober in probers {
        let probed = prober.join().expect("prober");
        assert!(probed.answers > 20);
        after += probed.sessions_after;
    }
    // Only what the probers made after the end-all is left.
    assert_eq!(live_sessions(&mut admin), after);
}

#[test]
fn memory_comes_back_after_end_all() {
    let sessions = 150_000;
    // A small event ring: a full one (3.2 MB a shard at the default
    // retention) is kept by design whatever the sessions do, and would
    // blur what this checks: the tables and the allocator.
    let server = Server::start(&["--shards", "2", "--event-retention", "1000"]);
    let pid = server.child.id();
    let mut admin = server.client();
    assert_eq!(live_sessions(&mut admin), 0);
    let before = rss_kib(pid);
    populate_on_every_shard(&server, sessions);
    assert_eq!(live_sessions(&mut admin), sessions as u64);
    let with = rss_kib(pid);
    let r = admin.call(r#"{"SH_END_ALL":{}}"#);
    assert_eq!(r["cnt"].as_u64(), Some(sessions as u64), "{r}");

    // Within 25% of before, plus an allowance for a small baseline.
    let bound = before + before / 4 + 8 * 1024;
    // A memory check, not a timing one: shards shrink at housekeeping and
    // mimalloc purges after a delay, so wait generously for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = rss_kib(pid);
    while after > bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_kib(pid);
    }
    eprintln!(
        "RSS before {} MiB, with {sessions} sessions {} MiB, after SH_END_ALL {} MiB (bound {} MiB)",
        before / 1024,
        with / 1024,
        after / 1024,
        bound / 1024
    );
    assert!(
        with > before + 10 * 1024,
        "the sessions took no memory ({before} -> {with} KiB): the check checks nothing"
    );
    assert!(
        after <= bound,
        "RSS {after} KiB after SH_END_ALL, before {before} KiB, bound {bound} KiB"
    );
}
