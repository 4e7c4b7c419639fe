//! Dataset directories `<root>/<name>/<version>/`: beginning a version,
//! committing it with its `metadata.json`, finding the newest complete one and
//! loading it.
//!
//! The crash-safety rule lives here: a version is loadable only once its
//! metadata (written last, atomically, then fsynced with its directories) says
//! `"complete": true`; anything else in a dataset directory is ignored on load.
//! Every path is `root` joined with a validated dataset name and names this
//! module made itself, so nothing is ever read or written outside `root`.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use simd_json::prelude::*;

use super::PersistError;
use super::format::{FORMAT_VERSION, OLDEST_READABLE_VERSION, SessionRecord, read_shard_file};
use super::stamp::{Civil, VersionKey};
use super::writer::{ShardFileSummary, shard_file_name};

/// The file that makes a version complete.
pub const METADATA_FILE: &str = "metadata.json";
/// Where the metadata is written before its atomic rename.
pub const METADATA_TEMP_FILE: &str = "metadata.json.tmp";
/// The `format` member of every metadata file.
const FORMAT_NAME: &str = "nemesisdb-snapshot";
/// Metadata larger than this is not ours (1024 shards need ~150 KiB).
const MAX_METADATA_LEN: u64 = 16 * 1024 * 1024;
/// Longest dataset name.
pub const MAX_DATASET_NAME_LEN: usize = 128;

/// `[A-Za-z0-9_.-]`, 1 to 128 characters, not `.` or `..`: such a name is a
/// single path component, so `<root>/<name>` never leaves `root`.
pub fn validate_dataset_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DATASET_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn checked_name(name: &str) -> Result<(), PersistError> {
    if validate_dataset_name(name) {
        Ok(())
    } else {
        Err(PersistError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Where a full snapshot stands in the change log: the snapshot of shard
/// `i` includes every change up to and including sequence number
/// `positions[i]` of that shard's log in `generation` (0: none of it).
/// Recovery replays each shard's log after its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPositions {
    pub generation: u64,
    /// By shard index; as many as the version has shard files.
    pub positions: Vec<u64>,
}

/// A version directory being filled by one save.
#[derive(Debug)]
pub struct VersionDir {
    /// `<root>/<name>/<version>`: where the shard writers create their files.
    pub path: PathBuf,
    /// The dataset name.
    pub name: String,
    /// The version directory's name, e.g. `20261126T074900123Z`.
    pub version: String,
    /// When the save began; recorded in the metadata.
    created: SystemTime,
    /// `<root>/<name>`, fsynced on commit so the new version's entry is durable.
    dataset_dir: PathBuf,
    /// `<root>`, fsynced on commit so a new dataset's entry is durable.
    root: PathBuf,
}

/// Begins a new version of dataset `name` under `root`, creating the root and
/// dataset directories if missing. Any error maps to status 122: nothing has
/// been written yet.
pub fn begin_version(root: &Path, name: &str) -> Result<VersionDir, PersistError> {
    begin_version_at(root, name, SystemTime::now())
}

/// [`begin_version`] with the clock passed in.
///
/// The version is named after `now`; if that name is not later than every
/// version already there (same millisecond, or the clock went back), it
/// becomes the newest existing name plus a `-<n>` suffix, so a later save
/// always sorts after an earlier one. The directory is created exclusively,
/// so two concurrent saves never share one.
pub fn begin_version_at(
    root: &Path,
    name: &str,
    now: SystemTime,
) -> Result<VersionDir, PersistError> {
    checked_name(name)?;
    fs::create_dir_all(root)
        .map_err(|e| PersistError::io(root, "creating the save directory", e))?;
    let dataset_dir = root.join(name);
    fs::create_dir_all(&dataset_dir)
        .map_err(|e| PersistError::io(&dataset_dir, "creating the dataset directory", e))?;
    let mut key = VersionKey::at(now);
    if let Some(newest) = version_keys(&dataset_dir)?.into_iter().max()
        && newest >= key
    {
        key = VersionKey {
            seq: newest.seq + 1,
            ..newest
        };
    }
    for _ in 0..10_000 {
        let version = key.name();
        let path = dataset_dir.join(&version);
        match fs::create_dir(&path) {
            Ok(()) => {
                return Ok(VersionDir {
                    path,
                    name: name.to_owned(),
                    version,
                    created: now,
                    dataset_dir,
                    root: root.to_owned(),
                });
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => key.seq += 1,
            Err(e) => {
                return Err(PersistError::io(&path, "creating the version directory", e));
            }
        }
    }
    Err(PersistError::invalid(
        &dataset_dir,
        "no free version directory name after 10000 tries",
    ))
}

/// The keys of every entry in a dataset directory that is named like a version.
fn version_keys(dataset_dir: &Path) -> Result<Vec<VersionKey>, PersistError> {
    Ok(versions(dataset_dir)?.into_iter().map(|(k, _)| k).collect())
}

/// Version directories in `dataset_dir`, any state; other entries are ignored.
fn versions(dataset_dir: &Path) -> Result<Vec<(VersionKey, PathBuf)>, PersistError> {
    let listing = |e| PersistError::io(dataset_dir, "listing", e);
    let mut out = Vec::new();
    for entry in fs::read_dir(dataset_dir).map_err(listing)? {
        let entry = entry.map_err(listing)?;
        let Some(key) = entry.file_name().to_str().and_then(VersionKey::parse) else {
            continue;
        };
        if entry.file_type().map_err(listing)?.is_dir() {
            out.push((key, entry.path()));
        }
    }
    Ok(out)
}

impl VersionDir {
    /// Makes the version loadable. Checks that `files` name distinct shards and
    /// that each file is in the directory with the size given, fsyncs the
    /// directory (so the shard files' entries are durable), then writes
    /// `metadata.json` via a temp file + fsync + rename, and fsyncs the version,
    /// dataset and root directories. Blocks on the disk: call it off the event
    /// loop. Any error maps to status 123; the version then stays incomplete.
    ///
    /// `log` is given by full saves only (every session of every shard): it
    /// makes the version a base recovery can replay the change log onto. A
    /// save of listed tokens passes `None`.
    pub fn commit(
        &self,
        files: &[ShardFileSummary],
        log: Option<&LogPositions>,
    ) -> Result<(), PersistError> {
        if files.is_empty() {
            return Err(PersistError::invalid(
                &self.path,
                "commit without shard files",
            ));
        }
        if let Some(log) = log
            && log.positions.len() != files.len()
        {
            return Err(PersistError::invalid(
                &self.path,
                format!(
                    "{} log positions for {} shard files",
                    log.positions.len(),
                    files.len()
                ),
            ));
        }
        let mut shards = BTreeSet::new();
        for f in files {
            if f.file_name != shard_file_name(f.shard) {
                return Err(PersistError::invalid(
                    &self.path,
                    format!("file name {:?} for shard {}", f.file_name, f.shard),
                ));
            }
            if !shards.insert(f.shard) {
                return Err(PersistError::invalid(
                    &self.path,
                    format!("shard {} listed twice", f.shard),
                ));
            }
            let path = self.path.join(&f.file_name);
            let len = fs::metadata(&path)
                .map_err(|e| PersistError::io(&path, "checking", e))?
                .len();
            if len != f.bytes {
                return Err(PersistError::invalid(
                    &path,
                    format!("{len} bytes on disk, the summary says {}", f.bytes),
                ));
            }
        }
        let final_path = self.path.join(METADATA_FILE);
        if final_path.exists() {
            return Err(PersistError::invalid(&final_path, "already committed"));
        }
        sync_dir(&self.path)?;

        let text = self.metadata_text(files, log);
        let temp = self.path.join(METADATA_TEMP_FILE);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| PersistError::io(&temp, "creating", e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| PersistError::io(&temp, "writing", e))?;
        file.sync_all()
            .map_err(|e| PersistError::io(&temp, "fsyncing", e))?;
        drop(file);
        fs::rename(&temp, &final_path)
            .map_err(|e| PersistError::io(&final_path, "renaming the metadata temp file to", e))?;
        sync_dir(&self.path)?;
        sync_dir(&self.dataset_dir)?;
        sync_dir(&self.root)
    }

    /// Removes this version's directory and everything in it, unless it was
    /// committed. For a save that failed part-way (after every writer is done).
    pub fn discard(self) -> Result<(), PersistError> {
        if self.path.join(METADATA_FILE).exists() {
            return Err(PersistError::invalid(
                &self.path,
                "committed; not discarded",
            ));
        }
        fs::remove_dir_all(&self.path)
            .map_err(|e| PersistError::io(&self.path, "removing the partial version", e))
    }

    fn metadata_text(&self, files: &[ShardFileSummary], log: Option<&LogPositions>) -> String {
        let mut files: Vec<&ShardFileSummary> = files.iter().collect();
        files.sort_by_key(|f| f.shard);
        let sessions: u64 = files.iter().map(|f| f.sessions).sum();
        let keys: u64 = files.iter().map(|f| f.keys).sum();
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        let created_ms = self
            .created
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        // Every string written here is a validated dataset name, a version name
        // or a shard file name: none needs JSON escaping.
        let mut s = String::new();
        s.push_str("{\n");
        s.push_str(&format!("  \"format\": \"{FORMAT_NAME}\",\n"));
        s.push_str(&format!("  \"formatVersion\": {FORMAT_VERSION},\n"));
        s.push_str(&format!("  \"dataset\": \"{}\",\n", self.name));
        s.push_str(&format!("  \"version\": \"{}\",\n", self.version));
        s.push_str(&format!(
            "  \"created\": \"{}\",\n",
            Civil::from(self.created).rfc3339()
        ));
        s.push_str(&format!("  \"createdUnixMs\": {created_ms},\n"));
        s.push_str(&format!("  \"shardFiles\": {},\n", files.len()));
        s.push_str(&format!("  \"sessions\": {sessions},\n"));
        s.push_str(&format!("  \"keys\": {keys},\n"));
        s.push_str(&format!("  \"bytes\": {bytes},\n"));
        s.push_str("  \"files\": [\n");
        for (i, f) in files.iter().enumerate() {
            s.push_str(&format!(
                "    {{\"file\": \"{}\", \"shard\": {}, \"sessions\": {}, \"keys\": {}, \"bytes\": {}, \"crc32\": {}}}{}\n",
                f.file_name,
                f.shard,
                f.sessions,
                f.keys,
                f.bytes,
                f.crc32,
                if i + 1 < files.len() { "," } else { "" }
            ));
        }
        s.push_str("  ],\n");
        if let Some(log) = log {
            let positions: Vec<String> = log.positions.iter().map(u64::to_string).collect();
            s.push_str(&format!(
                "  \"log\": {{\"generation\": {}, \"positions\": [{}]}},\n",
                log.generation,
                positions.join(", ")
            ));
        }
        s.push_str("  \"complete\": true\n");
        s.push_str("}\n");
        s
    }
}

fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PersistError::io(dir, "fsyncing the directory", e))
}

/// A complete version, ready to be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadableVersion {
    /// The version directory.
    pub path: PathBuf,
    /// The dataset name.
    pub name: String,
    /// The version directory's name.
    pub version: String,
    /// The metadata's `created` time (RFC 3339).
    pub created: String,
    /// The shard files, by shard index.
    pub files: Vec<ShardFileSummary>,
    /// Totals over `files`.
    pub sessions: u64,
    pub keys: u64,
    pub bytes: u64,
    /// Newer versions passed over as incomplete, each as `"<version>: <why>"`,
    /// newest first: worth a log line, since a save was cut short there.
    pub skipped: Vec<String>,
    /// Where this snapshot stands in the change log; `None` for a save of
    /// listed tokens and for versions written before format 4.
    pub log: Option<LogPositions>,
}

/// The newest complete version of dataset `name` under `root`.
///
/// A version is complete when its `metadata.json` exists, parses as a JSON
/// object and has `"complete": true`; newer versions that are not (no metadata,
/// only the temp file, unparseable, `complete` not true) are passed over and
/// listed in `skipped`. `Ok(None)` when the root, the dataset or a complete
/// version does not exist. A complete version whose metadata is otherwise
/// unusable (unknown format version, wrong shape) is an error rather than a
/// reason to fall back silently to an older one. Errors map to status 142.
pub fn newest_complete(root: &Path, name: &str) -> Result<Option<LoadableVersion>, PersistError> {
    newest_where(root, name, |_| true)
}

/// The newest complete version of dataset `name` that records its log
/// positions (a full snapshot recovery can start from); complete versions
/// without them are passed over (and listed in `skipped`), like incomplete
/// ones. Errors as [`newest_complete`].
pub fn newest_recoverable(
    root: &Path,
    name: &str,
) -> Result<Option<LoadableVersion>, PersistError> {
    newest_where(root, name, |v| v.log.is_some())
}

/// The newest complete version for which `wanted` holds.
fn newest_where(
    root: &Path,
    name: &str,
    wanted: impl Fn(&LoadableVersion) -> bool,
) -> Result<Option<LoadableVersion>, PersistError> {
    checked_name(name)?;
    let dataset_dir = root.join(name);
    let mut versions = match versions(&dataset_dir) {
        Ok(v) => v,
        Err(PersistError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    let mut skipped = Vec::new();
    for (key, path) in versions {
        let version = key.name();
        match read_metadata(&path)? {
            Metadata::Incomplete(why) => skipped.push(format!("{version}: {why}")),
            Metadata::Complete(mut value, meta_path) => {
                let mut v = parse_metadata(&meta_path, &mut value)?;
                if !wanted(&v) {
                    skipped.push(format!("{version}: complete, but no log positions"));
                    continue;
                }
                v.path = path;
                v.name = name.to_owned();
                v.version = version;
                v.skipped = skipped;
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

/// Every version directory of dataset `name`, oldest first, each with its
/// name and whether it is complete (`Some(has log positions)`) or not
/// (`None`). A missing dataset has none.
pub(crate) fn list_versions(
    root: &Path,
    name: &str,
) -> Result<Vec<(String, PathBuf, Option<bool>)>, PersistError> {
    checked_name(name)?;
    let dataset_dir = root.join(name);
    let mut versions = match versions(&dataset_dir) {
        Ok(v) => v,
        Err(PersistError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    versions.sort_by_key(|v| v.0);
    let mut out = Vec::with_capacity(versions.len());
    for (key, path) in versions {
        let state = match read_metadata(&path)? {
            Metadata::Incomplete(_) => None,
            Metadata::Complete(mut value, meta_path) => {
                Some(parse_metadata(&meta_path, &mut value)?.log.is_some())
            }
        };
        out.push((key.name(), path, state));
    }
    Ok(out)
}

enum Metadata {
    Incomplete(String),
    Complete(simd_json::OwnedValue, PathBuf),
}

fn read_metadata(version_dir: &Path) -> Result<Metadata, PersistError> {
    let path = version_dir.join(METADATA_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let why = if version_dir.join(METADATA_TEMP_FILE).exists() {
                "metadata never renamed into place (save cut short)"
            } else {
                "no metadata (save cut short or in progress)"
            };
            return Ok(Metadata::Incomplete(why.into()));
        }
        Err(e) => return Err(PersistError::io(&path, "opening", e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_METADATA_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PersistError::io(&path, "reading", e))?;
    if bytes.len() as u64 > MAX_METADATA_LEN {
        return Ok(Metadata::Incomplete(format!(
            "metadata larger than {MAX_METADATA_LEN} bytes"
        )));
    }
    let value = match simd_json::to_owned_value(&mut bytes) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Metadata::Incomplete(format!(
                "metadata does not parse: {e}"
            )));
        }
    };
    match value.get("complete").and_then(|c| c.as_bool()) {
        Some(true) => Ok(Metadata::Complete(value, path)),
        _ => Ok(Metadata::Incomplete(
            "metadata does not say complete".into(),
        )),
    }
}

/// The metadata of a complete version -> a [`LoadableVersion`] (without its
/// path, name, version and skipped list, which the caller fills in).
fn parse_metadata(
    path: &Path,
    value: &mut simd_json::OwnedValue,
) -> Result<LoadableVersion, PersistError> {
    let bad = |reason: String| PersistError::metadata(path, reason);
    let u64_of = |v: &simd_json::OwnedValue, field: &str| {
        v.get(field)
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad(format!("{field:?} missing or not a non-negative integer")))
    };
    match value.get("format").and_then(|v| v.as_str()) {
        Some(FORMAT_NAME) => {}
        other => return Err(bad(format!("format is {other:?}, not {FORMAT_NAME:?}"))),
    }
    let format_version = u64_of(value, "formatVersion")?;
    let readable = u64::from(OLDEST_READABLE_VERSION)..=u64::from(FORMAT_VERSION);
    if !readable.contains(&format_version) {
        return Err(bad(format!(
            "format version {format_version}, this server reads {OLDEST_READABLE_VERSION} to {FORMAT_VERSION}"
        )));
    }
    let created = value
        .get("created")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let entries = value
        .get("files")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("\"files\" missing or not an array".into()))?;
    if entries.is_empty() {
        return Err(bad("no shard files".into()));
    }
    let mut files = Vec::with_capacity(entries.len());
    let mut shards = BTreeSet::new();
    for entry in entries {
        let shard = usize::try_from(u64_of(entry, "shard")?)
            .map_err(|_| bad("shard index out of range".into()))?;
        let file_name = entry
            .get("file")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("file name of shard {shard} missing")))?;
        // Only names this code writes: a metadata file can never point a load
        // outside its version directory.
        if file_name != shard_file_name(shard) {
            return Err(bad(format!("file name {file_name:?} for shard {shard}")));
        }
        if !shards.insert(shard) {
            return Err(bad(format!("shard {shard} listed twice")));
        }
        let crc32 = u32::try_from(u64_of(entry, "crc32")?)
            .map_err(|_| bad(format!("crc32 of shard {shard} out of range")))?;
        files.push(ShardFileSummary {
            file_name: file_name.to_owned(),
            shard,
            sessions: u64_of(entry, "sessions")?,
            keys: u64_of(entry, "keys")?,
            bytes: u64_of(entry, "bytes")?,
            crc32,
        });
    }
    files.sort_by_key(|f| f.shard);
    let sum = |f: fn(&ShardFileSummary) -> u64| {
        files
            .iter()
            .try_fold(0u64, |acc, x| acc.checked_add(f(x)))
            .ok_or_else(|| bad("totals overflow".into()))
    };
    let sessions = sum(|f| f.sessions)?;
    let keys = sum(|f| f.keys)?;
    let bytes = sum(|f| f.bytes)?;
    for (field, total) in [("sessions", sessions), ("keys", keys), ("bytes", bytes)] {
        let stated = u64_of(value, field)?;
        if stated != total {
            return Err(bad(format!(
                "{field:?} is {stated}, the files add up to {total}"
            )));
        }
    }
    let log = match value.get("log") {
        None => None,
        Some(log) => {
            let generation = u64_of(log, "generation")?;
            let positions = log
                .get("positions")
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad("\"log\" has no \"positions\" array".into()))?
                .iter()
                .map(|p| {
                    p.as_u64()
                        .ok_or_else(|| bad("a log position is not a non-negative integer".into()))
                })
                .collect::<Result<Vec<u64>, _>>()?;
            let shard_files = u64_of(value, "shardFiles")?;
            if positions.len() as u64 != shard_files || positions.len() != files.len() {
                return Err(bad(format!(
                    "{} log positions for {shard_files} shard files",
                    positions.len()
                )));
            }
            Some(LogPositions {
                generation,
                positions,
            })
        }
    };
    Ok(LoadableVersion {
        log,
        path: PathBuf::new(),
        name: String::new(),
        version: String::new(),
        created,
        files,
        sessions,
        keys,
        bytes,
        skipped: Vec::new(),
    })
}

impl LoadableVersion {
    /// Reads and verifies every shard file (size, header magic and format
    /// version, shard index, CRC32 against the footer and the metadata, every
    /// record well-formed, every name, key and value valid UTF-8, counts against
    /// the footer and the metadata) before returning anything: any problem is
    /// an error naming the file, never partial data. Files are read in
    /// parallel, up to one thread per core. Blocks on the disk: call it off the
    /// event loop. Errors map to status 142.
    pub fn read_all(&self) -> Result<Vec<SessionRecord>, PersistError> {
        let n = self.files.len();
        let workers = thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
            .min(n);
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let work = || {
            let mut done = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let result = self.read_file(&self.files[i]);
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                done.push((i, result));
            }
            done
        };
        let mut results: Vec<Option<Result<Vec<SessionRecord>, PersistError>>> =
            (0..n).map(|_| None).collect();
        thread::scope(|s| {
            // Spawning may fail; the calling thread then does the rest itself.
            let helpers: Vec<_> = (1..workers)
                .filter_map(|i| {
                    thread::Builder::new()
                        .name(format!("snapshot-reader-{i}"))
                        .spawn_scoped(s, work)
                        .ok()
                })
                .collect();
            for (i, r) in work() {
                results[i] = Some(r);
            }
            for h in helpers {
                if let Ok(done) = h.join() {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
            }
        });
        let mut records = Vec::with_capacity(usize::try_from(self.sessions).unwrap_or(0));
        let mut missing = None;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Some(Ok(mut recs)) => records.append(&mut recs),
                Some(Err(e)) => return Err(e),
                None => missing = missing.or(Some(i)),
            }
        }
        match missing {
            None => Ok(records),
            Some(i) => Err(PersistError::invalid(
                self.path.join(&self.files[i].file_name),
                "not read (a reader thread failed)",
            )),
        }
    }

    fn read_file(&self, f: &ShardFileSummary) -> Result<Vec<SessionRecord>, PersistError> {
        let path = self.path.join(&f.file_name);
        let decoded = read_shard_file(&path, f.bytes)?;
        let mismatch = |what: &str, file: String, meta: String| {
            Err(PersistError::corrupt(
                &path,
                None,
                format!("{what} is {file} in the file, {meta} in the metadata"),
            ))
        };
        if decoded.shard as usize != f.shard {
            return mismatch(
                "shard index",
                decoded.shard.to_string(),
                f.shard.to_string(),
            );
        }
        if decoded.crc32 != f.crc32 {
            return mismatch(
                "CRC32",
                format!("{:#010x}", decoded.crc32),
                format!("{:#010x}", f.crc32),
            );
        }
        if decoded.records.len() as u64 != f.sessions {
            return mismatch(
                "session count",
                decoded.records.len().to_string(),
                f.sessions.to_string(),
            );
        }
        if decoded.keys != f.keys {
            return mismatch("key count", decoded.keys.to_string(), f.keys.to_string());
        }
        Ok(decoded.records)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::persist::ShardFileWriter;
    use crate::persist::format::tests::sample_records;
    use crate::persist::test_support::TempDir;

    /// Writes one file per entry of `shards` (in chunks of 3 records) into a
    /// new version; commits it if `commit`.
    fn save(root: &Path, name: &str, shards: &[Vec<SessionRecord>], commit: bool) -> VersionDir {
        let dir = write_files(root, name, shards);
        if commit {
            let summaries = summaries(&dir, shards.len());
            dir.commit(&summaries, None).unwrap();
        }
        dir
    }

    /// The summaries of the files [`write_files`] wrote.
    fn summaries(dir: &VersionDir, shards: usize) -> Vec<ShardFileSummary> {
        (0..shards)
            .map(|i| {
                let path = dir.path.join(shard_file_name(i));
                let bytes = fs::metadata(&path).unwrap().len();
                let d = read_shard_file(&path, bytes).unwrap();
                ShardFileSummary {
                    file_name: shard_file_name(i),
                    shard: i,
                    sessions: d.records.len() as u64,
                    keys: d.keys,
                    bytes,
                    crc32: d.crc32,
                }
            })
            .collect()
    }

    /// A new, uncommitted version with one file per entry of `shards`.
    fn write_files(root: &Path, name: &str, shards: &[Vec<SessionRecord>]) -> VersionDir {
        let dir = begin_version(root, name).unwrap();
        let mut summaries = Vec::new();
        for (i, records) in shards.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let w = ShardFileWriter::start(
                &dir.path,
                i,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .unwrap();
            for chunk in records.chunks(3) {
                let mut bytes = Vec::new();
                let mut keys = 0;
                for r in chunk {
                    r.encode(&mut bytes);
                    keys += r.keys.len() as u64;
                }
                w.write_chunk(bytes, chunk.len() as u64, keys);
            }
            w.finish();
            summaries.push(rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap());
        }
        dir
    }

    fn three_shards() -> Vec<Vec<SessionRecord>> {
        let all = sample_records();
        let mut shards = vec![Vec::new(), Vec::new(), Vec::new()];
        for (i, r) in all.into_iter().enumerate() {
            shards[i % 3].push(r);
        }
        shards
    }

    fn small_shards(tag: u64) -> Vec<Vec<SessionRecord>> {
        vec![
            vec![SessionRecord {
                tkn: tag,
                name: None,
                shared: false,
                expiry: None,
                owner: None,
                created_unix_ms: 0,
                idle_deadline_unix_ms: 0,
                version: 1,
                keys: vec![("k".into(), b"1".as_slice().into())],
            }],
            Vec::new(),
        ]
    }

    fn load(root: &Path, name: &str) -> Result<Vec<SessionRecord>, PersistError> {
        newest_complete(root, name).unwrap().unwrap().read_all()
    }

    #[test]
    fn dataset_names() {
        for good in ["a", "A-z_0.9", "..a", "a..", &"x".repeat(128)] {
            assert!(validate_dataset_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../a",
            "/abs",
            "a\\b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(129),
        ] {
            assert!(!validate_dataset_name(bad), "{bad:?}");
        }
        let root = TempDir::new("names");
        let err = begin_version(root.path(), "../escape").unwrap_err();
        assert!(matches!(err, PersistError::InvalidName { .. }), "{err}");
        assert!(newest_complete(root.path(), "a/b").is_err());
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn round_trip_through_the_disk() {
        let root = TempDir::new("round-trip");
        let shards = three_shards();
        let dir = save(root.path(), "ds", &shards, true);
        let v = newest_complete(root.path(), "ds").unwrap().unwrap();
        assert_eq!(v.path, dir.path);
        assert_eq!(v.version, dir.version);
        assert_eq!(v.name, "ds");
        assert!(v.skipped.is_empty());
        assert_eq!(v.files.len(), 3);
        let all: Vec<SessionRecord> = shards.concat();
        assert_eq!(v.sessions, all.len() as u64);
        assert_eq!(v.keys, all.iter().map(|r| r.keys.len() as u64).sum::<u64>());
        assert_eq!(v.read_all().unwrap(), all);
        // The metadata is readable JSON for people too.
        let text = fs::read_to_string(dir.path.join(METADATA_FILE)).unwrap();
        assert!(text.contains("\"complete\": true"), "{text}");
        assert!(text.contains("\"file\": \"shard-2.ndb\""), "{text}");
        assert!(!dir.path.join(METADATA_TEMP_FILE).exists());
    }

    #[test]
    fn log_positions_round_trip_and_pick_the_recoverable_version() {
        let root = TempDir::new("log-positions");
        let r = root.path();
        assert_eq!(newest_recoverable(r, "ds").unwrap(), None);
        let log = LogPositions {
            generation: 3,
            positions: vec![17, 0],
        };
        let full = write_files(r, "ds", &small_shards(1));
        let files = summaries(&full, 2);
        let short = LogPositions {
            generation: 3,
            positions: vec![1],
        };
        assert!(full.commit(&files, Some(&short)).is_err(), "one per shard");
        full.commit(&files, Some(&log)).unwrap();
        let text = fs::read_to_string(full.path.join(METADATA_FILE)).unwrap();
        assert!(
            text.contains("\"log\": {\"generation\": 3, \"positions\": [17, 0]}"),
            "{text}"
        );
        // A newer save of listed tokens has no positions: the newest
        // complete, but not recoverable.
        let listed = save(r, "ds", &small_shards(2), true);
        save(r, "ds", &small_shards(3), false);
        let newest = newest_complete(r, "ds").unwrap().unwrap();
        assert_eq!(
            (newest.version.as_str(), newest.log.as_ref()),
            (listed.version.as_str(), None)
        );
        let v = newest_recoverable(r, "ds").unwrap().unwrap();
        assert_eq!(v.version, full.version);
        assert_eq!(v.log, Some(log));
        assert_eq!(v.skipped.len(), 2, "{:?}", v.skipped);
        assert!(v.skipped[1].contains("no log positions"), "{:?}", v.skipped);
        assert_eq!(v.read_all().unwrap()[0].tkn, 1);

        // Positions that disagree with the shard count are refused.
        let meta = full.path.join(METADATA_FILE);
        fs::write(&meta, text.replace("[17, 0]", "[17]")).unwrap();
        let err = newest_recoverable(r, "ds").unwrap_err().to_string();
        assert!(err.contains("1 log positions for 2 shard files"), "{err}");
        // Metadata of format 3 (no log member) still loads.
        let old = text
            .replace("\"formatVersion\": 4", "\"formatVersion\": 3")
            .replace(
                "  \"log\": {\"generation\": 3, \"positions\": [17, 0]},\n",
                "",
            );
        fs::write(&meta, old).unwrap();
        assert_eq!(newest_recoverable(r, "ds").unwrap(), None);
        assert!(newest_complete(r, "ds").unwrap().is_some());
    }

    #[test]
    fn creates_a_missing_root() {
        let tmp = TempDir::new("missing-root");
        let root = tmp.path().join("a").join("b");
        assert_eq!(newest_complete(&root, "ds").unwrap(), None);
        save(&root, "ds", &small_shards(5), true);
        assert_eq!(load(&root, "ds").unwrap()[0].tkn, 5);
    }

    #[test]
    fn version_names_are_unique_and_ordered() {
        let root = TempDir::new("versions");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_679_340_123);
        let mut names = Vec::new();
        for _ in 0..12 {
            names.push(begin_version_at(root.path(), "ds", t).unwrap().version);
        }
        // The clock going back still sorts after everything before.
        names.push(
            begin_version_at(root.path(), "ds", t - Duration::from_secs(3600))
                .unwrap()
                .version,
        );
        names.push(
            begin_version_at(root.path(), "ds", t + Duration::from_millis(1))
                .unwrap()
                .version,
        );
        assert_eq!(names[0], "20261126T074900123Z");
        assert_eq!(names[1], "20261126T074900123Z-1");
        assert_eq!(names[12], "20261126T074900123Z-12");
        assert_eq!(names[13], "20261126T074900124Z");
        let keys: Vec<VersionKey> = names
            .iter()
            .map(|n| VersionKey::parse(n).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        // Real clock: each call gives a new directory.
        let a = begin_version(root.path(), "other").unwrap();
        let b = begin_version(root.path(), "other").unwrap();
        assert_ne!(a.path, b.path);
        assert!(a.path.is_dir() && b.path.is_dir());
    }

    #[test]
    fn newest_complete_ignores_newer_partial_versions() {
        let root = TempDir::new("partial");
        let r = root.path();
        assert_eq!(newest_complete(r, "ds").unwrap(), None);
        // Only partial versions: nothing to load.
        save(r, "ds", &small_shards(1), false);
        assert_eq!(newest_complete(r, "ds").unwrap(), None);

        let good = save(r, "ds", &small_shards(2), true);
        // Newer, but: no metadata at all (saving or cut short).
        save(r, "ds", &small_shards(3), false);
        // Only the metadata temp file (cut short before the rename).
        let temp_only = save(r, "ds", &small_shards(4), true);
        fs::rename(
            temp_only.path.join(METADATA_FILE),
            temp_only.path.join(METADATA_TEMP_FILE),
        )
        .unwrap();
        // Metadata saying complete: false.
        let not_complete = save(r, "ds", &small_shards(5), true);
        let meta = not_complete.path.join(METADATA_FILE);
        let text = fs::read_to_string(&meta).unwrap();
        fs::write(
            &meta,
            text.replace("\"complete\": true", "\"complete\": false"),
        )
        .unwrap();
        // Metadata that does not parse.
        let garbled = save(r, "ds", &small_shards(6), true);
        fs::write(garbled.path.join(METADATA_FILE), b"{\"complete\": tr").unwrap();
        // Clutter that is not a version.
        fs::create_dir(r.join("ds").join("not-a-version")).unwrap();
        fs::write(r.join("ds").join("29991231T235959999Z"), b"a file").unwrap();

        let v = newest_complete(r, "ds").unwrap().unwrap();
        assert_eq!(v.path, good.path);
        assert_eq!(v.skipped.len(), 4, "{:?}", v.skipped);
        assert!(v.skipped[0].contains("does not parse"), "{:?}", v.skipped);
        assert!(
            v.skipped[1].contains("does not say complete"),
            "{:?}",
            v.skipped
        );
        assert!(v.skipped[2].contains("never renamed"), "{:?}", v.skipped);
        assert!(v.skipped[3].contains("no metadata"), "{:?}", v.skipped);
        assert_eq!(v.read_all().unwrap()[0].tkn, 2);

        // A newer complete one wins.
        save(r, "ds", &small_shards(7), true);
        assert_eq!(load(r, "ds").unwrap()[0].tkn, 7);
        // Other datasets are separate.
        assert_eq!(newest_complete(r, "other").unwrap(), None);
    }

    /// Flips one byte of `file` at `at` (counted from the end if negative).
    fn flip(file: &Path, at: i64) {
        let mut b = fs::read(file).unwrap();
        let i = if at < 0 { b.len() as i64 + at } else { at } as usize;
        b[i] ^= 0x20;
        fs::write(file, b).unwrap();
    }

    #[test]
    fn a_corrupt_byte_anywhere_fails_the_load() {
        let root = TempDir::new("corrupt");
        let dir = save(root.path(), "ds", &three_shards(), true);
        let file = dir.path.join("shard-1.ndb");
        let len = fs::metadata(&file).unwrap().len() as i64;
        for at in [0, 9, 13, 16, 17, len / 2, len - 30, -20, -12, -1] {
            flip(&file, at);
            let err = load(root.path(), "ds").unwrap_err();
            assert!(matches!(err, PersistError::Corrupt { .. }), "{at}: {err}");
            assert!(err.to_string().contains("shard-1.ndb"), "{err}");
            flip(&file, at);
            assert!(load(root.path(), "ds").is_ok());
        }
    }

    #[test]
    fn a_truncated_or_extended_file_fails_the_load() {
        let root = TempDir::new("truncated");
        let dir = save(root.path(), "ds", &three_shards(), true);
        let file = dir.path.join("shard-0.ndb");
        let whole = fs::read(&file).unwrap();
        for len in [0, 10, 44, whole.len() / 2, whole.len() - 1] {
            fs::write(&file, &whole[..len]).unwrap();
            let err = load(root.path(), "ds").unwrap_err().to_string();
            assert!(
                err.contains("shard-0.ndb") && err.contains("truncated"),
                "{err}"
            );
        }
        let mut longer = whole.clone();
        longer.push(0);
        fs::write(&file, &longer).unwrap();
        assert!(load(root.path(), "ds").is_err());
        fs::write(&file, &whole).unwrap();
        assert!(load(root.path(), "ds").is_ok());
    }

    #[test]
    fn wrong_magic_or_format_version_fails_the_load() {
        let root = TempDir::new("magic");
        let dir = save(root.path(), "ds", &small_shards(1), true);
        let file = dir.path.join("shard-0.ndb");
        flip(&file, 0);
        let err = load(root.path(), "ds").unwrap_err().to_string();
        assert!(err.contains("bad magic"), "{err}");
        flip(&file, 0);

        let mut b = fs::read(&file).unwrap();
        b[8] = 5;
        fs::write(&file, b).unwrap();
        let err = load(root.path(), "ds").unwrap_err().to_string();
        assert!(err.contains("format version 5"), "{err}");

        // A metadata format version from the future is an error, not a reason
        // to load something older.
        let meta = dir.path.join(METADATA_FILE);
        let text = fs::read_to_string(&meta).unwrap();
        fs::write(
            &meta,
            text.replace("\"formatVersion\": 4", "\"formatVersion\": 9"),
        )
        .unwrap();
        let err = newest_complete(root.path(), "ds").unwrap_err();
        assert!(matches!(err, PersistError::Metadata { .. }), "{err}");
        assert!(err.to_string().contains("format version 9"), "{err}");
    }

    #[test]
    fn counts_or_checksum_disagreeing_with_the_metadata_fail_the_load() {
        let root = TempDir::new("counts");
        let shards = small_shards(1);
        let dir = save(root.path(), "ds", &shards, false);
        // Re-derive the true summaries from the files, then lie in each field.
        let truth = summaries(&dir, 2);
        let lies: [fn(&mut ShardFileSummary); 3] =
            [|s| s.sessions += 1, |s| s.keys += 1, |s| s.crc32 ^= 1];
        for (i, lie) in lies.iter().enumerate() {
            let copy = begin_version(root.path(), "ds").unwrap();
            for f in &truth {
                fs::copy(dir.path.join(&f.file_name), copy.path.join(&f.file_name)).unwrap();
            }
            let mut files = truth.clone();
            lie(&mut files[0]);
            copy.commit(&files, None).unwrap();
            let err = load(root.path(), "ds").unwrap_err().to_string();
            assert!(err.contains("in the metadata"), "lie {i}: {err}");
        }
        // The truth loads.
        let copy = begin_version(root.path(), "ds").unwrap();
        for f in &truth {
            fs::copy(dir.path.join(&f.file_name), copy.path.join(&f.file_name)).unwrap();
        }
        copy.commit(&truth, None).unwrap();
        assert_eq!(load(root.path(), "ds").unwrap(), shards.concat());

        // Totals in the metadata that disagree with its own file list.
        let meta = copy.path.join(METADATA_FILE);
        let text = fs::read_to_string(&meta).unwrap();
        fs::write(
            &meta,
            text.replace("\"sessions\": 1,\n", "\"sessions\": 2,\n"),
        )
        .unwrap();
        let err = newest_complete(root.path(), "ds").unwrap_err().to_string();
        assert!(err.contains("add up to"), "{err}");
    }

    #[test]
    fn a_missing_shard_file_fails_the_load() {
        let root = TempDir::new("missing-file");
        let dir = save(root.path(), "ds", &three_shards(), true);
        fs::remove_file(dir.path.join("shard-2.ndb")).unwrap();
        let err = load(root.path(), "ds").unwrap_err();
        assert!(matches!(err, PersistError::Io { .. }), "{err}");
        assert!(err.to_string().contains("shard-2.ndb"), "{err}");
    }

    #[test]
    fn metadata_cannot_point_outside_its_version() {
        let root = TempDir::new("escape");
        let dir = save(root.path(), "ds", &small_shards(1), true);
        let meta = dir.path.join(METADATA_FILE);
        let text = fs::read_to_string(&meta).unwrap();
        fs::write(
            &meta,
            text.replace("\"shard-0.ndb\"", "\"../../x/shard-0.ndb\""),
        )
        .unwrap();
        let err = newest_complete(root.path(), "ds").unwrap_err().to_string();
        assert!(err.contains("file name"), "{err}");
    }

    #[test]
    fn commit_checks_what_it_is_given() {
        let root = TempDir::new("commit-checks");
        let dir = save(root.path(), "ds", &small_shards(1), false);
        let good = |shard: usize| {
            let file_name = shard_file_name(shard);
            let bytes = fs::metadata(dir.path.join(&file_name)).unwrap().len();
            ShardFileSummary {
                file_name,
                shard,
                sessions: 0,
                keys: 0,
                bytes,
                crc32: 0,
            }
        };
        assert!(dir.commit(&[], None).is_err());
        assert!(dir.commit(&[good(0), good(0)], None).is_err());
        let mut renamed = good(0);
        renamed.file_name = "../shard-0.ndb".into();
        assert!(dir.commit(&[renamed], None).is_err());
        let mut wrong_size = good(0);
        wrong_size.bytes += 1;
        assert!(dir.commit(&[wrong_size], None).is_err());
        let mut absent = good(1);
        absent.shard = 5;
        absent.file_name = shard_file_name(5);
        assert!(dir.commit(&[absent], None).is_err());
        assert_eq!(newest_complete(root.path(), "ds").unwrap(), None);
        dir.commit(&[good(0), good(1)], None).unwrap();
        assert!(
            dir.commit(&[good(0), good(1)], None).is_err(),
            "committed twice"
        );
        assert!(dir.discard().is_err(), "a committed version is kept");
        assert!(newest_complete(root.path(), "ds").unwrap().is_some());
    }

    #[test]
    fn discard_removes_a_partial_version() {
        let root = TempDir::new("discard");
        let dir = save(root.path(), "ds", &small_shards(1), false);
        let path = dir.path.clone();
        dir.discard().unwrap();
        assert!(!path.exists());
        assert!(root.path().join("ds").is_dir());
    }

    #[test]
    fn an_unusable_root_is_an_error() {
        let tmp = TempDir::new("bad-root");
        let file = tmp.path().join("regular-file");
        fs::write(&file, b"not a directory").unwrap();
        let root = file.join("below");
        let err = begin_version(&root, "ds").unwrap_err();
        assert!(matches!(err, PersistError::Io { .. }), "{err}");
        assert!(err.to_string().contains("regular-file"), "{err}");
        assert!(newest_complete(&root, "ds").is_err());
        // A dataset name taken by a regular file.
        fs::write(tmp.path().join("ds"), b"x").unwrap();
        assert!(begin_version(tmp.path(), "ds").is_err());
        assert!(newest_complete(tmp.path(), "ds").is_err());
    }
}
