//! Fan-out commands in progress: what each shard answered so far, and the
//! response once every part is in.

use crate::domain::{NewSession, Token};
use crate::mesh::{PartResult, Ticket};
use crate::metrics::{self, ShardFigures};
use crate::net::handshake::http_response;
use std::path::{Path, PathBuf};

use crate::persist::{
    self, LogPositions, PersistError, ShardFileSummary, VersionDir, in_progress, recovery,
};
use crate::protocol::answer::{self, ServerInfo};
use crate::protocol::{CommandName, Status};
use crate::store::Millis;

/// What `SV_INFO` sums over the shards.
#[derive(Default)]
pub struct ServerTotals {
    sessions: u64,
    keys: u64,
    connections: u64,
    memory_used: u64,
    session_not_exist: u64,
}

/// What `SV_INFO` reports about the server itself.
pub struct ServerFacts {
    pub shards: usize,
    pub persist_enabled: bool,
    pub uptime_s: u64,
    pub max_memory: u64,
    /// This server's instance, for cursors.
    pub instance: u64,
    /// Wall-clock time at the server's start, in ms since the Unix epoch.
    pub wall_epoch_ms: u64,
}

pub enum GatherKind {
    EndAll {
        ended: u64,
    },
    InfoAll {
        sessions: u64,
        keys: u64,
    },
    ServerInfo(ServerTotals),
    Exists {
        tkns: Vec<Token>,
        found: Vec<bool>,
    },
    /// Boxed: the biggest kind by far, and rare.
    Save(Box<SaveProgress>),
    Load(LoadProgress),
    /// `SH_NEW` of a shared name held by a session on another shard: that
    /// shard settles the holder's expiry first, then the name is claimed.
    NewShared(NewSession),
    OwnerSessions {
        owner: Box<str>,
        found: Vec<(u64, Token)>,
    },
    OwnerEnd {
        owner: Box<str>,
        ended: u64,
    },
    /// `GET /metrics`: every shard's figures.
    Metrics(Vec<ShardFigures>),
    /// `SH_SUBSCRIBE`: every shard's ring position for subscription `sub`.
    Subscribe {
        sub: u64,
        positions: Vec<u64>,
        lost: u64,
        /// Resumed with `after`: the answer says whether anything was lost.
        resumed: bool,
        /// The cursor was another instance's: how much was lost is unknown.
        unknown_loss: bool,
    },
}

/// An `SH_SAVE` in progress: every shard writes its file into `version`.
pub struct SaveProgress {
    name: Box<str>,
    /// Taken when the save is committed or discarded.
    version: Option<VersionDir>,
    /// When the save was asked for, for the `duration` it reports.
    started: Millis,
    /// The version directory's name, for the log (kept when `version` is
    /// taken); None when the save failed before it had one.
    version_name: Option<String>,
    files: Vec<ShardFileSummary>,
    /// Each shard's last change-log record in the snapshot; None once a
    /// part was not a full save (a list of tokens).
    log_seqs: Option<Vec<(usize, u64)>>,
    /// The first failure, if any; the version is then discarded.
    error: Option<PersistError>,
    /// Set once `commit` has run: the save is final.
    committed: bool,
}

/// The last step of a save: fsyncs and renames, so not on an event loop.
pub struct SaveSettlement {
    version: VersionDir,
    /// The files to commit; None: a part failed, remove the version.
    files: Option<Vec<ShardFileSummary>>,
    /// Each shard's last log record in a full save, by shard.
    log_seqs: Option<Vec<u64>>,
    /// The change-log generation the positions are in (0: no log).
    generation: u64,
    /// What follows a save of the snapshot dataset.
    upkeep: Option<Upkeep>,
}

/// After a save of the snapshot dataset commits: old versions go (all but
/// the newest `keep` complete ones), and the log it covers.
#[derive(Clone, Debug)]
pub struct Upkeep {
    pub keep: usize,
    /// `<persist>/log`, when the log is on.
    pub log_dir: Option<PathBuf>,
}

impl SaveSettlement {
    /// The log generation its positions are in, and what follows it.
    pub fn set_context(&mut self, generation: u64, upkeep: Option<Upkeep>) {
        self.generation = generation;
        self.upkeep = upkeep;
    }

    /// The dataset saved.
    pub fn dataset(&self) -> &str {
        &self.version.name
    }

    /// Commits (or discards) the version, then does the upkeep; upkeep
    /// failures are warnings (the save itself stands).
    pub fn run(self) -> Result<(), PersistError> {
        let Some(files) = &self.files else {
            in_progress::end(&self.version.path);
            // A partial version is never loaded; removing it is tidiness.
            let _ = self.version.discard();
            return Ok(());
        };
        let result = self.commit(files);
        in_progress::end(&self.version.path);
        if result.is_ok()
            && let Some(upkeep) = &self.upkeep
        {
            for warning in self.upkeep(upkeep) {
                tracing::warn!(
                    dataset = %self.version.name,
                    version = %self.version.version,
                    "after saving {}: {warning}",
                    self.version.name
                );
            }
        }
        result
    }

    /// How far the log may be compacted after this save: up to its own
    /// positions, but no further than the newest recoverable version
    /// (recovery's base, which may be another save's if two ran at once and
    /// their shards took them in different orders) needs; None while
    /// another save of the dataset is under way (its positions are not
    /// known yet: the next save compacts).
    fn compactable(
        &self,
        root: &Path,
        dataset_dir: &Path,
        seqs: &[u64],
    ) -> Result<Option<LogPositions>, PersistError> {
        if in_progress::any_in(dataset_dir) {
            return Ok(None);
        }
        let mut positions = seqs.to_vec();
        if let Some(newest) = persist::newest_recoverable(root, &self.version.name)?
            && let Some(log) = newest.log
        {
            if log.generation != self.generation || log.positions.len() != positions.len() {
                return Ok(None);
            }
            for (mine, theirs) in positions.iter_mut().zip(&log.positions) {
                *mine = (*mine).min(*theirs);
            }
        }
        Ok(Some(LogPositions {
            generation: self.generation,
            positions,
        }))
    }

    fn commit(&self, files: &[ShardFileSummary]) -> Result<(), PersistError> {
        let log = self.log_seqs.as_ref().map(|seqs| LogPositions {
            generation: self.generation,
            positions: seqs.clone(),
        });
        self.version.commit(files, log.as_ref())
    }

    fn upkeep(&self, upkeep: &Upkeep) -> Vec<String> {
        let mut warnings = Vec::new();
        let Some(dataset_dir) = self.version.path.parent().map(Path::to_path_buf) else {
            return warnings;
        };
        let Some(root) = dataset_dir.parent() else {
            return warnings;
        };
        if let (Some(log_dir), Some(seqs)) = (&upkeep.log_dir, &self.log_seqs) {
            match self.compactable(root, &dataset_dir, seqs) {
                Ok(Some(covered)) => {
                    if let Err(e) = recovery::compact(log_dir, &covered) {
                        warnings.push(format!("compacting the change log: {e}"));
                    }
                }
                Ok(None) => {}
                Err(e) => warnings.push(format!("compacting the change log: {e}")),
            }
        }
        let dataset_dir = Some(dataset_dir.clone());
        let saving = |version: &str| {
            dataset_dir
                .as_ref()
                .is_some_and(|d| in_progress::contains(&d.join(version)))
        };
        if let Err(e) = recovery::retain_versions(root, &self.version.name, upkeep.keep, &saving) {
            warnings.push(format!("removing old versions: {e}"));
        }
        warnings
    }
}

/// An `SH_LOAD` in progress: the read, then every shard adding its part.
pub struct LoadProgress {
    name: Box<str>,
    sessions: u64,
    keys: u64,
    error: Option<PersistError>,
}

impl GatherKind {
    pub fn end_all() -> Self {
        GatherKind::EndAll { ended: 0 }
    }

    pub fn info_all() -> Self {
        GatherKind::InfoAll {
            sessions: 0,
            keys: 0,
        }
    }

    pub fn server_info() -> Self {
        GatherKind::ServerInfo(ServerTotals::default())
    }

    pub fn exists(tkns: Vec<Token>) -> Self {
        let found = vec![false; tkns.len()];
        GatherKind::Exists { tkns, found }
    }

    pub fn save(name: Box<str>, version: VersionDir, now: Millis) -> Self {
        GatherKind::Save(Box::new(SaveProgress {
            name,
            version_name: Some(version.version.clone()),
            version: Some(version),
            started: now,
            files: Vec::new(),
            log_seqs: Some(Vec::new()),
            error: None,
            committed: false,
        }))
    }

    /// A save that failed before any shard took part.
    pub fn save_failed(name: Box<str>, error: PersistError, now: Millis) -> Self {
        GatherKind::Save(Box::new(SaveProgress {
            name,
            version_name: None,
            version: None,
            started: now,
            files: Vec::new(),
            log_seqs: None,
            error: Some(error),
            committed: false,
        }))
    }

    /// Logs how a periodic snapshot (the server's own save, which no client
    /// hears about) went; other kinds log nothing.
    pub fn log_periodic_save(&self, now: Millis) {
        let GatherKind::Save(save) = self else {
            return;
        };
        let took = now.saturating_sub(save.started);
        let name = &save.name;
        let version = save.version_name.as_deref();
        match (&save.error, save.committed) {
            (None, true) => {
                let sessions: u64 = save.files.iter().map(|f| f.sessions).sum();
                tracing::info!(
                    dataset = %name,
                    version,
                    sessions,
                    keys = save.files.iter().map(|f| f.keys).sum::<u64>(),
                    bytes = save.files.iter().map(|f| f.bytes).sum::<u64>(),
                    duration_ms = took,
                    "periodic snapshot: dataset {name}: {sessions} sessions saved in {took} ms"
                );
            }
            (Some(e), _) => tracing::error!(
                dataset = %name,
                version,
                error = %e,
                "periodic snapshot: dataset {name}: failed: {e}"
            ),
            (None, false) => tracing::error!(
                dataset = %name,
                version,
                "periodic snapshot: dataset {name}: failed: not committed"
            ),
        }
    }

    pub fn load(name: Box<str>) -> Self {
        GatherKind::Load(LoadProgress {
            name,
            sessions: 0,
            keys: 0,
            error: None,
        })
    }
}

pub struct Gather {
    /// Who asked; None for the server's own work (a periodic snapshot).
    pub ticket: Option<Ticket>,
    kind: GatherKind,
    /// Parts not answered yet.
    remaining: usize,
}

impl Gather {
    pub fn new(ticket: Option<Ticket>, kind: GatherKind, parts: usize) -> Self {
        Gather {
            ticket,
            kind,
            remaining: parts,
        }
    }

    pub fn kind(&self) -> &GatherKind {
        &self.kind
    }

    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// A scrape: answered over HTTP, not as a command.
    pub fn is_metrics(&self) -> bool {
        matches!(self.kind, GatherKind::Metrics(_))
    }

    /// Waits for `parts` more answers (a load, once its data is read).
    pub fn expect_parts(&mut self, parts: usize) {
        self.remaining += parts;
    }

    /// A load whose data could not be read: nothing more will come.
    pub fn fail_load(&mut self, reason: PersistError) {
        if let GatherKind::Load(load) = &mut self.kind {
            load.error = Some(reason);
        }
        self.remaining = 0;
    }

    /// With every shard file written, what remains of a save: committing
    /// the version (or removing it after a failure). Taken once; the disk
    /// work is done off the event loop and reported to `save_settled`.
    pub fn take_save_settlement(&mut self) -> Option<SaveSettlement> {
        let GatherKind::Save(save) = &mut self.kind else {
            return None;
        };
        let version = save.version.take()?;
        save.files.sort_by_key(|f| f.shard);
        let log_seqs = save.log_seqs.as_mut().map(|seqs| {
            seqs.sort_unstable();
            seqs.iter().map(|&(_, seq)| seq).collect()
        });
        Some(SaveSettlement {
            version,
            files: save.error.is_none().then(|| save.files.clone()),
            log_seqs,
            generation: 0,
            upkeep: None,
        })
    }

    /// A finished save: when it began and whether it was committed.
    pub fn save_outcome(&self) -> Option<(Millis, bool)> {
        match &self.kind {
            GatherKind::Save(save) => Some((save.started, save.committed)),
            _ => None,
        }
    }

    pub fn save_settled(&mut self, result: Result<(), PersistError>) {
        if let GatherKind::Save(save) = &mut self.kind {
            match result {
                Ok(()) => save.committed = save.error.is_none(),
                Err(e) => {
                    save.error.get_or_insert(e);
                }
            }
        }
    }

    pub fn merge(&mut self, result: PartResult) {
        self.remaining = self.remaining.saturating_sub(1);
        match (&mut self.kind, result) {
            (GatherKind::EndAll { ended }, PartResult::Ended(n))
            | (GatherKind::OwnerEnd { ended, .. }, PartResult::Ended(n)) => *ended += n,
            (GatherKind::OwnerSessions { found, .. }, PartResult::OwnerSessions(list)) => {
                found.extend(list);
            }
            (GatherKind::Metrics(all), PartResult::Metrics(figures)) => all.push(*figures),
            (GatherKind::InfoAll { sessions, keys }, PartResult::Counts(counts)) => {
                *sessions += counts.sessions;
                *keys += counts.keys;
            }
            (GatherKind::ServerInfo(totals), PartResult::Counts(counts)) => {
                totals.sessions += counts.sessions;
                totals.keys += counts.keys;
                totals.connections += counts.connections;
                totals.memory_used += counts.memory_used;
                totals.session_not_exist += counts.session_not_exist;
            }
            (GatherKind::Save(save), PartResult::Saved { result, log_seq }) => {
                match (log_seq, &mut save.log_seqs, &result) {
                    (Some(seq), Some(seqs), Ok(file)) => seqs.push((file.shard, seq)),
                    _ => save.log_seqs = None,
                }
                match result {
                    Ok(file) => save.files.push(file),
                    Err(e) => {
                        save.error.get_or_insert(e);
                    }
                }
            }
            (
                GatherKind::Subscribe {
                    positions, lost, ..
                },
                PartResult::Subscribed {
                    shard,
                    position,
                    lost: missed,
                },
            ) => {
                if let Some(p) = positions.get_mut(shard) {
                    *p = position;
                }
                *lost += missed;
            }
            (GatherKind::Load(load), PartResult::Loaded { sessions, keys }) => {
                load.sessions += sessions;
                load.keys += keys;
            }
            (GatherKind::Exists { found, .. }, PartResult::Exists(indexes)) => {
                for i in indexes {
                    if let Some(f) = found.get_mut(i as usize) {
                        *f = true;
                    }
                }
            }
            // A part answered with the wrong kind cannot happen: parts are
            // made from the kind. Ignoring it keeps the count right.
            _ => {}
        }
    }

    /// A gathered `SH_NEW`, to be run now that its name's holder is settled.
    pub fn take_new_session(&mut self) -> Option<NewSession> {
        if !matches!(self.kind, GatherKind::NewShared(_)) {
            return None;
        }
        match std::mem::replace(&mut self.kind, GatherKind::end_all()) {
            GatherKind::NewShared(new) => Some(new),
            _ => None,
        }
    }

    /// A finished `SH_SUBSCRIBE`: its subscription and where it starts.
    pub fn subscription(&self) -> Option<(u64, Vec<u64>)> {
        match &self.kind {
            GatherKind::Subscribe { sub, positions, .. } => Some((*sub, positions.clone())),
            _ => None,
        }
    }

    /// The response, once every part is in.
    pub fn encode(self, server: &ServerFacts, now: Millis) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        match self.kind {
            GatherKind::EndAll { ended } => answer::ended_all(&mut out, ended),
            GatherKind::InfoAll { sessions, keys } => answer::totals(&mut out, sessions, keys),
            GatherKind::ServerInfo(totals) => answer::server_info(
                &mut out,
                &ServerInfo {
                    persist_enabled: server.persist_enabled,
                    shards: server.shards as u64,
                    sessions: totals.sessions,
                    keys: totals.keys,
                    connections: totals.connections,
                    uptime_s: server.uptime_s,
                    memory_used: totals.memory_used,
                    max_memory: server.max_memory,
                    session_not_exist: totals.session_not_exist,
                },
            ),
            GatherKind::Save(save) => {
                let sessions = save.files.iter().map(|f| f.sessions).sum();
                let keys = save.files.iter().map(|f| f.keys).sum();
                match (&save.error, save.committed) {
                    (None, true) => answer::saved(
                        &mut out,
                        &save.name,
                        now.saturating_sub(save.started),
                        sessions,
                        keys,
                    ),
                    (error, _) => {
                        let why = error.as_ref().map_or_else(
                            || "the save was not committed".to_string(),
                            ToString::to_string,
                        );
                        answer::persist_failed(
                            &mut out,
                            CommandName::Save,
                            Status::SaveError,
                            &save.name,
                            &why,
                        )
                    }
                }
            }
            GatherKind::Load(load) => match &load.error {
                None => answer::loaded(&mut out, &load.name, load.sessions, load.keys),
                Some(error) => answer::persist_failed(
                    &mut out,
                    CommandName::Load,
                    Status::LoadError,
                    &load.name,
                    &error.to_string(),
                ),
            },
            GatherKind::NewShared(_) => {
                // Run by the router through `take_new_session`, never encoded.
                crate::protocol::encode_status(
                    &mut out,
                    CommandName::New,
                    Status::Unknown,
                    None,
                    None,
                )
            }
            GatherKind::OwnerSessions { owner, mut found } => {
                found.sort_by_key(|&(created, _)| created);
                answer::owner_sessions(&mut out, &owner, found.into_iter().map(|(_, t)| t));
            }
            GatherKind::OwnerEnd { owner, ended } => answer::owner_ended(&mut out, &owner, ended),
            GatherKind::Subscribe {
                positions,
                lost,
                resumed,
                unknown_loss,
                ..
            } => {
                let cursor = crate::events::Cursor {
                    instance: server.instance,
                    positions,
                };
                let lost = match (resumed, unknown_loss, lost) {
                    (true, true, _) => Some(-1),
                    (true, false, n) if n > 0 => Some(i64::try_from(n).unwrap_or(i64::MAX)),
                    _ => None,
                };
                answer::subscribed(&mut out, &cursor.to_text(), lost);
            }
            GatherKind::Metrics(shards) => {
                let connections = shards.iter().map(|s| s.connections).sum();
                let facts = metrics::ScrapeFacts {
                    version: env!("CARGO_PKG_VERSION"),
                    memory_limit: server.max_memory,
                    connections,
                    started_s: server.wall_epoch_ms as f64 / 1e3,
                };
                let body = metrics::encode(shards, facts);
                out = http_response(200, metrics::CONTENT_TYPE, body.as_bytes());
            }
            GatherKind::Exists { tkns, found } => {
                let exist = tkns
                    .into_iter()
                    .zip(found)
                    .filter_map(|(tkn, found)| found.then_some(tkn));
                answer::existing(&mut out, exist);
            }
        }
        out
    }
}
