//! What the in-process server benchmarks share: a server on a free port,
//! blocking WebSocket clients, and small readers of responses and /proc.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use nemesisdb::config::{Config, Flags};
use nemesisdb::security::Security;
use nemesisdb::server::Server;
use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<TcpStream>;

/// A server in this process on 127.0.0.1 and a free port.
pub fn start_server(flags: Flags) -> Server {
    let flags = Flags {
        port: Some(0),
        ..flags
    };
    let config = Config::resolve(flags, &[0, 1]).expect("config");
    let security = Security::load(config.security.clone()).expect("TLS and users");
    Server::start(&config, Arc::new(security)).expect("start server")
}

pub fn connect(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    tungstenite::client(format!("ws://{addr}/"), stream)
        .expect("handshake")
        .0
}

pub fn recv(ws: &mut Ws) -> String {
    loop {
        if let Message::Text(t) = ws.read().expect("read") {
            return t.to_string();
        }
    }
}

pub fn call(ws: &mut Ws, request: &str) -> String {
    ws.send(Message::text(request.to_string())).expect("send");
    recv(ws)
}

/// The unsigned number after `"field":` in a response.
pub fn field_u64(text: &str, field: &str) -> u64 {
    let at = text.find(&format!("\"{field}\":")).expect(field) + field.len() + 3;
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("number")
}

pub fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Creates `count` sessions (with `params` for SH_NEW, which may depend on
/// the time since `t0`) and sets `keys` on each, pipelined in batches.
pub fn populate(ws: &mut Ws, count: usize, mut params: impl FnMut() -> String, keys: &str) {
    let batch = 2000;
    let mut created = 0;
    while created < count {
        let n = batch.min(count - created);
        let new = format!(r#"{{"SH_NEW":{}}}"#, params());
        for _ in 0..n {
            ws.write(Message::text(new.clone())).unwrap();
        }
        ws.flush().unwrap();
        let tokens: Vec<u64> = (0..n).map(|_| field_u64(&recv(ws), "tkn")).collect();
        for tkn in tokens {
            ws.write(Message::text(format!(
                r#"{{"SH_SET":{{"tkn":{tkn},"keys":{keys}}}}}"#
            )))
            .unwrap();
        }
        ws.flush().unwrap();
        for _ in 0..n {
            recv(ws);
        }
        created += n;
    }
}

/// Back-to-back requests on `ws` until `until`; their latencies in µs, sorted.
pub fn probe(ws: &mut Ws, request: &str, until: Instant) -> Vec<u64> {
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let sent = Instant::now();
        ws.send(Message::text(request.to_string())).unwrap();
        recv(ws);
        latencies.push(sent.elapsed().as_micros() as u64);
    }
    latencies.sort_unstable();
    latencies
}

/// "p50 .. us, p99 .. us, p99.9 .. us, max .. us" of sorted latencies.
pub fn summary(sorted: &[u64]) -> String {
    if sorted.is_empty() {
        return "no requests".into();
    }
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    format!(
        "{} requests, p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        sorted.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        sorted[sorted.len() - 1]
    )
}

/// Bytes of every file under `path`, recursively (0 for what cannot be read).
pub fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
