//! Snapshots: the on-disk format, the dataset directories, writing and loading.
//!
//! Owns everything under the persist root and nothing else: it knows sessions
//! only as [`SessionRecord`]s (or the borrowed parts given to
//! [`encode_record`]), never touches a shard's store, and reads no clock except
//! in [`begin_version`]. `docs/PERSISTENCE.md` is the format and the
//! crash-safety argument.
//!
//! A save, as a shard set drives it:
//! 1. [`begin_version`] creates `<root>/<name>/<version>/` (errors: status 122);
//! 2. each shard [`ShardFileWriter::start`]s its file, encodes its sessions in
//!    bounded chunks with [`encode_record`] and passes them to
//!    [`ShardFileWriter::write_chunk`], then [`ShardFileWriter::finish`]es; the
//!    writer thread fsyncs and reports a [`ShardFileSummary`] (errors: 123);
//! 3. with every summary in hand, [`VersionDir::commit`] writes the metadata
//!    that makes the version loadable (errors: 123).
//!
//! A load: [`newest_complete`] picks the version, [`LoadableVersion::read_all`]
//! verifies every file and returns the records (errors or `None`: 142).
//!
//! # Layout
//! - `format`: the shard file bytes: records, header, footer, verification.
//! - `writer`: [`ShardFileWriter`], one background thread per shard file.
//! - `dataset`: dataset names, version directories, metadata, loading.
//! - `log`: the change log (records, segments, the writer thread, reading).
//! - `recovery`: snapshot + log replay at start-up, the start-up checkpoint,
//!   log compaction and version retention.
//! - `stamp`: version directory names (UTC timestamps), from a given time.
//! - `error`: [`PersistError`].

mod dataset;
mod error;
pub(crate) mod format;
pub mod in_progress;
pub mod log;
pub mod recovery;
mod stamp;
mod writer;

pub use dataset::{
    LoadableVersion, LogPositions, MAX_DATASET_NAME_LEN, METADATA_FILE, METADATA_TEMP_FILE,
    VersionDir, begin_version, begin_version_at, newest_complete, newest_recoverable,
    validate_dataset_name,
};
pub use error::PersistError;
pub use format::{
    DecodedFile, FILE_MAGIC, FOOTER_LEN, FOOTER_MAGIC, FORMAT_VERSION, HEADER_LEN,
    OLDEST_READABLE_VERSION, RecordHead, SessionRecord, decode_file, encode_record,
    read_shard_file,
};
pub use recovery::{
    Recovery, compact, delete_generations_before, recover, retain_versions, write_checkpoint,
};
pub use writer::{OnDone, OnRoom, QUEUE_LIMIT, ShardFileSummary, ShardFileWriter, shard_file_name};

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "nemesisdb-persist-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
