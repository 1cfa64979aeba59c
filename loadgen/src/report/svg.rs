//! Inline SVG line charts for `report.html`, drawn here rather than by a
//! charting script so the report is one self-contained file that opens offline
//! and stays readable years later. One chart type covers every plot: lines over
//! a linear x axis (or fixed ticks, for the percentile axis) and a linear or
//! logarithmic y axis, with "nice" ticks and a legend.
//!
//! A chart scales to the width of its container (`viewBox`, no fixed size).
//! A line is never drawn across a gap: a point whose y is NaN breaks the line,
//! so intervals with no samples show as gaps, not as a slope between their
//! neighbours. Callers do not draw a chart with no points; they say `n/a`.

use std::fmt::Write as _;

const LEFT: f64 = 58.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 38.0;

/// Line colours, in series order.
pub const PALETTE: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// One line. A NaN `y` breaks it (no samples there).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart: title, axis labels, lines, and optionally fixed x ticks (value,
/// label) for axes whose values are not what a reader should see (the
/// percentile axis is plotted as log10(1/(1-q)) but labelled "99.9%").
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub x_ticks: Option<Vec<(f64, String)>>,
    /// Logarithmic y axis (values must be positive; others are left out).
    pub y_log: bool,
    /// The drawing's coordinate size (its aspect ratio; it is shown at the
    /// container's width).
    pub size: (f64, f64),
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// About five round tick values covering `lo..=hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-9 && out.len() < 12 {
        out.push(v);
        v += step;
    }
    out
}

/// Ticks of a log axis over `lo..=hi` (both positive): 1, 2, 5 per decade
/// when it spans up to three decades, the decades alone beyond.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let steps: &[f64] = if d1 - d0 <= 3 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut out = Vec::new();
    for d in d0..=d1 {
        for m in steps {
            let v = m * 10f64.powi(d);
            if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                out.push(v);
            }
        }
    }
    out
}

fn label(v: f64) -> String {
    if v.abs() >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() < 0.01 {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The runs of a series between breaks, as plotted coordinates.
fn runs(
    points: &[(f64, f64)],
    plot: impl Fn(f64, f64) -> Option<(f64, f64)>,
) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for &(x, y) in points {
        match plot(x, y) {
            Some(p) => out.last_mut().expect("never empty").push(p),
            None => {
                if !out.last().expect("never empty").is_empty() {
                    out.push(Vec::new());
                }
            }
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// True when the chart has at least one point to draw.
pub fn has_points(c: &Chart) -> bool {
    c.series
        .iter()
        .flat_map(|s| &s.points)
        .any(|(x, y)| x.is_finite() && y.is_finite() && (!c.y_log || *y > 0.0))
}

/// Renders the chart as an `<svg>` element.
pub fn line_chart(c: &Chart) -> String {
    let (width, height) = c.size;
    // The legend's room: its longest name (about 6.5 units per character at
    // 11px) plus the colour swatch.
    let longest = c
        .series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let right = 44.0 + 6.5 * longest as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet" role="img" aria-label="{}">"#,
        escape(&c.title)
    );
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="16" class="title">{}</text>"#,
        escape(&c.title)
    );
    let usable = |y: f64| y.is_finite() && (!c.y_log || y > 0.0);
    let all: Vec<(f64, f64)> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && usable(*y))
        .collect();
    if all.is_empty() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" class="empty">n/a: no samples</text></svg>"#,
            width / 2.0 - 40.0,
            height / 2.0
        );
        return s;
    }
    let (mut x0, mut x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    if let Some(t) = &c.x_ticks {
        x0 = x0.min(t.iter().map(|p| p.0).fold(f64::MAX, f64::min));
        x1 = x1.max(t.iter().map(|p| p.0).fold(f64::MIN, f64::max));
    }
    if x1 <= x0 {
        // One x value: centre it in a span of one unit.
        x0 -= 0.5;
        x1 += 0.5;
    }
    let ymax = all.iter().fold(f64::MIN, |m, p| m.max(p.1));
    let (y0, y1) = if c.y_log {
        let ymin = all.iter().fold(f64::MAX, |m, p| m.min(p.1));
        // Whole decades around the data, so the ticks frame it.
        let lo = 10f64.powf(ymin.log10().floor());
        let hi = 10f64.powf(ymax.log10().ceil()).max(lo * 10.0);
        (lo, hi)
    } else {
        (0.0, ymax.max(f64::EPSILON) * 1.05)
    };
    let pw = width - LEFT - right;
    let ph = height - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| {
        let f = if c.y_log {
            (y.log10() - y0.log10()) / (y1.log10() - y0.log10())
        } else {
            (y - y0) / (y1 - y0)
        };
        TOP + ph - f * ph
    };

    // Grid and axes.
    let yt = if c.y_log {
        log_ticks(y0, y1)
    } else {
        ticks(0.0, y1)
    };
    for y in yt {
        let _ = write!(
            s,
            r#"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" class="grid"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            LEFT + pw,
            LEFT - 6.0,
            sy(y) + 4.0,
            label(y),
            py = sy(y)
        );
    }
    let xt: Vec<(f64, String)> = match &c.x_ticks {
        Some(t) => t.clone(),
        None => ticks(x0, x1).into_iter().map(|v| (v, label(v))).collect(),
    };
    for (x, text) in xt {
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{}" class="grid"/><text x="{px:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
            TOP + ph,
            TOP + ph + 14.0,
            escape(&text),
            px = sx(x)
        );
    }
    let _ = write!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/><text x="{}" y="{}" class="axis" text-anchor="middle">{}</text><text x="14" y="{}" class="axis" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>"#,
        LEFT + pw / 2.0,
        height - 6.0,
        escape(&c.x_label),
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(&c.y_label)
    );

    // Lines (one polyline per unbroken run; a lone point is a dot) and legend.
    for (i, series) in c.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let plotted = runs(&series.points, |x, y| {
            (x.is_finite() && usable(y)).then(|| (sx(x), sy(y)))
        });
        for run in &plotted {
            if let [(cx, cy)] = run[..] {
                let _ = write!(
                    s,
                    r#"<circle class="series" cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{colour}"/>"#
                );
            } else {
                let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = write!(
                    s,
                    r#"<polyline class="series" fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
                    pts.join(" ")
                );
            }
        }
        let ly = TOP + 10.0 + i as f64 * 16.0;
        let _ = write!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}" class="legend">{}</text>"#,
            LEFT + pw + 28.0,
            LEFT + pw + 32.0,
            ly + 4.0,
            escape(&series.name),
            lx = LEFT + pw + 12.0
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>, y_log: bool) -> Chart {
        Chart {
            title: "a<b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series,
            x_ticks: None,
            y_log,
            size: (600.0, 260.0),
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.0, 0.37);
        assert!(t.len() >= 3 && t.len() <= 7, "{t:?}");
        assert_eq!(
            log_ticks(1.0, 100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(
            log_ticks(0.01, 1000.0),
            vec![0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
        );
    }

    #[test]
    fn empty_chart_says_so_and_text_is_escaped() {
        let svg = line_chart(&chart(vec![], false));
        assert!(svg.contains("n/a") && svg.contains("a&lt;b"));
        assert!(!has_points(&chart(vec![], false)));
    }

    #[test]
    fn a_gap_breaks_the_line() {
        let s = Series {
            name: "p99".into(),
            points: vec![
                (0.0, 1.0),
                (1.0, 2.0),
                (2.0, f64::NAN),
                (3.0, 3.0),
                (4.0, 4.0),
                (5.0, f64::NAN),
                (6.0, 5.0),
            ],
        };
        let svg = line_chart(&chart(vec![s], false));
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "the lone point is a dot");
    }

    #[test]
    fn a_log_axis_leaves_out_what_it_cannot_show() {
        let s = Series {
            name: "d".into(),
            points: vec![(0.0, 0.0), (1.0, 2.0), (2.0, 700.0)],
        };
        let svg = line_chart(&chart(vec![s], true));
        assert!(svg.contains(">1000<") && svg.contains(">1<"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 1);
    }
}
