//! Command-line flags, and the validated [`Config`] a run is built from.
//!
//! Owns: flag parsing and every check on flag values. Everything after this
//! module may assume a `Config` is consistent (threads <= connections, a
//! positive rate, a parsed target).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use clap::{Parser, ValueEnum};

pub use crate::shards::Locality;
use crate::tls::{self, Identity, Trust};

/// What one operation does; the same meaning on both targets (see the crate doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// SH_GET one key of a random session | HGET
    Get,
    /// SH_SET one key of a random session | HSET
    Set,
    /// 80% get, 20% set
    Mixed,
    /// SH_GET on sessions with duration 3600 and extendOnGet | HGET + EXPIRE 3600
    Sliding,
    /// SH_TOUCH (slide) on sessions with duration 3600 | PEXPIRE 3600000 + PTTL
    Touch,
    /// SH_INCR key counter of a random session | HINCRBY counter 1
    Incr,
    /// SH_GET counter withVersion, then SH_SET counter + 1 ifVersion, again on 104 |
    /// WATCH + HGET, then MULTI + HSET + EXEC, again on a nil EXEC
    Cas,
    /// SH_NEW with keys + SH_GET + SH_END | HSET + EXPIRE + HGETALL + DEL
    Lifecycle,
    /// SH_NEW + SH_SET + SH_GET + SH_END | HSET + EXPIRE + HGETALL + DEL
    LifecycleClassic,
    /// SH_OWNER_END, then 5 x SH_NEW with owner and keys | SMEMBERS, then DEL each
    /// + DEL set + 5 x HSET + SADD
    LogoutAll,
    /// SH_NEW (1-3 s) + SH_SET, so sessions expire under load | HSET + EXPIRE 1-3
    Expiry,
    /// create --sessions sessions (duration 3600), then stop
    Populate,
    /// --sessions sessions whose deadlines fall in one second, a subscriber
    /// to their expiry (lag from deadline to arrival), and a second client's
    /// SH_GET | HGET one at a time meanwhile. Redis: keyspace notifications
    ExpiryEvents,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Set => "set",
            Workload::Mixed => "mixed",
            Workload::Sliding => "sliding",
            Workload::Touch => "touch",
            Workload::Incr => "incr",
            Workload::Cas => "cas",
            Workload::Lifecycle => "lifecycle",
            Workload::LifecycleClassic => "lifecycle-classic",
            Workload::LogoutAll => "logout-all",
            Workload::Expiry => "expiry",
            Workload::Populate => "populate",
            Workload::ExpiryEvents => "expiry-events",
        }
    }

    /// Workloads that read or write existing sessions need them created first.
    pub fn needs_sessions(self) -> bool {
        matches!(
            self,
            Workload::Get
                | Workload::Set
                | Workload::Mixed
                | Workload::Sliding
                | Workload::Touch
                | Workload::Incr
                | Workload::Cas
        )
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for nemesisdb (ws://, wss://) and Redis (redis://, rediss://)",
    long_about = "Load generator for nemesisdb (ws://, wss://) and Redis (redis://, rediss://).\n\n\
        Closed loop by default: every connection keeps --pipeline operations in flight.\n\
        With --rate: open loop at a fixed total rate; latency is counted from each\n\
        operation's scheduled send time, so a stalled server shows up as latency."
)]
struct Flags {
    /// Target: ws://HOST:PORT/[PATH] or wss://... (nemesisdb), redis://HOST:PORT
    /// or rediss://... (Redis); wss and rediss speak TLS
    #[arg(long, default_value = "ws://127.0.0.1:1987/")]
    url: String,

    /// Speak TLS to a ws:// or redis:// URL (the same as wss:// or rediss://)
    #[arg(long)]
    tls: bool,

    /// TLS: accept any server certificate (self-signed test certificates);
    /// the handshake's signatures are still checked
    #[arg(long, conflicts_with = "tls_ca")]
    insecure: bool,

    /// TLS: trust the certificates in this PEM file (instead of the bundled
    /// Mozilla roots from webpki-roots)
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// TLS: our certificate chain (PEM), for a server that asks for one
    /// (mutual TLS, nemesisdb's --tls-client-ca)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// TLS: the private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Authenticate as this user: HTTP Basic in the WebSocket upgrade and in
    /// --scrape's requests (nemesisdb), `AUTH user password` (Redis)
    #[arg(long, requires = "password")]
    user: Option<String>,

    /// The password of --user
    #[arg(long, requires = "user")]
    password: Option<String>,

    /// What one operation does
    #[arg(long, value_enum, default_value = "get")]
    workload: Workload,

    /// Connections in total, spread over --threads
    #[arg(long, default_value_t = 50)]
    connections: usize,

    /// Operations in flight per connection (an operation may be several requests:
    /// lifecycle-classic is 4)
    #[arg(long, default_value_t = 1)]
    pipeline: usize,

    /// Seconds to run (default 10 unless --requests is given); expiry-events:
    /// the most seconds to wait for the events after the last deadline
    /// (default 120)
    #[arg(long, conflicts_with = "requests")]
    duration: Option<f64>,

    /// Run exactly this many operations, then stop
    #[arg(long)]
    requests: Option<u64>,

    /// Sessions created before get/set/mixed/sliding/touch/incr/cas (untimed); logout-all:
    /// about this many, 5 per owner; populate creates this many (or --requests)
    #[arg(long, default_value_t = 10_000)]
    sessions: u64,

    /// Bytes in each stored value
    #[arg(long, default_value_t = 16)]
    value_size: usize,

    /// Client threads (default: available cores)
    #[arg(long)]
    threads: Option<usize>,

    /// Open loop: total operations per second over all connections
    #[arg(long)]
    rate: Option<f64>,

    /// Print one JSON object as the last line of stdout
    #[arg(long)]
    json: bool,

    /// Write report.json and latency.svg into this directory
    #[arg(long)]
    out: Option<PathBuf>,

    /// Seed for every random choice (sessions, keys, durations, masks)
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Fail a connection that has waited this many seconds for a response
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,

    /// Also report this (server) process's CPU time during the timed run
    /// (from /proc/PID/stat), in the summary table and report.json
    #[arg(long)]
    server_pid: Option<u32>,

    /// nemesisdb: one more connection subscribes to every session event
    /// (SH_SUBSCRIBE) during the timed run and reads them as fast as they
    /// come; reports events received, lost, and their lag (arrival minus
    /// the deadline for expiries, minus `at` for the others)
    #[arg(long)]
    subscribe: bool,

    /// Ask for a snapshot this many seconds into the timed run, on one more
    /// connection (nemesisdb: SH_SAVE of dataset `loadtest`, which needs
    /// persistence on; Redis: BGSAVE), and report latency while it ran
    #[arg(long)]
    save_at: Option<f64>,

    /// nemesisdb: its Prometheus metrics, e.g. http://127.0.0.1:1987/metrics
    /// (the WebSocket port), fetched just before and after the timed run;
    /// reports the server's own p50/p99 of the commands the run sent beside
    /// the client's, and its answers by command and status
    #[arg(long, value_name = "URL")]
    scrape: Option<String>,

    /// nemesisdb, workloads on existing sessions: any (sessions at random),
    /// local (only sessions owned by the shard serving the connection) or
    /// remote (only sessions owned by another shard: every request is
    /// forwarded)
    #[arg(long, value_enum, default_value = "any")]
    locality: Locality,
}

/// Where the load goes, and which protocol it speaks.
#[derive(Clone, Debug)]
pub struct Target {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// `host[:port]` as given, for the WebSocket `Host` header.
    pub host: String,
    /// Request path of the WebSocket upgrade (`/` when none was given).
    pub path: String,
    /// The URL as given, reported as `target`.
    pub url: String,
    /// `Some`: the connection speaks TLS (wss://, rediss://, --tls).
    pub tls: Option<tls::Tls>,
    /// `--user`/`--password`, sent when a connection opens.
    pub auth: Option<Credentials>,
}

/// A user and its password (`--user`, `--password`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    /// The value of an `Authorization` header: `Basic base64(user:password)`
    /// (RFC 7617).
    pub fn basic(&self) -> String {
        let pair = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// Never prints the password.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// NemesisDB JSON commands over WebSocket.
    Ws,
    /// Redis RESP2.
    Redis,
}

/// How many operations a run performs.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// Exactly this many operations.
    Requests(u64),
    /// Issue operations until this much time has passed, then drain.
    Duration(Duration),
}

/// A validated run description.
#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    pub workload: Workload,
    pub connections: usize,
    pub pipeline: usize,
    pub stop: Stop,
    pub sessions: u64,
    pub value_size: usize,
    pub threads: usize,
    /// Open-loop total rate in operations per second; `None` is closed loop.
    pub rate: Option<f64>,
    pub json: bool,
    pub out: Option<PathBuf>,
    pub seed: u64,
    pub timeout: Duration,
    /// A process whose CPU time the timed run reports.
    pub server_pid: Option<u32>,
    /// A subscriber to session events beside the workload (nemesisdb).
    pub subscribe: bool,
    /// When to ask for a snapshot, into the timed run.
    pub save_at: Option<Duration>,
    /// The server's `/metrics`, scraped before and after the timed run.
    pub scrape: Option<String>,
    /// Which server certificates TLS connections accept, and our own (the
    /// target's connections, and an https:// `--scrape`'s).
    pub tls: tls::Options,
    /// Which sessions a connection picks, relative to its shard.
    pub locality: Locality,
}

impl Config {
    /// Parses `std::env::args`, exiting with clap's message on a bad flag.
    pub fn from_args() -> Result<Config, String> {
        Config::from_flags(Flags::parse())
    }

    fn from_flags(f: Flags) -> Result<Config, String> {
        let (mut target, secure) = parse_target(&f.url)?;
        let trust = match (&f.tls_ca, f.insecure) {
            (Some(path), _) => Trust::Ca(Arc::new(tls::load_certificates("--tls-ca", path)?)),
            (None, true) => Trust::Any,
            (None, false) => Trust::Roots,
        };
        let identity = match (&f.tls_cert, &f.tls_key) {
            (Some(cert), Some(key)) => Some(Identity::load(cert, key)?),
            _ => None,
        };
        let tls_flags = f.insecure || f.tls_ca.is_some() || identity.is_some();
        let scrape_secure = f
            .scrape
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        if tls_flags && !(secure || f.tls || scrape_secure) {
            return Err(
                "--insecure, --tls-ca and --tls-cert are for TLS: a wss:// or \
                 rediss:// --url, --tls, or an https:// --scrape"
                    .into(),
            );
        }
        let tls_options = tls::Options { trust, identity };
        if secure || f.tls {
            target.tls = Some(tls::Tls::new(&tls_options, &target.host)?);
        }
        target.auth = match (f.user, f.password) {
            (Some(user), Some(password)) => {
                if user.contains(':') {
                    return Err("--user: a user name cannot hold ':' (HTTP Basic \
                         separates the user from the password with it)"
                        .into());
                }
                Some(Credentials { user, password })
            }
            _ => None,
        };
        if f.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if f.pipeline == 0 || f.pipeline > 4096 {
            return Err("--pipeline must be between 1 and 4096".into());
        }
        if f.value_size == 0 || f.value_size > 16 << 20 {
            return Err("--value-size must be between 1 and 16777216".into());
        }
        if f.sessions == 0 || f.sessions > u32::MAX as u64 {
            return Err("--sessions must be between 1 and 4294967295".into());
        }
        if !(f.timeout > 0.0 && f.timeout.is_finite()) {
            return Err("--timeout must be a positive number of seconds".into());
        }
        let stop = match (f.requests, f.duration) {
            (Some(0), _) => return Err("--requests must be at least 1".into()),
            (Some(n), _) => Stop::Requests(n),
            (None, Some(d)) if d > 0.0 && d.is_finite() && d < 1e6 => {
                Stop::Duration(Duration::from_secs_f64(d))
            }
            (None, Some(_)) => return Err("--duration must be a positive number of seconds".into()),
            // populate creates --sessions sessions and stops
            (None, None) if f.workload == Workload::Populate => Stop::Requests(f.sessions),
            (None, None) if f.workload == Workload::ExpiryEvents => {
                Stop::Duration(Duration::from_secs(120))
            }
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        };
        if let Some(r) = f.rate
            && !(r > 0.0 && r.is_finite())
        {
            return Err("--rate must be a positive number of operations per second".into());
        }
        if f.workload == Workload::ExpiryEvents {
            if f.requests.is_some() || f.rate.is_some() {
                return Err("expiry-events runs one probe request at a time until the \
                     events are in: --requests and --rate do not apply"
                    .into());
            }
        } else if f.subscribe && target.protocol == Protocol::Redis {
            return Err(
                "--subscribe is for nemesisdb: a Redis keyspace notification \
                 names the key only, with no time of the event nor the key's deadline, \
                 so its lag cannot be measured beside an arbitrary workload (the \
                 expiry-events workload sets every key's expiry time itself and \
                 measures Redis's expired notifications)"
                    .into(),
            );
        }
        let save_at = match f.save_at {
            Some(_) if f.workload == Workload::ExpiryEvents => {
                return Err("--save-at does not apply to expiry-events".into());
            }
            Some(s) if s >= 0.0 && s.is_finite() && s < 1e6 => Some(Duration::from_secs_f64(s)),
            Some(_) => return Err("--save-at must be a number of seconds".into()),
            None => None,
        };
        if let Some(url) = &f.scrape {
            if target.protocol == Protocol::Redis {
                return Err(
                    "--scrape is for nemesisdb: it reads nemesisdb's metric names \
                     from its /metrics; a redis:// target has none"
                        .into(),
                );
            }
            if f.workload == Workload::ExpiryEvents {
                return Err("--scrape does not apply to expiry-events".into());
            }
            crate::scrape::check_url(url)?;
        }
        if f.locality != Locality::Any {
            if target.protocol == Protocol::Redis {
                return Err(format!(
                    "--locality {} is for nemesisdb: a Redis server has no shards",
                    f.locality.name()
                ));
            }
            if !f.workload.needs_sessions() {
                return Err(format!(
                    "--locality {} applies to the workloads on existing sessions \
                     (get, set, mixed, sliding, touch, incr, cas); {} creates its own, \
                     always on the connection's shard",
                    f.locality.name(),
                    f.workload.name()
                ));
            }
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = f.threads.unwrap_or(cores);
        if threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        Ok(Config {
            target,
            workload: f.workload,
            connections: f.connections,
            pipeline: f.pipeline,
            stop,
            sessions: f.sessions,
            value_size: f.value_size,
            threads: threads.min(f.connections),
            rate: f.rate,
            json: f.json,
            out: f.out,
            seed: f.seed,
            timeout: Duration::from_secs_f64(f.timeout),
            server_pid: f.server_pid,
            subscribe: f.subscribe,
            save_at,
            scrape: f.scrape,
            tls: tls_options,
            locality: f.locality,
        })
    }
}

/// `ws://host:port/path`, `redis://host:port`, or the same over TLS
/// (`wss://`, `rediss://`: the second value is true). The ports default to
/// 1987 and 6379 with or without TLS (a nemesisdb port speaks one or the
/// other; Redis's TLS port is chosen by `tls-port`).
fn parse_target(url: &str) -> Result<(Target, bool), String> {
    let schemes = [
        ("ws://", Protocol::Ws, false, 1987),
        ("wss://", Protocol::Ws, true, 1987),
        ("redis://", Protocol::Redis, false, 6379),
        ("rediss://", Protocol::Redis, true, 6379),
    ];
    let Some((protocol, secure, rest, default_port)) = schemes
        .iter()
        .find_map(|&(scheme, p, secure, port)| Some((p, secure, url.strip_prefix(scheme)?, port)))
    else {
        return Err(format!(
            "--url {url:?}: expected ws://HOST:PORT/, wss://HOST:PORT/, redis://HOST:PORT \
             or rediss://HOST:PORT"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("--url {url:?}: no host"));
    }
    // A bracketed IPv6 literal keeps its colons inside the brackets.
    let has_port = match authority.rfind(']') {
        Some(b) => authority[b..].contains(':'),
        None => authority.contains(':'),
    };
    let with_port = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("--url {url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--url {url:?}: host has no address"))?;
    let target = Target {
        protocol,
        addr,
        host: authority.to_string(),
        path: path.to_string(),
        url: url.to_string(),
        tls: None,
        auth: None,
    };
    Ok((target, secure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let (t, secure) = parse_target("ws://127.0.0.1:1987/").unwrap();
        assert_eq!((t.protocol, secure), (Protocol::Ws, false));
        assert_eq!(t.addr.port(), 1987);
        assert_eq!(t.path, "/");
        let (t, secure) = parse_target("redis://127.0.0.1").unwrap();
        assert_eq!((t.protocol, secure), (Protocol::Redis, false));
        assert_eq!(t.addr.port(), 6379);
        let (t, _) = parse_target("ws://127.0.0.1:5/x/y").unwrap();
        assert_eq!(t.path, "/x/y");
        assert_eq!(t.host, "127.0.0.1:5");
        assert!(parse_target("http://127.0.0.1").is_err());
        assert!(parse_target("ws:///").is_err());
        let (t, secure) = parse_target("wss://127.0.0.1:7/p").unwrap();
        assert_eq!((t.protocol, secure), (Protocol::Ws, true));
        assert_eq!((t.addr.port(), t.path.as_str()), (7, "/p"));
        let (t, secure) = parse_target("wss://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), secure), (1987, true));
        let (t, secure) = parse_target("rediss://127.0.0.1").unwrap();
        assert_eq!((t.protocol, secure), (Protocol::Redis, true));
        assert_eq!(t.addr.port(), 6379);
        let (t, secure) = parse_target("rediss://[::1]:6380").unwrap();
        assert_eq!(
            (t.addr.port(), secure, t.host.as_str()),
            (6380, true, "[::1]:6380")
        );
        assert!(parse_target("https://127.0.0.1").is_err());
        assert!(parse_target("wss:///").is_err());
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        let f = Flags::try_parse_from([&["loadtest"], args].concat()).map_err(|e| e.to_string())?;
        Config::from_flags(f)
    }

    #[test]
    fn tls_comes_from_the_scheme_or_the_flag() {
        assert!(parse(&[]).unwrap().target.tls.is_none());
        let c = parse(&["--url", "wss://127.0.0.1:1/", "--insecure"]).unwrap();
        let tls = c.target.tls.unwrap();
        assert_eq!(
            format!("{:?}", tls.name),
            "IpAddress(V4(Ipv4Addr([127, 0, 0, 1])))"
        );
        assert!(matches!(c.tls.trust, Trust::Any));
        let c = parse(&["--url", "redis://localhost:1", "--tls"]).unwrap();
        assert_eq!(c.target.protocol, Protocol::Redis);
        let tls = c.target.tls.unwrap();
        assert_eq!(format!("{:?}", tls.name), "DnsName(\"localhost\")");
        assert!(matches!(c.tls.trust, Trust::Roots));
        let c = parse(&["--url", "ws://[::1]:1/", "--tls"]).unwrap();
        assert!(c.target.tls.is_some());
        let c = parse(&["--url", "rediss://127.0.0.1:1"]).unwrap();
        assert!(c.target.tls.is_some());
        // Trust flags without TLS anywhere say so.
        let e = parse(&["--insecure"]).unwrap_err();
        assert!(
            e.contains("--insecure, --tls-ca and --tls-cert are for TLS"),
            "{e}"
        );
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).is_err());
        assert!(parse(&["--tls", "--tls-cert", "c.pem"]).is_err());
        let e = parse(&[
            "--tls",
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "k.pem",
        ]);
        assert!(e.unwrap_err().starts_with("--tls-cert /nonexistent/c.pem"));
        let https = "https://127.0.0.1:1/metrics";
        let c = parse(&["--insecure", "--scrape", https]).unwrap();
        assert!(c.target.tls.is_none());
        assert_eq!(c.scrape.as_deref(), Some(https));
        assert!(parse(&["--insecure", "--tls-ca", "x.pem", "--tls"]).is_err());
        let e = parse(&["--tls", "--tls-ca", "/nonexistent/ca.pem"]).unwrap_err();
        assert!(e.starts_with("--tls-ca /nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn locality_is_for_nemesisdb_session_workloads() {
        assert_eq!(parse(&[]).unwrap().locality, Locality::Any);
        let c = parse(&["--locality", "remote", "--workload", "mixed"]).unwrap();
        assert_eq!(c.locality, Locality::Remote);
        let e = parse(&["--locality", "local", "--url", "redis://127.0.0.1:1"]).unwrap_err();
        assert!(e.contains("no shards"), "{e}");
        let e = parse(&["--locality", "local", "--workload", "lifecycle"]).unwrap_err();
        assert!(e.contains("lifecycle creates its own"), "{e}");
        assert!(parse(&["--locality", "any", "--url", "redis://127.0.0.1:1"]).is_ok());
    }

    #[test]
    fn credentials_need_both_flags() {
        let c = parse(&["--user", "u", "--password", "p:w"]).unwrap();
        let auth = c.target.auth.unwrap();
        assert_eq!((auth.user.as_str(), auth.password.as_str()), ("u", "p:w"));
        assert_eq!(auth.basic(), "Basic dTpwOnc=");
        assert!(
            !format!("{auth:?}").contains("p:w"),
            "Debug hides the password"
        );
        assert!(parse(&[]).unwrap().target.auth.is_none());
        assert!(parse(&["--user", "u"]).is_err());
        assert!(parse(&["--password", "p"]).is_err());
        assert!(parse(&["--user", "a:b", "--password", "p"]).is_err());
        let c = parse(&[
            "--url",
            "rediss://127.0.0.1:1",
            "--user",
            "u",
            "--password",
            "p",
        ]);
        assert!(c.unwrap().target.auth.is_some());
    }

    #[test]
    fn flags_validate() {
        let f = Flags::try_parse_from(["loadtest", "--requests", "5", "--threads", "8"]).unwrap();
        let c = Config::from_flags(f).unwrap();
        assert!(matches!(c.stop, Stop::Requests(5)));
        assert_eq!(c.threads, 8);
        let f =
            Flags::try_parse_from(["loadtest", "--connections", "2", "--threads", "8"]).unwrap();
        assert_eq!(Config::from_flags(f).unwrap().threads, 2);
        let f = Flags::try_parse_from(["loadtest", "--workload", "populate", "--sessions", "7"])
            .unwrap();
        assert!(matches!(
            Config::from_flags(f).unwrap().stop,
            Stop::Requests(7)
        ));
        assert!(Flags::try_parse_from(["loadtest", "--requests", "5", "--duration", "1"]).is_err());
        let f = Flags::try_parse_from(["loadtest", "--rate=-1"]).unwrap();
        assert!(Config::from_flags(f).is_err());
    }

    #[test]
    fn subscribe_and_expiry_events_validate() {
        let parse = |args: &[&str]| {
            let f = Flags::try_parse_from([&["loadtest"], args].concat()).unwrap();
            Config::from_flags(f)
        };
        assert!(parse(&["--subscribe"]).unwrap().subscribe);
        let redis = parse(&["--url", "redis://127.0.0.1:1", "--subscribe"]).unwrap_err();
        assert!(redis.contains("--subscribe is for nemesisdb"), "{redis}");
        let c = parse(&[
            "--url",
            "redis://127.0.0.1:1",
            "--workload",
            "expiry-events",
        ])
        .unwrap();
        assert!(matches!(c.stop, Stop::Duration(d) if d.as_secs() == 120));
        let c = parse(&["--workload", "expiry-events", "--duration", "5"]).unwrap();
        assert!(matches!(c.stop, Stop::Duration(d) if d.as_secs() == 5));
        assert!(parse(&["--workload", "expiry-events", "--requests", "5"]).is_err());
        assert!(parse(&["--workload", "expiry-events", "--rate", "5"]).is_err());
    }

    #[test]
    fn scrape_validates() {
        let parse = |args: &[&str]| {
            let f = Flags::try_parse_from([&["loadtest"], args].concat()).unwrap();
            Config::from_flags(f)
        };
        let url = "http://127.0.0.1:1987/metrics";
        assert_eq!(
            parse(&["--scrape", url]).unwrap().scrape.as_deref(),
            Some(url)
        );
        assert_eq!(parse(&[]).unwrap().scrape, None);
        let redis = parse(&["--url", "redis://127.0.0.1:1", "--scrape", url]).unwrap_err();
        assert!(redis.contains("--scrape is for nemesisdb"), "{redis}");
        let bad = parse(&["--scrape", "127.0.0.1:1987"]).unwrap_err();
        assert!(bad.starts_with("--scrape"), "{bad}");
        assert!(parse(&["--scrape", "https://127.0.0.1/metrics"]).is_ok());
        assert!(parse(&["--workload", "expiry-events", "--scrape", url]).is_err());
    }
}
