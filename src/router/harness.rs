//! Shards in one thread, without sockets, threads or clocks: the router's
//! own code (decoding, dispatch, routing, fan-outs, gathers) run exactly as
//! the server runs it, with messages between shards moved by hand. For the
//! fuzzers and the property tests, which need to throw millions of requests
//! at it quickly and reproducibly. Each call is answered before it returns;
//! requests enter the shards in turn, so with two or more shards they take
//! the cross-shard paths as a server's connections do.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{Replies, Router, RouterConfig};
use crate::mesh::{Envelope, PostBack, ShardId, Ticket};
use crate::net::connection::Incoming;
use crate::shared_names::SharedNames;
use crate::store::Millis;
use crate::store::budget::MemoryBudget;

pub struct LocalDispatcher {
    shards: Vec<Router>,
    /// What helper threads posted (none while persistence is off, as here).
    posted: Arc<Posted>,
    answers: Answers,
    /// Sequence number of the next request.
    next_seq: u64,
    now: Millis,
}

/// Batches posted by helper threads, delivered by the next pump.
#[derive(Default)]
struct Posted(Mutex<Vec<(ShardId, Vec<Envelope>)>>);

impl PostBack for Posted {
    fn post(&self, to: ShardId, batch: Vec<Envelope>) {
        if let Ok(mut posted) = self.0.lock() {
            posted.push((to, batch));
        }
    }
}

/// The one client's answers, by sequence number.
#[derive(Default)]
struct Answers {
    received: Vec<(u64, Vec<u8>)>,
    /// Events pushed to the client (no request asked for them).
    pushed: Vec<Vec<u8>>,
    /// Whether the shard being driven is the one the client is connected to.
    client_here: bool,
}

impl Replies for Answers {
    fn answer(&mut self, ticket: Ticket, response: &[u8]) {
        self.received.push((ticket.seq, response.to_vec()));
    }

    fn answer_owned(&mut self, ticket: Ticket, response: Vec<u8>) {
        self.received.push((ticket.seq, response));
    }

    fn push(&mut self, _ticket: Ticket, message: Vec<u8>) -> bool {
        self.pushed.push(message);
        true
    }

    fn has_room(&self, _ticket: Ticket) -> Option<bool> {
        Some(true)
    }

    fn connections(&self) -> u64 {
        u64::from(self.client_here)
    }
}

impl LocalDispatcher {
    /// One shard, tokens drawn from a generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_shards(seed, 1)
    }

    /// `shards` shards in one thread; tokens are seeded, so a failing
    /// input replays the same tokens.
    pub fn with_shards(seed: u64, shards: usize) -> Self {
        let shards = shards.max(1);
        let names = Arc::new(SharedNames::default());
        let posted = Arc::new(Posted::default());
        let owners_scattered = Arc::new(AtomicBool::new(false));
        let routers = (0..shards)
            .map(|id| {
                let config = RouterConfig {
                    id,
                    shards,
                    memory: None,
                    persist: None,
                    names: names.clone(),
                    owners_scattered: owners_scattered.clone(),
                    wall_epoch_ms: 0,
                    instance: seed,
                    max_payload: 1 << 20,
                    snapshots: None,
                    event_retention: crate::events::DEFAULT_RETENTION,
                    event_credit: 256 * 1024,
                };
                let rng = StdRng::seed_from_u64(seed ^ id as u64);
                Router::new(config, rng, posted.clone(), 0)
            })
            .collect();
        LocalDispatcher {
            shards: routers,
            posted,
            answers: Answers::default(),
            next_seq: 0,
            now: 0,
        }
    }

    /// The server-wide memory limit (0: none), one budget shared by the
    /// shards as the server shares it. Each store first claims what it
    /// already uses.
    pub fn set_memory_limit(&mut self, bytes: u64) {
        let budget = (bytes > 0).then(|| Arc::new(MemoryBudget::new(bytes, self.shards.len())));
        for router in &mut self.shards {
            router.config.memory = budget.clone();
            router.store.set_memory_budget(budget.clone());
        }
    }

    /// Events pushed to the client since the last call, in order.
    pub fn take_pushed(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.answers.pushed)
    }

    /// Moves the clock on; background expiry runs as a shard turn would.
    pub fn advance(&mut self, ms: Millis) {
        self.now += ms;
        self.pump();
    }

    /// Sessions, keys and accounted bytes over every shard.
    pub fn totals(&mut self) -> (u64, u64, u64) {
        let now = self.now;
        self.shards.iter_mut().fold((0, 0, 0), |(s, k, b), router| {
            let (sessions, keys) = loop {
                if let Some(counts) = router.store.live_counts(now, usize::MAX) {
                    break counts;
                }
            };
            (s + sessions, k + keys, b + router.store.memory_used())
        })
    }

    /// One WebSocket message in (text when `text`), its response out.
    pub fn handle(&mut self, message: &[u8], text: bool) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let incoming = if !text {
            Incoming::Binary
        } else if std::str::from_utf8(message).is_err() {
            Incoming::InvalidUtf8
        } else {
            Incoming::Text
        };
        let entry = (seq % self.shards.len() as u64) as usize;
        let ticket = Ticket {
            conn: 0,
            conn_id: 0,
            seq,
            ..Ticket::default()
        };
        let router = &mut self.shards[entry];
        router.set_now(self.now);
        let request = router.decode(incoming, message);
        self.answers.client_here = entry == 0;
        router.dispatch(ticket, request, &mut self.answers);
        self.pump();
        let at = self.answers.received.iter().position(|(s, _)| *s == seq);
        match at {
            Some(at) => self.answers.received.swap_remove(at).1,
            // Every request is answered; an empty reply would fail any check.
            None => Vec::new(),
        }
    }

    /// Runs shard turns until no message is in flight and no shard has
    /// work left (background expiry, counts waiting for it).
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            let mut mail: Vec<(ShardId, Vec<Envelope>)> = Vec::new();
            if let Ok(mut posted) = self.posted.0.lock() {
                mail.append(&mut posted);
            }
            for router in &mut self.shards {
                mail.extend(router.take_outbox());
            }
            for (to, batch) in mail {
                moved = true;
                let router = &mut self.shards[to];
                router.set_now(self.now);
                self.answers.client_here = to == 0;
                router.receive(batch, &mut self.answers);
            }
            let mut busy = false;
            for (id, router) in self.shards.iter_mut().enumerate() {
                router.set_now(self.now);
                self.answers.client_here = id == 0;
                router.end_turn(&mut self.answers);
                busy |= router.has_work();
            }
            // A turn's end may have answered a part for another shard.
            let mail_left = self
                .shards
                .iter()
                .any(|router| router.outbox.iter().any(|batch| !batch.is_empty()));
            if !moved && !busy && !mail_left {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(d: &mut LocalDispatcher, request: &str) -> String {
        String::from_utf8(d.handle(request.as_bytes(), true)).unwrap()
    }

    #[test]
    fn runs_every_kind_of_command() {
        let mut d = LocalDispatcher::new(7);
        let new = call(&mut d, r#"{"SH_NEW":{"name":"n","shared":true}}"#);
        let tkn: u64 = new
            .split("\"tkn\":")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|t| t.parse().ok())
            .unwrap();
        assert_eq!(
            call(
                &mut d,
                &format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"a":1E2}}}}}}"#)
            ),
            format!(r#"{{"SH_SET_RSP":{{"st":1,"tkn":{tkn}}}}}"#)
        );
        assert_eq!(
            call(&mut d, r#"{"SH_OPEN":{"name":"n"}}"#),
            format!(r#"{{"SH_OPEN_RSP":{{"st":1,"tkn":{tkn},"name":"n"}}}}"#)
        );
        assert_eq!(
            call(&mut d, &format!(r#"{{"SH_EXISTS":{{"tkns":[{tkn},3]}}}}"#)),
            format!(r#"{{"SH_EXISTS_RSP":{{"st":1,"exist":[{tkn}]}}}}"#)
        );
        assert_eq!(
            call(&mut d, r#"{"SH_INFO_ALL":{}}"#),
            r#"{"SH_INFO_ALL_RSP":{"st":1,"totalSessions":1,"totalKeys":1}}"#
        );
        assert!(call(&mut d, r#"{"SV_INFO":{}}"#).contains(r#""shards":1"#));
        assert_eq!(
            call(&mut d, r#"{"SH_END_ALL":{}}"#),
            r#"{"SH_END_ALL_RSP":{"st":1,"cnt":1}}"#
        );
        assert_eq!(d.totals(), (0, 0, 0));
        assert!(call(&mut d, r#"{"SH_SAVE":{"name":"x"}}"#).contains(r#""st":14"#));
        assert!(
            String::from_utf8(d.handle(b"\xff", true))
                .unwrap()
                .contains(r#""st":3"#)
        );
        assert!(
            String::from_utf8(d.handle(b"{}", false))
                .unwrap()
                .contains(r#""st":2"#)
        );
    }

    fn token_of(response: &str) -> u64 {
        response
            .split("\"tkn\":")
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .and_then(|t| t.parse().ok())
            .unwrap()
    }

    #[test]
    fn two_shards_route_fan_out_and_gather() {
        let mut d = LocalDispatcher::with_shards(11, 2);
        // Requests enter shards 0 and 1 in turn; each SH_NEW mints a token
        // its entry shard owns, so half the later requests cross.
        let tkns: Vec<u64> = (0..8)
            .map(|i| token_of(&call(&mut d, &format!(r#"{{"SH_NEW":{{"name":"s{i}"}}}}"#))))
            .collect();
        let owners: Vec<usize> = tkns.iter().map(|&t| crate::mesh::shard_of(t, 2)).collect();
        assert_eq!(owners, [0, 1, 0, 1, 0, 1, 0, 1]);
        for &tkn in &tkns {
            for _ in 0..2 {
                assert_eq!(
                    call(
                        &mut d,
                        &format!(r#"{{"SH_SET":{{"tkn":{tkn},"keys":{{"k":[{tkn}]}}}}}}"#)
                    ),
                    format!(r#"{{"SH_SET_RSP":{{"st":1,"tkn":{tkn}}}}}"#)
                );
            }
            assert_eq!(
                call(
                    &mut d,
                    &format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["k"]}}}}"#)
                ),
                format!(r#"{{"SH_GET_RSP":{{"st":1,"tkn":{tkn},"keys":{{"k":[{tkn}]}}}}}}"#)
            );
        }
        assert_eq!(
            call(&mut d, r#"{"SH_INFO_ALL":{}}"#),
            r#"{"SH_INFO_ALL_RSP":{"st":1,"totalSessions":8,"totalKeys":8}}"#
        );
        let exists = format!(r#"{{"SH_EXISTS":{{"tkns":[{},5,{}]}}}}"#, tkns[1], tkns[0]);
        assert_eq!(
            call(&mut d, &exists),
            format!(
                r#"{{"SH_EXISTS_RSP":{{"st":1,"exist":[{},{}]}}}}"#,
                tkns[1], tkns[0]
            )
        );
        let info = call(&mut d, r#"{"SV_INFO":{}}"#);
        assert!(
            info.contains(r#""shards":2,"sessions":8,"keys":8,"connections":1"#),
            "{info}"
        );
        assert_eq!(
            call(&mut d, r#"{"SH_END_ALL":{}}"#),
            r#"{"SH_END_ALL_RSP":{"st":1,"cnt":8}}"#
        );
        assert_eq!(d.totals(), (0, 0, 0));
    }

    #[test]
    fn a_shared_name_held_on_another_shard_is_freed_by_its_expiry() {
        let mut d = LocalDispatcher::with_shards(5, 2);
        let first = call(
            &mut d,
            r#"{"SH_NEW":{"name":"cart","shared":true,"expiry":{"duration":1,"deleteSession":true}}}"#,
        );
        let holder = token_of(&first);
        // The next request enters the other shard: the name is taken there.
        assert!(
            call(&mut d, r#"{"SH_NEW":{"name":"cart","shared":true}}"#).contains(r#""st":103"#)
        );
        assert_eq!(
            call(&mut d, r#"{"SH_OPEN":{"name":"cart"}}"#),
            format!(r#"{{"SH_OPEN_RSP":{{"st":1,"tkn":{holder},"name":"cart"}}}}"#)
        );
        // Past the deadline, with no background pass in between: the other
        // shard asks the holder's shard to settle it, then claims the name.
        d.now += 1000;
        let second = call(&mut d, r#"{"SH_NEW":{"name":"cart","shared":true}}"#);
        assert!(second.contains(r#""st":1"#), "{second}");
        assert_ne!(token_of(&second), holder);
        assert_eq!(d.totals().0, 1);
    }

    #[test]
    fn counts_wait_for_background_expiry_on_every_shard() {
        let mut d = LocalDispatcher::with_shards(3, 2);
        for _ in 0..10_000 {
            call(
                &mut d,
                r#"{"SH_NEW":{"expiry":{"duration":2,"deleteSession":true}}}"#,
            );
        }
        call(&mut d, r#"{"SH_NEW":{}}"#);
        // 10,000 due at once is more than one turn's expiry budget: the
        // count is answered only once none of them is left to settle.
        d.now += 2000;
        assert_eq!(
            call(&mut d, r#"{"SH_INFO_ALL":{}}"#),
            r#"{"SH_INFO_ALL_RSP":{"st":1,"totalSessions":1,"totalKeys":0}}"#
        );
    }

    #[test]
    fn a_shared_name_held_here_is_settled_before_creating_on_the_owners_shard() {
        let mut d = LocalDispatcher::with_shards(9, 2);
        // Entry shards alternate 0, 1, 0, ...: find an owner whose shard is
        // the other one than the entry of the second SH_NEW (seq 2, shard 0).
        let owner = (0..)
            .map(|i| format!("owner{i}"))
            .find(|o| crate::mesh::shard_of_owner(o, 2) == 1)
            .unwrap();
        let holder = token_of(&call(
            &mut d,
            r#"{"SH_NEW":{"name":"n","shared":true,"expiry":{"duration":1,"deleteSession":true}}}"#,
        ));
        assert_eq!(crate::mesh::shard_of(holder, 2), 0);
        call(&mut d, r#"{"SV_INFO":{}}"#);
        // Past the holder's deadline, nothing settled it yet: the request
        // enters shard 0 (the holder's) and is created on shard 1.
        d.now += 1500;
        let created = call(
            &mut d,
            &format!(r#"{{"SH_NEW":{{"name":"n","shared":true,"owner":"{owner}"}}}}"#),
        );
        assert!(created.contains(r#""st":1"#), "{created}");
        assert_eq!(crate::mesh::shard_of(token_of(&created), 2), 1);
    }
}
