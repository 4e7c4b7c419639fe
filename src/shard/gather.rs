//! Fan-out commands in progress: what each shard answered so far, and the
//! response once every part is in.

use crate::mesh::{PartResult, Ticket};
use crate::protocol::{Response, Status, Token};

/// What `SV_INFO` sums over the shards.
#[derive(Default)]
pub struct ServerTotals {
    sessions: u64,
    keys: u64,
    connections: u64,
    memory_used: u64,
    session_not_exist: u64,
}

/// What `SV_INFO` reports about the server itself.
pub struct ServerFacts {
    pub shards: usize,
    pub persist_enabled: bool,
    pub uptime_s: u64,
    pub max_memory: u64,
}

pub enum GatherKind {
    EndAll { ended: u64 },
    InfoAll { sessions: u64, keys: u64 },
    ServerInfo(ServerTotals),
    Exists { tkns: Vec<Token>, found: Vec<bool> },
}

impl GatherKind {
    pub fn end_all() -> Self {
        GatherKind::EndAll { ended: 0 }
    }

    pub fn info_all() -> Self {
        GatherKind::InfoAll {
            sessions: 0,
            keys: 0,
        }
    }

    pub fn server_info() -> Self {
        GatherKind::ServerInfo(ServerTotals::default())
    }

    pub fn exists(tkns: Vec<Token>) -> Self {
        let found = vec![false; tkns.len()];
        GatherKind::Exists { tkns, found }
    }
}

pub struct Gather {
    pub ticket: Ticket,
    kind: GatherKind,
    /// Parts not answered yet.
    remaining: usize,
}

impl Gather {
    pub fn new(ticket: Ticket, kind: GatherKind, parts: usize) -> Self {
        Gather {
            ticket,
            kind,
            remaining: parts,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    pub fn merge(&mut self, result: PartResult) {
        self.remaining = self.remaining.saturating_sub(1);
        match (&mut self.kind, result) {
            (GatherKind::EndAll { ended }, PartResult::Ended(n)) => *ended += n,
            (
                GatherKind::InfoAll { sessions, keys },
                PartResult::Counts {
                    sessions: s,
                    keys: k,
                    ..
                },
            ) => {
                *sessions += s;
                *keys += k;
            }
            (
                GatherKind::ServerInfo(totals),
                PartResult::Counts {
                    sessions,
                    keys,
                    connections,
                    memory_used,
                    session_not_exist,
                },
            ) => {
                totals.sessions += sessions;
                totals.keys += keys;
                totals.connections += connections;
                totals.memory_used += memory_used;
                totals.session_not_exist += session_not_exist;
            }
            (GatherKind::Exists { found, .. }, PartResult::Exists(indexes)) => {
                for i in indexes {
                    if let Some(f) = found.get_mut(i as usize) {
                        *f = true;
                    }
                }
            }
            // A part answered with the wrong kind cannot happen: parts are
            // made from the kind. Ignoring it keeps the count right.
            _ => {}
        }
    }

    pub fn encode(self, server: &ServerFacts) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        match self.kind {
            GatherKind::EndAll { ended } => Response::new(&mut out, "SH_END_ALL", Status::Ok)
                .u64("cnt", ended)
                .finish(),
            GatherKind::InfoAll { sessions, keys } => {
                Response::new(&mut out, "SH_INFO_ALL", Status::Ok)
                    .u64("totalSessions", sessions)
                    .u64("totalKeys", keys)
                    .finish()
            }
            GatherKind::ServerInfo(totals) => Response::new(&mut out, "SV_INFO", Status::Ok)
                .str("serverVersion", env!("CARGO_PKG_VERSION"))
                .bool("persistEnabled", server.persist_enabled)
                .u64("shards", server.shards as u64)
                .u64("sessions", totals.sessions)
                .u64("keys", totals.keys)
                .u64("connections", totals.connections)
                .u64("uptimeSeconds", server.uptime_s)
                .u64("memoryUsed", totals.memory_used)
                .u64("maxMemory", server.max_memory)
                .u64("sessionNotExist", totals.session_not_exist)
                .finish(),
            GatherKind::Exists { tkns, found } => {
                let exist = tkns
                    .into_iter()
                    .zip(found)
                    .filter_map(|(tkn, found)| found.then_some(tkn));
                Response::new(&mut out, "SH_EXISTS", Status::Ok)
                    .u64_array("exist", exist)
                    .finish()
            }
        }
        out
    }
}
