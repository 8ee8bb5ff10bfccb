//! Charts drawn on the server as SVG: no script, no library, readable offline.

use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup};

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;

/// One series of a chart.
pub(crate) struct Series<'a> {
    /// The legend's label.
    pub(crate) label: String,
    /// One value per bucket, oldest first.
    pub(crate) values: &'a [f64],
    /// The colour class (`c0` … `c7`).
    pub(crate) class: String,
}

/// How a chart draws its series.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Bars stacked per bucket.
    Stacked,
    /// One line per series.
    Lines,
}

/// A chart with a title, its total as a caption, axes and a legend.
pub(crate) fn chart(
    id: &str,
    title: &str,
    unit: &str,
    kind: Kind,
    series: &[Series<'_>],
    start: DateTime<Utc>,
    bucket_secs: i64,
) -> Markup {
    let buckets = series.first().map_or(0, |s| s.values.len()).max(1);
    let max = match kind {
        Kind::Stacked => (0..buckets)
            .map(|b| series.iter().map(|s| value(s.values, b)).sum::<f64>())
            .fold(0.0, f64::max),
        Kind::Lines => series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max),
    };
    let top = nice_ceiling(max);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let step = plot_w / buckets as f64;
    let y = |v: f64| TOP + plot_h - (v / top) * plot_h;
    let end = start + Duration::seconds(bucket_secs * buckets as i64);
    let total: f64 = match kind {
        Kind::Stacked => series.iter().flat_map(|s| s.values.iter()).sum(),
        Kind::Lines => max,
    };
    let mut bars = Vec::new();
    if kind == Kind::Stacked {
        for b in 0..buckets {
            let mut base = 0.0;
            for s in series {
                let v = value(s.values, b);
                if v > 0.0 {
                    bars.push(Bar {
                        class: &s.class,
                        label: &s.label,
                        value: v,
                        x: LEFT + b as f64 * step + 0.5,
                        y: y(base + v),
                        w: (step - 1.0).max(0.5),
                        h: y(base) - y(base + v),
                    });
                }
                base += v;
            }
        }
    }
    let caption = match kind {
        Kind::Stacked => format!("{} {unit} in all", format_number(total)),
        Kind::Lines => format!("peak {} {unit}", format_number(total)),
    };
    html! {
        figure.chart id=(id) {
            figcaption {
                strong { (title) } " "
                span.muted data-total=(format_number(total)) { (caption) }
            }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title)
                preserveAspectRatio="none" {
                line.axis x1=(LEFT) y1=(y(0.0)) x2=(WIDTH - 4.0) y2=(y(0.0)) {}
                line.grid x1=(LEFT) y1=(y(top / 2.0)) x2=(WIDTH - 4.0) y2=(y(top / 2.0)) {}
                line.grid x1=(LEFT) y1=(y(top)) x2=(WIDTH - 4.0) y2=(y(top)) {}
                text.tick x=(LEFT - 4.0) y=(y(top) + 4.0) text-anchor="end" { (format_number(top)) }
                text.tick x=(LEFT - 4.0) y=(y(top / 2.0) + 4.0) text-anchor="end" {
                    (format_number(top / 2.0))
                }
                text.tick x=(LEFT - 4.0) y=(y(0.0)) text-anchor="end" { "0" }
                text.tick x=(LEFT) y=(HEIGHT - 4.0) { (start.format("%H:%M")) }
                text.tick x=(WIDTH - 4.0) y=(HEIGHT - 4.0) text-anchor="end" {
                    (end.format("%H:%M")) " UTC"
                }
                @match kind {
                    Kind::Stacked => {
                        @for bar in &bars {
                            rect class=(bar.class) x=(format!("{:.1}", bar.x)) y=(format!("{:.1}", bar.y))
                                width=(format!("{:.1}", bar.w)) height=(format!("{:.1}", bar.h)) {
                                title { (bar.label) ": " (format_number(bar.value)) }
                            }
                        }
                    }
                    Kind::Lines => {
                        @for s in series {
                            polyline class=(format!("line {}", s.class)) fill="none"
                                points=(points(s.values, step, &y)) {}
                        }
                    }
                }
            }
            ul.legend {
                @for s in series {
                    li { span class=(format!("swatch {}", s.class)) {} (s.label) }
                }
            }
        }
    }
}

struct Bar<'a> {
    class: &'a str,
    label: &'a str,
    value: f64,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

fn value(values: &[f64], b: usize) -> f64 {
    values
        .get(b)
        .copied()
        .filter(|v| v.is_finite())
        .unwrap_or(0.0)
}

fn points(values: &[f64], step: f64, y: &dyn Fn(f64) -> f64) -> String {
    values
        .iter()
        .enumerate()
        .map(|(b, v)| {
            let v = if v.is_finite() { *v } else { 0.0 };
            format!("{:.1},{:.1}", LEFT + (b as f64 + 0.5) * step, y(v))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `max` (1 for an empty chart).
fn nice_ceiling(max: f64) -> f64 {
    if !max.is_finite() || max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= max)
        .unwrap_or(10.0 * magnitude)
}

/// `1234` as `1,234`; fractions with one decimal.
pub(crate) fn format_number(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_owned();
    }
    if v.fract().abs() > 1e-9 && v.abs() < 100.0 {
        return format!("{v:.1}");
    }
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// A horizontal gauge: `used` of `allowed` (unlimited when `allowed` is 0 or unknown).
pub(crate) fn gauge(used: i64, allowed: Option<i64>) -> Markup {
    let share = match allowed {
        Some(a) if a > 0 => (used as f64 / a as f64).clamp(0.0, 1.0),
        _ => 0.0,
    };
    let class = match share {
        s if s >= 0.95 => "gauge-fill hot",
        s if s >= 0.75 => "gauge-fill warm",
        _ => "gauge-fill",
    };
    html! {
        svg.gauge viewBox="0 0 300 16" role="img"
            aria-label=(format!("{used} of {} requests", allowed.map_or("unlimited".to_owned(), |a| a.to_string()))) {
            rect.gauge-track x="0" y="0" width="300" height="16" rx="3" {}
            rect class=(class) x="0" y="0" width=(format!("{:.1}", 300.0 * share)) height="16" rx="3" {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(420.0), 500.0);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(format_number(1_234_567.0), "1,234,567");
        assert_eq!(format_number(12.5), "12.5");
        assert_eq!(format_number(0.0), "0");
    }

    #[test]
    fn a_stacked_chart_draws_one_bar_per_nonzero_value() {
        let applied = [1.0, 0.0, 3.0];
        let markup = chart(
            "t",
            "Applied",
            "jobs",
            Kind::Stacked,
            &[Series {
                label: "applied".into(),
                values: &applied,
                class: "c0".into(),
            }],
            Utc::now(),
            60,
        )
        .into_string();
        assert_eq!(markup.matches("<rect").count(), 2);
        assert!(markup.contains("4 jobs in all"));
    }
}
