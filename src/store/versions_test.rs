//! Session versions and `SH_INCR` in the store: which writes count, the
//! carry from the session's 24 bits into its extras, and integers read and
//! written back as JSON text.

use std::sync::Arc;

use super::*;
use crate::persist::SessionRecord;
use crate::shared_names::SharedNames;

fn store() -> SessionStore {
    SessionStore::new(Arc::new(SharedNames::default()))
}

fn kv(k: &str, v: &str) -> KeyValue {
    (k.into(), v.as_bytes().into())
}

fn names(keys: &[&str]) -> Vec<Box<str>> {
    keys.iter().map(|&k| k.into()).collect()
}

fn version(s: &mut SessionStore, tkn: Token) -> u64 {
    s.version(tkn, 0).expect("the session lives")
}

/// A session restored at `version`, with an owner or not, and key `n` = 1.
fn restored(s: &mut SessionStore, tkn: Token, version: u64, owner: Option<&str>) {
    let record = SessionRecord {
        tkn,
        name: None,
        shared: false,
        expiry: None,
        owner: owner.map(Into::into),
        created_unix_ms: 0,
        idle_deadline_unix_ms: 0,
        version,
        keys: vec![("n".into(), b"1".to_vec().into())],
    };
    assert!(s.restore(record, 0, false).is_some());
}

/// One request's worth of store calls.
type Step = dyn Fn(&mut SessionStore);

#[test]
fn only_writes_that_change_keys_count() {
    let mut s = store();
    s.create(1, None, false, None, 0);
    assert_eq!(version(&mut s, 1), 1, "a new session is version 1");
    let steps: Vec<(&str, Box<Step>, u64)> = vec![
        (
            "set",
            Box::new(|s| s.set(1, vec![kv("a", "1")], 0).unwrap()),
            1,
        ),
        (
            "set, same value",
            Box::new(|s| s.set(1, vec![kv("a", "1")], 0).unwrap()),
            1,
        ),
        (
            "set, no keys",
            Box::new(|s| s.set(1, vec![], 0).unwrap()),
            0,
        ),
        (
            "add, existing",
            Box::new(|s| s.add(1, vec![kv("a", "2")], 0).unwrap()),
            0,
        ),
        (
            "add, new",
            Box::new(|s| s.add(1, vec![kv("a", "2"), kv("b", "2")], 0).unwrap()),
            1,
        ),
        (
            "rmv, absent",
            Box::new(|s| s.remove_keys(1, &names(&["zz"]), 0).unwrap()),
            0,
        ),
        (
            "rmv, present",
            Box::new(|s| s.remove_keys(1, &names(&["zz", "b"]), 0).unwrap()),
            1,
        ),
        (
            "incr by 0",
            Box::new(|s| assert_eq!(s.incr(1, "a", 0, 0), Ok(1))),
            0,
        ),
        (
            "incr by 0, absent",
            Box::new(|s| assert_eq!(s.incr(1, "c", 0, 0), Ok(0))),
            0,
        ),
        (
            "incr",
            Box::new(|s| assert_eq!(s.incr(1, "a", 5, 0), Ok(6))),
            1,
        ),
        (
            "incr, not an integer",
            Box::new(|s| {
                s.set(1, vec![kv("f", "1.5")], 0).unwrap();
                assert_eq!(s.incr(1, "f", 1, 0), Err(Refusal::NotInteger));
            }),
            1,
        ),
        ("clear", Box::new(|s| assert_eq!(s.clear(1, 0), Ok(2))), 1),
        (
            "clear, empty",
            Box::new(|s| assert_eq!(s.clear(1, 0), Ok(0))),
            0,
        ),
        (
            "clear_set, nothing to clear or set",
            Box::new(|s| assert_eq!(s.clear_set(1, vec![], 0), Ok(0))),
            0,
        ),
        (
            "clear_set, sets",
            Box::new(|s| assert_eq!(s.clear_set(1, vec![kv("x", "1")], 0), Ok(0))),
            1,
        ),
        (
            "clear_set, clears only",
            Box::new(|s| assert_eq!(s.clear_set(1, vec![], 0), Ok(1))),
            1,
        ),
        (
            "reads",
            Box::new(|s| {
                s.get(1, 0).unwrap();
                s.read(1, 0).unwrap();
                s.touch(1, true, 0).unwrap();
            }),
            0,
        ),
    ];
    for (what, step, counts) in steps {
        let before = version(&mut s, 1);
        step(&mut s);
        assert_eq!(version(&mut s, 1), before + counts, "{what}");
    }
}

#[test]
fn a_refused_write_leaves_the_version() {
    let mut s = store();
    s.create(1, None, false, None, 0);
    s.set_memory_limit(s.memory_used());
    assert_eq!(s.set(1, vec![kv("a", "1")], 0), Err(Refusal::MemoryLimit));
    assert_eq!(s.incr(1, "a", 1, 0), Err(Refusal::MemoryLimit));
    assert_eq!(version(&mut s, 1), 1);
}

#[test]
fn an_idle_expiry_that_clears_keys_counts_once_whenever_it_runs() {
    let settings = ExpirySettings::idle(1, false, false, false);
    // Lazily, on access long after several periods.
    let mut lazy = store();
    lazy.create(1, None, false, Some(settings), 0);
    lazy.set(1, vec![kv("a", "1")], 0).unwrap();
    assert_eq!(lazy.version(1, 5_500), Some(3));
    // By the wheel, period by period.
    let mut wheel = store();
    wheel.create(1, None, false, Some(settings), 0);
    wheel.set(1, vec![kv("a", "1")], 0).unwrap();
    for now in (0..=5_500).step_by(100) {
        wheel.expire_due(now, usize::MAX);
    }
    assert_eq!(wheel.version(1, 5_500), Some(3));
    // An expiry with no keys to clear changes nothing.
    assert_eq!(wheel.version(1, 60_000), Some(3));
}

#[test]
fn the_version_carries_past_24_bits_into_the_extras() {
    let mut s = store();
    let low_max = u64::from(VERSION_LOW_MAX);
    restored(&mut s, 1, low_max, None);
    restored(&mut s, 2, low_max, Some("ann"));
    let before = s.memory_used();
    for tkn in [1, 2] {
        s.set(tkn, vec![kv("a", "1")], 0).unwrap();
        assert_eq!(version(&mut s, tkn), low_max + 1);
        assert_eq!(s.incr(tkn, "n", 1, 0), Ok(2));
        assert_eq!(version(&mut s, tkn), low_max + 2);
    }
    assert_eq!(
        s.memory_used(),
        before + EXTRAS_OVERHEAD + 2 * (KEY_OVERHEAD + 2),
        "extras made for the session without, accounted"
    );
    assert_eq!(s.read_with_extras(1, 0).unwrap().1.unwrap().owner, None);
    assert_eq!(
        s.owner_sessions("ann", 0).len(),
        1,
        "the owner's list is as it was"
    );
    s.end(1, 0).unwrap();
    s.end(2, 0).unwrap();
    assert_eq!(s.memory_used(), 0);
}

#[test]
fn a_version_at_its_maximum_stays_there() {
    let mut s = store();
    restored(&mut s, 1, u64::MAX, None);
    assert_eq!(
        version(&mut s, 1),
        VERSION_MAX,
        "a loaded version is clamped"
    );
    s.set(1, vec![kv("a", "1")], 0).unwrap();
    assert_eq!(version(&mut s, 1), VERSION_MAX);
    restored(&mut s, 2, 0, None);
    assert_eq!(version(&mut s, 2), 1, "a loaded version is at least 1");
}

#[test]
fn incr_reads_json_integers_only() {
    let mut s = store();
    s.create(1, None, false, None, 0);
    for (stored, by, expected) in [
        ("0", 1, Ok(1)),
        ("-0", 1, Ok(1)),
        ("-5", 2, Ok(-3)),
        ("9223372036854775807", 0, Ok(i64::MAX)),
        ("9223372036854775807", 1, Err(Refusal::Overflow)),
        ("-9223372036854775808", -1, Err(Refusal::Overflow)),
        ("-9223372036854775808", 1, Ok(i64::MIN + 1)),
        ("9223372036854775808", 0, Err(Refusal::NotInteger)),
        ("18446744073709551616", 1, Err(Refusal::NotInteger)),
        ("1.0", 1, Err(Refusal::NotInteger)),
        ("1E2", 1, Err(Refusal::NotInteger)),
        ("1e2", 1, Err(Refusal::NotInteger)),
        ("01", 1, Err(Refusal::NotInteger)),
        ("-", 1, Err(Refusal::NotInteger)),
        ("\"1\"", 1, Err(Refusal::NotInteger)),
        ("{\"a\":1}", 1, Err(Refusal::NotInteger)),
        ("[1]", 1, Err(Refusal::NotInteger)),
        ("true", 1, Err(Refusal::NotInteger)),
        ("null", 1, Err(Refusal::NotInteger)),
    ] {
        s.set(1, vec![kv("k", stored)], 0).unwrap();
        assert_eq!(s.incr(1, "k", by, 0), expected, "{stored} + {by}");
        let after = s.read(1, 0).unwrap().keys.get("k").unwrap().to_vec();
        let written = match expected {
            Ok(sum) if by != 0 => sum.to_string(),
            _ => stored.to_string(),
        };
        assert_eq!(
            String::from_utf8(after).unwrap(),
            written,
            "{stored} + {by}"
        );
    }
}

#[test]
fn incr_writes_back_and_accounts_every_width() {
    let mut s = store();
    s.create(1, None, false, None, 0);
    let base = s.memory_used();
    assert_eq!(s.incr(1, "n", 7, 0), Ok(7), "absent counts as 0");
    assert_eq!(s.memory_used(), base + KEY_OVERHEAD + 2);
    assert_eq!(s.incr(1, "n", 3, 0), Ok(10), "wider");
    assert_eq!(s.incr(1, "n", -1, 0), Ok(9), "narrower");
    assert_eq!(s.incr(1, "n", -18, 0), Ok(-9), "same width: in place");
    assert_eq!(s.read(1, 0).unwrap().keys.get("n"), Some(&b"-9"[..]));
    assert_eq!(s.memory_used(), base + KEY_OVERHEAD + 1 + 2);
    assert_eq!(s.live_counts(0, usize::MAX), Some((1, 1)));
    // In a session big enough to hold its keys in a map.
    let many: Vec<KeyValue> = (0..40).map(|i| kv(&format!("k{i}"), "1")).collect();
    s.set(1, many, 0).unwrap();
    assert_eq!(s.incr(1, "k3", 8, 0), Ok(9));
    assert_eq!(s.incr(1, "k3", 1, 0), Ok(10));
    assert_eq!(s.incr(1, "fresh", 1, 0), Ok(1));
    assert_eq!(s.read(1, 0).unwrap().keys.get("k3"), Some(&b"10"[..]));
    s.end(1, 0).unwrap();
    assert_eq!(s.memory_used(), 0);
    assert_eq!(s.incr(1, "n", 1, 0), Err(NoSession));
}

#[test]
fn incr_slides_like_a_write() {
    let mut s = store();
    s.create(
        1,
        None,
        false,
        Some(ExpirySettings::idle(10, true, true, false)),
        0,
    );
    assert_eq!(s.incr(1, "n", 1, 9_000), Ok(1));
    assert_eq!(s.incr(1, "n", 0, 18_000), Ok(1), "by 0 slides too");
    assert_eq!(s.version(1, 27_999), Some(2));
    assert_eq!(s.version(1, 28_000), None);
}

/// A keys-only session with a lifetime, settled only after both its idle
/// deadline and its lifetime passed (a backlog, or a request finding it
/// first): its keys expired at the idle deadline, then it ended with its
/// lifetime, and the end carries no keys.
#[test]
fn a_late_lifetime_expiry_says_what_happened_when() {
    use crate::events::EventKind;
    let mut s = store();
    s.set_event_keys(Some(1 << 20));
    let settings = ExpirySettings {
        max_lifetime_s: 2,
        ..ExpirySettings::idle(1, false, false, false)
    };
    let new = NewSession {
        name: None,
        shared: false,
        expiry: Some(settings),
        owner: None,
        keys: vec![kv("a", "1")],
        report_version: false,
    };
    s.create_session(1, new, 0);
    assert_eq!(s.version(1, 2500), None, "gone: its lifetime is over");
    let ring = s.events();
    let events: Vec<_> = (ring.oldest()..=ring.head())
        .filter_map(|seq| ring.get(seq))
        .map(|e| (e.kind, e.deadline_unix_ms(), e.keys().map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(
        events,
        [
            (EventKind::Created, None, None),
            (
                EventKind::KeysExpired,
                Some(1000),
                Some(b"{\"a\":1}".to_vec())
            ),
            (
                EventKind::Expired { lifetime: true },
                Some(2000),
                Some(b"{}".to_vec())
            ),
        ]
    );
}
