//! The `threshold-sweep --plot` chart: the ROC curve on a logarithmic false-accept axis beside the
//! same/different distance histograms with the threshold, drawn with plotters as PNG or SVG. Text
//! is laid out (and, in the PNG, drawn) with the embedded DejaVu Sans, never a system font.

use std::sync::OnceLock;

use image::RgbImage;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// Everything the sweep chart shows.
pub struct SweepPlot<'a> {
    /// Chart title, e.g. "lfw-pairs - 6000 pairs - dlib_resnet_v1+dlib+flip".
    pub title: &'a str,
    /// X-axis label of the histogram, e.g. "euclidean distance".
    pub metric: &'a str,
    /// (FPR, TPR) points sorted by FPR, from (0,0) to (1,1).
    pub roc: &'a [(f64, f64)],
    /// Area under the ROC curve.
    pub auc: f64,
    /// Distances of same-person pairs.
    pub same: &'a [f32],
    /// Distances of different-person pairs.
    pub different: &'a [f32],
    /// Chosen threshold ("same" when distance < threshold).
    pub threshold: f32,
    /// (FPR, TPR) at the chosen threshold.
    pub operating_point: (f64, f64),
}

/// Renders the chart as a standalone SVG document.
pub fn render_svg(p: &SweepPlot) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        finish(draw_chart(&root, p).and_then(|()| root.present().map_err(|e| e.to_string())));
    }
    svg
}

/// Renders the chart as an RGB raster image of the same layout.
pub fn render_png(p: &SweepPlot) -> RgbImage {
    let mut img = RgbImage::new(WIDTH, HEIGHT);
    {
        let root = BitMapBackend::with_buffer(&mut img, (WIDTH, HEIGHT)).into_drawing_area();
        finish(draw_chart(&root, p).and_then(|()| root.present().map_err(|e| e.to_string())));
    }
    img
}

/// Drawing into an in-memory SVG string or a correctly sized pixel buffer, with a font that is
/// compiled in, cannot fail on any input; an error here is a defect of the build (the unit tests
/// render every degenerate case), so it stops the program with the reason.
fn finish(result: Result<(), String>) {
    if let Err(e) = result {
        panic!("drawing the threshold-sweep chart failed: {e}");
    }
}

// ---------------------------------------------------------------------------
// Layout and style

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 540;
/// Width of the ROC panel; the histograms take the rest.
const ROC_PANEL: u32 = 540;
const BINS: usize = 60;

const TITLE_SIZE: f64 = 24.0;
const CAPTION_SIZE: f64 = 18.0;
const AXIS_DESC_SIZE: f64 = 16.0;
const TICK_SIZE: f64 = 14.0;
const LEGEND_SIZE: f64 = 14.0;

const INK: RGBColor = RGBColor(34, 34, 34);
const MUTED: RGBColor = RGBColor(90, 90, 90);
const AXIS: RGBColor = RGBColor(120, 120, 120);
const GRID: RGBColor = RGBColor(222, 222, 222);
const GRID_LIGHT: RGBColor = RGBColor(242, 242, 242);
const CHANCE: RGBColor = RGBColor(160, 160, 160);
const CURVE: RGBColor = RGBColor(31, 119, 180);
const POINT: RGBColor = RGBColor(200, 30, 30);
const SAME: RGBColor = RGBColor(44, 160, 44);
const DIFFERENT: RGBColor = RGBColor(230, 85, 13);
const THRESH: RGBColor = RGBColor(50, 50, 50);

/// The family name every text style uses. The embedded DejaVu Sans is registered under it; the
/// SVG writes it as its `font-family`, so a viewer uses DejaVu Sans when it has it, else its sans.
const FONT: &str = "DejaVu Sans, sans-serif";
static FONT_DATA: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Registers the embedded font with plotters (once per process).
fn font_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            register_font(FONT, FontStyle::Normal, FONT_DATA)
                .map_err(|_| "the embedded DejaVu Sans does not parse as a font".to_string())
        })
        .clone()
}

fn text(size: f64, color: RGBColor) -> TextStyle<'static> {
    (FONT, size).into_font().color(&color)
}

// ---------------------------------------------------------------------------
// The chart

fn draw_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    p: &SweepPlot,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    font_ready()?;
    root.fill(&WHITE).map_err(err)?;
    let title_style = text(TITLE_SIZE, INK);
    let title = fit_text(root, &clean(p.title), &title_style, f64::from(WIDTH) - 40.0);
    let body = root
        .margin(8, 0, 0, 0)
        .titled(&title, title_style)
        .map_err(err)?;
    let (roc_area, hist_area) = body.split_horizontally(ROC_PANEL);
    draw_roc(&roc_area, p).map_err(err)?;
    draw_histograms(&hist_area, p).map_err(err)?;
    Ok(())
}

fn err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// The two classes' histograms: translucent bars (with legend entries), then the step outlines
/// on top of both.
fn draw_classes<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<Axis, Axis>>,
    p: &SweepPlot,
    hists: [(&Vec<f64>, &Vec<f64>); 2],
    (lo, hi): (f64, f64),
) -> DrawResult<DB> {
    let bin_w = (hi - lo) / BINS as f64;
    let edge = |i: usize| lo + bin_w * i as f64;
    let [(diff_h, diff), (same_h, same)] = hists;
    let classes = [
        (diff_h, diff, DIFFERENT, "different", p.different.len()),
        (same_h, same, SAME, "same", p.same.len()),
    ];
    // Translucent bars first, then the step outlines on top of both classes.
    for (h, vals, color, name, n) in classes {
        if vals.is_empty() {
            continue;
        }
        let bars = h
            .iter()
            .enumerate()
            .filter(|(_, &frac)| frac > 0.0)
            .map(|(i, &frac)| {
                Rectangle::new(
                    [(edge(i), 0.0), (edge(i + 1), frac)],
                    color.mix(0.35).filled(),
                )
            });
        chart
            .draw_series(bars)?
            .label(format!("{name} (n={n})"))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + Rectangle::new([(0, -6), (16, 6)], color.mix(0.4).filled())
                    + Rectangle::new([(0, -6), (16, 6)], color.stroke_width(1))
            });
    }
    for (h, vals, color, _, _) in classes {
        if vals.is_empty() {
            continue;
        }
        let mut outline = Vec::with_capacity(2 * BINS + 2);
        outline.push((lo, 0.0));
        for (i, &frac) in h.iter().enumerate() {
            outline.push((edge(i), frac));
            outline.push((edge(i + 1), frac));
        }
        outline.push((hi, 0.0));
        chart.draw_series(LineSeries::new(outline, color.stroke_width(2)))?;
    }
    Ok(())
}

/// A panel's legend box at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<Axis, Axis>>,
    position: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .margin(12)
        .legend_area_size(30)
        .label_font(text(LEGEND_SIZE, INK))
        .background_style(WHITE.mix(0.92))
        .border_style(GRID)
        .draw()
}

/// The histogram panel's threshold: a dashed line with its label (or the label alone, marked
/// off scale, when the threshold lies outside the axis).
fn draw_threshold<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &mut ChartContext<'_, DB, Cartesian2d<Axis, Axis>>,
    t: f64,
    (x0, x1): (f64, f64),
    y1: f64,
) -> DrawResult<DB> {
    let label_style = text(LEGEND_SIZE, INK);
    let label = format!("threshold {}", fmt_value(t));
    if (x0..=x1).contains(&t) {
        chart.draw_series(DashedLineSeries::new(
            [(t, 0.0), (t, y1)],
            7,
            5,
            THRESH.stroke_width(2),
        ))?;
        let (w, h) = area.estimate_text_size(&label, &label_style)?;
        let (w, h) = (i32::try_from(w).unwrap_or(0), i32::try_from(h).unwrap_or(0));
        // Right of the line, or left of it when the label would leave the plot.
        let room = chart.plotting_area().get_pixel_range().0.end - chart.backend_coord(&(t, y1)).0;
        let dx = if room > w + 20 { 8 } else { -w - 8 };
        chart.draw_series(std::iter::once(
            EmptyElement::at((t, y1))
                + Rectangle::new(
                    [(dx - 3, 6), (dx + w + 3, 10 + h)],
                    WHITE.mix(0.85).filled(),
                )
                + Text::new(label, (dx, 8), label_style),
        ))?;
    } else {
        chart.draw_series(std::iter::once(
            EmptyElement::at((x1, y1))
                + Text::new(
                    format!("{label} (off scale)"),
                    (-8, 8),
                    label_style.pos(Pos::new(HPos::Right, VPos::Top)),
                ),
        ))?;
    }
    Ok(())
}

/// The ROC panel: TPR over log10(FAR), FAR = 0 (and anything below the axis) at the left edge.
fn draw_roc<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &SweepPlot) -> DrawResult<DB> {
    let lo = far_floor(p.roc);
    let x_of = |far: f64| far.max(10f64.powi(lo)).log10();
    let decades: Vec<f64> = (lo..=0).map(f64::from).collect();
    let minor: Vec<f64> = (lo..0)
        .flat_map(|e| (2..=9).map(move |k| f64::from(e) + f64::from(k).log10()))
        .collect();
    let x_range = Axis {
        lo: f64::from(lo) - 0.08,
        hi: 0.05,
        bold: decades,
        light: minor,
    };
    let y_range = Axis {
        lo: -0.02,
        hi: 1.02,
        bold: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        light: vec![0.1, 0.3, 0.5, 0.7, 0.9],
    };

    let mut chart = ChartBuilder::on(area)
        .caption("ROC curve", text(CAPTION_SIZE, INK))
        .margin_left(10)
        .margin_right(18)
        .margin_bottom(8)
        .x_label_area_size(58)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc("false accept rate (FAR, log scale)")
        .y_desc("true accept rate (TAR)")
        .axis_desc_style(text(AXIS_DESC_SIZE, INK))
        .label_style(text(TICK_SIZE, MUTED))
        .axis_style(AXIS)
        .bold_line_style(GRID)
        .light_line_style(GRID_LIGHT)
        .x_label_formatter(&|v| log_tick(*v, lo))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;

    // Chance: TPR = FAR, a curve on this axis.
    let steps = 120;
    let chance = (0..=steps).map(|i| {
        let e = f64::from(lo) * (1.0 - f64::from(i) / f64::from(steps));
        (e, 10f64.powf(e))
    });
    chart
        .draw_series(DashedLineSeries::new(chance, 4, 4, CHANCE.stroke_width(1)))?
        .label("chance (TAR = FAR)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], CHANCE.stroke_width(1)));

    let curve = thin(
        p.roc
            .iter()
            .filter(|(f, t)| f.is_finite() && t.is_finite())
            .map(|&(f, t)| (x_of(f.clamp(0.0, 1.0)), t.clamp(0.0, 1.0))),
        f64::from(-lo),
    );
    chart
        .draw_series(LineSeries::new(curve, CURVE.stroke_width(2)))?
        .label(format!("AUC {}", fmt_fixed(p.auc, 4)))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], CURVE.stroke_width(2)));

    let (op_far, op_tar) = p.operating_point;
    if op_far.is_finite() && op_tar.is_finite() {
        let at = (x_of(op_far.clamp(0.0, 1.0)), op_tar.clamp(0.0, 1.0));
        chart
            .draw_series([
                Circle::new(at, 6, WHITE.filled()),
                Circle::new(at, 5, POINT.filled()),
            ])?
            .label(format!(
                "threshold {}: TAR {}, FAR {}",
                fmt_value(f64::from(p.threshold)),
                fmt_fixed(op_tar, 3),
                fmt_rate(op_far)
            ))
            .legend(|(x, y)| Circle::new((x + 11, y), 5, POINT.filled()));
    }

    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// The histogram panel: fraction of pairs per distance bin, per class, and the threshold line.
fn draw_histograms<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &SweepPlot,
) -> DrawResult<DB> {
    let same = finite_values(p.same);
    let diff = finite_values(p.different);
    let has_data = !same.is_empty() || !diff.is_empty();
    let (lo, hi) = data_range(&same, &diff);

    // Axis range: the data, plus the threshold when it is reasonably close.
    let t = f64::from(p.threshold);
    let near = (hi - lo).max(0.5 * lo.abs().max(hi.abs()));
    let (mut alo, mut ahi) = (lo, hi);
    if t.is_finite() && t >= lo - near && t <= hi + near {
        alo = alo.min(t);
        ahi = ahi.max(t);
    }
    let pad = (ahi - alo) * 0.03;
    let (x0, x1) = (alo - pad, ahi + pad);

    let same_h = histogram(&same, lo, hi);
    let diff_h = histogram(&diff, lo, hi);
    let ymax = same_h.iter().chain(&diff_h).fold(0.0f64, |m, &v| m.max(v));
    let y1 = if ymax > 0.0 { ymax * 1.18 } else { 1.0 };

    let (x_step, y_step) = (nice_step(x1 - x0, 8), nice_step(y1, 6));
    let mut chart = ChartBuilder::on(area)
        .caption("distance distribution", text(CAPTION_SIZE, INK))
        .margin_left(10)
        .margin_right(24)
        .margin_bottom(8)
        .x_label_area_size(58)
        .y_label_area_size(76)
        .build_cartesian_2d(linear_axis(x0, x1, 8), linear_axis(0.0, y1, 6))?;
    chart
        .configure_mesh()
        .x_desc(clean(p.metric))
        .y_desc("fraction of pairs")
        .axis_desc_style(text(AXIS_DESC_SIZE, INK))
        .label_style(text(TICK_SIZE, MUTED))
        .axis_style(AXIS)
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .disable_x_mesh()
        .x_label_formatter(&|v| fmt_tick(*v, x_step))
        .y_label_formatter(&|v| fmt_tick(*v, y_step))
        .draw()?;

    draw_classes(
        &mut chart,
        p,
        [(&diff_h, &diff), (&same_h, &same)],
        (lo, hi),
    )?;

    if !has_data {
        chart.draw_series(std::iter::once(Text::new(
            "no distances",
            ((x0 + x1) / 2.0, y1 / 2.0),
            text(AXIS_DESC_SIZE, MUTED).pos(Pos::new(HPos::Center, VPos::Center)),
        )))?;
    }

    if t.is_finite() {
        draw_threshold(area, &mut chart, t, (x0, x1), y1)?;
    }

    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// The tick step for about `max_ticks` ticks over `span`: 1, 2 or 5 times a power of ten.
fn nice_step(span: f64, max_ticks: u32) -> f64 {
    let raw = span / f64::from(max_ticks.max(1));
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&step| step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

/// A linear axis over `lo..hi` with labelled ticks at multiples of [`nice_step`].
fn linear_axis(lo: f64, hi: f64, max_ticks: u32) -> Axis {
    let step = nice_step(hi - lo, max_ticks);
    let first = (lo / step).ceil();
    let bold = (0..=max_ticks * 2)
        .map(|i| (first + f64::from(i)) * step)
        .take_while(|&v| v <= hi + step * 1e-9)
        .collect();
    Axis {
        lo,
        hi,
        bold,
        light: Vec::new(),
    }
}

/// A linear axis over `lo..hi` with given tick values: `bold` get labels and grid lines, `light`
/// only faint grid lines (the ROC's decades and the 2..9 multiples between them).
struct Axis {
    lo: f64,
    hi: f64,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let u = (v - self.lo) / (self.hi - self.lo);
        let px = f64::from(limit.0) + u * f64::from(limit.1 - limit.0);
        px.round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

// ---------------------------------------------------------------------------
// Data preparation

/// The lowest decade of the FAR axis: 1e-4, or lower when the curve has smaller non-zero FARs
/// (never below 1e-9); FAR = 0 is drawn there.
fn far_floor(roc: &[(f64, f64)]) -> i32 {
    let smallest = roc
        .iter()
        .map(|&(far, _)| far)
        .filter(|far| far.is_finite() && *far > 0.0)
        .fold(f64::INFINITY, f64::min);
    if smallest.is_finite() {
        (smallest.log10().floor() as i32).clamp(-9, -4)
    } else {
        -4
    }
}

/// Drops points closer than about 1/1000 of the axes to the last kept one (a sweep over many
/// pairs has thousands); keeps the first and the last. `x_span` is the width of the x axis.
fn thin(points: impl Iterator<Item = (f64, f64)>, x_span: f64) -> Vec<(f64, f64)> {
    let points: Vec<(f64, f64)> = points.collect();
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(points.len().min(4096));
    for (i, &pt) in points.iter().enumerate() {
        let is_last = i + 1 == points.len();
        match out.last() {
            Some(&(lx, ly)) if !is_last && ((pt.0 - lx) / x_span).hypot(pt.1 - ly) < 1e-3 => {}
            _ => out.push(pt),
        }
    }
    out
}

fn finite_values(v: &[f32]) -> Vec<f64> {
    v.iter()
        .filter(|x| x.is_finite())
        .map(|&x| f64::from(x))
        .collect()
}

/// The range of both classes' distances (finite), widened when it is empty or of zero width.
fn data_range(same: &[f64], diff: &[f64]) -> (f64, f64) {
    let (lo, hi) = same
        .iter()
        .chain(diff)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo <= hi.abs().max(lo.abs()) * 1e-9 {
        let half = if lo.abs() > 0.0 { lo.abs() * 0.05 } else { 0.5 };
        return (lo - half, hi + half);
    }
    (lo, hi)
}

/// Fraction of `values` in each of [`BINS`] equal bins over `lo..hi` (out-of-range values go to
/// the end bins).
fn histogram(values: &[f64], lo: f64, hi: f64) -> Vec<f64> {
    let mut counts = vec![0usize; BINS];
    let span = hi - lo;
    for &v in values {
        let u = if span > 0.0 { (v - lo) / span } else { 0.5 };
        let idx = (u * BINS as f64).floor();
        let idx = if idx.is_finite() {
            idx.clamp(0.0, (BINS - 1) as f64) as usize
        } else {
            0
        };
        counts[idx] += 1;
    }
    let n = values.len().max(1) as f64;
    counts.into_iter().map(|k| k as f64 / n).collect()
}

// ---------------------------------------------------------------------------
// Text

/// Control characters (invalid in SVG text) become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Shortens `s` with a trailing "..." so it fits in `max_w` pixels.
fn fit_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    s: &str,
    style: &TextStyle,
    max_w: f64,
) -> String {
    let fits = |t: &str| {
        area.estimate_text_size(t, style)
            .map_or(true, |(w, _)| f64::from(w) <= max_w)
    };
    if fits(s) {
        return s.to_string();
    }
    let mut chars: Vec<char> = s.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>() + "...";
        if fits(&candidate) {
            return candidate;
        }
    }
    String::new()
}

/// A decade tick of the FAR axis: "1", "1e-1" .. "1e-9"; the lowest reads "≤1e-4" because FAR = 0
/// is drawn there.
fn log_tick(v: f64, floor: i32) -> String {
    let e = v.round() as i32;
    let s = if e == 0 {
        "1".to_string()
    } else {
        format!("1e{e}")
    };
    if e == floor {
        format!("≤{s}")
    } else {
        s
    }
}

/// A tick label: as many decimals as the tick step needs ("0.00", "0.02" .. "0.10"), scientific
/// notation for very large or very fine scales.
fn fmt_tick(v: f64, step: f64) -> String {
    let v = v + 0.0; // no "-0"
    if v.abs() >= 1e6 || step < 1e-4 {
        return if v == 0.0 {
            "0".to_string()
        } else {
            format!("{v:.2e}")
        };
    }
    let decimals = (-step.log10().floor()).clamp(0.0, 4.0) as usize;
    format!("{v:.decimals$}")
}

/// A value with three decimals, or scientific notation when that would be misleading.
fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{:.3}", v + 0.0)
    }
}

/// A rate such as a FAR: three decimals down to 0.01, two significant digits below.
fn fmt_rate(v: f64) -> String {
    if v.is_finite() && v > 0.0 && v < 0.01 {
        format!("{v:.1e}")
    } else {
        fmt_fixed(v, 3)
    }
}

fn fmt_fixed(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{:.*}", decimals, v + 0.0)
    } else {
        "n/a".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A realistic curve: TAR 0.5 at FAR 0, rising through the 1e-4..1e-2 decades.
    fn sample_roc() -> Vec<(f64, f64)> {
        vec![
            (0.0, 0.0),
            (0.0, 0.5),
            (2e-4, 0.7),
            (1e-3, 0.85),
            (1e-2, 0.95),
            (0.1, 0.99),
            (1.0, 1.0),
        ]
    }

    fn spread(center: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| center + ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.3)
            .collect()
    }

    fn with<'a>(
        roc: &'a [(f64, f64)],
        same: &'a [f32],
        different: &'a [f32],
        title: &'a str,
    ) -> SweepPlot<'a> {
        SweepPlot {
            title,
            metric: "euclidean distance",
            roc,
            auc: 0.9876,
            same,
            different,
            threshold: 0.6,
            operating_point: (1e-3, 0.85),
        }
    }

    /// Pixels of roughly `color` (each channel within 40) inside the column range `xs`.
    fn count_near(img: &RgbImage, xs: std::ops::Range<u32>, color: RGBColor) -> usize {
        let RGBColor(r, g, b) = color;
        img.enumerate_pixels()
            .filter(|(x, _, Rgb([pr, pg, pb]))| {
                xs.contains(x) && pr.abs_diff(r) < 40 && pg.abs_diff(g) < 40 && pb.abs_diff(b) < 40
            })
            .count()
    }

    #[test]
    fn png_decodes_with_the_size_and_both_plots_drawn() {
        let roc = sample_roc();
        let (same, diff) = (spread(0.4, 500), spread(0.85, 500));
        let img = render_png(&with(&roc, &same, &diff, "LFW pairs"));
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (WIDTH, HEIGHT));
        assert_eq!(decoded, img);
        // The ROC curve (blue) and the operating point (red) in the left panel only.
        assert!(count_near(&decoded, 0..ROC_PANEL, CURVE) > 300);
        assert_eq!(count_near(&decoded, ROC_PANEL..WIDTH, CURVE), 0);
        assert!(count_near(&decoded, 0..ROC_PANEL, POINT) > 40);
        // Both histograms' outlines in the right panel only.
        for color in [SAME, DIFFERENT] {
            assert!(count_near(&decoded, ROC_PANEL..WIDTH, color) > 300);
            assert!(count_near(&decoded, 0..ROC_PANEL, color) == 0);
        }
        // Text was drawn: dark anti-aliased glyph pixels in the title band.
        let title_ink = decoded
            .enumerate_pixels()
            .filter(|(_, y, p)| *y < 40 && p.0.iter().all(|&c| c < 120))
            .count();
        assert!(title_ink > 100, "{title_ink} dark pixels in the title band");
    }

    #[test]
    fn far_axis_is_logarithmic() {
        let roc = sample_roc();
        let (same, diff) = (spread(0.4, 500), spread(0.85, 500));
        // Find the curve's column at TAR levels of the sample: the decades 1e-3 -> 1e-2 -> 1e-1
        // are the same pixel distance apart on a log axis (on a linear one 1e-3 and 1e-2 would
        // sit within a few pixels of the left edge).
        let blue_x = |far: f64| {
            let probe = SweepPlot {
                roc: &[(far, 0.5), (far, 0.55)],
                ..with(&roc, &same, &diff, "t")
            };
            let img = render_png(&probe);
            // Rows of TAR 0.5..0.55, clear of the legend's sample line at the bottom.
            let xs: Vec<u32> = img
                .enumerate_pixels()
                .filter(|(x, y, p)| {
                    *x < ROC_PANEL && (150..350).contains(y) && p.0 == [31, 119, 180]
                })
                .map(|(x, _, _)| x)
                .collect();
            assert!(!xs.is_empty(), "no curve drawn at FAR {far}");
            f64::from(xs.iter().sum::<u32>()) / xs.len() as f64
        };
        let (a, b, c) = (blue_x(1e-3), blue_x(1e-2), blue_x(1e-1));
        assert!(b - a > 60.0, "{a} {b} {c}");
        assert!(((c - b) - (b - a)).abs() < 2.0, "{a} {b} {c}");
        // FAR = 0 is drawn at the floor (1e-4), one decade left of 1e-3.
        let z = blue_x(0.0);
        assert!(((a - z) - (b - a)).abs() < 2.0, "{z} {a} {b}");
    }

    /// XML well-formedness as far as this SVG needs it: every tag closed in order, attributes
    /// quoted, and `&` only in entities.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            assert!(!text.contains('>'), "stray '>' in {text:?}");
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..text.len().min(i + 6)];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                        .iter()
                        .any(|e| entity.starts_with(e)),
                    "bare & in {text:?}"
                );
            }
            let end = start + rest[start..].find('>').expect("unclosed tag");
            let tag = &rest[start + 1..end];
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in {tag}"
            );
            let name = tag
                .trim_start_matches('/')
                .split_whitespace()
                .next()
                .unwrap_or("");
            if let Some(closing) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(closing.trim()), "misnested </{closing}>");
            } else if !tag.ends_with('/') {
                open.push(name);
            }
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed {open:?}");
        assert!(rest.trim().is_empty());
    }

    #[test]
    fn svg_has_labels_and_log_ticks() {
        let roc = sample_roc();
        let (same, diff) = (spread(0.4, 500), spread(0.85, 500));
        let svg = render_svg(&with(&roc, &same, &diff, "A&B <pairs>"));
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(r#"width="1200" height="540""#));
        assert_well_formed(&svg);
        for broken in [
            "<svg><text>a</svg>",
            "<svg>a & b</svg>",
            "<svg><rect x=\"1/>",
        ] {
            assert!(std::panic::catch_unwind(|| assert_well_formed(broken)).is_err());
        }
        // Every text element is closed and the text is escaped.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(svg.contains("A&amp;B &lt;pairs&gt;"));
        assert!(!svg.contains("<pairs>"));
        for label in [
            "ROC curve",
            "false accept rate (FAR, log scale)",
            "true accept rate (TAR)",
            "distance distribution",
            "euclidean distance",
            "fraction of pairs",
            "AUC 0.9876",
            "threshold 0.600: TAR 0.850, FAR 1.0e-3",
            "threshold 0.600",
            "same (n=500)",
            "different (n=500)",
        ] {
            assert!(
                svg.contains(&format!("{label}\n</text>")),
                "no text {label:?}"
            );
        }
        // Decade ticks of the log axis; the lowest stands for FAR = 0 too.
        for tick in ["≤1e-4", "1e-3", "1e-2", "1e-1"] {
            assert!(
                svg.contains(&format!(">\n{tick}\n</text>")),
                "no tick {tick}"
            );
        }
        assert!(svg.contains("font-family=\"DejaVu Sans, sans-serif\""));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn far_axis_extends_below_1e4_for_large_sweeps() {
        let roc = [(0.0, 0.0), (3e-6, 0.4), (1e-3, 0.9), (1.0, 1.0)];
        assert_eq!(far_floor(&roc), -6);
        assert_eq!(far_floor(&sample_roc()), -4);
        assert_eq!(far_floor(&[(0.0, 0.0), (1e-30, 0.1)]), -9);
        assert_eq!(far_floor(&[]), -4);
        let svg = render_svg(&with(&roc, &[], &[], "t"));
        assert!(svg.contains("≤1e-6") && svg.contains("1e-5") && svg.contains("1e-4"));
    }

    #[test]
    fn degenerate_inputs_render() {
        let two = [(0.0, 0.0), (1.0, 1.0)];
        let empty: [f32; 0] = [];
        let flat = [0.5f32; 100];
        let extreme = [f32::MAX, -f32::MAX, 0.0, 1e-30, f32::MIN_POSITIVE];
        let near = [1.0e30f32, 1.000_001e30];
        let inf = [f32::INFINITY, f32::NEG_INFINITY, 1.0];
        let nan_roc = [(f64::NAN, 0.5), (f64::INFINITY, 1.0), (-1.0, 2.0)];
        let long_title = "x".repeat(500);
        type Case<'a> = (&'a [(f64, f64)], &'a [f32], &'a [f32]);
        let cases: Vec<Case> = vec![
            (&two, &empty, &empty),
            (&two, &flat, &empty),
            (&two, &empty, &flat),
            (&two, &flat, &flat),
            (&[], &extreme, &flat),
            (&[(0.5, 0.5)], &extreme, &extreme),
            (&two, &near, &near),
            (&two, &inf, &empty),
            (&nan_roc, &flat, &flat),
        ];
        for (roc, same, diff) in cases {
            let mut p = with(roc, same, diff, &long_title);
            p.auc = f64::NAN;
            assert_eq!(render_png(&p).dimensions(), (WIDTH, HEIGHT));
            let svg = render_svg(&p);
            assert!(svg.trim_end().ends_with("</svg>"));
            // The long title is shortened to the width.
            assert!(svg.contains("xxx...") && !svg.contains(&long_title));
            p.threshold = f32::MAX;
            p.operating_point = (f64::INFINITY, -3.0);
            let _ = render_png(&p);
            assert!(render_svg(&p).contains("threshold 3.403e38"));
            p.threshold = f32::NAN;
            p.title = "\u{0}\u{7}ünïcødé ☺";
            let _ = render_png(&p);
            let svg = render_svg(&p);
            assert!(svg.contains("ünïcødé ☺") && !svg.contains('\u{0}'));
            assert_well_formed(&svg);
        }
        let svg = render_svg(&with(&two, &empty, &empty, "t"));
        assert!(svg.contains("no distances"));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(log_tick(-3.0, -4), "1e-3");
        assert_eq!(log_tick(-4.0, -4), "≤1e-4");
        assert_eq!(log_tick(0.0, -4), "1");
        assert_eq!(nice_step(0.1, 6), 0.02);
        assert_eq!(nice_step(1.0, 8), 0.2);
        assert_eq!(nice_step(0.0, 8), 1.0);
        assert_eq!(fmt_tick(0.1, 0.02), "0.10");
        assert_eq!(fmt_tick(0.30000000000000004, 0.02), "0.30");
        assert_eq!(fmt_tick(-0.0, 0.2), "0.0");
        assert_eq!(fmt_tick(1.0, 0.2), "1.0");
        assert_eq!(fmt_tick(20.0, 5.0), "20");
        assert_eq!(fmt_tick(1e30, 1e29), "1.00e30");
        let axis = linear_axis(0.13, 1.17, 8);
        assert_eq!(axis.bold.len(), 5); // 0.2 .. 1.0
        assert!(axis.bold.iter().all(|v| (0.13..=1.17).contains(v)));
        assert_eq!(fmt_rate(0.0063), "6.3e-3");
        assert_eq!(fmt_rate(0.25), "0.250");
        assert_eq!(fmt_value(0.6), "0.600");
        assert_eq!(fmt_value(f64::NAN), "n/a");
        assert_eq!(clean("a\tb\u{7}"), "a b ");
        let h = histogram(&[0.0, 0.5, 1.0, 7.0, -3.0], 0.0, 1.0);
        assert_eq!(h.len(), BINS);
        assert!((h.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((h[0] - 0.4).abs() < 1e-12 && (h[BINS - 1] - 0.4).abs() < 1e-12);
        let thinned = thin((0..10_000).map(|i| (f64::from(i) * 1e-6, 0.5)), 4.0);
        assert!(thinned.len() < 100 && thinned.last() == Some(&(9999.0 * 1e-6, 0.5)));
    }
}
