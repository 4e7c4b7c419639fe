//! What each workload's operations look like on the wire, for both targets.
//!
//! Owns: the choice of the next operation (from a connection's seeded
//! generator), the pre-encoded constant pieces of every request, and which
//! reply each request expects. The driver calls [`Encoder::encode`] once per
//! phase of an operation and checks replies against the returned [`Check`]s;
//! it never looks inside a request.
//!
//! | workload  | nemesisdb                                   | Redis                               |
//! |-----------|---------------------------------------------|-------------------------------------|
//! | get       | SH_GET one key                              | HGET                                |
//! | set       | SH_SET one key                              | HSET one field                      |
//! | mixed     | 80% get, 20% set                            | 80% HGET, 20% HSET                  |
//! | sliding   | SH_GET (session: 3600 s, extendOnGet)       | HGET + EXPIRE 3600                  |
//! | lifecycle | SH_NEW (60 s) ; SH_SET two keys + SH_GET + SH_END | HSET two fields + EXPIRE 60 + HGETALL + DEL |
//! | expiry    | SH_NEW (1-3 s) ; SH_SET two keys            | HSET two fields + EXPIRE 1-3        |
//! | populate  | SH_NEW (3600 s) ; SH_SET two keys           | HSET two fields + EXPIRE 3600       |
//!
//! A `;` separates phases: on nemesisdb the server picks the token, so the
//! requests that use it can only go out once SH_NEW's reply is in. Redis keys
//! are named by the client, so every Redis operation is a single phase.

use crate::config::{Protocol, Workload};
use crate::resp;
use crate::rng::Rng;
use crate::ws;

/// Which key/field of a session an operation touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    User,
    Cart,
}

/// How a created session expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Never (the sessions behind get, set and mixed).
    Forever,
    /// 3600 s, extended by every get (behind sliding).
    Sliding,
    /// 3600 s (populate).
    Hour,
    /// 1 to 3 s (expiry).
    Seconds(u8),
}

/// One operation, with its random choices already made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get {
        session: u32,
        key: Key,
    },
    Set {
        session: u32,
        key: Key,
    },
    Sliding {
        session: u32,
        key: Key,
    },
    /// Create, fill, read and end a session; `id` names it on Redis.
    Lifecycle {
        id: u64,
    },
    /// End (SH_END | DEL) a session created in set-up: the untimed teardown,
    /// so repeated runs leave nothing behind.
    End {
        session: u32,
    },
    /// Create a session with keys `user` and `cart`. `index` names it on
    /// Redis (`s:<index>`), and orders the tokens collected during setup.
    Create {
        index: u64,
        lifetime: Lifetime,
    },
}

/// What a reply must be for its request to count as a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// nemesisdb `st` 1; Redis anything but an error.
    Ok,
    /// nemesisdb `st` 1 with a `tkn` (SH_NEW), which the next phase uses.
    Token,
    /// Redis integer >= 1 (EXPIRE or DEL of a key that must exist).
    Positive,
}

/// What one request's reply must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub check: Check,
    /// nemesisdb: the reply's member name (`SH_GET_RSP`); empty for Redis.
    pub reply: &'static [u8],
    /// nemesisdb: the token a successful reply must echo.
    pub tkn: Option<u64>,
}

impl Expect {
    fn redis(check: Check) -> Expect {
        Expect {
            check,
            reply: b"",
            tkn: None,
        }
    }
}

/// The requests of one phase, in the order they were written.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phase {
    pub checks: [Option<Expect>; 4],
    /// False when this is the operation's last phase.
    pub more: bool,
}

impl Phase {
    fn push(&mut self, c: Expect) {
        if let Some(slot) = self.checks.iter_mut().find(|s| s.is_none()) {
            *slot = Some(c);
        }
    }

    pub fn len(&self) -> usize {
        self.checks.iter().filter(|c| c.is_some()).count()
    }
}

/// The sessions that get/set/mixed/sliding pick from: on nemesisdb each
/// token's decimal digits, on Redis each key as an encoded bulk string, so a
/// request is a few copies of ready bytes.
#[derive(Debug, Default)]
pub struct Sessions {
    arena: Vec<u8>,
    ends: Vec<usize>,
    /// nemesisdb: the tokens as numbers, to check replies echo them.
    tokens: Vec<u64>,
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.arena[start..self.ends[i]]
    }

    /// The token of nemesisdb session `i`.
    pub fn token(&self, i: usize) -> Option<u64> {
        self.tokens.get(i).copied()
    }

    fn push(&mut self, item: &[u8]) {
        self.arena.extend_from_slice(item);
        self.ends.push(self.arena.len());
    }

    /// nemesisdb sessions, from the tokens setup collected.
    pub fn from_tokens(tokens: impl IntoIterator<Item = u64>) -> Sessions {
        let mut s = Sessions::default();
        let mut b = itoa::Buffer::new();
        for t in tokens {
            s.tokens.push(t);
            s.push(b.format(t).as_bytes());
        }
        s
    }

    /// Redis sessions `s:0` .. `s:<n-1>`.
    pub fn redis_keys(n: u64) -> Sessions {
        let mut s = Sessions::default();
        let mut item = Vec::new();
        for i in 0..n {
            item.clear();
            redis_key(&mut item, b"s:", i);
            s.push(&item);
        }
        s
    }
}

/// Appends the bulk string `<prefix><n>`.
fn redis_key(out: &mut Vec<u8>, prefix: &[u8], n: u64) {
    let mut b = itoa::Buffer::new();
    let digits = b.format(n).as_bytes();
    let mut l = itoa::Buffer::new();
    out.push(b'$');
    out.extend_from_slice(l.format(prefix.len() + digits.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(prefix);
    out.extend_from_slice(digits);
    out.extend_from_slice(b"\r\n");
}

/// Builds requests from pre-encoded pieces. One per run, shared by all threads.
pub struct Encoder {
    protocol: Protocol,
    workload: Workload,
    sessions: Sessions,
    p: Pieces,
}

/// The constant bytes of every request, encoded once at start-up.
struct Pieces {
    // nemesisdb: JSON text around a token.
    get_open: Vec<u8>,
    get_user: Vec<u8>,
    get_cart: Vec<u8>,
    get_both: Vec<u8>,
    set_open: Vec<u8>,
    set_user: Vec<u8>,
    set_cart: Vec<u8>,
    set_both: Vec<u8>,
    end_open: Vec<u8>,
    close2: Vec<u8>,
    new_forever: Vec<u8>,
    new_sliding: Vec<u8>,
    new_hour: Vec<u8>,
    new_minute: Vec<u8>,
    new_seconds: [Vec<u8>; 3],
    // Redis: the bytes before and after a key's bulk string.
    hget: Vec<u8>,
    field_user: Vec<u8>,
    field_cart: Vec<u8>,
    hset1: Vec<u8>,
    value: Vec<u8>,
    hset2: Vec<u8>,
    both_fields: Vec<u8>,
    expire: Vec<u8>,
    secs_3600: Vec<u8>,
    secs_60: Vec<u8>,
    secs: [Vec<u8>; 3],
    hgetall: Vec<u8>,
    del: Vec<u8>,
}

impl Pieces {
    fn new(value: &str) -> Pieces {
        let json = |s: String| s.into_bytes();
        let new = |expiry: &str| json(format!(r#"{{"SH_NEW":{{{expiry}}}}}"#));
        let mut both_fields = Vec::new();
        for f in [&b"user"[..], value.as_bytes(), b"cart", value.as_bytes()] {
            resp::bulk(&mut both_fields, f);
        }
        let bulk = |s: &[u8]| {
            let mut v = Vec::new();
            resp::bulk(&mut v, s);
            v
        };
        Pieces {
            get_open: br#"{"SH_GET":{"tkn":"#.to_vec(),
            get_user: br#","keys":["user"]}}"#.to_vec(),
            get_cart: br#","keys":["cart"]}}"#.to_vec(),
            get_both: br#","keys":["user","cart"]}}"#.to_vec(),
            set_open: br#"{"SH_SET":{"tkn":"#.to_vec(),
            set_user: json(format!(r#","keys":{{"user":"{value}"}}}}}}"#)),
            set_cart: json(format!(r#","keys":{{"cart":"{value}"}}}}}}"#)),
            set_both: json(format!(
                r#","keys":{{"user":"{value}","cart":"{value}"}}}}}}"#
            )),
            end_open: br#"{"SH_END":{"tkn":"#.to_vec(),
            close2: b"}}".to_vec(),
            new_forever: new(""),
            new_sliding: new(
                r#""expiry":{"duration":3600,"deleteSession":true,"extendOnGet":true}"#,
            ),
            new_hour: new(r#""expiry":{"duration":3600,"deleteSession":true}"#),
            new_minute: new(r#""expiry":{"duration":60,"deleteSession":true}"#),
            new_seconds: [1, 2, 3].map(|d| {
                new(&format!(
                    r#""expiry":{{"duration":{d},"deleteSession":true}}"#
                ))
            }),
            hget: b"*3\r\n$4\r\nHGET\r\n".to_vec(),
            field_user: bulk(b"user"),
            field_cart: bulk(b"cart"),
            hset1: b"*4\r\n$4\r\nHSET\r\n".to_vec(),
            value: bulk(value.as_bytes()),
            hset2: b"*6\r\n$4\r\nHSET\r\n".to_vec(),
            both_fields,
            expire: b"*3\r\n$6\r\nEXPIRE\r\n".to_vec(),
            secs_3600: bulk(b"3600"),
            secs_60: bulk(b"60"),
            secs: [bulk(b"1"), bulk(b"2"), bulk(b"3")],
            hgetall: b"*2\r\n$7\r\nHGETALL\r\n".to_vec(),
            del: b"*2\r\n$3\r\nDEL\r\n".to_vec(),
        }
    }
}

/// A value of `size` letters and digits drawn from the run's seed.
pub fn value_text(size: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = Rng::new(seed, u64::MAX);
    (0..size)
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize] as char)
        .collect()
}

impl Encoder {
    pub fn new(protocol: Protocol, workload: Workload, value: &str, sessions: Sessions) -> Encoder {
        Encoder {
            protocol,
            workload,
            sessions,
            p: Pieces::new(value),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The next operation of the timed workload. `id` must be unique within
    /// the run (it names lifecycle/expiry sessions on Redis).
    pub fn choose(&self, rng: &mut Rng, id: u64) -> Op {
        let n = self.sessions.len().max(1) as u64;
        let session = |rng: &mut Rng| rng.below(n) as u32;
        let key = |rng: &mut Rng| {
            if rng.next_u64() & 1 == 0 {
                Key::User
            } else {
                Key::Cart
            }
        };
        match self.workload {
            Workload::Get => Op::Get {
                session: session(rng),
                key: key(rng),
            },
            Workload::Set => Op::Set {
                session: session(rng),
                key: key(rng),
            },
            Workload::Mixed => {
                let (s, k) = (session(rng), key(rng));
                if rng.percent(80) {
                    Op::Get { session: s, key: k }
                } else {
                    Op::Set { session: s, key: k }
                }
            }
            Workload::Sliding => Op::Sliding {
                session: session(rng),
                key: key(rng),
            },
            Workload::Lifecycle => Op::Lifecycle { id },
            Workload::Expiry => Op::Create {
                index: id,
                lifetime: Lifetime::Seconds(1 + rng.below(3) as u8),
            },
            Workload::Populate => Op::Create {
                index: id,
                lifetime: Lifetime::Hour,
            },
        }
    }

    /// Appends phase `phase` of `op` to `out`. `token` is the one SH_NEW
    /// returned in phase 0 (nemesisdb only).
    pub fn encode(&self, op: Op, phase: u8, token: u64, out: &mut Vec<u8>, rng: &mut Rng) -> Phase {
        match self.protocol {
            Protocol::Ws => self.encode_ws(op, phase, token, out, rng),
            Protocol::Redis => self.encode_redis(op, out),
        }
    }

    fn encode_ws(&self, op: Op, phase: u8, token: u64, out: &mut Vec<u8>, rng: &mut Rng) -> Phase {
        let p = &self.p;
        let mut ph = Phase::default();
        let mut text = |parts: &[&[u8]], check: Check, reply, tkn, ph: &mut Phase| {
            ws::write_frame(out, ws::OP_TEXT, parts, rng);
            ph.push(Expect { check, reply, tkn });
        };
        const GET: &[u8] = b"SH_GET_RSP";
        const SET: &[u8] = b"SH_SET_RSP";
        const END: &[u8] = b"SH_END_RSP";
        const NEW: &[u8] = b"SH_NEW_RSP";
        match op {
            Op::Get { session, key } | Op::Sliding { session, key } => {
                let tail = if key == Key::User {
                    &p.get_user
                } else {
                    &p.get_cart
                };
                let (t, tkn) = (
                    self.sessions.get(session as usize),
                    self.sessions.token(session as usize),
                );
                text(&[&p.get_open, t, tail], Check::Ok, GET, tkn, &mut ph);
            }
            Op::Set { session, key } => {
                let tail = if key == Key::User {
                    &p.set_user
                } else {
                    &p.set_cart
                };
                let (t, tkn) = (
                    self.sessions.get(session as usize),
                    self.sessions.token(session as usize),
                );
                text(&[&p.set_open, t, tail], Check::Ok, SET, tkn, &mut ph);
            }
            Op::End { session } => {
                let (t, tkn) = (
                    self.sessions.get(session as usize),
                    self.sessions.token(session as usize),
                );
                text(&[&p.end_open, t, &p.close2], Check::Ok, END, tkn, &mut ph);
            }
            Op::Lifecycle { .. } if phase == 0 => {
                text(&[&p.new_minute], Check::Token, NEW, None, &mut ph);
                ph.more = true;
            }
            Op::Create { lifetime, .. } if phase == 0 => {
                let new = match lifetime {
                    Lifetime::Forever => &p.new_forever,
                    Lifetime::Sliding => &p.new_sliding,
                    Lifetime::Hour => &p.new_hour,
                    Lifetime::Seconds(s) => &p.new_seconds[(s.clamp(1, 3) - 1) as usize],
                };
                text(&[new], Check::Token, NEW, None, &mut ph);
                ph.more = true;
            }
            Op::Lifecycle { .. } => {
                let mut b = itoa::Buffer::new();
                let t = b.format(token).as_bytes();
                let tkn = Some(token);
                text(&[&p.set_open, t, &p.set_both], Check::Ok, SET, tkn, &mut ph);
                text(&[&p.get_open, t, &p.get_both], Check::Ok, GET, tkn, &mut ph);
                text(&[&p.end_open, t, &p.close2], Check::Ok, END, tkn, &mut ph);
            }
            Op::Create { .. } => {
                let mut b = itoa::Buffer::new();
                let t = b.format(token).as_bytes();
                text(
                    &[&p.set_open, t, &p.set_both],
                    Check::Ok,
                    SET,
                    Some(token),
                    &mut ph,
                );
            }
        }
        ph
    }

    fn encode_redis(&self, op: Op, out: &mut Vec<u8>) -> Phase {
        let p = &self.p;
        let mut ph = Phase::default();
        let field = |k: Key| {
            if k == Key::User {
                &p.field_user
            } else {
                &p.field_cart
            }
        };
        match op {
            Op::Get { session, key } => {
                let k = self.sessions.get(session as usize);
                for part in [&p.hget[..], k, field(key)] {
                    out.extend_from_slice(part);
                }
                ph.push(Expect::redis(Check::Ok));
            }
            Op::Set { session, key } => {
                let k = self.sessions.get(session as usize);
                for part in [&p.hset1[..], k, field(key), &p.value] {
                    out.extend_from_slice(part);
                }
                ph.push(Expect::redis(Check::Ok));
            }
            Op::Sliding { session, key } => {
                let k = self.sessions.get(session as usize);
                for part in [&p.hget[..], k, field(key), &p.expire, k, &p.secs_3600] {
                    out.extend_from_slice(part);
                }
                ph.push(Expect::redis(Check::Ok));
                ph.push(Expect::redis(Check::Positive));
            }
            Op::End { session } => {
                let k = self.sessions.get(session as usize);
                for part in [&p.del[..], k] {
                    out.extend_from_slice(part);
                }
                ph.push(Expect::redis(Check::Positive));
            }
            Op::Lifecycle { id } => {
                let mut k = Vec::with_capacity(32);
                redis_key(&mut k, b"lc:", id);
                for part in [&p.hset2[..], &k, &p.both_fields] {
                    out.extend_from_slice(part);
                }
                for part in [&p.expire[..], &k, &p.secs_60] {
                    out.extend_from_slice(part);
                }
                for part in [&p.hgetall[..], &k, &p.del, &k] {
                    out.extend_from_slice(part);
                }
                ph.push(Expect::redis(Check::Ok));
                ph.push(Expect::redis(Check::Positive));
                ph.push(Expect::redis(Check::Ok));
                ph.push(Expect::redis(Check::Positive));
            }
            Op::Create { index, lifetime } => {
                let mut k = Vec::with_capacity(32);
                let prefix: &[u8] = if matches!(lifetime, Lifetime::Seconds(_)) {
                    b"ex:"
                } else {
                    b"s:"
                };
                redis_key(&mut k, prefix, index);
                for part in [&p.hset2[..], &k, &p.both_fields] {
                    out.extend_from_slice(part);
                }
                ph.push(Expect::redis(Check::Ok));
                let secs = match lifetime {
                    Lifetime::Forever => None,
                    Lifetime::Sliding | Lifetime::Hour => Some(&p.secs_3600),
                    Lifetime::Seconds(s) => Some(&p.secs[(s.clamp(1, 3) - 1) as usize]),
                };
                if let Some(secs) = secs {
                    for part in [&p.expire[..], &k, secs] {
                        out.extend_from_slice(part);
                    }
                    ph.push(Expect::redis(Check::Positive));
                }
            }
        }
        ph
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_text(op: Op, sessions: Sessions) -> (String, usize) {
        let e = Encoder::new(Protocol::Redis, Workload::Get, "vv", sessions);
        let mut out = Vec::new();
        let ph = e.encode(op, 0, 0, &mut out, &mut Rng::new(1, 1));
        assert!(!ph.more);
        (String::from_utf8(out).unwrap(), ph.len())
    }

    #[test]
    fn redis_requests_are_whole_commands() {
        let (t, n) = redis_text(
            Op::Get {
                session: 1,
                key: Key::Cart,
            },
            Sessions::redis_keys(3),
        );
        assert_eq!(t, "*3\r\n$4\r\nHGET\r\n$3\r\ns:1\r\n$4\r\ncart\r\n");
        assert_eq!(n, 1);
        let (t, n) = redis_text(Op::Lifecycle { id: 7 }, Sessions::default());
        assert_eq!(
            t,
            "*6\r\n$4\r\nHSET\r\n$4\r\nlc:7\r\n$4\r\nuser\r\n$2\r\nvv\r\n$4\r\ncart\r\n$2\r\nvv\r\n\
             *3\r\n$6\r\nEXPIRE\r\n$4\r\nlc:7\r\n$2\r\n60\r\n\
             *2\r\n$7\r\nHGETALL\r\n$4\r\nlc:7\r\n\
             *2\r\n$3\r\nDEL\r\n$4\r\nlc:7\r\n"
        );
        assert_eq!(n, 4);
        let (t, n) = redis_text(
            Op::Create {
                index: 12,
                lifetime: Lifetime::Seconds(2),
            },
            Sessions::default(),
        );
        assert!(
            t.ends_with("*3\r\n$6\r\nEXPIRE\r\n$5\r\nex:12\r\n$1\r\n2\r\n"),
            "{t}"
        );
        assert_eq!(n, 2);
    }

    /// Decodes the masked frames the encoder wrote back into JSON values.
    fn ws_json(out: &[u8]) -> Vec<serde_json::Value> {
        let mut v = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let b = &out[at..];
            let (len, hl) = match b[1] & 0x7F {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                n => (n as usize, 2),
            };
            let key = &b[hl..hl + 4];
            let payload: Vec<u8> = b[hl + 4..hl + 4 + len]
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ key[i % 4])
                .collect();
            v.push(serde_json::from_slice(&payload).unwrap());
            at += hl + 4 + len;
        }
        v
    }

    #[test]
    fn ws_requests_are_valid_json_commands() {
        let e = Encoder::new(
            Protocol::Ws,
            Workload::Lifecycle,
            "abc",
            Sessions::from_tokens([5, 18446744073709551615]),
        );
        let mut rng = Rng::new(1, 1);
        let mut out = Vec::new();
        e.encode(
            Op::Set {
                session: 1,
                key: Key::User,
            },
            0,
            0,
            &mut out,
            &mut rng,
        );
        assert_eq!(
            ws_json(&out),
            vec![
                serde_json::json!({"SH_SET":{"tkn":18446744073709551615u64,"keys":{"user":"abc"}}})
            ]
        );
        out.clear();
        let ph = e.encode(Op::Lifecycle { id: 1 }, 0, 0, &mut out, &mut rng);
        assert!(ph.more);
        assert_eq!(
            ph.checks[0].map(|e| (e.check, e.reply)),
            Some((Check::Token, &b"SH_NEW_RSP"[..]))
        );
        assert_eq!(
            ws_json(&out),
            vec![serde_json::json!({"SH_NEW":{"expiry":{"duration":60,"deleteSession":true}}})]
        );
        out.clear();
        let ph = e.encode(Op::Lifecycle { id: 1 }, 1, 99, &mut out, &mut rng);
        assert!(!ph.more);
        assert_eq!(ph.len(), 3);
        assert_eq!(
            ws_json(&out),
            vec![
                serde_json::json!({"SH_SET":{"tkn":99,"keys":{"user":"abc","cart":"abc"}}}),
                serde_json::json!({"SH_GET":{"tkn":99,"keys":["user","cart"]}}),
                serde_json::json!({"SH_END":{"tkn":99}}),
            ]
        );
    }

    #[test]
    fn choices_follow_the_seed() {
        let e = Encoder::new(
            Protocol::Redis,
            Workload::Mixed,
            "v",
            Sessions::redis_keys(100),
        );
        let (mut a, mut b) = (Rng::new(3, 0), Rng::new(3, 0));
        let xs: Vec<Op> = (0..50).map(|i| e.choose(&mut a, i)).collect();
        let ys: Vec<Op> = (0..50).map(|i| e.choose(&mut b, i)).collect();
        assert_eq!(xs, ys);
        let sets = (0..10_000)
            .filter(|&i| matches!(e.choose(&mut a, i), Op::Set { .. }))
            .count();
        assert!((1700..2300).contains(&sets), "{sets}");
    }
}
