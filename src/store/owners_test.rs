//! Owners and lifetimes in the store: the owner index against a scan of
//! the sessions (a property test over random lives and deaths), and the
//! lifetime's absolute end whatever sliding does.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::shared_names::SharedNames;

fn store() -> SessionStore {
    SessionStore::new(Arc::new(SharedNames::default()))
}

fn new_session(owner: Option<&str>, expiry: Option<ExpirySettings>) -> NewSession {
    NewSession {
        name: None,
        shared: false,
        expiry,
        owner: owner.map(Into::into),
        keys: vec![("k".into(), b"1".to_vec().into())],
        report_version: false,
    }
}

fn lifetime(duration_s: u32, max_lifetime_s: u32, delete_session: bool) -> ExpirySettings {
    ExpirySettings {
        max_lifetime_s,
        ..ExpirySettings::idle(duration_s, delete_session, true, true)
    }
}

/// The owner index as a scan of the live table sees it.
fn scanned_owners(s: &SessionStore) -> Vec<(String, Vec<Token>)> {
    let mut by_owner: BTreeMap<String, Vec<(u64, Token)>> = BTreeMap::new();
    for session in s.sessions.iter() {
        let extras = session_extras(&s.extras, session);
        assert_eq!(
            extras.is_some(),
            session.flags & HAS_EXTRAS != 0,
            "extras and flag agree"
        );
        if let Some(owner) = extras.and_then(|x| x.owner.as_deref()) {
            let created = extras.map_or(0, |x| x.created_unix_ms);
            by_owner
                .entry(owner.to_string())
                .or_default()
                .push((created, session.tkn));
        }
    }
    by_owner
        .into_iter()
        .map(|(owner, mut list)| {
            list.sort();
            (owner, list.into_iter().map(|(_, t)| t).collect())
        })
        .collect()
}

fn indexed_owners(s: &SessionStore) -> Vec<(String, Vec<Token>)> {
    s.owner_index()
        .into_iter()
        .map(|(owner, list)| {
            let mut list: Vec<(u64, Token)> = list
                .into_iter()
                .map(|t| {
                    let extras = s.sessions.get(t).and_then(|x| session_extras(&s.extras, x));
                    (extras.map_or(0, |x| x.created_unix_ms), t)
                })
                .collect();
            list.sort();
            (owner, list.into_iter().map(|(_, t)| t).collect())
        })
        .collect()
}

#[test]
fn a_lifetime_ends_a_session_kept_alive_by_reads() {
    let mut s = store();
    s.create_session(1, new_session(None, Some(lifetime(1, 3, false))), 0);
    // A get every 200 ms slides the idle deadline, never past 3 s.
    let mut now = 0;
    while now < 3000 {
        assert!(s.get(1, now).is_ok(), "alive at {now}");
        now += 200;
    }
    assert_eq!(s.get(1, 3000).map(|_| ()), Err(NoSession));
    assert_eq!((s.len(), s.memory_used()), (0, 0));
}

#[test]
fn keys_clear_at_idle_deadlines_and_the_session_ends_at_its_lifetime() {
    let mut s = store();
    s.create_session(1, new_session(None, Some(lifetime(1, 5, false))), 0);
    s.expire_due(1500, usize::MAX);
    assert_eq!(
        s.read(1, 1500).map(|x| x.keys.len()),
        Ok(0),
        "keys gone at 1 s"
    );
    s.expire_due(4999, usize::MAX);
    assert!(s.read(1, 4999).is_ok());
    s.expire_due(5000, usize::MAX);
    assert_eq!(s.len(), 0, "the wheel ends it at 5 s");
}

#[test]
fn duration_zero_with_a_lifetime_has_only_the_lifetime() {
    let mut s = store();
    s.create_session(1, new_session(None, Some(lifetime(0, 2, false))), 0);
    assert_eq!(
        s.touch(1, true, 500),
        Ok(1500),
        "sliding has nothing to move"
    );
    assert!(s.get(1, 1999).is_ok());
    assert_eq!(s.touch(1, false, 2000), Err(NoSession));
}

#[test]
fn touch_slides_capped_at_the_lifetime_and_says_minus_one_without_expiry() {
    let mut s = store();
    s.create_session(1, new_session(None, Some(lifetime(10, 12, true))), 0);
    s.create_session(2, new_session(None, None), 0);
    s.create_session(
        3,
        new_session(None, Some(ExpirySettings::idle(10, true, false, false))),
        0,
    );
    assert_eq!(s.touch(1, false, 1000), Ok(9000));
    assert_eq!(
        s.touch(1, true, 5000),
        Ok(7000),
        "capped at the 12 s lifetime"
    );
    assert_eq!(s.touch(2, true, 5000), Ok(-1));
    assert_eq!(
        s.touch(3, true, 5000),
        Ok(10_000),
        "whatever the extend flags say"
    );
    assert_eq!(s.touch(3, false, 6000), Ok(9000));
    assert_eq!(s.touch(9, true, 0), Err(NoSession));
}

#[test]
fn owners_list_oldest_first_and_end_all_but_one() {
    let mut s = store();
    for (tkn, now) in [(5, 0), (3, 10), (9, 20)] {
        s.create_session(tkn, new_session(Some("ann"), None), now);
    }
    s.create_session(7, new_session(Some("bob"), None), 30);
    s.create_session(8, new_session(None, None), 40);
    let list = |s: &mut SessionStore| -> Vec<Token> {
        s.owner_sessions("ann", 50)
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    };
    assert_eq!(list(&mut s), [5, 3, 9]);
    assert_eq!(s.owner_end("ann", Some(3), 50), 2);
    assert_eq!(list(&mut s), [3]);
    assert_eq!(s.owner_end("nobody", None, 50), 0);
    assert_eq!(s.len(), 3);
    assert_eq!(s.end_all(60), 3);
    assert_eq!((s.memory_used(), s.owner_index().len()), (0, 0));
}

#[test]
fn a_session_without_owner_or_lifetime_costs_what_it_did() {
    let mut a = store();
    let mut b = store();
    a.create(
        1,
        None,
        false,
        Some(ExpirySettings::idle(5, true, false, false)),
        0,
    );
    let mut plain = new_session(None, Some(ExpirySettings::idle(5, true, false, false)));
    plain.keys.clear();
    b.create_session(1, plain, 0);
    assert_eq!(a.memory_used(), b.memory_used());
    assert!(b.sessions.get(1).and_then(Session::extras_slot).is_none());
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        owner: Option<u8>,
        expiry: Option<(u32, u32, bool)>,
    },
    End(usize),
    OwnerEnd {
        owner: u8,
        except: Option<usize>,
    },
    Advance(u64),
    Background(usize),
    EndAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            proptest::option::of(0u8..3),
            proptest::option::of((0u32..3, 0u32..4, any::<bool>()))
        )
            .prop_map(|(owner, expiry)| Op::Create { owner, expiry }),
        2 => any::<usize>().prop_map(Op::End),
        1 => (0u8..3, proptest::option::of(any::<usize>()))
            .prop_map(|(owner, except)| Op::OwnerEnd { owner, except }),
        2 => (0u64..2500).prop_map(Op::Advance),
        1 => (0usize..4).prop_map(Op::Background),
        1 => Just(Op::EndAll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever lives and dies, the owner index is exactly what a scan of
    /// the sessions finds, and every owner's listing is its live sessions.
    #[test]
    fn the_owner_index_always_equals_a_scan(ops in proptest::collection::vec(op(), 1..80)) {
        let mut s = store();
        let mut now = 0;
        let mut next_tkn = 1;
        let mut created: Vec<Token> = Vec::new();
        for op in ops {
            match op {
                Op::Create { owner, expiry } => {
                    let owner = owner.map(|o| format!("owner{o}"));
                    let expiry = expiry
                        .map(|(d, l, del)| lifetime(d, l, del))
                        .filter(|e| e.duration_s > 0 || e.max_lifetime_s > 0);
                    s.create_session(next_tkn, new_session(owner.as_deref(), expiry), now);
                    created.push(next_tkn);
                    next_tkn += 1;
                }
                Op::End(i) if !created.is_empty() => {
                    let _ = s.end(created[i % created.len()], now);
                }
                Op::End(_) => {}
                Op::OwnerEnd { owner, except } => {
                    let owner = format!("owner{owner}");
                    let except = except.filter(|_| !created.is_empty()).map(|i| created[i % created.len()]);
                    let live_before: Vec<Token> =
                        s.owner_sessions(&owner, now).into_iter().map(|(_, t)| t).collect();
                    let ended = s.owner_end(&owner, except, now);
                    let expected = live_before.iter().filter(|&&t| Some(t) != except).count();
                    prop_assert_eq!(ended, expected as u64);
                    let left: Vec<Token> =
                        s.owner_sessions(&owner, now).into_iter().map(|(_, t)| t).collect();
                    prop_assert!(left.iter().all(|&t| Some(t) == except));
                }
                Op::Advance(ms) => now += ms,
                Op::Background(budget) => {
                    s.expire_due(now, budget);
                }
                Op::EndAll => {
                    s.end_all(now);
                }
            }
            prop_assert_eq!(indexed_owners(&s), scanned_owners(&s));
            for o in 0..3 {
                let owner = format!("owner{o}");
                let listed: Vec<Token> =
                    s.owner_sessions(&owner, now).into_iter().map(|(_, t)| t).collect();
                for &tkn in &listed {
                    prop_assert!(s.exists(tkn, now));
                }
            }
        }
        s.end_all(now);
        prop_assert_eq!((s.memory_used(), s.owner_index().len()), (0, 0));
    }
}
