//! Builds the mesh, binds the listeners, spawns (and pins) one thread per
//! shard, and turns a stop request or a shard's death into an exit status.
//! Logs the start-up summary, the start-up load, `listening on IP:PORT` and
//! the save on shutdown.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, Load, Pinning};
use crate::mesh::{self, Address, ShardId};
use crate::net::connection::Limits;
use crate::net::listener::bind_shared;
use crate::net::loading::LoadingResponder;
use crate::persist::{self, LoadableVersion, LogPositions, SessionRecord, ShardFileWriter};
use crate::router::{LogSettings, SnapshotSchedule};
use crate::security::Security;
use crate::shard::{Shard, ShardContext, new_poll};
use crate::shared_names::SharedNames;
use crate::startup::{self, RecoveryReport};
use crate::store::SessionStore;
use crate::store::budget::MemoryBudget;

/// File descriptors kept for everything but client connections: listeners,
/// pollers, wakers, snapshot files, stdio.
const RESERVED_FDS: u64 = 64;

/// Raises the open-file soft limit to the hard limit; returns the soft
/// limit in force afterwards.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    /// Connections the server will hold: the configured maximum, or less
    /// if the open-file limit allows fewer.
    capacity: usize,
    stopper: Stopper,
    threads: Vec<JoinHandle<Option<SessionStore>>>,
    exits: Receiver<ShardExit>,
    loaded: Option<LoadReport>,
    /// What start-up recovery found, if anything.
    recovery: Option<RecoveryReport>,
    /// The change-log generation this run writes (0: no log).
    log_generation: u64,
    /// The shard clocks' epoch.
    started: Instant,
    /// Where and as what to save when stopping.
    save_on_shutdown: Option<(PathBuf, String)>,
}

/// Asks every shard to stop; cheap to clone into a signal handler thread.
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    /// `/readyz`: cleared as shutdown begins.
    ready: Arc<AtomicBool>,
    mesh: Arc<[Address]>,
}

impl Stopper {
    pub fn stop(&self) {
        self.ready.store(false, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        for address in self.mesh.iter() {
            address.wake();
        }
    }

    fn requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A shard thread ended; `error` is None for a clean exit.
struct ShardExit {
    shard: ShardId,
    error: Option<String>,
}

/// Reports the thread's end even when it unwinds from a panic.
struct ExitReporter {
    shard: ShardId,
    sender: Sender<ShardExit>,
    error: Option<String>,
}

impl Drop for ExitReporter {
    fn drop(&mut self) {
        let error = if std::thread::panicking() {
            Some("panicked".to_string())
        } else {
            self.error.take()
        };
        let _ = self.sender.send(ShardExit {
            shard: self.shard,
            error,
        });
    }
}

/// Why the server could not keep running.
#[derive(Debug)]
pub struct ShardFailure {
    pub shard: ShardId,
    pub reason: String,
}

impl fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {} stopped: {}", self.shard, self.reason)
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Listen(SocketAddr, io::Error),
    PersistPath(PathBuf, io::Error),
    Load(String),
    Recovery(String),
    Io(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Listen(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::PersistPath(path, e) => {
                write!(f, "cannot use {} for snapshots: {e}", path.display())
            }
            StartError::Load(reason) => write!(f, "cannot load the start-up dataset: {reason}"),
            StartError::Recovery(reason) => write!(f, "recovery failed: {reason}"),
            StartError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Io(e)
    }
}

/// What the start-up load added.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub name: String,
    pub version: PathBuf,
    pub sessions: u64,
    pub keys: u64,
    pub took: Duration,
}

/// What the save on shutdown wrote.
#[derive(Clone, Debug)]
pub struct SaveReport {
    pub version: PathBuf,
    pub sessions: u64,
    pub keys: u64,
    /// The shard files' sizes, summed.
    pub bytes: u64,
    pub took: Duration,
}

/// Creates the snapshot directory and checks it takes files.
fn prepare_persist_path(path: &Path) -> Result<(), StartError> {
    let fail = |e| StartError::PersistPath(path.to_path_buf(), e);
    std::fs::create_dir_all(path).map_err(fail)?;
    let probe = path.join(format!(".nemesisdb-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// Reads the newest complete version of the start-up dataset, split by
/// shard, with that version (for the load line: its name and size).
fn read_startup_load(
    load: &Load,
    shards: usize,
) -> Result<(Vec<Vec<SessionRecord>>, LoadableVersion), StartError> {
    let version = persist::newest_complete(&load.root, &load.name)
        .map_err(|e| StartError::Load(e.to_string()))?
        .ok_or_else(|| {
            StartError::Load(format!(
                "no complete saved version of dataset {} under {}",
                load.name,
                load.root.display()
            ))
        })?;
    for skipped in &version.skipped {
        tracing::warn!(
            dataset = %load.name,
            "loading dataset {}: passed over an incomplete version: {skipped}",
            load.name
        );
    }
    let records = version
        .read_all()
        .map_err(|e| StartError::Load(e.to_string()))?;
    let mut per_shard: Vec<Vec<SessionRecord>> = (0..shards).map(|_| Vec::new()).collect();
    for record in records {
        per_shard[mesh::shard_of(record.tkn, shards)].push(record);
    }
    Ok((per_shard, version))
}

/// The start-up line: what this run was configured with, before recovery or
/// a load (which may take a while) begins.
fn log_config(config: &Config, capacity: usize) {
    let d = &config.durability;
    let persist = config.persist.as_ref().map(|p| p.display().to_string());
    let persistence = persist.as_deref().unwrap_or("off");
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        addr = %config.addr,
        shards = config.shards,
        pinning = %config.pinning,
        max_connections = capacity,
        max_payload = config.max_payload,
        max_output_buffer = config.max_output_buffer,
        output_stall_timeout_s = config.output_stall_timeout.as_secs(),
        max_memory = config.max_memory,
        event_retention = config.event_retention,
        persist = persistence,
        log_fsync = persist.as_ref().map(|_| d.log.map_or("off", |p| p.name())),
        snapshot_every_s = persist.as_ref().map(|_| d.snapshot_every_s),
        snapshot_name = persist.as_ref().map(|_| d.snapshot_name.as_str()),
        snapshot_keep = persist.as_ref().map(|_| d.snapshot_keep),
        load = config.load.as_ref().map(|l| l.name.as_str()),
        save_on_shutdown = config.save_on_shutdown.as_deref(),
        tls = config.security.tls.is_some(),
        mutual_tls = config.security.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        users = config.security.users.as_ref().map(|p| p.display().to_string()),
        "starting nemesisdb {} on {}: {} shards, persistence {persistence}, {}, {}",
        env!("CARGO_PKG_VERSION"),
        config.addr,
        config.shards,
        if config.security.tls.is_some() { "TLS" } else { "no TLS" },
        if config.security.users.is_some() { "users required" } else { "no users (open to anyone who reaches the port)" },
    );
    if capacity < config.max_connections {
        tracing::warn!(
            max_connections = capacity,
            configured = config.max_connections,
            "the open-file limit allows {capacity} connections, not {}",
            config.max_connections
        );
    }
}

impl Server {
    /// Binds, loads the start-up dataset if any, and starts every shard.
    /// `security` is what `config.security` names, loaded (the caller
    /// keeps it to reload on SIGHUP).
    pub fn start(config: &Config, security: Arc<Security>) -> Result<Server, StartError> {
        let open_files = raise_open_file_limit();
        // The room kept for probes past the limit is room clients do not get.
        let probes = crate::shard::PROBE_RESERVE as u64;
        let fd_room = open_files.saturating_sub(RESERVED_FDS + probes + 4 * config.shards as u64);
        let capacity = config.max_connections.min(fd_room as usize).max(1);
        log_config(config, capacity);
        if let Some(path) = &config.persist {
            prepare_persist_path(path)?;
        }
        // Bound first: a port in use fails before a long load, and probes
        // are answered while it runs.
        let listeners = bind_shared(config.addr, config.shards)
            .map_err(|e| StartError::Listen(config.addr, e))?;
        let addr = listeners[0].local_addr()?;
        let responder = LoadingResponder::start(listeners, security.tls())?;
        // With the change log on, recovery has every change and wins over a
        // dataset named to load; with it off, a dataset named to load is
        // what the operator chose to start from.
        let recovered = match (&config.persist, config.durability.log, &config.load) {
            (Some(_), None, Some(_)) => None,
            (Some(root), _, _) => {
                Some(startup::recover(config, root).map_err(StartError::Recovery)?)
            }
            (None, _, _) => None,
        };
        let recovery = recovered.as_ref().and_then(|r| r.report.clone());
        if let (Some(_), Some(load)) = (&recovery, &config.load) {
            tracing::warn!(
                dataset = %load.name,
                "recovery: warning: --load-name {} skipped: the change log is on and recovery found a snapshot or a log to start from",
                load.name
            );
        }
        let log_generation = recovered.as_ref().map_or(1, |r| r.generation);
        let load_started = Instant::now();
        let (mut restore, loaded_version) = match (&config.load, recovered) {
            // What recovery found is newer than any dataset named to load.
            (_, Some(r)) if r.report.is_some() => (r.per_shard, None),
            (Some(load), _) => {
                let (per_shard, version) = read_startup_load(load, config.shards)?;
                (per_shard, Some(version))
            }
            (None, _) => ((0..config.shards).map(|_| Vec::new()).collect(), None),
        };
        let keep_deadlines = recovery.is_some();
        let log = match (&config.persist, config.durability.log) {
            (Some(root), Some(policy)) => Some(LogSettings {
                dir: root.join(crate::persist::log::LOG_DIR),
                generation: log_generation,
                policy,
                segment_bytes: config.durability.log_segment_bytes,
            }),
            _ => None,
        };
        let mut polls = Vec::with_capacity(config.shards);
        let mut wakers = Vec::with_capacity(config.shards);
        for _ in 0..config.shards {
            let (poll, waker) = new_poll()?;
            polls.push(poll);
            wakers.push(waker);
        }
        let (mesh, inboxes) = mesh::wire(wakers);
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        // Calibrated once (about 10 ms), shared by every shard.
        let clock = crate::metrics::Clock::new();
        let draining = Arc::new(AtomicUsize::new(config.shards));
        let names = Arc::new(SharedNames::default());
        let connections = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let wall_epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let owners_scattered = Arc::new(AtomicBool::new(false));
        let memory = (config.max_memory > 0)
            .then(|| Arc::new(MemoryBudget::new(config.max_memory, config.shards)));
        // Tells this run's event cursors from an earlier run's.
        let instance: u64 = rand::random();
        let (exit_sender, exits) = channel();
        let mut threads = Vec::with_capacity(config.shards);
        let (mut loaded_sessions, mut loaded_keys) = (0, 0);
        let mut prepared = Vec::with_capacity(config.shards);
        for (id, (poll, inbox)) in polls.into_iter().zip(inboxes).enumerate() {
            let ctx = ShardContext {
                id,
                shards: config.shards,
                limits: Limits {
                    max_payload: config.max_payload,
                    max_output_buffer: config.max_output_buffer,
                    output_stall_timeout: config.output_stall_timeout,
                },
                connections: connections.clone(),
                max_connections: capacity,
                memory: memory.clone(),
                persist: config.persist.clone(),
                started,
                wall_epoch_ms,
                instance,
                event_retention: config.event_retention,
                owners_scattered: owners_scattered.clone(),
                names: names.clone(),
                mesh: mesh.clone(),
                stop: stop.clone(),
                ready: ready.clone(),
                clock: clock.clone(),
                slow_request: config.slow_request,
                security: security.clone(),
                draining: draining.clone(),
            };
            let records = std::mem::take(&mut restore[id]);
            let mut shard = Shard::new(ctx, poll, inbox);
            // Recovered sessions are in the checkpoint already; a dataset
            // loaded with --load-name is logged, as SH_LOAD is.
            if !keep_deadlines && let Some(settings) = &log {
                shard.start_log(settings.clone())?;
            }
            let restored = shard.restore(records, keep_deadlines);
            if keep_deadlines && let Some(settings) = &log {
                shard.start_log(settings.clone())?;
            }
            if config.persist.is_some() {
                let schedule = SnapshotSchedule {
                    every_ms: config.durability.snapshot_every_s * 1000,
                    name: config.durability.snapshot_name.clone().into(),
                    keep: config.durability.snapshot_keep,
                };
                shard.schedule_snapshots(schedule, id == 0);
            }
            loaded_sessions += restored.sessions;
            loaded_keys += restored.keys;
            prepared.push(shard);
        }
        let listeners = responder.finish()?;
        for ((id, mut shard), listener) in prepared.into_iter().enumerate().zip(listeners) {
            shard.listen(listener)?;
            let core = match &config.pinning {
                Pinning::None => None,
                Pinning::Cores(cores) => cores.get(id).copied(),
            };
            let sender = exit_sender.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    let mut reporter = ExitReporter {
                        shard: id,
                        sender,
                        error: None,
                    };
                    if let Some(core) = core
                        && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
                    {
                        tracing::warn!(shard = id, core, "could not pin shard {id} to core {core}");
                    }
                    match shard.run() {
                        Ok(store) => Some(store),
                        Err(e) => {
                            reporter.error = Some(e.to_string());
                            None
                        }
                    }
                })?;
            threads.push(thread);
        }
        let loaded = config
            .load
            .as_ref()
            .zip(loaded_version)
            .map(|(load, version)| {
                let report = LoadReport {
                    name: load.name.clone(),
                    version: version.path,
                    sessions: loaded_sessions,
                    keys: loaded_keys,
                    took: load_started.elapsed(),
                };
                tracing::info!(
                    dataset = %report.name,
                    version = %version.version,
                    sessions = report.sessions,
                    keys = report.keys,
                    bytes = version.bytes,
                    duration_ms = report.took.as_millis() as u64,
                    "loaded {} sessions, {} keys of dataset {} ({}) in {} ms",
                    report.sessions,
                    report.keys,
                    report.name,
                    report.version.display(),
                    report.took.as_millis()
                );
                report
            });
        // Every shard serves what start-up loaded.
        ready.store(true, Ordering::Release);
        tracing::info!(addr = %addr, "listening on {addr}");
        Ok(Server {
            addr,
            capacity,
            stopper: Stopper { stop, ready, mesh },
            threads,
            exits,
            loaded,
            recovery,
            log_generation: if log.is_some() { log_generation } else { 0 },
            started,
            save_on_shutdown: config.persist.clone().zip(config.save_on_shutdown.clone()),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn connection_capacity(&self) -> usize {
        self.capacity
    }

    /// What start-up recovery found and did (None: nothing to recover).
    pub fn recovery(&self) -> Option<&RecoveryReport> {
        self.recovery.as_ref()
    }

    /// What the start-up load added, if there was one.
    pub fn loaded(&self) -> Option<&LoadReport> {
        self.loaded.as_ref()
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Blocks until every shard has stopped, then saves them if asked to.
    /// A shard that ends before a stop was requested, or with an error,
    /// fails the server at once: it never runs half alive.
    pub fn wait(self) -> Result<Option<SaveReport>, ShardFailure> {
        for _ in 0..self.threads.len() {
            let Ok(exit) = self.exits.recv() else {
                break;
            };
            let reason = match exit.error {
                Some(error) => error,
                None if !self.stopper.requested() => "exited unexpectedly".to_string(),
                None => continue,
            };
            return Err(ShardFailure {
                shard: exit.shard,
                reason,
            });
        }
        let mut stores = Vec::with_capacity(self.threads.len());
        for (shard, thread) in self.threads.into_iter().enumerate() {
            match thread.join() {
                Ok(Some(store)) => stores.push(store),
                _ => {
                    return Err(ShardFailure {
                        shard,
                        reason: "ended without its sessions".to_string(),
                    });
                }
            }
        }
        let Some((root, name)) = self.save_on_shutdown else {
            return Ok(None);
        };
        tracing::info!(dataset = %name, "saving every session as dataset {name}");
        let now = self.started.elapsed().as_millis() as u64;
        let save =
            save_stores(&root, &name, stores, now, self.log_generation).map_err(|reason| {
                ShardFailure {
                    shard: 0,
                    reason: format!("the save on shutdown failed: {reason}"),
                }
            })?;
        tracing::info!(
            dataset = %name,
            version = %save.version.file_name().unwrap_or_default().to_string_lossy(),
            sessions = save.sessions,
            keys = save.keys,
            bytes = save.bytes,
            duration_ms = save.took.as_millis() as u64,
            "saved {} sessions, {} keys to {} in {} ms",
            save.sessions,
            save.keys,
            save.version.display(),
            save.took.as_millis()
        );
        Ok(Some(save))
    }
}

/// Writes every shard's sessions as a new version of dataset `name`.
fn save_stores(
    root: &Path,
    name: &str,
    stores: Vec<SessionStore>,
    now: u64,
    generation: u64,
) -> Result<SaveReport, String> {
    let began = Instant::now();
    // A full save: where each shard's log stood (all of it is in the
    // snapshot, the log was flushed as the shard stopped), so it can be
    // recovery's base.
    let log = LogPositions {
        generation,
        positions: stores.iter().map(SessionStore::log_seq).collect(),
    };
    let version = persist::begin_version(root, name).map_err(|e| e.to_string())?;
    let (done_tx, done_rx) = channel();
    let count = stores.len();
    for (shard, mut store) in stores.into_iter().enumerate() {
        store
            .begin_snapshot(now, None)
            .map_err(|_| "a snapshot was still under way".to_string())?;
        let done_tx = done_tx.clone();
        let writer = ShardFileWriter::start(
            &version.path,
            shard,
            Box::new(move |result| {
                let _ = done_tx.send(result);
            }),
        )
        .map_err(|e| e.to_string())?;
        while let Some(chunk) = store.snapshot_step(64 * 1024) {
            writer.write_chunk(chunk.bytes, chunk.records, chunk.keys);
            if chunk.done {
                break;
            }
        }
        writer.finish();
    }
    drop(done_tx);
    let mut files = Vec::with_capacity(count);
    for _ in 0..count {
        let file = done_rx
            .recv()
            .map_err(|_| "a writer ended without a word".to_string())?
            .map_err(|e| e.to_string())?;
        files.push(file);
    }
    files.sort_by_key(|f| f.shard);
    version
        .commit(&files, Some(&log))
        .map_err(|e| e.to_string())?;
    Ok(SaveReport {
        version: version.path.clone(),
        sessions: files.iter().map(|f| f.sessions).sum(),
        keys: files.iter().map(|f| f.keys).sum(),
        bytes: files.iter().map(|f| f.bytes).sum(),
        took: began.elapsed(),
    })
}
