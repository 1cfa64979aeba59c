//! Inline SVG line charts for `report.html`, drawn here rather than by a
//! charting script so the report is one self-contained file that opens offline
//! and stays readable years later. One chart type covers every plot: lines over
//! a linear or logarithmic x axis with "nice" ticks and a legend.

use std::fmt::Write as _;

const WIDTH: f64 = 780.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// Line colours, in series order.
pub const PALETTE: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One line.
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

fn label(v: f64) -> String {
    if v.abs() >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Renders the chart as an `<svg>` element; a chart with no points says so.
pub fn line_chart(c: &Chart) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{}">"#,
        escape(&c.title)
    );
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="16" class="title">{}</text>"#,
        escape(&c.title)
    );
    let all: Vec<(f64, f64)> = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if all.is_empty() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" class="empty">no data</text></svg>"#,
            WIDTH / 2.0 - 30.0,
            HEIGHT / 2.0
        );
        return s;
    }
    let (mut x0, mut x1) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let y1 = all.iter().fold(0f64, |m, p| m.max(p.1)).max(f64::EPSILON) * 1.05;
    if let Some(t) = &c.x_ticks {
        x0 = x0.min(t.iter().map(|p| p.0).fold(f64::MAX, f64::min));
        x1 = x1.max(t.iter().map(|p| p.0).fold(f64::MIN, f64::max));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - y / y1 * ph;

    // Grid and axes.
    for y in ticks(0.0, y1) {
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
        HEIGHT - 6.0,
        escape(&c.x_label),
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(&c.y_label)
    );

    // Lines and legend.
    for (i, series) in c.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let coords: Vec<(f64, f64)> = series
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| (sx(*x), sy(*y)))
            .collect();
        if let [(cx, cy)] = coords[..] {
            let _ = write!(
                s,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{colour}"/>"#
            );
        } else if !coords.is_empty() {
            let pts: Vec<String> = coords
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
                pts.join(" ")
            );
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

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(0.0, 0.37);
        assert!(t.len() >= 3 && t.len() <= 7, "{t:?}");
    }

    #[test]
    fn empty_chart_says_so_and_text_is_escaped() {
        let c = Chart {
            title: "a<b".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![],
            x_ticks: None,
        };
        let svg = line_chart(&c);
        assert!(svg.contains("no data") && svg.contains("a&lt;b"));
    }
}
