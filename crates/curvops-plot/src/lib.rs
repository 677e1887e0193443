//! Dependency-free SVG line plots that a person can read: axes with "nice" ticks and labels,
//! a title, several named series with a legend, and an optional logarithmic y axis.
//!
//! Used for spectral densities (`curvops spectrum --plot`) and, later, reliability diagrams
//! and training curves.
//!
//! ```
//! use curvops_plot::{LinePlot, Series};
//! let svg = LinePlot::new("Spectral density")
//!     .x_label("eigenvalue")
//!     .y_label("density")
//!     .with_series(Series::new("slq", vec![(0.0, 0.1), (1.0, 0.8), (2.0, 0.1)]))
//!     .to_svg();
//! assert!(svg.starts_with("<svg"));
//! ```

#![warn(missing_docs)]

use std::fmt::Write as _;

/// A named polyline.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points in drawing order; a non-finite point (or, on a log axis, `y ≤ 0`)
    /// breaks the line.
    pub points: Vec<(f64, f64)>,
    /// Stroke color (any SVG color); `None` picks from a palette.
    pub color: Option<String>,
    /// Dashed stroke (e.g. for a reference line such as the diagonal of a reliability diagram).
    pub dashed: bool,
}

impl Series {
    /// A solid series with a palette color.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points, color: None, dashed: false }
    }
    /// Sets the color.
    pub fn color(mut self, color: impl Into<String>) -> Self {
        self.color = Some(color.into());
        self
    }
    /// Draws the series dashed.
    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// A line plot.
#[derive(Clone, Debug, PartialEq)]
pub struct LinePlot {
    /// Title above the plot.
    pub title: String,
    /// Label under the x axis.
    pub x_label: String,
    /// Label left of the y axis.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
    /// Logarithmic (base-10) y axis.
    pub log_y: bool,
    /// Fixed x range (default: the data's).
    pub x_range: Option<(f64, f64)>,
    /// Fixed y range (default: the data's, padded).
    pub y_range: Option<(f64, f64)>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

impl LinePlot {
    /// An empty 720 × 450 plot.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            series: Vec::new(),
            log_y: false,
            x_range: None,
            y_range: None,
            width: 720,
            height: 450,
        }
    }
    /// Sets the x-axis label.
    pub fn x_label(mut self, s: impl Into<String>) -> Self {
        self.x_label = s.into();
        self
    }
    /// Sets the y-axis label.
    pub fn y_label(mut self, s: impl Into<String>) -> Self {
        self.y_label = s.into();
        self
    }
    /// Logarithmic y axis.
    pub fn log_y(mut self, on: bool) -> Self {
        self.log_y = on;
        self
    }
    /// Fixed x range.
    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x_range = Some((lo, hi));
        self
    }
    /// Fixed y range (data units, also for a log axis).
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }
    /// Size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }
    /// Adds a series.
    pub fn with_series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }
    /// Adds a series.
    pub fn push(&mut self, s: Series) {
        self.series.push(s);
    }

    /// Writes the SVG to `path` (through a temporary file and a rename, so that a failed write
    /// leaves no half-written plot).
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        write_atomic(path.as_ref(), &self.to_svg())
    }

    fn usable(&self, y: f64) -> bool {
        y.is_finite() && (!self.log_y || y > 0.0)
    }

    /// The data ranges, in axis units (log10 for a log y axis).
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let ty = |y: f64| if self.log_y { y.log10() } else { y };
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for s in &self.series {
            for &(x, y) in &s.points {
                if x.is_finite() && self.usable(y) {
                    x0 = x0.min(x);
                    x1 = x1.max(x);
                    y0 = y0.min(ty(y));
                    y1 = y1.max(ty(y));
                }
            }
        }
        let fix = |lo: f64, hi: f64, pad: f64| -> (f64, f64) {
            if !lo.is_finite() {
                (0.0, 1.0)
            } else if hi - lo <= 0.0 {
                let d = if lo == 0.0 { 1.0 } else { 0.5 * lo.abs() };
                (lo - d, hi + d)
            } else {
                (lo - pad * (hi - lo), hi + pad * (hi - lo))
            }
        };
        let xr = match self.x_range {
            Some(r) => r,
            None => fix(x0, x1, 0.0),
        };
        let yr = match self.y_range {
            Some((a, b)) => (ty(a), ty(b)),
            None if self.log_y => {
                let (a, b) = fix(y0, y1, 0.0);
                (a.floor(), b.ceil())
            }
            None => fix(y0, y1, 0.05),
        };
        (xr, yr)
    }

    /// Renders the plot as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let (w, h) = (self.width as f64, self.height as f64);
        let (ml, mr, mt, mb) = (78.0, 24.0, 44.0, 58.0);
        let (pw, ph) = ((w - ml - mr).max(10.0), (h - mt - mb).max(10.0));
        let ((x0, x1), (y0, y1)) = self.ranges();
        let sx = |x: f64| ml + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| mt + ph - (y - y0) / (y1 - y0) * ph;
        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
        );
        let _ = writeln!(o, r#"<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            o,
            r#"<defs><clipPath id="plot-area"><rect x="{ml}" y="{mt}" width="{pw}" height="{ph}"/></clipPath></defs>"#
        );

        // grid and ticks
        let xt = nice_ticks(x0, x1, 7);
        let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { (x1 - x0).abs() };
        for &t in &xt {
            let px = sx(t);
            let _ =
                writeln!(o, r##"<line x1="{px:.2}" y1="{mt}" x2="{px:.2}" y2="{:.2}" stroke="#e5e5e5"/>"##, mt + ph);
            let _ = writeln!(
                o,
                r#"<text x="{px:.2}" y="{:.2}" text-anchor="middle">{}</text>"#,
                mt + ph + 16.0,
                escape(&format_tick(t, xstep))
            );
        }
        let yt: Vec<(f64, String)> = if self.log_y {
            log_ticks(y0, y1).into_iter().map(|e| (e, format_decade(e))).collect()
        } else {
            let t = nice_ticks(y0, y1, 6);
            let step = if t.len() > 1 { t[1] - t[0] } else { (y1 - y0).abs() };
            t.into_iter().map(|v| (v, format_tick(v, step))).collect()
        };
        for (t, label) in &yt {
            let py = sy(*t);
            let _ =
                writeln!(o, r##"<line x1="{ml}" y1="{py:.2}" x2="{:.2}" y2="{py:.2}" stroke="#e5e5e5"/>"##, ml + pw);
            let _ = writeln!(
                o,
                r#"<text x="{:.2}" y="{:.2}" text-anchor="end">{}</text>"#,
                ml - 6.0,
                py + 4.0,
                escape(label)
            );
        }
        // axes
        let _ = writeln!(o, r#"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
        // series
        for (i, s) in self.series.iter().enumerate() {
            let color = s.color.clone().unwrap_or_else(|| PALETTE[i % PALETTE.len()].to_string());
            let dash = if s.dashed { r#" stroke-dasharray="6,4""# } else { "" };
            let mut segment: Vec<String> = Vec::new();
            let flush = |seg: &mut Vec<String>, o: &mut String| {
                if seg.len() >= 2 {
                    let _ = writeln!(
                        o,
                        r#"<polyline clip-path="url(#plot-area)" fill="none" stroke="{color}" stroke-width="1.8"{dash} points="{}"/>"#,
                        seg.join(" ")
                    );
                } else if seg.len() == 1 {
                    let (px, py) = seg[0].split_once(',').unwrap();
                    let _ = writeln!(
                        o,
                        r#"<circle clip-path="url(#plot-area)" cx="{px}" cy="{py}" r="2" fill="{color}"/>"#
                    );
                }
                seg.clear();
            };
            for &(x, y) in &s.points {
                if x.is_finite() && self.usable(y) {
                    let yy = if self.log_y { y.log10() } else { y };
                    segment.push(format!("{:.2},{:.2}", sx(x), sy(yy)));
                } else {
                    flush(&mut segment, &mut o);
                }
            }
            flush(&mut segment, &mut o);
        }
        // legend (top right, inside the plot area)
        let named: Vec<(usize, &Series)> = self.series.iter().enumerate().filter(|(_, s)| !s.name.is_empty()).collect();
        if !named.is_empty() {
            let longest = named.iter().map(|(_, s)| s.name.chars().count()).max().unwrap_or(0) as f64;
            let (lw, lh) = (34.0 + 7.0 * longest, 8.0 + 18.0 * named.len() as f64);
            // the corner whose box covers the fewest data points (top right on ties)
            let pts: Vec<(f64, f64)> = self
                .series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|(x, y)| x.is_finite() && self.usable(*y))
                .map(|&(x, y)| (sx(x), sy(if self.log_y { y.log10() } else { y })))
                .collect();
            let corners = [
                (ml + pw - lw - 8.0, mt + 8.0),
                (ml + 8.0, mt + 8.0),
                (ml + pw - lw - 8.0, mt + ph - lh - 8.0),
                (ml + 8.0, mt + ph - lh - 8.0),
            ];
            let covered = |&(cx, cy): &(f64, f64)| {
                pts.iter().filter(|(px, py)| *px >= cx && *px <= cx + lw && *py >= cy && *py <= cy + lh).count()
            };
            let (lx, ly) = corners.iter().copied().min_by_key(covered).unwrap();
            let _ = writeln!(
                o,
                r##"<rect x="{lx:.2}" y="{ly:.2}" width="{lw:.2}" height="{lh:.2}" fill="white" fill-opacity="0.85" stroke="#999999"/>"##
            );
            for (row, (i, s)) in named.iter().enumerate() {
                let color = s.color.clone().unwrap_or_else(|| PALETTE[i % PALETTE.len()].to_string());
                let dash = if s.dashed { r#" stroke-dasharray="6,4""# } else { "" };
                let yy = ly + 15.0 + 18.0 * row as f64;
                let _ = writeln!(
                    o,
                    r#"<line x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="{color}" stroke-width="2"{dash}/>"#,
                    lx + 6.0,
                    yy - 4.0,
                    lx + 26.0,
                    yy - 4.0
                );
                let _ = writeln!(o, r#"<text x="{:.2}" y="{yy:.2}">{}</text>"#, lx + 30.0, escape(&s.name));
            }
        }
        // title and labels
        let _ = writeln!(
            o,
            r#"<text x="{:.2}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
            w / 2.0,
            escape(&self.title)
        );
        if !self.x_label.is_empty() {
            let _ = writeln!(
                o,
                r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">{}</text>"#,
                ml + pw / 2.0,
                h - 14.0,
                escape(&self.x_label)
            );
        }
        if !self.y_label.is_empty() {
            let (cx, cy) = (18.0, mt + ph / 2.0);
            let label = if self.log_y { format!("{} (log scale)", self.y_label) } else { self.y_label.clone() };
            let _ = writeln!(
                o,
                r#"<text x="{cx}" y="{cy:.2}" text-anchor="middle" transform="rotate(-90 {cx} {cy:.2})">{}</text>"#,
                escape(&label)
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

/// "Nice" tick positions (steps of 1, 2 or 5 times a power of ten) inside `[lo, hi]`, about
/// `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    let mut ticks = Vec::new();
    let mut k = first;
    while k * step <= hi + 1e-9 * step {
        let v = k * step;
        ticks.push(if v.abs() < 1e-12 * step { 0.0 } else { v });
        k += 1.0;
    }
    ticks
}

/// Decades `e` (for ticks at `10^e`) within `[lo, hi]` (log10 units); thinned to at most 10.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return vec![];
    }
    let (a, b) = (lo.ceil() as i64, hi.floor() as i64);
    let stride = (((b - a + 1) as f64) / 10.0).ceil().max(1.0) as i64;
    (a..=b).filter(|e| (e - a) % stride == 0).map(|e| e as f64).collect()
}

/// A tick label for `v` with decimals suited to the tick spacing `step`.
pub fn format_tick(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.1e}");
        return s.replace(".0e", "e");
    }
    let decimals = if step >= 1.0 || step <= 0.0 { 0 } else { (-step.log10()).ceil().clamp(0.0, 6.0) as usize };
    format!("{v:.decimals$}")
}

/// Label of the decade `10^e`: `1`, `10`, `100`, `0.1`, `0.01`, else `1e-5`-style.
pub fn format_decade(e: f64) -> String {
    let e = e as i64;
    match e {
        0 => "1".into(),
        1 => "10".into(),
        2 => "100".into(),
        -1 => "0.1".into(),
        -2 => "0.01".into(),
        _ => format!("1e{e}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Writes `text` to `path` through `path.tmp` and a rename.
fn write_atomic(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Several plots side by side in one SVG document (each keeps its own size; their clip paths
/// get distinct ids).
pub fn row_svg(plots: &[LinePlot]) -> String {
    let w: u32 = plots.iter().map(|p| p.width).sum();
    let h: u32 = plots.iter().map(|p| p.height).max().unwrap_or(0);
    let mut o = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">"#);
    o.push('\n');
    let mut x = 0;
    for (i, p) in plots.iter().enumerate() {
        let svg = p.to_svg().replace("plot-area", &format!("plot-area-{i}"));
        // position the nested document
        o.push_str(&svg.replacen("<svg ", &format!(r#"<svg x="{x}" y="0" "#), 1));
        x += p.width;
    }
    o.push_str("</svg>\n");
    o
}

/// Writes [`row_svg`] of `plots` to `path` (atomically, as [`LinePlot::save`]).
pub fn save_row(plots: &[LinePlot], path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
    write_atomic(path.as_ref(), &row_svg(plots))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(h: &str, n: &str) -> usize {
        h.matches(n).count()
    }

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        let t = nice_ticks(0.0, 10.0, 5);
        assert_eq!(t, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(-0.013, 0.047, 6);
        assert!(t.len() >= 4 && t.len() <= 12, "{t:?}");
        assert!(t.iter().all(|&v| (-0.013..=0.047 + 1e-12).contains(&v)));
        assert!(t.contains(&0.0));
        assert_eq!(log_ticks(-3.0, 1.0), vec![-3.0, -2.0, -1.0, 0.0, 1.0]);
        let lt = log_ticks(-30.0, 0.0);
        assert!(lt.len() >= 5 && lt.len() <= 10 && lt[0] == -30.0, "{lt:?}");
        assert_eq!(format_tick(0.25, 0.05), "0.25");
        assert_eq!(format_tick(3.0, 1.0), "3");
        assert_eq!(format_tick(2e-6, 1e-6), "2e-6");
        assert_eq!(format_decade(-3.0), "1e-3");
    }

    #[test]
    fn svg_has_axes_labels_series_and_legend() {
        let xs: Vec<f64> = (0..100).map(|i| i as f64 / 10.0).collect();
        let plot = LinePlot::new("Spectral density <test>")
            .x_label("eigenvalue λ")
            .y_label("density")
            .with_series(Series::new("slq", xs.iter().map(|&x| (x, (-(x - 5.0) * (x - 5.0)).exp())).collect()))
            .with_series(Series::new("reference & co", xs.iter().map(|&x| (x, 0.5)).collect()).dashed());
        let svg = plot.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Spectral density &lt;test&gt;"));
        assert!(svg.contains("eigenvalue λ") && svg.contains(">density<"));
        assert!(svg.contains(">slq<") && svg.contains("reference &amp; co"));
        assert_eq!(count(&svg, "<polyline"), 2);
        assert!(svg.contains("stroke-dasharray"));
        // x ticks 0, 2, 4, 6, 8 (data 0..9.9)
        for t in ["0", "2", "4", "6", "8"] {
            assert!(svg.contains(&format!(r#"text-anchor="middle">{t}</text>"#)), "tick {t}");
        }
        assert_eq!(count(&svg, "<text"), count(&svg, "</text>"));
    }

    #[test]
    fn log_axis_skips_nonpositive_values_and_labels_decades() {
        let pts = vec![(0.0, 1e-4), (1.0, 1e-2), (2.0, 0.0), (3.0, 1.0), (4.0, 10.0), (5.0, f64::NAN), (6.0, 3.0)];
        let svg = LinePlot::new("log").y_label("value").log_y(true).with_series(Series::new("a", pts)).to_svg();
        // the zero and the NaN break the line: segments [0,1], [3,4], and a lone point [6]
        assert_eq!(count(&svg, "<polyline"), 2);
        assert_eq!(count(&svg, "<circle"), 1);
        for t in ["1e-4", "0.01", "1", "10"] {
            assert!(svg.contains(&format!(r#"text-anchor="end">{t}</text>"#)), "decade {t}\n{svg}");
        }
        assert!(svg.contains("value (log scale)"));
    }

    #[test]
    fn empty_and_degenerate_plots_render() {
        let svg = LinePlot::new("empty").to_svg();
        assert!(svg.contains("</svg>"));
        let svg = LinePlot::new("flat").with_series(Series::new("c", vec![(1.0, 2.0), (1.0, 2.0)])).to_svg();
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let svg = LinePlot::new("fixed").x_range(0.0, 1.0).y_range(0.0, 1.0).size(300, 200).to_svg();
        assert!(svg.contains(r#"width="300""#));
    }

    #[test]
    fn row_places_plots_side_by_side_with_distinct_clip_ids() {
        let a = LinePlot::new("a").with_series(Series::new("s", vec![(0.0, 1.0), (1.0, 2.0)])).size(300, 200);
        let b = LinePlot::new("b").with_series(Series::new("t", vec![(0.0, 1.0), (1.0, 3.0)])).size(400, 250);
        let svg = row_svg(&[a, b]);
        assert!(svg.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg" width="700" height="250""#));
        assert!(svg.contains(r#"<svg x="300" y="0" "#));
        assert!(svg.contains("plot-area-0") && svg.contains("plot-area-1") && !svg.contains("\"plot-area\""));
        let path = std::env::temp_dir().join(format!("curvops-plot-row-{}.svg", std::process::id()));
        save_row(&[LinePlot::new("c")], &path).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("</svg>\n"));
        let _ = std::fs::remove_file(&path);
    }
}
