//! A shard's side of `SH_SAVE` and `SH_LOAD`.
//!
//! Saving: the shard that got the request has a helper thread create the
//! version directory (mkdir and fsyncs stay off the event loop), then fans
//! out a part to every shard; each snapshots its store a small chunk per
//! turn (copy-on-write keeps it point-in-time) into a background file
//! writer, pausing while the writer's bounded queue is full, whose
//! completion comes back through the mesh; once every file is in,
//! a helper thread commits the version (its fsyncs stay off the event
//! loop) and the gatherer answers. Saves asked of a shard that is already
//! saving wait their turn there. Loading: a reader thread reads and
//! verifies the whole dataset off the event loop, then the records go to
//! their owning shards, which add them a batch per turn.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::gather::{Gather, GatherKind, SaveSettlement};
use super::{PartReply, Replies, Router};
use crate::domain::Token;
use crate::mesh::{Envelope, Part, PartResult, Ticket, shard_of};
use crate::persist::{self, PersistError, SessionRecord, ShardFileWriter};
use crate::protocol::answer;
use crate::protocol::{CommandName, Status};

/// Sessions a turn adds for a load: a couple of milliseconds of work, so
/// requests never wait long behind it.
pub(super) const PERSIST_BUDGET: usize = 2048;

/// Sessions a turn encodes for a save: a few hundred microseconds, so a
/// save of a million sessions adds well under a millisecond to any request
/// (it runs in the time requests leave, turn after turn).
pub(super) const SAVE_BUDGET: usize = 256;

/// Saves and loads under way on one shard.
#[derive(Default)]
pub(super) struct PersistJobs {
    /// This shard's file of a save in progress.
    save: Option<ShardFileWriter>,
    /// Saves asked of this shard while another ran: they start in turn.
    save_queue: VecDeque<QueuedSave>,
    /// Saved sessions waiting to be added, a batch per turn.
    loading: VecDeque<LoadJob>,
    /// Save versions being created or committed by helper threads.
    commits_in_flight: usize,
}

struct QueuedSave {
    reply: PartReply,
    dir: PathBuf,
    only: Option<Vec<Token>>,
}

/// Saved sessions being added to this shard.
struct LoadJob {
    reply: PartReply,
    records: std::vec::IntoIter<SessionRecord>,
    sessions: u64,
    keys: u64,
}

impl PersistJobs {
    /// Whether save or load work is under way.
    pub(super) fn busy(&self) -> bool {
        self.save.is_some() || !self.save_queue.is_empty() || !self.loading.is_empty()
    }

    /// Whether the next turn has save or load work it can do: a save whose
    /// writer is full waits for its wake-up instead.
    pub(super) fn has_work(&self) -> bool {
        match &self.save {
            Some(writer) => writer.has_room() || !self.loading.is_empty(),
            None => self.busy(),
        }
    }

    /// Whether a version is being created or committed by a helper thread.
    pub(super) fn committing(&self) -> bool {
        self.commits_in_flight > 0
    }

    pub(super) fn commit_settled(&mut self) {
        self.commits_in_flight = self.commits_in_flight.saturating_sub(1);
    }

    pub(super) fn queue_load(&mut self, reply: PartReply, records: Vec<SessionRecord>) {
        self.loading.push_back(LoadJob {
            reply,
            records: records.into_iter(),
            sessions: 0,
            keys: 0,
        });
    }

    /// Abandons a save in progress (the server is stopping).
    pub(super) fn abort(&mut self) {
        if let Some(writer) = self.save.take() {
            writer.abort();
        }
    }
}

impl Router {
    /// `SH_SAVE` arrived here (or a periodic snapshot is due: no ticket):
    /// a helper thread creates the version (mkdir and fsyncs), then
    /// [`Router::save_version_ready`] fans out.
    pub(super) fn start_save(
        &mut self,
        ticket: Option<Ticket>,
        root: &Path,
        name: Box<str>,
        tkns: Option<Vec<Token>>,
        replies: &mut dyn Replies,
    ) {
        let (root, post, me) = (root.to_path_buf(), self.post.clone(), self.config.id);
        let job_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-version".into())
            .spawn(move || {
                let result = persist::begin_version(&root, &job_name);
                let ready = Envelope::SaveVersionReady {
                    ticket,
                    name: job_name,
                    tkns,
                    result: Box::new(result),
                };
                post.post(me, vec![ready]);
            });
        match spawned {
            Ok(_) => self.persist.commits_in_flight += 1,
            Err(source) => {
                self.snapshot_figures.failures += 1;
                let why = PersistError::Thread {
                    role: "snapshot version",
                    source,
                }
                .to_string();
                let Some(ticket) = ticket else {
                    tracing::error!(
                        dataset = %name,
                        error = %why,
                        "periodic snapshot: dataset {name}: failed: {why}"
                    );
                    self.snapshot_ended();
                    return;
                };
                self.answer_here(ticket, replies, |_, out| {
                    answer::persist_failed(
                        out,
                        CommandName::Save,
                        Status::SaveDirWriteFail,
                        &name,
                        &why,
                    )
                });
            }
        }
    }

    /// The version directory of a save is created (or could not be): ask
    /// every shard for its file, or answer 122.
    pub(super) fn save_version_ready(
        &mut self,
        ticket: Option<Ticket>,
        name: Box<str>,
        tkns: Option<Vec<Token>>,
        result: Result<persist::VersionDir, PersistError>,
        replies: &mut dyn Replies,
    ) {
        self.persist.commits_in_flight = self.persist.commits_in_flight.saturating_sub(1);
        let version = match result {
            Ok(version) => version,
            Err(e) => {
                self.snapshot_figures.failures += 1;
                let why = e.to_string();
                let Some(ticket) = ticket else {
                    let kind = GatherKind::save_failed(name, e, self.now);
                    self.snapshot_done(&kind);
                    return;
                };
                self.answer_here(ticket, replies, |_, out| {
                    answer::persist_failed(
                        out,
                        CommandName::Save,
                        Status::SaveDirWriteFail,
                        &name,
                        &why,
                    )
                });
                return;
            }
        };
        let dir = version.path.clone();
        persist::in_progress::begin(&dir);
        let shards = self.config.shards;
        let mut only: Vec<Option<Vec<Token>>> = match &tkns {
            None => vec![None; shards],
            Some(_) => vec![Some(Vec::new()); shards],
        };
        for &tkn in tkns.iter().flatten() {
            if let Some(Some(list)) = only.get_mut(shard_of(tkn, shards)) {
                list.push(tkn);
            }
        }
        let parts = only
            .into_iter()
            .enumerate()
            .map(|(shard, only)| {
                let dir = dir.clone();
                (shard, Part::Save { dir, only })
            })
            .collect();
        let kind = GatherKind::save(name, version, self.now);
        let gather = self.gathers.insert(Gather::new(ticket, kind, shards));
        self.send_parts(gather, parts, replies);
    }

    /// This shard's part of a save: start its snapshot and file. The result
    /// is sent by the writer thread when the file is on disk.
    pub(super) fn begin_shard_save(
        &mut self,
        reply: PartReply,
        dir: &Path,
        only: Option<Vec<Token>>,
        replies: &mut dyn Replies,
    ) {
        if self.persist.save.is_some() {
            // One snapshot at a time per shard; this one starts after it.
            self.persist.save_queue.push_back(QueuedSave {
                reply,
                dir: dir.to_path_buf(),
                only,
            });
            return;
        }
        let (target, gather) = match reply {
            PartReply::Local { gather } => (self.config.id, gather),
            PartReply::Remote { from, gather } => (from, gather),
        };
        let full = only.is_none();
        if self
            .store
            .begin_snapshot(self.now, only.as_deref())
            .is_err()
        {
            // Unreachable while saves queue above; refuse rather than panic.
            let e = PersistError::invalid(dir, "this shard is already saving");
            let result = PartResult::Saved {
                result: Err(e),
                log_seq: None,
            };
            self.send_part_result(reply, result, replies);
            return;
        }
        // A full snapshot holds every change up to here: later records
        // start a new segment, so the older ones can go once it commits.
        let log_seq = full.then(|| self.log_checkpoint());
        let post = self.post.clone();
        let on_done = Box::new(move |result| {
            post.post(
                target,
                vec![Envelope::PartDone {
                    gather,
                    result: PartResult::Saved { result, log_seq },
                }],
            );
        });
        // An empty batch wakes this shard to go on encoding.
        let (post, me) = (self.post.clone(), self.config.id);
        let on_room = Box::new(move || post.post(me, Vec::new()));
        match ShardFileWriter::start_with_room(dir, self.config.id, on_done, on_room) {
            Ok(writer) => self.persist.save = Some(writer),
            Err(e) => {
                self.store.abort_snapshot();
                let result = PartResult::Saved {
                    result: Err(e),
                    log_seq: None,
                };
                self.send_part_result(reply, result, replies);
            }
        }
    }

    /// Commits (or removes) a finished save's version on a helper thread:
    /// its fsyncs must not hold up this shard's requests.
    pub(super) fn settle_save(
        &mut self,
        gather: usize,
        settlement: SaveSettlement,
        replies: &mut dyn Replies,
    ) {
        let (post, me) = (self.post.clone(), self.config.id);
        let spawned = std::thread::Builder::new()
            .name("snapshot-commit".into())
            .spawn(move || {
                let result = settlement.run();
                post.post(me, vec![Envelope::SaveSettled { gather, result }]);
            });
        match spawned {
            Ok(_) => self.persist.commits_in_flight += 1,
            Err(source) => {
                // The version stays uncommitted: never loaded, so say so.
                if let Some(g) = self.gathers.get_mut(gather) {
                    g.save_settled(Err(PersistError::Thread {
                        role: "snapshot commit",
                        source,
                    }));
                }
                self.finish_gather(gather, replies);
            }
        }
    }

    /// `SH_LOAD` arrived here: read the dataset on a reader thread.
    pub(super) fn start_load(
        &mut self,
        ticket: Ticket,
        root: &Path,
        name: Box<str>,
        replies: &mut dyn Replies,
    ) {
        let gather =
            self.gathers
                .insert(Gather::new(Some(ticket), GatherKind::load(name.clone()), 1));
        let (root, post, me) = (root.to_path_buf(), self.post.clone(), self.config.id);
        let spawned = std::thread::Builder::new()
            .name("snapshot-reader".into())
            .spawn(move || {
                let result = match persist::newest_complete(&root, &name) {
                    Ok(Some(version)) => version.read_all(),
                    Ok(None) => Err(PersistError::NoCompleteVersion {
                        name: name.to_string(),
                    }),
                    Err(e) => Err(e),
                };
                post.post(me, vec![Envelope::LoadRead { gather, result }]);
            });
        if let Err(source) = spawned {
            if let Some(g) = self.gathers.get_mut(gather) {
                g.fail_load(PersistError::Thread {
                    role: "snapshot reader",
                    source,
                });
            }
            self.finish_gather(gather, replies);
        }
    }

    /// The dataset is read: send each shard its sessions.
    pub(super) fn loaded_from_disk(
        &mut self,
        gather: usize,
        result: Result<Vec<SessionRecord>, PersistError>,
        replies: &mut dyn Replies,
    ) {
        let Some(g) = self.gathers.get_mut(gather) else {
            return;
        };
        let records = match result {
            Ok(records) => records,
            Err(reason) => {
                g.fail_load(reason);
                self.finish_gather(gather, replies);
                return;
            }
        };
        let shards = self.config.shards;
        let mut per_shard: Vec<Vec<SessionRecord>> = (0..shards).map(|_| Vec::new()).collect();
        for record in records {
            per_shard[shard_of(record.tkn, shards)].push(record);
        }
        // The read itself was the one part expected so far.
        g.expect_parts(shards);
        let read = PartResult::Loaded {
            sessions: 0,
            keys: 0,
        };
        self.merge_part(gather, read, replies);
        for (shard, records) in per_shard.into_iter().enumerate() {
            if shard == self.config.id {
                self.answer_part(PartReply::Local { gather }, Part::Load(records), replies);
            } else {
                self.outbox[shard].push(Envelope::Part {
                    from: self.config.id,
                    gather,
                    part: Part::Load(records),
                });
            }
        }
    }

    /// One turn's share of save and load work.
    pub(super) fn persistence_step(&mut self, replies: &mut dyn Replies) {
        // A writer that failed has reported it; encoding more is waste.
        if self
            .persist
            .save
            .as_ref()
            .is_some_and(ShardFileWriter::failed)
        {
            self.store.abort_snapshot();
            self.persist.save = None;
        }
        // A full writer: encode nothing (copy-on-write bytes wait in the
        // snapshot) until it says there is room.
        let room = self
            .persist
            .save
            .as_ref()
            .is_none_or(ShardFileWriter::has_room);
        if room && let Some(chunk) = self.store.snapshot_step(SAVE_BUDGET) {
            if let Some(writer) = &self.persist.save {
                // Cannot come back: the writer had room, and only this
                // thread adds to its queue.
                let _ = writer.try_write_chunk(chunk.bytes, chunk.records, chunk.keys);
            }
            if chunk.done
                && let Some(writer) = self.persist.save.take()
            {
                writer.finish();
            }
        }
        if self.persist.save.is_none()
            && let Some(queued) = self.persist.save_queue.pop_front()
        {
            self.begin_shard_save(queued.reply, &queued.dir, queued.only, replies);
        }
        let mut budget = PERSIST_BUDGET;
        while budget > 0 {
            let Some(job) = self.persist.loading.front_mut() else {
                break;
            };
            for record in job.records.by_ref().take(budget) {
                budget -= 1;
                self.config.note_owner_placement(&record);
                if let Some(keys) = self.store.restore(record, self.now, false) {
                    job.sessions += 1;
                    job.keys += keys;
                }
            }
            if job.records.len() > 0 {
                break;
            }
            let Some(job) = self.persist.loading.pop_front() else {
                break;
            };
            let result = PartResult::Loaded {
                sessions: job.sessions,
                keys: job.keys,
            };
            self.send_part_result_durably(job.reply, result, replies);
        }
    }
}
