//! The SVG charts of the report: plain line charts, no dependencies.

use std::fmt::{self, Write as _};

use simpletextim_loadgen::report::Report;

use super::results::Results;

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// Width and height of a chart.
const W: f64 = 640.0;
const H: f64 = 360.0;
/// Margins: left, right, top, bottom.
const L: f64 = 80.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;

/// The axes of a chart: both linear from 0 to a round maximum.
struct Frame {
    x_max: f64,
    y_max: f64,
}

impl Frame {
    /// Axes that fit every point.
    fn fit(series: &[Series<'_>]) -> Frame {
        let all = || series.iter().flat_map(|s| s.points.iter().copied());
        Frame {
            x_max: nice(all().map(|p| p.0).fold(0.0, f64::max)),
            y_max: nice(all().map(|p| p.1).fold(0.0, f64::max)),
        }
    }

    fn px(&self, x: f64) -> f64 {
        L + x / self.x_max * (W - L - R)
    }

    fn py(&self, y: f64) -> f64 {
        H - B - y / self.y_max * (H - T - B)
    }

    /// The opening tag, background, title, grid, ticks, axes and axis labels.
    fn draw(&self, s: &mut String, title: &str, x_label: &str, y_label: &str) -> fmt::Result {
        let (px, py) = (|x| self.px(x), |y| self.py(y));
        let (x_max, y_max) = (self.x_max, self.y_max);
        writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        )?;
        writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#)?;
        writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
            W / 2.0,
            esc(title)
        )?;
        for i in 0..=5 {
            let f = f64::from(i) / 5.0;
            let (x, y) = (px(f * x_max), py(f * y_max));
            writeln!(
                s,
                r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                W - R
            )?;
            writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                L - 6.0,
                y + 4.0,
                tick(f * y_max)
            )?;
            writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                H - B + 18.0,
                tick(f * x_max)
            )?;
        }
        writeln!(
            s,
            r#"<line x1="{L}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
            H - B,
            W - R,
            H - B
        )?;
        writeln!(
            s,
            r#"<line x1="{L}" y1="{T}" x2="{L}" y2="{:.1}" stroke="black"/>"#,
            H - B
        )?;
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (L + W - R) / 2.0,
            H - 10.0,
            esc(x_label)
        )?;
        writeln!(
            s,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            (T + H - B) / 2.0,
            (T + H - B) / 2.0,
            esc(y_label)
        )?;
        Ok(())
    }

    /// One series: its line, its points and its legend entry (the `k`th).
    fn draw_series(&self, s: &mut String, k: usize, se: &Series<'_>) -> fmt::Result {
        let (px, py) = (|x| self.px(x), |y| self.py(y));
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            se.color,
            pts.join(" ")
        )?;
        for &(x, y) in &se.points {
            writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                se.color
            )?;
        }
        let ly = T + 4.0 + 16.0 * k as f64;
        writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            L + 12.0,
            ly,
            se.color,
            L + 30.0,
            ly + 5.0,
            esc(se.name)
        )?;
        Ok(())
    }
}

/// A plain SVG line chart with axes, ticks and a legend. Both axes are linear from 0.
fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let frame = Frame::fit(series);
    let mut s = String::new();
    frame
        .draw(&mut s, title, x_label, y_label)
        .and_then(|()| {
            (series.iter().enumerate()).try_for_each(|(k, se)| frame.draw_series(&mut s, k, se))
        })
        .expect("formatting into a String does not fail");
    s.push_str("</svg>\n");
    s
}

/// A round axis maximum at or above `x` (1, 2 or 5 times a power of ten).
fn nice(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * p)
}

fn tick(x: f64) -> String {
    if x >= 1e6 {
        format!("{}M", trim(x / 1e6))
    } else if x >= 1e3 {
        format!("{}k", trim(x / 1e3))
    } else {
        trim(x)
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency percentiles of the open-loop scenarios against the deliveries per second they
/// offer (rate × clients), and the p99 of the Redis pub/sub reference beside them where it
/// ran.
pub fn latency_chart(results: &Results) -> String {
    let pts = results.open_loop_points();
    let line = |pick: fn(&Report) -> u64| -> Vec<(f64, f64)> {
        pts.iter()
            .map(|&(rate, r)| (rate as f64 * r.clients as f64, pick(r) as f64 / 1000.0))
            .collect()
    };
    let reference: Vec<(f64, f64)> = results
        .open_loop_reference_points()
        .iter()
        .map(|&(rate, r)| {
            (
                rate as f64 * r.clients as f64,
                r.latency_us.p99 as f64 / 1000.0,
            )
        })
        .collect();
    let mut series = vec![
        Series {
            name: "p50",
            color: "#1b9e77",
            points: line(|r| r.latency_us.p50),
        },
        Series {
            name: "p99",
            color: "#d95f02",
            points: line(|r| r.latency_us.p99),
        },
        Series {
            name: "p99.9",
            color: "#7570b3",
            points: line(|r| r.latency_us.p999),
        },
    ];
    if !reference.is_empty() {
        series.push(Series {
            name: "p99, Redis pub/sub",
            color: "#e7298a",
            points: reference,
        });
    }
    line_chart(
        "fanout open loop: latency against offered load",
        "offered deliveries per second",
        "latency (ms)",
        &series,
    )
}

/// Deliveries per second of the fan-out floods against their client count.
pub fn throughput_chart(results: &Results) -> String {
    let mut pts: Vec<(f64, f64)> = results
        .scenarios
        .iter()
        .filter(|sc| sc.id == "fanout-flood" || sc.id.starts_with("fanout-scale"))
        .filter_map(|sc| sc.median.as_ref())
        .map(|r| (r.clients as f64, r.deliveries_per_s))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    line_chart(
        "fanout flood: deliveries per second against clients",
        "clients logged in",
        "deliveries per second",
        &[Series {
            name: "deliveries/s (median)",
            color: "#1f78b4",
            points: pts,
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers_are_round() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(3.2e6), 5e6);
        assert_eq!(nice(1000.0), 1000.0);
        assert_eq!(nice(1001.0), 2000.0);
        assert_eq!(tick(2_500_000.0), "2.5M");
        assert_eq!(tick(400.0), "400");
    }

    #[test]
    fn chart_places_points_exactly() {
        let svg = line_chart(
            "t",
            "x",
            "y",
            &[Series {
                name: "a<b",
                color: "red",
                points: vec![(0.0, 0.0), (10.0, 5.0)],
            }],
        );
        assert!(svg.starts_with("<svg "));
        assert!(svg.ends_with("</svg>\n"));
        // x 0..10 over 80..620, y 0..5 over 310..40.
        assert!(svg.contains(r#"points="80.0,310.0 620.0,40.0""#), "{svg}");
        assert!(svg.contains("a&lt;b"));
    }
}
