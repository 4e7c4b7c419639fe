//! Command-line flags and the JSONC config file, turned into a validated
//! [`Config`] before anything starts. Flags override the file.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use simd_json::OwnedValue;
use simd_json::prelude::*;

use crate::logging;
pub use crate::persist::log::FsyncPolicy;
use crate::security::{SecuritySettings, TlsFiles};

pub const DEFAULT_PORT: u16 = 1987;
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_OUTPUT_BUFFER: usize = 32 * 1024 * 1024;
pub const DEFAULT_OUTPUT_STALL_TIMEOUT_S: u64 = 30;

/// Raw command-line flags.
#[derive(Parser, Debug, Default)]
#[command(
    name = "nemesisdb",
    version,
    about = "In-memory session store speaking the NemesisDB protocol (JSON over WebSocket)"
)]
pub struct Flags {
    /// JSONC config file with NemesisDB's field names (ip, port, maxPayload,
    /// persist: {enabled, path}) plus shards, pinCores and log: {level,
    /// format}; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on. Loopback by default: expose it deliberately.
    #[arg(long, value_name = "IP")]
    pub ip: Option<IpAddr>,
    /// Port to listen on (0 picks a free one and logs it) [default: 1987].
    #[arg(long)]
    pub port: Option<u16>,
    /// Shard threads, each owning a share of the sessions [default: available cores].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Pin shards to cores: "auto" pins shard i to core i; a list such as
    /// "0,2" or "0-3" pins shard i to the i-th core listed [default: no pinning].
    #[arg(long, value_name = "auto|LIST")]
    pub pin_cores: Option<String>,
    /// Largest WebSocket message accepted, in bytes; larger ones close the
    /// connection with code 1009 [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_payload: Option<usize>,
    /// Connections the server holds at once, over all shards; more are
    /// refused (HTTP 503, then closed) [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Responses a client has not read, in bytes, before the server stops
    /// reading its requests [default: 33554432].
    #[arg(long, value_name = "BYTES")]
    pub max_output_buffer: Option<usize>,
    /// Seconds a client may stay over --max-output-buffer before it is
    /// disconnected [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub output_stall_timeout: Option<u64>,
    /// Memory the stored sessions may use, in bytes (0 = no limit); a write
    /// past it is refused with status 150 [default: 0].
    #[arg(long, value_name = "BYTES")]
    pub max_memory: Option<u64>,
    /// Directory for snapshots (enables SH_SAVE / SH_LOAD).
    #[arg(long, value_name = "DIR")]
    pub persist_path: Option<PathBuf>,
    /// Dataset to load at start-up (the newest complete version).
    #[arg(long, value_name = "NAME")]
    pub load_name: Option<String>,
    /// Where --load-name looks [default: the persist path].
    #[arg(long, value_name = "DIR")]
    pub load_path: Option<PathBuf>,
    /// Save every session as dataset NAME when stopping on SIGINT/SIGTERM
    /// (needs persistence).
    #[arg(long, value_name = "NAME")]
    pub save_on_shutdown: Option<String>,
    /// Session events each shard keeps for subscribers (SH_SUBSCRIBE) to
    /// read or resume from [default: 100000].
    #[arg(long, value_name = "N")]
    pub event_retention: Option<usize>,
    /// Log (at warn) requests whose server time passes this many
    /// milliseconds, at most one line a second per shard [default: none].
    #[arg(long, value_name = "MS")]
    pub slow_request_ms: Option<u64>,
    /// Seconds between periodic snapshots (0 = none) [default: 300 with
    /// persistence, else 0].
    #[arg(long, value_name = "SECONDS")]
    pub snapshot_every: Option<u64>,
    /// Dataset the periodic snapshots (and recovery) use [default: auto].
    #[arg(long, value_name = "NAME")]
    pub snapshot_name: Option<String>,
    /// Complete snapshot versions kept after each one [default: 3].
    #[arg(long, value_name = "N")]
    pub snapshot_keep: Option<usize>,
    /// Change log: fsync "always" (before answering), "everysec", "no"
    /// (the kernel decides) or "off" (no log) [default: everysec with
    /// persistence].
    #[arg(long, value_name = "always|everysec|no|off")]
    pub log_fsync: Option<String>,
    /// A change-log segment is closed at this size [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    pub log_segment_bytes: Option<u64>,
    /// At start-up, truncate a change log that is damaged before its end
    /// (losing what follows the damage) instead of refusing to start.
    #[arg(long)]
    pub log_repair: bool,
    /// Diagnostic log (on stdout; not the change log): the least severe
    /// events written, "error", "warn", "info", "debug" or "trace". RUST_LOG,
    /// when set and not empty, wins over it: a tracing EnvFilter directive
    /// list such as "warn,nemesisdb::startup=debug" [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Diagnostic log lines: "text" (for people) or "json" (one object per
    /// line: timestamp, level, threadName, target, fields) [default: text].
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
    /// PEM certificate chain: with --tls-key the port speaks only TLS
    /// (wss://, and https:// for the HTTP endpoints). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate that chains
    /// to one of them (mutual TLS). Needs --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Users file: a JSON list of {"name", "passwordSha256", "role"} with
    /// role admin, app or read. Connections must then authenticate (Basic
    /// auth in the upgrade, or SV_AUTH first). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Allow listening on an address other than loopback without users
    /// (anyone who reaches the port may read and end every session).
    #[arg(long)]
    pub no_auth: bool,
}

/// Which cores the shards run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinning {
    None,
    /// Shard i runs on `cores[i]`.
    Cores(Vec<usize>),
}

impl fmt::Display for Pinning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pinning::None => write!(f, "none"),
            Pinning::Cores(cores) => {
                let list: Vec<String> = cores.iter().map(|c| c.to_string()).collect();
                write!(f, "cores {}", list.join(","))
            }
        }
    }
}

/// Everything the server needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub addr: SocketAddr,
    pub shards: usize,
    pub pinning: Pinning,
    pub max_payload: usize,
    pub max_connections: usize,
    pub max_output_buffer: usize,
    pub output_stall_timeout: Duration,
    /// 0 means no limit.
    pub max_memory: u64,
    /// Snapshot directory; None: persistence is off.
    pub persist: Option<PathBuf>,
    /// Dataset to load at start-up, and where it is.
    pub load: Option<Load>,
    /// Dataset to save when stopping.
    pub save_on_shutdown: Option<String>,
    /// Events each shard keeps (1 or more).
    pub event_retention: usize,
    /// Requests slower than this are logged (None: none are).
    pub slow_request: Option<Duration>,
    /// Periodic snapshots and the change log (with persistence only).
    pub durability: Durability,
    /// The diagnostic log's level and format (`RUST_LOG` is read by
    /// `logging::init`, not here).
    pub logging: logging::Settings,
    /// TLS and users files (read by `security::Security::load`).
    pub security: SecuritySettings,
}

/// Periodic snapshots and the change log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durability {
    /// Seconds between snapshots; 0: none.
    pub snapshot_every_s: u64,
    pub snapshot_name: String,
    pub snapshot_keep: usize,
    /// None: no change log.
    pub log: Option<FsyncPolicy>,
    pub log_segment_bytes: u64,
    pub log_repair: bool,
}

/// Seconds between periodic snapshots when persistence is on.
pub const DEFAULT_SNAPSHOT_EVERY_S: u64 = 300;
/// The longest interval between periodic snapshots: a year.
pub const MAX_SNAPSHOT_EVERY_S: u64 = 365 * 24 * 3600;
/// A change-log segment's size before the next begins.
pub const DEFAULT_LOG_SEGMENT_BYTES: u64 = 64 << 20;

/// A dataset to load at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    pub name: String,
    pub root: PathBuf,
}

/// Why the configuration cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    File { path: PathBuf, reason: String },
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::File { path, reason } => {
                write!(f, "config file {}: {reason}", path.display())
            }
            ConfigError::Invalid(reason) => write!(f, "{reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(reason.into())
}

/// Settings read from the config file; `None` where the file is silent.
#[derive(Default, Debug)]
struct FileSettings {
    ip: Option<IpAddr>,
    port: Option<u16>,
    max_payload: Option<usize>,
    max_connections: Option<usize>,
    max_output_buffer: Option<usize>,
    output_stall_timeout: Option<u64>,
    max_memory: Option<u64>,
    shards: Option<usize>,
    pin_cores: Option<String>,
    persist_enabled: bool,
    persist_path: Option<PathBuf>,
    event_retention: Option<usize>,
    slow_request_ms: Option<u64>,
    snapshot_every: Option<u64>,
    snapshot_name: Option<String>,
    snapshot_keep: Option<usize>,
    log_fsync: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    users: Option<PathBuf>,
    no_auth: bool,
}

impl Config {
    /// Validates flags (and the file they name) into a config.
    /// `available_cores` is the machine's core ids, for pinning.
    pub fn resolve(flags: Flags, available_cores: &[usize]) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let flags_durability = DurabilityFlags {
            snapshot_every: flags.snapshot_every,
            snapshot_name: flags.snapshot_name.clone(),
            snapshot_keep: flags.snapshot_keep,
            log_fsync: flags.log_fsync.clone(),
            log_segment_bytes: flags.log_segment_bytes,
            log_repair: flags.log_repair,
        };
        let logging = resolve_logging(&flags, &file)?;
        let flags_security = SecurityFlags {
            tls_cert: flags.tls_cert.clone(),
            tls_key: flags.tls_key.clone(),
            tls_client_ca: flags.tls_client_ca.clone(),
            users: flags.users.clone(),
            no_auth: flags.no_auth,
        };
        let persist_on = flags.persist_path.is_some() || file.persist_enabled;
        let durability = resolve_durability(&flags_durability, &file, persist_on)?;
        let ip = flags
            .ip
            .or(file.ip)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let security = resolve_security(&flags_security, &file, ip)?;
        let port = flags.port.or(file.port).unwrap_or(DEFAULT_PORT);
        let shards = flags
            .shards
            .or(file.shards)
            .unwrap_or_else(|| available_cores.len().max(1));
        if shards == 0 || shards > 1024 {
            return Err(invalid(format!("shards must be 1 to 1024, not {shards}")));
        }
        let max_payload = flags
            .max_payload
            .or(file.max_payload)
            .unwrap_or(DEFAULT_MAX_PAYLOAD);
        if max_payload < 64 {
            return Err(invalid("max payload must be at least 64 bytes"));
        }
        let max_connections = flags
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(invalid("max connections must be at least 1"));
        }
        let max_output_buffer = flags
            .max_output_buffer
            .or(file.max_output_buffer)
            .unwrap_or(DEFAULT_MAX_OUTPUT_BUFFER);
        if max_output_buffer < 4096 {
            return Err(invalid("max output buffer must be at least 4096 bytes"));
        }
        let stall_s = flags
            .output_stall_timeout
            .or(file.output_stall_timeout)
            .unwrap_or(DEFAULT_OUTPUT_STALL_TIMEOUT_S);
        if stall_s == 0 {
            return Err(invalid(
                "the output stall timeout must be at least 1 second",
            ));
        }
        let max_memory = flags.max_memory.or(file.max_memory).unwrap_or(0);
        let pinning = match flags.pin_cores.or(file.pin_cores) {
            None => Pinning::None,
            Some(spec) => parse_pinning(&spec, shards, available_cores)?,
        };
        let persist = match (
            flags.persist_path,
            file.persist_enabled,
            file.persist_path.clone(),
        ) {
            (Some(path), _, _) => Some(path),
            (None, true, Some(path)) => Some(path),
            (None, true, None) => {
                return Err(invalid("persist.enabled needs persist.path"));
            }
            (None, false, _) => None,
        };
        let dataset = |flag: &str, name: String| {
            if crate::persist::validate_dataset_name(&name) {
                Ok(name)
            } else {
                Err(invalid(format!(
                    "{flag}: \"{name}\" is not a dataset name (1 to 128 of [A-Za-z0-9_.-], not . or ..)"
                )))
            }
        };
        let load = match flags.load_name {
            None if flags.load_path.is_some() => {
                return Err(invalid("--load-path goes with --load-name"));
            }
            None => None,
            Some(name) => {
                let name = dataset("--load-name", name)?;
                let root = flags.load_path.or_else(|| persist.clone()).ok_or_else(|| {
                    invalid("--load-name needs --load-path or persistence (--persist-path)")
                })?;
                Some(Load { name, root })
            }
        };
        let save_on_shutdown = match flags.save_on_shutdown {
            None => None,
            Some(_) if persist.is_none() => {
                return Err(invalid(
                    "--save-on-shutdown needs persistence (--persist-path)",
                ));
            }
            Some(name) => Some(dataset("--save-on-shutdown", name)?),
        };
        let event_retention = flags
            .event_retention
            .or(file.event_retention)
            .unwrap_or(crate::events::DEFAULT_RETENTION);
        if event_retention == 0 || event_retention > 100_000_000 {
            return Err(invalid(
                "event retention must be 1 to 100000000 events per shard",
            ));
        }
        let slow_request_ms = flags.slow_request_ms.or(file.slow_request_ms);
        if slow_request_ms.is_some_and(|ms| ms == 0 || ms > 3_600_000) {
            return Err(invalid(
                "--slow-request-ms must be 1 to 3600000 milliseconds",
            ));
        }
        Ok(Config {
            addr: SocketAddr::new(ip, port),
            shards,
            pinning,
            max_payload,
            max_connections,
            max_output_buffer,
            output_stall_timeout: Duration::from_secs(stall_s),
            max_memory,
            persist,
            load,
            save_on_shutdown,
            event_retention,
            slow_request: slow_request_ms.map(Duration::from_millis),
            durability,
            logging,
            security,
        })
    }
}

/// The security flags, taken out before the others are consumed.
struct SecurityFlags {
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    users: Option<PathBuf>,
    no_auth: bool,
}

/// TLS and users: the flags, else the file's `tls` and `users`. Refuses to
/// listen beyond loopback with no users unless told so (`--no-auth`).
fn resolve_security(
    flags: &SecurityFlags,
    file: &FileSettings,
    ip: IpAddr,
) -> Result<SecuritySettings, ConfigError> {
    let cert = flags.tls_cert.clone().or_else(|| file.tls_cert.clone());
    let key = flags.tls_key.clone().or_else(|| file.tls_key.clone());
    let client_ca = flags
        .tls_client_ca
        .clone()
        .or_else(|| file.tls_client_ca.clone());
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca,
        }),
        (None, None) if client_ca.is_none() => None,
        (None, None) => return Err(invalid("--tls-client-ca needs --tls-cert and --tls-key")),
        _ => return Err(invalid("TLS needs both --tls-cert and --tls-key")),
    };
    let users = flags.users.clone().or_else(|| file.users.clone());
    let no_auth = flags.no_auth || file.no_auth;
    // ::ffff:127.0.0.1 is loopback too.
    if users.is_none() && !no_auth && !ip.to_canonical().is_loopback() {
        return Err(invalid(format!(
            "refusing to listen on {ip} with no users: anyone who reaches the port could read \
             and end every session. Give --users FILE (see the README, Security), or --no-auth \
             to allow it deliberately"
        )));
    }
    Ok(SecuritySettings { tls, users })
}

/// The diagnostic log's settings: the flag, else the file's `log` object.
fn resolve_logging(flags: &Flags, file: &FileSettings) -> Result<logging::Settings, ConfigError> {
    let mut settings = logging::Settings::default();
    if let Some(level) = flags.log_level.as_deref().or(file.log_level.as_deref()) {
        settings.level = logging::Level::parse(level).ok_or_else(|| {
            invalid(format!(
                "log level must be {}, not \"{level}\"",
                logging::Level::NAMES
            ))
        })?;
    }
    if let Some(format) = flags.log_format.as_deref().or(file.log_format.as_deref()) {
        settings.format = logging::Format::parse(format).ok_or_else(|| {
            invalid(format!(
                "log format must be {}, not \"{format}\"",
                logging::Format::NAMES
            ))
        })?;
    }
    Ok(settings)
}

/// The durability flags, taken out before the others are consumed.
struct DurabilityFlags {
    snapshot_every: Option<u64>,
    snapshot_name: Option<String>,
    snapshot_keep: Option<usize>,
    log_fsync: Option<String>,
    log_segment_bytes: Option<u64>,
    log_repair: bool,
}

fn resolve_durability(
    flags: &DurabilityFlags,
    file: &FileSettings,
    persist: bool,
) -> Result<Durability, ConfigError> {
    let every = flags.snapshot_every.or(file.snapshot_every);
    let fsync = flags.log_fsync.clone().or_else(|| file.log_fsync.clone());
    if !persist {
        let asked = every.is_some_and(|s| s > 0)
            || fsync.as_deref().is_some_and(|f| f != "off")
            || flags.log_repair;
        if asked {
            return Err(invalid(
                "periodic snapshots and the change log need persistence (--persist-path)",
            ));
        }
    }
    let log = match fsync.as_deref() {
        None if persist => Some(FsyncPolicy::EverySec),
        None | Some("off") => None,
        Some("always") => Some(FsyncPolicy::Always),
        Some("everysec") => Some(FsyncPolicy::EverySec),
        Some("no") => Some(FsyncPolicy::No),
        Some(other) => {
            return Err(invalid(format!(
                "log fsync must be always, everysec, no or off, not \"{other}\""
            )));
        }
    };
    let snapshot_name = flags
        .snapshot_name
        .clone()
        .or_else(|| file.snapshot_name.clone())
        .unwrap_or_else(|| "auto".into());
    if !crate::persist::validate_dataset_name(&snapshot_name) {
        return Err(invalid(format!(
            "--snapshot-name: \"{snapshot_name}\" is not a dataset name"
        )));
    }
    let snapshot_keep = flags.snapshot_keep.or(file.snapshot_keep).unwrap_or(3);
    if snapshot_keep == 0 {
        return Err(invalid("snapshot keep must be at least 1"));
    }
    let log_segment_bytes = flags.log_segment_bytes.unwrap_or(DEFAULT_LOG_SEGMENT_BYTES);
    if log_segment_bytes < 4096 {
        return Err(invalid("log segment bytes must be at least 4096"));
    }
    let default_every = if persist { DEFAULT_SNAPSHOT_EVERY_S } else { 0 };
    if every.is_some_and(|s| s > MAX_SNAPSHOT_EVERY_S) {
        return Err(invalid(format!(
            "snapshot every must be 0 to {MAX_SNAPSHOT_EVERY_S} seconds"
        )));
    }
    Ok(Durability {
        snapshot_every_s: every.unwrap_or(default_every),
        snapshot_name,
        snapshot_keep,
        log,
        log_segment_bytes,
        log_repair: flags.log_repair,
    })
}

/// Parses "auto" or a list like "0,2,4-6" into one core per shard.
fn parse_pinning(spec: &str, shards: usize, available: &[usize]) -> Result<Pinning, ConfigError> {
    let spec = spec.trim();
    let cores: Vec<usize> = if spec.eq_ignore_ascii_case("auto") {
        if shards > available.len() {
            return Err(invalid(format!(
                "--pin-cores auto needs a core per shard: {shards} shards, {} cores",
                available.len()
            )));
        }
        available[..shards].to_vec()
    } else {
        let mut cores = Vec::new();
        for item in spec.split(',') {
            let item = item.trim();
            let bad = || {
                invalid(format!(
                    "--pin-cores: \"{item}\" is not a core number or range"
                ))
            };
            match item.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad())?;
                    let b: usize = b.trim().parse().map_err(|_| bad())?;
                    if a > b {
                        return Err(bad());
                    }
                    cores.extend(a..=b);
                }
                None => cores.push(item.parse().map_err(|_| bad())?),
            }
        }
        if cores.len() < shards {
            return Err(invalid(format!(
                "--pin-cores lists {} cores for {shards} shards",
                cores.len()
            )));
        }
        cores.truncate(shards);
        cores
    };
    if let Some(missing) = cores.iter().find(|c| !available.contains(c)) {
        return Err(invalid(format!(
            "--pin-cores: core {missing} is not available (cores: {available:?})"
        )));
    }
    Ok(Pinning::Cores(cores))
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let err = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut stripped = Vec::with_capacity(text.len());
    std::io::Read::read_to_end(
        &mut json_comments::StripComments::new(text.as_slice()),
        &mut stripped,
    )
    .map_err(|e| err(e.to_string()))?;
    let root = simd_json::to_owned_value(&mut stripped)
        .map_err(|e| err(format!("not valid JSON: {e}")))?;
    parse_settings(&root).map_err(err)
}

fn parse_settings(root: &OwnedValue) -> Result<FileSettings, String> {
    let Some(root) = root.as_object() else {
        return Err("must be a JSON object".into());
    };
    let mut settings = FileSettings::default();
    let uint = |name: &str, v: &OwnedValue| {
        v.as_u64()
            .ok_or_else(|| format!("{name} must be an unsigned integer"))
    };
    if let Some(v) = root.get("ip") {
        let s = v.as_str().ok_or("ip must be a string")?;
        settings.ip = Some(
            s.parse()
                .map_err(|_| format!("ip: \"{s}\" is not an IP address"))?,
        );
    }
    if let Some(v) = root.get("port") {
        let port = uint("port", v)?;
        settings.port = Some(u16::try_from(port).map_err(|_| "port must be 0 to 65535")?);
    }
    if let Some(v) = root.get("maxPayload") {
        settings.max_payload = Some(uint("maxPayload", v)? as usize);
    }
    if let Some(v) = root.get("slowRequestMs") {
        settings.slow_request_ms = Some(uint("slowRequestMs", v)?);
    }
    if let Some(v) = root.get("eventRetention") {
        settings.event_retention = Some(uint("eventRetention", v)? as usize);
    }
    if let Some(v) = root.get("maxConnections") {
        settings.max_connections = Some(uint("maxConnections", v)? as usize);
    }
    if let Some(v) = root.get("maxOutputBuffer") {
        settings.max_output_buffer = Some(uint("maxOutputBuffer", v)? as usize);
    }
    if let Some(v) = root.get("outputStallTimeout") {
        settings.output_stall_timeout = Some(uint("outputStallTimeout", v)?);
    }
    if let Some(v) = root.get("maxMemory") {
        settings.max_memory = Some(uint("maxMemory", v)?);
    }
    if let Some(v) = root.get("shards") {
        settings.shards = Some(uint("shards", v)? as usize);
    }
    if let Some(v) = root.get("pinCores") {
        settings.pin_cores = Some(match (v.as_str(), v.as_array()) {
            (Some(s), _) => s.to_string(),
            (None, Some(list)) => {
                let cores: Result<Vec<String>, String> = list
                    .iter()
                    .map(|c| uint("pinCores entries", c).map(|c| c.to_string()))
                    .collect();
                cores?.join(",")
            }
            _ => return Err("pinCores must be \"auto\", a list string, or an array".into()),
        });
    }
    if let Some(tls) = root.get("tls") {
        let tls = tls.as_object().ok_or("tls must be an object")?;
        let path = |name: &str| -> Result<Option<PathBuf>, String> {
            match tls.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_str()
                    .map(|p| Some(PathBuf::from(p)))
                    .ok_or_else(|| format!("tls.{name} must be a string")),
            }
        };
        settings.tls_cert = path("cert")?;
        settings.tls_key = path("key")?;
        settings.tls_client_ca = path("clientCa")?;
    }
    if let Some(v) = root.get("users") {
        let path = v
            .as_str()
            .ok_or("users must be a string (the users file)")?;
        settings.users = Some(path.into());
    }
    if let Some(v) = root.get("noAuth") {
        settings.no_auth = v.as_bool().ok_or("noAuth must be a boolean")?;
    }
    if let Some(log) = root.get("log") {
        let log = log.as_object().ok_or("log must be an object")?;
        if let Some(v) = log.get("level") {
            let level = v.as_str().ok_or("log.level must be a string")?;
            settings.log_level = Some(level.into());
        }
        if let Some(v) = log.get("format") {
            let format = v.as_str().ok_or("log.format must be a string")?;
            settings.log_format = Some(format.into());
        }
    }
    if let Some(persist) = root.get("persist") {
        let persist = persist.as_object().ok_or("persist must be an object")?;
        if let Some(v) = persist.get("enabled") {
            settings.persist_enabled = v.as_bool().ok_or("persist.enabled must be a boolean")?;
        }
        if let Some(v) = persist.get("path") {
            let path = v.as_str().ok_or("persist.path must be a string")?;
            settings.persist_path = Some(path.into());
        }
        if let Some(v) = persist.get("snapshotEvery") {
            settings.snapshot_every = Some(uint("persist.snapshotEvery", v)?);
        }
        if let Some(v) = persist.get("snapshotName") {
            let name = v.as_str().ok_or("persist.snapshotName must be a string")?;
            settings.snapshot_name = Some(name.into());
        }
        if let Some(v) = persist.get("snapshotKeep") {
            settings.snapshot_keep = Some(uint("persist.snapshotKeep", v)? as usize);
        }
        if let Some(v) = persist.get("logFsync") {
            let policy = v.as_str().ok_or("persist.logFsync must be a string")?;
            settings.log_fsync = Some(policy.into());
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("nemesisdb").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_loopback_1987_one_shard_per_core() {
        let config = Config::resolve(flags(&[]), &[0, 1, 2]).unwrap();
        assert_eq!(config.addr, "127.0.0.1:1987".parse().unwrap());
        assert_eq!(config.shards, 3);
        assert_eq!(config.pinning, Pinning::None);
        assert_eq!(config.max_payload, DEFAULT_MAX_PAYLOAD);
    }

    #[test]
    fn beyond_loopback_users_or_no_auth_are_required() {
        let resolve = |args: &[&str]| Config::resolve(flags(args), &[0]);
        let error = resolve(&["--ip", "0.0.0.0"]).unwrap_err().to_string();
        assert!(
            error.contains("--users") && error.contains("--no-auth"),
            "{error}"
        );
        assert!(resolve(&["--ip", "10.1.2.3"]).is_err());
        assert!(resolve(&["--ip", "::"]).is_err());
        assert!(resolve(&["--ip", "::1"]).is_ok(), "IPv6 loopback");
        assert!(resolve(&["--ip", "::ffff:127.0.0.1"]).is_ok(), "mapped");
        assert!(resolve(&["--ip", "::ffff:0.0.0.0"]).is_err());
        assert!(resolve(&["--ip", "127.0.0.2"]).is_ok(), "all of 127/8");
        assert!(resolve(&["--ip", "0.0.0.0", "--no-auth"]).is_ok());
        let with_users = resolve(&["--ip", "0.0.0.0", "--users", "u.json"]).unwrap();
        assert_eq!(with_users.security.users, Some(PathBuf::from("u.json")));
        assert_eq!(with_users.security.tls, None);
    }

    #[test]
    fn tls_files_come_in_pairs_from_flags_or_the_file() {
        let resolve = |args: &[&str]| Config::resolve(flags(args), &[0]);
        let config = resolve(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(
            config.security.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                client_ca: None
            })
        );
        // Half a pair is refused once flags and file are merged.
        let error = resolve(&["--tls-cert", "c.pem"]).unwrap_err().to_string();
        assert!(error.contains("--tls-key"), "{error}");
        let error = resolve(&["--tls-client-ca", "ca.pem"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--tls-cert"), "{error}");
        let dir = std::env::temp_dir().join(format!("ndb-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        std::fs::write(
            &file,
            r#"{"ip":"0.0.0.0","users":"/etc/ndb/users.json",
                "tls":{"cert":"/c.pem","key":"/k.pem","clientCa":"/ca.pem"}}"#,
        )
        .unwrap();
        let config = resolve(&["--config", file.to_str().unwrap()]).unwrap();
        let tls = config.security.tls.unwrap();
        assert_eq!(tls.client_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(
            config.security.users,
            Some(PathBuf::from("/etc/ndb/users.json"))
        );
        // A flag completes what the file began.
        let mixed = resolve(&[
            "--config",
            file.to_str().unwrap(),
            "--tls-client-ca",
            "/other-ca.pem",
        ])
        .unwrap();
        let tls = mixed.security.tls.unwrap();
        assert_eq!(tls.client_ca, Some(PathBuf::from("/other-ca.pem")));
        std::fs::write(&file, r#"{"tls":{"cert":"/c.pem"}}"#).unwrap();
        let error = resolve(&["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(error.to_string().contains("--tls-key"), "{error}");
        std::fs::write(&file, r#"{"ip":"0.0.0.0","noAuth":true}"#).unwrap();
        assert!(resolve(&["--config", file.to_str().unwrap()]).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pinning() {
        let cores = [0, 1, 2, 3];
        let pin = |spec: &str, shards: usize| parse_pinning(spec, shards, &cores);
        assert_eq!(pin("auto", 2), Ok(Pinning::Cores(vec![0, 1])));
        assert_eq!(pin("3,1", 2), Ok(Pinning::Cores(vec![3, 1])));
        assert_eq!(pin("1-3", 2), Ok(Pinning::Cores(vec![1, 2])));
        assert!(pin("auto", 5).is_err());
        assert!(pin("0", 2).is_err());
        assert!(pin("0,9", 2).is_err());
        assert!(pin("x", 1).is_err());
        assert!(pin("3-1", 1).is_err());
    }

    #[test]
    fn file_settings_with_comments_and_flag_overrides() {
        let dir = std::env::temp_dir().join(format!("ndb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.jsonc");
        std::fs::write(
            &path,
            r#"{
                // NemesisDB-style fields; unknown ones are ignored
                "version": 5, "ip": "127.0.0.2", "port": 2000,
                "maxPayload": 4096, /* block */ "shards": 2, "pinCores": [1, 0],
                "maxConnections": 50, "maxMemory": 1000000, "eventRetention": 500,
                "persist": {"enabled": false, "path": "./data"}
            }"#,
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let config = Config::resolve(flags(&["--config", p, "--port", "3000"]), &[0, 1]).unwrap();
        assert_eq!(config.addr, "127.0.0.2:3000".parse().unwrap());
        assert_eq!(config.shards, 2);
        assert_eq!(config.max_payload, 4096);
        assert_eq!(config.pinning, Pinning::Cores(vec![1, 0]));
        assert_eq!(config.max_connections, 50);
        assert_eq!(config.max_memory, 1_000_000);
        assert_eq!(config.max_output_buffer, DEFAULT_MAX_OUTPUT_BUFFER);
        assert_eq!(config.event_retention, 500);
        let config =
            Config::resolve(flags(&["--config", p, "--event-retention", "7"]), &[0, 1]).unwrap();
        assert_eq!(config.event_retention, 7, "the flag wins");
        assert!(Config::resolve(flags(&["--event-retention", "0"]), &[0]).is_err());
        assert_eq!(
            Config::resolve(flags(&[]), &[0]).unwrap().event_retention,
            crate::events::DEFAULT_RETENTION
        );

        std::fs::write(&path, r#"{"port": "x"}"#).unwrap();
        assert!(matches!(
            Config::resolve(flags(&["--config", p]), &[0]),
            Err(ConfigError::File { .. })
        ));
        std::fs::write(&path, r#"{"port": 1"#).unwrap();
        assert!(Config::resolve(flags(&["--config", p]), &[0]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn persistence_settings() {
        let config =
            Config::resolve(flags(&["--persist-path", "/p", "--load-name", "a"]), &[0]).unwrap();
        assert_eq!(config.persist, Some("/p".into()));
        assert_eq!(
            config.load,
            Some(Load {
                name: "a".into(),
                root: "/p".into()
            })
        );
        let config = Config::resolve(
            flags(&[
                "--load-name",
                "a",
                "--load-path",
                "/q",
                "--persist-path",
                "/p",
                "--save-on-shutdown",
                "b",
            ]),
            &[0],
        )
        .unwrap();
        assert_eq!(config.load.unwrap().root, PathBuf::from("/q"));
        assert_eq!(config.save_on_shutdown.as_deref(), Some("b"));
    }

    #[test]
    fn rejects_nonsense() {
        assert!(Config::resolve(flags(&["--shards", "0"]), &[0]).is_err());
        assert!(Config::resolve(flags(&["--max-payload", "1"]), &[0]).is_err());
        assert!(Config::resolve(flags(&["--max-connections", "0"]), &[0]).is_err());
        assert!(Config::resolve(flags(&["--max-output-buffer", "10"]), &[0]).is_err());
        assert!(Config::resolve(flags(&["--load-name", "x"]), &[0]).is_err());
        assert!(Config::resolve(flags(&["--save-on-shutdown", "x"]), &[0]).is_err());
        assert!(
            Config::resolve(
                flags(&["--persist-path", "/p", "--load-name", "../x"]),
                &[0]
            )
            .is_err()
        );
        assert!(Config::resolve(flags(&["--load-path", "/p"]), &[0]).is_err());
        assert!(Flags::try_parse_from(["nemesisdb", "--ip", "nope"]).is_err());
    }

    #[test]
    fn log_settings_from_flags_and_file() {
        let settings = |args: &[&str]| Config::resolve(flags(args), &[0]).map(|c| c.logging);
        assert_eq!(settings(&[]), Ok(logging::Settings::default()));
        assert_eq!(
            settings(&["--log-level", "WARN", "--log-format", "json"]),
            Ok(logging::Settings {
                level: logging::Level::Warn,
                format: logging::Format::Json,
            })
        );
        let bad_level = settings(&["--log-level", "loud"]).unwrap_err();
        assert!(bad_level.to_string().contains("\"loud\""), "{bad_level}");
        assert!(settings(&["--log-format", "xml"]).is_err());

        let dir = std::env::temp_dir().join(format!("ndb-config-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.jsonc");
        let p = path.to_str().unwrap();
        std::fs::write(&path, r#"{"log": {"level": "debug", "format": "json"}}"#).unwrap();
        assert_eq!(
            settings(&["--config", p, "--log-level", "error"]),
            Ok(logging::Settings {
                level: logging::Level::Error,
                format: logging::Format::Json,
            }),
            "the flag wins over the file"
        );
        std::fs::write(&path, r#"{"log": {"format": "yaml"}}"#).unwrap();
        assert!(settings(&["--config", p]).is_err());
        std::fs::write(&path, r#"{"log": "debug"}"#).unwrap();
        assert!(matches!(
            settings(&["--config", p]),
            Err(ConfigError::File { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
