//! Model-based test of the store's expiry and versions: random sequences of
//! create / every write / read / end / advance-time / background-expiry
//! against a plain reference model. Clients must see the same state (keys,
//! deadline, version) at every step, whatever the background budget did or
//! did not get to.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::{Millis, NoSession, SessionStore};
use crate::domain::{ExpirySettings, KeyValue, Token};
use crate::shared_names::SharedNames;

#[derive(Clone, Debug)]
enum Op {
    Create(Option<ExpirySettings>, bool),
    Set(usize, u8),
    Add(usize, u8),
    Rmv(usize, u8),
    Clear(usize),
    ClearSet(usize, u8),
    Incr(usize, u8, i64),
    Get(usize, u8),
    Read(usize),
    End(usize),
    EndAll,
    Advance(Millis),
    Background(usize),
    Counts,
}

fn settings() -> impl Strategy<Value = Option<ExpirySettings>> {
    prop_oneof![
        1 => Just(None),
        4 => (1u32..4, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(d, del, set, get)| {
            Some(ExpirySettings {
                duration_s: d,
                delete_session: del,
                extend_on_set_add: set,
                extend_on_get: get,
                max_lifetime_s: 0,
            })
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (settings(), any::<bool>()).prop_map(|(s, shared)| Op::Create(s, shared)),
        3 => (0usize..16, 0u8..4).prop_map(|(i, k)| Op::Set(i, k)),
        1 => (0usize..16, 0u8..4).prop_map(|(i, k)| Op::Add(i, k)),
        1 => (0usize..16, 0u8..4).prop_map(|(i, k)| Op::Rmv(i, k)),
        1 => (0usize..16).prop_map(Op::Clear),
        1 => (0usize..16, 0u8..4).prop_map(|(i, k)| Op::ClearSet(i, k)),
        2 => (0usize..16, 0u8..4, -2i64..3).prop_map(|(i, k, by)| Op::Incr(i, k, by)),
        3 => (0usize..16, 0u8..4).prop_map(|(i, k)| Op::Get(i, k)),
        1 => (0usize..16).prop_map(Op::Read),
        1 => (0usize..16).prop_map(Op::End),
        1 => Just(Op::EndAll),
        3 => prop_oneof![0u64..50, 900u64..1100, 1500u64..3500].prop_map(Op::Advance),
        2 => (1usize..4).prop_map(Op::Background),
        1 => Just(Op::Counts),
    ]
}

#[derive(Clone, Debug)]
struct ModelSession {
    keys: BTreeMap<String, String>,
    expiry: Option<(ExpirySettings, Millis)>,
    name: Option<String>,
    /// What PROTOCOL.md says it is: 1, plus one per change to the keys.
    version: u64,
}

#[derive(Default)]
struct Model {
    sessions: BTreeMap<Token, ModelSession>,
    names: BTreeMap<String, Token>,
}

impl Model {
    /// What the protocol promises: a session past its deadline has expired.
    fn settle(&mut self, tkn: Token, now: Millis) {
        let Some(s) = self.sessions.get_mut(&tkn) else {
            return;
        };
        let Some((settings, deadline)) = s.expiry else {
            return;
        };
        if now < deadline {
            return;
        }
        if settings.delete_session {
            if let Some(name) = &s.name {
                self.names.remove(name);
            }
            self.sessions.remove(&tkn);
        } else {
            if !s.keys.is_empty() {
                s.keys.clear();
                s.version += 1;
            }
            let period = u64::from(settings.duration_s) * 1000;
            let mut next = deadline + period;
            while next <= now {
                next += period;
            }
            s.expiry = Some((settings, next));
        }
    }

    fn settle_all(&mut self, now: Millis) {
        let tokens: Vec<Token> = self.sessions.keys().copied().collect();
        for tkn in tokens {
            self.settle(tkn, now);
        }
    }

    fn slide(&mut self, tkn: Token, now: Millis, on_get: bool) {
        if let Some(ModelSession {
            expiry: Some((settings, deadline)),
            ..
        }) = self.sessions.get_mut(&tkn)
        {
            let slide = if on_get {
                settings.extend_on_get
            } else {
                settings.extend_on_set_add
            };
            if slide {
                *deadline = now + u64::from(settings.duration_s) * 1000;
            }
        }
    }
}

fn kv(k: u8, v: usize) -> KeyValue {
    (format!("k{k}").into(), v.to_string().into_bytes().into())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_reference_model(ops in proptest::collection::vec(op(), 1..120)) {
        let names = Arc::new(SharedNames::default());
        let mut store = SessionStore::new(names.clone());
        let mut model = Model::default();
        let mut tokens: Vec<Token> = Vec::new();
        let mut now: Millis = 0;
        for (step, op) in ops.into_iter().enumerate() {
            let pick = |i: usize| tokens.get(i % tokens.len().max(1)).copied();
            match op {
                Op::Create(settings, shared) => {
                    let tkn = tokens.len() as Token + 1;
                    let name = format!("s{tkn}");
                    if shared {
                        prop_assert!(names.register(&name, tkn));
                        model.names.insert(name.clone(), tkn);
                    }
                    store.create(tkn, Some(name.clone().into()), shared, settings, now);
                    model.sessions.insert(tkn, ModelSession {
                        keys: BTreeMap::new(),
                        expiry: settings.map(|s| (s, now + u64::from(s.duration_s) * 1000)),
                        name: shared.then_some(name),
                        version: 1,
                    });
                    tokens.push(tkn);
                }
                Op::Set(i, k) => {
                    let Some(tkn) = pick(i) else { continue };
                    model.settle(tkn, now);
                    let expected = model.sessions.contains_key(&tkn);
                    let got = store.set(tkn, vec![kv(k, step)], now);
                    prop_assert_eq!(got.is_ok(), expected, "set {} at {}", tkn, now);
                    if expected {
                        model.slide(tkn, now, false);
                        let s = model.sessions.get_mut(&tkn).unwrap();
                        s.keys.insert(format!("k{k}"), step.to_string());
                        s.version += 1;
                    }
                }
                Op::Add(i, k) => {
                    let Some(tkn) = pick(i) else { continue };
                    model.settle(tkn, now);
                    let expected = model.sessions.contains_key(&tkn);
                    let got = store.add(tkn, vec![kv(k, step)], now);
                    prop_assert_eq!(got.is_ok(), expected, "add {} at {}", tkn, now);
                    if expected {
                        model.slide(tkn, now, false);
                        let s = model.sessions.get_mut(&tkn).unwrap();
                        if let std::collections::btree_map::Entry::Vacant(e) =
                            s.keys.entry(format!("k{k}"))
                        {
                            e.insert(step.to_string());
                            s.version += 1;
                        }
                    }
                }
                Op::Rmv(i, k) => {
                    let Some(tkn) = pick(i) else { continue };
                    model.settle(tkn, now);
                    let expected = model.sessions.contains_key(&tkn);
                    let got = store.remove_keys(tkn, &[format!("k{k}").into()], now);
                    prop_assert_eq!(got.is_ok(), expected, "rmv {} at {}", tkn, now);
                    if let Some(s) = model.sessions.get_mut(&tkn)
                        && s.keys.remove(&format!("k{k}")).is_some()
                    {
                        s.version += 1;
                    }
                }
                Op::Clear(i) => {
                    let Some(tkn) = pick(i) else { continue };
                    model.settle(tkn, now);
                    let expected = model.sessions.get_mut(&tkn).map(|s| {
                        let removed = s.keys.len();
                        if removed > 0 {
                            s.keys.clear();
                            s.version += 1;
                        }
                        removed
                    });
                    prop_assert_eq!(store.clear(tkn, now).ok(), expected, "clear {} at {}", tkn, now);
                }
                Op::ClearSet(i, k) => {
                    let Some(tkn) = pick(i) else { continue };
                    model.settle(tkn, now);
                    let expected = model.sessions.contains_key(&tkn);
                    let got = store.clear_set(tkn, vec![kv(k, step)], now);
                    prop_assert_eq!(got.is_ok(), expected, "clear_set {} at {}", tkn, now);
                    if expected {
                        model.slide(tkn, now, false);
                        let s = model.sessions.get_mut(&tkn).unwrap();
                        s.keys.clear();
                        s.keys.insert(format!("k{k}"), step.to_string());
                        s.version += 1;
                    }
                }
                Op::Incr(i, k, by) => {
                    let Some(tkn) = pick(i) else { continue };
                    model.settle(tkn, now);
                    let expected = model.sessions.get_mut(&tkn).map(|s| {
                        let key = format!("k{k}");
                        let old: i64 = s.keys.get(&key).map_or(0, |v| v.parse().unwrap());
                        if by != 0 {
                            s.keys.insert(key, (old + by).to_string());
                            s.version += 1;
                        }
                        old + by
                    });
                    let got = store.incr(tkn, &format!("k{k}"), by, now);
                    prop_assert_eq!(got.ok(), expected, "incr {} at {}", tkn, now);
                    if expected.is_some() {
                        model.slide(tkn, now, false);
                    }
                }
                Op::Get(i, k) => {
                    let Some(tkn) = pick(i) else { continue };
                    model.settle(tkn, now);
                    let expected = model
                        .sessions
                        .get(&tkn)
                        .map(|s| s.keys.get(&format!("k{k}")).cloned());
                    let got = store.get(tkn, now).map(|s| {
                        s.keys
                            .get(&format!("k{k}"))
                            .map(|v| String::from_utf8(v.to_vec()).unwrap())
                    });
                    prop_assert_eq!(got.ok(), expected.clone(), "get {} at {}", tkn, now);
                    if expected.is_some() {
                        model.slide(tkn, now, true);
                    }
                }
                Op::Read(i) => {
                    let Some(tkn) = pick(i) else { continue };
                    model.settle(tkn, now);
                    let expected = model.sessions.get(&tkn).map(|s| {
                        (s.keys.len(), s.expiry.map(|(_, d)| d), s.version)
                    });
                    let version = store.version(tkn, now);
                    let got = store
                        .read(tkn, now)
                        .map(|s| (s.keys.len(), s.expiry().map(|e| e.deadline)))
                        .ok()
                        .zip(version)
                        .map(|((keys, deadline), version)| (keys, deadline, version));
                    prop_assert_eq!(got, expected, "read {} at {}", tkn, now);
                }
                Op::End(i) => {
                    let Some(tkn) = pick(i) else { continue };
                    model.settle(tkn, now);
                    let expected = model.sessions.remove(&tkn);
                    if let Some(name) = expected.as_ref().and_then(|s| s.name.clone()) {
                        model.names.remove(&name);
                    }
                    let got = store.end(tkn, now);
                    prop_assert_eq!(got, if expected.is_some() { Ok(()) } else { Err(NoSession) });
                }
                Op::EndAll => {
                    model.settle_all(now);
                    let live = model.sessions.len() as u64;
                    model.sessions.clear();
                    model.names.clear();
                    prop_assert_eq!(store.end_all(now), live);
                }
                Op::Advance(ms) => now += ms,
                Op::Background(budget) => {
                    store.expire_due(now, budget);
                }
                Op::Counts => {
                    model.settle_all(now);
                    let keys: usize = model.sessions.values().map(|s| s.keys.len()).sum();
                    let counts = loop {
                        if let Some(counts) = store.live_counts(now, 2) {
                            break counts;
                        }
                    };
                    prop_assert_eq!(counts, (model.sessions.len() as u64, keys as u64));
                }
            }
            // Shared names are released exactly when their session goes,
            // at the latest when something looks.
            for (name, tkn) in model.names.clone() {
                if store.exists(tkn, now) {
                    prop_assert_eq!(names.lookup(&name), Some(tkn));
                } else {
                    prop_assert_eq!(names.lookup(&name), None);
                }
            }
            // Memory is bounded by the live sessions: never more timers.
            prop_assert!(store.wheel.len() <= store.len());
        }
        // In the end, with time run out, background expiry alone frees
        // every session that expires with deleteSession.
        now += 10_000;
        while store.expire_due(now, 3) {}
        model.settle_all(now);
        prop_assert_eq!(store.len(), model.sessions.len());
    }
}
