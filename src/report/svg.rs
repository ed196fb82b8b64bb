//! Chart geometry: every chart is plain data (rectangles, lines, polylines,
//! circles, texts) that `templates/svg.html` draws as inline SVG. Numbers are
//! computed here, text goes through the template's HTML escaping like every
//! other value: no markup is ever built as a string.

/// One inline SVG picture.
#[derive(Debug, Clone, Default)]
pub struct Svg {
    pub width: u32,
    pub height: u32,
    /// What the picture shows, for screen readers (`aria-label`).
    pub label: String,
    /// Gridlines, drawn first (under everything else).
    pub grid: Vec<Line>,
    pub rects: Vec<Rect>,
    pub lines: Vec<Line>,
    pub polylines: Vec<Polyline>,
    pub circles: Vec<Circle>,
    pub texts: Vec<Text>,
}

#[derive(Debug, Clone)]
pub struct Rect {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    pub class: &'static str,
    /// Hover text (`<title>`); empty for none.
    pub tip: String,
}

#[derive(Debug, Clone)]
pub struct Line {
    pub x1: String,
    pub y1: String,
    pub x2: String,
    pub y2: String,
    pub class: &'static str,
}

#[derive(Debug, Clone)]
pub struct Polyline {
    /// `x,y x,y ...`, numbers only.
    pub points: String,
    pub class: &'static str,
}

#[derive(Debug, Clone)]
pub struct Circle {
    pub cx: String,
    pub cy: String,
    pub class: &'static str,
    pub tip: String,
}

#[derive(Debug, Clone)]
pub struct Text {
    pub x: String,
    pub y: String,
    /// `start`, `middle` or `end`.
    pub anchor: &'static str,
    pub class: &'static str,
    pub text: String,
}

/// A coordinate, one decimal, no trailing `.0`.
pub fn n(x: f64) -> String {
    let x = if x.is_finite() { x } else { 0.0 };
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

fn line((x1, y1): (f64, f64), (x2, y2): (f64, f64), class: &'static str) -> Line {
    Line {
        x1: n(x1),
        y1: n(y1),
        x2: n(x2),
        y2: n(y2),
        class,
    }
}

impl Svg {
    fn new(width: u32, height: u32, label: impl Into<String>) -> Svg {
        Svg {
            width,
            height,
            label: label.into(),
            ..Svg::default()
        }
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, class: &'static str, tip: String) {
        self.rects.push(Rect {
            x: n(x),
            y: n(y),
            w: n(w.max(0.0)),
            h: n(h.max(0.0)),
            class,
            tip,
        });
    }

    fn line(&mut self, from: (f64, f64), to: (f64, f64), class: &'static str) {
        self.lines.push(line(from, to, class));
    }

    fn grid_line(&mut self, from: (f64, f64), to: (f64, f64), class: &'static str) {
        self.grid.push(line(from, to, class));
    }

    fn text(&mut self, x: f64, y: f64, anchor: &'static str, class: &'static str, text: String) {
        self.texts.push(Text {
            x: n(x),
            y: n(y),
            anchor,
            class,
            text,
        });
    }
}

/// A band of a gauge's scale, coloured by what it means for the verdict.
pub struct Zone {
    pub from: f64,
    pub to: f64,
    /// `good`, `warn`, `bad` or `none` (styled as `zone-CLASS`).
    pub class: &'static str,
}

/// A threshold on a gauge's scale.
pub struct Mark {
    pub at: f64,
    pub label: String,
}

const GAUGE_W: f64 = 1000.0;
const HBAR_W: f64 = 480.0;
const GAUGE_PAD: f64 = 12.0;

/// One metric against its thresholds: coloured zones over `[lo, hi]`, the
/// thresholds as ticks with labels (alternating rows so close ones do not
/// collide), and the value as a bar with a marker.
pub fn gauge(label: &str, value: f64, (lo, hi): (f64, f64), zones: &[Zone], marks: &[Mark]) -> Svg {
    let mut svg = Svg::new(GAUGE_W as u32, 78, label);
    let span = (hi - lo).max(f64::EPSILON);
    let x = |v: f64| GAUGE_PAD + (v.clamp(lo, hi) - lo) / span * (GAUGE_W - 2.0 * GAUGE_PAD);
    for z in zones {
        if z.to > z.from {
            svg.rect(
                x(z.from),
                32.0,
                x(z.to) - x(z.from),
                24.0,
                zone_class(z.class),
                String::new(),
            );
        }
    }
    svg.rect(
        x(lo),
        39.0,
        x(value) - x(lo),
        10.0,
        "bar",
        format!("{label}: {}", num(value)),
    );
    let mut marks: Vec<&Mark> = marks.iter().collect();
    marks.sort_by(|a, b| a.at.total_cmp(&b.at));
    for (i, m) in marks.iter().enumerate() {
        let mx = x(m.at);
        let row = if i % 2 == 0 { 12.0 } else { 25.0 };
        svg.line((mx, row + 3.0), (mx, 60.0), "tick");
        let anchor = if mx > GAUGE_W - 90.0 {
            "end"
        } else if mx < 90.0 {
            "start"
        } else {
            "middle"
        };
        svg.text(
            mx,
            row,
            anchor,
            "tick-label",
            format!("{} {}", m.label, num(m.at)),
        );
    }
    let vx = x(value);
    svg.line((vx, 29.0), (vx, 59.0), "value-mark");
    svg.text(x(lo), 72.0, "start", "axis", num(lo));
    svg.text(x(hi), 72.0, "end", "axis", num(hi));
    svg
}

fn zone_class(class: &str) -> &'static str {
    match class {
        "good" => "zone-good",
        "warn" => "zone-warn",
        "bad" => "zone-bad",
        _ => "zone-none",
    }
}

/// Numbers as the verdict's reasons print them: up to 4 decimals, no trailing zeros.
pub fn num(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" || s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Horizontal bars, one per labelled value, sharing one scale.
pub fn hbars(label: &str, rows: &[(String, f64, &'static str, String)], unit: &str) -> Svg {
    let row_h = 26.0;
    let height = (rows.len() as f64 * row_h + 8.0).max(30.0);
    let mut svg = Svg::new(HBAR_W as u32, height as u32, label);
    let max = rows
        .iter()
        .map(|r| r.1)
        .fold(0.0, f64::max)
        .max(f64::EPSILON);
    let (left, right) = (130.0, HBAR_W - 70.0);
    for (i, (name, value, class, tip)) in rows.iter().enumerate() {
        let y = 4.0 + i as f64 * row_h;
        svg.text(left - 8.0, y + 16.0, "end", "label", clip(name, 20));
        svg.rect(
            left,
            y + 4.0,
            (right - left) * value / max,
            16.0,
            class,
            tip.clone(),
        );
        let shown = format!("{}{unit}", num(*value));
        svg.text(
            left + (right - left) * value / max + 6.0,
            y + 16.0,
            "start",
            "label",
            shown,
        );
    }
    svg
}

/// At most `max` characters, with an ellipsis when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

const PLOT_W: f64 = 960.0;
const PLOT_H: f64 = 230.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 34.0;

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten.
pub fn nice_ceil(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 || x.is_infinite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= x - 1e-12)
        .unwrap_or(10.0 * p)
}

/// The frame of a plot over `n` x slots: gridlines with y labels, and at
/// most about 12 x labels. Returns the slot width.
fn frame(svg: &mut Svg, x_labels: &[String], y_max: f64, y_fmt: &dyn Fn(f64) -> String) -> f64 {
    let inner_w = PLOT_W - LEFT - RIGHT;
    let inner_h = PLOT_H - TOP - BOTTOM;
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = TOP + inner_h - inner_h * f64::from(i) / 4.0;
        svg.grid_line(
            (LEFT, y),
            (PLOT_W - RIGHT, y),
            if i == 0 { "axis-line" } else { "grid" },
        );
        svg.text(LEFT - 6.0, y + 4.0, "end", "axis", y_fmt(v));
    }
    let slots = x_labels.len().max(1);
    let slot = inner_w / slots as f64;
    let every = slots.div_ceil(12).max(1);
    for (i, l) in x_labels.iter().enumerate() {
        if i % every == 0 {
            let x = LEFT + slot * (i as f64 + 0.5);
            svg.text(x, PLOT_H - BOTTOM + 16.0, "middle", "axis", l.clone());
        }
    }
    slot
}

/// One stacked column per x slot; each part is (value, class, hover text).
pub fn stacked_columns(
    label: &str,
    x_labels: &[String],
    columns: &[Vec<(f64, &'static str, String)>],
) -> Svg {
    let mut svg = Svg::new(PLOT_W as u32, PLOT_H as u32, label);
    let total = |c: &Vec<(f64, &'static str, String)>| c.iter().map(|p| p.0).sum::<f64>();
    // Counts: four whole-number steps.
    let step = nice_ceil(columns.iter().map(total).fold(0.0, f64::max) / 4.0).max(1.0);
    let y_max = 4.0 * step;
    let slot = frame(&mut svg, x_labels, y_max, &|v| num(v.round()));
    let inner_h = PLOT_H - TOP - BOTTOM;
    let gap = (slot * 0.15).min(6.0);
    for (i, column) in columns.iter().enumerate() {
        let mut base = 0.0;
        for (value, class, tip) in column {
            if *value <= 0.0 {
                continue;
            }
            let h = inner_h * value / y_max;
            let y = TOP + inner_h - inner_h * base / y_max - h;
            svg.rect(
                LEFT + slot * i as f64 + gap / 2.0,
                y,
                slot - gap,
                h,
                class,
                tip.clone(),
            );
            base += value;
        }
    }
    svg
}

/// Lines over the x slots, one per series; `None` leaves a gap (a day with
/// nothing to measure). Values in `[0, y_max]`.
pub fn lines(
    label: &str,
    x_labels: &[String],
    y_max: f64,
    (axis_fmt, tip_fmt): (&dyn Fn(f64) -> String, &dyn Fn(f64) -> String),
    series: &[(&'static str, String, Vec<Option<f64>>)],
) -> Svg {
    let mut svg = Svg::new(PLOT_W as u32, PLOT_H as u32, label);
    let slot = frame(&mut svg, x_labels, y_max, axis_fmt);
    let inner_h = PLOT_H - TOP - BOTTOM;
    let dots = x_labels.len() <= 120;
    for (class, name, values) in series {
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, svg: &mut Svg| {
            if run.len() > 1 {
                svg.polylines.push(Polyline {
                    points: run.join(" "),
                    class,
                });
            }
            run.clear();
        };
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v else {
                flush(&mut run, &mut svg);
                continue;
            };
            let x = LEFT + slot * (i as f64 + 0.5);
            let y = TOP + inner_h - inner_h * v.clamp(0.0, y_max) / y_max;
            run.push(format!("{},{}", n(x), n(y)));
            if dots || values.len() == 1 {
                svg.circles.push(Circle {
                    cx: n(x),
                    cy: n(y),
                    class,
                    tip: format!("{name}, {}: {}", x_labels[i], tip_fmt(*v)),
                });
            }
        }
        flush(&mut run, &mut svg);
    }
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_axes() {
        assert_eq!(n(1.0), "1");
        assert_eq!(n(f64::NAN), "0");
        assert_eq!(n(-0.25), "-0.2");
        assert_eq!(num(0.9500), "0.95");
        assert_eq!(num(-0.0), "0");
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(7.0), 10.0);
        assert_eq!(nice_ceil(333.0), 500.0);
        assert_eq!(nice_ceil(0.04), 0.05);
        assert_eq!(clip("abcdef", 4), "abc…");
    }

    #[test]
    fn a_gauge_clamps_its_value_and_keeps_text_as_data() {
        let svg = gauge(
            "<b>x</b>",
            7.0,
            (0.0, 1.0),
            &[Zone {
                from: 0.0,
                to: 0.5,
                class: "bad",
            }],
            &[Mark {
                at: 0.5,
                label: "rollback <".into(),
            }],
        );
        let bar = svg.rects.iter().find(|r| r.class == "bar").unwrap();
        assert_eq!(bar.w, "976");
        assert_eq!(svg.label, "<b>x</b>");
        assert!(svg.texts.iter().any(|t| t.text == "rollback < 0.5"));
    }

    #[test]
    fn lines_break_at_gaps() {
        let labels: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let values = vec![Some(0.5), Some(1.0), None, Some(0.2), Some(0.3)];
        let svg = lines(
            "l",
            &labels,
            1.0,
            (&num, &num),
            &[("s", "all".into(), values)],
        );
        assert_eq!(svg.polylines.len(), 2);
        assert_eq!(svg.circles.len(), 4);
    }
}
