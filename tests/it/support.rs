//! Test support: start the real server binary on a free loopback port and
//! talk to it over WebSocket. Every socket has a timeout, so a server that
//! stops answering fails the test instead of hanging it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nemesisdb::mesh::shard_of;
use simd_json::OwnedValue;
use simd_json::prelude::*;
use tungstenite::protocol::WebSocket;
use tungstenite::{Message, Utf8Bytes};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A running server process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The log lines (stdout) up to and including `listening on`: the
    /// start-up summary, recovery and load lines and their warnings.
    pub startup: Vec<String>,
    /// Log lines (stdout) after those, collected in the background.
    pub stdout: mpsc::Receiver<String>,
    /// Lines the server printed on stderr, collected in the background (so
    /// the pipe never fills); shown when a test fails with the server up.
    pub stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the binary with `--port 0` and `args`, and waits for its
    /// `listening on` line to learn the port.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nemesisdb"))
            .args(["--ip", "127.0.0.1", "--port", "0"])
            .args(args)
            // The runner's RUST_LOG would win over the flags and could hide
            // the `listening on` line this waits for.
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nemesisdb");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let mut startup = Vec::new();
        let addr = loop {
            let line = line_rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
                panic!("server printed no `listening on` line; before it: {startup:#?}")
            });
            let addr = listening_addr(&line);
            startup.push(line);
            if let Some(addr) = addr {
                break addr;
            }
        };
        Server {
            child,
            addr,
            startup,
            stdout: line_rx,
            stderr: err_rx,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        self.wait_exit()
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not exit in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for line in self.stdout.try_iter() {
                eprintln!("server log: {line}");
            }
            for line in self.stderr.try_iter() {
                eprintln!("server stderr: {line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address of a `listening on IP:PORT` log line, text or JSON.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on ").nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c))
        .collect();
    addr.parse().ok()
}

/// A blocking WebSocket client with timeouts.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
        Client { ws }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(Utf8Bytes::from(text.to_string())))
            .expect("send");
    }

    /// Queues without flushing (for pipelining); call `flush` after.
    pub fn queue_text(&mut self, text: String) {
        self.ws.write(Message::Text(text.into())).expect("write");
    }

    pub fn flush(&mut self) {
        self.ws.flush().expect("flush");
    }

    /// The next data message as text (pongs are skipped).
    pub fn recv_text(&mut self) -> String {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(t) => return t.to_string(),
                Message::Binary(_) => panic!("server sent a binary frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message: {other:?}"),
            }
        }
    }

    pub fn recv_json(&mut self) -> OwnedValue {
        let mut text = self.recv_text().into_bytes();
        simd_json::to_owned_value(&mut text).expect("server sent invalid JSON")
    }

    /// Sends a request and returns the response body (`{"X_RSP":{body}}`).
    pub fn call(&mut self, request: &str) -> OwnedValue {
        self.send_text(request);
        let response = self.recv_json();
        let command = request
            .trim_start_matches("{\"")
            .split('"')
            .next()
            .unwrap()
            .to_string();
        body(&response, &format!("{command}_RSP"))
    }

    /// Creates a session and returns its token.
    pub fn new_session(&mut self, params: &str) -> u64 {
        let r = self.call(&format!(r#"{{"SH_NEW":{params}}}"#));
        assert_eq!(st(&r), 1, "SH_NEW failed: {r}");
        r["tkn"].as_u64().expect("tkn")
    }
}

/// Opens connections until one is served by each shard; returns them with
/// a session each created on that shard.
pub fn one_client_per_shard(server: &Server, shards: usize) -> Vec<(Client, u64)> {
    let mut found: Vec<Option<(Client, u64)>> = (0..shards).map(|_| None).collect();
    for _ in 0..200 {
        let mut c = server.client();
        let tkn = c.new_session("{}");
        let shard = shard_of(tkn, shards);
        if found[shard].is_none() {
            found[shard] = Some((c, tkn));
        } else {
            c.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#));
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("the kernel never spread connections over every shard");
}

/// The body of a one-member response object named `name`.
pub fn body(response: &OwnedValue, name: &str) -> OwnedValue {
    let object = response.as_object().expect("response is an object");
    assert_eq!(object.len(), 1, "response has one member: {response}");
    object
        .get(name)
        .unwrap_or_else(|| panic!("expected {name} in {response}"))
        .clone()
}

/// A JSON array of tokens.
pub fn tokens(v: &OwnedValue) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|t| t.as_u64().expect("token"))
        .collect()
}

pub fn st(body: &OwnedValue) -> u64 {
    body["st"].as_u64().expect("st")
}

/// A raw TCP connection, for bytes no WebSocket client would send.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Reads until EOF (or reset); returns what arrived.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn write_all(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

/// A fresh directory under the system temp dir, removed on drop. Its name
/// holds the process id and a number no other `TempDir` of this process
/// has, so tests running side by side (or an earlier run) never share one.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ndb-it-{tag}-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temp dir path is UTF-8")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
