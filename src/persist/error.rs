//! The one error type of the persistence layer. Every variant names the path it
//! is about, so a message can be shown to a client or an operator as is.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a save or a load could not be done.
///
/// Which client status a failure maps to depends on the step that failed, not
/// on the variant: `begin_version` -> 122, the shard writers and `commit` ->
/// 123, `newest_complete` and `read_all` -> 142.
#[derive(Debug)]
pub enum PersistError {
    /// A dataset name outside `[A-Za-z0-9_.-]{1,128}` or `.`/`..`: a caller bug
    /// if the protocol layer already validated it.
    InvalidName { name: String },
    /// The operating system refused an operation on `path` (`op` says which).
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// A shard file is not what was written: bad magic, unknown format version,
    /// checksum mismatch, truncation, a malformed record, counts that disagree.
    /// `offset` is the byte offset in the file where the problem was found.
    Corrupt {
        path: PathBuf,
        offset: Option<u64>,
        reason: String,
    },
    /// The change log cannot be replayed as it is: a corrupt record before
    /// its tail, a gap in sequence numbers, a missing segment, a generation
    /// no snapshot builds on. `offset` is the byte in `path` where it was
    /// found, when there is one; the reason says what an operator can do
    /// (e.g. start with `--log-repair`). Fatal at start-up.
    Log {
        path: PathBuf,
        offset: Option<u64>,
        reason: String,
    },
    /// A complete version's `metadata.json` is unusable (wrong shape, unknown
    /// format version, impossible values).
    Metadata { path: PathBuf, reason: String },
    /// The caller passed something inconsistent (e.g. to `commit`): a caller bug.
    Invalid { path: PathBuf, reason: String },
    /// A shard file writer was aborted (or dropped before `finish`); its partial
    /// file was removed. Normal when a save is abandoned.
    Aborted { path: PathBuf },
    /// `SH_LOAD` of a dataset that has no complete version: normal.
    NoCompleteVersion { name: String },
    /// A helper thread (reader, committer) could not be started: the
    /// process is out of threads or memory.
    Thread {
        role: &'static str,
        source: io::Error,
    },
}

impl PersistError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        PersistError::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: Option<u64>,
        reason: impl Into<String>,
    ) -> Self {
        PersistError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn log(
        path: impl Into<PathBuf>,
        offset: Option<u64>,
        reason: impl Into<String>,
    ) -> Self {
        PersistError::Log {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn metadata(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        PersistError::Metadata {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        PersistError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for PersistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistError::InvalidName { name } => write!(
                f,
                "invalid dataset name {name:?}: must be 1 to 128 characters of [A-Za-z0-9_.-], not . or .."
            ),
            PersistError::Io { path, op, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
            PersistError::Corrupt {
                path,
                offset: Some(offset),
                reason,
            } => write!(
                f,
                "corrupt snapshot file {} at byte {offset}: {reason}",
                path.display()
            ),
            PersistError::Corrupt {
                path,
                offset: None,
                reason,
            } => write!(f, "corrupt snapshot file {}: {reason}", path.display()),
            PersistError::Log {
                path,
                offset: Some(offset),
                reason,
            } => write!(
                f,
                "change log {} at byte {offset}: {reason}",
                path.display()
            ),
            PersistError::Log {
                path,
                offset: None,
                reason,
            } => write!(f, "change log {}: {reason}", path.display()),
            PersistError::Metadata { path, reason } => {
                write!(f, "unusable snapshot metadata {}: {reason}", path.display())
            }
            PersistError::Invalid { path, reason } => write!(f, "{}: {reason}", path.display()),
            PersistError::NoCompleteVersion { name } => {
                write!(f, "no complete saved version of dataset {name}")
            }
            PersistError::Thread { role, source } => {
                write!(f, "cannot start the {role} thread: {source}")
            }
            PersistError::Aborted { path } => {
                write!(
                    f,
                    "snapshot file {} was abandoned and removed",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for PersistError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PersistError::Io { source, .. } | PersistError::Thread { source, .. } => Some(source),
            _ => None,
        }
    }
}
