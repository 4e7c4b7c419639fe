//! Start-up recovery of a million sessions: the newest snapshot plus a
//! million change-log records after its positions (issue #17's target:
//! under 10 s on the project machine).
//!
//! Builds the files with the library, as a two-shard server would have left
//! them: a complete version of dataset `auto` holding N sessions (default
//! 1M, `RECOVERY_SESSIONS`) with two small keys and an idle deadline an hour
//! away, whose metadata records generation 1 at each shard's position; then
//! M log records (default 1M, `RECOVERY_RECORDS`) after those positions:
//! mostly `SH_SET`s of one key, with some creations and ends. Then times
//! `persist::recover` (what start-up does before any shard runs), and
//! separately the checkpoint start-up writes after it.
//!
//! `cargo bench --bench recovery`; pin with `taskset -c 0` for steadier
//! numbers.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::dir_bytes;
use nemesisdb::domain::ExpirySettings;
use nemesisdb::mesh::shard_of;
use nemesisdb::persist::log::{ChangeBuffer, FsyncPolicy, LogWriter, LogWriterConfig};
use nemesisdb::persist::{LogPositions, RecordHead, SessionRecord, recover, write_checkpoint};

const SHARDS: usize = 2;
/// Records per batch handed to a log writer (a busy shard's turn).
const BATCH: usize = 4096;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Distinct tokens, never 0, spread over the shards like a server's.
fn token(i: u64) -> u64 {
    // SplitMix64's increment keeps them distinct; | 1 keeps them non-zero.
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555_5555) | 1
}

fn expiry() -> Option<ExpirySettings> {
    Some(ExpirySettings {
        duration_s: 3600,
        delete_session: false,
        extend_on_set_add: false,
        extend_on_get: false,
        max_lifetime_s: 0,
    })
}

fn session(tkn: u64, deadline: u64) -> SessionRecord {
    SessionRecord {
        tkn,
        name: None,
        shared: false,
        expiry: expiry(),
        owner: None,
        created_unix_ms: 0,
        version: 1,
        idle_deadline_unix_ms: deadline,
        keys: vec![
            ("user".into(), br#""u123456""#.to_vec().into_boxed_slice()),
            ("cart".into(), b"[1,2,3]".to_vec().into_boxed_slice()),
        ],
    }
}

fn main() {
    let sessions = env_count("RECOVERY_SESSIONS", 1_000_000);
    let records = env_count("RECOVERY_RECORDS", 1_000_000);
    let root = std::env::temp_dir().join(format!("ndb-bench-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("bench directory");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let deadline = now_ms + 3_600_000;

    // The snapshot: each shard's sessions, and the log position it covers
    // (as if each shard had logged one record per session before it).
    let t0 = Instant::now();
    let tokens: Vec<u64> = (0..sessions as u64).map(token).collect();
    let mut per_shard = [0u64; SHARDS];
    for &t in &tokens {
        per_shard[shard_of(t, SHARDS)] += 1;
    }
    let snapshot: Vec<SessionRecord> = tokens.iter().map(|&t| session(t, deadline)).collect();
    let positions = LogPositions {
        generation: 1,
        positions: per_shard.to_vec(),
    };
    let version =
        write_checkpoint(&root, "auto", SHARDS, &snapshot, positions).expect("write the snapshot");
    let snapshot_bytes = dir_bytes(&root);

    // The log after it, generation 1, one writer thread per shard.
    std::fs::create_dir_all(root.join("log")).expect("log directory");
    let writers: Vec<LogWriter> = (0..SHARDS)
        .map(|shard| {
            LogWriter::start(
                LogWriterConfig {
                    dir: root.join("log"),
                    generation: 1,
                    shard: shard as u32,
                    shards: SHARDS as u32,
                    policy: FsyncPolicy::No,
                    segment_bytes: 64 << 20,
                },
                Box::new(|_| {}),
            )
            .expect("start a log writer")
        })
        .collect();
    let mut buffers: Vec<ChangeBuffer> = per_shard
        .iter()
        .map(|&p| ChangeBuffer::new(p + 1))
        .collect();
    let mut pending = [0usize; SHARDS];
    let mut versions = vec![1u64; sessions * 95 / 100];
    let mut created = 0u64;
    // Sets go to the first 95% of the sessions, ends to the rest (each
    // once), so no record is about a session already gone.
    let set_range = sessions * 95 / 100;
    let mut ended = 0usize;
    let value = br#"[4,5,6,7]"#;
    for i in 0..records {
        // Every 20th record creates a session, every 50th ends one, the
        // rest set a key of an existing one.
        let shard = match i % 100 {
            r if r % 20 == 0 => {
                let tkn = token(sessions as u64 + created);
                created += 1;
                let shard = shard_of(tkn, SHARDS);
                let head = RecordHead {
                    tkn,
                    name: None,
                    shared: false,
                    expiry: expiry(),
                    owner: None,
                    created_unix_ms: 0,
                    version: 1,
                    idle_deadline_unix_ms: deadline,
                };
                let keys = [("user", &br#""new""#[..])];
                buffers[shard].put(&head, keys.into_iter());
                shard
            }
            r if r % 50 == 1 && ended < sessions - set_range => {
                let tkn = tokens[sessions - 1 - ended];
                ended += 1;
                let shard = shard_of(tkn, SHARDS);
                buffers[shard].end_session(tkn);
                shard
            }
            _ => {
                let at = (i * 104_729) % set_range;
                let tkn = tokens[at];
                let shard = shard_of(tkn, SHARDS);
                versions[at] += 1;
                let keys = [("cart", &value[..])];
                buffers[shard].set(tkn, false, versions[at], keys.into_iter());
                shard
            }
        };
        pending[shard] += 1;
        if pending[shard] == BATCH
            && let Some(batch) = buffers[shard].take(None)
        {
            writers[shard].append(batch);
            pending[shard] = 0;
        }
    }
    for (shard, buffer) in buffers.iter_mut().enumerate() {
        if let Some(batch) = buffer.take(None) {
            writers[shard].append(batch);
        }
    }
    // Dropping a writer writes what is queued, fsyncs and joins.
    drop(writers);
    let log_bytes = dir_bytes(&root.join("log"));
    println!(
        "built {sessions} sessions (version {version}, {snapshot_bytes} bytes) and {records} log records ({log_bytes} bytes) in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // What the page cache holds is what a restart right after a crash
    // finds; dropping it would need root. Three runs, the best and worst.
    let mut times: Vec<Duration> = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let recovered = recover(&root, "auto", false).expect("recover");
        times.push(t.elapsed());
        last = Some(recovered);
    }
    let recovered = last.expect("a run");
    times.sort();
    println!(
        "recover: {} sessions from {:?} and {} log records in {} ms (best), {} ms (worst of {}); {} warnings",
        recovered.records.len(),
        recovered.base,
        recovered.replayed,
        times[0].as_millis(),
        times[times.len() - 1].as_millis(),
        times.len(),
        recovered.warnings.len()
    );
    assert_eq!(recovered.replayed, records as u64, "every record replayed");

    // Start-up then writes a checkpoint of what it recovered.
    let t = Instant::now();
    let positions = LogPositions {
        generation: recovered.next_generation,
        positions: vec![0; SHARDS],
    };
    let count = recovered.records.len();
    let checkpoint =
        write_checkpoint(&root, "auto", SHARDS, &recovered.records, positions).expect("checkpoint");
    println!(
        "checkpoint {checkpoint} of {count} sessions in {} ms",
        t.elapsed().as_millis()
    );
    let _ = std::fs::remove_dir_all(&root);
}

// The server's allocator: recovery allocates millions of small keys and
// values, and glibc's malloc would measure a different program.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
