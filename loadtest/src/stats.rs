//! Gathers what the threads report into the run's totals, its per-second
//! series and the summary printed at the end.
//!
//! Owns: merging histograms, the progress bar, the `--json` object and the
//! human summary. Runs on the main thread only.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::buckets::Estimate;
use crate::driver::{Msg, new_histogram};
use crate::scrape::{ServerSide, micros};

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct SecondStat {
    /// Seconds since the start (0 is the first).
    pub second: u64,
    pub ops_per_sec: f64,
    pub errors: u64,
    pub p99_us: f64,
}

/// Everything the threads reported during one phase.
pub struct Outcome {
    pub ops: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
    pub series: Vec<SecondStat>,
    /// From the start to the last completed operation.
    pub elapsed: Duration,
    pub failed_connections: u64,
    /// Replies out of step with the requests (see `Msg::Done`).
    pub mismatched: u64,
    /// Successes that echoed no token (see `Msg::Done`).
    pub untokened: u64,
    /// Successes with no token where one was needed (see `Msg::Done`).
    pub token_missing: u64,
    /// Compare-and-sets that lost and were tried again (see `Msg::Done`).
    pub retries: u64,
    /// `--save-at`: latencies during the save and outside it (see `Msg::Done`).
    pub save: Option<[Histogram<u64>; 2]>,
}

/// A second still open for late ticks from slower threads.
struct Open {
    ops: u64,
    errors: u64,
    hist: Histogram<u64>,
}

/// What the progress bar measures.
pub enum Goal {
    Requests(u64),
    Duration(Duration),
}

/// Receives every thread's messages until all are done.
pub fn collect(
    rx: Receiver<Msg>,
    threads: usize,
    start: Instant,
    bar: Option<(&ProgressBar, &Arc<AtomicU64>, Goal)>,
) -> Outcome {
    let mut hist = new_histogram();
    let (mut ops, mut errors, mut failed, mut mismatched) = (0u64, 0u64, 0u64, 0u64);
    let (mut untokened, mut token_missing, mut retries) = (0u64, 0u64, 0u64);
    let mut open: BTreeMap<u64, Open> = BTreeMap::new();
    let mut closed: BTreeMap<u64, SecondStat> = BTreeMap::new();
    let mut done = 0;
    let mut last = start;
    let mut last_rate = 0.0;
    let mut save: Option<[Histogram<u64>; 2]> = None;
    while done < threads {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Msg::Tick {
                second,
                ops: o,
                errors: e,
                hist: h,
            }) => {
                ops += o;
                errors += e;
                // Merging fails only when a value exceeds the bounds, which
                // saturating_record already prevents.
                let _ = hist.add(&*h);
                if let Some(stat) = closed.get_mut(&second) {
                    // A tick that came after its second was summarised.
                    stat.ops_per_sec += o as f64;
                    stat.errors += e;
                } else {
                    let entry = open.entry(second).or_insert_with(|| Open {
                        ops: 0,
                        errors: 0,
                        hist: new_histogram(),
                    });
                    entry.ops += o;
                    entry.errors += e;
                    let _ = entry.hist.add(&*h);
                }
            }
            Ok(Msg::Done {
                at,
                failed_connections,
                mismatched: m,
                untokened: u,
                token_missing: t,
                retries: r,
                save: s,
            }) => {
                if let Some(s) = s {
                    let all = save.get_or_insert_with(|| [new_histogram(), new_histogram()]);
                    for (all, h) in all.iter_mut().zip(s.iter()) {
                        let _ = all.add(h);
                    }
                }
                done += 1;
                failed += failed_connections;
                mismatched += m;
                untokened += u;
                token_missing += t;
                retries += r;
                last = last.max(at);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // Seconds that ended over 2 s ago are summarised and their
        // histograms dropped, so a long run holds a few histograms only.
        let now_s = start.elapsed().as_secs();
        while let Some((&s, _)) = open.first_key_value() {
            if s + 2 >= now_s {
                break;
            }
            if let Some((s, o)) = open.pop_first() {
                last_rate = o.ops as f64;
                closed.insert(s, close(s, o, 1.0));
            }
        }
        if let Some((pb, progress, goal)) = &bar {
            let done_ops = progress.load(Ordering::Relaxed);
            match goal {
                Goal::Requests(_) => pb.set_position(done_ops),
                Goal::Duration(_) => pb.set_position(start.elapsed().as_millis() as u64),
            }
            let rate = if last_rate > 0.0 {
                last_rate
            } else {
                done_ops as f64 / start.elapsed().as_secs_f64().max(1e-3)
            };
            pb.set_message(format!("{} ops/s, {} errors", group(rate), errors));
        }
    }
    let elapsed = last.saturating_duration_since(start);
    let full = elapsed.as_secs();
    for (s, o) in std::mem::take(&mut open) {
        // The last second is usually partial: scale it to a rate.
        let span = if s >= full {
            (elapsed.as_secs_f64() - s as f64).clamp(0.0, 1.0)
        } else {
            1.0
        };
        // A sliver of a second (the drain after a duration run) says nothing
        // about a rate; its operations still count in the totals.
        if span >= 0.1 {
            closed.insert(s, close(s, o, span));
        }
    }
    Outcome {
        ops,
        errors,
        hist,
        series: closed.into_values().collect(),
        elapsed,
        failed_connections: failed,
        mismatched,
        untokened,
        token_missing,
        retries,
        save,
    }
}

fn close(second: u64, o: Open, span: f64) -> SecondStat {
    SecondStat {
        second,
        ops_per_sec: round1(o.ops as f64 / span),
        errors: o.errors,
        p99_us: us(o.hist.value_at_quantile(0.99)),
    }
}

/// A progress bar on stderr-free stdout, only when stdout is a terminal.
pub fn progress_bar(goal: &Goal, json: bool) -> Option<ProgressBar> {
    if json || !std::io::stdout().is_terminal() {
        return None;
    }
    let (len, template) = match goal {
        Goal::Requests(n) => (*n, "{bar:30} {pos}/{len}  {msg}"),
        Goal::Duration(d) => (d.as_millis() as u64, "{bar:30} {elapsed}/{duration}  {msg}"),
    };
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    Some(pb)
}

/// Nanoseconds to microseconds with one decimal.
pub fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `1234567.8` as `1,234,568`.
pub fn group(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The `--json` object: exactly these fields, in this order (`server` only
/// with `--scrape`, and last, so readers of the older object see no change).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: String,
    pub workload: String,
    pub connections: usize,
    pub pipeline: usize,
    pub duration_s: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub errors: u64,
    pub latency_us: Latency,
    /// `--scrape`: the server's own figures for the run; absent without
    /// the flag or when a scrape failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSide>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// The readable summary printed without `--json`; `retries` for workloads
/// that retry (cas).
pub fn print_table(
    s: &Summary,
    threads: usize,
    rate: Option<f64>,
    failed: u64,
    retries: Option<u64>,
) {
    print!("{}", table(s, threads, rate, failed, retries));
}

fn table(
    s: &Summary,
    threads: usize,
    rate: Option<f64>,
    failed: u64,
    retries: Option<u64>,
) -> String {
    // Writing to a String cannot fail.
    let mut t = String::new();
    let mode = match rate {
        Some(r) => format!("open loop at {} ops/s", group(r)),
        None => "closed loop".to_string(),
    };
    let _ = writeln!(t);
    let _ = writeln!(t, "  target        {}", s.target);
    let _ = writeln!(
        t,
        "  workload      {} ({mode}), {} connections x pipeline {}, {threads} thread{}",
        s.workload,
        s.connections,
        s.pipeline,
        if threads == 1 { "" } else { "s" }
    );
    let _ = writeln!(t, "  duration      {:.3} s", s.duration_s);
    let _ = writeln!(t, "  operations    {}", group(s.ops as f64));
    let _ = writeln!(t, "  throughput    {} ops/s", group(s.ops_per_sec));
    let _ = writeln!(t, "  errors        {}", s.errors);
    if failed > 0 {
        let _ = writeln!(t, "  failed conns  {failed}");
    }
    if let Some(r) = retries {
        let per_op = if s.ops > 0 {
            r as f64 / s.ops as f64
        } else {
            0.0
        };
        let _ = writeln!(
            t,
            "  retries       {} ({per_op:.3} per operation)",
            group(r as f64)
        );
    }
    let _ = writeln!(t, "  latency (us)  p50      p90      p99      p99.9    max");
    let l = &s.latency_us;
    let row = |label: &str, cells: [String; 5]| {
        let [p50, p90, p99, p999, max] = cells;
        format!("{label:<16}{p50:<8} {p90:<8} {p99:<8} {p999:<8} {max}")
    };
    let client = [l.p50, l.p90, l.p99, l.p999, l.max].map(|v| format!("{v:.1}"));
    let Some(server) = &s.server else {
        let _ = writeln!(t, "{}", row("", client));
        return t;
    };
    // The server's figures beside the client's, in the same columns.
    let _ = writeln!(t, "{}", row("    client", client));
    let dash = || "-".to_string();
    let sl = &server.latency;
    let cells = [estimate(sl.p50), dash(), estimate(sl.p99), dash(), dash()];
    let _ = writeln!(t, "{}", row("    server", cells));
    if server.commands.len() > 1 {
        let each: Vec<String> = server
            .commands
            .iter()
            .map(|(c, l)| format!("{c} {}/{}", estimate(l.p50), estimate(l.p99)))
            .collect();
        let _ = writeln!(t, "  per command   {} (server p50/p99 us)", each.join("  "));
    }
    let answered: Vec<String> = server
        .answered
        .iter()
        .map(|(c, by_status)| {
            let counts: Vec<String> = by_status
                .iter()
                .map(|(st, n)| format!("{} (st {st})", group(*n as f64)))
                .collect();
            format!("{c} {}", counts.join(", "))
        })
        .collect();
    let answered = if answered.is_empty() {
        "none".to_string()
    } else {
        answered.join("; ")
    };
    let _ = writeln!(t, "  answered      {answered}");
    if let Some(n) = server.forwarded {
        let _ = writeln!(t, "  forwarded     {} (to another shard)", group(n as f64));
    }
    t
}

/// A server-side quantile in microseconds: `-` without requests, `>` the
/// largest bound when it lies past it.
fn estimate(e: Estimate) -> String {
    match e {
        Estimate::Empty => "-".to_string(),
        Estimate::Within(v) => format!("{:.1}", micros(v)),
        Estimate::Above(v) => format!(">{:.1}", micros(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format() {
        assert_eq!(group(1234567.8), "1,234,568");
        assert_eq!(group(999.0), "999");
        assert_eq!(us(1_234_567), 1234.6);
    }

    #[test]
    fn json_has_exactly_the_documented_fields() {
        let s = Summary {
            target: "ws://x/".into(),
            workload: "get".into(),
            connections: 1,
            pipeline: 1,
            duration_s: 1.0,
            ops: 1,
            ops_per_sec: 1.0,
            errors: 0,
            latency_us: Latency::of(&new_histogram()),
            server: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut want = vec![
            "target",
            "workload",
            "connections",
            "pipeline",
            "duration_s",
            "ops",
            "ops_per_sec",
            "errors",
            "latency_us",
        ];
        want.sort();
        assert_eq!(keys, want);
        let lat: Vec<&str> = v["latency_us"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(lat, vec!["max", "p50", "p90", "p99", "p999"]);
    }

    /// A mixed run's summary with the server's figures: 1000 SH_GET and 200
    /// SH_SET timed by the server during the run.
    fn mixed_with_server() -> Summary {
        use crate::scrape::tests::{Hist, at, exposition};
        use crate::scrape::{Metrics, ServerSide};
        let before = Metrics::parse(&exposition(&[], &[], true)).unwrap();
        let mut get = at(2, 900);
        get[3] = 90;
        get[5] = 10;
        let mut set = at(3, 100);
        set[4] = 100;
        let after = Metrics::parse(&exposition(
            &[
                Hist {
                    command: "SH_GET",
                    per_bucket: get,
                },
                Hist {
                    command: "SH_SET",
                    per_bucket: set,
                },
            ],
            &[
                ("SH_GET", "1", 997),
                ("SH_GET", "22", 3),
                ("SH_SET", "1", 200),
                ("SH_SUBSCRIBE", "1", 1),
            ],
            true,
        ))
        .unwrap();
        Summary {
            target: "ws://127.0.0.1:1987/".into(),
            workload: "mixed".into(),
            connections: 50,
            pipeline: 1,
            duration_s: 10.0,
            ops: 1200,
            ops_per_sec: 120.0,
            errors: 3,
            latency_us: Latency {
                p50: 41.0,
                p90: 52.5,
                p99: 80.2,
                p999: 120.0,
                max: 300.0,
            },
            server: Some(ServerSide::between(&before, &after, &["SH_GET", "SH_SET"]).unwrap()),
        }
    }

    #[test]
    fn the_table_shows_the_servers_figures_beside_the_clients() {
        let s = mixed_with_server();
        let want = "
  target        ws://127.0.0.1:1987/
  workload      mixed (closed loop), 50 connections x pipeline 1, 2 threads
  duration      10.000 s
  operations    1,200
  throughput    120 ops/s
  errors        3
  latency (us)  p50      p90      p99      p99.9    max
    client      41.0     52.5     80.2     120.0    300.0
    server      20.0     -        99.0     -        -
  per command   SH_GET 18.3/50.0  SH_SET 50.0/99.0 (server p50/p99 us)
  answered      SH_GET 997 (st 1), 3 (st 22); SH_SET 200 (st 1); SH_SUBSCRIBE 1 (st 1)
";
        assert_eq!(table(&s, 2, None, 0, None), want);
        // Without --scrape, the table is as it always was.
        let plain = Summary { server: None, ..s };
        let want = "
  target        ws://127.0.0.1:1987/
  workload      mixed (closed loop), 50 connections x pipeline 1, 2 threads
  duration      10.000 s
  operations    1,200
  throughput    120 ops/s
  errors        3
  latency (us)  p50      p90      p99      p99.9    max
                41.0     52.5     80.2     120.0    300.0
";
        assert_eq!(table(&plain, 2, None, 0, None), want);
    }

    #[test]
    fn server_quantiles_print_with_their_limits() {
        assert_eq!(estimate(Estimate::Empty), "-");
        assert_eq!(estimate(Estimate::Within(0.0000183)), "18.3");
        assert_eq!(estimate(Estimate::Above(2.5)), ">2500000.0");
    }

    #[test]
    fn json_adds_server_last_and_only_with_it() {
        let s = mixed_with_server();
        let line = serde_json::to_string(&s).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert!(keys.contains(&"server"));
        // Last in the line itself (serde_json's map sorts keys).
        assert!(line.contains(r#""max":300.0},"server":{"#), "{line}");
        assert_eq!(
            v["server"]["latency"],
            serde_json::json!({"requests": 1200, "p50_us": 20.0, "p99_us": 99.0, "above": []})
        );
        assert_eq!(v["server"]["commands"]["SH_SET"]["p99_us"], 99.0);
        assert_eq!(v["server"]["answered"]["SH_GET"]["22"], 3);
        let plain = Summary { server: None, ..s };
        assert!(!serde_json::to_string(&plain).unwrap().contains("server"));
    }
}
