//! Recovery at start-up and the housekeeping after a save: the newest full
//! snapshot plus each shard's change log after the snapshot's position
//! gives the state at the crash; a checkpoint then begins a new log
//! generation; compaction and retention keep the disk bounded.
//!
//! Owns only files under the persist root (snapshot versions and log
//! segments); knows sessions as [`SessionRecord`]s and never touches a
//! shard's store. The rules are `docs/PERSISTENCE.md`, "Recovery" and
//! "Compaction and retention".

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::sync::mpsc;

use crate::domain::Token;
use crate::mesh::shard_of;

use super::dataset::list_versions;
use super::log::reader::{SegmentFile, group_segments, list_segments, read_shard_with};
use super::log::record::{Change, LogRecord};
use super::log::segment::LOG_DIR;
use super::{LogPositions, PersistError, SessionRecord, ShardFileWriter, begin_version};

/// The state recovered at start-up, and what the caller needs to go on.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every session as it was at the crash, with its idle deadline as
    /// logged (absolute, wall-clock ms; 0 = none).
    pub records: Vec<SessionRecord>,
    /// The snapshot version recovery started from (None: an empty start).
    pub base: Option<String>,
    /// Log records applied on top of it.
    pub replayed: u64,
    /// Every log generation found (segments and the snapshot's), ascending.
    pub generations_seen: Vec<u64>,
    /// The generation the restarted server logs in: above every one seen.
    pub next_generation: u64,
    /// Whether any log segment existed.
    pub had_log: bool,
    /// Torn tails, repairs, passed-over generations: one line each.
    pub warnings: Vec<String>,
}

/// Recovers the state from the newest full snapshot of `snapshot_name`
/// under `root` and the change log in `<root>/log`. `repair`
/// (`--log-repair`) truncates a log at corruption before its tail instead
/// of failing. Blocks on the disk; for start-up, before any shard runs.
pub fn recover(root: &Path, snapshot_name: &str, repair: bool) -> Result<Recovery, PersistError> {
    let log_dir = root.join(LOG_DIR);
    let segments = list_segments(&log_dir)?;
    let mut rec = Recovery {
        had_log: !segments.is_empty(),
        ..Recovery::default()
    };
    let groups = group_segments(segments);
    let mut generations: BTreeSet<u64> = groups.keys().map(|(g, _)| *g).collect();
    let base = super::newest_recoverable(root, snapshot_name)?;
    let mut state = State::default();
    // (generation, position per shard) the replay starts after.
    let start = match &base {
        Some(version) => {
            rec.warnings.extend(
                version
                    .skipped
                    .iter()
                    .map(|s| format!("snapshot {snapshot_name}: passed over {s}")),
            );
            let log = version.log.clone().unwrap_or(LogPositions {
                generation: 0,
                positions: Vec::new(),
            });
            if let Some(newer) = generations.range(log.generation + 1..).next() {
                return Err(PersistError::log(
                    &log_dir,
                    None,
                    format!(
                        "generation {newer} of the log is newer than any snapshot it builds on (the newest full snapshot, {}, is of generation {}); restore the missing snapshot or move the log away",
                        version.version, log.generation
                    ),
                ));
            }
            for r in version.read_all()? {
                state.put(r);
            }
            rec.base = Some(version.version.clone());
            generations.insert(log.generation);
            Some(log)
        }
        None => match generations.last() {
            None => None,
            Some(&highest) => {
                if generations.len() > 1 {
                    // A generation's first record is written only after the
                    // checkpoint that begins it committed, and older
                    // generations are deleted only after that, so several
                    // generations with no full snapshot at all mean that
                    // snapshot is gone: a crash during a start-up checkpoint
                    // (the previous one's segments not yet deleted, this
                    // one's not yet begun) leaves a snapshot behind unless
                    // the dataset was removed or renamed. The highest
                    // generation is the only one that can be current.
                    rec.warnings.push(format!(
                        "change log: generations {generations:?} and no full snapshot of {snapshot_name}; replaying only generation {highest}"
                    ));
                }
                Some(LogPositions {
                    generation: highest,
                    positions: Vec::new(),
                })
            }
        },
    };
    if let Some(start) = start {
        let shards = shard_count(&groups, start.generation, &start, &log_dir)?;
        for shard in 0..shards {
            let Some(segs) = groups.get(&(start.generation, shard)) else {
                continue;
            };
            let after = start.positions.get(shard as usize).copied().unwrap_or(0);
            let replay = read_shard_with(segs, after, repair, &mut |r| {
                state.apply(r, shard as usize, shards as usize);
            })?;
            rec.warnings.extend(replay.warnings);
            rec.replayed += replay.applied;
        }
    }
    rec.next_generation = generations.last().map_or(1, |g| g + 1);
    rec.generations_seen = generations.into_iter().collect();
    rec.records = state.into_records();
    Ok(rec)
}

/// The shard count of `generation`, from its segment headers (the file
/// names' shard indexes when no header can be read), checked against the
/// snapshot's positions.
fn shard_count(
    groups: &std::collections::BTreeMap<(u64, u32), Vec<SegmentFile>>,
    generation: u64,
    start: &LogPositions,
    log_dir: &Path,
) -> Result<u32, PersistError> {
    let mut shards = None;
    let mut highest = 0;
    for ((g, shard), segs) in groups.range((generation, 0)..=(generation, u32::MAX)) {
        debug_assert_eq!(*g, generation);
        highest = highest.max(shard + 1);
        for s in segs {
            let mut head = [0u8; super::log::segment::SEGMENT_HEADER_LEN];
            let read = fs::File::open(&s.path).and_then(|mut f| {
                use std::io::Read;
                f.read_exact(&mut head)
            });
            if read.is_ok()
                && let Ok(h) = super::log::SegmentHeader::decode(&head)
            {
                if shards.is_some_and(|n| n != h.shards) {
                    return Err(PersistError::log(
                        &s.path,
                        None,
                        format!(
                            "the header says {} shards, other segments of generation {generation} say {}",
                            h.shards,
                            shards.unwrap_or(0)
                        ),
                    ));
                }
                shards = Some(h.shards);
            }
        }
    }
    let shards = shards.unwrap_or(highest).max(start.positions.len() as u32);
    if !start.positions.is_empty() && start.positions.len() as u32 != shards {
        return Err(PersistError::log(
            log_dir,
            None,
            format!(
                "generation {generation} was written by {shards} shards, its snapshot has {}",
                start.positions.len()
            ),
        ));
    }
    if highest > shards {
        return Err(PersistError::log(
            log_dir,
            None,
            format!(
                "generation {generation} has a segment of shard {} of {shards}",
                highest - 1
            ),
        ));
    }
    Ok(shards)
}

/// A session during replay: its record, and an index of its keys once it
/// has enough of them for a linear search to cost more than a map.
struct Live {
    record: SessionRecord,
    index: Option<HashMap<Box<str>, usize>>,
}

/// Keys up to this many are searched linearly.
const INDEX_FROM: usize = 16;

impl Live {
    fn position(&mut self, key: &str) -> Option<usize> {
        let keys = &self.record.keys;
        if keys.len() <= INDEX_FROM {
            return keys.iter().position(|(k, _)| &**k == key);
        }
        let index = self.index.get_or_insert_with(|| {
            keys.iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect()
        });
        index.get(key).copied()
    }

    fn set(&mut self, key: Box<str>, value: Box<[u8]>) {
        match self.position(&key) {
            Some(i) => self.record.keys[i].1 = value,
            None => {
                if let Some(index) = &mut self.index {
                    index.insert(key.clone(), self.record.keys.len());
                }
                self.record.keys.push((key, value));
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(i) = self.position(key) {
            self.record.keys.remove(i);
            if let Some(index) = &mut self.index {
                index.remove(key);
                for v in index.values_mut() {
                    if *v > i {
                        *v -= 1;
                    }
                }
            }
        }
    }

    fn clear(&mut self) {
        self.record.keys.clear();
        self.index = None;
    }
}

/// Sessions by token, in the order they first appeared (snapshot order,
/// then creation order), so recovery is deterministic.
#[derive(Default)]
struct State {
    slots: Vec<Option<Live>>,
    by_token: HashMap<Token, usize>,
}

impl State {
    fn put(&mut self, record: SessionRecord) {
        let live = Live {
            record,
            index: None,
        };
        match self.by_token.get(&live.record.tkn) {
            Some(&i) => self.slots[i] = Some(live),
            None => {
                self.by_token.insert(live.record.tkn, self.slots.len());
                self.slots.push(Some(live));
            }
        }
    }

    /// Applies one record of shard `shard`'s log. A record for a session
    /// that is not there (other than `Put`) is skipped: e.g. the end of a
    /// session that had expired before the snapshot began.
    fn apply(&mut self, r: LogRecord, shard: usize, shards: usize) {
        let change = match r.change {
            Change::Put(record) => return self.put(record),
            Change::EndAll => {
                for slot in &mut self.slots {
                    if slot
                        .as_ref()
                        .is_some_and(|l| shard_of(l.record.tkn, shards) == shard)
                    {
                        *slot = None;
                    }
                }
                self.by_token
                    .retain(|tkn, _| shard_of(*tkn, shards) != shard);
                return;
            }
            Change::End => {
                if let Some(i) = self.by_token.remove(&r.tkn) {
                    self.slots[i] = None;
                }
                return;
            }
            other => other,
        };
        let Some(live) = self
            .by_token
            .get(&r.tkn)
            .and_then(|&i| self.slots[i].as_mut())
        else {
            return;
        };
        match change {
            Change::Set {
                clear_first,
                version,
                keys,
            } => {
                if clear_first {
                    live.clear();
                }
                for (k, v) in keys {
                    live.set(k, v);
                }
                live.record.version = version;
            }
            Change::Remove { version, keys } => {
                for k in &keys {
                    live.remove(k);
                }
                live.record.version = version;
            }
            Change::Clear { version } => {
                live.clear();
                live.record.version = version;
            }
            Change::KeysExpired {
                version,
                deadline_unix_ms,
            } => {
                live.clear();
                live.record.version = version;
                live.record.idle_deadline_unix_ms = deadline_unix_ms;
            }
            Change::Deadline { deadline_unix_ms } => {
                live.record.idle_deadline_unix_ms = deadline_unix_ms;
            }
            Change::Put(_) | Change::End | Change::EndAll => {}
        }
    }

    fn into_records(self) -> Vec<SessionRecord> {
        self.slots.into_iter().flatten().map(|l| l.record).collect()
    }
}

/// Writes a complete version of dataset `name` holding `records` (routed to
/// `shards` shard files by token) and `log` as its log positions, and waits
/// for it: the start-up checkpoint, right after [`recover`] and before any
/// record of `log.generation` exists. Returns the version's name.
pub fn write_checkpoint(
    root: &Path,
    name: &str,
    shards: usize,
    records: &[SessionRecord],
    log: LogPositions,
) -> Result<String, PersistError> {
    let version = begin_version(root, name)?;
    if shards == 0 || log.positions.len() != shards {
        let e = PersistError::invalid(
            &version.path,
            format!(
                "{} log positions for a checkpoint of {shards} shards",
                log.positions.len()
            ),
        );
        let _ = version.discard();
        return Err(e);
    }
    let mut by_shard: Vec<Vec<&SessionRecord>> = (0..shards).map(|_| Vec::new()).collect();
    for r in records {
        by_shard[shard_of(r.tkn, shards)].push(r);
    }
    let (tx, rx) = mpsc::channel();
    let mut started = 0;
    let mut failure = None;
    for (shard, records) in by_shard.into_iter().enumerate() {
        let tx = tx.clone();
        let writer = match ShardFileWriter::start(
            &version.path,
            shard,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        ) {
            Ok(w) => w,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        started += 1;
        let mut chunk = Vec::with_capacity(256 * 1024);
        let (mut n, mut keys) = (0, 0);
        for r in &records {
            r.encode(&mut chunk);
            n += 1;
            keys += r.keys.len() as u64;
            if chunk.len() >= 256 * 1024 {
                writer.write_chunk(std::mem::take(&mut chunk), n, keys);
                (n, keys) = (0, 0);
            }
        }
        if !chunk.is_empty() {
            writer.write_chunk(chunk, n, keys);
        }
        writer.finish();
    }
    drop(tx);
    let mut files = Vec::with_capacity(started);
    for _ in 0..started {
        match rx.recv() {
            Ok(Ok(summary)) => files.push(summary),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => {
                failure = failure.or(Some(PersistError::invalid(
                    &version.path,
                    "a snapshot writer ended without a word",
                )));
                break;
            }
        }
    }
    if let Some(e) = failure {
        let _ = version.discard();
        return Err(e);
    }
    files.sort_by_key(|f| f.shard);
    version.commit(&files, Some(&log))?;
    Ok(version.version.clone())
}

/// Removes every segment of a generation before `generation` (made obsolete
/// by the checkpoint that began it). Returns how many.
pub fn delete_generations_before(log_dir: &Path, generation: u64) -> Result<usize, PersistError> {
    let doomed: Vec<SegmentFile> = list_segments(log_dir)?
        .into_iter()
        .filter(|s| s.generation < generation)
        .collect();
    remove_segments(log_dir, &doomed)
}

/// Deletes the segments a snapshot at `positions` has made unnecessary:
/// those of older generations, and in its generation each segment wholly at
/// or before its shard's position (the next segment of the shard starts at
/// or before position + 1). The newest segment of a shard is never deleted.
/// Returns how many went.
pub fn compact(log_dir: &Path, positions: &LogPositions) -> Result<usize, PersistError> {
    let mut doomed = Vec::new();
    for ((generation, shard), segs) in group_segments(list_segments(log_dir)?) {
        if generation < positions.generation {
            doomed.extend(segs);
        } else if generation == positions.generation
            && let Some(&p) = positions.positions.get(shard as usize)
        {
            for pair in segs.windows(2) {
                if pair[1].first_seq <= p.saturating_add(1) {
                    doomed.push(pair[0].clone());
                }
            }
        }
    }
    remove_segments(log_dir, &doomed)
}

fn remove_segments(log_dir: &Path, doomed: &[SegmentFile]) -> Result<usize, PersistError> {
    for s in doomed {
        fs::remove_file(&s.path).map_err(|e| PersistError::io(&s.path, "removing", e))?;
    }
    if !doomed.is_empty() {
        super::log::writer::sync_dir(log_dir)
            .map_err(|reason| PersistError::log(log_dir, None, reason))?;
    }
    Ok(doomed.len())
}

/// After a successful save of dataset `name`: deletes complete versions
/// older than the `keep` newest complete ones, and incomplete versions that
/// sort before the newest complete one unless `in_progress(version)` says a
/// save is still writing them. Never deletes the newest complete version
/// nor the newest recoverable one (with log positions: recovery needs it).
/// Returns the names of the versions deleted, oldest first.
pub fn retain_versions(
    root: &Path,
    name: &str,
    keep: usize,
    in_progress: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, PersistError> {
    let versions = list_versions(root, name)?;
    let complete: Vec<usize> = (0..versions.len())
        .filter(|&i| versions[i].2.is_some())
        .collect();
    let Some(&newest_complete) = complete.last() else {
        return Ok(Vec::new());
    };
    let newest_recoverable = (0..versions.len())
        .rev()
        .find(|&i| versions[i].2 == Some(true));
    let kept: BTreeSet<usize> = complete
        .iter()
        .rev()
        .take(keep.max(1))
        .copied()
        .chain(newest_recoverable)
        .collect();
    let mut deleted = Vec::new();
    for (i, (version, path, state)) in versions.iter().enumerate() {
        let doomed = match state {
            Some(_) => !kept.contains(&i),
            None => i < newest_complete && !in_progress(version),
        };
        if doomed {
            fs::remove_dir_all(path)
                .map_err(|e| PersistError::io(path, "removing an old version", e))?;
            deleted.push(version.clone());
        }
    }
    if !deleted.is_empty() {
        let dir = root.join(name);
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| PersistError::io(&dir, "fsyncing the directory", e))?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::persist::RecordHead;
    use crate::persist::log::reader::list_segments;
    use crate::persist::log::record::{ChangeBuffer, decode};
    use crate::persist::log::segment::SEGMENT_HEADER_LEN;
    use crate::persist::log::{FsyncPolicy, LogWriter, LogWriterConfig};
    use crate::persist::test_support::TempDir;

    const NAME: &str = "auto";

    fn session(tkn: Token, keys: &[(&str, &str)]) -> SessionRecord {
        SessionRecord {
            tkn,
            name: None,
            shared: false,
            expiry: None,
            owner: None,
            created_unix_ms: 0,
            version: 1,
            idle_deadline_unix_ms: 1_800_000_000_000,
            keys: keys
                .iter()
                .map(|(k, v)| (Box::from(*k), Box::from(v.as_bytes())))
                .collect(),
        }
    }

    fn put(buf: &mut ChangeBuffer, r: &SessionRecord) {
        let head = RecordHead {
            tkn: r.tkn,
            name: r.name.as_deref(),
            shared: r.shared,
            expiry: r.expiry,
            owner: r.owner.as_deref(),
            created_unix_ms: r.created_unix_ms,
            version: r.version,
            idle_deadline_unix_ms: r.idle_deadline_unix_ms,
        };
        buf.put(&head, r.keys.iter().map(|(k, v)| (&**k, &**v)));
    }

    /// A token that lands on `shard` of `shards`, the `n`th such.
    fn token_on(shard: usize, shards: usize, n: usize) -> Token {
        (1000..)
            .filter(|t| shard_of(*t, shards) == shard)
            .nth(n)
            .unwrap()
    }

    /// One shard's log, written by a real [`LogWriter`]: each `turn` is one
    /// batch (a new segment once `segment_bytes` are in the current one).
    struct TestLog {
        writer: Option<LogWriter>,
        buf: ChangeBuffer,
    }

    impl TestLog {
        fn new(root: &Path, generation: u64, shard: u32, shards: u32, first_seq: u64) -> TestLog {
            Self::with_segments(root, generation, shard, shards, first_seq, 1 << 20)
        }

        fn with_segments(
            root: &Path,
            generation: u64,
            shard: u32,
            shards: u32,
            first_seq: u64,
            segment_bytes: u64,
        ) -> TestLog {
            let dir = root.join(LOG_DIR);
            fs::create_dir_all(&dir).unwrap();
            let writer = LogWriter::start(
                LogWriterConfig {
                    dir,
                    generation,
                    shard,
                    shards,
                    policy: FsyncPolicy::No,
                    segment_bytes,
                },
                Box::new(|r| {
                    if let crate::persist::log::LogReport::Failed(e) = r {
                        panic!("{e}");
                    }
                }),
            )
            .unwrap();
            TestLog {
                writer: Some(writer),
                buf: ChangeBuffer::new(first_seq),
            }
        }

        fn turn(&mut self, f: impl FnOnce(&mut ChangeBuffer)) -> &mut Self {
            f(&mut self.buf);
            if let Some(batch) = self.buf.take(None) {
                self.writer.as_ref().unwrap().append(batch);
            }
            self
        }

        /// Flushes and stops the writer.
        fn close(&mut self) {
            self.writer = None;
        }
    }

    fn segments_of(root: &Path) -> Vec<PathBuf> {
        list_segments(&root.join(LOG_DIR))
            .unwrap()
            .into_iter()
            .map(|s| s.path)
            .collect()
    }

    fn by_token(records: &[SessionRecord]) -> HashMap<Token, SessionRecord> {
        records.iter().map(|r| (r.tkn, r.clone())).collect()
    }

    #[test]
    fn replay_applies_every_kind() {
        let root = TempDir::new("recover-kinds");
        let r = root.path();
        let (a, b, c) = (token_on(0, 2, 0), token_on(0, 2, 1), token_on(0, 2, 2));
        let (d, e) = (token_on(1, 2, 0), token_on(1, 2, 1));
        let mut log0 = TestLog::new(r, 1, 0, 2, 1);
        log0.turn(|buf| {
            put(buf, &session(a, &[("x", "1"), ("y", "2")]));
            put(buf, &session(b, &[("k", "1")]));
            put(buf, &session(c, &[("k", "1")]));
            // Unknown token: skipped.
            buf.set(99, false, 5, [("z", b"1".as_slice())].into_iter());
        })
        .turn(|buf| {
            buf.set(
                a,
                false,
                2,
                [("z", b"3".as_slice()), ("x", b"9".as_slice())].into_iter(),
            );
            buf.remove(a, 3, ["y", "nope"].into_iter());
            buf.set(b, true, 2, [("n", b"\"s\"".as_slice())].into_iter());
            buf.clear(c, 2);
            buf.deadline(a, 1_900_000_000_000);
            buf.keys_expired(b, 3, 1_950_000_000_000);
        });
        log0.close();
        let mut log1 = TestLog::new(r, 1, 1, 2, 1);
        log1.turn(|buf| {
            put(buf, &session(d, &[("k", "1")]));
            put(buf, &session(e, &[("k", "1")]));
            buf.end_session(d);
            // Replaces e whole.
            put(buf, &session(e, &[("new", "2")]));
        });
        log1.close();
        let rec = recover(r, NAME, false).unwrap();
        assert_eq!(rec.base, None);
        assert_eq!(rec.replayed, 14);
        assert_eq!(rec.generations_seen, [1]);
        assert_eq!(rec.next_generation, 2);
        assert!(rec.had_log && rec.warnings.is_empty(), "{:?}", rec.warnings);
        let got = by_token(&rec.records);
        assert_eq!(got.len(), 4);
        let mut want_a = session(a, &[("x", "9"), ("z", "3")]);
        want_a.version = 3;
        want_a.idle_deadline_unix_ms = 1_900_000_000_000;
        assert_eq!(got[&a], want_a);
        let mut want_b = session(b, &[]);
        want_b.version = 3;
        want_b.idle_deadline_unix_ms = 1_950_000_000_000;
        assert_eq!(got[&b], want_b);
        let mut want_c = session(c, &[]);
        want_c.version = 2;
        assert_eq!(got[&c], want_c);
        assert_eq!(got[&e], session(e, &[("new", "2")]));

        // END_ALL in shard 0's log ends shard 0's sessions only.
        let mut log0 = TestLog::new(r, 1, 0, 2, 11);
        log0.turn(|buf| buf.end_all());
        log0.close();
        let rec = recover(r, NAME, false).unwrap();
        assert_eq!(rec.replayed, 15);
        assert_eq!(by_token(&rec.records).keys().collect::<Vec<_>>(), [&e]);
    }

    #[test]
    fn many_keys_keep_their_order_through_sets_and_removals() {
        let root = TempDir::new("recover-many-keys");
        let r = root.path();
        let names: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        let mut log = TestLog::new(r, 1, 0, 1, 1);
        log.turn(|buf| {
            let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "0")).collect();
            put(buf, &session(7, &pairs));
            buf.remove(7, 2, ["k3", "k20"].into_iter());
            buf.set(
                7,
                false,
                3,
                [("k21", b"1".as_slice()), ("k3", b"2".as_slice())].into_iter(),
            );
        });
        log.close();
        let rec = recover(r, NAME, false).unwrap();
        let keys: Vec<(String, String)> = rec.records[0]
            .keys
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8(v.to_vec()).unwrap()))
            .collect();
        let mut want: Vec<(String, String)> = names
            .iter()
            .filter(|n| *n != "k3" && *n != "k20")
            .map(|n| (n.clone(), if n == "k21" { "1" } else { "0" }.to_string()))
            .collect();
        want.push(("k3".into(), "2".into()));
        assert_eq!(keys, want);
    }

    #[test]
    fn a_snapshot_and_the_log_after_its_positions() {
        let root = TempDir::new("recover-snapshot");
        let r = root.path();
        let (a, b) = (token_on(0, 2, 0), token_on(1, 2, 0));
        // Shard 0's records 1-3 are in the snapshot, 4-5 are not; shard 1's
        // record 1 is in it, 2 is not.
        let mut log0 = TestLog::new(r, 1, 0, 2, 1);
        log0.turn(|buf| {
            put(buf, &session(a, &[("k", "old")]));
            buf.set(a, false, 2, [("k", b"snap".as_slice())].into_iter());
            buf.deadline(a, 5);
        })
        .turn(|buf| {
            buf.set(a, false, 3, [("j", b"log".as_slice())].into_iter());
            buf.deadline(a, 1_990_000_000_000);
        });
        log0.close();
        let mut log1 = TestLog::new(r, 1, 1, 2, 1);
        log1.turn(|buf| put(buf, &session(b, &[("k", "1")])))
            .turn(|buf| buf.end_session(b));
        log1.close();
        let mut snap_a = session(a, &[("k", "snap")]);
        snap_a.version = 2;
        snap_a.idle_deadline_unix_ms = 5;
        let version = write_checkpoint(
            r,
            NAME,
            2,
            &[snap_a.clone(), session(b, &[("k", "1")])],
            LogPositions {
                generation: 1,
                positions: vec![3, 1],
            },
        )
        .unwrap();
        let rec = recover(r, NAME, false).unwrap();
        assert_eq!(rec.base.as_deref(), Some(version.as_str()));
        assert_eq!(rec.replayed, 3);
        assert_eq!(rec.next_generation, 2);
        let mut want = snap_a;
        want.keys.push(("j".into(), b"log".as_slice().into()));
        want.version = 3;
        want.idle_deadline_unix_ms = 1_990_000_000_000;
        assert_eq!(rec.records, [want]);

        // A checkpoint of the recovered state, positions 0 in generation 2:
        // the next recovery starts from it, generation 1 is obsolete.
        write_checkpoint(
            r,
            NAME,
            2,
            &rec.records,
            LogPositions {
                generation: 2,
                positions: vec![0, 0],
            },
        )
        .unwrap();
        let again = recover(r, NAME, false).unwrap();
        assert_eq!((again.replayed, again.next_generation), (0, 3));
        assert_eq!(again.records, rec.records);
        assert_eq!(delete_generations_before(&r.join(LOG_DIR), 2).unwrap(), 2);
        assert!(segments_of(r).is_empty());
        assert_eq!(recover(r, NAME, false).unwrap().records, rec.records);
    }

    /// Shard 0 of 1: a segment of records 1-3, then one of 4-6; returns the
    /// second segment and where its last record starts.
    fn two_segments(r: &Path) -> (PathBuf, usize) {
        let mut log = TestLog::with_segments(r, 1, 0, 1, 1, 1);
        log.turn(|buf| {
            for t in 1..=3 {
                put(buf, &session(t, &[("k", "1")]));
            }
        })
        .turn(|buf| {
            for t in 4..=6 {
                put(buf, &session(t, &[("k", "1")]));
            }
        });
        log.close();
        let segs = segments_of(r);
        assert_eq!(segs.len(), 2);
        let bytes = fs::read(&segs[1]).unwrap();
        let mut at = SEGMENT_HEADER_LEN;
        let mut last = at;
        while at < bytes.len() {
            last = at;
            at += decode(&bytes[at..]).unwrap().1;
        }
        (segs[1].clone(), last)
    }

    #[test]
    fn a_cut_at_every_offset_of_the_last_record_recovers_everything_before_it() {
        let root = TempDir::new("recover-torn");
        let r = root.path();
        let (path, last) = two_segments(r);
        let whole = fs::read(&path).unwrap();
        for cut in last..whole.len() {
            fs::write(&path, &whole[..cut]).unwrap();
            let rec = recover(r, NAME, false).unwrap();
            let mut tokens: Vec<Token> = rec.records.iter().map(|s| s.tkn).collect();
            tokens.sort_unstable();
            assert_eq!(tokens, [1, 2, 3, 4, 5], "cut at {cut}");
            assert_eq!(rec.replayed, 5);
            assert_eq!(
                rec.warnings.len(),
                usize::from(cut > last),
                "{:?}",
                rec.warnings
            );
            if cut > last {
                assert!(rec.warnings[0].contains("torn tail"), "{:?}", rec.warnings);
            }
            assert_eq!(fs::metadata(&path).unwrap().len(), last as u64);
        }
    }

    #[test]
    fn a_flipped_byte_in_the_middle_needs_log_repair() {
        let root = TempDir::new("recover-corrupt");
        let r = root.path();
        let (second, _) = two_segments(r);
        let first = segments_of(r)[0].clone();
        let mut bytes = fs::read(&first).unwrap();
        let mid = bytes.len() - 10;
        bytes[mid] ^= 0x04;
        fs::write(&first, &bytes).unwrap();
        let err = recover(r, NAME, false).unwrap_err().to_string();
        assert!(err.contains("--log-repair"), "{err}");
        assert!(
            err.contains(&*first.file_name().unwrap().to_string_lossy()),
            "{err}"
        );
        assert!(err.contains("record 3"), "{err}");
        // Nothing was changed by the refusal.
        assert_eq!(fs::read(&first).unwrap(), bytes);
        assert!(second.exists());

        let rec = recover(r, NAME, true).unwrap();
        let mut tokens: Vec<Token> = rec.records.iter().map(|s| s.tkn).collect();
        tokens.sort_unstable();
        assert_eq!(tokens, [1, 2]);
        assert!(
            rec.warnings[0].contains("--log-repair"),
            "{:?}",
            rec.warnings
        );
        assert!(!second.exists());
        assert!(fs::metadata(&first).unwrap().len() < bytes.len() as u64);
        // Repaired: the plain start works now.
        assert_eq!(recover(r, NAME, false).unwrap().records.len(), 2);
    }

    #[test]
    fn a_gap_in_sequence_numbers_is_an_error() {
        let root = TempDir::new("recover-gap");
        let r = root.path();
        let mut log = TestLog::new(r, 1, 0, 1, 1);
        log.turn(|buf| put(buf, &session(1, &[])));
        log.close();
        let mut log = TestLog::new(r, 1, 0, 1, 3);
        log.turn(|buf| put(buf, &session(3, &[])));
        log.close();
        let err = recover(r, NAME, false).unwrap_err().to_string();
        assert!(err.contains("gap"), "{err}");
    }

    #[test]
    fn generation_rules() {
        // A log newer than every snapshot is refused.
        let root = TempDir::new("recover-gen-newer");
        let r = root.path();
        write_checkpoint(
            r,
            NAME,
            1,
            &[],
            LogPositions {
                generation: 1,
                positions: vec![0],
            },
        )
        .unwrap();
        let mut log = TestLog::new(r, 2, 0, 1, 1);
        log.turn(|buf| put(buf, &session(1, &[])));
        log.close();
        let err = recover(r, NAME, false).unwrap_err().to_string();
        assert!(err.contains("newer than any snapshot"), "{err}");

        // No snapshot, several generations: the highest, with a warning.
        let root = TempDir::new("recover-gen-several");
        let r = root.path();
        let mut log = TestLog::new(r, 1, 0, 1, 1);
        log.turn(|buf| put(buf, &session(1, &[])));
        log.close();
        let mut log = TestLog::new(r, 3, 0, 1, 1);
        log.turn(|buf| put(buf, &session(3, &[])));
        log.close();
        let rec = recover(r, NAME, false).unwrap();
        assert_eq!(rec.records, [session(3, &[])]);
        assert_eq!(rec.generations_seen, [1, 3]);
        assert_eq!(rec.next_generation, 4);
        assert!(
            rec.warnings[0].contains("only generation 3"),
            "{:?}",
            rec.warnings
        );

        // No snapshot and a log that does not start at 1.
        let root = TempDir::new("recover-gen-start");
        let r = root.path();
        let mut log = TestLog::new(r, 1, 0, 1, 5);
        log.turn(|buf| put(buf, &session(5, &[])));
        log.close();
        let err = recover(r, NAME, false).unwrap_err().to_string();
        assert!(
            err.contains("no snapshot covers the records before 5"),
            "{err}"
        );

        // Nothing at all.
        let root = TempDir::new("recover-gen-empty");
        let rec = recover(root.path(), NAME, false).unwrap();
        assert!(rec.records.is_empty() && !rec.had_log && rec.base.is_none());
        assert_eq!(rec.next_generation, 1);

        // The snapshot's own generation counts even with no segments left.
        write_checkpoint(
            root.path(),
            NAME,
            2,
            &[session(1, &[]), session(2, &[])],
            LogPositions {
                generation: 7,
                positions: vec![0, 0],
            },
        )
        .unwrap();
        let rec = recover(root.path(), NAME, false).unwrap();
        assert_eq!((rec.next_generation, rec.records.len()), (8, 2));
    }

    #[test]
    fn compaction_deletes_exactly_the_wholly_covered_segments() {
        let root = TempDir::new("compact");
        let r = root.path();
        let dir = r.join(LOG_DIR);
        // Generation 1 (obsolete), generation 2: shard 0 segments at 1, 4,
        // 7; shard 1 segments at 1, 3.
        let mut old = TestLog::new(r, 1, 0, 2, 1);
        old.turn(|buf| buf.end_session(token_on(0, 2, 0)));
        old.close();
        let mut log0 = TestLog::with_segments(r, 2, 0, 2, 1, 1);
        for first in [1, 4, 7] {
            log0.turn(|buf| {
                for i in 0..3 {
                    buf.end_session(token_on(0, 2, first + i));
                }
            });
        }
        log0.close();
        let mut log1 = TestLog::with_segments(r, 2, 1, 2, 1, 1);
        for _ in 0..2 {
            log1.turn(|buf| {
                for i in 0..2 {
                    buf.end_session(token_on(1, 2, i));
                }
            });
        }
        log1.close();
        let firsts = |dir: &Path| -> Vec<(u64, u32, u64)> {
            list_segments(dir)
                .unwrap()
                .into_iter()
                .map(|s| (s.generation, s.shard, s.first_seq))
                .collect()
        };
        assert_eq!(
            firsts(&dir),
            [
                (1, 0, 1),
                (2, 0, 1),
                (2, 0, 4),
                (2, 0, 7),
                (2, 1, 1),
                (2, 1, 3)
            ]
        );
        // Shard 0 at 2: no segment is wholly before 3. Shard 1 at 2: the
        // first (records 1-2) is.
        let n = compact(
            &dir,
            &LogPositions {
                generation: 2,
                positions: vec![2, 2],
            },
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(firsts(&dir), [(2, 0, 1), (2, 0, 4), (2, 0, 7), (2, 1, 3)]);
        // Shard 0 at 6: segments 1 and 4; shard 1 at 100: never its newest.
        let n = compact(
            &dir,
            &LogPositions {
                generation: 2,
                positions: vec![6, 100],
            },
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(firsts(&dir), [(2, 0, 7), (2, 1, 3)]);
        // The rest still replays after those positions.
        write_checkpoint(
            r,
            NAME,
            2,
            &[],
            LogPositions {
                generation: 2,
                positions: vec![6, 4],
            },
        )
        .unwrap();
        assert_eq!(recover(r, NAME, false).unwrap().replayed, 3);
    }

    #[test]
    fn retention_keeps_n_complete_versions_and_drops_leftovers() {
        let root = TempDir::new("retain");
        let r = root.path();
        let full = |generation| {
            write_checkpoint(
                r,
                NAME,
                1,
                &[session(generation, &[])],
                LogPositions {
                    generation,
                    positions: vec![0],
                },
            )
            .unwrap()
        };
        let partial = || begin_version(r, NAME).unwrap().version;
        let v1 = full(1);
        let p1 = partial();
        let v2 = full(2);
        let busy = partial();
        let v3 = full(3);
        let v4 = full(4);
        let after = partial();
        let in_progress = |v: &str| v == busy;
        let deleted = retain_versions(r, NAME, 2, &in_progress).unwrap();
        assert_eq!(deleted, [v1.clone(), p1, v2]);
        let left: Vec<String> = list_versions(r, NAME)
            .unwrap()
            .into_iter()
            .map(|v| v.0)
            .collect();
        assert_eq!(left, [busy.clone(), v3.clone(), v4.clone(), after.clone()]);

        // Keep 1, but a newer save of listed tokens (no log positions) does
        // not push out the newest recoverable one.
        let listed = {
            let dir = begin_version(r, NAME).unwrap();
            let (tx, rx) = mpsc::channel();
            let w = ShardFileWriter::start(
                &dir.path,
                0,
                Box::new(move |s| {
                    let _ = tx.send(s);
                }),
            )
            .unwrap();
            w.finish();
            dir.commit(&[rx.recv().unwrap().unwrap()], None).unwrap();
            dir.version
        };
        let deleted = retain_versions(r, NAME, 1, &|_| false).unwrap();
        // The partial `after` sorts before the newest complete one now.
        assert_eq!(deleted, [busy, v3, after]);
        let left: Vec<String> = list_versions(r, NAME)
            .unwrap()
            .into_iter()
            .map(|v| v.0)
            .collect();
        assert_eq!(left, [v4.clone(), listed]);
        assert_eq!(
            crate::persist::newest_recoverable(r, NAME)
                .unwrap()
                .unwrap()
                .version,
            v4
        );
        // Nothing saved: nothing to do.
        assert!(
            retain_versions(r, "none", 1, &|_| false)
                .unwrap()
                .is_empty()
        );
    }
}
