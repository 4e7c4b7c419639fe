//! Expiry: the per-shard hashed timing wheel.
//!
//! Owns: scheduling opaque `u64` values at `u64` tick deadlines and handing them back,
//! a bounded batch per call, once the caller advances the wheel past them.
//! Must not touch: the clock, sessions, names or any other shard state. The shard reads
//! the monotonic clock once per turn, turns it into ticks and calls
//! [`TimingWheel::advance_to`]; what a fired value means (which session, which
//! generation) and whether that session's deadline has moved since is the store's
//! business, so the wheel neither knows the tick length nor ever re-checks a deadline.
//!
//! # How the store uses it
//!
//! - Each shard owns one [`TimingWheel`]; nothing here is shared or locked.
//! - Creating a session inserts a timer whose value identifies the session (e.g. slab
//!   index and generation); the poll timeout is [`TimingWheel::next_deadline`].
//! - Sliding expiry only moves the session's own deadline. When the timer fires and the
//!   session's deadline is later than the fired one, the store inserts a new timer; so a
//!   touch costs nothing here and a slide costs one fire plus one insert.
//! - `advance_to` returns `true` when its budget ran out with work still due; the shard
//!   then polls with a zero timeout and calls again next turn.
//!
//! ```
//! use nemesisdb::expiry::TimingWheel;
//!
//! let mut wheel = TimingWheel::new(0);
//! let key = wheel.insert(300, 42); // session 42, due in 3 s at 10 ms ticks
//! let mut fired = Vec::new();
//! assert!(!wheel.advance_to(299, 1024, &mut fired));
//! assert!(fired.is_empty());
//! assert_eq!(wheel.next_deadline(), Some(300));
//! assert!(!wheel.advance_to(300, 1024, &mut fired));
//! assert_eq!(fired, [(300, 42)]);
//! assert_eq!(wheel.remove(key), None); // it fired: the key is dead
//! ```

mod wheel;

#[cfg(test)]
mod model_test;

pub use wheel::{TimerKey, TimingWheel};
