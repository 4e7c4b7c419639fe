//! The HTTP endpoints on the WebSocket port, through the real binary:
//! probes, the metrics a scrape shows, and readiness while start-up loads.
//! (The Python suite parses the exposition with Prometheus's own parser.)

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// One HTTP GET on a fresh plain connection: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let answer = Connector { addr, tls: None }.get(path, None);
    (answer.status, answer.body)
}

/// The value of the sample line that starts with `sample` (name and labels
/// as the exposition writes them); 0 when absent.
fn sample(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

#[test]
fn probes_and_metrics_answer_beside_websocket_and_other_paths_keep_400() {
    let server = Server::start(&["--shards", "2"]);
    assert_eq!(get(server.addr, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(server.addr, "/readyz"), (200, "ready\n".to_string()));
    let (status, text) = get(server.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE nemesisdb_commands counter"));
    for path in ["/", "/metricsx", "/healthz/x"] {
        assert_eq!(get(server.addr, path).0, 400, "{path}");
    }
    // An upgrade on an endpoint's path is still a WebSocket.
    let mut client = server.client();
    assert!(client.new_session("{}") > 0);
}

#[test]
fn a_scrape_counts_answers_by_command_and_status_across_shards() {
    let server = Server::start(&["--shards", "2"]);
    let mut pairs = one_client_per_shard(&server, 2);
    let (before_status, before) = get(server.addr, "/metrics");
    assert_eq!(before_status, 200);
    let tokens: Vec<u64> = pairs.iter().map(|(_, t)| *t).collect();
    // Each client reads its own session and the other shard's.
    for (client, _) in &mut pairs {
        for &tkn in &tokens {
            for _ in 0..5 {
                let r = client.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
                assert_eq!(st(&r), 1);
            }
        }
        let r = client.call(r#"{"SH_GET":{"tkn":12345,"keys":["a"]}}"#);
        assert_eq!(st(&r), 100);
        client.call(r#"{"SH_NOPE":{}}"#);
    }
    let (_, after) = get(server.addr, "/metrics");
    let delta = |s: &str| sample(&after, s) - sample(&before, s);
    assert_eq!(
        delta(r#"nemesisdb_commands_total{command="SH_GET",status="1"}"#),
        20.0
    );
    assert_eq!(
        delta(r#"nemesisdb_commands_total{command="SH_GET",status="100"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"nemesisdb_commands_total{command="unknown",status="10"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"nemesisdb_command_duration_seconds_count{command="SH_GET"}"#),
        22.0
    );
    // The other shard's session, 5 times from each side; the missing
    // token's shard may be either.
    let crossed = delta("nemesisdb_cross_shard_requests_total");
    assert!((10.0..=12.0).contains(&crossed), "{crossed}");
    assert!(delta("nemesisdb_session_not_exist_total") == 2.0);
    assert_eq!(sample(&after, r#"nemesisdb_sessions{shard="0"}"#), 1.0);
    assert_eq!(sample(&after, r#"nemesisdb_sessions{shard="1"}"#), 1.0);
    assert!(delta("nemesisdb_bytes_received_total") > 0.0);
}

#[test]
fn readiness_is_503_while_a_large_load_runs_and_health_is_200() {
    let dir = TempDir::new("readiness");
    let persist = ["--persist-path", dir.arg(), "--log-fsync", "off"];
    {
        let server = Server::start(&[&persist[..], &["--shards", "2"]].concat());
        let mut client = server.client();
        let value = "v".repeat(200);
        let batch = 2000;
        for _ in 0..150 {
            for _ in 0..batch {
                client.queue_text(format!(
                    r#"{{"SH_NEW":{{"keys":{{"a":"{value}","b":"{value}","c":"{value}"}}}}}}"#
                ));
            }
            client.flush();
            for _ in 0..batch {
                client.recv_text();
            }
        }
        let r = client.call(r#"{"SH_SAVE":{"name":"big"}}"#);
        assert_eq!(st(&r), 121);
    }
    // A port of our own: the start-up line comes only after the load.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let port_arg = port.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nemesisdb"))
        .args(["--ip", "127.0.0.1", "--port", &port_arg, "--shards", "2"])
        .args(persist)
        .args(["--load-name", "big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nemesisdb");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut loading_seen = false;
    let mut ready = false;
    while Instant::now() < deadline && !ready {
        if std::net::TcpStream::connect(addr).is_err() {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        match get(addr, "/readyz") {
            (503, _) => {
                if !loading_seen {
                    assert_eq!(get(addr, "/healthz"), (200, "ok\n".to_string()));
                }
                loading_seen = true;
            }
            (200, _) => ready = true,
            other => panic!("readyz answered {other:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "never ready");
    assert!(
        loading_seen,
        "300000 sessions loaded before the first probe: no 503 seen"
    );
}
