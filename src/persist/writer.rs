//! One shard's data file, written on a background thread so the shard's event
//! loop never waits for the disk.
//!
//! The shard encodes records into chunks between its event-loop turns and hands
//! them over with [`ShardFileWriter::write_chunk`]; the writer thread appends
//! them, keeps the running CRC32 and counts, and on [`ShardFileWriter::finish`]
//! writes the footer and fsyncs. It owns only its file: the version directory's
//! fsync and the metadata are [`super::VersionDir::commit`]'s job.
//!
//! The queue between them is bounded ([`QUEUE_LIMIT`] bytes), so a save
//! waits for the disk instead of holding its encoded snapshot in memory. The
//! shard never blocks on it: [`ShardFileWriter::try_write_chunk`] hands a
//! chunk back when the queue is full, and the thread calls `on_room` once
//! there is room again. The thread runs in the idle scheduling class: on a
//! core it shares with a busy shard it takes only what the shard leaves.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use super::PersistError;
use super::format::{FOOTER_LEN, HEADER_LEN, footer_without_crc, header};

/// What a finished shard file holds; one entry of the version's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFileSummary {
    /// `shard-<shard>.ndb`, relative to the version directory.
    pub file_name: String,
    /// The index of the shard that wrote it (also in the file header).
    pub shard: usize,
    /// Records (sessions) in the file.
    pub sessions: u64,
    /// Keys over all its records.
    pub keys: u64,
    /// File size, header and footer included.
    pub bytes: u64,
    /// The CRC32 stored in the footer (of every byte before it).
    pub crc32: u32,
}

/// Called on the writer thread, once, with the finished file or the failure.
pub type OnDone = Box<dyn FnOnce(Result<ShardFileSummary, PersistError>) + Send>;

/// Called on the writer thread when a full queue has room again.
pub type OnRoom = Box<dyn Fn() + Send>;

/// Bytes of chunks queued and not yet written past which the queue is full:
/// a few hundred thousand sessions' worth at most, in memory at once.
pub const QUEUE_LIMIT: usize = 4 << 20;

/// The file name a shard's data file has inside a version directory.
pub fn shard_file_name(shard: usize) -> String {
    format!("shard-{shard}.ndb")
}

enum Msg {
    Chunk {
        bytes: Vec<u8>,
        records: u64,
        keys: u64,
    },
    Finish,
}

/// Flags the shard and its writer thread share.
#[derive(Default)]
struct Flags {
    /// Set by `abort`: the thread stops at the next chunk instead of writing
    /// the backlog first.
    abort: AtomicBool,
    /// Set by the thread once it failed (and has called `on_done`): further
    /// chunks are discarded, so the shard may stop encoding.
    failed: AtomicBool,
    /// Bytes queued and not yet written; full at [`QUEUE_LIMIT`].
    queued: AtomicUsize,
    /// A blocking [`ShardFileWriter::write_chunk`] waits here for room.
    room: Condvar,
    room_lock: Mutex<()>,
}

impl Flags {
    fn has_room(&self) -> bool {
        self.queued.load(Ordering::Acquire) < QUEUE_LIMIT || self.failed.load(Ordering::Acquire)
    }
}

/// Handle to a shard file being written. Dropping it without [`finish`]
/// (`ShardFileWriter::finish`) is the same as [`abort`](ShardFileWriter::abort).
pub struct ShardFileWriter {
    tx: Sender<Msg>,
    flags: Arc<Flags>,
    path: PathBuf,
}

impl ShardFileWriter {
    /// Creates `<version_dir>/shard-<shard>.ndb` (exclusive create, so an
    /// existing file is never overwritten), writes the header and starts the
    /// writer thread `snapshot-writer-<shard>`.
    ///
    /// `on_done` is called on the writer thread exactly once: after the footer
    /// is written and the file fsynced, or as soon as writing fails (the partial
    /// file is then removed and later chunks are discarded), or on abort. If
    /// `start` itself returns an error, `on_done` is dropped uncalled.
    pub fn start(
        version_dir: &Path,
        shard: usize,
        on_done: OnDone,
    ) -> Result<ShardFileWriter, PersistError> {
        Self::start_with_room(version_dir, shard, on_done, Box::new(|| {}))
    }

    /// [`start`](Self::start), and `on_room` is called (on the writer
    /// thread) whenever a full queue has room again: a shard that stopped
    /// encoding because [`try_write_chunk`](Self::try_write_chunk) handed a
    /// chunk back may go on.
    pub fn start_with_room(
        version_dir: &Path,
        shard: usize,
        on_done: OnDone,
        on_room: OnRoom,
    ) -> Result<ShardFileWriter, PersistError> {
        let (writer, job, rx) = Self::open(version_dir, shard)?;
        let spawned = thread::Builder::new()
            .name(format!("snapshot-writer-{shard}"))
            .spawn(move || {
                lowest_priority();
                job.run(rx, on_done, on_room)
            });
        if let Err(e) = spawned {
            let _ = fs::remove_file(&writer.path);
            return Err(PersistError::io(
                &writer.path,
                "starting the writer thread for",
                e,
            ));
        }
        Ok(writer)
    }

    /// Creates the file with its header: the handle, and the thread's job.
    fn open(
        version_dir: &Path,
        shard: usize,
    ) -> Result<(ShardFileWriter, Job, Receiver<Msg>), PersistError> {
        let file_name = shard_file_name(shard);
        let path = version_dir.join(&file_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| PersistError::io(&path, "creating", e))?;
        let mut out = BufWriter::with_capacity(256 * 1024, file);
        let head = header(shard);
        if let Err(e) = out.write_all(&head) {
            drop(out);
            let _ = fs::remove_file(&path);
            return Err(PersistError::io(&path, "writing", e));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        let (tx, rx) = mpsc::channel();
        let flags = Arc::new(Flags::default());
        let job = Job {
            out,
            path: path.clone(),
            crc,
            summary: ShardFileSummary {
                file_name,
                shard,
                sessions: 0,
                keys: 0,
                bytes: HEADER_LEN as u64,
                crc32: 0,
            },
            flags: Arc::clone(&flags),
            unsynced: 0,
        };
        Ok((ShardFileWriter { tx, flags, path }, job, rx))
    }

    /// Queues a chunk of encoded records (concatenated `encode_record` outputs)
    /// with how many records and keys it holds, waiting while the queue is
    /// full: for threads that may block (never an event loop). After a
    /// failure the chunk is discarded (see [`failed`](Self::failed)).
    pub fn write_chunk(&self, bytes: Vec<u8>, records: u64, keys: u64) {
        let flags = &*self.flags;
        if !flags.has_room() {
            let mut guard = flags.room_lock.lock().unwrap_or_else(|e| e.into_inner());
            while !flags.has_room() {
                guard = flags.room.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.send(bytes, records, keys);
    }

    /// Queues a chunk if the queue has room (one chunk may take it past the
    /// limit); otherwise hands it back untouched. Never blocks. Once the
    /// writer has failed, every chunk is taken and discarded.
    pub fn try_write_chunk(&self, bytes: Vec<u8>, records: u64, keys: u64) -> Result<(), Vec<u8>> {
        if !self.flags.has_room() {
            return Err(bytes);
        }
        self.send(bytes, records, keys);
        Ok(())
    }

    /// Whether [`try_write_chunk`](Self::try_write_chunk) would take a chunk now.
    pub fn has_room(&self) -> bool {
        self.flags.has_room()
    }

    fn send(&self, bytes: Vec<u8>, records: u64, keys: u64) {
        self.flags.queued.fetch_add(bytes.len(), Ordering::AcqRel);
        // A send error means the thread has already failed and reported it.
        let _ = self.tx.send(Msg::Chunk {
            bytes,
            records,
            keys,
        });
    }

    /// True once the writer has failed and reported it through `on_done`: the
    /// shard can stop encoding for this file.
    pub fn failed(&self) -> bool {
        self.flags.failed.load(Ordering::Acquire)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// No more chunks: the thread writes the queued chunks, the footer (counts
    /// and the CRC32 of every byte before it), fsyncs, closes the file and
    /// calls `on_done`. Returns at once.
    pub fn finish(self) {
        let _ = self.tx.send(Msg::Finish);
    }

    /// Abandons the file: the thread stops without writing the backlog, removes
    /// the partial file and calls `on_done` with [`PersistError::Aborted`]
    /// (unless it had already failed). Returns at once.
    pub fn abort(self) {
        self.flags.abort.store(true, Ordering::Release);
        // Dropping `self` disconnects the channel, which the thread also reads
        // as an abort once the queue is empty.
    }
}

/// Puts the calling thread in the idle scheduling class (nice 19 where
/// that is refused), best effort: on a core it shares with a shard, any
/// request the shard wakes for runs first, and the file is written in the
/// time the shard leaves (a tiny share at worst, so a save always ends).
fn lowest_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration;
    // pid 0 and gettid name the calling thread only.
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        }
    }
}

/// The writer thread's state.
struct Job {
    out: BufWriter<File>,
    path: PathBuf,
    crc: crc32fast::Hasher,
    summary: ShardFileSummary,
    flags: Arc<Flags>,
    /// Bytes written since the file was last synced (see [`SYNC_EVERY`]).
    unsynced: usize,
}

/// The writer syncs its file every this many bytes (Redis's
/// `rdb-save-incremental-fsync`, 4 MB too): the kernel writes the file
/// back a little at a time, on this idle-class thread, instead of all at
/// once at the final fsync or in a burst of writeback that takes the CPU
/// from the shard.
const SYNC_EVERY: usize = 4 << 20;

impl Job {
    fn run(mut self, rx: Receiver<Msg>, on_done: OnDone, on_room: OnRoom) {
        let result = self.write_all(&rx, &on_room);
        let result = match result {
            Ok(()) => Ok(self.summary),
            Err(e) => {
                self.flags.failed.store(true, Ordering::Release);
                // Whoever waits for room may go on (to a discarded chunk).
                self.room_again(&on_room);
                // Close before removing; a failure to remove is reported
                // alongside, since the file then stays behind.
                drop(self.out);
                match fs::remove_file(&self.path) {
                    Ok(()) => Err(e),
                    Err(rm) if rm.kind() == std::io::ErrorKind::NotFound => Err(e),
                    Err(rm) => Err(PersistError::io(
                        &self.path,
                        "removing the partial file (after another failure)",
                        rm,
                    )),
                }
            }
        };
        // Drop the receiver first so later sends fail fast instead of queueing.
        drop(rx);
        on_done(result);
    }

    /// Wakes a blocked `write_chunk` and tells the shard.
    fn room_again(&self, on_room: &OnRoom) {
        drop(
            self.flags
                .room_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        self.flags.room.notify_all();
        on_room();
    }

    fn write_all(&mut self, rx: &Receiver<Msg>, on_room: &OnRoom) -> Result<(), PersistError> {
        loop {
            match rx.recv() {
                Ok(Msg::Chunk {
                    bytes,
                    records,
                    keys,
                }) => {
                    if self.flags.abort.load(Ordering::Acquire) {
                        return Err(self.aborted());
                    }
                    self.write(&bytes)?;
                    self.summary.sessions += records;
                    self.summary.keys += keys;
                    let before = self.flags.queued.fetch_sub(bytes.len(), Ordering::AcqRel);
                    if before >= QUEUE_LIMIT && before - bytes.len() < QUEUE_LIMIT {
                        self.room_again(on_room);
                    }
                }
                Ok(Msg::Finish) => {
                    let footer = footer_without_crc(self.summary.sessions, self.summary.keys);
                    self.write(&footer)?;
                    let crc = self.crc.clone().finalize();
                    self.out
                        .write_all(&crc.to_le_bytes())
                        .and_then(|()| self.out.flush())
                        .map_err(|e| PersistError::io(&self.path, "writing", e))?;
                    self.out
                        .get_ref()
                        .sync_all()
                        .map_err(|e| PersistError::io(&self.path, "fsyncing", e))?;
                    self.summary.bytes += 4;
                    self.summary.crc32 = crc;
                    debug_assert!(self.summary.bytes >= (HEADER_LEN + FOOTER_LEN) as u64);
                    return Ok(());
                }
                Err(_) => return Err(self.aborted()),
            }
        }
    }

    fn aborted(&self) -> PersistError {
        PersistError::Aborted {
            path: self.path.clone(),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PersistError> {
        self.out
            .write_all(bytes)
            .map_err(|e| PersistError::io(&self.path, "writing", e))?;
        self.crc.update(bytes);
        self.summary.bytes += bytes.len() as u64;
        self.unsynced += bytes.len();
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            self.out
                .flush()
                .and_then(|()| self.out.get_ref().sync_data())
                .map_err(|e| PersistError::io(&self.path, "fsyncing", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::persist::format::read_shard_file;
    use crate::persist::format::tests::sample_records;
    use crate::persist::test_support::TempDir;

    type Done = mpsc::Receiver<Result<ShardFileSummary, PersistError>>;

    fn start(dir: &Path, shard: usize) -> (ShardFileWriter, Done) {
        let (tx, rx) = mpsc::channel();
        let w = ShardFileWriter::start(
            dir,
            shard,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .unwrap();
        (w, rx)
    }

    fn wait(rx: &Done) -> Result<ShardFileSummary, PersistError> {
        let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        // Exactly once: the callback is gone, so the channel closes.
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_err());
        r
    }

    #[test]
    fn writes_many_chunks_into_one_verified_file() {
        let dir = TempDir::new("writer-chunks");
        let (w, rx) = start(dir.path(), 2);
        assert_eq!(w.path(), dir.path().join("shard-2.ndb"));
        let records = sample_records();
        let mut expected = Vec::new();
        for round in 0..20u64 {
            for (i, r) in records.iter().enumerate() {
                let mut r = r.clone();
                r.tkn = round * 1000 + i as u64 + 1;
                let mut chunk = Vec::new();
                r.encode(&mut chunk);
                w.write_chunk(chunk, 1, r.keys.len() as u64);
                expected.push(r);
            }
            // An empty chunk is harmless.
            w.write_chunk(Vec::new(), 0, 0);
        }
        assert!(!w.failed());
        w.finish();
        let summary = wait(&rx).unwrap();
        let path = dir.path().join(&summary.file_name);
        assert_eq!(summary.file_name, "shard-2.ndb");
        assert_eq!(summary.shard, 2);
        assert_eq!(summary.sessions, expected.len() as u64);
        assert_eq!(
            summary.keys,
            expected.iter().map(|r| r.keys.len() as u64).sum::<u64>()
        );
        assert_eq!(summary.bytes, fs::metadata(&path).unwrap().len());
        let decoded = read_shard_file(&path, summary.bytes).unwrap();
        assert_eq!(decoded.crc32, summary.crc32);
        assert_eq!(decoded.shard, 2);
        assert_eq!(decoded.records, expected);
    }

    #[test]
    fn a_full_queue_hands_chunks_back_until_the_thread_makes_room() {
        let dir = TempDir::new("writer-bounded");
        // The job is run by hand below, so the queue fills first.
        let (w, job, rx) = ShardFileWriter::open(dir.path(), 0).unwrap();
        let records = sample_records();
        let mut one = Vec::new();
        records[0].encode(&mut one);
        let mut queued = 0u64;
        while w.has_room() {
            w.try_write_chunk(one.clone(), 1, records[0].keys.len() as u64)
                .unwrap();
            queued += 1;
        }
        assert!(queued as usize * one.len() >= QUEUE_LIMIT);
        // Full: the chunk comes back as it was, and nothing is queued.
        let back = w.try_write_chunk(one.clone(), 1, 0).unwrap_err();
        assert_eq!(back, one);
        let w = Arc::new(w);
        // A blocking write waits for room.
        let (wrote_tx, wrote_rx) = mpsc::channel();
        let blocked = {
            let (w, one, keys) = (Arc::clone(&w), one.clone(), records[0].keys.len() as u64);
            std::thread::spawn(move || {
                w.write_chunk(one, 1, keys);
                let _ = wrote_tx.send(());
            })
        };
        assert!(wrote_rx.recv_timeout(Duration::from_millis(50)).is_err());
        let (room_tx, room_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            job.run(
                rx,
                Box::new(move |r| {
                    let _ = done_tx.send(r);
                }),
                Box::new(move || {
                    let _ = room_tx.send(());
                }),
            )
        });
        room_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        wrote_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        blocked.join().unwrap();
        let Ok(w) = Arc::try_unwrap(w) else {
            panic!("the blocked writer still holds the handle")
        };
        w.finish();
        let summary = wait(&done_rx).unwrap();
        assert_eq!(summary.sessions, queued + 1);
        let decoded = read_shard_file(&dir.path().join("shard-0.ndb"), summary.bytes).unwrap();
        assert_eq!(decoded.records.len() as u64, queued + 1);
        assert!(decoded.records.iter().all(|r| *r == records[0]));
    }

    #[test]
    fn a_file_with_no_records_is_valid() {
        let dir = TempDir::new("writer-empty");
        let (w, rx) = start(dir.path(), 0);
        w.finish();
        let summary = wait(&rx).unwrap();
        assert_eq!((summary.sessions, summary.keys), (0, 0));
        assert_eq!(summary.bytes, (HEADER_LEN + FOOTER_LEN) as u64);
        let decoded = read_shard_file(&dir.path().join("shard-0.ndb"), summary.bytes).unwrap();
        assert!(decoded.records.is_empty());
    }

    #[test]
    fn abort_removes_the_partial_file() {
        let dir = TempDir::new("writer-abort");
        let (w, rx) = start(dir.path(), 1);
        let path = w.path().to_owned();
        let mut chunk = Vec::new();
        sample_records()[0].encode(&mut chunk);
        w.write_chunk(chunk, 1, 12);
        w.abort();
        let err = wait(&rx).unwrap_err();
        assert!(matches!(err, PersistError::Aborted { .. }), "{err}");
        assert!(err.to_string().contains("shard-1.ndb"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn dropping_the_writer_is_an_abort() {
        let dir = TempDir::new("writer-drop");
        let (w, rx) = start(dir.path(), 0);
        let path = w.path().to_owned();
        drop(w);
        assert!(matches!(wait(&rx), Err(PersistError::Aborted { .. })));
        assert!(!path.exists());
    }

    #[test]
    fn start_never_overwrites_and_needs_the_directory() {
        let dir = TempDir::new("writer-start");
        fs::write(dir.path().join("shard-3.ndb"), b"earlier").unwrap();
        let noop: OnDone = Box::new(|_| panic!("on_done called for a failed start"));
        let err = ShardFileWriter::start(dir.path(), 3, noop).err().unwrap();
        assert!(matches!(err, PersistError::Io { .. }), "{err}");
        assert_eq!(
            fs::read(dir.path().join("shard-3.ndb")).unwrap(),
            b"earlier"
        );

        let noop: OnDone = Box::new(|_| panic!("on_done called for a failed start"));
        let missing = dir.path().join("missing");
        let err = ShardFileWriter::start(&missing, 0, noop).err().unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
