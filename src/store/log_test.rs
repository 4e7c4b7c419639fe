//! The change log is complete: random sequences of every change (creates
//! with owners, lifetimes and keys; every write; reads that slide; touches;
//! ends; end-all; loads; time passing and expiry) on a store that logs,
//! then recovery from that log alone (through a real log writer and
//! `persist::recovery`) must give exactly the sessions the store holds:
//! keys, version, settings, owner, and the idle deadline (no more than the
//! documented step behind for a sliding one).

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::{Millis, SessionStore};
use crate::domain::{ExpirySettings, KeyValue, NewSession, Token};
use crate::persist::format::{Cursor, FORMAT_VERSION, decode_record};
use crate::persist::log::{FsyncPolicy, LOG_DIR, LogWriter, LogWriterConfig};
use crate::persist::test_support::TempDir;
use crate::persist::{SessionRecord, recovery};
use crate::shared_names::SharedNames;

const WALL_EPOCH: u64 = 1_800_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Create {
        expiry: Option<ExpirySettings>,
        shared: bool,
        owner: bool,
        keys: u8,
    },
    Set(usize, u8),
    Add(usize, u8, u8),
    Rmv(usize, u8),
    Clear(usize),
    ClearSet(usize, u8),
    Incr(usize, u8, i64),
    Get(usize),
    Touch(usize),
    End(usize),
    OwnerEnd,
    EndAll,
    Load(usize),
    Advance(Millis),
    Background(usize),
}

fn settings() -> impl Strategy<Value = Option<ExpirySettings>> {
    prop_oneof![
        1 => Just(None),
        4 => (0u32..4, 0u32..5, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(d, life, del, set, get)| {
                // A lifetime only: no idle deadline; neither: none at all.
                let (duration_s, max_lifetime_s) = match (d, life) {
                    (0, 0) => (1, 0),
                    (d, l) if l > 3 => (d, 0),
                    (d, l) => (d, l),
                };
                Some(ExpirySettings {
                    duration_s,
                    delete_session: del,
                    extend_on_set_add: set,
                    extend_on_get: get,
                    max_lifetime_s,
                })
            }
        ),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (settings(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(|(expiry, shared, owner, keys)| {
            Op::Create { expiry, shared, owner, keys }
        }),
        3 => (0usize..16, 0u8..4).prop_map(|(i, k)| Op::Set(i, k)),
        2 => (0usize..16, 0u8..4, 0u8..4).prop_map(|(i, k, j)| Op::Add(i, k, j)),
        1 => (0usize..16, 0u8..4).prop_map(|(i, k)| Op::Rmv(i, k)),
        1 => (0usize..16).prop_map(Op::Clear),
        1 => (0usize..16, 0u8..4).prop_map(|(i, k)| Op::ClearSet(i, k)),
        2 => (0usize..16, 0u8..4, -2i64..3).prop_map(|(i, k, by)| Op::Incr(i, k, by)),
        3 => (0usize..16).prop_map(Op::Get),
        1 => (0usize..16).prop_map(Op::Touch),
        1 => (0usize..16).prop_map(Op::End),
        1 => Just(Op::OwnerEnd),
        1 => Just(Op::EndAll),
        1 => (0usize..16).prop_map(Op::Load),
        3 => prop_oneof![0u64..50, 400u64..1100, 1500u64..3500].prop_map(Op::Advance),
        2 => (1usize..4).prop_map(Op::Background),
    ]
}

fn kv(k: u8, v: usize) -> KeyValue {
    (format!("k{k}").into(), v.to_string().into_bytes().into())
}

/// Every session the store holds, as a full snapshot encodes it.
fn snapshot(store: &mut SessionStore, now: Millis) -> Vec<SessionRecord> {
    store.begin_snapshot(now, None).unwrap();
    let mut bytes = Vec::new();
    loop {
        let chunk = store.snapshot_step(usize::MAX).unwrap();
        bytes.extend_from_slice(&chunk.bytes);
        if chunk.done {
            break;
        }
    }
    let mut cur = Cursor {
        bytes: &bytes,
        pos: 0,
    };
    let mut out = Vec::new();
    while cur.pos < bytes.len() {
        out.push(decode_record(&mut cur, FORMAT_VERSION).unwrap());
    }
    out
}

/// What recovery makes of the store's log alone.
fn recovered(store: &mut SessionStore) -> Vec<SessionRecord> {
    let root = TempDir::new("log-model");
    let dir = root.path().join(LOG_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let writer = LogWriter::start(
        LogWriterConfig {
            dir,
            generation: 1,
            shard: 0,
            shards: 1,
            policy: FsyncPolicy::No,
            segment_bytes: 4096,
        },
        Box::new(|_| {}),
    )
    .unwrap();
    if let Some(batch) = store.take_log(None) {
        writer.append(batch);
    }
    drop(writer);
    recovery::recover(root.path(), "auto", false)
        .unwrap()
        .records
}

fn by_token(records: Vec<SessionRecord>) -> BTreeMap<Token, SessionRecord> {
    records
        .into_iter()
        .map(|mut r| {
            r.keys.sort();
            (r.tkn, r)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn recovery_from_the_log_alone_gives_the_store_back(ops in proptest::collection::vec(op(), 1..100)) {
        let names = Arc::new(SharedNames::default());
        let mut store = SessionStore::new(names.clone());
        store.set_wall_epoch(WALL_EPOCH);
        store.enable_log(1);
        let mut tokens: Vec<Token> = Vec::new();
        let mut loaded: Vec<SessionRecord> = Vec::new();
        let mut now: Millis = 0;
        for (step, op) in ops.into_iter().enumerate() {
            let pick = |i: usize| tokens.get(i % tokens.len().max(1)).copied();
            match op {
                Op::Create { expiry, shared, owner, keys } => {
                    let tkn = tokens.len() as Token + 1;
                    let name = format!("s{tkn}");
                    if shared && !names.register(&name, tkn) {
                        continue;
                    }
                    let new = NewSession {
                        name: Some(name.into()),
                        shared,
                        expiry,
                        owner: owner.then(|| "ann".into()),
                        keys: (0..keys).map(|k| kv(k, step)).collect(),
                        report_version: false,
                    };
                    store.create_session(tkn, new, now);
                    tokens.push(tkn);
                }
                Op::Set(i, k) => {
                    let Some(tkn) = pick(i) else { continue };
                    let _ = store.set(tkn, vec![kv(k, step), kv(k + 1, step)], now);
                }
                Op::Add(i, k, j) => {
                    let Some(tkn) = pick(i) else { continue };
                    // Twice the same key: only its first value is added.
                    let _ = store.add(tkn, vec![kv(k, step), kv(j, step + 1), kv(k, step + 2)], now);
                }
                Op::Rmv(i, k) => {
                    let Some(tkn) = pick(i) else { continue };
                    let _ = store.remove_keys(tkn, &[format!("k{k}").into(), "nope".into()], now);
                }
                Op::Clear(i) => {
                    let Some(tkn) = pick(i) else { continue };
                    let _ = store.clear(tkn, now);
                }
                Op::ClearSet(i, k) => {
                    let Some(tkn) = pick(i) else { continue };
                    let _ = store.clear_set(tkn, vec![kv(k, step)], now);
                }
                Op::Incr(i, k, by) => {
                    let Some(tkn) = pick(i) else { continue };
                    let _ = store.incr(tkn, &format!("n{k}"), by, now);
                }
                Op::Get(i) => {
                    let Some(tkn) = pick(i) else { continue };
                    let _ = store.get(tkn, now);
                }
                Op::Touch(i) => {
                    let Some(tkn) = pick(i) else { continue };
                    let _ = store.touch(tkn, true, now);
                }
                Op::End(i) => {
                    let Some(tkn) = pick(i) else { continue };
                    if store.end(tkn, now).is_ok() {
                        // Ended: a load may bring it back later.
                    }
                }
                Op::OwnerEnd => {
                    store.owner_end("ann", tokens.first().copied(), now);
                }
                Op::EndAll => {
                    loaded = snapshot(&mut store, now);
                    store.end_all(now);
                }
                Op::Load(i) => {
                    // An SH_LOAD of what an earlier end-all ended.
                    if !loaded.is_empty() {
                        let record = loaded.swap_remove(i % loaded.len());
                        store.restore(record, now, false);
                    }
                }
                Op::Advance(ms) => now += ms,
                Op::Background(budget) => {
                    store.expire_due(now, budget);
                }
            }
        }
        // Expiry due now is settled (and logged) first: a snapshot at `now`
        // leaves out what the recovered state would still expire.
        while store.expire_due(now, usize::MAX) {}
        let expected = by_token(snapshot(&mut store, now));
        let got = by_token(recovered(&mut store));
        prop_assert_eq!(
            expected.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>(),
            "the same sessions"
        );
        for (tkn, want) in &expected {
            let have = &got[tkn];
            let mut have_cmp = have.clone();
            // A sliding deadline may be logged up to a step behind.
            if let Some(e) = want.expiry
                && (e.extend_on_get || e.extend_on_set_add)
                && e.duration_s > 0
            {
                let step = (u64::from(e.duration_s) * 100).max(1000);
                prop_assert!(
                    have.idle_deadline_unix_ms <= want.idle_deadline_unix_ms
                        && have.idle_deadline_unix_ms + step > want.idle_deadline_unix_ms,
                    "session {}: recovered deadline {} vs {}",
                    tkn,
                    have.idle_deadline_unix_ms,
                    want.idle_deadline_unix_ms
                );
                have_cmp.idle_deadline_unix_ms = want.idle_deadline_unix_ms;
            }
            prop_assert_eq!(&have_cmp, want, "session {}", tkn);
        }
    }
}
