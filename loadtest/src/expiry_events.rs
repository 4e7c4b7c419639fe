//! The expiry-events workload: `--sessions` sessions whose deadlines all
//! fall within one second, a subscriber that reads their expiry events as
//! fast as they come, and meanwhile a second client sending one request at a
//! time. Measures each event's lag (arrival minus deadline), how many came,
//! and the second client's latency.
//!
//! Owns: this workload's phases (subscribe, create the probe's session,
//! create the expiring sessions, probe, collect, tidy up) and its report.
//! The subscriber and the lag statistics are `events`'; the connections are
//! blocking [`Client`]s, not the driver's loop: set-up is untimed, and the
//! probe has one request in flight.
//!
//! nemesisdb durations are whole seconds from creation, so a session
//! created `e` seconds into set-up gets `lead - floor(e)` seconds: every
//! deadline lands in `[t0 + lead, t0 + lead + 1 s)`, at `frac(e)` into that
//! second (mass_expiry's trick). Set-up paces its batches evenly over its
//! first second (each connection's 25 batches interleaved with the
//! others'), so the deadlines spread evenly over the second, as Redis's do;
//! a set-up slower than that wraps around within the same second, and no
//! batch is sent in the last 10 ms of a second, so none straddles one.
//! Redis keys get `PEXPIREAT t0 + lead + i * 1000 / sessions` ms: spread
//! evenly over the same second, and the subscriber knows each key's
//! deadline from its name.
//!
//! | target | subscriber | sessions | probe |
//! |---|---|---|---|
//! | nemesisdb | `SH_SUBSCRIBE` `events` `["expired"]` | `SH_NEW` with `expiry` (deleteSession) and `keys` user, cart | `SH_GET` `user` of its own session (no expiry) |
//! | Redis | `CONFIG SET notify-keyspace-events Ex`, `PSUBSCRIBE __keyevent@0__:expired` (the old setting is put back) | `HSET ee:<i>` user, cart + `PEXPIREAT` | `HGET ee:probe user` |

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::{Client, command};
use crate::config::{Config, Protocol, Stop};
use crate::driver::new_histogram;
use crate::events::{Accept, Subscriber, now_unix_us};
use crate::report;
use crate::run::Cpu;
use crate::stats::{self, Latency, Outcome, SecondStat, Summary, round1, us};
use crate::workload::value_text;
use crate::ws;

/// Redis keys of the expiring sessions are `ee:<i>`.
const REDIS_PREFIX: &[u8] = b"ee:";
const REDIS_PROBE: &[u8] = b"ee:probe";
/// Round trips one set-up connection spreads its sessions over...
const BATCHES_PER_CONNECTION: usize = 25;
/// ...unless that makes a round trip create more than this many.
const MAX_BATCH: usize = 500;
/// Set-up connections at most (one thread each).
const MAX_SETUP_CONNECTIONS: usize = 16;

/// Seconds from the start of set-up to the first deadline: room for set-up
/// at 25,000 sessions a second, plus 3.
fn lead_seconds(sessions: u64) -> u64 {
    3 + sessions / 25_000
}

pub fn run(cfg: &Config) -> Result<Summary, String> {
    let n = cfg.sessions;
    let protocol = cfg.target.protocol;
    let value = value_text(cfg.value_size, cfg.seed);
    let max_wait = match cfg.stop {
        Stop::Duration(d) => d,
        Stop::Requests(_) => Duration::from_secs(120),
    };
    let lead = lead_seconds(n);
    let t0 = Instant::now();
    let t0_ms = now_unix_us() / 1000;
    let window_ms = t0_ms + lead * 1000;
    let window = t0 + Duration::from_secs(lead);
    let accept = match protocol {
        // Slack on both sides: a request's server time trails its client
        // time, and the server's wall clock is read on its own.
        Protocol::Ws => Accept::ExpiryWindow {
            from_ms: window_ms - 1000,
            to_ms: window_ms + 2000,
        },
        Protocol::Redis => Accept::RedisKeys {
            prefix: REDIS_PREFIX,
            n,
            start_ms: window_ms,
        },
    };
    let subscriber = Subscriber::start(&cfg.target, cfg.seed, &["expired"], accept, Some(n))?;
    let redis_notify = subscriber.redis_notify.clone();
    let mut probe = Probe::new(cfg, &value)?;

    let setup_errors = set_up(cfg, &value, t0, window_ms, lead)?;
    if setup_errors > 0 {
        eprintln!("loadtest: set-up: {setup_errors} errors creating sessions");
    }
    eprintln!(
        "loadtest: expiry-events: {} sessions created in {:.2} s; the first deadline is {} s \
         after set-up began",
        stats::group(n as f64),
        t0.elapsed().as_secs_f64(),
        lead
    );

    // Probe from 1 s before the first deadline until the events are in
    // (and 2 s after the first deadline at least), or the wait is over.
    thread::sleep((window - Duration::from_secs(1)).saturating_duration_since(Instant::now()));
    let cpu_before = Cpu::now(cfg.server_pid);
    let start = Instant::now();
    let give_up = window + Duration::from_secs(1) + max_wait;
    let at_least = window + Duration::from_secs(2);
    loop {
        let now = Instant::now();
        if (subscriber.done() && now >= at_least) || now >= give_up {
            break;
        }
        if let Err(e) = probe.once(start) {
            // A dead probe ends the probing, not the run: the events still
            // come, and the subscriber still counts them.
            eprintln!("loadtest: probe: {e}");
            probe.errors += 1;
            while !subscriber.done() && Instant::now() < give_up {
                thread::sleep(Duration::from_millis(20));
            }
            break;
        }
    }
    let elapsed = start.elapsed();
    let timed_out = !subscriber.done();
    let stats = if timed_out {
        subscriber.stop()?
    } else {
        subscriber.finish()?
    };
    let cpu = Cpu::now(cfg.server_pid).since(&cpu_before);
    let events = stats.summary(Some(n));
    if events.received < n {
        eprintln!(
            "loadtest: expiry-events: {} of {} expiry events arrived{}",
            events.received,
            n,
            if timed_out {
                format!(
                    " before loadtest stopped waiting ({:.0} s after the last deadline)",
                    max_wait.as_secs_f64()
                )
            } else {
                String::new()
            }
        );
    }
    let errors = setup_errors + probe.errors;
    let outcome = probe.outcome(elapsed);
    probe.tidy_up(redis_notify.as_deref());

    let secs = elapsed.as_secs_f64();
    let summary = Summary {
        target: cfg.target.url.clone(),
        workload: cfg.workload.name().to_string(),
        connections: 1,
        pipeline: 1,
        duration_s: (secs * 1000.0).round() / 1000.0,
        ops: outcome.ops,
        ops_per_sec: if secs > 0.0 {
            round1(outcome.ops as f64 / secs)
        } else {
            0.0
        },
        errors,
        latency_us: Latency::of(&outcome.hist),
        // --scrape is refused for expiry-events.
        server: None,
    };
    if let Some(dir) = &cfg.out {
        let meta = report::Meta {
            threads: 1,
            rate: None,
            seed: cfg.seed,
            client_cpu_s: cpu.client,
            server_cpu_s: cpu.server,
            events: Some(&events),
            save: None,
            // Not told for this workload's blocking clients.
            tls: None,
        };
        report::write(dir, &summary, &outcome, &meta)?;
    }
    if cfg.json {
        eprintln!("loadtest: {}", events.line());
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        stats::print_table(&summary, 1, None, 0, None);
        println!(
            "  (the probe: {} one at a time, from 1 s before the first deadline until the \
             events were in)",
            match protocol {
                Protocol::Ws => "SH_GET of its own session",
                Protocol::Redis => "HGET of its own key",
            }
        );
        events.print();
        cpu.print(summary.ops);
    }
    Ok(summary)
}

/// Creates the `n` expiring sessions over up to [`MAX_SETUP_CONNECTIONS`]
/// connections (nemesisdb hands each connection to one shard, so several
/// spread the sessions over the shards). Returns the replies that were no
/// success; `Err` when set-up could not finish before the deadlines.
fn set_up(
    cfg: &Config,
    value: &str,
    t0: Instant,
    window_ms: u64,
    lead: u64,
) -> Result<u64, String> {
    let n = cfg.sessions;
    let conns = cfg
        .connections
        .clamp(1, MAX_SETUP_CONNECTIONS)
        .min(usize::try_from(n).unwrap_or(usize::MAX));
    let value: Arc<str> = value.into();
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let target = cfg.target.clone();
            let value = Arc::clone(&value);
            let seed = cfg.seed;
            thread::spawn(move || {
                let mut client = Client::connect(&target, seed, c as u64)
                    .map_err(|e| format!("set-up connection {}: {e}", c + 1))?;
                let mine: Vec<u64> = (c as u64..n).step_by(conns).collect();
                let size = mine
                    .len()
                    .div_ceil(BATCHES_PER_CONNECTION)
                    .clamp(1, MAX_BATCH);
                let batches = mine.len().div_ceil(size);
                let mut errors = 0;
                for (j, batch) in mine.chunks(size).enumerate() {
                    if target.protocol == Protocol::Ws {
                        // Batch j of connection c goes out at its share of
                        // set-up's first second, interleaved with the others'.
                        let due = t0
                            + Duration::from_secs_f64(
                                (j * conns + c) as f64 / (batches * conns) as f64,
                            );
                        thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    errors += create_batch(&mut client, batch, &value, n, t0, window_ms, lead)?;
                }
                client.close();
                Ok::<u64, String>(errors)
            })
        })
        .collect();
    let mut errors = 0;
    for h in handles {
        errors += h
            .join()
            .map_err(|_| "a set-up thread panicked".to_string())??;
    }
    Ok(errors)
}

/// Sends one batch of creations and reads their replies.
fn create_batch(
    client: &mut Client,
    batch: &[u64],
    value: &str,
    n: u64,
    t0: Instant,
    window_ms: u64,
    lead: u64,
) -> Result<u64, String> {
    let io = |e: std::io::Error| format!("set-up: {e}");
    let mut e = t0.elapsed();
    if e.subsec_millis() >= 990 {
        // No batch straddles a second: its sessions' deadlines would.
        thread::sleep(Duration::from_millis(u64::from(1002 - e.subsec_millis())));
        e = t0.elapsed();
    }
    if e.as_secs() + 2 > lead {
        return Err(format!(
            "set-up took over {} s, so the deadlines would not fall in one second: \
             ask for fewer --sessions",
            lead - 2
        ));
    }
    let mut errors = 0;
    match client.protocol() {
        Protocol::Ws => {
            let request = format!(
                r#"{{"SH_NEW":{{"expiry":{{"duration":{},"deleteSession":true}},"keys":{{"user":"{value}","cart":"{value}"}}}}}}"#,
                lead - e.as_secs()
            );
            for _ in batch {
                client.queue(request.as_bytes());
            }
            client.flush().map_err(io)?;
            let scanner = ws::Scanner::default();
            for _ in batch {
                let reply = client.recv().map_err(io)?;
                if ws::reply_name(&reply) != Some(b"SH_NEW_RSP")
                    || scanner.status(&reply) != Some(1)
                {
                    errors += 1;
                }
            }
        }
        Protocol::Redis => {
            let mut key = Vec::new();
            for &i in batch {
                key.clear();
                key.extend_from_slice(REDIS_PREFIX);
                key.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
                let at = Accept::redis_deadline(window_ms, n, i).to_string();
                client.queue(&command(&[
                    b"HSET",
                    &key,
                    b"user",
                    value.as_bytes(),
                    b"cart",
                    value.as_bytes(),
                ]));
                client.queue(&command(&[b"PEXPIREAT", &key, at.as_bytes()]));
            }
            client.flush().map_err(io)?;
            for _ in batch {
                let hset = client.recv().map_err(io)?;
                let expire = client.recv().map_err(io)?;
                if hset.first() != Some(&b':') || expire != b":1\r\n" {
                    errors += 1;
                }
            }
        }
    }
    Ok(errors)
}

/// The second client: one request at a time on a session (key) of its own.
struct Probe {
    client: Client,
    protocol: Protocol,
    /// The probe's request, encoded once.
    request: Vec<u8>,
    /// nemesisdb: the probe session's token, ended at the end.
    token: Option<u64>,
    scanner: ws::Scanner,
    hist: Histogram<u64>,
    /// Per second since the probe began: requests, errors, latencies.
    seconds: Vec<(u64, u64, Histogram<u64>)>,
    errors: u64,
}

impl Probe {
    fn new(cfg: &Config, value: &str) -> Result<Probe, String> {
        let fail = |e: std::io::Error| format!("probe connection to {}: {e}", cfg.target.url);
        let mut client = Client::connect(&cfg.target, cfg.seed, u64::MAX - 2).map_err(fail)?;
        let scanner = ws::Scanner::default();
        let (request, token) = match cfg.target.protocol {
            Protocol::Ws => {
                let new = format!(r#"{{"SH_NEW":{{"keys":{{"user":"{value}"}}}}}}"#);
                let reply = client.call(new.as_bytes()).map_err(fail)?;
                let tkn = scanner
                    .token(&reply)
                    .filter(|_| scanner.status(&reply) == Some(1))
                    .ok_or_else(|| {
                        format!(
                            "probe: {new} was answered {}",
                            String::from_utf8_lossy(&reply)
                        )
                    })?;
                let get = format!(r#"{{"SH_GET":{{"tkn":{tkn},"keys":["user"]}}}}"#);
                (get.into_bytes(), Some(tkn))
            }
            Protocol::Redis => {
                let set = command(&[b"HSET", REDIS_PROBE, b"user", value.as_bytes()]);
                let reply = client.call(&set).map_err(fail)?;
                if reply.first() != Some(&b':') {
                    return Err(format!(
                        "probe: HSET answered {}",
                        String::from_utf8_lossy(&reply).trim_end()
                    ));
                }
                (command(&[b"HGET", REDIS_PROBE, b"user"]), None)
            }
        };
        Ok(Probe {
            protocol: cfg.target.protocol,
            client,
            request,
            token,
            scanner,
            hist: new_histogram(),
            seconds: Vec::new(),
            errors: 0,
        })
    }

    /// One request and its reply, timed.
    fn once(&mut self, start: Instant) -> Result<(), String> {
        let sent = Instant::now();
        let reply = self.client.call(&self.request).map_err(|e| e.to_string())?;
        let done = Instant::now();
        let ok = match self.protocol {
            Protocol::Ws => {
                ws::reply_name(&reply) == Some(b"SH_GET_RSP")
                    && self.scanner.status(&reply) == Some(1)
                    && self
                        .scanner
                        .token(&reply)
                        .is_none_or(|t| Some(t) == self.token)
            }
            Protocol::Redis => reply.first() == Some(&b'$') && reply != b"$-1\r\n",
        };
        let ns = u64::try_from((done - sent).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.hist.saturating_record(ns);
        let second = usize::try_from(done.duration_since(start).as_secs()).unwrap_or(usize::MAX);
        while self.seconds.len() <= second {
            self.seconds.push((0, 0, new_histogram()));
        }
        let s = &mut self.seconds[second];
        s.0 += 1;
        s.2.saturating_record(ns);
        if !ok {
            s.1 += 1;
            self.errors += 1;
        }
        Ok(())
    }

    /// The probe's requests as a driver phase's outcome (for the report).
    fn outcome(&mut self, elapsed: Duration) -> Outcome {
        let full = elapsed.as_secs();
        let series = std::mem::take(&mut self.seconds)
            .into_iter()
            .enumerate()
            .filter_map(|(i, (ops, errors, h))| {
                let i = i as u64;
                // The last second is usually partial: scale it to a rate.
                let span = if i >= full {
                    (elapsed.as_secs_f64() - i as f64).clamp(0.0, 1.0)
                } else {
                    1.0
                };
                (span >= 0.1 && ops > 0).then(|| SecondStat {
                    second: i,
                    ops_per_sec: round1(ops as f64 / span),
                    errors,
                    p99_us: us(h.value_at_quantile(0.99)),
                })
            })
            .collect();
        Outcome {
            ops: self.hist.len(),
            errors: self.errors,
            hist: std::mem::replace(&mut self.hist, new_histogram()),
            series,
            elapsed,
            failed_connections: 0,
            mismatched: 0,
            untokened: 0,
            token_missing: 0,
            retries: 0,
            save: None,
        }
    }

    /// Ends the probe's session (deletes its key) and puts Redis's
    /// notification setting back. Best effort: the run is measured.
    fn tidy_up(mut self, redis_notify: Option<&[u8]>) {
        match (self.protocol, self.token) {
            (Protocol::Ws, Some(tkn)) => {
                let _ = self
                    .client
                    .call(format!(r#"{{"SH_END":{{"tkn":{tkn}}}}}"#).as_bytes());
            }
            (Protocol::Redis, _) => {
                let _ = self.client.call(&command(&[b"DEL", REDIS_PROBE]));
                if let Some(old) = redis_notify {
                    let _ = self.client.call(&command(&[
                        b"CONFIG",
                        b"SET",
                        b"notify-keyspace-events",
                        old,
                    ]));
                }
            }
            _ => {}
        }
        self.client.close();
    }
}
