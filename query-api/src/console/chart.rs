//! The balance-over-time chart of an account page, drawn on the server as inline SVG
//! (issue 17): no script, no external image, so it shows under the console's strict
//! Content-Security-Policy and on an air-gapped network. The SVG carries no `style`
//! attribute (the policy allows styles only from the console's stylesheet); colours
//! come from classes there.

use chrono::{DateTime, Utc};

use super::format;

/// The drawing's size in SVG user units; the element scales to its container's width.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
/// Room for the axis labels.
const MARGIN_LEFT: f64 = 110.0;
const MARGIN_RIGHT: f64 = 10.0;
const MARGIN_TOP: f64 = 12.0;
const MARGIN_BOTTOM: f64 = 30.0;

/// One point of the chart: the balance right after the movement recorded at `at`, in
/// minor units.
#[derive(Debug, Clone, Copy)]
pub struct BalancePoint {
    pub at: DateTime<Utc>,
    pub balance: i64,
}

/// An SVG step chart of `points` (any order; drawn in time order), with the lowest and
/// highest balance and the first and last time as labels. `None` when there is nothing
/// to draw. Every text in it is made here from numbers and times, none from users.
pub fn balance_svg(points: &[BalancePoint], currency: &str) -> Option<String> {
    let mut points = points.to_vec();
    points.sort_by_key(|point| point.at);
    let first = points.first()?;
    let last = points.last()?;
    let low = points.iter().map(|point| point.balance).min()?.min(0);
    let high = points.iter().map(|point| point.balance).max()?.max(0);
    let start = first.at.timestamp_millis() as f64;
    let span_ms = (last.at.timestamp_millis() as f64 - start).max(1.0);
    let span_balance = ((high as f64) - (low as f64)).max(1.0);
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x = |at: DateTime<Utc>| {
        if points.len() == 1 {
            MARGIN_LEFT + plot_width
        } else {
            MARGIN_LEFT + (at.timestamp_millis() as f64 - start) / span_ms * plot_width
        }
    };
    let y = |balance: i64| MARGIN_TOP + (high as f64 - balance as f64) / span_balance * plot_height;
    // A step line: the balance holds from one movement to the next.
    let mut path = format!("M{:.1},{:.1}", MARGIN_LEFT, y(first.balance));
    let mut previous = first.balance;
    for point in &points {
        path.push_str(&format!(
            " L{:.1},{:.1} L{:.1},{:.1}",
            x(point.at),
            y(previous),
            x(point.at),
            y(point.balance)
        ));
        previous = point.balance;
    }
    let zero = y(0);
    let text = |x: f64, y: f64, anchor: &str, label: &str| {
        format!(r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" class="chart-label">{label}</text>"#)
    };
    let first_day = first.at.format("%Y-%m-%d %H:%M UTC").to_string();
    let last_day = last.at.format("%Y-%m-%d %H:%M UTC").to_string();
    Some(format!(
        concat!(
            r#"<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg">"#,
            r#"<title id="chart-title">Balance over time, from {low_label} to {high_label}</title>"#,
            r#"<line class="chart-axis" x1="{left}" y1="{zero:.1}" x2="{right}" y2="{zero:.1}"/>"#,
            r#"<path class="chart-line" d="{path}"/>"#,
            "{high_text}{low_text}{first_text}{last_text}</svg>"
        ),
        width = WIDTH,
        height = HEIGHT,
        low_label = format::money(low, currency),
        high_label = format::money(high, currency),
        left = MARGIN_LEFT,
        right = WIDTH - MARGIN_RIGHT,
        zero = zero,
        path = path,
        high_text = text(
            MARGIN_LEFT - 6.0,
            MARGIN_TOP + 10.0,
            "end",
            &format::money(high, currency)
        ),
        low_text = text(
            MARGIN_LEFT - 6.0,
            MARGIN_TOP + plot_height,
            "end",
            &format::money(low, currency)
        ),
        first_text = text(MARGIN_LEFT, HEIGHT - 8.0, "start", &first_day),
        last_text = text(WIDTH - MARGIN_RIGHT, HEIGHT - 8.0, "end", &last_day),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + seconds, 0).expect("time")
    }

    #[test]
    fn nothing_to_draw_is_no_chart() {
        assert!(balance_svg(&[], "EUR").is_none());
    }

    #[test]
    fn the_chart_is_an_svg_step_line_labelled_with_decimal_amounts_and_no_style_attribute() {
        let svg = balance_svg(
            &[
                BalancePoint {
                    at: at(60),
                    balance: 500,
                },
                BalancePoint {
                    at: at(0),
                    balance: 1250,
                },
            ],
            "EUR",
        )
        .expect("a chart");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("12.50 EUR"), "{svg}");
        assert!(svg.contains("0.00 EUR"), "{svg}");
        assert!(svg.contains(r#"class="chart-line""#));
        assert!(!svg.contains("style="));
        // Drawn in time order: the line starts at the earlier, higher balance (top).
        assert!(svg.contains(r#"d="M110.0,12.0"#), "{svg}");
    }

    #[test]
    fn a_single_point_still_draws() {
        let svg = balance_svg(
            &[BalancePoint {
                at: at(0),
                balance: -300,
            }],
            "JPY",
        )
        .expect("a chart");
        assert!(svg.contains("-300 JPY"));
    }
}
