//! A shard's change log as the router drives it: each turn's records go to
//! the log writer thread; with fsync `always`, an answer to a request that
//! changed something waits until its records are on disk (group commit:
//! one fsync covers every turn queued meanwhile); periodic snapshots start
//! here (on shard 0), and their log positions let compaction drop what
//! they cover.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;

use super::gather::{GatherKind, Upkeep};
use super::{PartReply, Replies, Router};
use crate::mesh::{Envelope, PartResult, ShardId, Ticket};
use crate::metrics::LogFigures;
use crate::persist::log::{FsyncPolicy, LogReport, LogWriter, LogWriterConfig};
use crate::store::Millis;

/// Records wait in the shard at most this long before the log thread
/// gets them (with `everysec` and `no`; `always` hands them off every turn).
const HAND_OFF_AFTER_MS: Millis = 2;
/// ... or until they are this many bytes.
const HAND_OFF_BYTES: usize = 256 * 1024;

/// Where and how this shard logs its changes.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// `<persist>/log`.
    pub dir: PathBuf,
    /// The generation this run writes (a new one after every recovery).
    pub generation: u64,
    pub policy: FsyncPolicy,
    pub segment_bytes: u64,
}

/// Periodic snapshots (started by shard 0).
#[derive(Clone, Debug)]
pub struct SnapshotSchedule {
    pub every_ms: u64,
    /// The dataset they are versions of.
    pub name: Box<str>,
    /// Complete versions kept after each.
    pub keep: usize,
}

/// Something to send once the log is on disk up to a record.
pub(super) enum Held {
    /// An answer for a connection of this shard.
    Answer(Ticket, Vec<u8>),
    /// A message for another shard (an answer or a part's result).
    Send(ShardId, Envelope),
    /// A part's result for a gather of this shard.
    Part(usize, PartResult),
}

/// The change log and snapshot schedule of one shard.
#[derive(Default)]
pub(super) struct Durability {
    writer: Option<LogWriter>,
    /// Answers wait for the disk (`--log-fsync always`).
    always: bool,
    generation: u64,
    /// The log is on disk up to this record.
    synced: u64,
    /// What waits for the disk, in the order it was made.
    held: VecDeque<(u64, Held)>,
    /// The log writer failed: the shard must stop the server.
    failure: Option<String>,
    /// `<persist>/log` while logging.
    log_dir: Option<PathBuf>,
    /// Since when records have waited in this shard for the log writer.
    pending_since: Option<Millis>,
    /// When the next periodic snapshot is due.
    next_snapshot: Option<Millis>,
    /// A periodic snapshot is under way.
    snapshot_running: bool,
}

impl Durability {
    /// Whether anything waits for the disk.
    pub(super) fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }
}

impl Router {
    /// Starts logging every change from now on (after any start-up
    /// restore, which the recovery checkpoint already holds).
    pub fn start_log(&mut self, settings: LogSettings) -> io::Result<()> {
        let (post, me) = (self.post.clone(), self.config.id);
        self.durability.log_dir = Some(settings.dir.clone());
        let config = LogWriterConfig {
            dir: settings.dir,
            generation: settings.generation,
            shard: me as u32,
            shards: self.config.shards as u32,
            policy: settings.policy,
            segment_bytes: settings.segment_bytes,
        };
        let writer = LogWriter::start(
            config,
            Box::new(move |report| {
                let envelope = match report {
                    LogReport::Synced(seq) => Envelope::LogSynced(seq),
                    LogReport::Failed(why) => Envelope::LogFailed(why),
                };
                post.post(me, vec![envelope]);
            }),
        )?;
        self.store.enable_log(1);
        self.durability.writer = Some(writer);
        self.durability.always = settings.policy == FsyncPolicy::Always;
        self.durability.generation = settings.generation;
        Ok(())
    }

    /// Knows the snapshot dataset (saves of it compact the log and drop
    /// old versions); with `periodic` (one shard) takes them, the first
    /// one interval from now.
    pub fn schedule_snapshots(&mut self, schedule: SnapshotSchedule, periodic: bool) {
        if periodic && schedule.every_ms > 0 {
            self.durability.next_snapshot = Some(self.now + schedule.every_ms);
        }
        self.config.snapshots = Some(schedule);
    }

    /// What follows a committed save of dataset `name`.
    pub(super) fn upkeep_after(&self, name: &str) -> Option<Upkeep> {
        let schedule = self.config.snapshots.as_ref()?;
        (*schedule.name == *name).then(|| Upkeep {
            keep: schedule.keep,
            log_dir: self.durability.log_dir.clone(),
        })
    }

    /// The change log's figures (None: it is off).
    pub(super) fn log_figures(&self) -> Option<LogFigures> {
        self.durability.writer.as_ref().map(LogWriter::figures)
    }

    /// Why the change log stopped working, if it did: the server must stop.
    pub fn log_failure(&self) -> Option<&str> {
        self.durability.failure.as_deref()
    }

    /// The turn's records go to the log writer: at once with `always`
    /// (answers wait for them); otherwise once they fill a batch or have
    /// waited `HAND_OFF_AFTER_MS`, so a busy shard wakes its log thread a
    /// few hundred times a second, not every turn.
    pub(super) fn end_turn_log(&mut self) {
        let pending = self.store.log_pending();
        if pending == 0 {
            self.durability.pending_since = None;
            return;
        }
        let since = *self.durability.pending_since.get_or_insert(self.now);
        if self.durability.always
            || pending >= HAND_OFF_BYTES
            || self.now >= since + HAND_OFF_AFTER_MS
        {
            self.flush_log();
        }
    }

    /// Every record so far goes to the log writer.
    pub(super) fn flush_log(&mut self) {
        self.durability.pending_since = None;
        if let Some(writer) = &self.durability.writer
            && let Some(batch) = self.store.take_log(writer.spare())
        {
            writer.append(batch);
        }
    }

    /// When records waiting in this shard must go to the log writer, for
    /// the event loop's sleep.
    pub(super) fn log_hand_off_due(&self) -> Option<Millis> {
        self.durability
            .pending_since
            .map(|since| since + HAND_OFF_AFTER_MS)
    }

    /// A full snapshot begins here: the records so far go to the writer,
    /// later ones to a new segment. Returns the last record's number.
    pub(super) fn log_checkpoint(&mut self) -> u64 {
        self.flush_log();
        if let Some(writer) = &self.durability.writer {
            writer.rotate();
        }
        self.store.log_seq()
    }

    /// Whether what a request just did (the log was at `before`) must
    /// wait for the disk before it is answered.
    pub(super) fn must_hold(&self, before: u64) -> bool {
        self.durability.always && self.store.log_seq() > before
    }

    /// Whether a part's result must wait: anything not yet on disk might
    /// be part of it.
    fn part_must_hold(&self) -> bool {
        self.durability.always && self.store.log_seq() > self.durability.synced
    }

    pub(super) fn hold(&mut self, held: Held) {
        let seq = self.store.log_seq();
        self.durability.held.push_back((seq, held));
    }

    /// Sends a part's result, once on disk when it must be.
    pub(super) fn send_part_result_durably(
        &mut self,
        reply: PartReply,
        result: PartResult,
        replies: &mut dyn Replies,
    ) {
        if !self.part_must_hold() {
            self.send_part_result(reply, result, replies);
            return;
        }
        let held = match reply {
            PartReply::Local { gather } => Held::Part(gather, result),
            PartReply::Remote { from, gather } => {
                Held::Send(from, Envelope::PartDone { gather, result })
            }
        };
        self.hold(held);
    }

    /// The log writer's report.
    pub(super) fn log_report(&mut self, report: Result<u64, String>, replies: &mut dyn Replies) {
        match report {
            Ok(seq) => {
                self.durability.synced = self.durability.synced.max(seq);
                while self
                    .durability
                    .held
                    .front()
                    .is_some_and(|(at, _)| *at <= self.durability.synced)
                {
                    let Some((_, held)) = self.durability.held.pop_front() else {
                        break;
                    };
                    match held {
                        Held::Answer(ticket, response) => replies.answer_owned(ticket, response),
                        Held::Send(to, envelope) => self.outbox[to].push(envelope),
                        Held::Part(gather, result) => self.merge_part(gather, result, replies),
                    }
                }
            }
            Err(why) => {
                self.durability.failure.get_or_insert(why);
            }
        }
    }

    /// Starts a periodic snapshot when one is due (and none is running).
    pub(super) fn snapshot_turn(&mut self, replies: &mut dyn Replies) {
        let Some(due) = self.durability.next_snapshot else {
            return;
        };
        if self.now < due || self.durability.snapshot_running {
            return;
        }
        let (Some(schedule), Some(root)) = (&self.config.snapshots, &self.config.persist) else {
            return;
        };
        let (name, root) = (schedule.name.clone(), root.clone());
        self.durability.next_snapshot = Some(self.now + schedule.every_ms);
        self.durability.snapshot_running = true;
        self.start_save(None, &root, name, None, replies);
    }

    /// A periodic snapshot finished: says how it went.
    pub(super) fn snapshot_done(&mut self, kind: &GatherKind) {
        self.snapshot_ended();
        kind.log_periodic_save(self.now);
    }

    /// No periodic snapshot is running any more.
    pub(super) fn snapshot_ended(&mut self) {
        self.durability.snapshot_running = false;
    }

    /// When the next periodic snapshot is due, for the event loop's sleep.
    pub(super) fn next_snapshot(&self) -> Option<Millis> {
        self.durability.next_snapshot
    }
}
