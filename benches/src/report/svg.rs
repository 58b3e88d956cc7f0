//! Hand-written SVG charts: a line chart and a grouped bar chart, 720 × 360.
//!
//! Non-finite values are skipped, degenerate ranges (no point, one point, all equal)
//! are widened, ticks are "nice" (1-2-5 steps) and every text is XML-escaped.

use std::fmt::Write as _;

/// Canvas size.
const W: f64 = 720.0;
/// See [`W`].
const H: f64 = 360.0;
/// Plot area: left, right, top, bottom edges.
const LEFT: f64 = 72.0;
/// See [`LEFT`].
const RIGHT: f64 = 550.0;
/// See [`LEFT`].
const TOP: f64 = 36.0;
/// See [`LEFT`].
const BOTTOM: f64 = 305.0;
/// Where the legend starts (x).
const LEGEND_X: f64 = 562.0;
/// Legend rows that fit.
const LEGEND_ROWS: usize = 15;
/// Colour-blind-friendly palette (Okabe–Ito, with black swapped for grey).
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#999999", "#F0E442",
];

/// One line of a line chart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Line<'a> {
    /// Legend label.
    pub(crate) label: &'a str,
    /// (x, y) points, x ascending; non-finite ones break the line.
    pub(crate) points: &'a [(f64, f64)],
}

/// One group of bars (one metric name) of a bar chart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BarGroup {
    /// Label under the group.
    pub(crate) label: String,
    /// The bars, one per variant.
    pub(crate) bars: Vec<Bar>,
}

/// One bar: a value with a `lo`–`hi` whisker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bar {
    /// Variant (legend entry, same colour across groups).
    pub(crate) variant: String,
    /// Height.
    pub(crate) value: f64,
    /// Whisker bottom.
    pub(crate) lo: f64,
    /// Whisker top.
    pub(crate) hi: f64,
}

/// A count or index as a float (saturating: charts never have 2³² of anything).
fn float(i: usize) -> f64 {
    f64::from(u32::try_from(i).unwrap_or(u32::MAX))
}

/// Escapes the XML special characters of `s`.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if c.is_control() && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Nice tick values covering `[lo, hi]` with about `target` intervals, in steps of
/// 1, 2 or 5 × 10ⁿ: the first tick is ≤ `lo`, the last ≥ `hi`. Degenerate input
/// (non-finite, `hi ≤ lo`, a range that overflows) gives the finite ends as they are.
pub(crate) fn nice_ticks(lo: f64, hi: f64, target: u32) -> Vec<f64> {
    let range = hi - lo;
    if !(lo.is_finite() && hi.is_finite() && range.is_finite()) || range <= 0.0 {
        return [lo, hi].into_iter().filter(|v| v.is_finite()).collect();
    }
    let rough = range / f64::from(target.max(1));
    let mag = 10f64.powf(rough.log10().floor());
    let norm = rough / mag;
    let step = mag
        * [1.0, 2.0, 5.0]
            .into_iter()
            .find(|&s| norm <= s)
            .unwrap_or(10.0);
    if !(step.is_finite() && step > 0.0) {
        return vec![lo, hi];
    }
    let start = (lo / step).floor();
    let mut ticks = Vec::new();
    for i in 0..=200u32 {
        let t = (start + f64::from(i)) * step;
        ticks.push(t);
        if t >= hi - step * 1e-9 {
            break;
        }
    }
    ticks
}

/// A tick label: short, with a k/M/G/T suffix for big values, as many decimals as the
/// step needs.
fn tick_label(v: f64, step: f64, max_abs: f64) -> String {
    if v.abs() < step * 1e-6 {
        return "0".to_owned();
    }
    if max_abs < 1e-2 {
        return format!("{v:.1e}");
    }
    let (_, div, suffix) = [
        (1e12, 1e12, "T"),
        (1e9, 1e9, "G"),
        (1e6, 1e6, "M"),
        (1e4, 1e3, "k"),
    ]
    .into_iter()
    .find(|(at, ..)| max_abs >= *at)
    .unwrap_or((1.0, 1.0, ""));
    let mut decimals = 0;
    let mut s = step / div;
    while s < 0.999 && decimals < 6 {
        s *= 10.0;
        decimals += 1;
    }
    format!("{:.*}{suffix}", decimals, v / div)
}

/// A linear axis: data range widened to nice ticks.
struct Axis {
    /// Tick values, ascending; the first and last are the axis ends.
    ticks: Vec<f64>,
}

impl Axis {
    /// The axis for `values` (non-finite skipped); with `zero`, 0 is always in range.
    fn new(values: impl Iterator<Item = f64>, zero: bool) -> Self {
        let (mut lo, mut hi) = values
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if lo > hi {
            (lo, hi) = (0.0, 1.0);
        }
        if zero {
            (lo, hi) = (lo.min(0.0), hi.max(0.0));
        }
        if hi <= lo {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            (lo, hi) = if zero && lo == 0.0 {
                (0.0, pad)
            } else {
                (lo - pad, hi + pad)
            };
        }
        let mut ticks = nice_ticks(lo, hi, 5);
        if ticks.len() < 2 {
            ticks = vec![lo, hi];
        }
        Self { ticks }
    }

    /// Lowest value.
    fn lo(&self) -> f64 {
        self.ticks.first().copied().unwrap_or(0.0)
    }

    /// Highest value.
    fn hi(&self) -> f64 {
        self.ticks.last().copied().unwrap_or(1.0)
    }

    /// Maps `v` onto the pixel interval `p0..p1` (clamped when the maths breaks down).
    fn map(&self, v: f64, p0: f64, p1: f64) -> f64 {
        let f = (v - self.lo()) / (self.hi() - self.lo());
        let p = p0 + f * (p1 - p0);
        if p.is_finite() { p } else { p0 }
    }

    /// Tick labels, paired with their values.
    fn labels(&self) -> Vec<(f64, String)> {
        let step = match self.ticks.as_slice() {
            [a, b, ..] => b - a,
            _ => 1.0,
        };
        let max_abs = self.lo().abs().max(self.hi().abs());
        self.ticks
            .iter()
            .map(|&t| (t, tick_label(t, step, max_abs)))
            .collect()
    }
}

/// Opening tag, background and title.
fn header(svg: &mut String, title: &str) {
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{:.1}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        W / 2.0,
        escape(title)
    );
}

/// The y axis (grid, ticks, label) and the plot frame.
fn y_axis(svg: &mut String, y: &Axis, label: &str) {
    for (v, text) in y.labels() {
        let py = y.map(v, BOTTOM, TOP);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{RIGHT}\" y2=\"{py:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            py + 4.0,
            escape(&text)
        );
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        RIGHT - LEFT,
        BOTTOM - TOP,
        (TOP + BOTTOM) / 2.0,
        escape(label)
    );
}

/// A centred "no data" notice.
fn no_data(svg: &mut String) {
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#999\" font-size=\"14\">no data</text>",
        (LEFT + RIGHT) / 2.0,
        (TOP + BOTTOM) / 2.0
    );
}

/// `s` cut to `max` characters (with an ellipsis).
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Legend entries at the right: `swatch` draws the marker at (x, y). Labels too long
/// are cut, the full label kept as a tooltip.
fn legend(svg: &mut String, labels: &[&str], swatch: impl Fn(usize, f64, f64) -> String) {
    for (i, label) in labels.iter().enumerate() {
        let y = TOP + 8.0 + 18.0 * float(i);
        if i == LEGEND_ROWS && labels.len() > LEGEND_ROWS + 1 {
            let _ = writeln!(
                svg,
                "<text x=\"{LEGEND_X}\" y=\"{:.1}\">… {} more</text>",
                y + 4.0,
                labels.len() - LEGEND_ROWS
            );
            break;
        }
        let _ = writeln!(
            svg,
            "<g>{}<text x=\"{:.1}\" y=\"{:.1}\"><title>{}</title>{}</text></g>",
            swatch(i, LEGEND_X, y),
            LEGEND_X + 26.0,
            y + 4.0,
            escape(label),
            escape(&truncate(label, 22))
        );
    }
}

/// Colour and dash pattern of line `i` (dashed once the palette wraps).
fn style(i: usize) -> (&'static str, &'static str) {
    let dash = if (i / PALETTE.len()) % 2 == 1 {
        " stroke-dasharray=\"6 3\""
    } else {
        ""
    };
    (PALETTE[i % PALETTE.len()], dash)
}

/// A line chart of `lines` with axes, ticks, labels and a legend.
pub(crate) fn line_chart(title: &str, x_label: &str, y_label: &str, lines: &[Line<'_>]) -> String {
    let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
    let all = || lines.iter().flat_map(|l| l.points.iter().filter(finite));
    let x = Axis::new(all().map(|p| p.0), false);
    let y = Axis::new(all().map(|p| p.1), true);
    let mut svg = String::new();
    header(&mut svg, title);
    y_axis(&mut svg, &y, y_label);
    for (v, text) in x.labels() {
        let px = x.map(v, LEFT, RIGHT);
        let _ = writeln!(
            svg,
            "<line x1=\"{px:.1}\" y1=\"{BOTTOM}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            BOTTOM + 5.0,
            BOTTOM + 18.0,
            escape(&text)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        (LEFT + RIGHT) / 2.0,
        H - 14.0,
        escape(x_label)
    );
    let total = all().count();
    if total == 0 {
        no_data(&mut svg);
    }
    for (i, line) in lines.iter().enumerate() {
        let (colour, dash) = style(i);
        let px = |&(a, b): &(f64, f64)| (x.map(a, LEFT, RIGHT), y.map(b, BOTTOM, TOP));
        for segment in line.points.split(|p| !finite(&p)) {
            if segment.len() >= 2 {
                let pts: Vec<String> = segment
                    .iter()
                    .map(px)
                    .map(|(a, b)| format!("{a:.1},{b:.1}"))
                    .collect();
                let _ = writeln!(
                    svg,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
                    pts.join(" ")
                );
            }
            if segment.len() == 1 || total <= 40 {
                for (a, b) in segment.iter().map(px) {
                    let _ = writeln!(
                        svg,
                        "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"2.5\" fill=\"{colour}\"/>"
                    );
                }
            }
        }
    }
    let labels: Vec<&str> = lines.iter().map(|l| l.label).collect();
    legend(&mut svg, &labels, |i, lx, ly| {
        let (colour, dash) = style(i);
        format!(
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
            lx + 20.0
        )
    });
    svg.push_str("</svg>\n");
    svg
}

/// A grouped bar chart: one group per [`BarGroup`], one colour per variant, whiskers
/// from `lo` to `hi`, a dashed reference line at 1.
pub(crate) fn bar_chart(title: &str, y_label: &str, groups: &[BarGroup]) -> String {
    let bars = || groups.iter().flat_map(|g| g.bars.iter());
    let y = Axis::new(
        bars().flat_map(|b| [b.value, b.lo, b.hi]).chain([1.0]),
        true,
    );
    let mut variants: Vec<&str> = Vec::new();
    for b in bars() {
        if !variants.contains(&b.variant.as_str()) {
            variants.push(&b.variant);
        }
    }
    let colour =
        |v: &str| PALETTE[variants.iter().position(|x| *x == v).unwrap_or(0) % PALETTE.len()];
    let mut svg = String::new();
    header(&mut svg, title);
    y_axis(&mut svg, &y, y_label);
    if groups.is_empty() {
        no_data(&mut svg);
    }
    let n = float(groups.len()).max(1.0);
    let group_w = (RIGHT - LEFT) / n;
    let zero = y.map(0.0, BOTTOM, TOP);
    for (gi, g) in groups.iter().enumerate() {
        let gx = LEFT + group_w * float(gi);
        let k = float(g.bars.len()).max(1.0);
        let bw = (group_w * 0.8 / k).min(60.0);
        let x0 = gx + (group_w - bw * k) / 2.0;
        for (bi, b) in g.bars.iter().enumerate() {
            let bx = x0 + bw * float(bi);
            let cx = bx + bw / 2.0;
            let mut top = f64::INFINITY;
            if b.value.is_finite() {
                let py = y.map(b.value, BOTTOM, TOP);
                top = top.min(py);
                let _ = writeln!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
                    bx + 1.0,
                    py.min(zero),
                    (bw - 2.0).max(1.0),
                    (py - zero).abs(),
                    colour(&b.variant),
                    escape(&b.variant),
                    escape(&format!("{:.3}", b.value))
                );
            }
            if b.lo.is_finite() && b.hi.is_finite() {
                let (lo, hi) = (y.map(b.lo, BOTTOM, TOP), y.map(b.hi, BOTTOM, TOP));
                top = top.min(hi.min(lo));
                let c = bw * 0.15;
                let _ = writeln!(
                    svg,
                    "<path d=\"M{cx:.1} {lo:.1}V{hi:.1}M{:.1} {lo:.1}H{:.1}M{:.1} {hi:.1}H{:.1}\" stroke=\"#222\" fill=\"none\"/>",
                    cx - c,
                    cx + c,
                    cx - c,
                    cx + c
                );
            }
            if top.is_finite() && b.value.is_finite() {
                let _ = writeln!(
                    svg,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{}</text>",
                    top - 3.0,
                    escape(&format!("{:.2}", b.value))
                );
            }
        }
        let max_chars = (group_w / 6.5).floor().clamp(3.0, 60.0);
        let chars = (3..=60u32)
            .rev()
            .find(|c| f64::from(*c) <= max_chars)
            .unwrap_or(3);
        let chars = usize::try_from(chars).unwrap_or(3);
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\"><title>{}</title>{}</text>",
            gx + group_w / 2.0,
            BOTTOM + 16.0,
            escape(&g.label),
            escape(&truncate(&g.label, chars))
        );
    }
    let one = y.map(1.0, BOTTOM, TOP);
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{one:.1}\" x2=\"{RIGHT}\" y2=\"{one:.1}\" stroke=\"#555\" stroke-dasharray=\"4 3\"/>"
    );
    legend(&mut svg, &variants, |i, lx, ly| {
        format!(
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"20\" height=\"10\" fill=\"{}\"/>",
            ly - 5.0,
            PALETTE[i % PALETTE.len()]
        )
    });
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::check::well_formed;

    #[test]
    fn nice_ticks_use_1_2_5_steps() {
        assert_eq!(
            nice_ticks(0.0, 97.0, 5),
            [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(nice_ticks(3.0, 7.0, 4), [3.0, 4.0, 5.0, 6.0, 7.0]);
        let t = nice_ticks(0.13, 0.87, 5);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(t.len(), want.len());
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{t:?}"
        );
        assert_eq!(
            nice_ticks(-12.0, 1.0e6, 5),
            [-500_000.0, 0.0, 500_000.0, 1_000_000.0]
        );
        assert_eq!(
            nice_ticks(0.0, 1.0e6, 5),
            [0.0, 200_000.0, 400_000.0, 600_000.0, 800_000.0, 1_000_000.0]
        );
        assert_eq!(nice_ticks(5.0, 5.0, 5), [5.0, 5.0]);
        assert_eq!(nice_ticks(f64::NAN, 1.0, 5), [1.0]);
        assert!(nice_ticks(-f64::MAX, f64::MAX, 5).len() <= 2);
        assert!(nice_ticks(1e-3, 1e12, 5).len() <= 7);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(200_000.0, 200_000.0, 1e6), "0.2M");
        assert_eq!(tick_label(20_000.0, 5_000.0, 40_000.0), "20k");
        assert_eq!(tick_label(1_500_000.0, 500_000.0, 2e6), "1.5M");
        assert_eq!(tick_label(0.4, 0.2, 1.0), "0.4");
        assert_eq!(tick_label(0.0, 0.2, 1.0), "0");
        assert_eq!(tick_label(0.0002, 0.0001, 0.0005), "2.0e-4");
    }

    #[test]
    fn line_charts_are_well_formed_with_every_label() {
        let a = [(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, 4.0)];
        let b = [(0.5, 2.0)];
        let lines = [
            Line {
                label: "a <&> \"quoted\"",
                points: &a,
            },
            Line {
                label: "b",
                points: &b,
            },
        ];
        let svg = line_chart("t & <t>", "x (s)", "y", &lines);
        well_formed(&svg).unwrap();
        assert!(svg.contains("a &lt;&amp;&gt; &quot;quoted&quot;"));
        assert!(svg.contains(">b</text>"));
        // Degenerate input still draws a valid chart.
        let flat = [(1.0, 7.0), (1.0, 7.0)];
        let weird = [(f64::INFINITY, 1.0), (0.0, 1e300), (1.0, -1e300)];
        for pts in [&[][..], &b, &flat, &weird] {
            let svg = line_chart(
                "t",
                "x",
                "y",
                &[Line {
                    label: "only",
                    points: pts,
                }],
            );
            well_formed(&svg).unwrap();
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
        well_formed(&line_chart("empty", "x", "y", &[])).unwrap();
        let many: Vec<Line<'_>> = (0..30)
            .map(|_| Line {
                label: "l",
                points: &a,
            })
            .collect();
        well_formed(&line_chart("many", "x", "y", &many)).unwrap();
    }

    #[test]
    fn bar_charts_are_well_formed_with_every_label() {
        let bar = |v: &str, value: f64| Bar {
            variant: v.into(),
            value,
            lo: value * 0.9,
            hi: value * 1.1,
        };
        let groups = [
            BarGroup {
                label: "IOPS ↑".into(),
                bars: vec![bar("sitrep", 0.98), bar("untracked", 1.0)],
            },
            BarGroup {
                label: "time ↓".into(),
                bars: vec![bar("cat | nc", 2.5), bar("rsync", 1.0), bar("x", f64::NAN)],
            },
        ];
        let svg = bar_chart("medians", "× baseline", &groups);
        well_formed(&svg).unwrap();
        for label in [
            "sitrep",
            "untracked",
            "cat | nc",
            "rsync",
            "IOPS ↑",
            "time ↓",
        ] {
            assert!(svg.contains(&escape(label)), "{label}");
        }
        assert!(!svg.contains("NaN"));
        well_formed(&bar_chart("none", "y", &[])).unwrap();
    }
}
