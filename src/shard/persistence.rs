//! A shard's side of `SH_SAVE` and `SH_LOAD`.
//!
//! Saving: the shard that got the request creates the version directory and
//! fans out a part to every shard; each snapshots its store a chunk per turn
//! (copy-on-write keeps it point-in-time) into a background file writer,
//! whose completion comes back through the mesh; once every file is in,
//! a helper thread commits the version (its fsyncs stay off the event
//! loop) and the gatherer answers. Saves asked of a shard that is already
//! saving wait their turn there. Loading: a reader thread reads and
//! verifies the whole dataset off the event loop, then the records go to
//! their owning shards, which add them a batch per turn.

use std::path::Path;

use super::gather::GatherKind;
use super::{PartReply, Shard};
use crate::mesh::{Envelope, Part, PartResult, Ticket, shard_of};
use crate::persist::{self, SessionRecord, ShardFileWriter};
use crate::protocol::{Status, Token, encode_status};

/// Sessions a turn encodes for a save, or adds for a load: a couple of
/// milliseconds of work, so requests never wait long behind either.
pub(super) const PERSIST_BUDGET: usize = 2048;

/// Saved sessions being added to this shard.
pub(super) struct LoadJob {
    reply: PartReply,
    records: std::vec::IntoIter<SessionRecord>,
    sessions: u64,
    keys: u64,
}

impl Shard {
    /// `SH_SAVE` arrived here: create the version, ask every shard for its file.
    pub(super) fn start_save(
        &mut self,
        ticket: Ticket,
        root: &Path,
        name: Box<str>,
        tkns: Option<Vec<Token>>,
    ) {
        let version = match persist::begin_version(root, &name) {
            Ok(version) => version,
            Err(e) => {
                let mut out = Vec::with_capacity(160);
                crate::protocol::Response::new(&mut out, "SH_SAVE", Status::SaveDirWriteFail)
                    .str("name", &name)
                    .str("m", &e.to_string())
                    .finish();
                self.deliver(ticket, out);
                return;
            }
        };
        let dir = version.path.clone();
        let shards = self.ctx.shards;
        let mut only: Vec<Option<Vec<Token>>> = match &tkns {
            None => vec![None; shards],
            Some(_) => vec![Some(Vec::new()); shards],
        };
        for &tkn in tkns.iter().flatten() {
            if let Some(Some(list)) = only.get_mut(shard_of(tkn, shards)) {
                list.push(tkn);
            }
        }
        let parts = only.into_iter().enumerate().map(|(shard, only)| {
            let dir = dir.clone();
            (shard, Part::Save { dir, only })
        });
        self.fan_out_to(ticket, GatherKind::save(name, version), parts);
    }

    /// This shard's part of a save: start its snapshot and file. The result
    /// is sent by the writer thread when the file is on disk.
    pub(super) fn begin_shard_save(
        &mut self,
        reply: PartReply,
        dir: &Path,
        only: Option<Vec<Token>>,
    ) {
        let (target, gather) = match reply {
            PartReply::Local { gather } => (self.ctx.id, gather),
            PartReply::Remote { from, gather } => (from, gather),
        };
        let refuse = |shard: &mut Shard, reason: String| {
            let result = PartResult::Saved(Err(reason));
            match reply {
                PartReply::Local { gather } => shard.merge_part(gather, result),
                PartReply::Remote { from, gather } => {
                    shard.outbox[from].push(Envelope::PartDone { gather, result });
                }
            }
        };
        if self.save.is_some() {
            // One snapshot at a time per shard; this one starts after it.
            self.save_queue.push_back((reply, dir.to_path_buf(), only));
            return;
        }
        if self
            .store
            .begin_snapshot(self.now, only.as_deref())
            .is_err()
        {
            let id = self.ctx.id;
            refuse(self, format!("shard {id} is already saving"));
            return;
        }
        let mesh = self.ctx.mesh.clone();
        let on_done = Box::new(move |result: Result<_, persist::PersistError>| {
            let result = PartResult::Saved(result.map_err(|e| e.to_string()));
            // The gatherer is gone only if the server is stopping.
            let _ = mesh[target].send(vec![Envelope::PartDone { gather, result }]);
        });
        match ShardFileWriter::start(dir, self.ctx.id, on_done) {
            Ok(writer) => self.save = Some(writer),
            Err(e) => {
                self.store.abort_snapshot();
                refuse(self, e.to_string());
            }
        }
    }

    /// Commits (or removes) a finished save's version on a helper thread:
    /// its fsyncs must not hold up this shard's requests.
    pub(super) fn settle_save(&mut self, gather: usize, settlement: super::gather::SaveSettlement) {
        let (mesh, me) = (self.ctx.mesh.clone(), self.ctx.id);
        let spawned = std::thread::Builder::new()
            .name("snapshot-commit".into())
            .spawn(move || {
                let result = settlement.run();
                let _ = mesh[me].send(vec![Envelope::SaveSettled { gather, result }]);
            });
        match spawned {
            Ok(_) => self.commits_in_flight += 1,
            Err(e) => {
                // The version stays uncommitted: never loaded, so say so.
                if let Some(g) = self.gathers.get_mut(gather) {
                    g.save_settled(Err(format!("cannot start the commit thread: {e}")));
                }
                self.finish_gather(gather);
            }
        }
    }

    /// `SH_LOAD` arrived here: read the dataset on a reader thread.
    pub(super) fn start_load(&mut self, ticket: Ticket, root: &Path, name: Box<str>) {
        let gather = self.gathers.insert(super::gather::Gather::new(
            ticket,
            GatherKind::load(name.clone()),
            1,
        ));
        let (root, mesh, me) = (root.to_path_buf(), self.ctx.mesh.clone(), self.ctx.id);
        let spawned = std::thread::Builder::new()
            .name("snapshot-reader".into())
            .spawn(move || {
                let result = match persist::newest_complete(&root, &name) {
                    Ok(Some(version)) => version.read_all().map_err(|e| e.to_string()),
                    Ok(None) => Err(format!("no complete saved version of dataset {name}")),
                    Err(e) => Err(e.to_string()),
                };
                let _ = mesh[me].send(vec![Envelope::LoadRead { gather, result }]);
            });
        if let Err(e) = spawned {
            if let Some(g) = self.gathers.get_mut(gather) {
                g.fail_load(format!("cannot start the reader: {e}"));
            }
            self.finish_gather(gather);
        }
    }

    /// The dataset is read: send each shard its sessions.
    pub(super) fn loaded_from_disk(
        &mut self,
        gather: usize,
        result: Result<Vec<SessionRecord>, String>,
    ) {
        let Some(g) = self.gathers.get_mut(gather) else {
            return;
        };
        let records = match result {
            Ok(records) => records,
            Err(reason) => {
                g.fail_load(reason);
                self.finish_gather(gather);
                return;
            }
        };
        let shards = self.ctx.shards;
        let mut per_shard: Vec<Vec<SessionRecord>> = (0..shards).map(|_| Vec::new()).collect();
        for record in records {
            per_shard[shard_of(record.tkn, shards)].push(record);
        }
        // The read itself was the one part expected so far.
        g.expect_parts(shards);
        self.merge_part(
            gather,
            PartResult::Loaded {
                sessions: 0,
                keys: 0,
            },
        );
        for (shard, records) in per_shard.into_iter().enumerate() {
            if shard == self.ctx.id {
                self.answer_part(PartReply::Local { gather }, Part::Load(records));
            } else {
                self.outbox[shard].push(Envelope::Part {
                    from: self.ctx.id,
                    gather,
                    part: Part::Load(records),
                });
            }
        }
    }

    pub(super) fn queue_load(&mut self, reply: PartReply, records: Vec<SessionRecord>) {
        self.loading.push_back(LoadJob {
            reply,
            records: records.into_iter(),
            sessions: 0,
            keys: 0,
        });
    }

    /// Adds saved sessions straight away (start-up, before serving).
    pub(super) fn restore_now(&mut self, records: Vec<SessionRecord>) -> (u64, u64) {
        let (mut sessions, mut keys) = (0, 0);
        for record in records {
            if let Some(k) = self.store.restore(record, self.now) {
                sessions += 1;
                keys += k;
            }
        }
        (sessions, keys)
    }

    /// One turn's share of save and load work.
    pub(super) fn persistence_step(&mut self) {
        // A writer that failed has reported it; encoding more is waste.
        if self.save.as_ref().is_some_and(ShardFileWriter::failed) {
            self.store.abort_snapshot();
            self.save = None;
        }
        if let Some(chunk) = self.store.snapshot_step(PERSIST_BUDGET) {
            if let Some(writer) = &self.save {
                writer.write_chunk(chunk.bytes, chunk.records, chunk.keys);
            }
            if chunk.done
                && let Some(writer) = self.save.take()
            {
                writer.finish();
            }
        }
        if self.save.is_none()
            && let Some((reply, dir, only)) = self.save_queue.pop_front()
        {
            self.begin_shard_save(reply, &dir, only);
        }
        let mut budget = PERSIST_BUDGET;
        while budget > 0 {
            let Some(job) = self.loading.front_mut() else {
                break;
            };
            for record in job.records.by_ref().take(budget) {
                budget -= 1;
                if let Some(keys) = self.store.restore(record, self.now) {
                    job.sessions += 1;
                    job.keys += keys;
                }
            }
            if job.records.len() > 0 {
                break;
            }
            let Some(job) = self.loading.pop_front() else {
                break;
            };
            let result = PartResult::Loaded {
                sessions: job.sessions,
                keys: job.keys,
            };
            match job.reply {
                PartReply::Local { gather } => self.merge_part(gather, result),
                PartReply::Remote { from, gather } => {
                    self.outbox[from].push(Envelope::PartDone { gather, result });
                }
            }
        }
    }

    /// Whether save or load work is waiting for the next turn.
    pub(super) fn persistence_busy(&self) -> bool {
        self.save.is_some() || !self.save_queue.is_empty() || !self.loading.is_empty()
    }

    /// Answers `SH_SAVE` / `SH_LOAD` when persistence is off.
    pub(super) fn persistence_disabled(&mut self, ticket: Ticket, command: &'static str) {
        let mut out = Vec::with_capacity(96);
        let m = Some("persistence is disabled (start with --persist-path)");
        encode_status(&mut out, command, Status::CommandDisabled, None, m);
        self.deliver(ticket, out);
    }
}
