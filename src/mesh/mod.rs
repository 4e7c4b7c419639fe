//! The mesh of per-shard mailboxes, wired once at start-up: how shards
//! hand each other work and answers without sharing any data structure.
//!
//! Each shard has one inbox (a lock-free channel of message batches) and a
//! `mio::Waker`. Senders batch everything for a shard over one loop turn and
//! wake the target only when it may be asleep: the receiver raises its
//! `sleeping` flag, drains once more, and only then blocks in `poll`, so a
//! message is never left unseen and busy shards are never woken twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use mio::Waker;

use std::path::PathBuf;

use crate::domain::Token;
use crate::events::EventFilter;
use crate::metrics::{CommandLabel, ShardFigures};
use crate::persist::{PersistError, SessionRecord, ShardFileSummary, VersionDir};
use crate::protocol::Command;

pub type ShardId = usize;

/// Where an answer must go: a request on a connection of the asking shard.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Ticket {
    /// Slot of the connection in the asking shard.
    pub conn: usize,
    /// The connection's unique id (the slot may be reused).
    pub conn_id: u64,
    /// The request's sequence number on that connection.
    pub seq: u64,
    /// What the answer is counted under (see `metrics::RequestMetrics`).
    pub command: CommandLabel,
    /// When the request's time began, in the asking shard's clock ticks.
    pub started: u64,
}

/// Responses for one shard, packed into one buffer: a forwarded request's
/// answer then costs no allocation of its own on either side.
#[derive(Debug, Default)]
pub struct ReplyBatch {
    /// Each response's ticket and where its bytes end in `bytes`.
    ends: Vec<(Ticket, usize)>,
    bytes: Vec<u8>,
}

impl ReplyBatch {
    /// An empty batch with room for about as much as `previous` held, so
    /// a steady stream of batches does not grow each one from nothing.
    pub fn like(previous: &ReplyBatch) -> ReplyBatch {
        ReplyBatch {
            ends: Vec::with_capacity(previous.ends.len()),
            bytes: Vec::with_capacity(previous.bytes.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Where the next response is written; [`ReplyBatch::seal`] ends it.
    pub fn open(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Ends the response written since the last seal as `ticket`'s.
    pub fn seal(&mut self, ticket: Ticket) {
        self.ends.push((ticket, self.bytes.len()));
    }

    /// Drops what was written since the last seal, handing it back.
    pub fn unseal(&mut self) -> Vec<u8> {
        let start = self.ends.last().map_or(0, |&(_, end)| end);
        self.bytes.split_off(start)
    }

    /// Each response with its ticket, in the order written.
    pub fn iter(&self) -> impl Iterator<Item = (Ticket, &[u8])> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|&(_, end)| end));
        self.ends
            .iter()
            .zip(starts)
            .map(|(&(ticket, end), start)| (ticket, self.bytes.get(start..end).unwrap_or_default()))
    }
}

/// A piece of a command that runs on every shard (or on several).
#[derive(Debug)]
pub enum Part {
    EndAll,
    /// Sessions, keys and connections on the shard.
    Counts,
    /// Which of these tokens exist; each with its index in the request.
    Exists(Vec<(u32, Token)>),
    /// Write this shard's sessions (all, or only these) into `dir`.
    Save {
        dir: PathBuf,
        only: Option<Vec<Token>>,
    },
    /// Add these saved sessions (all owned by the receiving shard).
    Load(Vec<SessionRecord>),
    /// Apply any overdue expiry to this session (so a shared name held by
    /// a session past its deadline is released before it is claimed).
    Settle(Token),
    /// The owner's live sessions here (owners are scattered: see the router).
    OwnerSessions(Box<str>),
    /// End the owner's sessions here but `except`.
    OwnerEnd {
        owner: Box<str>,
        except: Option<Token>,
    },
    /// Register subscription `sub` (of the asking shard) with this shard's
    /// ring, from position `after` (None: from now).
    Subscribe {
        sub: u64,
        filter: Arc<EventFilter>,
        after: Option<u64>,
    },
    /// This shard's figures, for `GET /metrics`.
    Metrics,
}

/// What one shard counts for `SH_INFO_ALL` and `SV_INFO`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardCounts {
    pub sessions: u64,
    pub keys: u64,
    pub connections: u64,
    pub memory_used: u64,
    pub session_not_exist: u64,
}

/// One shard's answer to a [`Part`].
#[derive(Debug)]
pub enum PartResult {
    Ended(u64),
    Metrics(Box<ShardFigures>),
    Counts(ShardCounts),
    /// Indexes (from the request) of the tokens that exist.
    Exists(Vec<u32>),
    /// The shard's file is written (and fsynced), or why not.
    /// A shard's file of a save; with `log_seq`, the save was of every
    /// session and holds that shard's changes up to that log record.
    Saved {
        result: Result<ShardFileSummary, PersistError>,
        log_seq: Option<u64>,
    },
    /// Sessions and keys actually added.
    Loaded {
        sessions: u64,
        keys: u64,
    },
    Settled,
    /// An owner's sessions on one shard, with their creation times.
    OwnerSessions(Vec<(u64, Token)>),
    /// A subscription is registered here, after `position`; `lost` events
    /// it asked for are no longer kept.
    Subscribed {
        shard: ShardId,
        position: u64,
        lost: u64,
    },
}

#[derive(Debug)]
pub enum Envelope {
    /// Run a session command here (this shard owns its token) and answer
    /// with [`Envelope::Reply`].
    Call {
        from: ShardId,
        ticket: Ticket,
        command: Command,
    },
    /// The encoded response to a [`Envelope::Call`] (one whose sending
    /// waited for the change log; the others travel in [`Envelope::Replies`]).
    Reply {
        ticket: Ticket,
        response: Vec<u8>,
    },
    /// The responses to a turn's [`Envelope::Call`]s from one shard.
    Replies(ReplyBatch),
    /// Run part of a fan-out command; answer with [`Envelope::PartDone`].
    Part {
        from: ShardId,
        gather: usize,
        part: Part,
    },
    PartDone {
        gather: usize,
        result: PartResult,
    },
    /// A save's version was committed (or removed) by a helper thread.
    SaveSettled {
        gather: usize,
        result: Result<(), PersistError>,
    },
    /// The version directory of an `SH_SAVE` was created (or not) by a
    /// helper thread: the save fans out from here.
    SaveVersionReady {
        /// None: a periodic snapshot.
        ticket: Option<Ticket>,
        name: Box<str>,
        tkns: Option<Vec<Token>>,
        /// Boxed: the largest payload would size every envelope, and every
        /// forwarded request moves one several times.
        result: Box<Result<VersionDir, PersistError>>,
    },
    /// A dataset was read from disk for `SH_LOAD` (by a reader thread).
    LoadRead {
        gather: usize,
        result: Result<Vec<SessionRecord>, PersistError>,
    },
    /// Events of shard `from` for subscription `sub` (of the receiving
    /// shard): each its ring position and its encoding up to the cursor;
    /// the subscription has now seen `from`'s ring up to `scanned_to`.
    Events {
        from: ShardId,
        sub: u64,
        events: Vec<(u64, Vec<u8>)>,
        scanned_to: u64,
    },
    /// The subscriber's connection took `bytes` more of shard `from`'s
    /// events: it may send that much more.
    EventCredit {
        from: ShardId,
        sub: u64,
        bytes: usize,
    },
    /// Subscription `sub` of shard `from` is over.
    Unsubscribe {
        from: ShardId,
        sub: u64,
    },
    /// This shard's change log is on disk up to this record (from its
    /// log writer thread).
    LogSynced(u64),
    /// This shard's change log failed: the server must stop.
    LogFailed(String),
}

/// How a helper thread (a snapshot writer, a dataset reader) hands its
/// result back to a shard. The server posts through the mesh; an in-process
/// harness may queue the batch for itself.
pub trait PostBack: Send + Sync {
    /// Delivers `batch` to shard `to`; a shard that is gone has stopped
    /// the server, so there is nothing to do about a failure.
    fn post(&self, to: ShardId, batch: Vec<Envelope>);
}

/// The mesh as helper threads see it.
pub struct MeshPost(pub Arc<[Address]>);

impl PostBack for MeshPost {
    fn post(&self, to: ShardId, batch: Vec<Envelope>) {
        if let Some(address) = self.0.get(to) {
            let _ = address.send(batch);
        }
    }
}

/// The sending side of one shard's mailbox, shared by every shard.
pub struct Address {
    sender: Sender<Vec<Envelope>>,
    waker: Arc<Waker>,
    sleeping: Arc<AtomicBool>,
}

impl Address {
    /// Delivers a batch; wakes the target only if it may be blocked.
    /// Returns the batch back if the target shard is gone.
    pub fn send(&self, batch: Vec<Envelope>) -> Result<(), Vec<Envelope>> {
        self.sender.send(batch).map_err(|e| e.0)?;
        if self.sleeping.swap(false, Ordering::SeqCst) {
            // A failed wake means the shard's poll is gone: it is exiting.
            let _ = self.waker.wake();
        }
        Ok(())
    }

    /// Wakes the shard whatever its state (shutdown).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// The receiving side, owned by its shard.
pub struct Inbox {
    receiver: Receiver<Vec<Envelope>>,
    sleeping: Arc<AtomicBool>,
}

impl Inbox {
    /// Takes the next batch, if any.
    pub fn try_take(&self) -> Option<Vec<Envelope>> {
        match self.receiver.try_recv() {
            Ok(batch) => Some(batch),
            Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
        }
    }

    /// Announces that the shard is about to block. Returns a batch that
    /// arrived meanwhile (and then the shard must not block).
    pub fn prepare_to_sleep(&self) -> Option<Vec<Envelope>> {
        self.sleeping.store(true, Ordering::SeqCst);
        let batch = self.try_take();
        if batch.is_some() {
            self.sleeping.store(false, Ordering::SeqCst);
        }
        batch
    }

    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

/// Creates one mailbox per waker: the addresses (for everybody) and the
/// inboxes (one for each shard, in order).
pub fn wire(wakers: Vec<Arc<Waker>>) -> (Arc<[Address]>, Vec<Inbox>) {
    let mut addresses = Vec::with_capacity(wakers.len());
    let mut inboxes = Vec::with_capacity(wakers.len());
    for waker in wakers {
        let (sender, receiver) = channel();
        let sleeping = Arc::new(AtomicBool::new(false));
        addresses.push(Address {
            sender,
            waker,
            sleeping: sleeping.clone(),
        });
        inboxes.push(Inbox { receiver, sleeping });
    }
    (addresses.into(), inboxes)
}

/// The shard that holds every session of `owner` (SH_NEW with `owner` mints
/// a token that lands there): FNV-1a of the name, mixed as tokens are.
pub fn shard_of_owner(owner: &str, shards: usize) -> ShardId {
    let hash = owner.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    shard_of(hash, shards)
}

/// The shard that owns `tkn`. A fixed mix (not a seeded hasher) so the same
/// token maps the same way in every process, e.g. when a snapshot is loaded.
pub fn shard_of(tkn: Token, shards: usize) -> ShardId {
    // SplitMix64's finalizer: tokens are random already, but a client may
    // replay arbitrary ones; mixing keeps shards even regardless.
    let mut x = tkn;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % shards as u64) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable_and_spreads() {
        let shards = 4;
        let mut counts = [0usize; 4];
        for tkn in 1..=40_000u64 {
            let s = shard_of(tkn, shards);
            assert_eq!(s, shard_of(tkn, shards));
            counts[s] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(shard_of(12345, 1), 0);
    }

    /// Clients route by these values too (docs/PROTOCOL.md; loadtest's
    /// `--locality` checks the same table): changing the mix breaks them.
    #[test]
    fn shard_of_known_values() {
        let known: [(Token, [ShardId; 4]); 7] = [
            (1, [1, 1, 1, 5]),
            (2, [0, 1, 2, 2]),
            (3, [0, 2, 0, 0]),
            (12345, [1, 0, 1, 1]),
            (0xdead_beef, [0, 2, 2, 2]),
            (u64::MAX, [1, 0, 3, 3]),
            (9_007_199_254_740_993, [0, 1, 2, 2]),
        ];
        for (tkn, want) in known {
            assert_eq!([2, 3, 4, 8].map(|n| shard_of(tkn, n)), want, "token {tkn}");
        }
    }

    /// Every forwarded request's envelope is moved into a batch and out of
    /// it again: a large rare variant must not size them all.
    #[test]
    fn envelopes_stay_small() {
        assert!(std::mem::size_of::<Envelope>() <= 128);
    }

    #[test]
    fn reply_batch_hands_back_each_response_with_its_ticket() {
        let ticket = |seq| Ticket {
            seq,
            ..Ticket::default()
        };
        let mut batch = ReplyBatch::default();
        assert!(batch.is_empty());
        batch.open().extend_from_slice(b"first");
        batch.seal(ticket(1));
        batch.open().extend_from_slice(b"held");
        assert_eq!(batch.unseal(), b"held");
        batch.seal(ticket(2));
        batch.open().extend_from_slice(b"third");
        batch.seal(ticket(3));
        let got: Vec<(u64, &[u8])> = batch.iter().map(|(t, r)| (t.seq, r)).collect();
        assert_eq!(got, [(1, &b"first"[..]), (2, b""), (3, b"third")]);
        let next = ReplyBatch::like(&batch);
        assert!(next.is_empty() && next.bytes.capacity() >= 10);
    }

    #[test]
    fn sleeping_shard_is_woken_once_and_sees_every_batch() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (addresses, inboxes) = wire(vec![waker]);
        let inbox = &inboxes[0];
        assert!(inbox.prepare_to_sleep().is_none());
        addresses[0]
            .send(vec![Envelope::PartDone {
                gather: 1,
                result: PartResult::Ended(1),
            }])
            .unwrap();
        // The flag was consumed by the first sender: no second wake-up.
        assert!(!inbox.sleeping.load(Ordering::SeqCst));
        addresses[0].send(Vec::new()).unwrap();
        let mut batches = 0;
        while inbox.try_take().is_some() {
            batches += 1;
        }
        assert_eq!(batches, 2);
    }
}
