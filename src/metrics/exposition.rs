//! `GET /metrics`: every shard's figures, summed (or by shard where a
//! figure is about one shard), in the text format Prometheus scrapes,
//! written by `prometheus-client`. The names are in the README's
//! "Operating it" section and the Grafana dashboard queries them.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::process::ProcessCollector;
use super::{CommandLabel, ExpiryFigures, Histogram, RequestFigures, ShardFigures, status_label};

/// What the server knows about itself, beside the shards' figures.
#[derive(Clone, Debug)]
pub struct ScrapeFacts {
    pub version: &'static str,
    /// Server-wide `--max-memory` (0: none).
    pub memory_limit: u64,
    /// Open connections over every shard.
    pub connections: u64,
    /// Process start, in seconds since the Unix epoch.
    pub started_s: f64,
}

/// The text exposition of every shard's `figures` (one per shard).
pub fn encode(figures: Vec<ShardFigures>, facts: ScrapeFacts) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector {
        started_s: facts.started_s,
    }));
    registry
        .sub_registry_with_prefix("nemesisdb")
        .register_collector(Box::new(Scrape::new(figures, facts)));
    let mut text = String::with_capacity(64 * 1024);
    // Writing into a String cannot fail; an encoder error would be ours.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        text = format!("# encoding failed: {e}\n");
    }
    text
}

/// One scrape's figures: summed over shards, and each shard's own.
#[derive(Debug)]
struct Scrape {
    shards: Vec<ShardFigures>,
    requests: RequestFigures,
    expiry: ExpiryFigures,
    facts: ScrapeFacts,
}

impl Scrape {
    fn new(mut shards: Vec<ShardFigures>, facts: ScrapeFacts) -> Self {
        shards.sort_by_key(|s| s.shard);
        let mut requests = RequestFigures::default();
        let mut expiry = ExpiryFigures::default();
        for shard in &shards {
            requests.add(&shard.requests);
            expiry.add(&shard.expiry);
        }
        Scrape {
            shards,
            requests,
            expiry,
            facts,
        }
    }

    fn sum(&self, figure: impl Fn(&ShardFigures) -> u64) -> u64 {
        self.shards.iter().map(figure).sum()
    }
}

/// Writes one metric's `# HELP`/`# TYPE` and lets `samples` write its values.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl FnOnce(&mut MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    samples(&mut metric)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    family(encoder, name, help, MetricType::Counter, |m| {
        m.encode_counter::<NoLabelSet, _, u64>(&value, None)
    })
}

/// A counter with one sample per value of one label.
fn labelled_counter<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: [(&str, u64); N],
) -> fmt::Result {
    family(encoder, name, help, MetricType::Counter, |m| {
        for (value, n) in values {
            m.encode_family(&[(label, value)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    })
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    family(encoder, name, help, MetricType::Gauge, |m| {
        m.encode_gauge(&value)
    })
}

/// A gauge with one sample per shard.
fn shard_gauge(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardFigures],
    name: &str,
    help: &str,
    value: impl Fn(&ShardFigures) -> u64,
) -> fmt::Result {
    family(encoder, name, help, MetricType::Gauge, |m| {
        for shard in shards {
            let labels = [("shard", shard.shard.to_string())];
            m.encode_family(&labels)?.encode_gauge(&value(shard))?;
        }
        Ok(())
    })
}

/// Writes one histogram's samples, kept in a unit with `per_second` in a second.
fn histogram_values(
    metric: &mut MetricEncoder,
    histogram: &Histogram,
    per_second: f64,
) -> fmt::Result {
    metric.encode_histogram::<NoLabelSet>(
        histogram.sum() as f64 / per_second,
        histogram.count(),
        &histogram.buckets(per_second),
        None,
    )
}

/// [`histogram_values`] under `labels`.
fn histogram_samples(
    metric: &mut MetricEncoder,
    labels: &impl EncodeLabelSet,
    histogram: &Histogram,
    per_second: f64,
) -> fmt::Result {
    histogram_values(&mut metric.encode_family(labels)?, histogram, per_second)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histogram: &Histogram,
    per_second: f64,
) -> fmt::Result {
    family(encoder, name, help, MetricType::Histogram, |m| {
        histogram_values(m, histogram, per_second)
    })
}

const MS: f64 = 1e3;
const US: f64 = 1e6;
const NS: f64 = 1e9;

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let requests = &self.requests;

        family(
            e,
            "commands",
            "Requests answered, by command and status (the protocol's st)",
            MetricType::Counter,
            |m| {
                for (label, row) in requests.answers.iter().enumerate() {
                    let command =
                        CommandLabel::of(crate::protocol::CommandName::ALL.get(label).copied());
                    for (slot, &n) in row.iter().enumerate().filter(|(_, n)| **n > 0) {
                        let labels = [
                            ("command", command.name().to_string()),
                            ("status", status_label(slot)),
                        ];
                        m.encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            e,
            "command_duration_seconds",
            "Server time from a decoded request to its answer, cross-shard hop included",
            MetricType::Histogram,
            |m| {
                for (label, histogram) in requests.durations_ns.iter().enumerate() {
                    if histogram.count() == 0 {
                        continue;
                    }
                    let command =
                        CommandLabel::of(crate::protocol::CommandName::ALL.get(label).copied());
                    let labels = [("command", command.name())];
                    histogram_samples(m, &labels, histogram, NS)?;
                }
                Ok(())
            },
        )?;

        shard_gauge(e, &self.shards, "sessions", "Sessions held", |s| s.sessions)?;
        shard_gauge(e, &self.shards, "keys", "Keys held", |s| s.keys)?;
        shard_gauge(
            e,
            &self.shards,
            "memory_used_bytes",
            "Memory accounted to sessions and keys",
            |s| s.memory_used,
        )?;
        gauge(
            e,
            "memory_limit_bytes",
            "The server-wide memory limit (--max-memory; 0: none)",
            self.facts.memory_limit,
        )?;

        gauge(e, "connections", "Open connections", self.facts.connections)?;
        counter(
            e,
            "connections_accepted",
            "Connections accepted",
            requests.accepted,
        )?;
        labelled_counter(
            e,
            "connections_rejected",
            "Connections refused or ended by the server: at the connection limit, in the opening handshake, or for a protocol breach",
            "reason",
            [
                ("limit", requests.rejected_limit),
                ("handshake", requests.rejected_handshake),
                ("protocol", requests.rejected_protocol),
            ],
        )?;
        counter(
            e,
            "auth_failures",
            "Authentications refused: an unknown user or a wrong password (Basic auth or SV_AUTH)",
            requests.auth_failures,
        )?;
        counter(
            e,
            "bytes_received",
            "Bytes read from clients",
            requests.bytes_received,
        )?;
        counter(
            e,
            "bytes_sent",
            "Bytes written to clients",
            requests.bytes_sent,
        )?;

        let expiry = &self.expiry;
        labelled_counter(
            e,
            "expired",
            "Expiries: sessions deleted at their idle deadline (idle) or at the end of their lifetime (lifetime), and sessions whose keys were cleared (keys)",
            "kind",
            [
                ("idle", expiry.idle),
                ("lifetime", expiry.lifetime),
                ("keys", expiry.keys),
            ],
        )?;
        histogram(
            e,
            "expiry_lag_seconds",
            "When an expiry happened minus its deadline",
            &expiry.lag_ms,
            MS,
        )?;
        counter(
            e,
            "session_not_exist",
            "Answers with status 100 (session does not exist): a rising rate can mean token guessing",
            self.sum(|s| s.session_not_exist),
        )?;
        counter(
            e,
            "cross_shard_requests",
            "Requests sent to the shard that owns their session",
            self.sum(|s| s.cross_shard_requests),
        )?;

        let mut snapshots = Histogram::new(super::SNAPSHOT_BOUNDS_MS);
        for shard in &self.shards {
            snapshots.add(&shard.snapshots.duration_ms);
        }
        histogram(
            e,
            "snapshot_duration_seconds",
            "Snapshots (periodic and SH_SAVE), from start to commit",
            &snapshots,
            MS,
        )?;
        let last_success = self
            .shards
            .iter()
            .map(|s| s.snapshots.last_success_ms)
            .max()
            .unwrap_or(0);
        gauge(
            e,
            "snapshot_last_success_timestamp_seconds",
            "When the last snapshot succeeded, in seconds since the Unix epoch (0: none yet)",
            last_success as f64 / MS,
        )?;
        counter(
            e,
            "snapshot_failures",
            "Snapshots that failed",
            self.sum(|s| s.snapshots.failures),
        )?;

        let logs: Vec<_> = self.shards.iter().filter_map(|s| s.log.as_ref()).collect();
        if !logs.is_empty() {
            counter(
                e,
                "log_records",
                "Change-log records written",
                logs.iter().map(|l| l.records).sum(),
            )?;
            counter(
                e,
                "log_bytes",
                "Change-log bytes written",
                logs.iter().map(|l| l.bytes).sum(),
            )?;
            let mut fsyncs = Histogram::new(super::FSYNC_BOUNDS_US);
            for log in &logs {
                fsyncs.add(&log.fsync_us);
            }
            histogram(
                e,
                "log_fsync_duration_seconds",
                "Change-log fsyncs",
                &fsyncs,
                US,
            )?;
        }

        gauge(
            e,
            "event_subscribers",
            "Event subscriptions (SH_SUBSCRIBE) open",
            self.sum(|s| s.event_subscribers),
        )?;
        counter(
            e,
            "events_lost",
            "Events a slow subscriber missed (reported to it as a lost event)",
            self.sum(|s| s.events_lost),
        )?;

        family(e, "build", "The server's version", MetricType::Info, |m| {
            m.encode_info(&[("version", self.facts.version)])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{RequestMetrics, requests::Clock};
    use crate::protocol::response::Response;
    use crate::protocol::{CommandName, Status};

    fn shard(id: usize) -> ShardFigures {
        let mut metrics = RequestMetrics::new(Clock::new(), None, 0);
        let mut out = Vec::new();
        Response::new(&mut out, CommandName::Get, Status::Ok).finish();
        metrics.answered(
            CommandLabel::of(Some(CommandName::Get)),
            metrics.request_started(),
            &out,
        );
        metrics.accepted();
        let mut figures = ShardFigures {
            shard: id,
            sessions: 10 + id as u64,
            requests: metrics.figures().clone(),
            ..ShardFigures::default()
        };
        figures.expiry.idle = 3;
        figures.expiry.lag_ms.observe(7);
        figures
    }

    fn facts() -> ScrapeFacts {
        ScrapeFacts {
            version: "9.9.9",
            memory_limit: 1 << 20,
            connections: 4,
            started_s: 1.0,
        }
    }

    #[test]
    fn shards_are_summed_and_named_as_documented() {
        let text = encode(vec![shard(1), shard(0)], facts());
        for line in [
            "nemesisdb_commands_total{command=\"SH_GET\",status=\"1\"} 2",
            "nemesisdb_command_duration_seconds_count{command=\"SH_GET\"} 2",
            "nemesisdb_sessions{shard=\"0\"} 10",
            "nemesisdb_sessions{shard=\"1\"} 11",
            "nemesisdb_connections_accepted_total 2",
            "nemesisdb_connections 4",
            "nemesisdb_memory_limit_bytes 1048576",
            "nemesisdb_expired_total{kind=\"idle\"} 6",
            "nemesisdb_expiry_lag_seconds_bucket{le=\"0.01\"} 2",
            "nemesisdb_expiry_lag_seconds_bucket{le=\"+Inf\"} 2",
            "nemesisdb_build_info{version=\"9.9.9\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains("nemesisdb_log_records"),
            "no change-log figures while the log is off"
        );
        assert!(text.contains("process_cpu_seconds_total"));
        assert!(text.ends_with("# EOF\n"));
    }
}
