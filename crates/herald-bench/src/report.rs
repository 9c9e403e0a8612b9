//! Results: a summary table on stdout, a JSON document, and an SVG plot (latency CDF and deliveries/s
//! over time).

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

/// One run's results.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `idle`, `fanout`, `connect` or `ceiling`.
    pub scenario: String,
    /// Free-form name of what was measured (e.g. `herald`, `sockudo`).
    pub label: String,
    /// The parameters the run used.
    pub params: serde_json::Value,
    /// Named results, in display order.
    pub results: Vec<(String, serde_json::Value)>,
    /// Deliveries (or connections) per second over time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_over_time: Vec<(f64, f64)>,
    /// Latency percentiles in microseconds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub latency_cdf_us: Vec<(f64, u64)>,
}

impl Report {
    /// An empty report.
    pub fn new(scenario: &str, label: &str, params: serde_json::Value) -> Report {
        Report { scenario: scenario.into(), label: label.into(), params, results: vec![], rate_over_time: vec![], latency_cdf_us: vec![] }
    }

    /// Adds a named result.
    pub fn put(&mut self, name: &str, value: impl Into<serde_json::Value>) {
        self.results.push((name.into(), value.into()));
    }

    /// Adds latency percentiles (ms) and keeps the CDF for the plot.
    pub fn latency(&mut self, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        self.put("latency_p50_ms", ms(h.value_at_quantile(0.5)));
        self.put("latency_p90_ms", ms(h.value_at_quantile(0.9)));
        self.put("latency_p99_ms", ms(h.value_at_quantile(0.99)));
        self.put("latency_p999_ms", ms(h.value_at_quantile(0.999)));
        self.put("latency_max_ms", ms(h.max()));
        self.latency_cdf_us = h.iter_quantiles(2).map(|v| (v.quantile_iterated_to() * 100.0, v.value_iterated_to())).collect();
    }

    /// Prints the summary table.
    pub fn print(&self) {
        println!("\n{} — {}", self.scenario, self.label);
        println!("{:-<46}", "");
        for (k, v) in &self.results {
            let v = match v {
                serde_json::Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => format!("{:.3}", n.as_f64().unwrap_or(0.0)),
                other => other.to_string().trim_matches('"').to_string(),
            };
            println!("{k:<28} {v:>17}");
        }
    }

    /// Writes the JSON result.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?).with_context(|| format!("write {}", path.display()))
    }

    /// Writes an SVG with the latency CDF (if any) and the rate over time.
    pub fn write_plot(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(500);
        if !self.latency_cdf_us.is_empty() {
            let max_ms = self.latency_cdf_us.iter().map(|(_, us)| *us as f64 / 1000.0).fold(0.1, f64::max);
            let mut chart = ChartBuilder::on(&left)
                .caption(format!("{} latency CDF", self.label), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(45)
                .build_cartesian_2d(0.0..max_ms * 1.05, 0.0..100.0)?;
            chart.configure_mesh().x_desc("publish → receive (ms)").y_desc("percentile").draw()?;
            chart.draw_series(LineSeries::new(self.latency_cdf_us.iter().map(|(q, us)| (*us as f64 / 1000.0, *q)), &BLUE))?;
        }
        if !self.rate_over_time.is_empty() {
            let t_max = self.rate_over_time.last().map(|p| p.0).unwrap_or(1.0).max(0.1);
            let r_max = self.rate_over_time.iter().map(|p| p.1).fold(1.0, f64::max);
            let mut chart = ChartBuilder::on(&right)
                .caption(
                    format!(
                        "{} {} per second",
                        self.label,
                        if self.scenario == "fanout" || self.scenario == "ceiling" { "deliveries" } else { "connections" }
                    ),
                    ("sans-serif", 18),
                )
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..t_max, 0.0..r_max * 1.1)?;
            chart.configure_mesh().x_desc("seconds").draw()?;
            chart.draw_series(LineSeries::new(self.rate_over_time.iter().copied(), &RED))?;
        }
        root.present()?;
        Ok(())
    }
}

/// A markdown table per scenario (and parameters), one column per result file, one row per metric.
pub fn markdown(files: &[std::path::PathBuf]) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut groups: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    for f in files {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?)?;
        // The ceiling runs the fanout scenario against the raw server: same table as fanout.
        let scenario = match v["scenario"].as_str().unwrap_or("?") {
            "ceiling" => "fanout",
            s => s,
        };
        let key = format!("{scenario} {}", v["params"]);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, runs)) => runs.push(v),
            None => groups.push((key, vec![v])),
        }
    }
    let mut out = String::new();
    for (key, runs) in &groups {
        let (scenario, params) = key.split_once(' ').unwrap_or((key, ""));
        writeln!(out, "### {scenario}\n\nparameters: `{params}`\n")?;
        let labels: Vec<&str> = runs.iter().map(|r| r["label"].as_str().unwrap_or("?")).collect();
        writeln!(out, "| metric | {} |", labels.join(" | "))?;
        writeln!(out, "|---|{}", "---:|".repeat(labels.len()))?;
        let mut names: Vec<String> = Vec::new();
        for r in runs {
            for pair in r["results"].as_array().into_iter().flatten() {
                if let Some(n) = pair[0].as_str() {
                    if !names.iter().any(|x| x == n) {
                        names.push(n.to_string());
                    }
                }
            }
        }
        for name in &names {
            let cells: Vec<String> = runs
                .iter()
                .map(|r| {
                    r["results"]
                        .as_array()
                        .and_then(|a| a.iter().find(|p| p[0] == name.as_str()))
                        .map(|p| p[1].to_string())
                        .unwrap_or_else(|| "–".into())
                })
                .collect();
            writeln!(out, "| {name} | {} |", cells.join(" | "))?;
        }
        writeln!(out)?;
    }
    Ok(out)
}
