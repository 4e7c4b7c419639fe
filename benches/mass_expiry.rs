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

use std::net::TcpStream;
use std::time::{Duration, Instant};

use nemesisdb::config::{Config, Flags};
use nemesisdb::server::Server;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn connect(addr: std::net::SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    tungstenite::client(format!("ws://{addr}/"), stream)
        .expect("handshake")
        .0
}

fn recv(ws: &mut Ws) -> String {
    loop {
        if let Message::Text(t) = ws.read().expect("read") {
            return t.to_string();
        }
    }
}

fn field_u64(text: &str, field: &str) -> u64 {
    let at = text.find(&format!("\"{field}\":")).expect(field) + field.len() + 3;
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("number")
}

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn main() {
    let sessions: usize = std::env::var("MASS_EXPIRY_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let flags = Flags {
        port: Some(0),
        shards: Some(1),
        ..Flags::default()
    };
    let config = Config::resolve(flags, &[0]).expect("config");
    let server = Server::start(&config).expect("start server");
    let addr = server.local_addr();
    let rss_start = rss_mib();

    // Every session's deadline lands in [t0 + horizon, t0 + horizon + 1):
    // a session created `e` seconds in gets horizon - floor(e) seconds.
    let horizon = 30u64;
    let t0 = Instant::now();
    let mut ws = connect(addr);
    let batch = 2000;
    let mut created = 0;
    while created < sessions {
        let n = batch.min(sessions - created);
        let elapsed = t0.elapsed().as_secs();
        assert!(elapsed + 2 < horizon, "populating took too long");
        let duration = horizon - elapsed;
        for _ in 0..n {
            ws.write(Message::text(format!(
                r#"{{"SH_NEW":{{"expiry":{{"duration":{duration},"deleteSession":true}}}}}}"#
            )))
            .unwrap();
        }
        ws.flush().unwrap();
        let tokens: Vec<u64> = (0..n).map(|_| field_u64(&recv(&mut ws), "tkn")).collect();
        for tkn in tokens {
            ws.write(Message::text(format!(
                r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"user":"u{tkn}","cart":[1,2,3]}}}}}}"#
            )))
            .unwrap();
        }
        ws.flush().unwrap();
        for _ in 0..n {
            recv(&mut ws);
        }
        created += n;
    }
    let populated = t0.elapsed();
    let rss_full = rss_mib();
    println!(
        "populated {sessions} sessions in {:.1} s; RSS {rss_start} -> {rss_full} MiB",
        populated.as_secs_f64()
    );

    // Probe from one second before the window to two seconds after it.
    let window = t0 + Duration::from_secs(horizon);
    let mut probe = connect(addr);
    probe
        .send(Message::text(r#"{"SH_NEW":{}}"#.to_string()))
        .unwrap();
    let own = field_u64(&recv(&mut probe), "tkn");
    let get = format!(r#"{{"SH_GET":{{"tkn":{own},"keys":["x"]}}}}"#);
    std::thread::sleep(window.saturating_duration_since(Instant::now() + Duration::from_secs(1)));
    let end = window + Duration::from_secs(3);
    let mut latencies_us: Vec<u64> = Vec::new();
    let mut worst_at = 0.0;
    while Instant::now() < end {
        let sent = Instant::now();
        probe.send(Message::text(get.clone())).unwrap();
        recv(&mut probe);
        let us = sent.elapsed().as_micros() as u64;
        if latencies_us.iter().all(|&l| l < us) {
            worst_at = sent.duration_since(window).as_secs_f64();
        }
        latencies_us.push(us);
    }
    // SV_INFO answers once background expiry has caught up.
    let asked = Instant::now();
    probe
        .send(Message::text(r#"{"SV_INFO":{}}"#.to_string()))
        .unwrap();
    let info = recv(&mut probe);
    let left = field_u64(&info, "sessions");
    latencies_us.sort_unstable();
    let pct = |p: f64| latencies_us[((latencies_us.len() - 1) as f64 * p) as usize];
    println!(
        "during the expiry window: {} requests, p50 {} us, p99 {} us, p99.9 {} us, max {} us (at {worst_at:+.3} s from the window start)",
        latencies_us.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        latencies_us.last().copied().unwrap_or(0),
    );
    println!(
        "SV_INFO 2 s after the last deadline: {left} sessions left (answered in {} us); RSS now {} MiB",
        asked.elapsed().as_micros(),
        rss_mib()
    );
    server.stopper().stop();
    let _ = server.wait();
}
