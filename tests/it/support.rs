//! Test support: start the real server binary on a free loopback port and
//! talk to it over WebSocket, plain or TLS. Every socket has a timeout, so a
//! server that stops answering fails the test instead of hanging it.
//!
//! TLS: [`Pki`] makes a CA and certificates signed by it into a scratch
//! directory (never into the repository); [`Server::start_over`] starts a
//! server on them, and its [`Server::client`] and [`Connector`] then speak
//! TLS. [`Stream`] is the client's socket either way, so a test that writes
//! raw WebSocket bytes runs over both unchanged.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use nemesisdb::mesh::shard_of;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};
use simd_json::OwnedValue;
use simd_json::prelude::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
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
    /// How [`Server::client`] speaks TLS to it (None: plain WebSocket).
    pub tls: Option<Arc<ClientConfig>>,
    /// The certificates of a server started by [`Server::start_over`], kept
    /// until the process is gone.
    _pki: Option<Pki>,
}

/// What a client speaks to the server: for tests that run both ways.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `ws://`
    Plain,
    /// `wss://`, with certificates from a fresh [`Pki`].
    Tls,
}

impl Server {
    /// Starts the binary with `--port 0` and `args`, and waits for its
    /// `listening on` line to learn the port.
    pub fn start(args: &[&str]) -> Server {
        Server::start_on("127.0.0.1", args)
    }

    /// [`Server::start`] over `transport`: with `Tls`, the port speaks only
    /// TLS and [`Server::client`] connects with it.
    pub fn start_over(transport: Transport, args: &[&str]) -> Server {
        match transport {
            Transport::Plain => Server::start(args),
            Transport::Tls => {
                let pki = Pki::new("server");
                let mut server = Server::start_tls(&pki, args);
                server._pki = Some(pki);
                server
            }
        }
    }

    /// [`Server::start`] with `pki`'s server certificate: clients of
    /// [`Server::client`] trust its CA and present its good client
    /// certificate when asked for one.
    pub fn start_tls(pki: &Pki, args: &[&str]) -> Server {
        let mut server = Server::start(&[&pki.server_args()[..], args].concat());
        server.tls = Some(pki.client_config(ClientCert::Good));
        server
    }

    /// Starts the binary listening on `ip` (port 0) with `args`.
    pub fn start_on(ip: &str, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nemesisdb"))
            .args(["--ip", ip, "--port", "0"])
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
            tls: None,
            _pki: None,
        }
    }

    /// A WebSocket client, over TLS when the server speaks it.
    pub fn client(&self) -> Client {
        self.connector().client()
    }

    /// How to reach the server, for another thread or another identity.
    pub fn connector(&self) -> Connector {
        Connector {
            addr: self.addr,
            tls: self.tls.clone(),
        }
    }

    /// Sends SIGHUP: the server reads its TLS and users files again.
    pub fn hang_up(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for a log line (stdout) holding `needle` and returns it; the
    /// lines before it are consumed.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no log line with {needle:?}; saw {seen:#?}"),
            }
        }
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
    pub ws: WebSocket<Stream>,
}

impl Client {
    /// A plain `ws://` client.
    pub fn connect(addr: SocketAddr) -> Client {
        Connector { addr, tls: None }.client()
    }

    /// The certificate the server presented (TLS only).
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        self.ws.get_ref().peer_certificate()
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
/// A process's resident set in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

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
pub fn read_to_close(stream: &mut impl Read) -> Vec<u8> {
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

/// A client's socket: plain TCP, or TLS over it. Reads and writes carry
/// WebSocket bytes either way; over TLS each write goes out as records.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket (under TLS, if any).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    /// Shuts the TCP socket down, as `TcpStream::shutdown` (no TLS alert).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.tcp().shutdown(how)
    }

    /// Ends our side of the stream and keeps reading: over TLS a
    /// close_notify first, then the TCP half-close.
    pub fn end_writing(&mut self) -> io::Result<()> {
        if let Stream::Tls(tls) = self {
            tls.conn.send_close_notify();
            tls.flush()?;
        }
        self.shutdown(Shutdown::Write)
    }

    /// The server's end-entity certificate, once a TLS handshake is done.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => tls.conn.peer_certificates()?.first().cloned(),
        }
    }

    /// The TLS connection (None: plain).
    pub fn tls(&self) -> Option<&ClientConnection> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => Some(&tls.conn),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

/// How to reach a server: its address, and the TLS client configuration
/// when it speaks TLS. Cheap to clone into another thread.
#[derive(Clone)]
pub struct Connector {
    pub addr: SocketAddr,
    pub tls: Option<Arc<ClientConfig>>,
}

/// An HTTP answer: status code, head (status line and headers) and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Connector {
    /// A connected socket with timeouts; over TLS the handshake runs with
    /// the first write or read.
    pub fn stream(&self) -> io::Result<Stream> {
        let tcp = TcpStream::connect(self.addr)?;
        tcp.set_read_timeout(Some(TIMEOUT))?;
        tcp.set_write_timeout(Some(TIMEOUT))?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = ServerName::try_from("localhost").expect("a DNS name");
                let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
                Stream::Tls(Box::new(StreamOwned::new(conn, tcp)))
            }
        })
    }

    /// A WebSocket client (panics if the server does not take it).
    pub fn client(&self) -> Client {
        self.try_client(None).expect("handshake")
    }

    /// A WebSocket client authenticated in its upgrade (Basic auth).
    pub fn client_as(&self, user: &str, password: &str) -> Client {
        self.try_client(Some(&basic(user, password)))
            .unwrap_or_else(|e| panic!("{user}: upgrade refused: {e}"))
    }

    /// The upgrade, with `authorization` as the header's value if given.
    /// A read timeout comes back as an `Io` error of kind `TimedOut`.
    pub fn try_client(&self, authorization: Option<&str>) -> Result<Client, tungstenite::Error> {
        let stream = self.stream()?;
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let mut request = format!("{scheme}://{}/", self.addr).into_client_request()?;
        if let Some(value) = authorization {
            let value = HeaderValue::from_str(value).expect("a header value");
            request.headers_mut().insert("Authorization", value);
        }
        match tungstenite::client(request, stream) {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(HandshakeError::Failure(e)) => Err(e),
            Err(HandshakeError::Interrupted(_)) => {
                Err(io::Error::from(io::ErrorKind::TimedOut).into())
            }
        }
    }

    /// One HTTP(S) GET on a fresh connection, read to its close.
    pub fn get(&self, path: &str, authorization: Option<&str>) -> HttpAnswer {
        let mut stream = self.stream().expect("connect");
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
        if let Some(value) = authorization {
            head.push_str(&format!("Authorization: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send");
        stream.flush().expect("flush");
        let answer = String::from_utf8(read_to_close(&mut stream)).expect("UTF-8 answer");
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"));
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        HttpAnswer {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }
}

/// The value of an `Authorization: Basic` header.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

/// Which certificate a TLS client presents when the server asks for one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ClientCert {
    None,
    /// Signed by the [`Pki`]'s CA.
    Good,
    /// Signed by another CA, which the server does not know.
    Stranger,
}

/// A CA and certificates it signed, as PEM files in a scratch directory: a
/// server certificate for `localhost` and 127.0.0.1, a client certificate,
/// and a client certificate from another CA. Keys never leave the
/// directory, which goes when the `Pki` does.
pub struct Pki {
    /// Holds the files; removed with the `Pki`.
    _dir: TempDir,
    ca: Issuer<'static, KeyPair>,
    /// The CA's certificate (what clients trust; `--tls-client-ca`).
    pub ca_file: String,
    /// The certificate of the CA that signed [`ClientCert::Stranger`].
    pub other_ca_file: String,
    /// The server's certificate and key (`--tls-cert`, `--tls-key`).
    pub cert_file: String,
    pub key_file: String,
    /// The certificate now in `cert_file`.
    pub server_cert: CertificateDer<'static>,
    ca_cert: CertificateDer<'static>,
    client: (CertificateDer<'static>, Vec<u8>),
    stranger: (CertificateDer<'static>, Vec<u8>),
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let dir = TempDir::new(&format!("pki-{tag}"));
        let file = |name: &str| {
            dir.path()
                .join(name)
                .to_str()
                .expect("UTF-8 temp path")
                .to_string()
        };
        let (ca_cert, ca) = certificate_authority("nemesisdb test CA");
        let ca_file = file("ca.pem");
        std::fs::write(&ca_file, pem("CERTIFICATE", &ca_cert)).expect("write CA");
        let client = leaf(&ca, &[], "client", 2, ExtendedKeyUsagePurpose::ClientAuth);
        let (other_ca_cert, other_ca) = certificate_authority("another CA");
        let other_ca_file = file("other-ca.pem");
        std::fs::write(&other_ca_file, pem("CERTIFICATE", &other_ca_cert)).expect("write CA");
        let stranger = leaf(
            &other_ca,
            &[],
            "stranger",
            2,
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let mut pki = Pki {
            ca,
            ca_file,
            other_ca_file,
            cert_file: file("server.pem"),
            key_file: file("server.key"),
            server_cert: CertificateDer::from(Vec::new()),
            ca_cert,
            client,
            stranger,
            _dir: dir,
        };
        pki.issue_server_cert(1, "nemesisdb test server");
        pki
    }

    /// Writes a new server certificate (and key) over the files, signed by
    /// the same CA, with this serial number and common name.
    pub fn issue_server_cert(&mut self, serial: u64, common_name: &str) {
        let (cert, key) = leaf(
            &self.ca,
            &["localhost", "127.0.0.1"],
            common_name,
            serial,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(&self.key_file, pem("PRIVATE KEY", &key)).expect("write key");
        std::fs::write(&self.cert_file, pem("CERTIFICATE", &cert)).expect("write cert");
        self.server_cert = cert;
    }

    /// `--tls-cert` and `--tls-key` with this PKI's files.
    pub fn server_args(&self) -> [&str; 4] {
        ["--tls-cert", &self.cert_file, "--tls-key", &self.key_file]
    }

    /// A client configuration that trusts the CA and presents `cert`.
    pub fn client_config(&self, cert: ClientCert) -> Arc<ClientConfig> {
        self.client_config_with(cert, rustls::DEFAULT_VERSIONS)
    }

    /// [`Pki::client_config`] limited to `versions`.
    pub fn client_config_with(
        &self,
        cert: ClientCert,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert.clone()).expect("CA certificate");
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .expect("protocol versions")
                .with_root_certificates(roots);
        let identity = |(cert, key): &(CertificateDer<'static>, Vec<u8>)| {
            let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.clone()));
            (vec![cert.clone()], key)
        };
        let mut config = match cert {
            ClientCert::None => builder.with_no_client_auth(),
            ClientCert::Good => {
                let (chain, key) = identity(&self.client);
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client cert")
            }
            ClientCert::Stranger => {
                let (chain, key) = identity(&self.stranger);
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client cert")
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A self-signed CA: its certificate, and what signs with it.
fn certificate_authority(common_name: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.der().clone(), Issuer::new(params, key))
}

/// A certificate `issuer` signs for `names`: the certificate and its
/// private key (PKCS#8 DER).
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
    serial: u64,
    usage: ExtendedKeyUsagePurpose,
) -> (CertificateDer<'static>, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("certificate parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("certificate");
    (cert.der().clone(), key.serialize_der())
}

/// DER as a PEM block.
fn pem(label: &str, der: &[u8]) -> String {
    let encoded = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
