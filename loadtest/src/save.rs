//! `--save-at SECONDS`: one more connection asks the server for a snapshot
//! during the timed run, and the run reports latency while it ran.
//!
//! Owns: the save request and waiting for its end (nemesisdb: `SH_SAVE`,
//! whose answer comes when the version is committed; Redis: `BGSAVE`, then
//! `INFO persistence` every 5 ms until no background save is in progress),
//! and the [`SaveWindow`] the driver threads read to sort each operation
//! into "during the save" or "outside it".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{self, Client};
use crate::config::{Protocol, Target};
use crate::stats::Latency;

/// Not set yet.
const UNSET: u64 = u64::MAX;

/// When the save ran, in nanoseconds since the timed run's start.
pub struct SaveWindow {
    start: Instant,
    begin_ns: AtomicU64,
    end_ns: AtomicU64,
}

impl SaveWindow {
    pub fn new(start: Instant) -> SaveWindow {
        SaveWindow {
            start,
            begin_ns: AtomicU64::new(UNSET),
            end_ns: AtomicU64::new(UNSET),
        }
    }

    fn mark(&self, at: &AtomicU64) {
        let ns = self.start.elapsed().as_nanos().min(u128::from(UNSET - 1)) as u64;
        at.store(ns, Ordering::Release);
    }

    /// Whether an operation scheduled (or sent) at `sent` and completed at
    /// `done` was in flight at any moment of the save.
    pub fn overlaps(&self, sent: Instant, done: Instant) -> bool {
        let begin = self.begin_ns.load(Ordering::Acquire);
        if begin == UNSET {
            return false;
        }
        let ns = |t: Instant| t.saturating_duration_since(self.start).as_nanos() as u64;
        let end = self.end_ns.load(Ordering::Acquire);
        ns(done) >= begin && (end == UNSET || ns(sent) <= end)
    }
}

/// What `report.json`'s `save` holds.
#[derive(Debug, Clone, Serialize)]
pub struct SaveSummary {
    /// Seconds into the timed run when the save was asked for.
    pub at_s: f64,
    /// From asking to the save's end (nemesisdb: its answer; Redis: the
    /// end of the background save, seen by polling).
    pub took_ms: f64,
    /// `ok`, or what went wrong.
    pub status: String,
    /// Operations in flight at any moment of the save.
    pub during_ops: u64,
    pub during_us: Latency,
    /// The other operations of the run.
    pub outside_ops: u64,
    pub outside_us: Latency,
}

/// Starts the thread that asks for the save `at` into the run.
pub fn start(
    target: &Target,
    seed: u64,
    at: Duration,
    window: Arc<SaveWindow>,
) -> Result<JoinHandle<(f64, String)>, String> {
    // Connected up front, so connecting is not part of the window.
    let mut c = Client::connect(target, seed, 7001).map_err(|e| format!("--save-at: {e}"))?;
    let protocol = target.protocol;
    Ok(thread::spawn(move || {
        thread::sleep((window.start + at).saturating_duration_since(Instant::now()));
        let asked = Instant::now();
        window.mark(&window.begin_ns);
        let status = match save(&mut c, protocol) {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        };
        window.mark(&window.end_ns);
        let took = asked.elapsed().as_secs_f64() * 1000.0;
        c.close();
        ((took * 10.0).round() / 10.0, status)
    }))
}

fn save(c: &mut Client, protocol: Protocol) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    match protocol {
        Protocol::Ws => {
            let reply = c.call(br#"{"SH_SAVE":{"name":"loadtest"}}"#).map_err(io)?;
            let text = String::from_utf8_lossy(&reply);
            if text.contains(r#""st":121"#) {
                Ok(())
            } else {
                Err(format!("SH_SAVE answered {text}"))
            }
        }
        Protocol::Redis => {
            let reply = c.call(&client::command(&[b"BGSAVE"])).map_err(io)?;
            if !reply.starts_with(b"+") {
                return Err(format!("BGSAVE: {}", String::from_utf8_lossy(&reply)));
            }
            loop {
                let info = c
                    .call(&client::command(&[b"INFO", b"persistence"]))
                    .map_err(io)?;
                let text = String::from_utf8_lossy(&info);
                if text.contains("rdb_bgsave_in_progress:0") {
                    return if text.contains("rdb_last_bgsave_status:ok") {
                        Ok(())
                    } else {
                        Err("BGSAVE failed (rdb_last_bgsave_status)".into())
                    };
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The save's lines under the summary table.
pub fn print(s: &SaveSummary) {
    println!(
        "  save          at {:.1} s, took {:.1} ms: {}",
        s.at_s, s.took_ms, s.status
    );
    for (name, ops, l) in [
        ("during", s.during_ops, &s.during_us),
        ("outside", s.outside_ops, &s.outside_us),
    ] {
        println!(
            "    {name:<8} {ops:>9} ops  p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} us",
            l.p50, l.p99, l.p999, l.max
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_counts_during_the_save_when_it_overlaps_it() {
        let start = Instant::now();
        let w = SaveWindow::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!w.overlaps(at(0), at(10)), "no save yet");
        w.begin_ns.store(100_000_000, Ordering::Release);
        assert!(!w.overlaps(at(0), at(99)), "done before it began");
        assert!(w.overlaps(at(90), at(101)), "in flight when it began");
        assert!(w.overlaps(at(5000), at(5001)), "still running");
        w.end_ns.store(200_000_000, Ordering::Release);
        assert!(w.overlaps(at(150), at(300)), "sent while it ran");
        assert!(!w.overlaps(at(201), at(202)), "sent after it ended");
    }
}
