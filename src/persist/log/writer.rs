//! One shard's change-log writer: a helper thread that seals the shard's
//! batches (fills in their CRCs), appends them to the current segment and
//! fsyncs as the policy says, so the event loop never waits for the disk.
//!
//! Group commit: the thread takes every batch already queued before it
//! writes, so one `fdatasync` covers all the turns that arrived while the
//! previous one ran. The queue is bounded: a shard that outruns the disk
//! waits for room (backpressure) instead of growing without limit.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::record::{Batch, seal};
use super::segment::SegmentHeader;
use crate::metrics::LogFigures;

/// Batches queued before the shard waits: many turns of group commit.
const QUEUE: usize = 64;
/// Bytes of batches gathered into one write before it is issued.
const GATHER_BYTES: usize = 8 << 20;
/// Batches gathered into one write (one `IoSlice` each) at most.
const GATHER_BATCHES: usize = 256;
/// Zeros written ahead of the records (at most a segment's size).
const ZERO_AHEAD: u64 = 1 << 20;
/// Buffers up to this size go back to the shard for its next turns.
const MAX_RECYCLED: usize = 4 << 20;

/// When the log is made durable.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before a write's answer is sent (one fsync per group of turns).
    Always,
    /// About once a second: at most about a second of writes is lost.
    EverySec,
    /// Never explicitly: the kernel writes back when it wants.
    No,
}

impl FsyncPolicy {
    pub fn name(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        }
    }
}

/// What the writer thread reports to its shard.
#[derive(Debug)]
pub enum LogReport {
    /// Every record up to this sequence number is on disk.
    Synced(u64),
    /// Writing failed; the log stopped (the message names the file).
    Failed(String),
}

/// Where and how a shard's log is written.
#[derive(Clone, Debug)]
pub struct LogWriterConfig {
    /// `<persist>/log`.
    pub dir: PathBuf,
    pub generation: u64,
    pub shard: u32,
    pub shards: u32,
    pub policy: FsyncPolicy,
    /// A segment is closed once it holds at least this many bytes.
    pub segment_bytes: u64,
}

enum Msg {
    Batch(Batch),
    /// The next batch begins a new segment (a snapshot begins after the
    /// current one, which compaction can then delete).
    Rotate,
}

/// The shard's handle on its log writer thread. Dropping it flushes,
/// fsyncs and joins the thread.
pub struct LogWriter {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    /// Written batches' buffers, emptied, for the shard to fill again: no
    /// fresh allocation (and page faults) per turn.
    spares: Receiver<Vec<u8>>,
    /// What the thread wrote and how long its fsyncs took (the thread
    /// updates it once per write or fsync; a scrape reads it).
    figures: Arc<Mutex<LogFigures>>,
}

impl LogWriter {
    /// Starts the thread `change-log-<shard>`; `report` is called on it.
    pub fn start(
        config: LogWriterConfig,
        report: Box<dyn Fn(LogReport) + Send>,
    ) -> io::Result<LogWriter> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (recycle, spares) = mpsc::channel();
        let name = format!("change-log-{}", config.shard);
        let figures = Arc::new(Mutex::new(LogFigures::default()));
        let job_figures = figures.clone();
        let thread = thread::Builder::new().name(name).spawn(move || {
            let mut job = Job {
                config,
                current: None,
                rotate: false,
                last_sync: Instant::now(),
                unsynced: None,
                recycle,
                figures: job_figures,
            };
            if let Err(e) = job.run(&rx, &*report) {
                report(LogReport::Failed(e));
            }
        })?;
        Ok(LogWriter {
            tx: Some(tx),
            thread: Some(thread),
            spares,
            figures,
        })
    }

    /// Records and bytes written so far, and the fsyncs' times.
    pub fn figures(&self) -> LogFigures {
        // A poisoned lock means the thread panicked; its figures still stand.
        match self.figures.lock() {
            Ok(figures) => figures.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// An emptied buffer of a written batch, if one has come back.
    pub fn spare(&self) -> Option<Vec<u8>> {
        self.spares.try_recv().ok()
    }

    /// Queues a turn's records; waits only when the queue is full.
    pub fn append(&self, batch: Batch) {
        if let Some(tx) = &self.tx {
            // An error means the thread failed, and has reported it.
            let _ = tx.send(Msg::Batch(batch));
        }
    }

    /// Records from now on go to a new segment.
    pub fn rotate(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Rotate);
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Disconnecting makes the thread write what is queued, fsync and end.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Segment {
    file: File,
    path: PathBuf,
    /// Bytes of header and records (written or about to be).
    len: u64,
    /// The file's size: records, then zeros written ahead of them.
    allocated: u64,
}

impl Segment {
    /// Makes the file at least `needed` bytes long by writing zeros past
    /// its end, `ahead` more than needed: records then overwrite blocks
    /// the file already has, so an fdatasync writes the data alone, not
    /// the inode's new size as well (on ext4 a second device write per
    /// fsync; measured 15-30% of an fsync's latency here).
    fn zero_ahead(&mut self, needed: u64, ahead: u64) -> Result<(), String> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        if needed <= self.allocated {
            return Ok(());
        }
        let target = needed + ahead;
        while self.allocated < target {
            let n = (target - self.allocated).min(ZEROS.len() as u64) as usize;
            self.file
                .write_all_at(&ZEROS[..n], self.allocated)
                .map_err(|e| io_error(&self.path, "extending", &e))?;
            self.allocated += n as u64;
        }
        Ok(())
    }

    /// Drops the zeros past the records and makes the segment durable:
    /// a closed segment ends exactly where its records do.
    fn close(self) -> Result<(), String> {
        self.file
            .set_len(self.len)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_error(&self.path, "closing", &e))
    }
}

struct Job {
    config: LogWriterConfig,
    current: Option<Segment>,
    rotate: bool,
    last_sync: Instant,
    /// The last sequence number written but not yet fsynced.
    unsynced: Option<u64>,
    /// Where written batches' buffers go back to the shard.
    recycle: Sender<Vec<u8>>,
    figures: Arc<Mutex<LogFigures>>,
}

impl Job {
    fn run(&mut self, rx: &Receiver<Msg>, report: &dyn Fn(LogReport)) -> Result<(), String> {
        // Sealed batches not yet written: one vectored write takes them all.
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut pending_bytes = 0;
        loop {
            let first = match (self.config.policy, self.unsynced) {
                (FsyncPolicy::EverySec, Some(_)) => {
                    let wait = Duration::from_secs(1).saturating_sub(self.last_sync.elapsed());
                    match rx.recv_timeout(wait) {
                        Ok(msg) => Some(msg),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return self.finish(report),
                    }
                }
                _ => match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => return self.finish(report),
                },
            };
            let mut last_seq = None;
            let mut next = first;
            let mut disconnected = false;
            // Group commit: everything already queued goes in one write.
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Batch(mut batch) => {
                        if self.current.is_none() || self.rotate || self.full() {
                            self.write_out(&mut pending)?;
                            pending_bytes = 0;
                            let first_seq = first_seq_of(&batch.bytes);
                            self.open_segment(first_seq)?;
                        }
                        seal(&mut batch.bytes);
                        if let Some(segment) = &mut self.current {
                            segment.len += batch.bytes.len() as u64;
                        }
                        let records =
                            (batch.last_seq + 1).saturating_sub(first_seq_of(&batch.bytes));
                        self.count(|f| {
                            f.records += records;
                            f.bytes += batch.bytes.len() as u64;
                        });
                        last_seq = Some(batch.last_seq);
                        pending_bytes += batch.bytes.len();
                        pending.push(batch.bytes);
                        if pending_bytes >= GATHER_BYTES || pending.len() >= GATHER_BATCHES {
                            self.write_out(&mut pending)?;
                            pending_bytes = 0;
                        }
                    }
                    Msg::Rotate => self.rotate = true,
                }
                match rx.try_recv() {
                    Ok(msg) => next = Some(msg),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => disconnected = true,
                }
            }
            self.write_out(&mut pending)?;
            pending_bytes = 0;
            if last_seq.is_some() {
                self.unsynced = last_seq;
            }
            let due = match self.config.policy {
                FsyncPolicy::Always => true,
                FsyncPolicy::EverySec => self.last_sync.elapsed() >= Duration::from_secs(1),
                FsyncPolicy::No => false,
            };
            if due || disconnected {
                self.sync(report)?;
            }
            if disconnected {
                return self.finish(report);
            }
        }
    }

    fn count(&self, update: impl FnOnce(&mut LogFigures)) {
        match self.figures.lock() {
            Ok(mut figures) => update(&mut figures),
            Err(poisoned) => update(&mut poisoned.into_inner()),
        }
    }

    fn full(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|s| s.len >= self.config.segment_bytes)
    }

    /// Makes what was written durable and says so.
    fn sync(&mut self, report: &dyn Fn(LogReport)) -> Result<(), String> {
        let Some(seq) = self.unsynced.take() else {
            self.last_sync = Instant::now();
            return Ok(());
        };
        if let Some(segment) = &self.current {
            let began = Instant::now();
            segment
                .file
                .sync_data()
                .map_err(|e| io_error(&segment.path, "fsyncing", &e))?;
            let took_us = began.elapsed().as_micros() as u64;
            self.count(|f| f.fsync_us.observe(took_us));
        }
        self.last_sync = Instant::now();
        report(LogReport::Synced(seq));
        Ok(())
    }

    fn finish(&mut self, report: &dyn Fn(LogReport)) -> Result<(), String> {
        self.sync(report)?;
        match self.current.take() {
            Some(segment) => segment.close(),
            None => Ok(()),
        }
    }

    /// Writes the pending batches (one vectored write, as the kernel
    /// takes them) and hands their buffers back to the shard.
    fn write_out(&mut self, pending: &mut Vec<Vec<u8>>) -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        let Some(segment) = &mut self.current else {
            return Err("records with no segment open (internal error)".into());
        };
        segment.zero_ahead(segment.len, ZERO_AHEAD.min(self.config.segment_bytes))?;
        let mut slices: Vec<IoSlice<'_>> = pending.iter().map(|b| IoSlice::new(b)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match segment.file.write_vectored(slices) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "wrote nothing");
                    return Err(io_error(&segment.path, "writing", &e));
                }
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&segment.path, "writing", &e)),
            }
        }
        for mut bytes in pending.drain(..) {
            if bytes.capacity() <= MAX_RECYCLED {
                bytes.clear();
                // The shard may have gone; then the buffer is just freed.
                let _ = self.recycle.send(bytes);
            }
        }
        Ok(())
    }

    /// Closes the current segment (durably) and starts the next, whose
    /// header and directory entry are durable before any record is in it.
    fn open_segment(&mut self, first_seq: u64) -> Result<(), String> {
        if let Some(old) = self.current.take() {
            old.close()?;
        }
        let header = SegmentHeader {
            generation: self.config.generation,
            shard: self.config.shard,
            shards: self.config.shards,
            first_seq,
        };
        let path = self.config.dir.join(header.file_name());
        // Not append mode: records are written at the file's cursor, zeros
        // ahead of them at their own offsets.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error(&path, "creating", &e))?;
        file.write_all(&header.encode())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(&path, "writing the header of", &e))?;
        sync_dir(&self.config.dir)?;
        let len = header.encode().len() as u64;
        self.current = Some(Segment {
            file,
            path,
            len,
            allocated: len,
        });
        self.rotate = false;
        Ok(())
    }
}

/// The sequence number of the first record in a batch.
fn first_seq_of(bytes: &[u8]) -> u64 {
    bytes
        .get(8..16)
        .map_or(1, crate::persist::format::le_u64)
        .max(1)
}

fn io_error(path: &Path, doing: &str, e: &io::Error) -> String {
    format!("{doing} {}: {e}", path.display())
}

/// Makes a directory's entries durable.
pub fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "fsyncing the directory", &e))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::persist::log::record::{ChangeBuffer, decode};
    use crate::persist::log::segment::{SEGMENT_HEADER_LEN, parse_segment_file_name};
    use crate::persist::test_support::TempDir;

    fn config(dir: &Path, policy: FsyncPolicy, segment_bytes: u64) -> LogWriterConfig {
        LogWriterConfig {
            dir: dir.to_path_buf(),
            generation: 2,
            shard: 1,
            shards: 2,
            policy,
            segment_bytes,
        }
    }

    fn segments(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| parse_segment_file_name(n).is_some())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(dir.join(&n)).unwrap();
                (n, bytes)
            })
            .collect()
    }

    fn seqs(bytes: &[u8]) -> Vec<u64> {
        let mut at = SEGMENT_HEADER_LEN;
        let mut out = Vec::new();
        while at < bytes.len() {
            let (record, len) = decode(&bytes[at..]).unwrap();
            out.push(record.seq);
            at += len;
        }
        out
    }

    #[test]
    fn always_reports_every_record_synced_and_rotates_segments() {
        let dir = TempDir::new("log-writer");
        let synced = Arc::new(Mutex::new(Vec::new()));
        let seen = synced.clone();
        let writer = LogWriter::start(
            config(dir.path(), FsyncPolicy::Always, 200),
            Box::new(move |r| match r {
                LogReport::Synced(seq) => seen.lock().unwrap().push(seq),
                LogReport::Failed(e) => panic!("{e}"),
            }),
        )
        .unwrap();
        let mut buf = ChangeBuffer::new(1);
        for turn in 0..10u64 {
            for i in 0..3 {
                buf.deadline(turn * 10 + i + 1, 1_000 + turn);
            }
            writer.append(buf.take(None).unwrap());
            if turn == 4 {
                writer.rotate();
            }
        }
        drop(writer);
        let synced = synced.lock().unwrap().clone();
        assert_eq!(synced.last(), Some(&30));
        assert!(synced.windows(2).all(|w| w[0] < w[1]), "{synced:?}");
        let files = segments(dir.path());
        assert!(files.len() >= 3, "small segments rotate: {files:?}");
        let mut all = Vec::new();
        for (name, bytes) in &files {
            let header = SegmentHeader::decode(bytes).unwrap();
            assert_eq!(&header.file_name(), name);
            assert_eq!((header.generation, header.shard, header.shards), (2, 1, 2));
            let seqs = seqs(bytes);
            assert_eq!(seqs.first(), Some(&header.first_seq));
            all.extend(seqs);
        }
        assert_eq!(all, (1..=30).collect::<Vec<_>>());
        // The rotation after turn 4 began a segment at record 16.
        assert!(
            files
                .iter()
                .any(|(n, _)| parse_segment_file_name(n).unwrap().2 == 16)
        );
    }

    #[test]
    fn everysec_syncs_within_about_a_second_of_the_last_write() {
        let dir = TempDir::new("log-writer-everysec");
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let writer = LogWriter::start(
            config(dir.path(), FsyncPolicy::EverySec, 1 << 20),
            Box::new(move |r| {
                let _ = tx.lock().unwrap().send(r);
            }),
        )
        .unwrap();
        let mut buf = ChangeBuffer::new(1);
        buf.end_session(5);
        writer.append(buf.take(None).unwrap());
        // No further write arrives: the timer alone syncs it.
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            LogReport::Synced(seq) => assert_eq!(seq, 1),
            LogReport::Failed(e) => panic!("{e}"),
        }
        drop(writer);
    }

    #[test]
    fn a_directory_that_is_gone_is_reported() {
        let dir = TempDir::new("log-writer-gone");
        let missing = dir.path().join("missing");
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let writer = LogWriter::start(
            config(&missing, FsyncPolicy::No, 1 << 20),
            Box::new(move |r| {
                let _ = tx.lock().unwrap().send(r);
            }),
        )
        .unwrap();
        let mut buf = ChangeBuffer::new(1);
        buf.end_session(5);
        writer.append(buf.take(None).unwrap());
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            LogReport::Failed(e) => assert!(e.contains("missing"), "{e}"),
            LogReport::Synced(_) => panic!("synced into a missing directory"),
        }
        drop(writer);
    }
}
