//! The hierarchical hashed timing wheel: timers in a slab, slots as `Vec`s of slab indices.
//!
//! Owns: the slab of timers, the slots, and the cursor (`elapsed`) up to which slots have
//! been processed. Must not touch: the clock or anything the fired values refer to.
//!
//! # Design
//!
//! - Levels of 64 slots, 6 bits of the deadline per level (as in tokio-util). A timer is
//!   filed at the level of the highest bit in which its deadline differs from the cursor,
//!   so level 0 holds the current 64 ticks one tick per slot, level 1 the current 4096
//!   ticks 64 per slot, and so on. When the cursor reaches a slot of a higher level, its
//!   timers are re-filed ("cascaded") into lower levels; each timer cascades at most
//!   `LEVELS - 1` times in its life.
//! - 11 levels cover all 64 bits of a tick, so every `u64` deadline has a slot and there is
//!   no overflow list to re-examine. Real deadlines use few of them: levels 0-5 reach 21
//!   years at a 10 ms tick, levels 0-6 reach 139 years even at 1 ms (past the `u32` range
//!   of seconds). Unused levels cost only empty `Vec` headers.
//! - Slots are addressed relative to `elapsed`, not to the caller's `now`: when a turn
//!   runs out of budget, `elapsed` stays at the slot being drained, which keeps every
//!   pending timer findable and makes the next call resume exactly there.
//! - A timer is 24 bytes in the slab plus a 4-byte index in its slot. Each timer knows its
//!   slot and its position in it, so removal is a `swap_remove` plus fixing the position
//!   of the one timer that moved: O(1), no pointers, no `unsafe`.

use std::mem;

/// Deadline bits resolved per level: 64 slots, so one `u64` bitmap says which are occupied.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Enough levels that `LEVELS * SLOT_BITS >= 64`: no deadline is ever out of range.
const LEVELS: usize = 64_usize.div_ceil(SLOT_BITS as usize);

/// `Entry::slot` of a slab entry that holds no timer.
const VACANT: u32 = u32::MAX;
/// End of the free list.
const NIL: u32 = u32::MAX;
/// A slot or slab emptied by expiry keeps at most this many elements of capacity, so one
/// burst of a million same-tick timers does not pin megabytes for the life of the shard,
/// while a wheel that keeps cycling through small numbers does not reallocate.
const KEEP_CAPACITY: usize = 1024;

/// Slab index of a live timer; stable until the timer fires or is removed.
///
/// After that the index may be handed out again by a later [`TimingWheel::insert`], so a
/// holder must forget the key when it sees the timer fire (every fire is reported through
/// `advance_to`) or after removing it; a forgotten-too-late key would address the new timer.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TimerKey(u32);

/// One slab cell: a live timer, or a link in the free list.
#[derive(Copy, Clone, Debug)]
struct Entry {
    /// When the timer is due: reported back on fire, and what cascading re-files it by.
    deadline: u64,
    /// The caller's payload (e.g. a session index and generation); opaque here.
    value: u64,
    /// Index into `TimingWheel::slots` (`level * SLOTS + slot`), or `VACANT`.
    slot: u32,
    /// Live: position inside the slot's `Vec`, kept current so removal is O(1).
    /// Vacant: the next free slab index, or `NIL`.
    pos: u32,
}

/// The earliest occupied slot, as found by `TimingWheel::next_expiration`.
#[derive(Copy, Clone, Debug)]
struct Expiration {
    level: usize,
    /// Slot index within the level.
    slot: usize,
    /// First tick the slot covers: its timers are due (level 0) or must be cascaded
    /// (higher levels) once the wheel is advanced to it.
    start: u64,
}

/// Time is measured in ticks (u64). The wheel never reads the clock.
#[derive(Debug)]
pub struct TimingWheel {
    /// The latest tick the caller advanced to; never decreases.
    now: u64,
    /// Slots have been processed up to here; `elapsed <= now`. They differ only while an
    /// advance that ran out of budget has due work left. Every timer is filed relative to
    /// `elapsed`, and every occupied slot starts at or after it.
    elapsed: u64,
    /// Level-major: slot `s` of level `l` is `slots[l * SLOTS + s]`; holds slab indices.
    slots: Box<[Vec<u32>]>,
    /// Bit `s` of `occupied[l]` is set iff that slot is non-empty, so finding the next
    /// slot costs a mask and a `trailing_zeros` per level instead of scanning `Vec`s.
    occupied: [u64; LEVELS],
    /// Timer storage; a [`TimerKey`] is an index here.
    entries: Vec<Entry>,
    /// Head of the free list threaded through vacant entries' `pos`.
    free_head: u32,
    /// Live timers.
    len: usize,
}

impl TimingWheel {
    /// A wheel that starts at tick `now`.
    pub fn new(now: u64) -> Self {
        TimingWheel {
            now,
            elapsed: now,
            slots: (0..LEVELS * SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; LEVELS],
            entries: Vec::new(),
            free_head: NIL,
            len: 0,
        }
    }

    /// Tick the wheel has been advanced to.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Live timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No live timers.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedule `value` to fire at `deadline` (a deadline <= now fires on the next advance).
    ///
    /// # Panics
    ///
    /// If `u32::MAX - 1` timers are live at once (about 100 GB of slab).
    pub fn insert(&mut self, deadline: u64, value: u64) -> TimerKey {
        let entry = Entry {
            deadline,
            value,
            slot: VACANT,
            pos: NIL,
        };
        let idx = if self.free_head == NIL {
            let idx = u32::try_from(self.entries.len())
                .ok()
                .filter(|&i| i != NIL)
                .expect("timing wheel slab full: u32::MAX timers live");
            self.entries.push(entry);
            idx
        } else {
            let idx = self.free_head;
            self.free_head = self.entries[idx as usize].pos;
            self.entries[idx as usize] = entry;
            idx
        };
        self.len += 1;
        self.file(idx);
        TimerKey(idx)
    }

    /// O(1) removal; returns the value, or None if the key is not live.
    pub fn remove(&mut self, key: TimerKey) -> Option<u64> {
        let value = self.live(key)?.value;
        self.unfile(key.0);
        self.release(key.0);
        Some(value)
    }

    /// Move a live timer to `deadline`, keeping its key; false if the key is not live.
    /// Same cost as a remove plus an insert, without giving up the slab cell.
    pub fn reschedule(&mut self, key: TimerKey, deadline: u64) -> bool {
        if self.live(key).is_none() {
            return false;
        }
        self.unfile(key.0);
        self.entries[key.0 as usize].deadline = deadline;
        self.file(key.0);
        true
    }

    /// Deadline of a live timer, or None if the key is not live.
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.live(key).map(|e| e.deadline)
    }

    /// Advance to `now`, pushing up to `budget` fired (deadline, value) pairs into `fired`
    /// (each fired timer is removed from the wheel; its key becomes invalid/reusable).
    /// Returns true when timers with deadline <= now remain because the budget ran out;
    /// the caller calls again next turn and they fire then (never lost, never early).
    ///
    /// A `now` earlier than [`now()`](Self::now) is treated as `now()`: ticks never go back.
    ///
    /// Work per call is bounded: at most `budget` timers fire and at most `budget` timers
    /// are cascaded down a level, and every slot visited yields at least one of those or
    /// ends the call, so a call costs O(budget * LEVELS) at worst. Because cascading is
    /// budgeted too, `true` can also mean "a slot that started by `now` is still being
    /// cascaded", in which case the next call may fire nothing new yet; it never means
    /// that nothing is left to do.
    ///
    /// Timers fire in slot order, i.e. by deadline (the order within one tick is
    /// unspecified; a deadline already past when inserted counts as due at the tick the
    /// wheel had reached), and a call that ran out of budget resumes where it stopped, so
    /// an earlier deadline is never starved behind later ones.
    pub fn advance_to(&mut self, now: u64, budget: usize, fired: &mut Vec<(u64, u64)>) -> bool {
        self.now = self.now.max(now);
        let mut fires_left = budget;
        let mut moves_left = budget;
        while let Some(next) = self.next_expiration() {
            if next.start > self.now {
                break;
            }
            // Never backwards: every occupied slot starts at or after `elapsed`.
            self.elapsed = next.start;
            let slot = next.level * SLOTS + next.slot;
            let left = if next.level == 0 {
                &mut fires_left
            } else {
                &mut moves_left
            };
            while *left > 0 {
                // Popping from the end moves no other timer, so no positions to fix up.
                let Some(idx) = self.slots[slot].pop() else {
                    break;
                };
                *left -= 1;
                if next.level == 0 {
                    let Entry {
                        deadline, value, ..
                    } = self.entries[idx as usize];
                    fired.push((deadline, value));
                    self.release(idx);
                } else {
                    // Same slot range as `elapsed` now, so this lands on a lower level.
                    self.file(idx);
                }
            }
            if !self.slots[slot].is_empty() {
                // Out of budget mid-slot: `elapsed` stays at its start, so it is still the
                // earliest slot and the next call resumes here.
                return true;
            }
            self.occupied[next.level] &= !(1 << next.slot);
            if self.slots[slot].capacity() > KEEP_CAPACITY {
                self.slots[slot] = Vec::new();
            }
        }
        // No occupied slot starts by `now`, so jumping the cursor there skips no timer.
        self.elapsed = self.now;
        false
    }

    /// Earliest tick at which a timer may fire (may be conservative, i.e. earlier than the
    /// true earliest deadline, e.g. a higher-level slot boundary, but never later); None if empty.
    ///
    /// A value <= [`now()`](Self::now) means work is already due (a deadline inserted in
    /// the past, or a call that ran out of budget): poll without waiting. For a deadline
    /// that was already past when inserted, the answer is at most `now()` rather than that
    /// deadline: the earliest tick at which it can still fire.
    pub fn next_deadline(&self) -> Option<u64> {
        self.next_expiration().map(|e| e.start)
    }

    /// Heap memory held by the wheel, in bytes (slab, slots and their spare capacity).
    pub fn heap_bytes(&self) -> usize {
        let slot_bytes: usize = self
            .slots
            .iter()
            .map(|s| s.capacity() * mem::size_of::<u32>())
            .sum();
        self.entries.capacity() * mem::size_of::<Entry>()
            + self.slots.len() * mem::size_of::<Vec<u32>>()
            + slot_bytes
    }

    fn live(&self, key: TimerKey) -> Option<&Entry> {
        self.entries
            .get(key.0 as usize)
            .filter(|e| e.slot != VACANT)
    }

    /// The earliest occupied slot, relative to `elapsed`.
    fn next_expiration(&self) -> Option<Expiration> {
        let mut best: Option<Expiration> = None;
        for (level, &occupied) in self.occupied.iter().enumerate() {
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * SLOT_BITS;
            let current = (self.elapsed >> shift) & SLOT_MASK;
            debug_assert_eq!(
                occupied & !(u64::MAX << current),
                0,
                "an occupied slot is behind the cursor at level {level}"
            );
            let ahead = occupied & (u64::MAX << current);
            if ahead == 0 {
                continue;
            }
            let slot = u64::from(ahead.trailing_zeros());
            let start = (self.elapsed & !range_mask(level)) | (slot << shift);
            // `<=`: on a tie the higher level wins. A tie means a higher slot that starts
            // at `elapsed` is mid-cascade; finishing it first keeps fires in deadline order.
            if best.is_none_or(|b| start <= b.start) {
                best = Some(Expiration {
                    level,
                    slot: slot as usize,
                    start,
                });
            }
        }
        best
    }

    /// Put a timer (whose `deadline` is set) into its slot relative to `elapsed`.
    fn file(&mut self, idx: u32) {
        // A deadline already passed is filed as due at `elapsed`: the first slot the next
        // advance looks at. Its real deadline is still what gets reported.
        let due = self.entries[idx as usize].deadline.max(self.elapsed);
        let level = level_for(self.elapsed, due);
        let in_level = ((due >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize;
        let slot = level * SLOTS + in_level;
        let list = &mut self.slots[slot];
        // A slot never holds more than the slab, whose indices fit in u32.
        let pos = list.len() as u32;
        list.push(idx);
        self.occupied[level] |= 1 << in_level;
        let entry = &mut self.entries[idx as usize];
        entry.slot = slot as u32;
        entry.pos = pos;
    }

    /// Take a live timer out of its slot, keeping the slot's other positions correct.
    fn unfile(&mut self, idx: u32) {
        let Entry { slot, pos, .. } = self.entries[idx as usize];
        let list = &mut self.slots[slot as usize];
        list.swap_remove(pos as usize);
        if let Some(&moved) = list.get(pos as usize) {
            self.entries[moved as usize].pos = pos;
        }
        if list.is_empty() {
            self.occupied[slot as usize / SLOTS] &= !(1 << (slot as usize % SLOTS));
        }
    }

    /// Return a slab cell (already out of its slot) to the free list.
    fn release(&mut self, idx: u32) {
        let entry = &mut self.entries[idx as usize];
        entry.slot = VACANT;
        entry.pos = self.free_head;
        self.free_head = idx;
        self.len -= 1;
        if self.len == 0 {
            // No key is live, so forgetting every cell is safe; it also gives back the
            // memory of a burst once it has all expired.
            self.entries.clear();
            if self.entries.capacity() > KEEP_CAPACITY {
                self.entries = Vec::new();
            }
            self.free_head = NIL;
        }
    }
}

/// Level at which a timer due at `due` (>= `elapsed`) is filed: the level owning the
/// highest bit in which the two differ.
fn level_for(elapsed: u64, due: u64) -> usize {
    let masked = (elapsed ^ due) | SLOT_MASK;
    let significant = u64::BITS - 1 - masked.leading_zeros();
    (significant / SLOT_BITS) as usize
}

/// The tick bits resolved by levels `0..=level`; the rest name the range the cursor is in.
fn range_mask(level: usize) -> u64 {
    let bits = (level as u32 + 1) * SLOT_BITS;
    if bits >= u64::BITS {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 ms ticks, the tick the issue suggests; the wheel itself does not care.
    const SECOND: u64 = 100;
    const DAY: u64 = 86_400 * SECOND;
    const YEAR: u64 = 365 * DAY;

    /// Advance to `now` with an unlimited budget and return what fired.
    fn fire(wheel: &mut TimingWheel, now: u64) -> Vec<(u64, u64)> {
        let mut fired = Vec::new();
        assert!(!wheel.advance_to(now, usize::MAX, &mut fired));
        fired
    }

    /// Advance to `now` with `budget` until nothing is due; returns (fired, calls).
    fn drain(wheel: &mut TimingWheel, now: u64, budget: usize) -> (Vec<(u64, u64)>, usize) {
        let mut fired = Vec::new();
        let mut calls = 1;
        while wheel.advance_to(now, budget, &mut fired) {
            calls += 1;
            assert!(calls < 10_000_000, "advance never finished");
        }
        (fired, calls)
    }

    /// Deterministic pseudo-random numbers for spreading deadlines.
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn level_of(wheel: &TimingWheel, key: TimerKey) -> usize {
        wheel.entries[key.0 as usize].slot as usize / SLOTS
    }

    #[test]
    fn an_entry_is_24_bytes() {
        assert_eq!(mem::size_of::<Entry>(), 24);
    }

    #[test]
    fn empty_wheel() {
        let mut wheel = TimingWheel::new(500);
        assert_eq!(wheel.now(), 500);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
        assert!(fire(&mut wheel, 10_000).is_empty());
        assert_eq!(wheel.now(), 10_000);
    }

    #[test]
    fn fires_at_the_deadline_and_not_a_tick_before() {
        for deadline in [1, 63, 64, 65, 4095, 4096, 4097, 262_145, 1 << 40] {
            let mut wheel = TimingWheel::new(0);
            wheel.insert(deadline, 7);
            assert!(fire(&mut wheel, deadline - 1).is_empty(), "{deadline}");
            assert_eq!(fire(&mut wheel, deadline), vec![(deadline, 7)]);
            assert!(wheel.is_empty());
        }
    }

    #[test]
    fn fires_in_deadline_order_tick_by_tick() {
        let mut wheel = TimingWheel::new(3);
        let mut rng = 1;
        let mut deadlines: Vec<u64> = (0..2_000)
            .map(|_| 4 + splitmix(&mut rng) % 20_000)
            .collect();
        for (i, &d) in deadlines.iter().enumerate() {
            wheel.insert(d, i as u64);
        }
        let mut seen = Vec::new();
        for now in 4..=20_004 {
            for (d, v) in fire(&mut wheel, now) {
                assert_eq!(d, now, "timer {v} fired at {now}");
                seen.push(d);
            }
        }
        deadlines.sort_unstable();
        assert_eq!(seen, deadlines);
    }

    #[test]
    fn a_small_budget_fires_in_deadline_order_across_calls() {
        let mut wheel = TimingWheel::new(0);
        let mut rng = 2;
        for i in 0..5_000 {
            wheel.insert(1 + splitmix(&mut rng) % 1_000_000, i);
        }
        let (fired, _) = drain(&mut wheel, 2_000_000, 3);
        assert_eq!(fired.len(), 5_000);
        assert!(
            fired.windows(2).all(|w| w[0].0 <= w[1].0),
            "fired out of order"
        );
    }

    #[test]
    fn far_deadlines_days_and_years() {
        let now = 12_345;
        let far = [
            now + DAY,
            now + 30 * DAY,
            now + YEAR,
            now + 100 * YEAR,
            now + u64::from(u32::MAX) * SECOND,
        ];
        let mut wheel = TimingWheel::new(now);
        for (i, &d) in far.iter().enumerate() {
            wheel.insert(d, i as u64);
        }
        for (i, &d) in far.iter().enumerate() {
            assert!(
                wheel
                    .next_deadline()
                    .is_some_and(|n| n <= d && n > wheel.now())
            );
            // Walk up in a few big jumps, as an idle shard would.
            let mut step = wheel.now();
            while step < d - 1 {
                step = (step + (d - step) / 3).max(step + 1).min(d - 1);
                assert!(fire(&mut wheel, step).is_empty(), "fired early at {step}");
            }
            assert_eq!(fire(&mut wheel, d), vec![(d, i as u64)]);
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn deadlines_at_the_end_of_time() {
        let mut wheel = TimingWheel::new(u64::MAX - 100);
        wheel.insert(u64::MAX, 1);
        wheel.insert(u64::MAX - 50, 2);
        assert_eq!(fire(&mut wheel, u64::MAX - 1), vec![(u64::MAX - 50, 2)]);
        assert_eq!(fire(&mut wheel, u64::MAX), vec![(u64::MAX, 1)]);

        let mut wheel = TimingWheel::new(0);
        wheel.insert(u64::MAX, 3);
        assert_eq!(level_of(&wheel, TimerKey(0)), LEVELS - 1);
        assert!(fire(&mut wheel, u64::MAX - 1).is_empty());
        assert_eq!(fire(&mut wheel, u64::MAX), vec![(u64::MAX, 3)]);
    }

    #[test]
    fn a_deadline_in_the_past_fires_on_the_next_advance() {
        let mut wheel = TimingWheel::new(10_000);
        wheel.insert(5, 1);
        wheel.insert(10_000, 2);
        assert!(wheel.next_deadline().is_some_and(|n| n <= 10_000));
        // Without moving time at all.
        let mut fired = fire(&mut wheel, 10_000);
        fired.sort_unstable();
        assert_eq!(fired, vec![(5, 1), (10_000, 2)]);
        // Also while the wheel still has unfinished work from a short budget.
        for i in 0..10 {
            wheel.insert(10_500, i);
        }
        let mut fired = Vec::new();
        assert!(wheel.advance_to(11_000, 4, &mut fired));
        wheel.insert(10_200, 99);
        wheel.insert(10_900, 98);
        let (rest, _) = drain(&mut wheel, 11_000, 4);
        fired.extend(rest);
        assert_eq!(fired.len(), 12);
        assert!(fired.contains(&(10_200, 99)) && fired.contains(&(10_900, 98)));
    }

    #[test]
    fn removal() {
        let mut wheel = TimingWheel::new(0);
        let near = wheel.insert(10, 1);
        let far = wheel.insert(3 * DAY, 2);
        let other = wheel.insert(10, 3);
        assert!(level_of(&wheel, far) > 2);
        assert_eq!(wheel.remove(far), Some(2));
        assert_eq!(wheel.remove(far), None);
        assert_eq!(wheel.remove(near), Some(1));
        assert_eq!(wheel.len(), 1);
        assert_eq!(fire(&mut wheel, 4 * DAY), vec![(10, 3)]);
        // Fired keys are dead.
        assert_eq!(wheel.remove(other), None);
        assert_eq!(wheel.deadline(other), None);
    }

    #[test]
    fn removing_a_timer_after_it_cascaded() {
        let mut wheel = TimingWheel::new(0);
        let key = wheel.insert(300_000, 1);
        let keep = wheel.insert(300_001, 2);
        let start_level = level_of(&wheel, key);
        assert_eq!(start_level, 3);
        assert!(fire(&mut wheel, 299_990).is_empty());
        assert_eq!(level_of(&wheel, key), 0, "cascaded down to level 0 by now");
        assert_eq!(wheel.remove(key), Some(1));
        assert_eq!(fire(&mut wheel, 400_000), vec![(300_001, 2)]);
        assert_eq!(wheel.remove(keep), None);
    }

    #[test]
    fn removal_fixes_up_the_moved_timer() {
        let mut wheel = TimingWheel::new(0);
        let keys: Vec<TimerKey> = (0..100).map(|i| wheel.insert(50, i)).collect();
        // Remove from the front so every removal moves the last timer into the hole.
        for (i, &key) in keys.iter().enumerate().step_by(2) {
            assert_eq!(wheel.remove(key), Some(i as u64));
        }
        for (i, &key) in keys.iter().enumerate().skip(1).step_by(4) {
            assert_eq!(wheel.remove(key), Some(i as u64));
        }
        let mut fired: Vec<u64> = fire(&mut wheel, 50).into_iter().map(|(_, v)| v).collect();
        fired.sort_unstable();
        let expected: Vec<u64> = (0..100).filter(|i| i % 4 == 3).collect();
        assert_eq!(fired, expected);
    }

    #[test]
    fn keys_are_reused_after_removal() {
        let mut wheel = TimingWheel::new(0);
        let _anchor = wheel.insert(1_000, 0);
        let a = wheel.insert(100, 1);
        assert_eq!(wheel.remove(a), Some(1));
        let b = wheel.insert(200, 2);
        assert_eq!(a, b, "the freed cell is handed out again");
        // The old key now addresses the new timer: holders must forget keys (see TimerKey).
        assert_eq!(wheel.deadline(a), Some(200));
        assert_eq!(fire(&mut wheel, 150), vec![]);
        assert_eq!(fire(&mut wheel, 200), vec![(200, 2)]);
    }

    #[test]
    fn budgeted_advance_loses_and_duplicates_nothing() {
        let mut wheel = TimingWheel::new(0);
        for i in 0..1_000 {
            wheel.insert(1 + i % 37, i);
        }
        wheel.insert(500, 5_000);
        let mut all = Vec::new();
        let mut calls = 0;
        loop {
            let mut fired = Vec::new();
            let more = wheel.advance_to(100, 7, &mut fired);
            assert!(fired.len() <= 7);
            assert!(fired.iter().all(|&(d, _)| d <= 100));
            all.extend(fired);
            calls += 1;
            if !more {
                break;
            }
        }
        assert_eq!(calls, 1_000usize.div_ceil(7));
        let mut values: Vec<u64> = all.iter().map(|&(_, v)| v).collect();
        values.sort_unstable();
        assert_eq!(values, (0..1_000).collect::<Vec<u64>>());
        assert_eq!(wheel.len(), 1);
    }

    #[test]
    fn a_zero_budget_does_nothing_but_says_work_is_due() {
        let mut wheel = TimingWheel::new(0);
        wheel.insert(5, 1);
        let mut fired = Vec::new();
        assert!(!wheel.advance_to(4, 0, &mut fired));
        assert!(wheel.advance_to(5, 0, &mut fired));
        assert!(fired.is_empty());
        assert!(wheel.next_deadline().is_some_and(|n| n <= 5));
        assert!(!wheel.advance_to(5, 1, &mut fired));
        assert_eq!(fired, vec![(5, 1)]);
    }

    #[test]
    fn cascading_is_budgeted_too() {
        // 20k timers in one level-2 slot: cascading them is work the budget must bound.
        let mut wheel = TimingWheel::new(0);
        for i in 0..20_000 {
            wheel.insert(8_192 + i % 4_096, i);
        }
        let budget = 100;
        let mut fired = Vec::new();
        let mut calls = 0;
        while wheel.advance_to(20_000, budget, &mut fired) {
            calls += 1;
            assert!(fired.len() <= calls * budget);
        }
        assert_eq!(fired.len(), 20_000);
        // Each timer costs at most LEVELS units (cascades plus its fire), budget per call.
        assert!(calls <= 20_000 * LEVELS / budget + 1, "{calls} calls");
        assert!(fired.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn big_jumps_of_now() {
        let mut wheel = TimingWheel::new(1_000);
        let deadlines = [1_001, 1_070, 5_000, 300_000, 20_000_000, 1 << 33, 1 << 50];
        for (i, &d) in deadlines.iter().enumerate() {
            wheel.insert(d, i as u64);
        }
        let mut fired = fire(&mut wheel, 1 << 40);
        fired.sort_unstable();
        assert_eq!(fired.len(), 6);
        assert_eq!(wheel.now(), 1 << 40);
        // Filing relative to the new position still works, near and far.
        wheel.insert((1 << 40) + 3, 10);
        wheel.insert((1 << 40) + 70_000, 11);
        assert_eq!(fire(&mut wheel, (1 << 40) + 3), vec![((1 << 40) + 3, 10)]);
        assert!(fire(&mut wheel, (1 << 40) + 69_999).is_empty());
        assert_eq!(fire(&mut wheel, 1 << 49), vec![((1 << 40) + 70_000, 11)]);
        assert_eq!(fire(&mut wheel, u64::MAX), vec![(1 << 50, 6)]);
    }

    #[test]
    fn a_now_in_the_past_is_ignored() {
        let mut wheel = TimingWheel::new(100);
        wheel.insert(150, 1);
        assert!(fire(&mut wheel, 50).is_empty());
        assert_eq!(wheel.now(), 100);
        assert_eq!(fire(&mut wheel, 150), vec![(150, 1)]);
    }

    #[test]
    fn next_deadline_is_never_later_than_the_earliest() {
        let mut wheel = TimingWheel::new(0);
        let key = wheel.insert(40, 1);
        assert_eq!(wheel.next_deadline(), Some(40), "exact on level 0");
        wheel.remove(key);
        assert_eq!(wheel.next_deadline(), None);

        let mut rng = 3;
        let mut live = std::collections::BTreeMap::new();
        for round in 0..300u64 {
            let now = wheel.now();
            let span = [100, 10_000, 1 << 30][(round % 3) as usize];
            let d = now + 1 + splitmix(&mut rng) % span;
            live.insert((d, round), wheel.insert(d, round));
            let earliest = live.keys().next().map(|&(d, _)| d);
            let next = wheel.next_deadline();
            assert!(next.is_some() && next <= earliest);
            if round % 4 == 0 {
                // Jump to just before the earliest deadline; nothing may fire.
                let target = earliest.unwrap_or(now) - 1;
                assert!(fire(&mut wheel, target).is_empty());
                assert!(wheel.next_deadline() <= earliest);
                assert!(wheel.next_deadline() > Some(target));
            }
            if round % 10 == 0 {
                let first = *live.keys().next().expect("non-empty");
                let key = live.remove(&first).expect("present");
                assert_eq!(wheel.remove(key), Some(first.1));
            }
        }
    }

    #[test]
    fn reschedule_moves_a_timer_and_keeps_its_key() {
        let mut wheel = TimingWheel::new(0);
        let a = wheel.insert(100, 1);
        let b = wheel.insert(5_000, 2);
        assert!(wheel.reschedule(a, 9_000));
        assert!(wheel.reschedule(b, 50));
        assert_eq!(wheel.deadline(a), Some(9_000));
        assert_eq!(fire(&mut wheel, 100), vec![(50, 2)]);
        assert!(!wheel.reschedule(b, 60), "fired key is dead");
        assert!(fire(&mut wheel, 8_999).is_empty());
        assert_eq!(fire(&mut wheel, 9_000), vec![(9_000, 1)]);
    }

    #[test]
    fn sliding_by_reinserting_on_fire() {
        // The store's pattern: fire, see the session's deadline moved, insert again.
        let mut wheel = TimingWheel::new(0);
        let ttl = 3 * SECOND;
        let mut session_deadline = ttl;
        wheel.insert(session_deadline, 1);
        let mut expired_at = None;
        for now in 1..=20 * SECOND {
            if now <= 10 * SECOND && now % SECOND == 0 {
                session_deadline = now + ttl; // a touch: only the session's own field moves
            }
            for (deadline, value) in fire(&mut wheel, now) {
                assert!(deadline <= session_deadline);
                if deadline < session_deadline {
                    wheel.insert(session_deadline, value);
                } else {
                    expired_at = Some(now);
                }
            }
        }
        assert_eq!(expired_at, Some(13 * SECOND));
        assert!(wheel.is_empty());
    }

    #[test]
    fn memory_is_returned_after_a_burst() {
        let mut wheel = TimingWheel::new(0);
        let idle = wheel.heap_bytes();
        for i in 0..100_000 {
            wheel.insert(10, i);
        }
        let full = wheel.heap_bytes();
        assert!(full >= 100_000 * 28);
        assert!(full < 100_000 * 40 + idle, "{full} bytes");
        let (fired, _) = drain(&mut wheel, 10, 10_000);
        assert_eq!(fired.len(), 100_000);
        assert!(
            wheel.heap_bytes() < idle + KEEP_CAPACITY * 28,
            "burst memory kept"
        );
    }
}
