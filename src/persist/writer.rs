//! One shard's data file, written on a background thread so the shard's event
//! loop never waits for the disk.
//!
//! The shard encodes records into chunks between its event-loop turns and hands
//! them over with [`ShardFileWriter::write_chunk`]; the writer thread appends
//! them, keeps the running CRC32 and counts, and on [`ShardFileWriter::finish`]
//! writes the footer and fsyncs. It owns only its file: the version directory's
//! fsync and the metadata are [`super::VersionDir::commit`]'s job.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
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
        };
        let spawned = thread::Builder::new()
            .name(format!("snapshot-writer-{shard}"))
            .spawn(move || job.run(rx, on_done));
        if let Err(e) = spawned {
            let _ = fs::remove_file(&path);
            return Err(PersistError::io(&path, "starting the writer thread for", e));
        }
        Ok(ShardFileWriter { tx, flags, path })
    }

    /// Queues a chunk of encoded records (concatenated `encode_record` outputs)
    /// with how many records and keys it holds. Never blocks: the queue is
    /// unbounded, so the caller bounds chunk sizes and how far it runs ahead.
    /// After a failure the chunk is discarded (see [`failed`](Self::failed)).
    pub fn write_chunk(&self, bytes: Vec<u8>, records: u64, keys: u64) {
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

/// The writer thread's state.
struct Job {
    out: BufWriter<File>,
    path: PathBuf,
    crc: crc32fast::Hasher,
    summary: ShardFileSummary,
    flags: Arc<Flags>,
}

impl Job {
    fn run(mut self, rx: Receiver<Msg>, on_done: OnDone) {
        let result = self.write_all(&rx);
        let result = match result {
            Ok(()) => Ok(self.summary),
            Err(e) => {
                self.flags.failed.store(true, Ordering::Release);
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

    fn write_all(&mut self, rx: &Receiver<Msg>) -> Result<(), PersistError> {
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
