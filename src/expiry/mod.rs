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

mod wheel;

#[cfg(test)]
mod model_test;

pub use wheel::{TimerKey, TimingWheel};
