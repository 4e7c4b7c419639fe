//! Limits through the real binary: connection limit, many connections,
//! backpressure on clients that do not read, and the memory limit.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{Client, Server, body, raw, read_to_close, rss_kib, st};
use simd_json::prelude::*;
use tungstenite::Message;

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn connections_past_the_limit_are_refused_cleanly() {
    let server = Server::start(&["--shards", "2", "--max-connections", "5"]);
    let mut clients: Vec<Client> = (0..5).map(|_| server.client()).collect();
    // Full: a WebSocket client is told so, a probe still gets its answer.
    let mut extra = raw(server.addr);
    extra.write_all(UPGRADE).unwrap();
    let reply = String::from_utf8_lossy(&read_to_close(&mut extra)).to_string();
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply:?}");
    let mut probe = raw(server.addr);
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reply = String::from_utf8_lossy(&read_to_close(&mut probe)).to_string();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    // Both shards have let the two go (SV_INFO counts connections).
    let deadline = Instant::now() + Duration::from_secs(10);
    while clients[0].call(r#"{"SV_INFO":{}}"#)["connections"].as_u64() != Some(5) {
        assert!(Instant::now() < deadline, "the refused connections stayed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The room kept for probes is small: silent connections fill it, and
    // the ones past it are refused at once.
    let mut silent: Vec<TcpStream> = (0..12).map(|_| raw(server.addr)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut refused = 0;
    for s in &mut silent {
        s.set_nonblocking(true).unwrap();
        let mut head = [0u8; 12];
        let read = std::io::Read::read(s, &mut head);
        if matches!(read, Ok(12)) && head.starts_with(b"HTTP/1.1 503") {
            refused += 1;
        }
    }
    assert_eq!(refused, 4, "12 silent connections, 8 places for probes");
    drop(silent);
    for c in &mut clients {
        assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
    }
    // A place frees when a client leaves.
    drop(clients.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = raw(server.addr);
        s.write_all(UPGRADE).unwrap();
        let mut head = [0u8; 12];
        let n = std::io::Read::read(&mut s, &mut head).unwrap_or(0);
        if head[..n].starts_with(b"HTTP/1.1 101") {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn four_thousand_connections_at_once() {
    let server = Server::start(&["--shards", "2"]);
    let mut clients: Vec<Client> = Vec::with_capacity(4000);
    for _ in 0..4000 {
        clients.push(server.client());
    }
    for (i, c) in clients.iter_mut().enumerate().step_by(97) {
        let tkn = c.new_session("{}");
        let r = c.call(&format!(
            r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"i":{i}}}}}}}"#
        ));
        assert_eq!(st(&r), 1);
    }
    let r = clients[0].call(r#"{"SV_INFO":{}}"#);
    assert_eq!(r["connections"].as_u64(), Some(4000));
}

#[test]
fn a_client_that_never_reads_cannot_grow_server_memory() {
    let server = Server::start(&["--shards", "2", "--max-output-buffer", "1048576"]);
    let pid = server.child.id();
    let mut setup = server.client();
    let tkn = setup.new_session("{}");
    let value = "x".repeat(100 * 1024);
    setup.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"v":"{value}"}}}}}}"#
    ));
    let rss_before = rss_kib(pid);

    // 2000 requests whose answers total 200 MiB, and no reading.
    let mut greedy = server.client();
    let get = format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["v"]}}}}"#);
    for _ in 0..2000 {
        greedy.ws.write(Message::text(get.clone())).unwrap();
    }
    greedy.flush();
    std::thread::sleep(Duration::from_millis(1500));
    let grown_mib = rss_kib(pid).saturating_sub(rss_before) / 1024;
    eprintln!("a client that never reads: server RSS grew by {grown_mib} MiB");
    assert!(
        grown_mib < 64,
        "server grew by {grown_mib} MiB for one client"
    );

    // Everyone else is served meanwhile (a blocked server would trip the
    // client's read timeout).
    let mut other = server.client();
    for _ in 0..20 {
        assert_eq!(st(&other.call(r#"{"SH_INFO_ALL":{}}"#)), 1);
    }

    // When the client reads again it gets every answer, in order.
    for _ in 0..2000 {
        let r = greedy.recv_json();
        let body = body(&r, "SH_GET_RSP");
        assert_eq!(body["keys"]["v"].as_str().map(str::len), Some(value.len()));
    }
}

#[test]
fn memory_limit_refuses_writes_with_150_and_keeps_reads_and_deletes() {
    let server = Server::start(&["--shards", "2", "--max-memory", "200000"]);
    let mut c = server.client();
    let tkn = c.new_session("{}");
    let chunk = "y".repeat(10_000);
    let mut stored = 0;
    let refused = loop {
        let r = c.call(&format!(
            r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"k{stored}":"{chunk}"}}}}}}"#
        ));
        match st(&r) {
            1 => stored += 1,
            150 => break r,
            other => panic!("unexpected status {other}: {r}"),
        }
        assert!(stored < 100, "the limit never applied");
    };
    assert!(refused["m"].as_str().is_some());
    assert_eq!(refused["tkn"].as_u64(), Some(tkn));
    // Nothing of the refused write is there; reads work.
    let r = c.call(&format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#));
    assert_eq!(r["cnt"].as_u64(), Some(stored));
    let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["k0"]}}}}"#));
    assert_eq!(r["keys"]["k0"].as_str().map(str::len), Some(chunk.len()));
    let info = c.call(r#"{"SV_INFO":{}}"#);
    assert_eq!(info["maxMemory"].as_u64(), Some(200_000));
    assert!(info["memoryUsed"].as_u64().unwrap() <= 200_000);
    // Deleting makes room again.
    c.call(&format!(
        r#"{{"SH_RMV":{{"tkn":{tkn},"keys":["k0","k1"]}}}}"#
    ));
    let r = c.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"again":"{chunk}"}}}}}}"#
    ));
    assert_eq!(st(&r), 1);
    assert_eq!(st(&c.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#))), 1);
}

#[test]
fn a_handshake_not_finished_in_10_s_is_dropped() {
    let server = Server::start(&["--shards", "2"]);
    let mut slow = raw(server.addr);
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    // Dropped without a response; read_to_close returns at the close.
    let reply = read_to_close(&mut slow);
    assert!(reply.is_empty(), "{reply:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(9), "dropped after {waited:?}");
    let mut c = server.client();
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
}

#[test]
fn unknown_tokens_are_counted_for_operators() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = server.client();
    for tkn in 1..=5 {
        let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
        assert_eq!(st(&r), 100);
    }
    let r = c.call(r#"{"SV_INFO":{}}"#);
    assert_eq!(r["sessionNotExist"].as_u64(), Some(5));
}

#[test]
fn a_client_stuck_over_the_output_limit_is_disconnected() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--max-output-buffer",
        "65536",
        "--output-stall-timeout",
        "1",
    ]);
    let mut setup = server.client();
    let tkn = setup.new_session("{}");
    let value = "x".repeat(100 * 1024);
    setup.call(&format!(
        r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"v":"{value}"}}}}}}"#
    ));
    let mut greedy = server.client();
    let get = format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["v"]}}}}"#);
    for _ in 0..500 {
        greedy.ws.write(Message::text(get.clone())).unwrap();
    }
    greedy.flush();
    // Wait for the cut (about a second) without reading: reading would
    // unstall it. The server's connection count shows when it happens.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = setup.call(r#"{"SV_INFO":{}}"#);
        if r["connections"].as_u64() == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "a stuck client was kept: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // It reads what was sent before the cut, then the connection ends.
    let mut answered = 0;
    while let Ok(message) = greedy.ws.read() {
        if message.is_text() {
            answered += 1;
        }
    }
    assert!(
        answered < 500,
        "a stuck client was kept: {answered} answers"
    );
    assert_eq!(st(&setup.call(r#"{"SV_INFO":{}}"#)), 1);
}

/// `--max-memory` for the two tests below: small enough for a debug build
/// to fill quickly, large enough that chunks are 1 MiB.
const BUDGET: u64 = 64 << 20;

/// Fills session `tkn` with 64 KiB values until a write is refused with
/// 150; returns how many keys it took.
fn fill(c: &mut Client, tkn: u64, prefix: &str) -> usize {
    let value = "v".repeat(64 * 1024);
    let mut stored = 0;
    loop {
        let r = c.call(&format!(
            r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"{prefix}{stored}":"{value}"}}}}}}"#
        ));
        match st(&r) {
            1 => stored += 1,
            150 => return stored,
            other => panic!("unexpected status {other}: {r}"),
        }
        assert!(stored < 2000, "the limit never applied");
    }
}

fn memory_used(c: &mut Client) -> u64 {
    let info = c.call(r#"{"SV_INFO":{}}"#);
    assert_eq!(info["maxMemory"].as_u64(), Some(BUDGET));
    let used = info["memoryUsed"].as_u64().unwrap();
    assert!(used <= BUDGET, "{used} past the limit");
    used
}

#[test]
fn one_session_can_fill_the_whole_server_wide_limit_and_freed_bytes_move_between_shards() {
    let limit = BUDGET.to_string();
    let server = Server::start(&["--shards", "2", "--max-memory", &limit]);
    let mut pair = crate::support::one_client_per_shard(&server, 2).into_iter();
    let (mut a, a_tkn) = pair.next().unwrap();
    let (mut b, b_tkn) = pair.next().unwrap();
    // One session lives on one shard, and may still take nearly all of it
    // (an equal share per shard would stop it at half).
    let stored = fill(&mut a, a_tkn, "a");
    let used = memory_used(&mut a);
    assert!(used >= BUDGET / 10 * 9, "refused at {used} of {BUDGET}");
    // The other shard has at most the chunk it took for its session left.
    let spare = fill(&mut b, b_tkn, "b");
    assert!(spare <= 16, "{spare} keys of 64 KiB in a 1 MiB chunk");
    let half: Vec<String> = (0..stored / 2).map(|i| format!(r#""a{i}""#)).collect();
    let r = a.call(&format!(
        r#"{{"SH_RMV":{{"tkn":{a_tkn},"keys":[{}]}}}}"#,
        half.join(",")
    ));
    assert_eq!(st(&r), 1, "{r}");
    // No waiting: the shard hands freed bytes back as it frees them.
    let taken = fill(&mut b, b_tkn, "c");
    assert!(
        taken * 10 >= stored / 2 * 9,
        "{taken} of {} freed",
        stored / 2
    );
    let used = memory_used(&mut b);
    assert!(used >= BUDGET / 10 * 9, "refused at {used} of {BUDGET}");
}

#[test]
fn sessions_on_both_shards_written_unevenly_reach_the_server_wide_limit() {
    let limit = BUDGET.to_string();
    let server = Server::start(&["--shards", "2", "--max-memory", &limit]);
    let mut sessions = Vec::new();
    for (mut c, tkn) in crate::support::one_client_per_shard(&server, 2) {
        let mut tkns = vec![tkn];
        for _ in 0..7 {
            tkns.push(c.new_session("{}"));
        }
        sessions.push((c, tkns));
    }
    // Three writes on the first shard for each on the second, spread over
    // each shard's sessions, until the first refusal anywhere.
    let value = "v".repeat(64 * 1024);
    let mut written = 0usize;
    'fill: loop {
        for (shard, (c, tkns)) in sessions.iter_mut().enumerate() {
            for _ in 0..if shard == 0 { 3 } else { 1 } {
                let tkn = tkns[written % tkns.len()];
                let r = c.call(&format!(
                    r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"k{written}":"{value}"}}}}}}"#
                ));
                match st(&r) {
                    1 => written += 1,
                    150 => break 'fill,
                    other => panic!("unexpected status {other}: {r}"),
                }
                assert!(written < 2000, "the limit never applied");
            }
        }
    }
    let used = memory_used(&mut sessions[0].0);
    assert!(used >= BUDGET / 10 * 9, "refused at {used} of {BUDGET}");
}
