//! Durability through the real binary (issue #17): the change log and
//! periodic snapshots survive a SIGKILL, recovery keeps absolute deadlines,
//! a torn tail is tolerated and damage before it is refused (or repaired on
//! request), and retention and compaction keep the disk bounded.
//!
//! Every server here runs two shards. Nothing asserts a speed: waits poll
//! with generous limits, and the only fixed sleep is the downtime of the
//! deadline test (time has to pass while no server runs).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Client, Server, TIMEOUT, TempDir, body, one_client_per_shard, st};
use nemesisdb::mesh::shard_of;
use nemesisdb::persist::log::record::{Change, decode};
use nemesisdb::persist::log::segment::{SEGMENT_HEADER_LEN, parse_segment_file_name};
use simd_json::prelude::*;
use tungstenite::Message;

const SESSION_NOT_EXIST: u64 = 100;

fn persistent(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "2", "--persist-path", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The first log line containing `needle`: among the start-up lines (the
/// recovery line comes before `listening on`), else the next one after.
fn stdout_line(server: &Server, needle: &str) -> String {
    if let Some(line) = server.startup.iter().find(|l| l.contains(needle)) {
        return line.clone();
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.stdout.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(_) => panic!("the server printed no line with {needle:?}"),
        }
    }
}

/// Whether a start-up log line (before `listening on`) contains `needle`.
fn logged_at_startup(server: &Server, needle: &str) -> bool {
    server.startup.iter().any(|line| line.contains(needle))
}

/// The session count of the recovery line
/// (`recovered N sessions from ... and M log records in X ms; ...`).
fn recovered_sessions(server: &Server) -> u64 {
    let line = stdout_line(server, "recovered ");
    line.split("recovered ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no session count in {line}"))
}

/// Runs the binary expecting it to exit on its own (a refused start):
/// its exit code and what it wrote (the log on stdout, then stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nemesisdb"))
        .args(["--ip", "127.0.0.1", "--port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nemesisdb");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut output = String::new();
            use std::io::Read;
            let _ = child.stdout.take().unwrap().read_to_string(&mut output);
            let _ = child.stderr.take().unwrap().read_to_string(&mut output);
            return (status.code(), output);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not exit: it started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One change-log segment file.
#[derive(Clone, Debug)]
struct Segment {
    generation: u64,
    shard: u32,
    first_seq: u64,
    path: PathBuf,
    len: u64,
}

/// The segments in `<persist>/log`, in log order. Files may vanish while
/// listing (compaction runs meanwhile); those are skipped.
fn segments(persist: &Path) -> Vec<Segment> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(persist.join("log")) else {
        return out;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some((generation, shard, first_seq)) = name.to_str().and_then(parse_segment_file_name)
        else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        out.push(Segment {
            generation,
            shard,
            first_seq,
            path: entry.path(),
            len: meta.len(),
        });
    }
    out.sort_by_key(|s| (s.generation, s.shard, s.first_seq));
    out
}

/// A record's place in a segment file.
#[derive(Clone, Debug)]
struct Placed {
    offset: usize,
    len: usize,
    tkn: u64,
    change: Change,
}

/// Every record of a segment file (which must be whole, but for the zeros
/// the writer lays ahead of its records in the segment it is writing).
fn records(path: &Path) -> Vec<Placed> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while at < bytes.len() && bytes[at..].iter().any(|&b| b != 0) {
        let (record, len) =
            decode(&bytes[at..]).unwrap_or_else(|e| panic!("{}: byte {at}: {e}", path.display()));
        out.push(Placed {
            offset: at,
            len,
            tkn: record.tkn,
            change: record.change,
        });
        at += len;
    }
    out
}

/// The newest segment of `shard`, of the newest generation.
fn newest_segment(persist: &Path, shard: u32) -> Segment {
    segments(persist)
        .into_iter()
        .filter(|s| s.shard == shard)
        .max_by_key(|s| (s.generation, s.first_seq))
        .unwrap_or_else(|| panic!("no log segment of shard {shard}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Version directories of a dataset: (complete, partial), oldest first.
fn versions(dataset: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dataset)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    // `20261126T074900123Z`, then `-<n>` when the millisecond was taken.
    let key = |p: &PathBuf| {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let (base, n) = name.split_once('-').unwrap_or((&name, "0"));
        (base.to_string(), n.parse::<u64>().unwrap_or(0))
    };
    all.sort_by_key(key);
    all.into_iter()
        .partition(|v| v.join("metadata.json").exists())
}

/// A version's change-log positions: (generation, last record per shard).
fn log_positions(version: &Path) -> Option<(u64, Vec<u64>)> {
    let mut text = std::fs::read(version.join("metadata.json")).ok()?;
    let meta = simd_json::to_owned_value(&mut text).ok()?;
    let log = meta.get("log")?;
    let positions = log
        .get("positions")?
        .as_array()?
        .iter()
        .map(|p| p.as_u64())
        .collect::<Option<Vec<u64>>>()?;
    Some((log.get("generation")?.as_u64()?, positions))
}

fn tree_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => tree_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Polls `f` until it returns Some, for up to `limit`.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// kill -9 under load

/// What one session was sent, and which of it was acknowledged.
struct Written {
    tkn: u64,
    /// Values whose SH_SET was answered with status 1, with when the
    /// answer arrived, in order (values go up by one per round).
    acked: Vec<(u64, Instant)>,
    /// The last value sent (answered or not).
    sent: u64,
}

/// The next text frame, or None once the connection is gone.
fn next_text(c: &mut Client) -> Option<String> {
    loop {
        match c.ws.read() {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("unexpected message: {other:?}"),
            Err(_) => return None,
        }
    }
}

/// One connection's load until the server goes away: `sessions` sessions,
/// then rounds of one SH_SET per session (all of a round in flight at
/// once), round `r` setting `v` to r and `w` to [r]. Every answer is
/// checked and recorded.
fn write_load(addr: SocketAddr, sessions: usize, rounds_done: &AtomicU64) -> Vec<Written> {
    let mut c = Client::connect(addr);
    let mut written: Vec<Written> = (0..sessions)
        .map(|_| Written {
            tkn: c.new_session("{}"),
            acked: Vec::new(),
            sent: 0,
        })
        .collect();
    let index: HashMap<u64, usize> = written
        .iter()
        .enumerate()
        .map(|(i, w)| (w.tkn, i))
        .collect();
    let mut round = 0u64;
    loop {
        round += 1;
        for w in &mut written {
            let request = format!(
                r#"{{"SH_SET":{{"tkn":{},"keys":{{"v":{round},"w":[{round}]}},"withVersion":true}}}}"#,
                w.tkn
            );
            if c.ws.write(Message::Text(request.into())).is_err() {
                return written;
            }
            w.sent = round;
        }
        if c.ws.flush().is_err() {
            return written;
        }
        for _ in 0..sessions {
            let Some(text) = next_text(&mut c) else {
                return written;
            };
            let at = Instant::now();
            let mut bytes = text.into_bytes();
            let response = simd_json::to_owned_value(&mut bytes).expect("JSON answer");
            let r = body(&response, "SH_SET_RSP");
            assert_eq!(st(&r), 1, "{r}");
            let tkn = r["tkn"].as_u64().expect("tkn");
            assert_eq!(r["version"].as_u64(), Some(round + 1), "{r}");
            written[index[&tkn]].acked.push((round, at));
        }
        rounds_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `connections` loads until each has done a few rounds and then
/// `load_for` more, SIGKILLs the server, and returns what was written and
/// when the kill was sent.
fn load_then_kill(
    mut server: Server,
    connections: usize,
    load_for: Duration,
) -> (Vec<Written>, Instant) {
    let addr = server.addr;
    let counters: Vec<Arc<AtomicU64>> = (0..connections)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let workers: Vec<_> = counters
        .iter()
        .map(|done| {
            let done = done.clone();
            std::thread::spawn(move || write_load(addr, 8, &done))
        })
        .collect();
    let started = poll(Duration::from_secs(60), || {
        counters
            .iter()
            .all(|c| c.load(Ordering::Relaxed) >= 10)
            .then_some(())
    });
    assert!(started.is_some(), "the load never got going");
    std::thread::sleep(load_for);
    let killed_at = Instant::now();
    server.child.kill().unwrap();
    server.wait_exit();
    let written: Vec<Written> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a load thread failed"))
        .collect();
    let rounds: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    eprintln!(
        "killed after {rounds} rounds of {} sessions",
        written.len() / connections
    );
    (written, killed_at)
}

/// Checks each session after the restart: it exists, its `v` is at least
/// `must_have(session)` and at most what was sent, `w` agrees with `v` and
/// the version counts exactly the writes applied (nothing half-replayed).
fn check_written(c: &mut Client, written: &[Written], must_have: impl Fn(&Written) -> u64) {
    let mut lost = 0;
    for w in written {
        let r = c.call(&format!(
            r#"{{"SH_GET":{{"tkn":{},"keys":["v","w"],"withVersion":true}}}}"#,
            w.tkn
        ));
        assert_eq!(st(&r), 1, "session {} is gone: {r}", w.tkn);
        let v = r["keys"].get("v").and_then(|v| v.as_u64()).unwrap_or(0);
        let needed = must_have(w);
        if v < needed {
            lost += 1;
            eprintln!(
                "session {}: value {v} recovered, {needed} was acknowledged",
                w.tkn
            );
        }
        assert!(v <= w.sent, "session {}: {v} was never sent: {r}", w.tkn);
        if v > 0 {
            assert_eq!(r["keys"]["w"][0].as_u64(), Some(v), "{r}");
        } else {
            assert!(r["keys"].get("w").is_none(), "{r}");
        }
        assert_eq!(r["version"].as_u64(), Some(v + 1), "{r}");
    }
    assert_eq!(lost, 0, "{lost} sessions lost acknowledged writes");
}

#[test]
fn kill_9_under_load_with_fsync_always_loses_no_acknowledged_write() {
    let dir = TempDir::new("dur-always");
    let flags = ["--log-fsync", "always"];
    let server = persistent(dir.path(), &flags);
    let (written, _) = load_then_kill(server, 4, Duration::from_millis(1500));
    let acked: usize = written.iter().map(|w| w.acked.len()).sum();
    assert!(acked > 0);

    let server = persistent(dir.path(), &flags);
    assert_eq!(recovered_sessions(&server), written.len() as u64);
    let mut c = server.client();
    // Per key: the last acknowledged value, or a later one that was sent
    // (and logged) but whose answer the kill cut off.
    check_written(&mut c, &written, |w| w.acked.last().map_or(0, |a| a.0));
}

#[test]
fn kill_9_under_load_with_fsync_everysec_loses_at_most_the_last_second() {
    let dir = TempDir::new("dur-everysec");
    // Periodic snapshots too: recovery then starts from a snapshot taken
    // under load and replays the log after its positions.
    let flags = ["--log-fsync", "everysec", "--snapshot-every", "1"];
    let server = persistent(dir.path(), &flags);
    let (written, killed_at) = load_then_kill(server, 4, Duration::from_millis(3500));
    let horizon = killed_at - Duration::from_secs(2);
    let old_enough: usize = written
        .iter()
        .map(|w| w.acked.iter().filter(|a| a.1 <= horizon).count())
        .sum();
    assert!(
        old_enough > 0,
        "nothing was acknowledged 2 s before the kill"
    );

    let server = persistent(dir.path(), &flags);
    assert_eq!(recovered_sessions(&server), written.len() as u64);
    let mut c = server.client();
    // Everything acknowledged 2 s or more before the kill is there (a kill
    // of the process loses nothing written to the kernel, but only this
    // much is promised).
    check_written(&mut c, &written, |w| {
        let acked: &[(u64, Instant)] = &w.acked;
        acked
            .iter()
            .rev()
            .find(|a| a.1 <= horizon)
            .map_or(0, |a| a.0)
    });
}

// ---------------------------------------------------------------------------
// deadlines

#[test]
fn recovery_keeps_absolute_deadlines() {
    let dir = TempDir::new("dur-deadlines");
    let flags = ["--log-fsync", "always"];
    let mut server = persistent(dir.path(), &flags);
    let mut c = server.client();
    let gone = c.new_session(r#"{"expiry":{"duration":2,"deleteSession":true}}"#);
    let cleared = c.new_session(r#"{"expiry":{"duration":2,"deleteSession":false}}"#);
    c.call(&format!(
        r#"{{"SH_SET":{{"tkn":{cleared},"keys":{{"a":1}}}}}}"#
    ));
    let asked = Instant::now();
    let kept = c.new_session(r#"{"expiry":{"duration":60,"deleteSession":true}}"#);
    let created = Instant::now();
    let r = c.call(&format!(
        r#"{{"SH_SET":{{"tkn":{kept},"keys":{{"a":1,"b":"two"}}}}}}"#
    ));
    assert_eq!(st(&r), 1);
    drop(c);
    server.child.kill().unwrap();
    server.wait_exit();
    // The downtime: the 2 s deadlines pass while no server runs.
    std::thread::sleep(Duration::from_secs(3));

    let server = persistent(dir.path(), &flags);
    let mut c = server.client();
    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{gone},"keys":["a"]}}}}"#));
    assert_eq!(st(&r), SESSION_NOT_EXIST, "expired while down: {r}");
    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{cleared},"keys":["a"]}}}}"#));
    assert_eq!(st(&r), 1, "{r}");
    assert_eq!(r["keys"].as_object().map(|k| k.len()), Some(0), "{r}");

    let r = c.call(&format!(
        r#"{{"SH_GET":{{"tkn":{kept},"keys":["a","b"]}}}}"#
    ));
    assert_eq!(st(&r), 1, "{r}");
    assert_eq!(r["keys"]["a"].as_u64(), Some(1));
    assert_eq!(r["keys"]["b"].as_str(), Some("two"));
    let before_info = Instant::now();
    let info = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{kept}}}}}"#));
    let after_info = Instant::now();
    let remaining = info["expiry"]["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("no expiry.remaining: {info}"));
    // Whole seconds, rounded up, of 60 minus the time since creation
    // (somewhere between `asked` and `created`), not reset to 60.
    let least_elapsed = (before_info - created).as_secs_f64();
    let most_elapsed = (after_info - asked).as_secs_f64();
    assert!(least_elapsed >= 3.0);
    assert!(
        remaining as f64 <= 60.0 - least_elapsed + 1.0,
        "remaining {remaining} s after {least_elapsed:.1} s: the deadline was reset"
    );
    assert!(
        remaining as f64 >= 60.0 - most_elapsed - 1.0,
        "remaining {remaining} s after {most_elapsed:.1} s: the deadline moved earlier"
    );
}

// ---------------------------------------------------------------------------
// damaged logs

/// A persist directory whose log is about to be damaged, and what it holds.
struct Damaged {
    dir: TempDir,
    /// Each session and the value of its key `k`, in creation order per
    /// shard: (shard, token, k).
    sessions: Vec<(usize, u64, u64)>,
}

/// `per_shard` sessions on each shard, each with a key `k`, every write
/// fsynced, then a SIGKILL. With `last_write`, shard 0's last record is a
/// small SH_SET of key `z` on the returned session (shard 0's first).
fn written_then_killed(tag: &str, per_shard: usize, last_write: bool) -> (Damaged, u64) {
    let dir = TempDir::new(tag);
    let mut server = persistent(
        dir.path(),
        &["--log-fsync", "always", "--snapshot-every", "0"],
    );
    let mut clients = one_client_per_shard(&server, 2);
    let mut sessions = Vec::new();
    for (shard, (c, first)) in clients.iter_mut().enumerate() {
        let r = c.call(&format!(
            r#"{{"SH_SET":{{"tkn":{first},"keys":{{"k":0}}}}}}"#
        ));
        assert_eq!(st(&r), 1);
        sessions.push((shard, *first, 0));
        for i in 1..per_shard as u64 {
            let tkn = c.new_session(&format!(
                r#"{{"keys":{{"k":{i},"pad":"{}"}}}}"#,
                "p".repeat(40)
            ));
            assert_eq!(shard_of(tkn, 2), shard);
            sessions.push((shard, tkn, i));
        }
    }
    let last = clients[0].1;
    if last_write {
        // Shard 0's last record: small, so a cut at each of its offsets
        // is a start of the server each.
        let r = clients[0].0.call(&format!(
            r#"{{"SH_SET":{{"tkn":{last},"keys":{{"z":1}}}}}}"#
        ));
        assert_eq!(st(&r), 1);
    }
    drop(clients);
    server.child.kill().unwrap();
    server.wait_exit();
    (Damaged { dir, sessions }, last)
}

/// Every session of `expected` is there with its key `k`.
fn check_sessions(c: &mut Client, expected: &[(usize, u64, u64)], context: &str) {
    for (shard, tkn, k) in expected {
        let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["k"]}}}}"#));
        assert_eq!(st(&r), 1, "{context}: session {tkn} of shard {shard}: {r}");
        assert_eq!(r["keys"]["k"].as_u64(), Some(*k), "{context}: {r}");
    }
}

#[test]
fn a_cut_at_every_offset_of_the_last_record_recovers_everything_before_it() {
    let (damaged, last) = written_then_killed("dur-torn", 3, true);
    let segment = newest_segment(damaged.dir.path(), 0);
    let all = records(&segment.path);
    let tail = all.last().expect("records").clone();
    assert_eq!(tail.tkn, last, "the last record is the last write");
    assert!(
        matches!(&tail.change, Change::Set { keys, .. } if keys.len() == 1 && &*keys[0].0 == "z"),
        "{:?}",
        tail.change
    );
    let relative = segment.path.strip_prefix(damaged.dir.path()).unwrap();
    // Every offset from "none of it" to "all but its last byte": one
    // server start each (the record is about 40 bytes), on two threads.
    let cuts: Vec<usize> = (tail.offset..tail.offset + tail.len).collect();
    eprintln!(
        "last record: {} bytes at {}; {} cuts",
        tail.len,
        tail.offset,
        cuts.len()
    );
    let next = Mutex::new(cuts.into_iter());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let Some(cut) = next.lock().unwrap().next() else {
                        return;
                    };
                    let copy = TempDir::new("dur-torn-cut");
                    copy_dir(damaged.dir.path(), copy.path());
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(copy.path().join(relative))
                        .unwrap();
                    file.set_len(cut as u64).unwrap();
                    drop(file);
                    let server = persistent(
                        copy.path(),
                        &["--log-fsync", "always", "--snapshot-every", "0"],
                    );
                    let context = format!("cut at {cut}");
                    assert_eq!(
                        recovered_sessions(&server),
                        damaged.sessions.len() as u64,
                        "{context}"
                    );
                    if cut > tail.offset {
                        assert!(
                            logged_at_startup(&server, "recovery: warning"),
                            "{context}: no warning about the torn record"
                        );
                    }
                    let mut c = server.client();
                    check_sessions(&mut c, &damaged.sessions, &context);
                    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{last},"keys":["z"]}}}}"#));
                    assert!(r["keys"].get("z").is_none(), "{context}: {r}");
                }
            });
        }
    });
    // And the whole record is replayed.
    let server = persistent(damaged.dir.path(), &["--snapshot-every", "0"]);
    let mut c = server.client();
    check_sessions(&mut c, &damaged.sessions, "uncut");
    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{last},"keys":["z"]}}}}"#));
    assert_eq!(r["keys"]["z"].as_u64(), Some(1), "{r}");
}

#[test]
fn a_flipped_byte_before_the_tail_refuses_to_start_and_log_repair_truncates_there() {
    let (damaged, _) = written_then_killed("dur-flipped", 6, false);
    let persist = damaged.dir.path();
    let segment = newest_segment(persist, 0);
    let all = records(&segment.path);
    // The record creating shard 0's fourth session, with records after it.
    let shard0: Vec<u64> = damaged
        .sessions
        .iter()
        .filter(|s| s.0 == 0)
        .map(|s| s.1)
        .collect();
    let victim = shard0[3];
    let at = all
        .iter()
        .position(|r| r.tkn == victim && matches!(r.change, Change::Put(_)))
        .expect("the victim's record");
    assert!(at + 2 < all.len(), "records follow the damaged one");
    let record = &all[at];
    let mut bytes = std::fs::read(&segment.path).unwrap();
    bytes[record.offset + record.len - 3] ^= 0x20;
    std::fs::write(&segment.path, &bytes).unwrap();

    let dir_arg = persist.to_str().unwrap();
    let args = ["--shards", "2", "--persist-path", dir_arg];
    let (code, output) = run_to_exit(&args);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("--log-repair"), "{output}");
    assert!(
        std::fs::read(&segment.path).unwrap() == bytes,
        "a refused start changed the log"
    );

    let before: Vec<(usize, u64, u64)> = damaged
        .sessions
        .iter()
        .filter(|s| s.0 == 1 || shard0[..3].contains(&s.1))
        .copied()
        .collect();
    let lost: Vec<u64> = shard0[3..].to_vec();
    for round in ["--log-repair", "then a plain start"] {
        let extra: &[&str] = if round == "--log-repair" {
            &["--log-repair"]
        } else {
            &[]
        };
        let server = persistent(persist, extra);
        let mut c = server.client();
        check_sessions(&mut c, &before, round);
        for tkn in &lost {
            let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["k"]}}}}"#));
            assert_eq!(
                st(&r),
                SESSION_NOT_EXIST,
                "{round}: the log was cut at the damage: {r}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// retention and compaction

#[test]
fn retention_keeps_exactly_n_versions_of_the_snapshot_dataset() {
    let dir = TempDir::new("dur-retention");
    let auto = dir.path().join("auto");
    // A partial leftover of an earlier crash.
    let leftover = auto.join("20000101T000000000Z");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("shard-0.ndb"), b"half a save").unwrap();

    let server = persistent(
        dir.path(),
        &["--snapshot-every", "0", "--snapshot-keep", "2"],
    );
    let mut c = server.client();
    for i in 0..5 {
        let tkn = c.new_session("{}");
        c.call(&format!(
            r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"i":{i}}}}}}}"#
        ));
    }
    let mut newest = Vec::new();
    for _ in 0..4 {
        let r = c.call(r#"{"SH_SAVE":{"name":"auto"}}"#);
        assert_eq!(st(&r), 121, "{r}");
        newest.push(versions(&auto).0.last().cloned().expect("a version"));
        let r = c.call(r#"{"SH_SAVE":{"name":"other"}}"#);
        assert_eq!(st(&r), 121, "{r}");
    }
    let settled = poll(Duration::from_secs(10), || {
        let (complete, partial) = versions(&auto);
        (complete.len() == 2 && partial.is_empty()).then_some(complete)
    });
    let (complete, partial) = versions(&auto);
    assert!(
        settled.is_some(),
        "complete {complete:?}, partial {partial:?}"
    );
    assert_eq!(complete, newest[2..], "the newest two are kept");
    let (other, _) = versions(&dir.path().join("other"));
    assert_eq!(other.len(), 4, "other datasets are not the snapshot's");
}

#[test]
fn disk_use_stays_bounded_over_ten_snapshots_under_steady_writes() {
    let dir = TempDir::new("dur-bounded");
    let segment_bytes = 4096u64;
    let keep = 3; // the default
    let server = persistent(
        dir.path(),
        &["--snapshot-every", "1", "--log-segment-bytes", "4096"],
    );
    let auto = dir.path().join("auto");
    let stop = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = one_client_per_shard(&server, 2)
        .into_iter()
        .map(|(mut c, tkn)| {
            let (stop, writes) = (stop.clone(), writes.clone());
            std::thread::spawn(move || {
                let value = "x".repeat(200);
                let mut i = 0u64;
                while stop.load(Ordering::Relaxed) == 0 {
                    i += 1;
                    let r = c.call(&format!(
                        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"k{}":"{value}"}}}}}}"#,
                        i % 50
                    ));
                    assert_eq!(st(&r), 1, "{r}");
                    writes.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();

    // Watch the disk until ten snapshots committed under the load.
    let mut seen_versions = BTreeSet::new();
    let mut seen_segments: HashMap<PathBuf, u64> = HashMap::new();
    let (mut peak_bytes, mut peak_count) = (0u64, 0usize);
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen_versions.len() < 10 {
        assert!(
            Instant::now() < deadline,
            "only {} snapshots in 90 s",
            seen_versions.len()
        );
        std::thread::sleep(Duration::from_millis(100));
        seen_versions.extend(versions(&auto).0);
        let now = segments(dir.path());
        for s in &now {
            let seen = seen_segments.entry(s.path.clone()).or_default();
            *seen = (*seen).max(s.len);
        }
        peak_bytes = peak_bytes.max(now.iter().map(|s| s.len).sum());
        peak_count = peak_count.max(now.len());
    }
    stop.store(1, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer failed");
    }
    let total: u64 = seen_segments.values().sum();
    eprintln!(
        "{} writes; {} segments ({total} bytes) seen; peak {peak_count} segments, {peak_bytes} bytes",
        writes.load(Ordering::Relaxed),
        seen_segments.len()
    );
    assert!(
        seen_segments.len() >= 20,
        "the load filled too few segments to tell"
    );
    assert!(
        peak_bytes * 2 <= total,
        "the log held {peak_bytes} of the {total} bytes ever written at once"
    );

    // Two more snapshots: the second began after the last write.
    let written_before = versions(&auto).0;
    let later = poll(Duration::from_secs(60), || {
        let (complete, _) = versions(&auto);
        let new = complete
            .iter()
            .filter(|v| !written_before.contains(v))
            .count();
        (new >= 2).then_some(())
    });
    assert!(later.is_some(), "no snapshots after the writes");

    // Between two snapshots: `keep` complete versions, no partial one, and
    // the log holds nothing the newest one covers but at most the one
    // segment per shard it ends in.
    let mut last_state = String::new();
    let settled = poll(Duration::from_secs(20), || {
        let (complete, partial) = versions(&auto);
        let newest = complete.last()?;
        let (generation, positions) = log_positions(newest)?;
        let segs = segments(dir.path());
        let bytes: u64 = segs.iter().map(|s| s.len).sum();
        last_state = format!(
            "complete {complete:?}, partial {partial:?}, positions g{generation} {positions:?}, log {segs:?}"
        );
        if !partial.is_empty() || complete.len() != keep {
            return None;
        }
        let bounded = (0..2u32).all(|shard| {
            let mine: Vec<&Segment> = segs.iter().filter(|s| s.shard == shard).collect();
            mine.iter().all(|s| s.generation == generation)
                && mine
                    .iter()
                    .filter(|s| s.first_seq <= positions[shard as usize])
                    .count()
                    <= 1
                && mine
                    .iter()
                    .all(|s| s.first_seq <= positions[shard as usize])
        });
        (bounded && bytes <= 2 * (segment_bytes + 64 * 1024)).then_some(())
    });
    assert!(settled.is_some(), "{last_state}");
    eprintln!("{last_state}; persist dir {} bytes", tree_bytes(dir.path()));
}

// ---------------------------------------------------------------------------
// a clean stop

/// Everything a client sees of a session (SH_INFO's remaining time aside).
fn observe(c: &mut Client, tkn: u64) -> String {
    let get = c.call(&format!(
        r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a","b","c","n"],"withVersion":true}}}}"#
    ));
    let mut info = c.call(&format!(r#"{{"SH_INFO":{{"tkn":{tkn}}}}}"#));
    if let Some(expiry) = info.get_mut("expiry").and_then(|e| e.as_object_mut()) {
        expiry.remove("remaining");
        expiry.remove("lifetimeRemaining");
    }
    format!("{get} {info}")
}

#[test]
fn a_clean_stop_recovers_every_session_key_and_version() {
    let dir = TempDir::new("dur-clean");
    let mut server = persistent(dir.path(), &[]);
    let mut c = server.client();
    let mut tkns = Vec::new();
    for spec in [
        r#"{"name":"shared","shared":true}"#,
        r#"{"owner":"alice","keys":{"a":[1,{"x":null}]}}"#,
        r#"{"expiry":{"duration":600,"extendOnGet":false,"deleteSession":false}}"#,
        r#"{"expiry":{"duration":900,"maxLifetime":3600}}"#,
        r#"{}"#,
    ] {
        tkns.push(c.new_session(spec));
    }
    let set = |c: &mut Client, tkn: u64, keys: &str| {
        let r = c.call(&format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{keys}}}}}"#));
        assert_eq!(st(&r), 1, "{r}");
    };
    for &tkn in &tkns {
        set(&mut c, tkn, r#"{"b":"before the snapshot","c":1.5E3}"#);
    }
    // A snapshot of the snapshot dataset, then more changes in the log only.
    assert_eq!(st(&c.call(r#"{"SH_SAVE":{"name":"auto"}}"#)), 121);
    set(&mut c, tkns[0], r#"{"b":"after"}"#);
    c.call(&format!(
        r#"{{"SH_RMV":{{"tkn":{},"keys":["c"]}}}}"#,
        tkns[1]
    ));
    c.call(&format!(
        r#"{{"SH_INCR":{{"tkn":{},"key":"n","by":7}}}}"#,
        tkns[2]
    ));
    c.call(&format!(r#"{{"SH_CLEAR":{{"tkn":{}}}}}"#, tkns[3]));
    let ended = c.new_session("{}");
    set(&mut c, ended, r#"{"a":1}"#);
    assert_eq!(
        st(&c.call(&format!(r#"{{"SH_END":{{"tkn":{ended}}}}}"#))),
        1
    );
    let seen: Vec<String> = tkns.iter().map(|&t| observe(&mut c, t)).collect();
    drop(c);
    assert!(server.terminate().success());

    let server = persistent(dir.path(), &[]);
    assert_eq!(recovered_sessions(&server), tkns.len() as u64);
    let mut c = server.client();
    for (tkn, before) in tkns.iter().zip(&seen) {
        assert_eq!(&observe(&mut c, *tkn), before);
    }
    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{ended},"keys":["a"]}}}}"#));
    assert_eq!(st(&r), SESSION_NOT_EXIST, "{r}");
    let r = c.call(r#"{"SH_OPEN":{"name":"shared"}}"#);
    assert_eq!(r["tkn"].as_u64(), Some(tkns[0]), "{r}");
    let r = c.call(r#"{"SH_OWNER_SESSIONS":{"owner":"alice"}}"#);
    assert_eq!(
        r["tkns"].as_array().map(|a| a.len()),
        Some(1),
        "the owner index is rebuilt: {r}"
    );
    let r = c.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(r["totalSessions"].as_u64(), Some(tkns.len() as u64));
    // The recovered state is itself durable: a second restart sees it.
    drop(c);
    drop(server);
    let server = persistent(dir.path(), &[]);
    let mut c = server.client();
    for (tkn, before) in tkns.iter().zip(&seen) {
        assert_eq!(&observe(&mut c, *tkn), before, "second restart");
    }
}

/// A start after recovery writes a checkpoint, which is a save of the
/// snapshot dataset like any other: a crash loop keeps `--snapshot-keep`
/// versions, not one more per start.
#[test]
fn restarts_keep_only_snapshot_keep_checkpoints() {
    let dir = TempDir::new("dur-restart-loop");
    let keep = [
        "--snapshot-keep",
        "1",
        "--snapshot-every",
        "0",
        "--log-fsync",
        "always",
    ];
    let tkn = {
        let server = persistent(dir.path(), &keep);
        let mut c = server.client();
        c.new_session(r#"{"keys":{"a":1}}"#)
    };
    for start in 1..=4 {
        let mut server = persistent(dir.path(), &keep);
        assert_eq!(recovered_sessions(&server), 1, "start {start}");
        let mut c = server.client();
        let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
        assert_eq!(st(&r), 1, "start {start}: {r}");
        server.child.kill().unwrap();
        server.wait_exit();
        let (complete, partial) = versions(&dir.path().join("auto"));
        assert_eq!(complete.len(), 1, "start {start}: {complete:?}");
        assert!(partial.is_empty(), "start {start}: {partial:?}");
    }
}

/// Sessions a start-up `--load-name` added are logged at once, even on a
/// shard that then sees no request: a kill soon after keeps them all.
#[test]
fn a_start_up_load_is_logged_before_any_request() {
    let dir = TempDir::new("dur-load-name");
    let mut tokens = Vec::new();
    {
        let server = persistent(dir.path(), &["--log-fsync", "off", "--snapshot-every", "0"]);
        // Sessions are made on the shard of the connection that asks.
        for (mut c, first) in one_client_per_shard(&server, 2) {
            tokens.push(first);
            for _ in 0..20 {
                tokens.push(c.new_session("{}"));
            }
        }
        let mut c = server.client();
        for (i, tkn) in tokens.iter().enumerate() {
            let r = c.call(&format!(
                r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"i":{i}}}}}}}"#
            ));
            assert_eq!(st(&r), 1, "{r}");
        }
        assert_eq!(st(&c.call(r#"{"SH_SAVE":{"name":"prod"}}"#)), 121);
    }
    let shards: BTreeSet<usize> = tokens.iter().map(|&t| shard_of(t, 2)).collect();
    assert_eq!(shards.len(), 2, "the sessions are on both shards");
    // A fresh log: the dataset is the only source.
    let _ = std::fs::remove_dir_all(dir.path().join("log"));
    {
        let mut server = persistent(
            dir.path(),
            &["--load-name", "prod", "--snapshot-every", "0"],
        );
        // No request at all: the loaded records must still reach the log.
        std::thread::sleep(Duration::from_millis(500));
        server.child.kill().unwrap();
        server.wait_exit();
    }
    let server = persistent(dir.path(), &["--snapshot-every", "0"]);
    assert_eq!(recovered_sessions(&server), tokens.len() as u64);
    let mut c = server.client();
    for (i, tkn) in tokens.iter().enumerate() {
        let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["i"]}}}}"#));
        assert_eq!(r["keys"]["i"].as_u64(), Some(i as u64), "{r}");
    }
}
