//! Start-up recovery: the sessions a crash (or a stop) left in the newest
//! snapshot of the snapshot dataset and in the change log after it, with
//! their absolute deadlines; then, when the log is on, a checkpoint (a
//! snapshot of exactly that state) so this run's log starts a new
//! generation from nothing. `docs/PERSISTENCE.md`, "Recovery".

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::mesh;
use crate::persist::log::LOG_DIR;
use crate::persist::recovery::{self, Recovery};
use crate::persist::{LogPositions, SessionRecord};

/// What recovery found and did (also logged, as it ends).
#[derive(Clone, Debug)]
pub struct RecoveryReport {
    /// The snapshot version it began from, if any.
    pub base: Option<String>,
    /// Log records applied after it.
    pub replayed: u64,
    /// Sessions recovered (before any that expired meanwhile go).
    pub sessions: u64,
    /// The checkpoint written, if any.
    pub checkpoint: Option<String>,
    pub warnings: Vec<String>,
    pub took: Duration,
}

/// The state the shards start from.
pub struct Recovered {
    /// Sessions by shard.
    pub per_shard: Vec<Vec<SessionRecord>>,
    /// The generation this run's log writes.
    pub generation: u64,
    /// Where the log lives.
    pub log_dir: PathBuf,
    /// None: nothing was there to recover.
    pub report: Option<RecoveryReport>,
}

/// Recovers what `root` holds for `config` (persistence on).
pub fn recover(config: &Config, root: &Path) -> Result<Recovered, String> {
    let started = Instant::now();
    let durability = &config.durability;
    let log_dir = root.join(LOG_DIR);
    let Recovery {
        records,
        base,
        replayed,
        next_generation,
        had_log,
        warnings,
        ..
    } = recovery::recover(root, &durability.snapshot_name, durability.log_repair)
        .map_err(|e| e.to_string())?;
    for warning in &warnings {
        tracing::warn!("recovery: warning: {warning}");
    }
    let shards = config.shards;
    if base.is_none() && !had_log {
        tracing::info!(
            persist = %root.display(),
            "recovery: nothing to recover under {}",
            root.display()
        );
        if durability.log.is_some() {
            std::fs::create_dir_all(&log_dir)
                .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
        }
        return Ok(Recovered {
            per_shard: (0..shards).map(|_| Vec::new()).collect(),
            generation: next_generation,
            log_dir,
            report: None,
        });
    }
    let sessions = records.len() as u64;
    // A log that was replayed is done with: the checkpoint holds its state,
    // and this run logs a new generation after it.
    let checkpoint = if durability.log.is_some() || had_log {
        let positions = LogPositions {
            generation: next_generation,
            positions: vec![0; shards],
        };
        let version = recovery::write_checkpoint(
            root,
            &durability.snapshot_name,
            shards,
            &records,
            positions,
        )
        .map_err(|e| format!("writing the recovery checkpoint: {e}"))?;
        if log_dir.exists() {
            recovery::delete_generations_before(&log_dir, next_generation)
                .map_err(|e| e.to_string())?;
        }
        // A start is a save of the snapshot dataset too: older versions
        // go (a crash loop must not fill the disk with checkpoints).
        recovery::retain_versions(
            root,
            &durability.snapshot_name,
            durability.snapshot_keep,
            &|_| false,
        )
        .map_err(|e| format!("removing old versions after the checkpoint: {e}"))?;
        Some(version)
    } else {
        None
    };
    if durability.log.is_some() {
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
    }
    let mut per_shard: Vec<Vec<SessionRecord>> = (0..shards).map(|_| Vec::new()).collect();
    for record in records {
        per_shard[mesh::shard_of(record.tkn, shards)].push(record);
    }
    let report = RecoveryReport {
        base,
        replayed,
        sessions,
        checkpoint,
        warnings,
        took: started.elapsed(),
    };
    report.log();
    Ok(Recovered {
        per_shard,
        generation: next_generation,
        log_dir,
        report: Some(report),
    })
}

impl RecoveryReport {
    /// What was recovered, in one line (the warnings came as they were known).
    fn log(&self) {
        let from = self
            .base
            .as_deref()
            .map_or("no snapshot".into(), |b| format!("snapshot {b}"));
        let checkpoint = self
            .checkpoint
            .as_deref()
            .map_or(String::new(), |c| format!("; checkpoint {c}"));
        tracing::info!(
            sessions = self.sessions,
            log_records = self.replayed,
            snapshot = self.base.as_deref(),
            checkpoint = self.checkpoint.as_deref(),
            duration_ms = self.took.as_millis() as u64,
            "recovered {} sessions from {from} and {} log records in {} ms{checkpoint}",
            self.sessions,
            self.replayed,
            self.took.as_millis(),
        );
    }
}
