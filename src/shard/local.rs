//! Requests run the way a one-shard server runs them, without sockets,
//! threads or clocks: for the fuzzer and the property tests, which need to
//! throw millions of requests at decoding and dispatch quickly and
//! reproducibly. It uses the same decoding, command and gather code as the
//! shards; only the routing (everything is local) is its own.

use std::sync::Arc;

use rand::Rng as _;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::exec;
use super::gather::{Gather, GatherKind, ServerFacts};
use crate::mesh::{PartResult, Ticket};
use crate::protocol::request::{reject_binary, reject_not_utf8};
use crate::protocol::{Command, RequestParser, Status, encode_rejection, encode_status};
use crate::shared_names::SharedNames;
use crate::store::{Millis, SessionStore};

pub struct LocalDispatcher {
    store: SessionStore,
    names: Arc<SharedNames>,
    /// Seeded, so a failing input replays the same tokens.
    rng: StdRng,
    parser: RequestParser,
    now: Millis,
    max_memory: u64,
}

impl LocalDispatcher {
    pub fn new(seed: u64) -> Self {
        let names = Arc::new(SharedNames::default());
        LocalDispatcher {
            store: SessionStore::new(names.clone()),
            names,
            rng: StdRng::seed_from_u64(seed),
            parser: RequestParser::default(),
            now: 0,
            max_memory: 0,
        }
    }

    pub fn set_memory_limit(&mut self, bytes: u64) {
        self.max_memory = bytes;
        self.store.set_memory_limit(bytes);
    }

    /// Moves the clock on; background expiry runs as a shard turn would.
    pub fn advance(&mut self, ms: Millis) {
        self.now += ms;
        self.store.expire_due(self.now, 4096);
    }

    /// Sessions, keys and accounted bytes.
    pub fn totals(&mut self) -> (u64, u64, u64) {
        let (sessions, keys) = self.settled_counts();
        (sessions, keys, self.store.memory_used())
    }

    fn settled_counts(&mut self) -> (u64, u64) {
        loop {
            if let Some(counts) = self.store.live_counts(self.now, usize::MAX) {
                return counts;
            }
        }
    }

    /// One WebSocket message in (text when `text`), its response out.
    pub fn handle(&mut self, message: &[u8], text: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        let parsed = if !text {
            Err(reject_binary())
        } else if std::str::from_utf8(message).is_err() {
            Err(reject_not_utf8())
        } else {
            self.parser.parse(message)
        };
        let command = match parsed {
            Ok(command) => command,
            Err(rejection) => {
                encode_rejection(&mut out, &rejection);
                return out;
            }
        };
        let now = self.now;
        match command {
            Command::New(new) => {
                let rng = &mut self.rng;
                exec::new_session(
                    &mut self.store,
                    &self.names,
                    || rng.next_u64(),
                    new,
                    now,
                    &mut out,
                );
            }
            Command::Open { name } => {
                exec::open_session(&mut self.store, &self.names, &name, now, &mut out);
            }
            Command::EndAll => {
                let ended = self.store.end_all(now);
                out = self.gathered(GatherKind::end_all(), PartResult::Ended(ended));
            }
            Command::InfoAll | Command::ServerInfo => {
                let (sessions, keys) = self.settled_counts();
                let kind = if matches!(command, Command::InfoAll) {
                    GatherKind::info_all()
                } else {
                    GatherKind::server_info()
                };
                let counts = PartResult::Counts {
                    sessions,
                    keys,
                    connections: 1,
                    memory_used: self.store.memory_used(),
                    session_not_exist: 0,
                };
                out = self.gathered(kind, counts);
            }
            Command::Exists { tkns } => {
                let found = tkns
                    .iter()
                    .enumerate()
                    .filter(|&(_, &tkn)| self.store.exists(tkn, now))
                    .map(|(i, _)| i as u32)
                    .collect();
                out = self.gathered(GatherKind::exists(tkns), PartResult::Exists(found));
            }
            Command::Save { .. } | Command::Load { .. } => {
                let m = Some("persistence is disabled");
                encode_status(&mut out, command.name(), Status::CommandDisabled, None, m);
            }
            command => {
                exec::run(&mut self.store, command, now, &mut out);
            }
        }
        out
    }

    fn gathered(&self, kind: GatherKind, result: PartResult) -> Vec<u8> {
        let ticket = Ticket {
            conn: 0,
            conn_id: 0,
            seq: 0,
        };
        let mut gather = Gather::new(ticket, kind, 1);
        gather.merge(result);
        gather.encode(&ServerFacts {
            shards: 1,
            persist_enabled: false,
            uptime_s: self.now / 1000,
            max_memory: self.max_memory,
        })
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
}
