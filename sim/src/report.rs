//! What a scenario prints: a table for people, JSON for scripts, SVG for sweeps.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;
use serde_json::Value;

/// A scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed it ran with.
    pub seed: u64,
    /// Column names, units included.
    pub columns: Vec<String>,
    /// One row per point, in column order.
    pub rows: Vec<Vec<Value>>,
    /// What the figures mean, one line each.
    pub notes: Vec<String>,
    /// Charts for `--plot`, drawn one above the other.
    #[serde(skip)]
    pub plot: Option<Vec<Plot>>,
}

/// Curves over a swept parameter.
#[derive(Debug, Clone)]
pub struct Plot {
    /// Title.
    pub title: String,
    /// X axis label, unit included.
    pub x_label: String,
    /// Y axis label, unit included.
    pub y_label: String,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Named curves of (x, y) points.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Report {
    /// The table, columns aligned.
    pub fn table(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(cell).collect())
            .collect();
        let mut widths: Vec<usize> = self.columns.iter().map(String::len).collect();
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.len());
            }
        }
        let mut out = format!("# {} (seed {})\n", self.scenario, self.seed);
        let line = |row: &[String]| {
            let parts: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            parts.join("  ") + "\n"
        };
        out += &line(&self.columns);
        for row in &cells {
            out += &line(row);
        }
        for note in &self.notes {
            out += &format!("- {note}\n");
        }
        out
    }

    /// The report as JSON: columns, and each row as an object.
    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                Value::Object(
                    self.columns
                        .iter()
                        .cloned()
                        .zip(row.iter().cloned())
                        .collect(),
                )
            })
            .collect();
        serde_json::json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "rows": rows,
            "notes": self.notes,
        })
    }

    /// Draws the sweep's charts to an SVG file.
    pub fn svg(&self, path: &Path) -> Result<(), String> {
        let plots = self
            .plot
            .as_ref()
            .ok_or_else(|| format!("scenario {} has no sweep to plot", self.scenario))?;
        let root = SVGBackend::new(path, (900, 480 * plots.len() as u32)).into_drawing_area();
        let areas = root.split_evenly((plots.len(), 1));
        let drawn = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| plots.iter().zip(&areas).try_for_each(|(p, a)| draw(p, a)))
            .and_then(|()| root.present().map_err(|e| e.to_string()));
        drawn.map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn draw(
    plot: &Plot,
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let points = plot.series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return Err("nothing to plot".to_owned());
    }
    if x0 == x1 {
        x1 = x0 + 1.0;
    }
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(&plot.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72);
    let colors = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart.map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc(plot.x_label.as_str())
                .y_desc(plot.y_label.as_str())
                .draw()
                .map_err(|e| err(&e))?;
            for (i, (name, pts)) in plot.series.iter().enumerate() {
                let color = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color))
                    .map_err(|e| err(&e))?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    if plot.log_y {
        let low = y0.max(1e-3) / 2.0;
        finish!(builder.build_cartesian_2d(x0..x1, (low..y1.max(low * 10.0) * 2.0).log_scale()));
    } else {
        finish!(builder.build_cartesian_2d(x0..x1, 0.0..(y1 * 1.1).max(1e-9)));
    }
    Ok(())
}
