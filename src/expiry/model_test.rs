//! Model test: random insert / remove / reschedule / advance sequences against a plain
//! `BTreeMap` of live timers. Checks that nothing fires early, nothing is lost or fired
//! twice, `len` and `next_deadline` agree with the model, and a budget-limited advance
//! finishes its due work within a bounded number of further calls.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{TimerKey, TimingWheel};

#[derive(Clone, Debug)]
enum Op {
    /// Deadline `now + offset`, or `now - offset` when `past`.
    Insert {
        offset: u64,
        past: bool,
    },
    /// Remove the `nth % live` live timer; also tries a dead key now and then.
    Remove {
        nth: usize,
    },
    Reschedule {
        nth: usize,
        offset: u64,
    },
    /// One call of `advance_to(now + step, budget)`.
    Advance {
        step: u64,
        budget: usize,
    },
    /// Keep advancing at the current `now` until the wheel reports no due work.
    Drain {
        budget: usize,
    },
}

/// Offsets at every scale the levels care about: within a tick range, a slot, and far.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..70u64,
        3 => 0..5_000u64,
        2 => 0..400_000u64,
        1 => 0..(1u64 << 42),
        1 => Just(u64::MAX),
    ]
}

fn step() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..8u64,
        3 => 0..300u64,
        2 => 0..20_000u64,
        1 => 0..(1u64 << 36),
    ]
}

fn budget() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 4 => 1..5usize, 2 => 5..100usize, 1 => Just(usize::MAX)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (offset(), proptest::bool::weighted(0.1))
            .prop_map(|(offset, past)| Op::Insert { offset, past }),
        2 => any::<usize>().prop_map(|nth| Op::Remove { nth }),
        1 => (any::<usize>(), offset()).prop_map(|(nth, offset)| Op::Reschedule { nth, offset }),
        4 => (step(), budget()).prop_map(|(step, budget)| Op::Advance { step, budget }),
        1 => (1..20usize).prop_map(|budget| Op::Drain { budget }),
    ]
}

/// The reference: live timers by unique value, plus keys that died and were not reused.
struct Model {
    /// value -> (key, deadline); values are never reused, so a fire names its timer.
    live: BTreeMap<u64, (TimerKey, u64)>,
    next_value: u64,
    /// Keys of removed or fired timers not yet handed out again: must not be live.
    dead: Vec<TimerKey>,
}

impl Model {
    fn due(&self, now: u64) -> usize {
        self.live.values().filter(|&&(_, d)| d <= now).count()
    }

    fn earliest(&self) -> Option<u64> {
        self.live.values().map(|&(_, d)| d).min()
    }

    fn nth(&self, nth: usize) -> Option<(u64, TimerKey)> {
        let len = self.live.len();
        (len > 0).then(|| {
            let (&value, &(key, _)) = self.live.iter().nth(nth % len).expect("in range");
            (value, key)
        })
    }

    /// Apply one advance's fires: each must be live, due, and reported with its deadline.
    fn fired(&mut self, fired: &[(u64, u64)], now: u64) -> Result<(), TestCaseError> {
        for &(deadline, value) in fired {
            let Some((key, expected)) = self.live.remove(&value) else {
                return Err(TestCaseError::fail(format!(
                    "value {value} fired but is not live (duplicate or removed)"
                )));
            };
            prop_assert_eq!(deadline, expected);
            prop_assert!(deadline <= now, "fired early: {} > now {}", deadline, now);
            self.dead.push(key);
        }
        Ok(())
    }
}

/// Call `advance_to(now, budget)` until it reports no due work, within the bound the
/// budget promises: every call does `budget` units of work and a timer needs at most
/// one per level (cascades plus its fire).
fn drain(wheel: &mut TimingWheel, model: &mut Model, budget: usize) -> Result<(), TestCaseError> {
    let now = wheel.now();
    let limit = model.live.len() * 11 / budget.max(1) + 2;
    let mut fired = Vec::new();
    for _ in 0..limit {
        fired.clear();
        let more = wheel.advance_to(now, budget, &mut fired);
        model.fired(&fired, now)?;
        if !more {
            prop_assert_eq!(
                model.due(now),
                0,
                "due timers left after a complete advance"
            );
            return Ok(());
        }
    }
    Err(TestCaseError::fail(format!(
        "no complete advance within {limit} calls of budget {budget}"
    )))
}

fn check(start: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut wheel = TimingWheel::new(start);
    let mut model = Model {
        live: BTreeMap::new(),
        next_value: 0,
        dead: Vec::new(),
    };
    let mut fired = Vec::new();
    for op in ops {
        let now = wheel.now();
        match op {
            Op::Insert { offset, past } => {
                let deadline = if past {
                    now.saturating_sub(offset)
                } else {
                    now.saturating_add(offset)
                };
                let value = model.next_value;
                model.next_value += 1;
                let key = wheel.insert(deadline, value);
                prop_assert!(model.live.values().all(|&(k, _)| k != key), "key in use");
                model.dead.retain(|&k| k != key);
                model.live.insert(value, (key, deadline));
            }
            Op::Remove { nth } => {
                if let Some((value, key)) = model.nth(nth) {
                    prop_assert_eq!(wheel.remove(key), Some(value));
                    model.live.remove(&value);
                    model.dead.push(key);
                }
                if let Some(&key) = model.dead.get(nth % model.dead.len().max(1)) {
                    prop_assert_eq!(wheel.remove(key), None);
                }
            }
            Op::Reschedule { nth, offset } => {
                if let Some((value, key)) = model.nth(nth) {
                    let deadline = now.saturating_add(offset);
                    prop_assert!(wheel.reschedule(key, deadline));
                    prop_assert_eq!(wheel.deadline(key), Some(deadline));
                    model.live.insert(value, (key, deadline));
                }
            }
            Op::Advance { step, budget } => {
                fired.clear();
                let target = now.saturating_add(step);
                let more = wheel.advance_to(target, budget, &mut fired);
                prop_assert_eq!(wheel.now(), target);
                prop_assert!(fired.len() <= budget);
                model.fired(&fired, target)?;
                if !more {
                    prop_assert_eq!(model.due(target), 0, "due timers left, advance said done");
                }
            }
            Op::Drain { budget } => drain(&mut wheel, &mut model, budget)?,
        }
        prop_assert_eq!(wheel.len(), model.live.len());
        prop_assert_eq!(wheel.is_empty(), model.live.is_empty());
        let next = wheel.next_deadline();
        match model.earliest() {
            None => prop_assert_eq!(next, None),
            // A deadline already passed can fire no earlier than now: `now` is then the
            // answer, which still tells the caller not to wait.
            Some(earliest) => prop_assert!(
                next.is_some_and(|n| n <= earliest.max(wheel.now())),
                "next_deadline {:?} later than earliest {} (now {})",
                next,
                earliest,
                wheel.now()
            ),
        }
        for &(key, deadline) in model.live.values() {
            prop_assert_eq!(wheel.deadline(key), Some(deadline));
        }
    }
    // Whatever is left fires exactly once, none early, when time runs out.
    fired.clear();
    prop_assert!(!wheel.advance_to(u64::MAX, usize::MAX, &mut fired));
    model.fired(&fired, u64::MAX)?;
    prop_assert!(model.live.is_empty() && wheel.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn wheel_matches_a_reference_model(
        start in prop_oneof![Just(0u64), 0..1_000_000u64, (u64::MAX - (1 << 40))..u64::MAX],
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        check(start, ops)?;
    }
}
