//! `--out DIR`: `report.json` (the summary, the run's settings, the latency
//! distribution and the per-second series) and `latency.svg` (latency by
//! percentile, and throughput and p99 over time).
//!
//! Owns: the files' formats. Reads the finished [`Outcome`]; changes nothing.

use std::fs;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::events::EventSummary;
use crate::save::SaveSummary;
use crate::stats::{Outcome, SecondStat, Summary, us};

#[derive(Serialize)]
struct Report<'a> {
    summary: &'a Summary,
    threads: usize,
    /// Open-loop rate, `null` for closed loop.
    rate: Option<f64>,
    seed: u64,
    /// CPU seconds this generator used during the timed run.
    client_cpu_s: Option<f64>,
    /// CPU seconds the `--server-pid` process used during the timed run.
    server_cpu_s: Option<f64>,
    failed_connections: u64,
    /// Compare-and-sets that lost and were tried again (cas; 0 for the
    /// workloads that never retry). Each completed operation counts once in
    /// `ops` however often it was retried.
    retries: u64,
    /// Latency at each percentile, for plotting a distribution.
    percentiles: Vec<Percentile>,
    series: &'a [SecondStat],
    /// The subscriber's events (`--subscribe`, expiry-events); absent
    /// without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'a EventSummary>,
    /// `--save-at`: the save and latency while it ran; absent without.
    #[serde(skip_serializing_if = "Option::is_none")]
    save: Option<&'a SaveSummary>,
    /// What the TLS connections agreed on (protocol, cipher suite, key
    /// exchange); absent for plain TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a str>,
}

#[derive(Serialize, Clone, Copy)]
struct Percentile {
    percentile: f64,
    latency_us: f64,
}

/// The percentiles reported and plotted: dense towards the tail.
const PERCENTILES: &[f64] = &[
    0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 92.5, 95.0, 96.0, 97.0,
    97.5, 98.0, 98.5, 99.0, 99.25, 99.5, 99.75, 99.9, 99.95, 99.99, 99.999, 100.0,
];

fn percentiles(h: &Histogram<u64>) -> Vec<Percentile> {
    if h.is_empty() {
        return Vec::new();
    }
    PERCENTILES
        .iter()
        .map(|&p| Percentile {
            percentile: p,
            latency_us: us(if p >= 100.0 {
                h.max()
            } else {
                h.value_at_percentile(p)
            }),
        })
        .collect()
}

pub struct Meta<'a> {
    pub threads: usize,
    pub rate: Option<f64>,
    pub seed: u64,
    pub client_cpu_s: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub events: Option<&'a EventSummary>,
    pub save: Option<&'a SaveSummary>,
    pub tls: Option<&'a str>,
}

pub fn write(
    dir: &Path,
    summary: &Summary,
    outcome: &Outcome,
    meta: &Meta<'_>,
) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
    let pct = percentiles(&outcome.hist);
    let report = Report {
        summary,
        threads: meta.threads,
        rate: meta.rate,
        seed: meta.seed,
        client_cpu_s: meta.client_cpu_s,
        server_cpu_s: meta.server_cpu_s,
        failed_connections: outcome.failed_connections,
        retries: outcome.retries,
        percentiles: pct.clone(),
        series: &outcome.series,
        events: meta.events,
        save: meta.save,
        tls: meta.tls,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let path = dir.join("report.json");
    fs::write(&path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    let svg = dir.join("latency.svg");
    plot(&svg, summary, &pct, &outcome.series).map_err(|e| format!("{}: {e}", svg.display()))
}

/// x position of a percentile on a "nines" axis: 90 -> 1, 99 -> 2, 99.9 -> 3.
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-6).log10()
}

fn plot(
    path: &Path,
    s: &Summary,
    pct: &[Percentile],
    series: &[SecondStat],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(420);
    let title = format!(
        "{} {} - {} conns x pipeline {}: {:.0} ops/s",
        s.workload, s.target, s.connections, s.pipeline, s.ops_per_sec
    );

    let max_x = pct.iter().map(|p| nines(p.percentile)).fold(3.0, f64::max);
    let max_lat = pct.iter().map(|p| p.latency_us).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..max_lat)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(8)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            // 90%, 99%, 99.9%, ...: one more decimal per nine.
            format!(
                "{p:.prec$}%",
                prec = (x.round() as usize).saturating_sub(2).min(4)
            )
        })
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            pct.iter().map(|p| (nines(p.percentile), p.latency_us)),
            BLUE.stroke_width(2),
        ))?
        .label("latency")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));

    let max_t = series.iter().map(|s| s.second + 1).max().unwrap_or(1) as f64;
    let max_ops = series.iter().map(|s| s.ops_per_sec).fold(1.0, f64::max) * 1.1;
    let max_p99 = series.iter().map(|s| s.p99_us).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..max_t, 0.0..max_ops)?
        .set_secondary_coord(0.0..max_t, 0.0..max_p99);
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("ops/s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("p99 (us)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            series
                .iter()
                .map(|s| (s.second as f64 + 0.5, s.ops_per_sec)),
            GREEN.stroke_width(2),
        ))?
        .label("ops/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_secondary_series(LineSeries::new(
            series.iter().map(|s| (s.second as f64 + 0.5, s.p99_us)),
            RED.stroke_width(2),
        ))?
        .label("p99 (us)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
