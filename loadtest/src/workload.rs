//! What each workload's operations look like on the wire, for both targets.
//!
//! Owns: the choice of the next operation (from a connection's seeded
//! generator), the pre-encoded constant pieces of every request, the names
//! of the keys and owners workloads create, and which reply each request
//! expects. The driver calls [`Encoder::encode`] once per phase of an
//! operation and checks replies against the [`Expect`]s it appends; it never
//! looks inside a request.
//!
//! | workload          | nemesisdb                                         | Redis                                       |
//! |-------------------|---------------------------------------------------|---------------------------------------------|
//! | get               | SH_GET one key                                    | HGET                                        |
//! | set               | SH_SET one key                                    | HSET one field                              |
//! | mixed             | 80% get, 20% set                                  | 80% HGET, 20% HSET                          |
//! | sliding           | SH_GET (session: 3600 s, extendOnGet)             | HGET + EXPIRE 3600                          |
//! | touch             | SH_TOUCH slide (session: 3600 s)                  | PEXPIRE 3600000 + PTTL                      |
//! | incr              | SH_INCR key `counter` (by 1)                      | HINCRBY counter 1                           |
//! | cas               | SH_GET withVersion ; SH_SET ifVersion (104: redo) | WATCH + HGET ; MULTI + HSET + EXEC (nil: redo) |
//! | lifecycle         | SH_NEW (60 s) with keys ; SH_GET + SH_END         | HSET two fields + EXPIRE 60 + HGETALL + DEL |
//! | lifecycle-classic | SH_NEW (60 s) ; SH_SET two keys + SH_GET + SH_END | HSET two fields + EXPIRE 60 + HGETALL + DEL |
//! | logout-all        | SH_OWNER_END ; 5 x SH_NEW with owner and keys     | SMEMBERS ; DEL each + DEL set + 5 x HSET + SADD |
//! | expiry            | SH_NEW (1-3 s) ; SH_SET two keys                  | HSET two fields + EXPIRE 1-3                |
//! | populate          | SH_NEW (3600 s) ; SH_SET two keys                 | HSET two fields + EXPIRE 3600               |
//!
//! expiry-events is not built from these pieces: `expiry_events` runs it.
//!
//! A `;` separates phases: on nemesisdb the server picks the token, so the
//! requests that use it can only go out once SH_NEW's reply is in; logging an
//! owner out recreates its sessions only once the old ones are gone, and on
//! Redis the sessions to delete are only known from SMEMBERS' reply; cas
//! writes what its read returned. Every other Redis operation is a single
//! phase, its keys named by the client.
//!
//! cas is a compare-and-set increment of the session's `counter`: read it
//! with the session's version, write it + 1 only if the version is still the
//! one read. A write that lost (nemesisdb `st` 104, Redis EXEC's nil array)
//! starts the operation again from its read (redo); the driver counts these
//! retries, and the operation completes, as one, when a write wins. On Redis
//! WATCH belongs to the connection, and EXEC (or an abort) clears every key
//! the connection watches, so two cas operations of one connection must not
//! overlap between WATCH and EXEC: [`Encoder::holds_connection`] says which
//! phase leaves that state, and the driver writes no other operation's phase
//! on the connection until the holder's next phase (ending in EXEC) is
//! written. Commands on one connection run in order, so the next operation's
//! WATCH can follow that EXEC in the same write: from pipeline 2 on, a Redis
//! connection runs one cas per round trip (at pipeline 1, one per two), and
//! a deeper pipeline adds nothing.
//! nemesisdb's `ifVersion` is checked per request, so its cas operations
//! pipeline freely.
//!
//! logout-all's owners are split over the timed run's operation slots
//! ([`Owners`]): a slot only ever picks owners no other slot picks, so two
//! operations never log out the same owner at once, and every owner has
//! exactly its 5 sessions whenever an operation starts on it.

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
    /// 3600 s (populate, and the sessions behind touch).
    Hour,
    /// 1 to 3 s (expiry).
    Seconds(u8),
}

/// Sessions per owner in logout-all.
pub const SESSIONS_PER_OWNER: usize = 5;

/// The most members an owner's Redis set may list for one logout-all
/// operation; more is counted as an error (only 5 are ever added).
pub const MAX_MEMBERS: usize = 16;

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
    /// Push a session's idle deadline back and read how long it has left.
    Touch {
        session: u32,
    },
    /// Add 1 to the session's `counter`.
    Incr {
        session: u32,
    },
    /// Read the session's `counter` and version, then write the counter + 1
    /// if the version is unchanged; from the read again when it changed.
    Cas {
        session: u32,
    },
    /// Create a session with its keys, read it and end it; `id` names it on
    /// Redis.
    Lifecycle {
        id: u64,
    },
    /// The same as four requests: create, fill, read, end.
    LifecycleClassic {
        id: u64,
    },
    /// End every session of owner `owner`, then create its 5 sessions again.
    LogoutAll {
        owner: u64,
    },
    /// Create owner `owner`'s 5 sessions: logout-all's untimed set-up.
    OwnerFill {
        owner: u64,
    },
    /// End every session of owner `owner`: logout-all's untimed teardown.
    OwnerEnd {
        owner: u64,
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
    /// Redis integer >= 1 (EXPIRE, PTTL, DEL or SADD of a key that must exist,
    /// HINCRBY of a counter that only goes up).
    Positive,
    /// nemesisdb `st` 1 with a `value` of 1 or more (SH_INCR of a counter
    /// that only goes up).
    Counter,
    /// cas's read, which hands on the counter (absent: 0): nemesisdb `st` 1
    /// with a `version` and an unsigned integer `counter`, if any; Redis a
    /// bulk string of an unsigned integer, or nil (HGET).
    Read,
    /// cas's write. A success: nemesisdb `st` 1 with `version` one above
    /// [`Expect::version`]; Redis an EXEC that ran (an array of one integer).
    /// A lost race, which starts the operation again: nemesisdb `st` 104 with
    /// another `version`; Redis EXEC's nil array.
    Swapped,
    /// nemesisdb `st` 1 with a `ttlMs` of 0 or more (SH_TOUCH of a session
    /// that expires).
    Ttl,
    /// nemesisdb `st` 1 with a `cnt` of 1 or more (SH_OWNER_END of an owner
    /// that has sessions).
    Ended,
    /// Redis: an array of 1 to [`MAX_MEMBERS`] session names this generator
    /// made (SMEMBERS), which the next phase deletes.
    Members,
    /// The read of a freshly filled session: nemesisdb `st` 1 with string
    /// values for `user` and `cart`; Redis an array of both fields and values
    /// (HGETALL). A server that ignored SH_NEW's `keys` fails here.
    Filled,
}

/// What one request's reply must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub check: Check,
    /// nemesisdb: the reply's member name (`SH_GET_RSP`); empty for Redis.
    pub reply: &'static [u8],
    /// nemesisdb: the token a successful reply must echo, when it echoes one.
    pub tkn: Option<u64>,
    /// nemesisdb: the `ifVersion` a compare-and-set sent ([`Check::Swapped`]).
    pub version: Option<u64>,
}

impl Expect {
    fn redis(check: Check) -> Expect {
        Expect {
            check,
            reply: b"",
            tkn: None,
            version: None,
        }
    }
}

/// What an operation's replies hand on to its next phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carry {
    /// nemesisdb: the token SH_NEW returned.
    pub token: u64,
    /// Redis: the session ids SMEMBERS listed (see [`member_id`]).
    pub members: [u64; MAX_MEMBERS],
    pub n_members: u8,
    /// cas: the session's version its read returned (nemesisdb).
    pub version: u64,
    /// cas: the counter its read returned.
    pub counter: u64,
}

impl Carry {
    /// Adds a listed session; false when there is no room left.
    pub fn push_member(&mut self, id: u64) -> bool {
        let Some(slot) = self.members.get_mut(self.n_members as usize) else {
            return false;
        };
        *slot = id;
        self.n_members += 1;
        true
    }

    pub fn members(&self) -> &[u64] {
        &self.members[..self.n_members as usize]
    }
}

/// The id in one of logout-all's Redis session names (`ls:<id>`), `None` for
/// anything this generator did not name.
pub fn member_id(name: &[u8]) -> Option<u64> {
    let digits = name.strip_prefix(b"ls:")?;
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |v, &d| {
        d.is_ascii_digit()
            .then(|| v.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// How logout-all's owners are laid out over the timed run's operation slots.
///
/// A lane is one slot of one connection (`connection + connections * slot`);
/// owner `o` belongs to lane `o % lanes`, and a lane picks among its own
/// `per_lane` owners only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owners {
    lanes: u64,
    per_lane: u64,
}

impl Owners {
    /// About `sessions / 5` owners, at least one per lane.
    pub fn new(sessions: u64, lanes: u64) -> Owners {
        let lanes = lanes.max(1);
        Owners {
            lanes,
            per_lane: (sessions / SESSIONS_PER_OWNER as u64 / lanes).max(1),
        }
    }

    /// Owners `0..count()` exist during the timed run.
    pub fn count(&self) -> u64 {
        self.lanes * self.per_lane
    }

    fn pick(&self, rng: &mut Rng, lane: u64) -> u64 {
        lane % self.lanes + self.lanes * rng.below(self.per_lane)
    }
}

impl Default for Owners {
    fn default() -> Owners {
        Owners::new(0, 1)
    }
}
/// The sessions that get/set/mixed/sliding/touch/incr/cas pick from: on
/// nemesisdb each token's decimal digits, on Redis each key as an encoded
/// bulk string, so a request is a few copies of ready bytes.
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
    owners: Owners,
    /// `--locality` local or remote: by the shard serving a connection, the
    /// session indexes it picks from (see `shards::pools`); empty: any.
    pools: Vec<Vec<u32>>,
    p: Pieces,
}

/// The constant bytes of every request, encoded once at start-up.
struct Pieces {
    // nemesisdb: JSON text around a token or an owner number.
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
    touch_open: Vec<u8>,
    touch_close: Vec<u8>,
    incr_open: Vec<u8>,
    incr_close: Vec<u8>,
    get_versioned: Vec<u8>,
    cas_counter: Vec<u8>,
    cas_if: Vec<u8>,
    new_forever: Vec<u8>,
    new_sliding: Vec<u8>,
    new_hour: Vec<u8>,
    new_minute: Vec<u8>,
    new_minute_keys: Vec<u8>,
    new_seconds: [Vec<u8>; 3],
    owner_new_open: Vec<u8>,
    owner_new_close: Vec<u8>,
    owner_end_open: Vec<u8>,
    owner_close: Vec<u8>,
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
    pexpire: Vec<u8>,
    ms_3600000: Vec<u8>,
    pttl: Vec<u8>,
    hincrby: Vec<u8>,
    field_counter: Vec<u8>,
    one: Vec<u8>,
    watch: Vec<u8>,
    multi_hset: Vec<u8>,
    exec: Vec<u8>,
    hgetall: Vec<u8>,
    del: Vec<u8>,
    smembers: Vec<u8>,
    sadd_owner: Vec<u8>,
}

/// The owner name of owner `n` on nemesisdb is `u<n>`; its Redis set `o:<n>`.
const OWNER_PREFIX: &str = "u";

/// The key (Redis: hash field) incr and cas count in. Not among the keys
/// set-up writes, so it starts absent, which both targets count as 0.
pub const COUNTER: &str = "counter";

impl Pieces {
    fn new(value: &str) -> Pieces {
        let json = |s: String| s.into_bytes();
        let new = |expiry: &str| json(format!(r#"{{"SH_NEW":{{{expiry}}}}}"#));
        let keys_both = format!(r#""keys":{{"user":"{value}","cart":"{value}"}}"#);
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
            set_both: json(format!(",{keys_both}}}}}")),
            end_open: br#"{"SH_END":{"tkn":"#.to_vec(),
            close2: b"}}".to_vec(),
            touch_open: br#"{"SH_TOUCH":{"tkn":"#.to_vec(),
            touch_close: br#","slide":true}}"#.to_vec(),
            incr_open: br#"{"SH_INCR":{"tkn":"#.to_vec(),
            incr_close: json(format!(r#","key":"{COUNTER}"}}}}"#)),
            get_versioned: json(format!(r#","keys":["{COUNTER}"],"withVersion":true}}}}"#)),
            cas_counter: json(format!(r#","keys":{{"{COUNTER}":"#)),
            cas_if: br#"},"ifVersion":"#.to_vec(),
            new_forever: new(""),
            new_sliding: new(
                r#""expiry":{"duration":3600,"deleteSession":true,"extendOnGet":true}"#,
            ),
            new_hour: new(r#""expiry":{"duration":3600,"deleteSession":true}"#),
            new_minute: new(r#""expiry":{"duration":60,"deleteSession":true}"#),
            new_minute_keys: new(&format!(
                r#""expiry":{{"duration":60,"deleteSession":true}},{keys_both}"#
            )),
            new_seconds: [1, 2, 3].map(|d| {
                new(&format!(
                    r#""expiry":{{"duration":{d},"deleteSession":true}}"#
                ))
            }),
            owner_new_open: json(format!(r#"{{"SH_NEW":{{"owner":"{OWNER_PREFIX}"#)),
            owner_new_close: json(format!(r#"",{keys_both}}}}}"#)),
            owner_end_open: json(format!(r#"{{"SH_OWNER_END":{{"owner":"{OWNER_PREFIX}"#)),
            owner_close: br#""}}"#.to_vec(),
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
            pexpire: b"*3\r\n$7\r\nPEXPIRE\r\n".to_vec(),
            ms_3600000: bulk(b"3600000"),
            pttl: b"*2\r\n$4\r\nPTTL\r\n".to_vec(),
            hincrby: b"*4\r\n$7\r\nHINCRBY\r\n".to_vec(),
            field_counter: bulk(COUNTER.as_bytes()),
            one: bulk(b"1"),
            watch: b"*2\r\n$5\r\nWATCH\r\n".to_vec(),
            multi_hset: b"*1\r\n$5\r\nMULTI\r\n*4\r\n$4\r\nHSET\r\n".to_vec(),
            exec: b"*1\r\n$4\r\nEXEC\r\n".to_vec(),
            hgetall: b"*2\r\n$7\r\nHGETALL\r\n".to_vec(),
            del: b"*2\r\n$3\r\nDEL\r\n".to_vec(),
            smembers: b"*2\r\n$8\r\nSMEMBERS\r\n".to_vec(),
            sadd_owner: json(format!("*{}\r\n$4\r\nSADD\r\n", 2 + SESSIONS_PER_OWNER)),
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

/// Appends the pieces of one Redis command.
fn put(out: &mut Vec<u8>, parts: &[&[u8]]) {
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// The nemesisdb commands a workload's timed run sends: whose server-side
/// durations `--scrape` reads. Set-up and teardown (untimed) are not in it.
pub fn ws_commands(workload: Workload) -> &'static [&'static str] {
    match workload {
        Workload::Get | Workload::Sliding | Workload::ExpiryEvents => &["SH_GET"],
        Workload::Set => &["SH_SET"],
        Workload::Mixed | Workload::Cas => &["SH_GET", "SH_SET"],
        Workload::Touch => &["SH_TOUCH"],
        Workload::Incr => &["SH_INCR"],
        Workload::Lifecycle => &["SH_NEW", "SH_GET", "SH_END"],
        Workload::LifecycleClassic => &["SH_NEW", "SH_SET", "SH_GET", "SH_END"],
        Workload::LogoutAll => &["SH_OWNER_END", "SH_NEW"],
        Workload::Expiry | Workload::Populate => &["SH_NEW", "SH_SET"],
    }
}

const GET: &[u8] = b"SH_GET_RSP";
const SET: &[u8] = b"SH_SET_RSP";
const END: &[u8] = b"SH_END_RSP";
const NEW: &[u8] = b"SH_NEW_RSP";
const TOUCH: &[u8] = b"SH_TOUCH_RSP";
const INCR: &[u8] = b"SH_INCR_RSP";
const OWNER_END: &[u8] = b"SH_OWNER_END_RSP";

impl Encoder {
    pub fn new(protocol: Protocol, workload: Workload, value: &str, sessions: Sessions) -> Encoder {
        Encoder {
            protocol,
            workload,
            sessions,
            owners: Owners::default(),
            pools: Vec::new(),
            p: Pieces::new(value),
        }
    }

    /// logout-all: the owners the timed run picks from.
    pub fn with_owners(mut self, owners: Owners) -> Encoder {
        self.owners = owners;
        self
    }

    /// `--locality`: a connection of shard `s` picks among `pools[s]`.
    pub fn with_pools(mut self, pools: Vec<Vec<u32>>) -> Encoder {
        self.pools = pools;
        self
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The next operation of the timed workload. `id` must be unique within
    /// the run (it names lifecycle/expiry sessions on Redis); `lane` is the
    /// operation slot it runs in (see [`Owners`]); `shard` the shard
    /// serving the connection, when known (`--locality`).
    pub fn choose(&self, rng: &mut Rng, id: u64, lane: u64, shard: Option<usize>) -> Op {
        let pool = shard
            .and_then(|s| self.pools.get(s))
            .filter(|pool| !pool.is_empty());
        let n = pool.map_or(self.sessions.len(), Vec::len).max(1) as u64;
        let session = |rng: &mut Rng| {
            let i = rng.below(n) as usize;
            pool.map_or(i as u32, |pool| pool[i])
        };
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
            Workload::Touch => Op::Touch {
                session: session(rng),
            },
            Workload::Incr => Op::Incr {
                session: session(rng),
            },
            Workload::Cas => Op::Cas {
                session: session(rng),
            },
            Workload::Lifecycle => Op::Lifecycle { id },
            Workload::LifecycleClassic => Op::LifecycleClassic { id },
            Workload::LogoutAll => Op::LogoutAll {
                owner: self.owners.pick(rng, lane),
            },
            Workload::Expiry => Op::Create {
                index: id,
                lifetime: Lifetime::Seconds(1 + rng.below(3) as u8),
            },
            // expiry-events has a runner of its own and never comes here.
            Workload::Populate | Workload::ExpiryEvents => Op::Create {
                index: id,
                lifetime: Lifetime::Hour,
            },
        }
    }

    /// The untimed teardown's operation `id`: end set-up's session or owner.
    pub fn teardown(&self, id: u64) -> Op {
        if self.workload == Workload::LogoutAll {
            Op::OwnerEnd { owner: id }
        } else {
            // Quotas split `requests` = the session count, so id < it.
            Op::End { session: id as u32 }
        }
    }

    /// Whether phase `phase` of `op` leaves state on the connection that its
    /// next phase relies on: Redis cas's WATCH, which any other operation's
    /// EXEC on the connection would clear. No other operation may write a
    /// phase on the connection until `op` has written its next one.
    pub fn holds_connection(&self, op: Op, phase: u8) -> bool {
        self.protocol == Protocol::Redis && matches!(op, Op::Cas { .. }) && phase == 0
    }

    /// Appends phase `phase` of `op` to `out`, and what each of its replies
    /// must be to `expects`. `carry` holds what the previous phase's replies
    /// returned. True when another phase follows.
    pub fn encode(
        &self,
        op: Op,
        phase: u8,
        carry: &Carry,
        out: &mut Vec<u8>,
        expects: &mut Vec<Expect>,
        rng: &mut Rng,
    ) -> bool {
        match self.protocol {
            Protocol::Ws => self.encode_ws(op, phase, carry, out, expects, rng),
            Protocol::Redis => self.encode_redis(op, phase, carry, out, expects, rng),
        }
    }

    fn encode_ws(
        &self,
        op: Op,
        phase: u8,
        carry: &Carry,
        out: &mut Vec<u8>,
        expects: &mut Vec<Expect>,
        rng: &mut Rng,
    ) -> bool {
        let p = &self.p;
        let mut text = |parts: &[&[u8]], check: Check, reply, tkn| {
            ws::write_frame(out, ws::OP_TEXT, parts, rng);
            expects.push(Expect {
                check,
                reply,
                tkn,
                version: None,
            });
        };
        let session = |i: u32| {
            (
                self.sessions.get(i as usize),
                self.sessions.token(i as usize),
            )
        };
        let mut b = itoa::Buffer::new();
        match op {
            Op::Get { session: i, key } | Op::Sliding { session: i, key } => {
                let tail = if key == Key::User {
                    &p.get_user
                } else {
                    &p.get_cart
                };
                let (t, tkn) = session(i);
                text(&[&p.get_open, t, tail], Check::Ok, GET, tkn);
            }
            Op::Set { session: i, key } => {
                let tail = if key == Key::User {
                    &p.set_user
                } else {
                    &p.set_cart
                };
                let (t, tkn) = session(i);
                text(&[&p.set_open, t, tail], Check::Ok, SET, tkn);
            }
            Op::Touch { session: i } => {
                let (t, tkn) = session(i);
                text(&[&p.touch_open, t, &p.touch_close], Check::Ttl, TOUCH, tkn);
            }
            Op::End { session: i } => {
                let (t, tkn) = session(i);
                text(&[&p.end_open, t, &p.close2], Check::Ok, END, tkn);
            }
            Op::Incr { session: i } => {
                let (t, tkn) = session(i);
                text(&[&p.incr_open, t, &p.incr_close], Check::Counter, INCR, tkn);
            }
            Op::Cas { session: i } if phase == 0 => {
                let (t, tkn) = session(i);
                text(&[&p.get_open, t, &p.get_versioned], Check::Read, GET, tkn);
                return true;
            }
            Op::Cas { session: i } => {
                let (t, tkn) = session(i);
                let mut c = itoa::Buffer::new();
                let counter = c.format(carry.counter.saturating_add(1)).as_bytes();
                let version = b.format(carry.version).as_bytes();
                ws::write_frame(
                    out,
                    ws::OP_TEXT,
                    &[
                        &p.set_open,
                        t,
                        &p.cas_counter,
                        counter,
                        &p.cas_if,
                        version,
                        &p.close2,
                    ],
                    rng,
                );
                expects.push(Expect {
                    check: Check::Swapped,
                    reply: SET,
                    tkn,
                    version: Some(carry.version),
                });
            }
            Op::Lifecycle { .. } if phase == 0 => {
                text(&[&p.new_minute_keys], Check::Token, NEW, None);
                return true;
            }
            Op::Lifecycle { .. } => {
                let t = b.format(carry.token).as_bytes();
                let tkn = Some(carry.token);
                text(&[&p.get_open, t, &p.get_both], Check::Filled, GET, tkn);
                text(&[&p.end_open, t, &p.close2], Check::Ok, END, tkn);
            }
            Op::LifecycleClassic { .. } if phase == 0 => {
                text(&[&p.new_minute], Check::Token, NEW, None);
                return true;
            }
            Op::LifecycleClassic { .. } => {
                let t = b.format(carry.token).as_bytes();
                let tkn = Some(carry.token);
                text(&[&p.set_open, t, &p.set_both], Check::Ok, SET, tkn);
                text(&[&p.get_open, t, &p.get_both], Check::Filled, GET, tkn);
                text(&[&p.end_open, t, &p.close2], Check::Ok, END, tkn);
            }
            Op::LogoutAll { owner } | Op::OwnerEnd { owner } if phase == 0 => {
                let o = b.format(owner).as_bytes();
                text(
                    &[&p.owner_end_open, o, &p.owner_close],
                    Check::Ended,
                    OWNER_END,
                    None,
                );
                return matches!(op, Op::LogoutAll { .. });
            }
            // SH_OWNER_END alone: a single phase.
            Op::OwnerEnd { .. } => {}
            Op::LogoutAll { owner } | Op::OwnerFill { owner } => {
                let o = b.format(owner).as_bytes();
                for _ in 0..SESSIONS_PER_OWNER {
                    text(
                        &[&p.owner_new_open, o, &p.owner_new_close],
                        Check::Token,
                        NEW,
                        None,
                    );
                }
            }
            Op::Create { lifetime, .. } if phase == 0 => {
                let new = match lifetime {
                    Lifetime::Forever => &p.new_forever,
                    Lifetime::Sliding => &p.new_sliding,
                    Lifetime::Hour => &p.new_hour,
                    Lifetime::Seconds(s) => &p.new_seconds[(s.clamp(1, 3) - 1) as usize],
                };
                text(&[new], Check::Token, NEW, None);
                return true;
            }
            Op::Create { .. } => {
                let t = b.format(carry.token).as_bytes();
                text(
                    &[&p.set_open, t, &p.set_both],
                    Check::Ok,
                    SET,
                    Some(carry.token),
                );
            }
        }
        false
    }

    fn encode_redis(
        &self,
        op: Op,
        phase: u8,
        carry: &Carry,
        out: &mut Vec<u8>,
        expects: &mut Vec<Expect>,
        rng: &mut Rng,
    ) -> bool {
        let p = &self.p;
        let mut expect = |check| expects.push(Expect::redis(check));
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
                put(out, &[&p.hget, k, field(key)]);
                expect(Check::Ok);
            }
            Op::Set { session, key } => {
                let k = self.sessions.get(session as usize);
                put(out, &[&p.hset1, k, field(key), &p.value]);
                expect(Check::Ok);
            }
            Op::Sliding { session, key } => {
                let k = self.sessions.get(session as usize);
                put(out, &[&p.hget, k, field(key), &p.expire, k, &p.secs_3600]);
                expect(Check::Ok);
                expect(Check::Positive);
            }
            Op::Touch { session } => {
                let k = self.sessions.get(session as usize);
                put(out, &[&p.pexpire, k, &p.ms_3600000, &p.pttl, k]);
                expect(Check::Positive);
                expect(Check::Positive);
            }
            Op::End { session } => {
                let k = self.sessions.get(session as usize);
                put(out, &[&p.del, k]);
                expect(Check::Positive);
            }
            Op::Incr { session } => {
                let k = self.sessions.get(session as usize);
                put(out, &[&p.hincrby, k, &p.field_counter, &p.one]);
                expect(Check::Positive);
            }
            // WATCH before the read: a change after it aborts the EXEC.
            Op::Cas { session } if phase == 0 => {
                let k = self.sessions.get(session as usize);
                put(out, &[&p.watch, k, &p.hget, k, &p.field_counter]);
                expect(Check::Ok);
                expect(Check::Read);
                return true;
            }
            Op::Cas { session } => {
                let k = self.sessions.get(session as usize);
                put(out, &[&p.multi_hset, k, &p.field_counter]);
                redis_key(out, b"", carry.counter.saturating_add(1));
                out.extend_from_slice(&p.exec);
                expect(Check::Ok);
                expect(Check::Ok);
                expect(Check::Swapped);
            }
            // No server-chosen token on Redis: both lifecycles are the same
            // four commands, pipelined.
            Op::Lifecycle { id } | Op::LifecycleClassic { id } => {
                let mut k = Vec::with_capacity(32);
                redis_key(&mut k, b"lc:", id);
                put(out, &[&p.hset2, &k, &p.both_fields]);
                put(out, &[&p.expire, &k, &p.secs_60]);
                put(out, &[&p.hgetall, &k, &p.del, &k]);
                expect(Check::Ok);
                expect(Check::Positive);
                expect(Check::Filled);
                expect(Check::Positive);
            }
            Op::LogoutAll { owner } | Op::OwnerEnd { owner } if phase == 0 => {
                let mut set = Vec::with_capacity(32);
                redis_key(&mut set, b"o:", owner);
                put(out, &[&p.smembers, &set]);
                expect(Check::Members);
                return true;
            }
            Op::LogoutAll { owner } | Op::OwnerFill { owner } | Op::OwnerEnd { owner } => {
                let mut set = Vec::with_capacity(32);
                redis_key(&mut set, b"o:", owner);
                let mut k = Vec::with_capacity(32);
                if !matches!(op, Op::OwnerFill { .. }) {
                    for &m in carry.members() {
                        k.clear();
                        redis_key(&mut k, b"ls:", m);
                        put(out, &[&p.del, &k]);
                        expect(Check::Positive);
                    }
                    put(out, &[&p.del, &set]);
                    expect(Check::Positive);
                }
                if !matches!(op, Op::OwnerEnd { .. }) {
                    // New session ids, as an application would draw them.
                    let mut members = Vec::with_capacity(32 * SESSIONS_PER_OWNER);
                    for _ in 0..SESSIONS_PER_OWNER {
                        k.clear();
                        redis_key(&mut k, b"ls:", rng.next_u64());
                        put(out, &[&p.hset2, &k, &p.both_fields]);
                        expect(Check::Ok);
                        members.extend_from_slice(&k);
                    }
                    put(out, &[&p.sadd_owner, &set, &members]);
                    expect(Check::Positive);
                }
            }
            Op::Create { index, lifetime } => {
                let mut k = Vec::with_capacity(32);
                let prefix: &[u8] = if matches!(lifetime, Lifetime::Seconds(_)) {
                    b"ex:"
                } else {
                    b"s:"
                };
                redis_key(&mut k, prefix, index);
                put(out, &[&p.hset2, &k, &p.both_fields]);
                expect(Check::Ok);
                let secs = match lifetime {
                    Lifetime::Forever => None,
                    Lifetime::Sliding | Lifetime::Hour => Some(&p.secs_3600),
                    Lifetime::Seconds(s) => Some(&p.secs[(s.clamp(1, 3) - 1) as usize]),
                };
                if let Some(secs) = secs {
                    put(out, &[&p.expire, &k, secs]);
                    expect(Check::Positive);
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One phase of `op`: its bytes, its expected replies, whether more follow.
    fn phase(e: &Encoder, op: Op, n: u8, carry: &Carry) -> (Vec<u8>, Vec<Expect>, bool) {
        let (mut out, mut expects) = (Vec::new(), Vec::new());
        let more = e.encode(op, n, carry, &mut out, &mut expects, &mut Rng::new(1, 1));
        (out, expects, more)
    }

    fn redis_text(op: Op, sessions: Sessions) -> (String, usize) {
        let e = Encoder::new(Protocol::Redis, Workload::Get, "vv", sessions);
        let (out, expects, more) = phase(&e, op, 0, &Carry::default());
        assert!(!more);
        (String::from_utf8(out).unwrap(), expects.len())
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
        let lifecycle = "*6\r\n$4\r\nHSET\r\n$4\r\nlc:7\r\n$4\r\nuser\r\n$2\r\nvv\r\n$4\r\ncart\r\n$2\r\nvv\r\n\
             *3\r\n$6\r\nEXPIRE\r\n$4\r\nlc:7\r\n$2\r\n60\r\n\
             *2\r\n$7\r\nHGETALL\r\n$4\r\nlc:7\r\n\
             *2\r\n$3\r\nDEL\r\n$4\r\nlc:7\r\n";
        // No server-chosen token on Redis: both lifecycles are one sequence.
        for op in [Op::Lifecycle { id: 7 }, Op::LifecycleClassic { id: 7 }] {
            assert_eq!(redis_text(op, Sessions::default()), (lifecycle.into(), 4));
        }
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
        let (t, n) = redis_text(Op::Touch { session: 2 }, Sessions::redis_keys(3));
        assert_eq!(
            t,
            "*3\r\n$7\r\nPEXPIRE\r\n$3\r\ns:2\r\n$7\r\n3600000\r\n*2\r\n$4\r\nPTTL\r\n$3\r\ns:2\r\n"
        );
        assert_eq!(n, 2);
    }

    /// Splits RESP commands into their arguments.
    fn resp_commands(out: &[u8]) -> Vec<Vec<String>> {
        let text = String::from_utf8(out.to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let mut cmds = Vec::new();
        while let Some(head) = lines.next().filter(|l| !l.is_empty()) {
            let n: usize = head.strip_prefix('*').unwrap().parse().unwrap();
            let args = (0..n)
                .map(|_| {
                    lines.next().unwrap();
                    lines.next().unwrap().to_string()
                })
                .collect();
            cmds.push(args);
        }
        cmds
    }

    #[test]
    fn redis_logout_all_lists_then_deletes_and_recreates() {
        let e = Encoder::new(
            Protocol::Redis,
            Workload::LogoutAll,
            "v",
            Sessions::default(),
        );
        let op = Op::LogoutAll { owner: 3 };
        let (out, expects, more) = phase(&e, op, 0, &Carry::default());
        assert!(more);
        assert_eq!(resp_commands(&out), [["SMEMBERS", "o:3"]]);
        assert_eq!(expects, [Expect::redis(Check::Members)]);
        let mut carry = Carry::default();
        for id in [11, 12, 13, 14, 15] {
            assert!(carry.push_member(id));
        }
        let (out, expects, more) = phase(&e, op, 1, &carry);
        assert!(!more);
        let cmds = resp_commands(&out);
        // With SMEMBERS, 13 requests in all.
        assert_eq!(cmds.len(), 12);
        assert_eq!(expects.len(), 12);
        for (i, id) in [11, 12, 13, 14, 15].iter().enumerate() {
            assert_eq!(cmds[i], ["DEL".to_string(), format!("ls:{id}")]);
        }
        assert_eq!(cmds[5], ["DEL", "o:3"]);
        let new: Vec<&String> = cmds[6..11].iter().map(|c| &c[1]).collect();
        for c in &cmds[6..11] {
            assert_eq!(c[0], "HSET");
            assert_eq!(c[2..], ["user", "v", "cart", "v"]);
            assert!(member_id(c[1].as_bytes()).is_some(), "{c:?}");
        }
        assert_eq!(cmds[11][..2], ["SADD", "o:3"]);
        assert_eq!(cmds[11][2..].iter().collect::<Vec<_>>(), new);
        // Set-up only creates; teardown only lists and deletes.
        let (out, _, more) = phase(&e, Op::OwnerFill { owner: 3 }, 0, &Carry::default());
        assert!(!more);
        assert_eq!(resp_commands(&out).len(), 6);
        let (out, _, more) = phase(&e, Op::OwnerEnd { owner: 3 }, 1, &carry);
        assert!(!more);
        assert_eq!(resp_commands(&out).len(), 6);
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

    fn token(t: u64) -> Carry {
        Carry {
            token: t,
            ..Carry::default()
        }
    }

    #[test]
    fn ws_commands_are_what_the_timed_run_sends() {
        use std::collections::BTreeSet;
        let workloads = [
            Workload::Get,
            Workload::Set,
            Workload::Mixed,
            Workload::Sliding,
            Workload::Touch,
            Workload::Incr,
            Workload::Cas,
            Workload::Lifecycle,
            Workload::LifecycleClassic,
            Workload::LogoutAll,
            Workload::Expiry,
            Workload::Populate,
        ];
        for w in workloads {
            let e = Encoder::new(Protocol::Ws, w, "v", Sessions::from_tokens([5, 6, 7]))
                .with_owners(Owners::new(100, 2));
            let carry = Carry {
                token: 9,
                version: 3,
                ..Carry::default()
            };
            let mut rng = Rng::new(1, 2);
            let mut sent = BTreeSet::new();
            // Enough operations for mixed's 20% of sets.
            for id in 0..200 {
                let op = e.choose(&mut rng, id, id % 2, None);
                for n in 0.. {
                    let (out, _, more) = phase(&e, op, n, &carry);
                    for v in ws_json(&out) {
                        sent.extend(v.as_object().unwrap().keys().cloned());
                    }
                    if !more {
                        break;
                    }
                }
            }
            let listed: BTreeSet<String> = ws_commands(w).iter().map(|c| c.to_string()).collect();
            assert_eq!(sent, listed, "{}", w.name());
        }
    }

    #[test]
    fn ws_requests_are_valid_json_commands() {
        use serde_json::json;
        let e = Encoder::new(
            Protocol::Ws,
            Workload::LifecycleClassic,
            "abc",
            Sessions::from_tokens([5, 18446744073709551615]),
        );
        let none = Carry::default();
        let set = Op::Set {
            session: 1,
            key: Key::User,
        };
        let (out, _, _) = phase(&e, set, 0, &none);
        assert_eq!(
            ws_json(&out),
            [json!({"SH_SET":{"tkn":18446744073709551615u64,"keys":{"user":"abc"}}})]
        );

        let classic = Op::LifecycleClassic { id: 1 };
        let (out, expects, more) = phase(&e, classic, 0, &none);
        assert!(more);
        assert_eq!(
            expects
                .iter()
                .map(|e| (e.check, e.reply))
                .collect::<Vec<_>>(),
            [(Check::Token, &b"SH_NEW_RSP"[..])]
        );
        assert_eq!(
            ws_json(&out),
            [json!({"SH_NEW":{"expiry":{"duration":60,"deleteSession":true}}})]
        );
        let (out, expects, more) = phase(&e, classic, 1, &token(99));
        assert!(!more);
        assert_eq!(expects.len(), 3);
        assert_eq!(
            ws_json(&out),
            [
                json!({"SH_SET":{"tkn":99,"keys":{"user":"abc","cart":"abc"}}}),
                json!({"SH_GET":{"tkn":99,"keys":["user","cart"]}}),
                json!({"SH_END":{"tkn":99}}),
            ]
        );

        // Create-with-keys: one request fewer.
        let lifecycle = Op::Lifecycle { id: 1 };
        let (out, _, more) = phase(&e, lifecycle, 0, &none);
        assert!(more);
        assert_eq!(
            ws_json(&out),
            [
                json!({"SH_NEW":{"expiry":{"duration":60,"deleteSession":true},
                              "keys":{"user":"abc","cart":"abc"}}})
            ]
        );
        let (out, expects, more) = phase(&e, lifecycle, 1, &token(99));
        assert!(!more);
        assert_eq!(expects.iter().filter(|e| e.tkn == Some(99)).count(), 2);
        assert_eq!(
            ws_json(&out),
            [
                json!({"SH_GET":{"tkn":99,"keys":["user","cart"]}}),
                json!({"SH_END":{"tkn":99}}),
            ]
        );

        let (out, expects, more) = phase(&e, Op::Touch { session: 0 }, 0, &none);
        assert!(!more);
        assert_eq!(ws_json(&out), [json!({"SH_TOUCH":{"tkn":5,"slide":true}})]);
        assert_eq!(
            expects,
            [Expect {
                check: Check::Ttl,
                reply: b"SH_TOUCH_RSP",
                tkn: Some(5),
                version: None,
            }]
        );
    }

    #[test]
    fn ws_logout_all_ends_the_owner_then_creates_with_keys() {
        use serde_json::json;
        let e = Encoder::new(Protocol::Ws, Workload::LogoutAll, "v", Sessions::default());
        let none = Carry::default();
        let op = Op::LogoutAll { owner: 41 };
        let (out, expects, more) = phase(&e, op, 0, &none);
        assert!(more);
        assert_eq!(ws_json(&out), [json!({"SH_OWNER_END":{"owner":"u41"}})]);
        assert_eq!(expects[0].check, Check::Ended);
        let (out, expects, more) = phase(&e, op, 1, &token(1));
        assert!(!more);
        let create = json!({"SH_NEW":{"owner":"u41","keys":{"user":"v","cart":"v"}}});
        assert_eq!(ws_json(&out), vec![create.clone(); 5]);
        assert!(expects.iter().all(|e| e.check == Check::Token));
        let (out, _, more) = phase(&e, Op::OwnerFill { owner: 41 }, 0, &none);
        assert!(!more);
        assert_eq!(ws_json(&out), vec![create; 5]);
        let (out, _, more) = phase(&e, Op::OwnerEnd { owner: 41 }, 0, &none);
        assert!(!more);
        assert_eq!(ws_json(&out), [json!({"SH_OWNER_END":{"owner":"u41"}})]);
    }

    #[test]
    fn ws_incr_and_cas_requests() {
        use serde_json::json;
        let e = Encoder::new(
            Protocol::Ws,
            Workload::Cas,
            "v",
            Sessions::from_tokens([7, 9]),
        );
        let none = Carry::default();
        let (out, expects, more) = phase(&e, Op::Incr { session: 1 }, 0, &none);
        assert!(!more);
        assert_eq!(
            ws_json(&out),
            [json!({"SH_INCR":{"tkn":9,"key":"counter"}})]
        );
        assert_eq!(
            expects,
            [Expect {
                check: Check::Counter,
                reply: b"SH_INCR_RSP",
                tkn: Some(9),
                version: None,
            }]
        );

        let cas = Op::Cas { session: 0 };
        assert!(
            !e.holds_connection(cas, 0),
            "ifVersion needs no connection state"
        );
        let (out, expects, more) = phase(&e, cas, 0, &none);
        assert!(more);
        assert_eq!(
            ws_json(&out),
            [json!({"SH_GET":{"tkn":7,"keys":["counter"],"withVersion":true}})]
        );
        assert_eq!(
            (expects[0].check, expects[0].reply, expects[0].tkn),
            (Check::Read, &b"SH_GET_RSP"[..], Some(7))
        );
        let read = Carry {
            version: 41,
            counter: 12,
            ..Carry::default()
        };
        let (out, expects, more) = phase(&e, cas, 1, &read);
        assert!(!more);
        assert_eq!(
            ws_json(&out),
            [json!({"SH_SET":{"tkn":7,"keys":{"counter":13},"ifVersion":41}})]
        );
        assert_eq!(
            expects,
            [Expect {
                check: Check::Swapped,
                reply: b"SH_SET_RSP",
                tkn: Some(7),
                version: Some(41),
            }]
        );
    }

    #[test]
    fn redis_incr_and_cas_commands() {
        let e = Encoder::new(Protocol::Redis, Workload::Cas, "v", Sessions::redis_keys(3));
        let none = Carry::default();
        let (out, expects, more) = phase(&e, Op::Incr { session: 2 }, 0, &none);
        assert!(!more);
        assert_eq!(resp_commands(&out), [["HINCRBY", "s:2", "counter", "1"]]);
        assert_eq!(expects, [Expect::redis(Check::Positive)]);

        let cas = Op::Cas { session: 1 };
        // WATCH stays on the connection until the EXEC of phase 1.
        assert!(e.holds_connection(cas, 0));
        assert!(!e.holds_connection(cas, 1));
        assert!(!e.holds_connection(Op::Incr { session: 1 }, 0));
        let (out, expects, more) = phase(&e, cas, 0, &none);
        assert!(more);
        assert_eq!(
            resp_commands(&out),
            [vec!["WATCH", "s:1"], vec!["HGET", "s:1", "counter"]]
        );
        assert_eq!(
            expects,
            [Expect::redis(Check::Ok), Expect::redis(Check::Read)]
        );
        let read = Carry {
            counter: 99,
            ..Carry::default()
        };
        let (out, expects, more) = phase(&e, cas, 1, &read);
        assert!(!more);
        assert_eq!(
            resp_commands(&out),
            [
                vec!["MULTI"],
                vec!["HSET", "s:1", "counter", "100"],
                vec!["EXEC"]
            ]
        );
        assert_eq!(
            expects,
            [
                Expect::redis(Check::Ok),
                Expect::redis(Check::Ok),
                Expect::redis(Check::Swapped)
            ]
        );
    }

    #[test]
    fn incr_and_cas_pick_sessions_by_the_seed() {
        for w in [Workload::Incr, Workload::Cas] {
            let e = Encoder::new(Protocol::Redis, w, "v", Sessions::redis_keys(50));
            let (mut a, mut b) = (Rng::new(5, 2), Rng::new(5, 2));
            let xs: Vec<Op> = (0..200).map(|i| e.choose(&mut a, i, 0, None)).collect();
            let ys: Vec<Op> = (0..200).map(|i| e.choose(&mut b, i, 0, None)).collect();
            assert_eq!(xs, ys);
            let mut seen = [false; 50];
            for op in xs {
                let (Op::Incr { session } | Op::Cas { session }) = op else {
                    panic!("{w:?} chose {op:?}");
                };
                seen[session as usize] = true;
            }
            assert!(seen.iter().filter(|&&s| s).count() > 40);
        }
    }

    #[test]
    fn owners_never_cross_lanes() {
        let lanes = 6;
        let o = Owners::new(300, lanes);
        assert_eq!(o.count(), 60);
        let e = Encoder::new(Protocol::Ws, Workload::LogoutAll, "v", Sessions::default())
            .with_owners(o);
        let mut rng = Rng::new(1, 1);
        for i in 0..1000 {
            let lane = i % lanes;
            let Op::LogoutAll { owner } = e.choose(&mut rng, i, lane, None) else {
                panic!("logout-all chooses owners");
            };
            assert!(owner < o.count());
            assert_eq!(owner % lanes, lane);
        }
        // Fewer sessions than lanes still gives every lane an owner.
        assert_eq!(Owners::new(3, 8).count(), 8);
        assert_eq!(member_id(b"ls:18446744073709551615"), Some(u64::MAX));
        assert_eq!(member_id(b"ls:18446744073709551616"), None);
        assert_eq!(member_id(b"ls:"), None);
        assert_eq!(member_id(b"s:1"), None);
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
        let xs: Vec<Op> = (0..50).map(|i| e.choose(&mut a, i, 0, None)).collect();
        let ys: Vec<Op> = (0..50).map(|i| e.choose(&mut b, i, 0, None)).collect();
        assert_eq!(xs, ys);
        let sets = (0..10_000)
            .filter(|&i| matches!(e.choose(&mut a, i, 0, None), Op::Set { .. }))
            .count();
        assert!((1700..2300).contains(&sets), "{sets}");
    }
}
