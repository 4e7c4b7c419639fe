//! Smoke test of the load generator against the real server: every workload
//! runs a short `--requests` run with `--json`, and must finish with exactly
//! the operations asked for and no errors. Also against Redis when a
//! `redis-server` is installed (skipped otherwise).
//!
//! The server is another package of the workspace, so its binary is found in
//! the workspace's target directory (`cargo test --workspace` or `cargo build`
//! puts it there).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const WORKLOADS: &[&str] = &[
    "get",
    "set",
    "mixed",
    "sliding",
    "touch",
    "incr",
    "cas",
    "lifecycle",
    "lifecycle-classic",
    "logout-all",
    "expiry",
    "populate",
];

/// Kills the child when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug").join("nemesisdb")
}

/// Starts `nemesisdb --port 0 --shards 2` and returns it with its port.
fn start_server() -> (Guard, u16) {
    start_server_with(&[])
}

/// The same with `extra` flags.
fn start_server_with(extra: &[&str]) -> (Guard, u16) {
    start_server_sharded(2, extra)
}

/// `nemesisdb --port 0 --shards <shards>` with `extra` flags.
fn start_server_sharded(shards: usize, extra: &[&str]) -> (Guard, u16) {
    let bin = server_binary();
    assert!(
        bin.exists(),
        "server binary {} is missing: build it first with `cargo build -p nemesisdb` \
         (or set CARGO_TARGET_DIR to where it was built)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .args(["--port", "0", "--shards", &shards.to_string()])
        .args(extra)
        // The runner's RUST_LOG could hide the line we wait for.
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("stdout is piped");
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                let _ = tx.send(digits.parse::<u16>().ok());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(10))
        .ok()
        .flatten()
        .expect("server printed no `listening on 127.0.0.1:<port>` line within 10 s");
    (guard, port)
}

/// Runs the generator with a watchdog and returns its `--json` object.
fn loadtest(args: &[&str]) -> serde_json::Value {
    loadtest_and_stderr(args).0
}

/// The same, with what loadtest said on stderr.
fn loadtest_and_stderr(args: &[&str]) -> (serde_json::Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadtest starts");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait works").is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("loadtest {args:?} ran over 60 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output is collected");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let last = stdout.lines().last().unwrap_or_default();
    let v = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("loadtest {args:?}: last line {last:?} is not JSON ({e}); stderr: {stderr}")
    });
    (v, stderr)
}

fn check(v: &serde_json::Value, requests: u64, what: &str) {
    assert_eq!(v["errors"], 0, "{what}: {v}");
    assert_eq!(v["ops"], requests, "{what}: {v}");
    let p50 = v["latency_us"]["p50"].as_f64().unwrap_or(-1.0);
    let max = v["latency_us"]["max"].as_f64().unwrap_or(-1.0);
    assert!(p50 > 0.0 && max >= p50, "{what}: latency {v}");
    assert!(
        v["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{what}: {v}"
    );
}

fn every_workload(url: &str) {
    for w in WORKLOADS {
        let v = loadtest(&[
            "--url",
            url,
            "--workload",
            w,
            "--requests",
            "1500",
            "--sessions",
            "300",
            "--connections",
            "6",
            "--pipeline",
            "4",
            "--threads",
            "2",
        ]);
        check(&v, 1500, &format!("{url} {w}"));
        assert_eq!(v["workload"], *w);
        assert_eq!(v["target"], url);
    }
}

#[test]
fn every_workload_against_the_server() {
    let (_server, port) = start_server();
    every_workload(&format!("ws://127.0.0.1:{port}/"));
}

#[test]
fn open_loop_and_report_files() {
    let (_server, port) = start_server();
    let url = format!("ws://127.0.0.1:{port}/");
    let dir = std::env::temp_dir().join(format!("loadtest-smoke-{}", std::process::id()));
    let dir_s = dir.to_string_lossy().to_string();
    let v = loadtest(&[
        "--url",
        &url,
        "--workload",
        "mixed",
        "--requests",
        "600",
        "--rate",
        "2000",
        "--connections",
        "4",
        "--threads",
        "1",
        "--out",
        &dir_s,
    ]);
    check(&v, 600, "open loop");
    // 600 operations at 2000/s take about 0.3 s: the rate was kept.
    let secs = v["duration_s"].as_f64().unwrap_or(0.0);
    assert!(secs > 0.25, "open loop ran too fast: {v}");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("report.json")).expect("report.json is written"),
    )
    .expect("report.json is JSON");
    assert_eq!(report["summary"]["ops"], 600);
    assert!(report["series"].as_array().is_some_and(|s| !s.is_empty()));
    let svg = std::fs::read_to_string(dir.join("latency.svg")).expect("latency.svg is written");
    assert!(svg.starts_with("<svg") && svg.contains("latency"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--scrape`: the server must have timed and answered exactly the run's
/// SH_GETs (set-up and teardown are outside the two scrapes); a URL that
/// is not a metrics endpoint gives a warning and no server figures, and the
/// run still stands.
#[test]
fn scrape_reports_the_servers_view_or_says_why_not() {
    let (_server, port) = start_server();
    let url = format!("ws://127.0.0.1:{port}/");
    let run = |scrape: &str| {
        loadtest_and_stderr(&[
            "--url",
            &url,
            "--workload",
            "get",
            "--requests",
            "500",
            "--sessions",
            "50",
            "--connections",
            "2",
            "--threads",
            "1",
            "--scrape",
            scrape,
        ])
    };
    let (v, _) = run(&format!("http://127.0.0.1:{port}/metrics"));
    check(&v, 500, "get with --scrape");
    let s = &v["server"];
    assert_eq!(s["latency"]["requests"], 500, "{v}");
    assert_eq!(s["commands"]["SH_GET"]["requests"], 500, "{v}");
    assert_eq!(s["answered"]["SH_GET"]["1"], 500, "{v}");
    assert!(s["latency"]["p99_us"].as_f64().unwrap_or(0.0) > 0.0, "{v}");

    // Not a metrics endpoint: the server answers 400.
    let elsewhere = format!("http://127.0.0.1:{port}/nothing");
    let (v, stderr) = run(&elsewhere);
    check(&v, 500, "get with --scrape of a wrong path");
    assert!(v.get("server").is_none(), "{v}");
    assert!(
        stderr.contains(&format!("loadtest: --scrape {elsewhere}: ")),
        "{stderr}"
    );
}

/// `--locality`: the server's own count of forwarded requests over the
/// timed run is 0 for `local` and every request for `remote`; `remote`
/// against one shard is refused before anything runs.
#[test]
fn locality_keeps_requests_home_or_sends_them_all_across() {
    let (_server, port) = start_server();
    let url = format!("ws://127.0.0.1:{port}/");
    let scrape = format!("http://127.0.0.1:{port}/metrics");
    for (locality, workload) in [
        ("local", "get"),
        ("remote", "get"),
        ("local", "mixed"),
        ("remote", "cas"),
    ] {
        let v = loadtest(&[
            "--url",
            &url,
            "--workload",
            workload,
            "--locality",
            locality,
            "--requests",
            "600",
            "--sessions",
            "64",
            "--connections",
            "8",
            "--pipeline",
            "4",
            "--threads",
            "2",
            "--scrape",
            &scrape,
        ]);
        check(&v, 600, &format!("{workload} --locality {locality}"));
        let requests_per_op = if workload == "cas" { 2 } else { 1 };
        // cas may lose and retry: every attempt's two requests cross too.
        let all = v["server"]["latency"]["requests"].as_u64().unwrap_or(0);
        assert!(all >= 600 * requests_per_op, "{v}");
        let want = if locality == "local" { 0 } else { all };
        assert_eq!(
            v["server"]["forwarded"].as_u64(),
            Some(want),
            "{workload} --locality {locality}: {v}"
        );
    }

    let (_one, port) = start_server_sharded(1, &[]);
    let url = format!("ws://127.0.0.1:{port}/");
    let said = loadtest_refused(&["--url", &url, "--locality", "remote", "--requests", "10"]);
    assert!(said.contains("runs 1 shard"), "{said}");
    let v = loadtest(&[
        "--url",
        &url,
        "--locality",
        "local",
        "--requests",
        "100",
        "--sessions",
        "10",
        "--connections",
        "2",
    ]);
    check(&v, 100, "get --locality local on one shard");
}

/// A running `redis-server`, killed on drop. Tests that start one run one
/// at a time: a port found free by one test may be handed to the other
/// before either server binds it, and the loser's server exits while its
/// test talks to the winner's.
struct Redis {
    _server: Guard,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static REDIS_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts `redis-server` on a free port of 127.0.0.1 with `extra` flags;
/// `None` when it is not installed.
fn start_redis(extra: &[&str]) -> Option<(Redis, u16)> {
    start_redis_listening(|port| {
        ["--port", port]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    })
}

/// The same with the flags `listen` gives for a free port (which must make
/// Redis accept on it).
fn start_redis_listening(listen: impl FnOnce(&str) -> Vec<String>) -> Option<(Redis, u16)> {
    let turn = REDIS_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("bound").port()
    };
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(listen(&port.to_string()))
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let mut redis = Guard(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Whoever answered, it must be ours.
    assert!(
        matches!(redis.0.try_wait(), Ok(None)),
        "redis-server exited (port {port} taken?)"
    );
    Some((
        Redis {
            _server: redis,
            _turn: turn,
        },
        port,
    ))
}

/// Against Redis too, when this machine has one (skipped otherwise).
#[test]
fn every_workload_against_redis_if_installed() {
    let Some((_redis, port)) = start_redis(&[]) else {
        eprintln!("redis-server is not installed: skipping the Redis smoke test");
        return;
    };
    every_workload(&format!("redis://127.0.0.1:{port}"));
}

/// `workload` on 2 sessions from 32 operation slots, so writes collide (cas
/// retries the ones that lost). Returns the `--json` object and report.json.
fn contended(url: &str, workload: &str, requests: u64) -> (serde_json::Value, serde_json::Value) {
    // Tests run in parallel: each run gets its own directory.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("loadtest-smoke-{}-{n}", std::process::id()));
    let dir_s = dir.to_string_lossy().to_string();
    let v = loadtest(&[
        "--url",
        url,
        "--workload",
        workload,
        "--requests",
        &requests.to_string(),
        "--sessions",
        "2",
        "--connections",
        "4",
        "--pipeline",
        "8",
        "--threads",
        "2",
        "--out",
        &dir_s,
    ]);
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("report.json")).expect("report.json is written"),
    )
    .expect("report.json is JSON");
    let _ = std::fs::remove_dir_all(&dir);
    (v, report)
}

/// Compare-and-set against the real server: lost writes (104) are retried,
/// not errors, and every operation completes once.
#[test]
fn cas_retries_lost_writes_against_the_server() {
    let (_server, port) = start_server();
    let (v, report) = contended(&format!("ws://127.0.0.1:{port}/"), "cas", 2000);
    check(&v, 2000, "cas on 2 sessions");
    assert!(report["retries"].as_u64().unwrap_or(0) > 0, "{report}");
}

/// HGET of a session's counter over a fresh RESP connection (absent: 0).
fn redis_counter(port: u16, key: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("redis is up");
    let req = format!(
        "*3\r\n$4\r\nHGET\r\n${}\r\n{key}\r\n$7\r\ncounter\r\n",
        key.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut reply = String::new();
    let mut chunk = [0u8; 256];
    while reply != "$-1\r\n" && reply.matches("\r\n").count() < 2 {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "redis closed");
        reply.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    reply
        .lines()
        .nth(1)
        .map_or(0, |l| l.parse().expect("a counter"))
}

/// The counters hold exactly one increment per completed operation: no
/// compare-and-set lost an update (two of one connection's operations
/// overlapping between WATCH and EXEC would), and none was applied twice.
/// DEL is renamed away so the untimed teardown leaves the counters to read
/// (each of its 2 DELs is an error).
#[test]
fn incr_and_cas_lose_no_update_on_redis_if_installed() {
    let Some((_redis, port)) = start_redis(&["--rename-command", "DEL", "NODEL"]) else {
        eprintln!("redis-server is not installed: skipping the Redis counter test");
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let mut expected = 0;
    for (workload, requests) in [("incr", 1000u64), ("cas", 2000)] {
        let (v, report) = contended(&url, workload, requests);
        assert_eq!(v["ops"], requests, "{workload}: {v}");
        assert_eq!(
            v["errors"], 2,
            "{workload}: only the teardown's DELs fail: {v}"
        );
        if workload == "cas" {
            assert!(report["retries"].as_u64().unwrap_or(0) > 0, "{report}");
        }
        expected += requests;
        let counted = redis_counter(port, "s:0") + redis_counter(port, "s:1");
        assert_eq!(counted, expected, "after {workload}");
    }
}

/// A fake Redis on a free port: `reply` maps each command's first bytes to
/// the reply it gets; `close_after` closes each connection after that many
/// commands. Lives until the test process ends.
fn fake_redis(reply: &'static [u8], close_after: Option<usize>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("bound").port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = vec![0u8; 65536];
                let mut seen = 0usize;
                let mut at_line_start = true;
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // Our commands' arguments never start with '*', so each
                    // '*' at a line start begins a command.
                    let mut out = Vec::new();
                    for &b in &buf[..n] {
                        if at_line_start && b == b'*' {
                            seen += 1;
                            if close_after.is_some_and(|c| seen > c) {
                                return;
                            }
                            out.extend_from_slice(reply);
                        }
                        at_line_start = b == b'\n';
                    }
                    if stream.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A bad reply is an error count, not a crash; a dead server ends the run.
#[test]
fn failures_are_counted_and_the_run_ends() {
    let port = fake_redis(b"-ERR nope\r\n", None);
    let url = format!("redis://127.0.0.1:{port}");
    let args = [
        "--url",
        &url,
        "--workload",
        "lifecycle",
        "--requests",
        "100",
    ];
    let v = loadtest(&[&args[..], &["--connections", "2", "--threads", "1"]].concat());
    assert_eq!(v["ops"], 100, "{v}");
    assert_eq!(
        v["errors"], 400,
        "every request of every operation failed: {v}"
    );

    let port = fake_redis(b":1\r\n", Some(10));
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let v = loadtest(&[
        "--url",
        &url,
        "--workload",
        "expiry",
        "--duration",
        "30",
        "--connections",
        "3",
    ]);
    assert!(started.elapsed() < Duration::from_secs(20), "{v}");
    assert!(v["errors"].as_u64().unwrap_or(0) >= 3, "{v}");
}

/// A fake server answering the way original NemesisDB servers do: SH_NEW and
/// SH_END echo `tkn`, SH_SET and SH_GET do not. With `new_tkn` false, SH_NEW
/// succeeds without the new session's token too (a server loadtest cannot
/// measure). Lives until the test process ends.
fn fake_original_nemesisdb(new_tkn: bool) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("bound").port();
    thread::spawn(move || {
        let mut next_token = 1u64;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let first = next_token;
            next_token += 1 << 32;
            thread::spawn(move || {
                let mut token = first;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                // The upgrade: answer with the accept key for the client's key.
                let head_end = loop {
                    let n = match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(i) = text.find("\r\n\r\n") {
                        break i + 4;
                    }
                };
                let text = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .expect("a websocket key")
                    .trim()
                    .to_string();
                let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                buf.drain(..head_end);
                loop {
                    let mut out = Vec::new();
                    // Whole masked client frames with a 7- or 16-bit length.
                    while buf.len() >= 2 {
                        let (len, at) = match buf[1] & 0x7F {
                            126 if buf.len() >= 4 => {
                                (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
                            }
                            126 => break,
                            n => (n as usize, 2),
                        };
                        if buf.len() < at + 4 + len {
                            break;
                        }
                        let opcode = buf[0] & 0x0F;
                        let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
                        let payload: Vec<u8> = buf[at + 4..at + 4 + len]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ mask[i % 4])
                            .collect();
                        buf.drain(..at + 4 + len);
                        if opcode == 0x8 {
                            return;
                        }
                        let request: serde_json::Value =
                            serde_json::from_slice(&payload).expect("requests are JSON");
                        let (cmd, body) = request
                            .as_object()
                            .and_then(|o| o.iter().next())
                            .expect("one command");
                        let tkn = &body["tkn"];
                        let answer = match cmd.as_str() {
                            "SH_NEW" => {
                                token += 1;
                                if new_tkn {
                                    serde_json::json!({"SH_NEW_RSP":{"st":1,"tkn":token}})
                                } else {
                                    serde_json::json!({"SH_NEW_RSP":{"st":1}})
                                }
                            }
                            "SH_SET" => serde_json::json!({"SH_SET_RSP":{"st":1}}),
                            "SH_GET" => serde_json::json!(
                                {"SH_GET_RSP":{"st":1,"keys":{"user":"v","cart":"v"}}}
                            ),
                            "SH_END" => serde_json::json!({"SH_END_RSP":{"st":1,"tkn":tkn}}),
                            other => panic!("the fake server has no {other}"),
                        };
                        let text = answer.to_string();
                        out.push(0x81);
                        if text.len() < 126 {
                            out.push(text.len() as u8);
                        } else {
                            out.push(126);
                            out.extend_from_slice(&(text.len() as u16).to_be_bytes());
                        }
                        out.extend_from_slice(text.as_bytes());
                    }
                    if !out.is_empty() && stream.write_all(&out).is_err() {
                        return;
                    }
                    let n = match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                }
            });
        }
    });
    port
}

/// Issue 21: replies without `tkn` (original NemesisDB for SH_SET and
/// SH_GET) are successes checked by command name and order, and loadtest
/// says there was no token in the reply instead of blaming the order.
#[test]
fn replies_without_a_token_are_not_errors() {
    let port = fake_original_nemesisdb(true);
    let url = format!("ws://127.0.0.1:{port}/");
    for w in ["get", "set", "lifecycle-classic"] {
        let (v, stderr) = loadtest_and_stderr(&[
            "--url",
            &url,
            "--workload",
            w,
            "--requests",
            "200",
            "--sessions",
            "50",
            "--connections",
            "2",
            "--pipeline",
            "4",
            "--threads",
            "1",
        ]);
        check(&v, 200, &format!("original server, {w}"));
        assert!(stderr.contains("no token in the reply"), "{w}: {stderr}");
        assert!(!stderr.contains("out of order"), "{w}: {stderr}");
    }
}

/// Issue 21: SH_NEW's token names the new session, so a reply without it
/// fails set-up, and loadtest says the reply had no token rather than that
/// replies came out of order.
#[test]
fn sh_new_without_a_token_is_said_so() {
    let port = fake_original_nemesisdb(false);
    let url = format!("ws://127.0.0.1:{port}/");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--url", &url, "--workload", "get", "--requests", "20"])
        .args(["--sessions", "10", "--connections", "1", "--threads", "1"])
        .output()
        .expect("loadtest runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no token in the reply"), "{stderr}");
    assert!(!stderr.contains("out of order"), "{stderr}");
}

/// Runs the generator expecting it to refuse its flags: exit status 2, and
/// what it said on stderr.
fn loadtest_refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("loadtest runs");
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A run's report.json, written into a directory of its own.
fn with_report(args: &[&str]) -> (serde_json::Value, serde_json::Value) {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("loadtest-events-{}-{n}", std::process::id()));
    let dir_s = dir.to_string_lossy().to_string();
    let v = loadtest(&[args, &["--out", &dir_s]].concat());
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("report.json")).expect("report.json is written"),
    )
    .expect("report.json is JSON");
    let _ = std::fs::remove_dir_all(&dir);
    (v, report)
}

/// A Redis command over a fresh connection; the reply as text.
fn redis_call(port: u16, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("redis is up");
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).expect("write");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&reply).to_string()
}

/// Redis keyspace notifications carry no time: `--subscribe` is refused
/// there, with the reason; expiry-events refuses a request count.
#[test]
fn subscribe_is_refused_for_redis() {
    let said = loadtest_refused(&["--url", "redis://127.0.0.1:1", "--subscribe"]);
    assert!(said.contains("--subscribe is for nemesisdb"), "{said}");
    let said = loadtest_refused(&["--workload", "expiry-events", "--requests", "10"]);
    assert!(said.contains("--requests"), "{said}");
}

/// expiry-events on Redis: every key's expired notification arrives, the
/// probe ran, and the server's notification setting is put back.
#[test]
fn expiry_events_against_redis_if_installed() {
    let Some((_redis, port)) = start_redis(&["--notify-keyspace-events", "Kg"]) else {
        eprintln!("redis-server is not installed: skipping the Redis expiry-events test");
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let (v, report) = with_report(&[
        "--url",
        &url,
        "--workload",
        "expiry-events",
        "--sessions",
        "3000",
        "--connections",
        "3",
        "--duration",
        "30",
    ]);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["workload"], "expiry-events");
    assert!(v["ops"].as_u64().unwrap_or(0) > 0, "the probe ran: {v}");
    let e = &report["events"];
    assert_eq!(e["expected"], 3000, "{e}");
    assert_eq!(e["received"], 3000, "{e}");
    assert_eq!(e["expired"], 3000, "{e}");
    assert_eq!((&e["lost"], &e["other"]), (&0.into(), &0.into()), "{e}");
    assert!(
        e["deadline_spread_ms"].as_u64().unwrap_or(9999) < 1000,
        "{e}"
    );
    assert!(e["lag_ms"]["max"].as_f64().unwrap_or(-1.0) >= 0.0, "{e}");
    let setting = redis_call(port, &["CONFIG", "GET", "notify-keyspace-events"]);
    assert!(
        setting.contains("gK") || setting.contains("Kg"),
        "{setting}"
    );
    // The probe's key went; the expiring ones expired.
    assert_eq!(redis_call(port, &["DBSIZE"]), ":0\r\n");
}

/// expiry-events on nemesisdb: every session's expired event arrives, none
/// lost, none before its deadline.
#[test]
fn expiry_events_against_the_server() {
    let (_server, port) = start_server();
    let url = format!("ws://127.0.0.1:{port}/");
    let (v, report) = with_report(&[
        "--url",
        &url,
        "--workload",
        "expiry-events",
        "--sessions",
        "3000",
        "--connections",
        "4",
        "--duration",
        "30",
    ]);
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["ops"].as_u64().unwrap_or(0) > 0, "the probe ran: {v}");
    let e = &report["events"];
    assert_eq!(e["received"], 3000, "{e}");
    assert_eq!(e["expired"], 3000, "{e}");
    assert_eq!(
        (&e["lost"], &e["other"], &e["early"], &e["untimed"]),
        (&0.into(), &0.into(), &0.into(), &0.into()),
        "{e}"
    );
    assert!(
        e["deadline_spread_ms"].as_u64().unwrap_or(9999) < 1100,
        "{e}"
    );
}

/// `--subscribe` beside lifecycle: each operation creates and ends one
/// session, so the subscriber sees one `created` and one `ended` per
/// operation, nothing lost.
#[test]
fn subscribe_sees_every_event_of_a_run() {
    let (_server, port) = start_server();
    let url = format!("ws://127.0.0.1:{port}/");
    let (v, report) = with_report(&[
        "--url",
        &url,
        "--workload",
        "lifecycle",
        "--requests",
        "2000",
        "--connections",
        "4",
        "--pipeline",
        "4",
        "--threads",
        "2",
        "--subscribe",
    ]);
    check(&v, 2000, "lifecycle with --subscribe");
    let e = &report["events"];
    assert_eq!(
        (&e["created"], &e["ended"]),
        (&2000.into(), &2000.into()),
        "{e}"
    );
    assert_eq!(e["received"], 4000, "{e}");
    assert_eq!((&e["lost"], &e["expired"]), (&0.into(), &0.into()), "{e}");
}

/// A throwaway certificate for 127.0.0.1 (rcgen, not a CA, so `--tls-ca`
/// takes it) in its own directory, removed on drop.
struct TestCert {
    dir: PathBuf,
}

impl TestCert {
    fn new(name: &str) -> TestCert {
        let dir = std::env::temp_dir().join(format!("loadtest-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("rcgen makes a certificate");
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("cert.pem");
        std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).expect("key.pem");
        TestCert { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().to_string()
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the generator and returns its exit code and stderr (for runs that
/// must fail).
fn loadtest_fails(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("loadtest runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// wss:// with users: every workload over TLS with Basic credentials
/// (verified against the test certificate), and `--scrape` over https with
/// them; a wrong password is refused at the upgrade.
#[test]
fn tls_and_users_against_the_server() {
    let cert = TestCert::new("tls-server");
    // sha256("s3cret")
    let users = r#"[{"name":"alice","passwordSha256":"1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0","role":"admin"}]"#;
    std::fs::write(cert.dir.join("users.json"), users).expect("users.json");
    let (cert_pem, key_pem, users_json) = (
        cert.file("cert.pem"),
        cert.file("key.pem"),
        cert.file("users.json"),
    );
    let (_server, port) = start_server_with(&[
        "--tls-cert",
        &cert_pem,
        "--tls-key",
        &key_pem,
        "--users",
        &users_json,
    ]);
    let url = format!("wss://127.0.0.1:{port}/");
    let tls = [
        "--tls-ca",
        &cert_pem,
        "--user",
        "alice",
        "--password",
        "s3cret",
    ];
    for w in ["get", "mixed", "cas", "lifecycle", "logout-all"] {
        let (v, stderr) = loadtest_and_stderr(
            &[
                &["--url", &url, "--workload", w][..],
                &[
                    "--requests",
                    "600",
                    "--sessions",
                    "100",
                    "--connections",
                    "4",
                ],
                &["--pipeline", "4", "--threads", "2"],
                &tls,
            ]
            .concat(),
        );
        check(&v, 600, &format!("{url} {w}"));
        assert!(stderr.contains("loadtest: tls: TLSv1_3 "), "{stderr}");
    }
    let scrape = format!("https://127.0.0.1:{port}/metrics");
    let (v, stderr) = loadtest_and_stderr(
        &[
            &["--url", &url, "--workload", "get", "--requests", "300"][..],
            &["--sessions", "50", "--connections", "2", "--threads", "1"],
            &["--scrape", &scrape],
            &tls,
        ]
        .concat(),
    );
    check(&v, 300, "get with --scrape over https");
    assert_eq!(v["server"]["answered"]["SH_GET"]["1"], 300, "{v} {stderr}");

    let (code, stderr) = loadtest_fails(&[
        "--url",
        &url,
        "--requests",
        "10",
        "--tls-ca",
        &cert_pem,
        "--user",
        "alice",
        "--password",
        "wrong",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("refused --user/--password"), "{stderr}");
    // Not told to trust the certificate: the bundled roots do not know it.
    let (code, stderr) = loadtest_fails(&["--url", &url, "--requests", "10"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("TLS handshake"), "{stderr}");
}

/// rediss:// against a Redis built with TLS, when this machine has one
/// (skipped otherwise): every workload, the certificate verified.
#[test]
fn every_workload_against_redis_over_tls_if_installed() {
    let cert = TestCert::new("tls-redis");
    let (cert_pem, key_pem) = (cert.file("cert.pem"), cert.file("key.pem"));
    // Only TLS is spoken: no plain port.
    let Some((_redis, tls_port)) = start_redis_listening(|port| {
        [
            "--port",
            "0",
            "--tls-port",
            port,
            "--tls-cert-file",
            &cert_pem,
            "--tls-key-file",
            &key_pem,
            "--tls-ca-cert-file",
            &cert_pem,
            "--tls-auth-clients",
            "no",
        ]
        .map(String::from)
        .to_vec()
    }) else {
        eprintln!("redis-server is not installed: skipping the Redis TLS smoke test");
        return;
    };
    let url = format!("rediss://127.0.0.1:{tls_port}");
    for w in WORKLOADS {
        let (v, stderr) = loadtest_and_stderr(&[
            "--url",
            &url,
            "--tls-ca",
            &cert_pem,
            "--workload",
            w,
            "--requests",
            "1000",
            "--sessions",
            "200",
            "--connections",
            "4",
            "--pipeline",
            "4",
            "--threads",
            "2",
        ]);
        check(&v, 1000, &format!("{url} {w}"));
        assert!(stderr.contains("loadtest: tls: TLSv1_3 "), "{stderr}");
    }
}

/// Mutual TLS: a server with `--tls-client-ca` takes loadtest's
/// `--tls-cert`/`--tls-key` (for the run and for `--scrape`), and refuses a
/// run without them.
#[test]
fn client_certificates_against_a_server_that_asks() {
    let cert = TestCert::new("mtls");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("a CA");
    let client_key = rcgen::KeyPair::generate().expect("a client key");
    let mut params = rcgen::CertificateParams::new(vec!["loadtest".to_string()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = params
        .signed_by(&client_key, &ca)
        .expect("a client certificate");
    std::fs::write(cert.dir.join("ca.pem"), ca.pem()).expect("ca.pem");
    std::fs::write(cert.dir.join("client.pem"), client.pem()).expect("client.pem");
    std::fs::write(cert.dir.join("client.key"), client_key.serialize_pem()).expect("client.key");
    let (cert_pem, key_pem, ca_pem) = (
        cert.file("cert.pem"),
        cert.file("key.pem"),
        cert.file("ca.pem"),
    );
    let (_server, port) = start_server_with(&[
        "--tls-cert",
        &cert_pem,
        "--tls-key",
        &key_pem,
        "--tls-client-ca",
        &ca_pem,
    ]);
    let url = format!("wss://127.0.0.1:{port}/");
    let scrape = format!("https://127.0.0.1:{port}/metrics");
    let (client_pem, client_key_pem) = (cert.file("client.pem"), cert.file("client.key"));
    let (v, stderr) = loadtest_and_stderr(&[
        "--url",
        &url,
        "--tls-ca",
        &cert_pem,
        "--tls-cert",
        &client_pem,
        "--tls-key",
        &client_key_pem,
        "--workload",
        "set",
        "--requests",
        "400",
        "--sessions",
        "50",
        "--connections",
        "2",
        "--threads",
        "1",
        "--scrape",
        &scrape,
    ]);
    check(&v, 400, "set with a client certificate");
    assert_eq!(v["server"]["answered"]["SH_SET"]["1"], 400, "{v} {stderr}");

    let (code, stderr) = loadtest_fails(&["--url", &url, "--tls-ca", &cert_pem, "--requests", "5"]);
    assert_eq!(code, Some(2), "{stderr}");
}
