//! Authentication and TLS through the real binary (issue #19, contract in
//! EXTENSIONS.md, "Authentication and TLS"): wss and https on a TLS port,
//! mutual TLS, plain clients on a TLS port, roles enforced for every
//! command of the command table, nothing done before authenticating,
//! `SV_AUTH` and Basic auth with the failure counter and log line, hostile
//! TLS handshakes, SIGHUP reloading users and certificates, and the
//! refusal to listen beyond loopback without users.
//!
//! Certificates are made per test by [`Pki`] in a scratch directory.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nemesisdb::mesh::{shard_of, shard_of_owner};
use nemesisdb::protocol::{CommandName, Role};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ProtocolVersion};
use simd_json::OwnedValue;
use simd_json::prelude::*;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    Client, ClientCert, Connector, Pki, Server, TIMEOUT, TempDir, basic, body,
    one_client_per_shard, raw, st,
};

/// A user of each role: name and password (the app user's has a colon,
/// which Basic auth must keep).
const ADMIN: (&str, &str) = ("ann", "ann's secret");
const APP: (&str, &str) = ("bob", "s3cret:with colon");
const READ: (&str, &str) = ("cat", "cat pw");

fn credentials(role: Role) -> (&'static str, &'static str) {
    match role {
        Role::Admin => ADMIN,
        Role::App => APP,
        Role::Read => READ,
    }
}

/// The hex SHA-256 of a password, as a users file holds it.
fn sha256_hex(password: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, password.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a users file with these users.
fn write_users(path: &Path, users: &[((&str, &str), Role)]) {
    let entries: Vec<String> = users
        .iter()
        .map(|((name, password), role)| {
            format!(
                r#"{{"name":"{name}","passwordSha256":"{}","role":"{}"}}"#,
                sha256_hex(password),
                role.name()
            )
        })
        .collect();
    std::fs::write(path, format!("[{}]", entries.join(",\n"))).expect("write users");
}

/// A users file in `dir` with [`ADMIN`], [`APP`] and [`READ`]; its path.
fn all_roles(dir: &TempDir) -> String {
    let path = dir.path().join("users.json");
    write_users(
        &path,
        &[(ADMIN, Role::Admin), (APP, Role::App), (READ, Role::Read)],
    );
    path.to_str().expect("UTF-8 temp path").to_string()
}

/// The value of the sample line that starts with `sample` (name and labels
/// as the exposition writes them); 0 when absent.
fn sample(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

fn timed_out(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A handshake the server refused at the TLS level: an error, not an HTTP
/// answer and not a wait for one that never comes.
fn assert_refused_by_tls(result: Result<Client, tungstenite::Error>, what: &str) {
    match result {
        Ok(_) => panic!("{what}: the upgrade succeeded"),
        Err(tungstenite::Error::Io(e)) => assert!(!timed_out(e.kind()), "{what}: hung ({e})"),
        Err(tungstenite::Error::Protocol(_) | tungstenite::Error::ConnectionClosed) => {}
        Err(other) => panic!("{what}: expected a TLS failure, got {other}"),
    }
}

/// Reads until the server closes the connection (EOF or reset) and returns
/// what arrived; fails if it is still open after [`TIMEOUT`].
fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if timed_out(e.kind()) => panic!("{what}: still open, got {out:?}"),
            Err(_) => return out,
        }
    }
}

/// A TLS ClientHello a real client (rustls) would send to the server.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let mut conn =
        ClientConnection::new(pki.client_config(ClientCert::None), name).expect("client");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("hello");
    }
    assert_eq!(hello[0], 0x16, "a handshake record");
    hello
}

#[test]
fn wss_round_trip_on_both_shards_and_https_endpoints() {
    let pki = Pki::new("wss");
    let server = Server::start_tls(&pki, &["--shards", "2"]);
    let mut pairs = one_client_per_shard(&server, 2);
    let tokens: Vec<u64> = pairs.iter().map(|(_, t)| *t).collect();
    for (i, (c, _)) in pairs.iter_mut().enumerate() {
        let tls = c.ws.get_ref().tls().expect("a TLS connection");
        assert_eq!(tls.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(c.peer_certificate().as_ref(), Some(&pki.server_cert));
        // Its own shard's session and the other's.
        for tkn in &tokens {
            let set = format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"by{i}":"é{tkn}"}}}}}}"#);
            assert_eq!(st(&c.call(&set)), 1);
            let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["by{i}"]}}}}"#));
            assert_eq!(
                r["keys"][format!("by{i}").as_str()].as_str(),
                Some(format!("é{tkn}").as_str())
            );
        }
    }
    // Each sees the other's writes.
    let (c, _) = &mut pairs[1];
    let r = c.call(&format!(r#"{{"SH_COUNT":{{"tkn":{}}}}}"#, tokens[0]));
    assert_eq!(r["cnt"].as_u64(), Some(2));
    // Answers of many records each, pipelined, and read only once all the
    // requests are sent: the server's TLS output waits for the client.
    let big: String = (0..200_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (c, _) = &mut pairs[0];
    for tkn in &tokens {
        let set = format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"big":"{big}"}}}}}}"#);
        assert_eq!(st(&c.call(&set)), 1);
    }
    for round in 0..40 {
        let tkn = tokens[round % 2];
        c.queue_text(format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["big"]}}}}"#));
    }
    c.flush();
    for round in 0..40 {
        let r = body(&c.recv_json(), "SH_GET_RSP");
        assert_eq!(r["tkn"].as_u64(), Some(tokens[round % 2]));
        assert!(
            r["keys"]["big"].as_str() == Some(big.as_str()),
            "round {round}"
        );
    }
    for (c, tkn) in &mut pairs {
        assert_eq!(st(&c.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#))), 1);
        let r = c.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
        assert_eq!(st(&r), 100);
    }
    // TLS 1.2 is spoken too, and to a client that offers no ALPN.
    let mut config =
        (*pki.client_config_with(ClientCert::None, &[&rustls::version::TLS12])).clone();
    config.alpn_protocols.clear();
    let tls12 = Connector {
        addr: server.addr,
        tls: Some(Arc::new(config)),
    };
    let mut c = tls12.client();
    let tls = c.ws.get_ref().tls().expect("a TLS connection");
    assert_eq!(tls.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(tls.alpn_protocol(), None);
    let tkn = c.new_session("{}");
    assert_eq!(st(&c.call(&format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#))), 1);

    let https = server.connector();
    let health = https.get("/healthz", None);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = https.get("/readyz", None);
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    // Two writes from each client on each session, and the two big ones.
    let metrics = https.get("/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.ends_with("# EOF\n"), "{}", metrics.body);
    assert_eq!(
        sample(
            &metrics.body,
            r#"nemesisdb_commands_total{command="SH_SET",status="1"}"#
        ),
        6.0
    );
}

#[test]
fn mutual_tls_takes_only_clients_with_a_certificate_from_its_ca() {
    let pki = Pki::new("mtls");
    let server = Server::start_tls(&pki, &["--shards", "2", "--tls-client-ca", &pki.ca_file]);
    let mut before = server.client();
    let tkn = before.new_session(r#"{"keys":{"a":1}}"#);
    for cert in [ClientCert::None, ClientCert::Stranger] {
        for versions in [rustls::DEFAULT_VERSIONS, &[&rustls::version::TLS12]] {
            let refused = Connector {
                addr: server.addr,
                tls: Some(pki.client_config_with(cert, versions)),
            };
            let what = format!("{cert:?} over {versions:?}");
            assert_refused_by_tls(refused.try_client(None), &what);
            // The others are served meanwhile.
            let r = before.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
            assert_eq!(r["keys"]["a"].as_u64(), Some(1), "{what}");
        }
    }
    for versions in [rustls::DEFAULT_VERSIONS, &[&rustls::version::TLS12]] {
        let good = Connector {
            addr: server.addr,
            tls: Some(pki.client_config_with(ClientCert::Good, versions)),
        };
        let mut c = good.client();
        assert_eq!(
            st(&c.call(&format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#))),
            1
        );
        assert_eq!(good.get("/healthz", None).status, 200);
    }
}

#[test]
fn plain_websocket_and_http_to_a_tls_port_fail_cleanly() {
    let pki = Pki::new("plain-to-tls");
    let server = Server::start_tls(&pki, &["--shards", "2"]);
    let mut wss = server.client();
    let tkn = wss.new_session(r#"{"keys":{"a":1}}"#);
    let plain = Connector {
        addr: server.addr,
        tls: None,
    };
    for round in 0..4 {
        match plain.try_client(None) {
            Ok(_) => panic!("a plain upgrade was taken by a TLS port"),
            Err(tungstenite::Error::Io(e)) => assert!(!timed_out(e.kind()), "hung: {e}"),
            // Whatever the server sent back was not an HTTP answer.
            Err(tungstenite::Error::Protocol(_) | tungstenite::Error::HttpFormat(_)) => {}
            Err(tungstenite::Error::Http(response)) => {
                panic!("a TLS port answered in plain HTTP: {response:?}")
            }
            Err(other) => panic!("round {round}: {other}"),
        }
        for request in [
            &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let mut s = raw(server.addr);
            s.write_all(request).expect("send");
            let reply = read_until_closed(&mut s, "plain HTTP");
            assert!(
                !reply.starts_with(b"HTTP"),
                "{}",
                String::from_utf8_lossy(&reply)
            );
        }
        let r = wss.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
        assert_eq!(r["keys"]["a"].as_u64(), Some(1));
    }
    assert_eq!(server.connector().get("/healthz", None).status, 200);
}

/// One valid request: what it says, the least role the contract lets run
/// it, and the status it gets when it runs.
struct Probe {
    request: String,
    least: Role,
    status: u64,
}

/// Sessions that exist for a probe to be about: one per shard, each with
/// an owner of its own (which puts it on that shard), a shared name
/// `shared-<shard>`, keys and an hour's idle expiry.
struct Fixture {
    tokens: [u64; 2],
    owners: [String; 2],
}

/// An owner name whose sessions live on `shard` (of 2).
fn owner_on(shard: usize) -> String {
    (0..)
        .map(|i| format!("owner-{i}"))
        .find(|owner| shard_of_owner(owner, 2) == shard)
        .expect("an owner")
}

impl Fixture {
    /// Ends every session, then makes the fixture's.
    fn create(admin: &mut Client) -> Fixture {
        assert_eq!(st(&admin.call(r#"{"SH_END_ALL":{}}"#)), 1);
        let owners = [owner_on(0), owner_on(1)];
        let mut tokens = [0; 2];
        for (shard, owner) in owners.iter().enumerate() {
            tokens[shard] = admin.new_session(&format!(
                r#"{{"name":"shared-{shard}","shared":true,"owner":"{owner}","keys":{{"k":"v","n":1}},"expiry":{{"duration":3600}}}}"#
            ));
            assert_eq!(shard_of(tokens[shard], 2), shard);
        }
        Fixture { tokens, owners }
    }

    /// What an admin sees of the sessions, and their time to live (which
    /// only time may lower, and only a slide may raise).
    fn state(&self, admin: &mut Client, persist: &Path) -> (String, Vec<i64>) {
        let mut out = String::new();
        let mut ttls = Vec::new();
        let mut line = |admin: &mut Client, request: String| {
            admin.send_text(&request);
            out.push_str(&admin.recv_text());
            out.push('\n');
        };
        line(admin, r#"{"SH_INFO_ALL":{}}"#.to_string());
        for (shard, tkn) in self.tokens.iter().enumerate() {
            line(
                admin,
                format!(
                    r#"{{"SH_GET":{{"tkn":{tkn},"keys":["k","n","new","added","x"],"withVersion":true}}}}"#
                ),
            );
            line(
                admin,
                format!(r#"{{"SH_OPEN":{{"name":"shared-{shard}"}}}}"#),
            );
            line(
                admin,
                format!(
                    r#"{{"SH_OWNER_SESSIONS":{{"owner":"{}"}}}}"#,
                    self.owners[shard]
                ),
            );
            let touch = admin.call(&format!(r#"{{"SH_TOUCH":{{"tkn":{tkn},"slide":false}}}}"#));
            if st(&touch) == 1 {
                ttls.push(touch["ttlMs"].as_i64().expect("ttlMs"));
            }
        }
        out.push_str(&format!("dataset made: {}", persist.join("made").exists()));
        (out, ttls)
    }
}

/// The requests for `command` about the fixture's session on shard
/// `target`, as `who` (whose own credentials `SV_AUTH` gives). The match
/// has no wildcard: a new command does not compile until it is here, and
/// each row spells out the contract's role for it.
fn probes(command: CommandName, fx: &Fixture, target: usize, who: (&str, &str)) -> Vec<Probe> {
    use CommandName::*;
    let tkn = fx.tokens[target];
    let owner = &fx.owners[target];
    let probe = |request: String, least: Role, status: u64| Probe {
        request,
        least,
        status,
    };
    let about = |body: &str| format!(r#"{{"{}":{{"tkn":{tkn}{body}}}}}"#, command.wire());
    match command {
        New => vec![probe(r#"{"SH_NEW":{"name":"made"}}"#.into(), Role::App, 1)],
        Open => vec![probe(
            format!(r#"{{"SH_OPEN":{{"name":"shared-{target}"}}}}"#),
            Role::Read,
            1,
        )],
        End => vec![probe(about(""), Role::App, 1)],
        EndAll => vec![probe(r#"{"SH_END_ALL":{}}"#.into(), Role::Admin, 1)],
        Exists => vec![probe(
            format!(r#"{{"SH_EXISTS":{{"tkns":[{tkn}]}}}}"#),
            Role::Read,
            1,
        )],
        Info => vec![probe(about(""), Role::Read, 1)],
        InfoAll => vec![probe(r#"{"SH_INFO_ALL":{}}"#.into(), Role::Admin, 1)],
        Save => vec![probe(
            r#"{"SH_SAVE":{"name":"made"}}"#.into(),
            Role::Admin,
            121,
        )],
        Load => vec![probe(
            r#"{"SH_LOAD":{"name":"seed"}}"#.into(),
            Role::Admin,
            141,
        )],
        Set => vec![probe(about(r#","keys":{"new":1}"#), Role::App, 1)],
        Add => vec![probe(about(r#","keys":{"added":1}"#), Role::App, 1)],
        ClearSet => vec![probe(about(r#","keys":{"x":1}"#), Role::App, 1)],
        Get => vec![probe(about(r#","keys":["k"]"#), Role::Read, 1)],
        Rmv => vec![probe(about(r#","keys":["k"]"#), Role::App, 1)],
        Contains => vec![probe(about(r#","keys":["k"]"#), Role::Read, 1)],
        Count => vec![probe(about(""), Role::Read, 1)],
        Keys => vec![probe(about(""), Role::Read, 1)],
        Clear => vec![probe(about(""), Role::App, 1)],
        ServerInfo => vec![probe(r#"{"SV_INFO":{}}"#.into(), Role::Admin, 1)],
        Touch => vec![
            probe(about(r#","slide":false"#), Role::Read, 1),
            probe(about(r#","slide":true"#), Role::App, 1),
            // Sliding is the default.
            probe(about(""), Role::App, 1),
        ],
        OwnerSessions => vec![probe(
            format!(r#"{{"SH_OWNER_SESSIONS":{{"owner":"{owner}"}}}}"#),
            Role::Read,
            1,
        )],
        OwnerEnd => vec![probe(
            format!(r#"{{"SH_OWNER_END":{{"owner":"{owner}"}}}}"#),
            Role::App,
            1,
        )],
        Incr => vec![probe(about(r#","key":"n","by":5"#), Role::App, 1)],
        Subscribe => vec![probe(r#"{"SH_SUBSCRIBE":{}}"#.into(), Role::Read, 1)],
        Unsubscribe => vec![probe(r#"{"SH_UNSUBSCRIBE":{}}"#.into(), Role::Read, 1)],
        Auth => vec![probe(
            format!(
                r#"{{"SV_AUTH":{{"user":"{}","password":"{}"}}}}"#,
                who.0, who.1
            ),
            Role::Read,
            1,
        )],
    }
}

/// The response body to `request`, which names `command`.
fn answer(c: &mut Client, command: CommandName, request: &str) -> OwnedValue {
    c.send_text(request);
    body(&c.recv_json(), command.response())
}

/// A server with users of every role and persistence, an admin client,
/// and a saved dataset "seed" (one session, ended since) for `SH_LOAD`.
struct RoleServer {
    server: Server,
    admin: Client,
    persist: std::path::PathBuf,
    _dir: TempDir,
}

impl RoleServer {
    fn start(tag: &str) -> RoleServer {
        let dir = TempDir::new(tag);
        let users = all_roles(&dir);
        let persist = dir.path().join("data");
        std::fs::create_dir_all(&persist).expect("persist dir");
        let persist_arg = persist.to_str().expect("UTF-8 temp path");
        let server = Server::start(&[
            "--shards",
            "2",
            "--users",
            &users,
            "--persist-path",
            persist_arg,
        ]);
        let mut admin = server.connector().client_as(ADMIN.0, ADMIN.1);
        let saved = admin.new_session(r#"{"keys":{"s":1}}"#);
        let save = format!(r#"{{"SH_SAVE":{{"name":"seed","tkns":[{saved}]}}}}"#);
        assert_eq!(st(&admin.call(&save)), 121);
        assert_eq!(
            st(&admin.call(&format!(r#"{{"SH_END":{{"tkn":{saved}}}}}"#))),
            1
        );
        RoleServer {
            server,
            admin,
            persist,
            _dir: dir,
        }
    }
}

/// Every command as every role, about sessions on both shards: what the
/// role may run gets its usual status; the rest get 16 and change nothing.
#[test]
fn each_role_runs_what_the_table_allows_and_nothing_else() {
    let RoleServer {
        server,
        mut admin,
        persist,
        _dir,
    } = RoleServer::start("roles");
    let connector = server.connector();
    let mut refused = 0;
    for role in Role::ALL {
        let who = credentials(role);
        for &command in CommandName::ALL {
            for target in 0..2 {
                let fixture = Fixture::create(&mut admin);
                for probe in probes(command, &fixture, target, who) {
                    let what = format!("{} as {}: {}", command.wire(), role.name(), probe.request);
                    // Time enough for a slide to show in the time to live.
                    if command == CommandName::Touch {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let (before, ttls_before) = fixture.state(&mut admin, &persist);
                    let mut c = connector.client_as(who.0, who.1);
                    let r = answer(&mut c, command, &probe.request);
                    if role >= probe.least {
                        assert_eq!(st(&r), probe.status, "{what}: {r}");
                    } else {
                        refused += 1;
                        assert_eq!(st(&r), 16, "{what}: {r}");
                        assert!(r["m"].as_str().is_some(), "{what}: {r}");
                        if probe.request.contains(r#""tkn":"#) {
                            assert_eq!(r["tkn"].as_u64(), Some(fixture.tokens[target]), "{what}");
                        }
                        let (after, ttls_after) = fixture.state(&mut admin, &persist);
                        assert_eq!(before, after, "{what}");
                        assert_eq!(ttls_before.len(), ttls_after.len(), "{what}");
                        for (b, a) in ttls_before.iter().zip(&ttls_after) {
                            assert!(a <= b, "{what}: the deadline moved from {b} to {a} ms");
                        }
                        // Refused, the connection still serves what it may.
                        let count =
                            format!(r#"{{"SH_COUNT":{{"tkn":{}}}}}"#, fixture.tokens[target]);
                        assert_eq!(st(&c.call(&count)), 1, "{what}");
                    }
                    let _ = std::fs::remove_dir_all(persist.join("made"));
                }
            }
        }
    }
    // Per shard: app is refused the 5 admin commands; read those and the
    // 11 app probes (SH_TOUCH sliding twice among them).
    assert_eq!(refused, 2 * (5 + 5 + 11), "refusals");
}

/// Before authenticating, every request but a well-formed `SV_AUTH` gets
/// 15, whatever it is, and nothing changes; a malformed `SV_AUTH` gets its
/// usual status and the connection stays open.
#[test]
fn before_authenticating_every_request_gets_15_and_changes_nothing() {
    let RoleServer {
        server,
        mut admin,
        persist,
        _dir,
    } = RoleServer::start("no-auth");
    let fixture = Fixture::create(&mut admin);
    std::thread::sleep(Duration::from_millis(20));
    let (before, ttls_before) = fixture.state(&mut admin, &persist);
    let mut c = server.client();
    let mut asked = 0;
    for &command in CommandName::ALL {
        if command == CommandName::Auth {
            continue;
        }
        for target in 0..2 {
            for probe in probes(command, &fixture, target, ("", "")) {
                let r = answer(&mut c, command, &probe.request);
                assert_eq!(st(&r), 15, "{}: {r}", probe.request);
                assert!(r["m"].as_str().is_some(), "{r}");
                if probe.request.contains(r#""tkn":"#) {
                    assert_eq!(r["tkn"].as_u64(), Some(fixture.tokens[target]), "{r}");
                }
                asked += 1;
            }
        }
    }
    assert!(asked > 2 * (CommandName::ALL.len() - 1));
    // Frames that are not a request, and requests the server cannot read.
    for (frame, answered_by) in [
        ("not json", "ERR"),
        ("", "ERR"),
        ("[]", "ERR"),
        (r#"{"SH_NEW":{},"SH_END_ALL":{}}"#, "ERR"),
        (r#"{"SH_NOPE":{}}"#, "SH_NOPE_RSP"),
        (r#"{"SH_END_ALL":[]}"#, "SH_END_ALL_RSP"),
        (r#"{"SH_GET":{"tkn":"x","keys":["k"]}}"#, "SH_GET_RSP"),
        (r#"{"SH_NEW":{"expiry":{"duration":-1}}}"#, "SH_NEW_RSP"),
    ] {
        c.send_text(frame);
        let r = body(&c.recv_json(), answered_by);
        assert_eq!(st(&r), 15, "{frame}: {r}");
    }
    c.ws.send(Message::Binary(br#"{"SH_END_ALL":{}}"#.to_vec().into()))
        .expect("send");
    assert_eq!(st(&body(&c.recv_json(), "ERR")), 15);
    // A malformed SV_AUTH says what is wrong, and authenticates nobody.
    let r = answer(&mut c, CommandName::Auth, r#"{"SV_AUTH":{"user":"ann"}}"#);
    assert_eq!(st(&r), 26, "{r}");
    assert_eq!(st(&c.call(r#"{"SH_INFO_ALL":{}}"#)), 15);

    let (after, ttls_after) = fixture.state(&mut admin, &persist);
    assert_eq!(before, after);
    for (b, a) in ttls_before.iter().zip(&ttls_after) {
        assert!(a <= b, "the deadline moved from {b} to {a} ms");
    }
    // The same connection may still authenticate, and is then served.
    let auth = format!(
        r#"{{"SV_AUTH":{{"user":"{}","password":"{}"}}}}"#,
        ADMIN.0, ADMIN.1
    );
    assert_eq!(st(&c.call(&auth)), 1);
    assert_eq!(st(&c.call(r#"{"SH_INFO_ALL":{}}"#)), 1);
}

/// The `nemesisdb_auth_failures_total` a scrape shows, as `user`.
fn auth_failures(connector: &Connector, user: (&str, &str)) -> f64 {
    let metrics = connector.get("/metrics", Some(&basic(user.0, user.1)));
    assert_eq!(metrics.status, 200, "{metrics:?}");
    sample(&metrics.body, "nemesisdb_auth_failures_total")
}

/// An upgrade request with an `Authorization` header, on a raw socket:
/// what the server answers before it closes.
fn raw_upgrade(addr: SocketAddr, authorization: &str) -> String {
    let mut s = raw(addr);
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: {authorization}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("send");
    String::from_utf8_lossy(&read_until_closed(&mut s, authorization)).to_string()
}

const UNAUTHORIZED: &str = "HTTP/1.1 401 Unauthorized\r\n";
const CHALLENGE: &str = "\r\nWWW-Authenticate: Basic realm=\"nemesisdb\", charset=\"UTF-8\"\r\n";

#[test]
fn sv_auth_and_basic_auth_take_users_and_refuse_wrong_credentials() {
    const ZOE: (&str, &str) = ("zoë", "pässwörd ✓");
    let dir = TempDir::new("auth");
    let users = dir.path().join("users.json");
    write_users(
        &users,
        &[
            (ADMIN, Role::Admin),
            (APP, Role::App),
            (READ, Role::Read),
            (ZOE, Role::Read),
        ],
    );
    let users = users.to_str().expect("UTF-8 temp path");
    let server = Server::start(&["--shards", "2", "--users", users]);
    let connector = server.connector();

    // A wrong password: 17, then a close with 1008, then a warning naming
    // the user and where the connection came from.
    let mut c = connector.client();
    let peer = c.ws.get_ref().tcp().local_addr().expect("local address");
    c.send_text(r#"{"SV_AUTH":{"user":"ann","password":"guess"}}"#);
    assert_eq!(
        c.recv_text(),
        r#"{"SV_AUTH_RSP":{"st":17,"m":"unknown user or wrong password"}}"#
    );
    match c.ws.read() {
        Ok(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::Policy);
            assert_eq!(frame.reason.as_str(), "authentication failed");
        }
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    let line = server.wait_for_line(&format!(
        r#"authentication failed for user "ann" from {peer}"#
    ));
    assert!(line.contains("WARN"), "{line}");
    assert!(!line.contains("guess"), "a password in the log: {line}");
    let mut failures = 1;

    // Requests pipelined behind SV_AUTH run as its user; behind a failed
    // one they are neither run nor answered.
    let mut c = connector.client();
    c.queue_text(format!(
        r#"{{"SV_AUTH":{{"user":"{}","password":"{}"}}}}"#,
        APP.0, APP.1
    ));
    c.queue_text(r#"{"SH_NEW":{"name":"pipelined"}}"#.to_string());
    c.queue_text(r#"{"SH_INFO_ALL":{}}"#.to_string());
    c.flush();
    assert_eq!(st(&body(&c.recv_json(), "SV_AUTH_RSP")), 1);
    assert_eq!(st(&body(&c.recv_json(), "SH_NEW_RSP")), 1);
    assert_eq!(st(&body(&c.recv_json(), "SH_INFO_ALL_RSP")), 16);
    let mut c = connector.client();
    c.queue_text(r#"{"SV_AUTH":{"user":"ann","password":"guess"}}"#.to_string());
    c.queue_text(r#"{"SH_NEW":{"name":"after a failure"}}"#.to_string());
    c.flush();
    assert_eq!(st(&body(&c.recv_json(), "SV_AUTH_RSP")), 17);
    match c.ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a 1008 close, got {other:?}"),
    }
    failures += 1;
    let mut admin = connector.client_as(ADMIN.0, ADMIN.1);
    let r = admin.call(r#"{"SH_INFO_ALL":{}}"#);
    assert_eq!(r["totalSessions"].as_u64(), Some(1), "{r}");

    // The right password: 1 with the user and role, then the role's rights.
    for role in Role::ALL {
        let (user, password) = credentials(role);
        let mut c = connector.client();
        c.send_text(&format!(
            r#"{{"SV_AUTH":{{"user":"{user}","password":"{password}"}}}}"#
        ));
        assert_eq!(
            c.recv_text(),
            format!(
                r#"{{"SV_AUTH_RSP":{{"st":1,"user":"{user}","role":"{}"}}}}"#,
                role.name()
            )
        );
        let expected = |least: Role| if role >= least { 1 } else { 16 };
        assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), expected(Role::Admin));
        assert_eq!(st(&c.call(r#"{"SH_NEW":{}}"#)), expected(Role::App));
        let r = c.call(r#"{"SH_OWNER_SESSIONS":{"owner":"o"}}"#);
        assert_eq!(st(&r), 1);
    }

    // Basic auth in the upgrade (and UTF-8 in names and passwords).
    let mut c = connector.client_as(ZOE.0, ZOE.1);
    assert_eq!(st(&c.call(r#"{"SH_INFO_ALL":{}}"#)), 16);
    let r = c.call(&format!(
        r#"{{"SV_AUTH":{{"user":"{}","password":"{}"}}}}"#,
        ZOE.0, ZOE.1
    ));
    assert_eq!((st(&r), r["user"].as_str()), (1, Some(ZOE.0)));
    for role in Role::ALL {
        let (user, password) = credentials(role);
        let mut c = connector.client_as(user, password);
        let expected = |least: Role| if role >= least { 1 } else { 16 };
        assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), expected(Role::Admin));
        assert_eq!(st(&c.call(r#"{"SH_NEW":{}}"#)), expected(Role::App));
    }
    // Wrong credentials in the upgrade: 401 with the challenge, closed.
    for (user, password) in [("ann", "guess"), ("nobody", "x"), ("bob", "s3cret")] {
        let header = basic(user, password);
        let reply = raw_upgrade(server.addr, &header);
        assert!(reply.starts_with(UNAUTHORIZED), "{reply:?}");
        assert!(reply.contains(CHALLENGE), "{reply:?}");
        match connector.try_client(Some(&header)) {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
            Err(other) => panic!("{user}: expected 401, got {other}"),
            Ok(_) => panic!("{user}: upgraded with a wrong password"),
        }
        failures += 2;
    }

    // The endpoints: probes need nobody, a scrape needs a user.
    assert_eq!(connector.get("/healthz", None).status, 200);
    assert_eq!(connector.get("/readyz", None).status, 200);
    let anonymous = connector.get("/metrics", None);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert!(
        anonymous.head.contains(CHALLENGE.trim_end()),
        "{anonymous:?}"
    );
    let wrong = connector.get("/metrics", Some(&basic("ann", "guess")));
    assert_eq!(wrong.status, 401, "{wrong:?}");
    failures += 1;
    for role in Role::ALL {
        let (user, password) = credentials(role);
        let scrape = connector.get("/metrics", Some(&basic(user, password)));
        assert_eq!(scrape.status, 200, "{user}");
        assert!(scrape.body.ends_with("# EOF\n"));
    }

    // Every wrong password counted, and the anonymous scrape not. A failure
    // is counted as its connection goes, which may come after our reads.
    let deadline = Instant::now() + TIMEOUT;
    let mut counted = auth_failures(&connector, READ);
    while counted < f64::from(failures) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        counted = auth_failures(&connector, READ);
    }
    assert_eq!(counted, f64::from(failures));

    // Headers that are not Basic credentials are refused as wrong ones.
    // The last is base64 of "no-colon".
    for header in ["Bearer abc", "Basic !!!", "Basic", "Basic bm8tY29sb24="] {
        let reply = raw_upgrade(server.addr, header);
        assert!(reply.starts_with(UNAUTHORIZED), "{header}: {reply:?}");
        assert!(reply.contains(CHALLENGE), "{reply:?}");
    }
}

/// A client guessing passwords fills no log: failures are counted one by
/// one, but logged at most once a second on each shard.
#[test]
fn auth_failures_are_logged_at_most_once_a_second_per_shard() {
    let dir = TempDir::new("auth-log");
    let users = all_roles(&dir);
    let server = Server::start(&["--shards", "2", "--users", &users]);
    let connector = server.connector();
    let started = Instant::now();
    let guesses = 60;
    for i in 0..guesses {
        let reply = raw_upgrade(server.addr, &basic(ADMIN.0, &format!("guess {i}")));
        assert!(reply.starts_with(UNAUTHORIZED), "{reply:?}");
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut counted = auth_failures(&connector, READ);
    while counted < f64::from(guesses) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        counted = auth_failures(&connector, READ);
    }
    assert_eq!(counted, f64::from(guesses));
    let failed = r#"authentication failed for user "ann""#;
    server.wait_for_line(failed);
    // A line is written before its failure is counted; give the reader
    // thread a moment to pass on the rest (one missed only makes the
    // bound below easier to meet).
    std::thread::sleep(Duration::from_millis(200));
    let elapsed = started.elapsed();
    let lines = 1 + server
        .stdout
        .try_iter()
        .filter(|line| line.contains(failed))
        .count() as u64;
    // One a second per shard, in a window `elapsed` long.
    let allowed = 2 * (elapsed.as_secs() + 2);
    assert!(
        lines <= allowed,
        "{lines} lines for {guesses} failures in {elapsed:?}"
    );
}

/// Without users, `SV_AUTH` takes any name as admin and a Basic header,
/// right or wrong, is ignored.
#[test]
fn without_users_sv_auth_is_admin_and_basic_auth_is_ignored() {
    let server = Server::start(&["--shards", "2"]);
    let connector = server.connector();
    let mut c = connector.client();
    c.send_text(r#"{"SV_AUTH":{"user":"anyone","password":"anything"}}"#);
    assert_eq!(
        c.recv_text(),
        r#"{"SV_AUTH_RSP":{"st":1,"user":"anyone","role":"admin"}}"#
    );
    assert_eq!(st(&c.call(r#"{"SV_INFO":{}}"#)), 1);
    for header in [basic("ann", "guess"), "Bearer abc".to_string()] {
        let mut c = connector
            .try_client(Some(&header))
            .unwrap_or_else(|e| panic!("{header}: {e}"));
        assert_eq!(st(&c.call(r#"{"SH_END_ALL":{}}"#)), 1);
        let scrape = connector.get("/metrics", Some(&header));
        assert_eq!(scrape.status, 200);
    }
    assert_eq!(connector.get("/metrics", None).status, 200);
}

/// Bytes that look like TLS but are not a handshake, a ClientHello cut
/// short, 500 handshakes left half done, and TLS sessions that never send
/// their upgrade: each is closed (at the latest by the 10 s handshake
/// timeout, which counts from the accept), and meanwhile a client that was
/// connected and one that connects are served as usual.
#[test]
fn hostile_tls_handshakes_are_closed_and_block_nobody() {
    let pki = Pki::new("hostile-tls");
    let server = Server::start_tls(&pki, &["--shards", "2"]);
    let mut existing = server.client();
    let tkn = existing.new_session(r#"{"keys":{"a":1}}"#);
    let hello = client_hello(&pki);
    let mut big_record = b"\x16\x03\x01\xff\xff".to_vec();
    big_record.extend(std::iter::repeat_n(0x41, 300));
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("handshake record of nonsense", {
            let mut v = b"\x16\x03\x01\x00\x20".to_vec();
            v.extend_from_slice(b"nonsense, nonsense and nonsense!");
            v
        }),
        (
            "TLS header then text",
            b"\x16\x03\x01GET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("record longer than TLS allows", big_record),
        (
            "fatal alert first",
            b"\x15\x03\x03\x00\x02\x02\x28".to_vec(),
        ),
        (
            "application data first",
            b"\x17\x03\x03\x00\x05hello".to_vec(),
        ),
        ("empty handshake record", b"\x16\x03\x01\x00\x00".to_vec()),
        (
            "change cipher spec first",
            b"\x14\x03\x03\x00\x01\x01".to_vec(),
        ),
        ("unknown record type", b"\x63\x03\x03\x00\x01\x01".to_vec()),
        (
            "SSLv2 ClientHello",
            b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10\x07\x00\xc0".to_vec(),
        ),
        (
            "ClientHello claiming 16 MB",
            b"\x16\x03\x01\x00\x04\x01\xff\xff\xff".to_vec(),
        ),
        ("ClientHello, then its first half again", {
            let mut v = hello.clone();
            v.extend_from_slice(&hello[..hello.len() / 2]);
            v
        }),
    ];
    let mut hostile: Vec<(String, TcpStream)> = Vec::new();
    for (what, bytes) in &garbage {
        let mut s = raw(server.addr);
        // The server may close before it has read everything.
        let _ = s.write_all(bytes);
        hostile.push((what.to_string(), s));
    }
    // 500 handshakes left half done: half stop inside the ClientHello,
    // half after it (the server has answered and waits for us).
    for i in 0..500 {
        let mut s = raw(server.addr);
        let sent = if i % 2 == 0 {
            &hello[..hello.len() / 2]
        } else {
            &hello[..]
        };
        s.write_all(sent).expect("send");
        hostile.push((format!("half-open handshake {i}"), s));
    }
    // TLS done, and then no upgrade request.
    let mut silent = Vec::new();
    for _ in 0..4 {
        let mut tcp = raw(server.addr);
        let name = ServerName::try_from("localhost").expect("a DNS name");
        let mut tls =
            ClientConnection::new(pki.client_config(ClientCert::None), name).expect("client");
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).expect("TLS handshake");
        }
        silent.push(tcp);
    }
    // While all of that is pending, clients are served.
    for _ in 0..3 {
        let r = existing.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
        assert_eq!(r["keys"]["a"].as_u64(), Some(1));
        let mut newcomer = server.client();
        let r = newcomer.call(&format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#));
        assert_eq!(r["cnt"].as_u64(), Some(1));
        assert_eq!(newcomer.peer_certificate().as_ref(), Some(&pki.server_cert));
        assert_eq!(server.connector().get("/healthz", None).status, 200);
    }
    // None of them is left open.
    for (what, s) in &mut hostile {
        let reply = read_until_closed(s, what);
        assert!(!reply.starts_with(b"HTTP"), "{what}: {reply:?}");
    }
    for s in &mut silent {
        read_until_closed(s, "TLS without an upgrade");
    }
    let r = existing.call(&format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#));
    assert_eq!(r["keys"]["a"].as_u64(), Some(1));
}

#[test]
fn sighup_reloads_users_and_certificate_and_keeps_open_connections() {
    const DAN: (&str, &str) = ("dan", "dan's new pw");
    let mut pki = Pki::new("reload");
    let dir = TempDir::new("reload-users");
    let users = dir.path().join("users.json");
    write_users(&users, &[(ADMIN, Role::Admin), (APP, Role::App)]);
    let users_arg = users.to_str().expect("UTF-8 temp path");
    let server = Server::start_tls(&pki, &["--shards", "2", "--users", users_arg]);
    let connector = server.connector();
    let first_cert = pki.server_cert.clone();
    // Bob connects before the reload that removes him.
    let mut bob = connector.client_as(APP.0, APP.1);
    let tkn = bob.new_session(r#"{"keys":{"a":1}}"#);
    assert_eq!(bob.peer_certificate().as_ref(), Some(&first_cert));
    assert!(matches!(
        connector.try_client(Some(&basic(DAN.0, DAN.1))),
        Err(tungstenite::Error::Http(r)) if r.status() == 401
    ));

    write_users(&users, &[(ADMIN, Role::Admin), (DAN, Role::Read)]);
    pki.issue_server_cert(2, "nemesisdb test server, renewed");
    assert_ne!(pki.server_cert, first_cert);
    server.hang_up();
    let line = server.wait_for_line("reloaded");
    assert!(!line.contains("failed"), "{line}");

    // New connections: the new certificate and the new users.
    let mut dan = connector.client_as(DAN.0, DAN.1);
    assert_eq!(dan.peer_certificate().as_ref(), Some(&pki.server_cert));
    let get = format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["a"]}}}}"#);
    assert_eq!(dan.call(&get)["keys"]["a"].as_u64(), Some(1));
    let set = format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":2}}}}}}"#);
    assert_eq!(st(&dan.call(&set)), 16, "dan reads only");
    match connector.try_client(Some(&basic(APP.0, APP.1))) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        Err(other) => panic!("bob, removed: expected 401, got {other}"),
        Ok(_) => panic!("bob, removed, was let in"),
    }
    let mut c = connector.client();
    let r = c.call(&format!(
        r#"{{"SV_AUTH":{{"user":"{}","password":"{}"}}}}"#,
        APP.0, APP.1
    ));
    assert_eq!(st(&r), 17);
    // The connection from before keeps its TLS session and its role.
    assert_eq!(st(&bob.call(&set)), 1);
    assert_eq!(bob.peer_certificate().as_ref(), Some(&first_cert));

    // A users file that does not parse: the reload fails, nothing changes.
    std::fs::write(&users, "[{\"name\":").expect("write users");
    server.hang_up();
    server.wait_for_line("reload failed");
    let mut dan = connector.client_as(DAN.0, DAN.1);
    assert_eq!(dan.call(&get)["keys"]["a"].as_u64(), Some(2));
    assert_eq!(dan.peer_certificate().as_ref(), Some(&pki.server_cert));
    assert!(connector.try_client(Some(&basic(APP.0, APP.1))).is_err());
    // Nor does a certificate file that is not one (users fine again).
    write_users(&users, &[(ADMIN, Role::Admin)]);
    std::fs::write(&pki.cert_file, "not a certificate").expect("write cert");
    server.hang_up();
    server.wait_for_line("reload failed");
    let dan = connector.client_as(DAN.0, DAN.1);
    assert_eq!(dan.peer_certificate().as_ref(), Some(&pki.server_cert));
    assert_eq!(st(&bob.call(&get)), 1);
}

/// SIGHUP reads the client CA again too: after it, client certificates
/// must chain to the new CA; a connection made before stays.
#[test]
fn sighup_reloads_the_client_ca() {
    let pki = Pki::new("reload-ca");
    let dir = TempDir::new("reload-ca");
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::copy(&pki.ca_file, &client_ca).expect("copy CA");
    let client_ca_arg = client_ca.to_str().expect("UTF-8 temp path");
    let server = Server::start_tls(&pki, &["--shards", "2", "--tls-client-ca", client_ca_arg]);
    let connect = |cert: ClientCert| {
        Connector {
            addr: server.addr,
            tls: Some(pki.client_config(cert)),
        }
        .try_client(None)
    };
    let mut before = connect(ClientCert::Good).expect("a client of the CA");
    let tkn = before.new_session("{}");
    assert_refused_by_tls(connect(ClientCert::Stranger), "stranger, before");

    std::fs::copy(&pki.other_ca_file, &client_ca).expect("copy CA");
    server.hang_up();
    let line = server.wait_for_line("reloaded");
    assert!(!line.contains("failed"), "{line}");
    let mut stranger = connect(ClientCert::Stranger).expect("a client of the new CA");
    let count = format!(r#"{{"SH_COUNT":{{"tkn":{tkn}}}}}"#);
    assert_eq!(st(&stranger.call(&count)), 1);
    assert_refused_by_tls(connect(ClientCert::Good), "a client of the old CA");
    assert_eq!(st(&before.call(&count)), 1);
}

/// Runs the binary with `args` expecting it to exit on its own: its
/// status and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nemesisdb"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nemesisdb");
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?}: still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn listening_beyond_loopback_needs_users_or_no_auth() {
    let (code, stderr) = run_to_exit(&["--ip", "0.0.0.0", "--port", "0", "--shards", "2"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--users") && stderr.contains("--no-auth"),
        "{stderr}"
    );

    let loopback = |server: &Server| Connector {
        addr: SocketAddr::from(([127, 0, 0, 1], server.addr.port())),
        tls: None,
    };
    let open = Server::start_on("0.0.0.0", &["--shards", "2", "--no-auth"]);
    assert!(open.addr.ip().is_unspecified(), "{}", open.addr);
    let mut c = loopback(&open).client();
    assert!(c.new_session("{}") > 0);

    let dir = TempDir::new("protected");
    let users = all_roles(&dir);
    let guarded = Server::start_on("0.0.0.0", &["--shards", "2", "--users", &users]);
    let mut c = loopback(&guarded).client();
    assert_eq!(st(&c.call(r#"{"SH_NEW":{}}"#)), 15);
    let mut c = loopback(&guarded).client_as(APP.0, APP.1);
    assert!(c.new_session("{}") > 0);

    // All of 127/8 is loopback: no users needed.
    let other_loopback = Server::start_on("127.0.0.2", &["--shards", "2"]);
    let mut c = other_loopback.client();
    assert!(c.new_session("{}") > 0);
}
