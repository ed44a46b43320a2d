//! The scenario's plots, drawn as SVG with plotters: the change → acked latency CDF, the
//! realized lag over time with every fault marked, bytes per second sent by each replica,
//! and RSS and CPU of every process. Text needs a font: DejaVu Sans (Debian's
//! fonts-dejavu-core, which `scripts/setup.sh` installs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::faults::Kind;
use super::report::ClusterReport;
use super::sample::Sample;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (960, 480);

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error(
        "cannot read the font {FONT} ({0}); install fonts-dejavu-core (scripts/setup.sh does)"
    )]
    Font(std::io::Error),
    #[error("cannot create {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("drawing {0}: {1}")]
    Draw(PathBuf, String),
}

fn fonts() -> Result<(), PlotError> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| e.to_string())?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| "not a font".to_string())
    })
    .clone()
    .map_err(|e| PlotError::Font(std::io::Error::other(e)))
}

fn color(i: usize) -> RGBColor {
    [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ][i % 6]
}

fn fault_color(k: Kind) -> RGBColor {
    match k {
        Kind::KillLeader => RGBColor(214, 39, 40),
        Kind::KillFollower => RGBColor(255, 127, 14),
        Kind::RestartReplica => RGBColor(148, 103, 189),
        Kind::Partition => RGBColor(140, 86, 75),
        Kind::RestartAgents => RGBColor(44, 160, 44),
    }
}

type Series = (String, Vec<(f64, f64)>);

/// A chart's title and margins on `root`.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(root);
    b.caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    b
}

/// Pieces of a time series with no gap longer than `gap` (a process down: no line across).
fn pieces(points: &[(f64, f64)], gap: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    for p in points {
        match out.last_mut() {
            Some(last) if last.last().is_some_and(|q| p.0 - q.0 <= gap) => last.push(*p),
            _ => out.push(vec![*p]),
        }
    }
    out
}

/// One line chart of `series` (name, points) into `path`, with every fault of the report
/// marked as a vertical line (time series: lines break at gaps over 2.5 s).
fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    marks: Option<&ClusterReport>,
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::Draw(path.to_path_buf(), e.to_string());
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (xmax, ymax) = points.fold((1e-9f64, 1e-9f64), |(x, y), (px, py)| {
        (x.max(*px), y.max(*py))
    });
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = frame(&root, title)
        .build_cartesian_2d(0f64..xmax * 1.02, 0f64..ymax * 1.1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    if let Some(r) = marks {
        for (i, f) in r.faults.iter().enumerate() {
            let c = fault_color(f.kind);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(f.at_s, 0.0), (f.at_s, ymax * 1.1)],
                    c.stroke_width(1),
                )))
                .map_err(|e| err(&e))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    f.kind.name(),
                    // Three rows, so labels of faults close together stay readable.
                    (f.at_s, ymax * (1.07 - 0.04 * (i % 3) as f64)),
                    ("sans-serif", 11).into_font().color(&c),
                )))
                .map_err(|e| err(&e))?;
        }
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = color(i);
        let gap = if marks.is_some() { 2.5 } else { f64::INFINITY };
        for (k, piece) in pieces(pts, gap).into_iter().enumerate() {
            let drawn = chart
                .draw_series(LineSeries::new(piece, c.stroke_width(2)))
                .map_err(|e| err(&e))?;
            if k == 0 {
                drawn.label(name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The latency CDF, milliseconds on a log scale (failovers are orders of magnitude above
/// steady changes).
fn cdf(path: &Path, title: &str, ms: &[f64]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::Draw(path.to_path_buf(), e.to_string());
    let n = ms.len().max(1) as f64;
    let points: Vec<(f64, f64)> = ms
        .iter()
        .enumerate()
        .map(|(i, v)| (v.max(0.01), (i + 1) as f64 / n))
        .collect();
    let lo = points.first().map_or(0.1, |p| p.0) / 1.5;
    let hi = points.last().map_or(1.0, |p| p.0) * 1.5;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = frame(&root, title)
        .build_cartesian_2d((lo..hi.max(lo * 2.0)).log_scale(), 0f64..1.02)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (log scale)")
        .y_desc("fraction of changes")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(points, color(0).stroke_width(2)))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The ids a per-process map of the samples holds, sorted.
fn ids_in(samples: &[Sample], map: impl Fn(&Sample) -> &BTreeMap<u64, f64>) -> Vec<u64> {
    let mut ids: Vec<u64> = samples
        .iter()
        .flat_map(|s| map(s).keys().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The rate of a counter per second between samples, times `scale` (a restart that resets
/// the counter leaves a gap).
fn rate(
    samples: &[Sample],
    id: u64,
    scale: f64,
    map: impl Fn(&Sample) -> &BTreeMap<u64, f64>,
) -> Vec<(f64, f64)> {
    samples
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (map(&w[0]).get(&id)?, map(&w[1]).get(&id)?);
            let dt = w[1].t - w[0].t;
            (b >= a && dt > 0.0).then(|| (w[1].t, scale * (b - a) / dt))
        })
        .collect()
}

/// Draw every plot into `dir`; the files written.
pub fn draw(r: &ClusterReport, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    fonts()?;
    std::fs::create_dir_all(dir).map_err(|e| PlotError::Dir(dir.to_path_buf(), e))?;
    let mut written = Vec::new();

    // Latency CDF.
    let mut ms = r.outcome_ms.clone();
    ms.sort_by(f64::total_cmp);
    let path = dir.join("latency-cdf.svg");
    cdf(
        &path,
        &format!(
            "change -> every affected agent acked ({} agents, {} changes)",
            r.agents,
            ms.len()
        ),
        &ms,
    )?;
    written.push(path);

    let path = dir.join("lag.svg");
    lines(
        &path,
        "realized lag: age of the oldest change not yet held by every affected agent",
        "seconds since the churn started",
        "milliseconds",
        &[("lag".into(), r.lag.clone())],
        Some(r),
    )?;
    written.push(path);

    // Bytes per second, from each replica's counter (a restart resets it: skipped).
    let sent: Vec<Series> = ids_in(&r.samples, |s| &s.sent_bytes)
        .into_iter()
        .map(|id| {
            let pts = rate(&r.samples, id, 1.0, |s| &s.sent_bytes);
            (format!("replica {id}"), pts)
        })
        .collect();
    let path = dir.join("bytes-per-second.svg");
    lines(
        &path,
        "bytes per second sent to agents, per replica",
        "seconds since the churn started",
        "bytes/s",
        &sent,
        Some(r),
    )?;
    written.push(path);

    let name = |id: u64| {
        if id == 0 {
            "load test (agents)".to_string()
        } else {
            format!("replica {id}")
        }
    };
    let procs = ids_in(&r.samples, |s| &s.cpu_seconds);
    let rss: Vec<Series> = procs
        .iter()
        .map(|id| {
            let pts = r
                .samples
                .iter()
                .filter_map(|s| Some((s.t, *s.rss_bytes.get(id)? as f64 / 1048576.0)))
                .collect();
            (name(*id), pts)
        })
        .collect();
    let path = dir.join("rss.svg");
    lines(
        &path,
        "resident memory per process",
        "seconds since the churn started",
        "MiB",
        &rss,
        Some(r),
    )?;
    written.push(path);

    let cpu: Vec<Series> = procs
        .iter()
        .map(|id| (name(*id), rate(&r.samples, *id, 100.0, |s| &s.cpu_seconds)))
        .collect();
    let path = dir.join("cpu.svg");
    lines(
        &path,
        "CPU per process (100% = one core; the machine has two)",
        "seconds since the churn started",
        "percent of a core",
        &cpu,
        Some(r),
    )?;
    written.push(path);
    Ok(written)
}
