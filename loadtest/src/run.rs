//! The phases of a run: connect, set up sessions (untimed), run the workload
//! on `--threads` threads, end the sessions (untimed), then print and write
//! the results.
//!
//! Owns: the order of phases, spreading connections over threads, and turning
//! an [`Outcome`] into the [`Summary`]. The per-connection work is `driver`'s.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::config::{Config, Locality, Protocol, Stop, Workload};
use crate::driver::{self, Conn, Plan, Source};
use crate::events::{Accept, Subscriber};
use crate::expiry_events;
use crate::report;
use crate::save::{self, SaveSummary, SaveWindow};
use crate::scrape::{Scraper, ServerSide};
use crate::shards;
use crate::stats::{self, Goal, Latency, Outcome, Summary, round1};
use crate::workload::{Encoder, Lifetime, Owners, Sessions, value_text, ws_commands};

/// Runs the whole benchmark; `Err` only when it could not run at all.
pub fn run(cfg: &Config) -> Result<Summary, String> {
    if cfg.workload == Workload::ExpiryEvents {
        return expiry_events::run(cfg);
    }
    let mut groups: Vec<Vec<Conn>> = (0..cfg.threads).map(|_| Vec::new()).collect();
    for i in 0..cfg.connections {
        let conn = Conn::connect(&cfg.target, i, cfg.seed)
            .map_err(|e| format!("connection {} to {}: {e}", i + 1, cfg.target.url))?;
        groups[i % cfg.threads].push(conn);
    }
    // What the first connection agreed on stands for all (one client
    // configuration, one server).
    let tls = groups.first().and_then(|g| g.first()).and_then(Conn::tls);
    let value = value_text(cfg.value_size, cfg.seed);
    let protocol = cfg.target.protocol;

    // Asked before set-up, so a locality the server cannot give is refused
    // at once.
    let shards = match cfg.locality {
        Locality::Any => None,
        locality => Some(server_shards(cfg, locality)?),
    };
    let (groups, sessions, pools, setup_errors) = if cfg.workload.needs_sessions() {
        set_up(cfg, groups, &value, shards)?
    } else {
        (groups, Sessions::default(), Vec::new(), 0)
    };
    let owners = Owners::new(cfg.sessions, (cfg.connections * cfg.pipeline) as u64);
    let (groups, setup_errors) = if cfg.workload == Workload::LogoutAll {
        let (g, e) = set_up_owners(cfg, groups, &value, owners);
        (g, setup_errors + e)
    } else {
        (groups, setup_errors)
    };

    // Subscribed before the timed run, so it sees the run's events and
    // none of set-up's.
    let subscriber = if cfg.subscribe {
        Some(Subscriber::start(
            &cfg.target,
            cfg.seed,
            &[],
            Accept::All,
            None,
        )?)
    } else {
        None
    };
    // Scraped before the CPU reading (and after it at the end), so the
    // server's work of answering a scrape is outside the measured CPU.
    let scraper = cfg
        .scrape
        .as_deref()
        .map(|url| Scraper::new(url, cfg.timeout, &cfg.tls, cfg.target.auth.as_ref()));
    let scraped_before = scraper.as_ref().map(|s| {
        let before = s.scrape();
        if let Err(e) = &before {
            eprintln!(
                "loadtest: --scrape {}: {e}; the run goes on without the server's figures",
                s.url()
            );
        }
        before
    });
    let cpu_before = Cpu::now(cfg.server_pid);
    let start = Instant::now();
    let window = cfg.save_at.map(|_| Arc::new(SaveWindow::new(start)));
    let saver = match (cfg.save_at, &window) {
        (Some(at), Some(w)) => Some(save::start(&cfg.target, cfg.seed, at, Arc::clone(w))?),
        _ => None,
    };
    let (requests, deadline, goal) = match cfg.stop {
        Stop::Requests(n) => (Some(n), None, Goal::Requests(n)),
        Stop::Duration(d) => (None, Some(start + d), Goal::Duration(d)),
    };
    let progress = Arc::new(AtomicU64::new(0));
    let bar = stats::progress_bar(&goal, cfg.json);
    let created = if cfg.workload == Workload::LogoutAll {
        owners.count()
    } else {
        sessions.len() as u64
    };
    let encoder = Arc::new(
        Encoder::new(protocol, cfg.workload, &value, sessions)
            .with_owners(owners)
            .with_pools(pools),
    );
    let plan = Plan {
        encoder: Arc::clone(&encoder),
        source: Source::Timed,
        pipeline: cfg.pipeline,
        requests,
        deadline,
        interval: cfg
            .rate
            .map(|r| Duration::from_secs_f64(cfg.connections as f64 / r)),
        timeout: cfg.timeout,
        start,
        connections: cfg.connections,
        progress: bar.as_ref().map(|_| Arc::clone(&progress)),
        save: window,
    };
    let (mut groups, outcome) = run_phase(groups, plan, bar.as_ref().map(|b| (b, &progress, goal)));
    let save = saver.map(|s| save_summary(cfg, s, &outcome));
    let cpu = Cpu::now(cfg.server_pid).since(&cpu_before);
    let server = match (&scraper, scraped_before) {
        (Some(s), Some(Ok(before))) => Some((
            s,
            s.scrape()
                .and_then(|after| ServerSide::between(&before, &after, ws_commands(cfg.workload))),
        )),
        // No --scrape, or the first scrape failed (said then).
        _ => None,
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let server = server.and_then(|(s, side)| {
        side.map_err(|e| {
            eprintln!(
                "loadtest: --scrape {}: {e}; the report has no server figures",
                s.url()
            )
        })
        .ok()
    });
    // The events still on their way arrive before teardown's begin.
    let events = match subscriber {
        Some(s) => Some(s.finish()?.summary(None)),
        None => None,
    };

    // Untimed: end the sessions (or owners) set-up made, so runs do not pile
    // them up.
    let mut teardown_errors = 0;
    if created > 0 {
        let plan = untimed_plan(cfg, encoder, Source::Teardown, created);
        let (g, o) = run_phase(groups, plan, None);
        groups = g;
        teardown_errors = o.errors;
        if teardown_errors > 0 {
            eprintln!("loadtest: teardown: {teardown_errors} errors ending sessions");
        }
    }
    for conn in groups.into_iter().flatten() {
        conn.close(protocol);
    }

    let summary = summarize(cfg, &outcome, setup_errors + teardown_errors, server);
    if let Some(dir) = &cfg.out {
        let meta = report::Meta {
            threads: cfg.threads,
            rate: cfg.rate,
            seed: cfg.seed,
            client_cpu_s: cpu.client,
            server_cpu_s: cpu.server,
            events: events.as_ref(),
            save: save.as_ref(),
            tls: tls.as_deref(),
        };
        report::write(dir, &summary, &outcome, &meta)?;
    }
    if cfg.json {
        // The object's fields are fixed: the events go to stderr (and
        // report.json).
        if let Some(e) = &events {
            eprintln!("loadtest: {}", e.line());
        }
        if let Some(t) = &tls {
            eprintln!("loadtest: tls: {t}");
        }
        if let Some(s) = &save {
            eprintln!(
                "loadtest: save: {}",
                serde_json::to_string(s).unwrap_or_default()
            );
        }
        // Serializing plain numbers and strings cannot fail.
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        let retries = (cfg.workload == Workload::Cas).then_some(outcome.retries);
        stats::print_table(
            &summary,
            cfg.threads,
            cfg.rate,
            outcome.failed_connections,
            retries,
        );
        if let Some(t) = &tls {
            println!("  TLS           {t}");
        }
        if let Some(e) = &events {
            e.print();
        }
        if let Some(s) = &save {
            save::print(s);
        }
        cpu.print(summary.ops);
    }
    Ok(summary)
}

type Groups = Vec<Vec<Conn>>;

/// Waits for the save (a run shorter than `--save-at` never asked for it)
/// and sums up latency during it and outside.
fn save_summary(
    cfg: &Config,
    saver: std::thread::JoinHandle<(f64, String)>,
    outcome: &Outcome,
) -> SaveSummary {
    let (took_ms, status) = saver
        .join()
        .unwrap_or_else(|_| (0.0, "the save thread panicked".into()));
    let empty = [driver::new_histogram(), driver::new_histogram()];
    let [during, outside] = outcome.save.as_ref().unwrap_or(&empty);
    SaveSummary {
        at_s: cfg.save_at.map_or(0.0, |d| d.as_secs_f64()),
        took_ms,
        status,
        during_ops: during.len(),
        during_us: Latency::of(during),
        outside_ops: outside.len(),
        outside_us: Latency::of(outside),
    }
}

/// `--locality`: the server's shard count (`SV_INFO`); `remote` needs two.
fn server_shards(cfg: &Config, locality: Locality) -> Result<usize, String> {
    let fail = |e: String| format!("--locality {}: SV_INFO: {e}", locality.name());
    let mut client =
        Client::connect(&cfg.target, cfg.seed, u64::MAX - 3).map_err(|e| fail(e.to_string()))?;
    client
        .set_read_timeout(Some(cfg.timeout))
        .map_err(|e| fail(e.to_string()))?;
    let reply = client
        .call(br#"{"SV_INFO":{}}"#)
        .map_err(|e| fail(e.to_string()))?;
    client.close();
    let v: serde_json::Value =
        serde_json::from_slice(&reply).map_err(|e| fail(format!("the reply is not JSON ({e})")))?;
    let shards = v["SV_INFO_RSP"]["shards"]
        .as_u64()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            fail(format!(
                "no shard count in the reply {}",
                String::from_utf8_lossy(&reply)
            ))
        })?;
    if locality == Locality::Remote && shards < 2 {
        return Err(
            "--locality remote: the server runs 1 shard, so no request can \
             cross to another (start it with --shards 2 or more)"
                .into(),
        );
    }
    Ok(shards as usize)
}

/// Session indexes to pick from, by the shard serving a connection
/// (`--locality`; empty: any session).
type Pools = Vec<Vec<u32>>;

/// Creates `--sessions` sessions with keys `user` and `cart` (untimed) and
/// returns what the workload picks from, with the number of errors. With
/// `shards` (`--locality`), each connection learns its shard from the
/// tokens it was given: the server mints them on the creating connection's.
fn set_up(
    cfg: &Config,
    groups: Groups,
    value: &str,
    shards: Option<usize>,
) -> Result<(Groups, Sessions, Pools, u64), String> {
    let protocol = cfg.target.protocol;
    let lifetime = match cfg.workload {
        Workload::Sliding => Lifetime::Sliding,
        // Touching a session that never expires would measure nothing.
        Workload::Touch => Lifetime::Hour,
        _ => Lifetime::Forever,
    };
    let encoder = Encoder::new(protocol, cfg.workload, value, Sessions::default());
    let plan = untimed_plan(
        cfg,
        Arc::new(encoder),
        Source::Setup(lifetime),
        cfg.sessions,
    );
    let (mut groups, outcome) = run_phase(groups, plan, None);
    let errors = outcome.errors;
    if errors > 0 {
        eprintln!("loadtest: set-up: {errors} errors creating sessions");
    }
    let (sessions, pools) = match protocol {
        Protocol::Redis => (Sessions::redis_keys(cfg.sessions), Vec::new()),
        Protocol::Ws => {
            let mut tokens: Vec<(u64, u64)> = Vec::new();
            let mut used = Vec::new();
            for conn in groups.iter_mut().flatten() {
                let mine = conn.take_tokens();
                if let Some(shards) = shards
                    && conn.alive()
                {
                    conn.shard = Some(connection_shard(&mine, shards)?);
                    used.extend(conn.shard);
                }
                tokens.extend(mine);
            }
            // Ordered by operation id, so a seed picks the same sessions.
            tokens.sort_unstable();
            if tokens.is_empty() {
                return Err(format!("set-up created no sessions ({errors} errors)"));
            }
            let tokens: Vec<u64> = tokens.into_iter().map(|(_, t)| t).collect();
            let pools = match shards {
                Some(shards) => shards::pools(&tokens, shards, cfg.locality, &used)?,
                None => Vec::new(),
            };
            (Sessions::from_tokens(tokens), pools)
        }
    };
    Ok((groups, sessions, pools, errors))
}

/// The shard serving a connection: where the tokens it created land (all
/// on one, or the server does not route as `shard_of` says).
fn connection_shard(tokens: &[(u64, u64)], shards: usize) -> Result<usize, String> {
    let Some(&(_, first)) = tokens.first() else {
        return Err(
            "--locality: a connection created no session in set-up, so its \
             shard is unknown; use --sessions of at least --connections"
                .into(),
        );
    };
    let shard = shards::shard_of(first, shards);
    if tokens
        .iter()
        .any(|&(_, t)| shards::shard_of(t, shards) != shard)
    {
        return Err(
            "--locality: one connection's sessions landed on different shards; \
             the server does not mint tokens on the creating connection's shard \
             as nemesisdb does"
                .into(),
        );
    }
    Ok(shard)
}

/// Creates logout-all's owners, 5 sessions each (untimed); returns the
/// number of errors.
fn set_up_owners(cfg: &Config, groups: Groups, value: &str, owners: Owners) -> (Groups, u64) {
    let encoder = Encoder::new(
        cfg.target.protocol,
        cfg.workload,
        value,
        Sessions::default(),
    );
    let plan = untimed_plan(cfg, Arc::new(encoder), Source::SetupOwners, owners.count());
    let (groups, outcome) = run_phase(groups, plan, None);
    if outcome.errors > 0 {
        eprintln!(
            "loadtest: set-up: {} errors creating owners' sessions",
            outcome.errors
        );
    }
    (groups, outcome.errors)
}

/// Set-up and teardown: closed loop, deep pipelines, exactly `requests`.
fn untimed_plan(cfg: &Config, encoder: Arc<Encoder>, source: Source, requests: u64) -> Plan {
    Plan {
        encoder,
        source,
        pipeline: cfg.pipeline.max(32),
        requests: Some(requests),
        deadline: None,
        interval: None,
        timeout: cfg.timeout,
        start: Instant::now(),
        connections: cfg.connections,
        progress: None,
        save: None,
    }
}

/// `untimed_errors`: from set-up and teardown, which a run must pass too.
fn summarize(
    cfg: &Config,
    o: &Outcome,
    untimed_errors: u64,
    server: Option<ServerSide>,
) -> Summary {
    let secs = o.elapsed.as_secs_f64();
    Summary {
        target: cfg.target.url.clone(),
        workload: cfg.workload.name().to_string(),
        connections: cfg.connections,
        pipeline: cfg.pipeline,
        duration_s: (secs * 1000.0).round() / 1000.0,
        ops: o.ops,
        ops_per_sec: if secs > 0.0 {
            round1(o.ops as f64 / secs)
        } else {
            0.0
        },
        errors: o.errors + untimed_errors,
        latency_us: Latency::of(&o.hist),
        server,
    }
}

/// Runs one phase with each group of connections on its own thread.
fn run_phase(
    groups: Groups,
    plan: Plan,
    bar: Option<(&indicatif::ProgressBar, &Arc<AtomicU64>, Goal)>,
) -> (Groups, Outcome) {
    let plan = Arc::new(plan);
    let (tx, rx) = mpsc::channel();
    let threads = groups.len();
    let handles: Vec<_> = groups
        .into_iter()
        .map(|g| {
            let (plan, tx) = (Arc::clone(&plan), tx.clone());
            std::thread::spawn(move || driver::run_thread(g, &plan, tx))
        })
        .collect();
    drop(tx);
    let outcome = stats::collect(rx, threads, plan.start, bar);
    if outcome.mismatched > 0 {
        eprintln!(
            "loadtest: {} replies named another command than the request they answer, or \
             echoed another token: the server sent replies out of order",
            outcome.mismatched
        );
    }
    if outcome.untokened > 0 {
        eprintln!(
            "loadtest: {} successful replies had no token in the reply (the server does not \
             echo tkn, as original NemesisDB servers do not for SH_SET and SH_GET): checked \
             by command name and order only, not counted as errors",
            outcome.untokened
        );
    }
    if outcome.token_missing > 0 {
        eprintln!(
            "loadtest: {} successful replies had no token in the reply where the workload \
             needs it (SH_NEW's answer names the new session): counted as errors",
            outcome.token_missing
        );
    }
    // A thread that panicked lost its connections; the run goes on without.
    let groups = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    (groups, outcome)
}

/// CPU seconds used so far by this process and, if asked, by the server.
pub struct Cpu {
    pub client: Option<f64>,
    pub server: Option<f64>,
}

impl Cpu {
    pub fn now(server_pid: Option<u32>) -> Cpu {
        Cpu {
            client: proc_cpu_seconds("self"),
            server: server_pid.and_then(|p| proc_cpu_seconds(&p.to_string())),
        }
    }

    pub fn since(&self, before: &Cpu) -> Cpu {
        let d = |a: Option<f64>, b: Option<f64>| Some(((a? - b?) * 100.0).round() / 100.0);
        Cpu {
            client: d(self.client, before.client),
            server: d(self.server, before.server),
        }
    }
}

/// utime + stime of a process from `/proc/<pid>/stat` (fields 14 and 15,
/// counted after the `)` that ends the command name, which may hold spaces).
fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

impl Cpu {
    pub fn print(&self, ops: u64) {
        let per_m = |s: f64| if ops > 0 { s / ops as f64 * 1e6 } else { 0.0 };
        if let Some(c) = self.client {
            println!(
                "  loadtest CPU  {c:.2} s ({:.2} s per million ops)",
                per_m(c)
            );
        }
        if let Some(s) = self.server {
            println!(
                "  server CPU    {s:.2} s ({:.2} s per million ops)",
                per_m(s)
            );
        }
    }
}
