//! The server-wide memory budget (`--max-memory`): the pool of bytes no
//! shard has reserved, shared by every shard, and a store's reservation
//! taken from it. Byte counts only: what a store accounts, and when, stays
//! in the store.
//!
//! A store checks growth against its own reservation, touching nothing
//! shared; only when that falls short does it borrow from the pool (a
//! chunk at a time, one compare-and-swap), and it gives back what it holds
//! past two chunks above its use. The pool never lends what it lacks, so
//!
//! ```text
//! sum of used <= sum of reservations == limit - pool
//! ```
//!
//! and the limit is never passed. The price is slack: a shard is refused
//! when the pool and its own reservation fall short, while each other
//! shard may hold up to two chunks it does not use. So growth can be
//! refused at `limit - (shards - 1) * 2 * chunk` bytes used, no earlier
//! (see [`MemoryBudget::slack`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest chunk: one compare-and-swap per 4 MiB of growth is noise,
/// and larger chunks would let idle shards sit on more.
pub const MAX_CHUNK: u64 = 4 << 20;

/// Chunks per shard a limit is cut into at least, so small limits get
/// small chunks: the slack stays under `limit / 16` whatever the limit.
const CHUNKS_PER_SHARD: u64 = 32;

/// The bytes of the server-wide limit that no shard has reserved.
#[derive(Debug)]
pub struct MemoryBudget {
    /// `--max-memory`, for what the shards report.
    limit: u64,
    /// What a shard borrows at least, and keeps at most twice over unused.
    chunk: u64,
    /// Bytes no shard holds. Only ever changed by one atomic
    /// read-modify-write, so no ordering is needed: the invariant is about
    /// this one counter, and no other data is published through it.
    free: AtomicU64,
}

impl MemoryBudget {
    /// A pool holding all of `limit` (> 0) for `shards` shards.
    pub fn new(limit: u64, shards: usize) -> Self {
        MemoryBudget {
            limit,
            chunk: chunk_size(limit, shards),
            free: AtomicU64::new(limit),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// Bytes no shard holds now.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// The most growth can be refused short of the limit with `shards`
    /// shards: two chunks for every shard but the refused one.
    pub fn slack(&self, shards: usize) -> u64 {
        (shards.max(1) as u64 - 1) * 2 * self.chunk
    }

    /// Takes `want` bytes, or all that is left when less but at least
    /// `need`; None (and nothing taken) when even `need` is not there.
    fn take(&self, need: u64, want: u64) -> Option<u64> {
        let mut free = self.free.load(Ordering::Relaxed);
        loop {
            if free < need {
                return None;
            }
            let taken = want.max(need).min(free);
            match self.free.compare_exchange_weak(
                free,
                free - taken,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(taken),
                Err(now) => free = now,
            }
        }
    }

    fn give(&self, bytes: u64) {
        if bytes > 0 {
            self.free.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// `min(4 MiB, limit / (32 * shards))`, at least 1 byte.
pub fn chunk_size(limit: u64, shards: usize) -> u64 {
    let parts = CHUNKS_PER_SHARD.saturating_mul(shards.max(1) as u64);
    (limit / parts).clamp(1, MAX_CHUNK)
}

/// One store's share of the budget: what it took from the pool and may
/// fill without asking anyone. Without a budget, everything fits.
#[derive(Debug, Default)]
pub struct Reservation {
    budget: Option<Arc<MemoryBudget>>,
    /// Bytes taken from the pool and not given back.
    held: u64,
    /// The budget's chunk, copied so the common path reads nothing that
    /// other shards write.
    chunk: u64,
}

impl Reservation {
    /// Holds nothing yet; borrows from `budget` as growth needs.
    pub fn new(budget: Option<Arc<MemoryBudget>>) -> Self {
        let chunk = budget.as_ref().map_or(0, |b| b.chunk);
        Reservation {
            budget,
            held: 0,
            chunk,
        }
    }

    /// Takes up to `bytes` at once, as much as the pool has: for a store
    /// that was filled before it had this budget.
    pub fn claim(&mut self, bytes: u64) {
        if let Some(taken) = self.budget.as_ref().and_then(|b| b.take(0, bytes)) {
            self.held += taken;
        }
    }

    pub fn is_limited(&self) -> bool {
        self.budget.is_some()
    }

    /// Bytes held (used or not).
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Whether `used` bytes may grow by `delta`: within what is held, or
    /// by borrowing the rest from the pool.
    #[inline]
    pub fn fits(&mut self, used: u64, delta: i64) -> bool {
        if self.budget.is_none() || delta <= 0 {
            return true;
        }
        let after = used.saturating_add(delta as u64);
        after <= self.held || self.borrow(after - self.held)
    }

    #[cold]
    fn borrow(&mut self, need: u64) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        match budget.take(need, self.chunk) {
            Some(taken) => {
                self.held += taken;
                true
            }
            None => false,
        }
    }

    /// After `used` shrank: what is held past two chunks above it goes
    /// back to the pool, leaving one chunk, so a store that frees and
    /// grows around the same size does not borrow each time.
    ///
    /// A store left with nothing gives everything back, so one session on
    /// another shard can reach the limit less only what busy shards hold.
    #[inline]
    pub fn settle(&mut self, used: u64) {
        if self.budget.is_none() {
            return;
        }
        if used == 0 && self.held > 0 {
            self.give_back(self.held);
        } else if self.held > used.saturating_add(2 * self.chunk) {
            self.give_back(self.held - used - self.chunk);
        }
    }

    /// Gives back everything held past `used`: after start-up restores,
    /// so a shard restored first does not keep part of a chunk that a
    /// shard restored later needs for sessions the limit had admitted.
    pub fn trim(&mut self, used: u64) {
        if self.budget.is_some() && self.held > used {
            self.give_back(self.held - used);
        }
    }

    #[cold]
    fn give_back(&mut self, bytes: u64) {
        if let Some(budget) = &self.budget {
            budget.give(bytes);
            self.held -= bytes;
        }
    }
}

impl Drop for Reservation {
    /// A store that goes (or takes another budget) leaves its bytes to
    /// the others.
    fn drop(&mut self) {
        let held = self.held;
        self.give_back(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64, shards: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget::new(limit, shards))
    }

    #[test]
    fn chunks_scale_down_for_small_limits_and_stop_at_4_mib() {
        assert_eq!(chunk_size(64 << 20, 2), 1 << 20);
        assert_eq!(chunk_size(1 << 40, 2), MAX_CHUNK);
        assert_eq!(chunk_size(4096, 2), 64);
        assert_eq!(chunk_size(10, 8), 1, "never 0");
        assert_eq!(chunk_size(1000, 0), 31, "0 shards counts as 1");
        // The slack is under a sixteenth of the limit.
        for (limit, shards) in [(64 << 20, 2), (1 << 30, 64), (4096, 2), (1 << 40, 3)] {
            let b = MemoryBudget::new(limit, shards);
            assert!(b.slack(shards) <= limit / 16, "{limit} {shards}");
        }
        assert_eq!(MemoryBudget::new(64 << 20, 2).slack(2), 2 << 20);
    }

    #[test]
    fn without_a_budget_everything_fits_and_nothing_is_held() {
        let mut r = Reservation::new(None);
        assert!(r.fits(u64::MAX - 1, i64::MAX));
        r.settle(0);
        assert_eq!(r.held(), 0);
        assert!(!r.is_limited());
    }

    #[test]
    fn borrows_a_chunk_when_short_and_all_that_is_left_at_the_end() {
        let b = budget(1000, 1);
        let chunk = b.chunk();
        assert_eq!(chunk, 31);
        let mut r = Reservation::new(Some(b.clone()));
        assert!(r.fits(0, 10));
        assert_eq!((r.held(), b.free()), (chunk, 1000 - chunk));
        // Within what is held: nothing borrowed.
        assert!(r.fits(10, 20));
        assert_eq!(r.held(), chunk);
        // More than a chunk short: exactly what is missing.
        assert!(r.fits(30, 100));
        assert_eq!(r.held(), 130);
        // Less than a chunk left: taken whole, up to the limit exactly.
        assert!(r.fits(130, 860));
        assert_eq!((r.held(), b.free()), (990, 10));
        assert!(r.fits(990, 10));
        assert_eq!((r.held(), b.free()), (1000, 0));
        assert!(!r.fits(1000, 1), "past the limit");
        assert_eq!((r.held(), b.free()), (1000, 0), "a refusal takes nothing");
        assert!(r.fits(1000, 0) && r.fits(1000, -5), "no growth always fits");
    }

    #[test]
    fn a_refused_borrow_leaves_the_pool_as_it_was() {
        let b = budget(100, 2);
        let mut other = Reservation::new(Some(b.clone()));
        assert!(other.fits(0, 60));
        let mut r = Reservation::new(Some(b.clone()));
        assert!(!r.fits(0, 41));
        assert_eq!((r.held(), b.free()), (0, 40));
        assert!(r.fits(0, 40));
        assert_eq!(b.free(), 0);
    }

    #[test]
    fn freed_bytes_past_two_chunks_go_back_leaving_one() {
        let b = budget(1 << 20, 1);
        let chunk = b.chunk();
        let mut r = Reservation::new(Some(b.clone()));
        assert!(r.fits(0, 10 * chunk as i64));
        assert_eq!(r.held(), 10 * chunk);
        // Two chunks unused: kept.
        r.settle(8 * chunk);
        assert_eq!(r.held(), 10 * chunk);
        // Past two: back to one chunk above use.
        r.settle(3 * chunk);
        assert_eq!(r.held(), 4 * chunk);
        assert_eq!(b.free(), (1 << 20) - 4 * chunk);
        r.settle(2 * chunk);
        assert_eq!(r.held(), 4 * chunk, "within two chunks of use: kept");
        r.settle(0);
        assert_eq!(r.held(), 0, "nothing in use: everything back");
        assert!(r.fits(0, 10 * chunk as i64));
        drop(r);
        assert_eq!(b.free(), 1 << 20, "a dropped reservation returns all");
    }

    /// Recovery restores shards one after another: what the first keeps
    /// unused past its need must not refuse the second what the limit
    /// admitted before the restart.
    #[test]
    fn trimmed_reservations_leave_every_unused_byte_to_the_next_shard() {
        let b = budget(64 * 1024, 2);
        let chunk = b.chunk();
        let (mut first, mut second) = (
            Reservation::new(Some(b.clone())),
            Reservation::new(Some(b.clone())),
        );
        let first_used = chunk / 3;
        assert!(first.fits(0, first_used as i64));
        assert_eq!(first.held(), chunk);
        assert!(!second.fits(0, (64 * 1024 - first_used) as i64));
        first.trim(first_used);
        assert_eq!(first.held(), first_used);
        assert!(second.fits(0, (64 * 1024 - first_used) as i64));
        assert_eq!(b.free(), 0);
    }

    #[test]
    fn a_claim_takes_what_the_pool_has() {
        let b = budget(1000, 1);
        let mut r = Reservation::new(Some(b.clone()));
        r.claim(600);
        assert_eq!((r.held(), b.free()), (600, 400));
        let mut late = Reservation::new(Some(b.clone()));
        late.claim(600);
        assert_eq!((late.held(), b.free()), (400, 0), "never below 0");
        let mut none = Reservation::new(None);
        none.claim(10);
        assert_eq!(none.held(), 0);
    }

    #[test]
    fn settling_above_what_is_held_gives_nothing() {
        let b = budget(1000, 1);
        let mut r = Reservation::new(Some(b.clone()));
        assert!(r.fits(0, 100));
        // Used past held (growth let in unchecked): nothing to give.
        r.settle(500);
        assert_eq!(r.held(), 100);
        assert_eq!(b.free(), 900);
    }

    /// Shards on threads grow and shrink against one pool: what they use
    /// never passes the limit, what they hold plus the pool is the limit
    /// at the end, and no byte is lost or made.
    #[test]
    fn concurrent_borrowers_never_overcommit() {
        const LIMIT: u64 = 1 << 20;
        const THREADS: usize = 4;
        let b = budget(LIMIT, THREADS);
        let used_total = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let b = b.clone();
                let used_total = used_total.clone();
                std::thread::spawn(move || {
                    let mut r = Reservation::new(Some(b.clone()));
                    let mut used = 0u64;
                    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                    let (mut grown, mut refused) = (0u64, 0u64);
                    for _ in 0..200_000 {
                        // xorshift: a cheap, repeatable mix of sizes.
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let size = seed % 20_000;
                        if seed.is_multiple_of(3) && used > 0 {
                            let freed = size.min(used);
                            used -= freed;
                            used_total.fetch_sub(freed, Ordering::SeqCst);
                            r.settle(used);
                        } else if r.fits(used, size as i64) {
                            used += size;
                            grown += 1;
                            let total = used_total.fetch_add(size, Ordering::SeqCst) + size;
                            assert!(total <= LIMIT, "used {total} past the limit");
                        } else {
                            refused += 1;
                        }
                        assert!(used <= r.held(), "used past the reservation");
                    }
                    (grown, refused, used, r)
                })
            })
            .collect();
        let mut held = 0;
        let mut reservations = Vec::new();
        for thread in threads {
            let (grown, refused, used, r) = thread.join().unwrap();
            assert!(grown > 0 && refused > 0, "both paths ran");
            assert!(used <= r.held());
            held += r.held();
            reservations.push(r);
        }
        assert_eq!(held + b.free(), LIMIT, "no byte lost or made");
        drop(reservations);
        assert_eq!(b.free(), LIMIT);
    }
}
