//! Fan-out commands in progress: what each shard answered so far, and the
//! response once every part is in.

use crate::mesh::{PartResult, Ticket};
use crate::protocol::{Response, Status, Token};

pub enum GatherKind {
    EndAll {
        ended: u64,
    },
    InfoAll {
        sessions: u64,
        keys: u64,
    },
    ServerInfo {
        sessions: u64,
        keys: u64,
        connections: u64,
    },
    Exists {
        tkns: Vec<Token>,
        found: Vec<bool>,
    },
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
        GatherKind::ServerInfo {
            sessions: 0,
            keys: 0,
            connections: 0,
        }
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
                GatherKind::ServerInfo {
                    sessions,
                    keys,
                    connections,
                },
                PartResult::Counts {
                    sessions: s,
                    keys: k,
                    connections: c,
                },
            ) => {
                *sessions += s;
                *keys += k;
                *connections += c;
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

    pub fn encode(self, shards: usize, persist_enabled: bool, uptime_s: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
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
            GatherKind::ServerInfo {
                sessions,
                keys,
                connections,
            } => Response::new(&mut out, "SV_INFO", Status::Ok)
                .str("serverVersion", env!("CARGO_PKG_VERSION"))
                .bool("persistEnabled", persist_enabled)
                .u64("shards", shards as u64)
                .u64("sessions", sessions)
                .u64("keys", keys)
                .u64("connections", connections)
                .u64("uptimeSeconds", uptime_s)
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
