//! `--scrape URL`: nemesisdb's own view of a run, from its Prometheus
//! `GET /metrics`, scraped just before and just after the timed run (beside
//! the `--server-pid` CPU readings).
//!
//! Owns: checking the URL, fetching and parsing the exposition, the
//! difference of the two scrapes, and the [`ServerSide`] summary of it. It
//! never fails a run: `run` prints a [`ScrapeError`] as a warning and
//! reports without the server's figures.
//!
//! Read from the exposition (names from the server's metrics spec, issue #18):
//! - `nemesisdb_command_duration_seconds{command}`, a histogram of the
//!   server's time from a decoded request to its answer: summed over the
//!   commands the workload sends ([`crate::workload::ws_commands`]) for the
//!   run's p50 and p99, and per command;
//! - `nemesisdb_commands_total{command,status}`: requests answered, by
//!   command and status, every command (so whatever else reached the server
//!   during the run shows too).
//!
//! Everything else in the exposition is ignored. The server counts requests
//! and the client operations (a lifecycle operation is 3 requests, in two
//! round trips), and the figures are the whole server's: another client's
//! requests during the run count too.
//!
//! The text is parsed by the `prometheus-parse` crate. It reads both the
//! Prometheus 0.0.4 text format and what the server's `prometheus-client`
//! writes (OpenMetrics text: `# UNIT` lines, a `# EOF` line, counters typed
//! without their `_total`), skipping the lines it has no use for. It splits
//! labels at `,` and `=`, which the label values read here (command names,
//! numeric statuses) never hold.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::ser::SerializeStruct;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

use crate::buckets::{Buckets, BucketsError, Estimate};
use crate::config::Credentials;
use crate::tls::{Options, Trust};

const DURATIONS: &str = "nemesisdb_command_duration_seconds";
const ANSWERED: &str = "nemesisdb_commands_total";
const FORWARDED: &str = "nemesisdb_cross_shard_requests_total";

/// The quantiles reported.
const QUANTILES: [(&str, f64); 2] = [("p50", 0.50), ("p99", 0.99)];

/// Why there are no server-side figures. None of these stops a run.
#[derive(Debug)]
pub enum ScrapeError {
    /// No answer: connection refused, a timeout, not HTTP.
    Fetch(String),
    /// An answer other than 200 (a server without `/metrics` says 400).
    Status(u16),
    /// An answer that is not an exposition of nemesisdb's metrics.
    Parse(String),
    /// A series of the earlier scrape is gone or went down in the later
    /// one: the counters were reset (the server restarted) in between.
    Reset(String),
    /// A duration histogram that cannot be read or subtracted.
    Histogram {
        command: String,
        error: BucketsError,
    },
}

impl fmt::Display for ScrapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScrapeError::Fetch(e) => write!(f, "{e}"),
            ScrapeError::Status(401) => write!(
                f,
                "HTTP status 401: the server has users; pass --user and --password \
                 (or they were refused)"
            ),
            ScrapeError::Status(s) => write!(
                f,
                "HTTP status {s} (is this a nemesisdb with GET /metrics on this port?)"
            ),
            ScrapeError::Parse(e) => write!(f, "{e}"),
            ScrapeError::Reset(e) => write!(
                f,
                "{e}: the counters were reset between the scrapes (did the server restart?)"
            ),
            ScrapeError::Histogram { command, error } => {
                write!(f, "{DURATIONS}{{command=\"{command}\"}}: {error}")
            }
        }
    }
}

/// Checks a `--scrape` URL before the run: `http[s]://HOST[:PORT]/PATH`.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("--scrape {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "--scrape {url:?}: expected http://HOST:PORT/metrics (https:// for a \
                 server with --tls-cert)"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("--scrape {url:?}: no host"));
    }
    Ok(())
}

/// Fetches one URL, the same way each time.
pub struct Scraper {
    agent: ureq::Agent,
    url: String,
    /// `Authorization` header (`--user`): a server with users wants it.
    authorization: Option<String>,
}

impl Scraper {
    /// `url` passed [`check_url`]; `timeout` bounds a whole request. An
    /// https URL is fetched over ureq's rustls (ring), trusting what the
    /// target's TLS trusts and showing the same client certificate.
    pub fn new(url: &str, timeout: Duration, tls: &Options, auth: Option<&Credentials>) -> Scraper {
        let roots = match &tls.trust {
            Trust::Ca(certs) => RootCerts::new_with_certs(
                &certs
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                    .collect::<Vec<_>>(),
            ),
            Trust::Roots | Trust::Any => RootCerts::WebPki,
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .disable_verification(matches!(tls.trust, Trust::Any))
            .client_cert(tls.identity.as_ref().and_then(|id| {
                let chain: Vec<_> = id
                    .chain
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                    .collect();
                // rustls read the same file already, so this reads too.
                let key = PrivateKey::from_pem(&id.key_pem).ok()?;
                Some(ClientCert::new_with_certs(&chain, key))
            }))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(timeout))
            // The server under test is never behind a proxy, whatever the
            // environment says.
            .proxy(None)
            // A redirect is an answer other than the metrics, not a hop.
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into();
        Scraper {
            agent,
            url: url.to_string(),
            authorization: auth.map(Credentials::basic),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// GETs the exposition and reads the families used here.
    pub fn scrape(&self) -> Result<Metrics, ScrapeError> {
        let mut request = self.agent.get(&self.url);
        if let Some(a) = &self.authorization {
            request = request.header("Authorization", a);
        }
        let mut response = request
            .call()
            .map_err(|e| ScrapeError::Fetch(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ScrapeError::Status(status));
        }
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| ScrapeError::Fetch(format!("reading the body: {e}")))?;
        Metrics::parse(&text)
    }
}

/// What one scrape said, of the families read here.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `nemesisdb_command_duration_seconds` by `command`.
    durations: BTreeMap<String, Buckets>,
    /// `nemesisdb_commands_total` by (`command`, `status`).
    answered: BTreeMap<(String, String), u64>,
    /// `nemesisdb_cross_shard_requests_total` (a server before it: None).
    forwarded: Option<u64>,
}

impl Metrics {
    /// Reads an exposition. A labelled series appears only at its first
    /// observation, so either family may have none yet; but an answer with
    /// no `nemesisdb_` metric at all is not nemesisdb's.
    pub fn parse(text: &str) -> Result<Metrics, ScrapeError> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines)
            .map_err(|e| ScrapeError::Parse(format!("not a Prometheus exposition: {e}")))?;
        if !scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("nemesisdb_"))
        {
            return Err(ScrapeError::Parse(
                "the answer has no nemesisdb_ metrics (is the URL nemesisdb's /metrics?)".into(),
            ));
        }
        let mut m = Metrics::default();
        for s in scrape.samples {
            let label = |name: &str| {
                s.labels.get(name).map(str::to_string).ok_or_else(|| {
                    ScrapeError::Parse(format!("{} without a {name} label", s.metric))
                })
            };
            match (s.metric.as_str(), &s.value) {
                (DURATIONS, prometheus_parse::Value::Histogram(counts)) => {
                    let command = label("command")?;
                    let pairs = counts
                        .iter()
                        .map(|c| Ok((c.less_than, whole(c.count, DURATIONS)?)))
                        .collect::<Result<_, ScrapeError>>()?;
                    let buckets = Buckets::new(pairs).map_err(|error| ScrapeError::Histogram {
                        command: command.clone(),
                        error,
                    })?;
                    m.durations.insert(command, buckets);
                }
                (
                    ANSWERED,
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v),
                ) => {
                    let key = (label("command")?, label("status")?);
                    m.answered.insert(key, whole(*v, ANSWERED)?);
                }
                (
                    FORWARDED,
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v),
                ) => m.forwarded = Some(whole(*v, FORWARDED)?),
                _ => {}
            }
        }
        Ok(m)
    }
}

/// A count as an integer: the exposition writes them as floats.
fn whole(v: f64, metric: &str) -> Result<u64, ScrapeError> {
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 {
        Ok(v as u64)
    } else {
        Err(ScrapeError::Parse(format!(
            "{metric}: {v} is not a count of requests"
        )))
    }
}

/// The server's view of the timed run: the difference of two scrapes.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSide {
    /// Over every command the workload sends, as one histogram.
    pub latency: ServerLatency,
    /// Per command the workload sends.
    pub commands: BTreeMap<String, ServerLatency>,
    /// Requests answered during the run: command -> status -> count; every
    /// command the server answered, those that answered none left out.
    pub answered: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests the server forwarded to the shard owning their session
    /// (`--locality` shows its effect here); None from a server without
    /// the counter.
    pub forwarded: Option<u64>,
}

/// Requests the server timed, and their quantiles.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLatency {
    pub requests: u64,
    pub p50: Estimate,
    pub p99: Estimate,
}

impl ServerLatency {
    fn of(b: &Buckets) -> ServerLatency {
        ServerLatency {
            requests: b.count(),
            p50: b.quantile(QUANTILES[0].1),
            p99: b.quantile(QUANTILES[1].1),
        }
    }

    /// A command the server never timed.
    fn of_none() -> ServerLatency {
        ServerLatency {
            requests: 0,
            p50: Estimate::Empty,
            p99: Estimate::Empty,
        }
    }
}

/// `{"requests", "p50_us", "p99_us", "above"}`: microseconds with one
/// decimal, `null` without requests; `above` names the quantiles that fell
/// in the `+Inf` bucket, whose figure is the largest finite bound and the
/// true value more.
impl Serialize for ServerLatency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let value = |e: Estimate| match e {
            Estimate::Empty => None,
            Estimate::Within(v) | Estimate::Above(v) => Some(micros(v)),
        };
        let above: Vec<&str> = QUANTILES
            .iter()
            .zip([self.p50, self.p99])
            .filter(|(_, e)| matches!(e, Estimate::Above(_)))
            .map(|((name, _), _)| *name)
            .collect();
        let mut st = s.serialize_struct("ServerLatency", 4)?;
        st.serialize_field("requests", &self.requests)?;
        st.serialize_field("p50_us", &value(self.p50))?;
        st.serialize_field("p99_us", &value(self.p99))?;
        st.serialize_field("above", &above)?;
        st.end()
    }
}

/// Seconds to microseconds with one decimal.
pub fn micros(seconds: f64) -> f64 {
    (seconds * 1e7).round() / 10.0
}

impl ServerSide {
    /// What happened between `before` and `after`, for a workload that sends
    /// `commands`.
    pub fn between(
        before: &Metrics,
        after: &Metrics,
        commands: &[&str],
    ) -> Result<ServerSide, ScrapeError> {
        if let Some((c, s)) = before
            .answered
            .keys()
            .find(|k| !after.answered.contains_key(*k))
        {
            return Err(ScrapeError::Reset(format!(
                "{ANSWERED}{{command=\"{c}\",status=\"{s}\"}} is gone"
            )));
        }
        let mut answered: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((c, s), &n) in &after.answered {
            let was = before.answered.get(&(c.clone(), s.clone())).copied();
            let d = n.checked_sub(was.unwrap_or(0)).ok_or_else(|| {
                ScrapeError::Reset(format!(
                    "{ANSWERED}{{command=\"{c}\",status=\"{s}\"}} went down from {} to {n}",
                    was.unwrap_or(0)
                ))
            })?;
            if d > 0 {
                answered.entry(c.clone()).or_default().insert(s.clone(), d);
            }
        }

        if let Some(c) = before
            .durations
            .keys()
            .find(|c| !after.durations.contains_key(*c))
        {
            return Err(ScrapeError::Reset(format!(
                "{DURATIONS}{{command=\"{c}\"}} is gone"
            )));
        }
        // Every command's difference, so a reset shows wherever it is.
        let mut deltas = BTreeMap::new();
        for (c, a) in &after.durations {
            let d = match before.durations.get(c) {
                Some(b) => a.since(b),
                None => Ok(a.clone()),
            };
            let d = d.map_err(|error| ScrapeError::Histogram {
                command: c.clone(),
                error,
            })?;
            deltas.insert(c.as_str(), d);
        }

        let mut all: Option<Buckets> = None;
        let mut per_command = BTreeMap::new();
        for &c in commands {
            let Some(d) = deltas.get(c) else {
                per_command.insert(c.to_string(), ServerLatency::of_none());
                continue;
            };
            per_command.insert(c.to_string(), ServerLatency::of(d));
            match &mut all {
                None => all = Some(d.clone()),
                Some(sum) => sum.add(d).map_err(|error| ScrapeError::Histogram {
                    command: c.to_string(),
                    error,
                })?,
            }
        }
        Ok(ServerSide {
            latency: all
                .as_ref()
                .map_or_else(ServerLatency::of_none, ServerLatency::of),
            commands: per_command,
            answered,
            forwarded: after
                .forwarded
                .zip(before.forwarded)
                .map(|(a, b)| a.saturating_sub(b)),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The server's command-duration bounds (metrics spec) as
    /// `prometheus-client` writes them (`dtoa`), `+Inf` last.
    const LE: [&str; 19] = [
        "5e-6", "1e-5", "2.5e-5", "5e-5", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "+Inf",
    ];

    /// One command's histogram in a fixture: observations per bucket (not
    /// cumulative), one number per bound of [`LE`].
    pub(crate) struct Hist<'a> {
        pub command: &'a str,
        pub per_bucket: [u64; 19],
    }

    /// A whole exposition as the server's `prometheus-client` writes it
    /// (OpenMetrics text), with every metric of the spec; `eof` adds the
    /// closing `# EOF` line.
    pub(crate) fn exposition(hists: &[Hist], answered: &[(&str, &str, u64)], eof: bool) -> String {
        let mut t = String::new();
        t += "# HELP nemesisdb_commands Requests answered.\n";
        t += "# TYPE nemesisdb_commands counter\n";
        for (c, s, n) in answered {
            t += &format!("nemesisdb_commands_total{{command=\"{c}\",status=\"{s}\"}} {n}\n");
        }
        t += "# HELP nemesisdb_command_duration_seconds Server time from the decoded request to its answer.\n";
        t += "# TYPE nemesisdb_command_duration_seconds histogram\n";
        t += "# UNIT nemesisdb_command_duration_seconds seconds\n";
        for h in hists {
            let total: u64 = h.per_bucket.iter().sum();
            let c = h.command;
            t += &format!(
                "nemesisdb_command_duration_seconds_sum{{command=\"{c}\"}} {}\n",
                total as f64 * 0.00001
            );
            t += &format!("nemesisdb_command_duration_seconds_count{{command=\"{c}\"}} {total}\n");
            let mut cumulative = 0;
            for (le, n) in LE.iter().zip(h.per_bucket) {
                cumulative += n;
                t += &format!(
                    "nemesisdb_command_duration_seconds_bucket{{le=\"{le}\",command=\"{c}\"}} {cumulative}\n"
                );
            }
        }
        t += r#"# HELP nemesisdb_sessions Sessions held per shard.
# TYPE nemesisdb_sessions gauge
nemesisdb_sessions{shard="0"} 5012
nemesisdb_sessions{shard="1"} 4988
# HELP nemesisdb_keys Keys held per shard.
# TYPE nemesisdb_keys gauge
nemesisdb_keys{shard="0"} 10024
nemesisdb_keys{shard="1"} 9976
# HELP nemesisdb_memory_used_bytes Accounted memory per shard.
# TYPE nemesisdb_memory_used_bytes gauge
# UNIT nemesisdb_memory_used_bytes bytes
nemesisdb_memory_used_bytes{shard="0"} 1843200
nemesisdb_memory_used_bytes{shard="1"} 1839104
# HELP nemesisdb_memory_limit_bytes Server-wide --max-memory (0 = none).
# TYPE nemesisdb_memory_limit_bytes gauge
# UNIT nemesisdb_memory_limit_bytes bytes
nemesisdb_memory_limit_bytes 0
# HELP nemesisdb_connections Open connections.
# TYPE nemesisdb_connections gauge
nemesisdb_connections 51
# HELP nemesisdb_connections_accepted Connections accepted.
# TYPE nemesisdb_connections_accepted counter
nemesisdb_connections_accepted_total 53
# HELP nemesisdb_connections_rejected Connections rejected.
# TYPE nemesisdb_connections_rejected counter
nemesisdb_connections_rejected_total{reason="limit"} 0
nemesisdb_connections_rejected_total{reason="handshake"} 1
# HELP nemesisdb_bytes_received Socket bytes received.
# TYPE nemesisdb_bytes_received counter
nemesisdb_bytes_received_total 73400320
# HELP nemesisdb_expired Sessions and keys expired.
# TYPE nemesisdb_expired counter
nemesisdb_expired_total{kind="idle"} 0
# HELP nemesisdb_expiry_lag_seconds Actual expiry time minus deadline.
# TYPE nemesisdb_expiry_lag_seconds histogram
# UNIT nemesisdb_expiry_lag_seconds seconds
nemesisdb_expiry_lag_seconds_sum 0.0
nemesisdb_expiry_lag_seconds_count 0
nemesisdb_expiry_lag_seconds_bucket{le="0.001"} 0
nemesisdb_expiry_lag_seconds_bucket{le="10.0"} 0
nemesisdb_expiry_lag_seconds_bucket{le="+Inf"} 0
# HELP nemesisdb_build_info Build.
# TYPE nemesisdb_build_info gauge
nemesisdb_build_info{version="0.1.0"} 1
# HELP process_cpu_seconds Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds counter
# UNIT process_cpu_seconds seconds
process_cpu_seconds_total 12.34
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
# UNIT process_start_time_seconds seconds
process_start_time_seconds 1795990800.12
"#;
        if eof {
            t += "# EOF\n";
        }
        t
    }

    /// Observations at bucket `i` of [`LE`] only.
    pub(crate) fn at(i: usize, n: u64) -> [u64; 19] {
        let mut b = [0; 19];
        b[i] = n;
        b
    }

    fn cumulative(per_bucket: [u64; 19]) -> Vec<(f64, u64)> {
        let mut sum = 0;
        LE.iter()
            .zip(per_bucket)
            .map(|(le, n)| {
                sum += n;
                (le.parse::<f64>().unwrap_or(f64::INFINITY), sum)
            })
            .collect()
    }

    #[test]
    fn parses_the_servers_exposition_with_and_without_eof() {
        let hists = [
            Hist {
                command: "SH_GET",
                per_bucket: at(2, 900),
            },
            Hist {
                command: "SH_SET",
                per_bucket: at(3, 100),
            },
        ];
        let answered = [
            ("SH_GET", "1", 880),
            ("SH_GET", "22", 20),
            ("SH_SET", "1", 100),
            ("unknown", "3", 2),
        ];
        for eof in [true, false] {
            let m = Metrics::parse(&exposition(&hists, &answered, eof)).unwrap();
            assert_eq!(m.durations.len(), 2, "eof {eof}");
            assert_eq!(
                m.durations["SH_GET"],
                Buckets::new(cumulative(at(2, 900))).unwrap()
            );
            assert_eq!(m.durations["SH_SET"].count(), 100);
            assert_eq!(m.answered.len(), 4);
            assert_eq!(m.answered[&("SH_GET".into(), "22".into())], 20);
            assert_eq!(m.answered[&("unknown".into(), "3".into())], 2);
        }
    }

    #[test]
    fn parses_the_classic_text_format_too() {
        // Prometheus 0.0.4 as a Go client writes it: counters typed with
        // their _total, le before the other labels written "5e-06".
        let text = r#"# HELP nemesisdb_commands_total Requests answered.
# TYPE nemesisdb_commands_total counter
nemesisdb_commands_total{command="SH_GET",status="1"} 3
# TYPE nemesisdb_command_duration_seconds histogram
nemesisdb_command_duration_seconds_bucket{command="SH_GET",le="5e-06"} 1
nemesisdb_command_duration_seconds_bucket{command="SH_GET",le="1e-05"} 3
nemesisdb_command_duration_seconds_bucket{command="SH_GET",le="+Inf"} 3
nemesisdb_command_duration_seconds_sum{command="SH_GET"} 2.1e-05
nemesisdb_command_duration_seconds_count{command="SH_GET"} 3
"#;
        let m = Metrics::parse(text).unwrap();
        assert_eq!(
            m.durations["SH_GET"],
            Buckets::new(vec![(0.000005, 1), (0.00001, 3), (f64::INFINITY, 3)]).unwrap()
        );
        assert_eq!(m.answered[&("SH_GET".into(), "1".into())], 3);
    }

    #[test]
    fn a_fresh_server_has_no_series_yet() {
        let m = Metrics::parse(&exposition(&[], &[], true)).unwrap();
        assert!(m.durations.is_empty() && m.answered.is_empty());
    }

    #[test]
    fn other_answers_are_refused() {
        let e = Metrics::parse("<html>not found</html>\n").unwrap_err();
        assert!(e.to_string().contains("no nemesisdb_ metrics"), "{e}");
        let e = Metrics::parse("# TYPE go_goroutines gauge\ngo_goroutines 7\n").unwrap_err();
        assert!(matches!(e, ScrapeError::Parse(_)), "{e}");
        let bad = "nemesisdb_commands_total{command=\"SH_GET\",status=\"1\"} 1.5\n";
        assert!(Metrics::parse(bad).is_err());
        let no_inf = "# TYPE nemesisdb_command_duration_seconds histogram\n\
            nemesisdb_command_duration_seconds_bucket{le=\"1.0\",command=\"SH_GET\"} 1\n";
        let e = Metrics::parse(no_inf).unwrap_err();
        assert!(
            e.to_string().contains("SH_GET") && e.to_string().contains("+Inf"),
            "{e}"
        );
    }

    #[test]
    fn the_difference_of_two_scrapes_is_the_run() {
        // Before the run: set-up's SH_NEWs and a few gets.
        let before = Metrics::parse(&exposition(
            &[
                Hist {
                    command: "SH_NEW",
                    per_bucket: at(3, 10_000),
                },
                Hist {
                    command: "SH_GET",
                    per_bucket: at(2, 50),
                },
            ],
            &[("SH_NEW", "1", 10_000), ("SH_GET", "1", 50)],
            true,
        ))
        .unwrap();
        // After: 1000 gets (900 at 10-25 us, 90 at 25-50 us, 10 at 0.1-0.25
        // ms), 200 sets (a series the earlier scrape did not have), 3 that
        // failed, and one SH_SUBSCRIBE from another connection.
        let mut get = at(2, 50 + 900);
        get[3] = 90;
        get[5] = 10;
        let after = Metrics::parse(&exposition(
            &[
                Hist {
                    command: "SH_NEW",
                    per_bucket: at(3, 10_000),
                },
                Hist {
                    command: "SH_GET",
                    per_bucket: get,
                },
                Hist {
                    command: "SH_SET",
                    per_bucket: at(2, 200),
                },
            ],
            &[
                ("SH_NEW", "1", 10_000),
                ("SH_GET", "1", 1_047),
                ("SH_GET", "22", 3),
                ("SH_SET", "1", 200),
                ("SH_SUBSCRIBE", "1", 1),
            ],
            false,
        ))
        .unwrap();

        let s = ServerSide::between(&before, &after, &["SH_GET"]).unwrap();
        assert_eq!(s.latency.requests, 1000);
        // p50: rank 500 of the 900 in (10, 25] us: 10 + 15 x 500/900.
        assert_eq!(
            s.latency.p50,
            Estimate::Within(0.00001 + 0.000015 * 500.0 / 900.0)
        );
        // p99: rank 990, the 90 in (25, 50] us end at 990: 50 us.
        assert!(matches!(s.latency.p99, Estimate::Within(v) if (v - 0.00005).abs() < 1e-12));
        assert_eq!(s.commands.len(), 1);
        assert_eq!(s.commands["SH_GET"], s.latency);
        let answered: Vec<(&str, &str, u64)> = s
            .answered
            .iter()
            .flat_map(|(c, m)| m.iter().map(move |(st, n)| (c.as_str(), st.as_str(), *n)))
            .collect();
        assert_eq!(
            answered,
            [
                ("SH_GET", "1", 997),
                ("SH_GET", "22", 3),
                ("SH_SET", "1", 200),
                ("SH_SUBSCRIBE", "1", 1)
            ]
        );

        // Two commands sum into one histogram; a command never timed is
        // listed with none.
        let s = ServerSide::between(&before, &after, &["SH_GET", "SH_SET", "SH_TOUCH"]).unwrap();
        assert_eq!(s.latency.requests, 1200);
        assert_eq!(s.commands["SH_SET"].requests, 200);
        assert_eq!(s.commands["SH_TOUCH"].requests, 0);
        assert_eq!(s.commands["SH_TOUCH"].p99, Estimate::Empty);
        let json = serde_json::to_value(&s.commands["SH_TOUCH"]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"requests": 0, "p50_us": null, "p99_us": null, "above": []})
        );

        // The other way round, every counter went down: a restart.
        let e = ServerSide::between(&after, &before, &["SH_GET"]).unwrap_err();
        assert!(matches!(e, ScrapeError::Reset(_)), "{e}");
        assert!(e.to_string().contains("reset"), "{e}");
    }

    #[test]
    fn a_restart_between_the_scrapes_is_refused() {
        let h = |n| Hist {
            command: "SH_GET",
            per_bucket: at(2, n),
        };
        let before = Metrics::parse(&exposition(&[h(500)], &[("SH_GET", "1", 500)], true)).unwrap();
        // Restarted and served 100 gets since: the counters are lower.
        let after = Metrics::parse(&exposition(&[h(100)], &[("SH_GET", "1", 100)], true)).unwrap();
        let e = ServerSide::between(&before, &after, &["SH_GET"]).unwrap_err();
        assert!(e.to_string().contains("went down from 500 to 100"), "{e}");
        assert!(e.to_string().contains("did the server restart?"), "{e}");
        // Only the histogram went down.
        let after = Metrics::parse(&exposition(&[h(100)], &[("SH_GET", "1", 600)], true)).unwrap();
        let e = ServerSide::between(&before, &after, &["SH_GET"]).unwrap_err();
        assert!(matches!(e, ScrapeError::Histogram { .. }), "{e}");
        assert!(e.to_string().contains("reset"), "{e}");
        // Restarted and not asked anything since: the series are gone.
        let after = Metrics::parse(&exposition(&[], &[], true)).unwrap();
        let e = ServerSide::between(&before, &after, &["SH_GET"]).unwrap_err();
        assert!(e.to_string().contains("is gone"), "{e}");
    }

    #[test]
    fn a_quantile_past_the_last_bound_is_marked_above() {
        let before = Metrics::parse(&exposition(&[], &[], true)).unwrap();
        let mut slow = at(2, 90);
        slow[18] = 10;
        let after = Metrics::parse(&exposition(
            &[Hist {
                command: "SH_GET",
                per_bucket: slow,
            }],
            &[("SH_GET", "1", 100)],
            true,
        ))
        .unwrap();
        let s = ServerSide::between(&before, &after, &["SH_GET"]).unwrap();
        assert_eq!(s.latency.p99, Estimate::Above(2.5));
        let json = serde_json::to_value(&s.latency).unwrap();
        assert_eq!(json["p99_us"], 2_500_000.0);
        assert_eq!(json["above"], serde_json::json!(["p99"]));
    }

    const NO_TLS: Options = Options {
        trust: Trust::Roots,
        identity: None,
    };

    #[test]
    fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:1987/metrics").is_ok());
        assert!(check_url("http://localhost/metrics").is_ok());
        assert!(check_url("http://[::1]:1987/metrics").is_ok());
        assert!(check_url("https://127.0.0.1:1987/metrics").is_ok());
        assert!(check_url("ws://127.0.0.1:1987/").is_err());
        assert!(check_url("127.0.0.1:1987/metrics").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url("http://exa mple/").is_err());
    }

    /// Serves one connection on the loopback with `response`, whatever the
    /// request; returns the URL to fetch.
    fn serve_once(response: String) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // The request fits one read; its content does not matter here.
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request);
            let _ = conn.write_all(response.as_bytes());
        });
        url
    }

    fn http(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn fetches_over_http() {
        let body = exposition(
            &[Hist {
                command: "SH_GET",
                per_bucket: at(2, 7),
            }],
            &[("SH_GET", "1", 7)],
            true,
        );
        let url = serve_once(http("200 OK", &body));
        let m = Scraper::new(&url, Duration::from_secs(5), &NO_TLS, None)
            .scrape()
            .unwrap();
        assert_eq!(m.durations["SH_GET"].count(), 7);
    }

    #[test]
    fn a_server_without_metrics_is_an_error_not_a_panic() {
        // What a nemesisdb before /metrics answers a plain GET with.
        let url = serve_once(http("400 Bad Request", ""));
        let e = Scraper::new(&url, Duration::from_secs(5), &NO_TLS, None)
            .scrape()
            .unwrap_err();
        assert!(matches!(e, ScrapeError::Status(400)), "{e}");
        assert!(e.to_string().contains("GET /metrics"), "{e}");
        // A port nobody listens on any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        drop(listener);
        let e = Scraper::new(&url, Duration::from_secs(5), &NO_TLS, None)
            .scrape()
            .unwrap_err();
        assert!(matches!(e, ScrapeError::Fetch(_)), "{e}");
    }
}
