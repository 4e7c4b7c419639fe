//! The change log: every change to a shard's sessions, appended to that
//! shard's segment files, so a crash loses at most what the fsync policy
//! allows. `docs/PERSISTENCE.md`, "Change log", is the format and the
//! guarantees.
//!
//! # Layout
//! - `reader`: listing segments, reading a shard's records back (torn
//!   tails, corruption, `--log-repair`).
//! - `record`: records (encode on the shard, seal on the writer, decode).
//! - `segment`: segment file names and headers.
//! - `writer`: [`LogWriter`], one helper thread per shard (group commit).

pub mod reader;
pub mod record;
pub mod segment;
pub mod writer;

pub use reader::{SegmentFile, ShardReplay, group_segments, list_segments, read_shard};
pub use record::{Batch, Change, ChangeBuffer, LogRecord};
pub use segment::{LOG_DIR, SegmentHeader};
pub use writer::{FsyncPolicy, LogReport, LogWriter, LogWriterConfig};
