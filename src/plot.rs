//! Charts for threshold sweeps: ROC curve and same/different distance histograms, as SVG or PNG.

use std::fmt::Write as _;

use font8x8::{UnicodeFonts, BASIC_FONTS, LATIN_FONTS};
use image::{Rgb, RgbImage};
use imageproc::drawing::draw_antialiased_line_segment_mut;
use imageproc::pixelops::interpolate;

/// Everything the sweep chart shows.
pub struct SweepPlot<'a> {
    /// Chart title, e.g. "LFW pairs.txt - dlib_resnet_v1+dlib+flip".
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
    let mut canvas = SvgCanvas::new(WIDTH, HEIGHT);
    draw_chart(&mut canvas, p);
    canvas.finish()
}

/// Renders the chart as an RGB raster image of the same layout.
pub fn render_png(p: &SweepPlot) -> RgbImage {
    let mut canvas = RasterCanvas {
        img: RgbImage::from_pixel(WIDTH, HEIGHT, Rgb(WHITE)),
    };
    draw_chart(&mut canvas, p);
    canvas.img
}

// ---------------------------------------------------------------------------
// Layout constants

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 520;
const BINS: usize = 60;

const WHITE: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [34, 34, 34];
const MUTED: [u8; 3] = [90, 90, 90];
const AXIS: [u8; 3] = [120, 120, 120];
const GRID: [u8; 3] = [228, 228, 228];
const CHANCE: [u8; 3] = [160, 160, 160];
const CURVE: [u8; 3] = [31, 119, 180];
const POINT: [u8; 3] = [200, 30, 30];
const SAME: [u8; 3] = [44, 160, 44];
const DIFFERENT: [u8; 3] = [230, 85, 13];
const THRESH: [u8; 3] = [50, 50, 50];

const PLOT_TOP: f64 = 84.0;
const PLOT_HEIGHT: f64 = 368.0;
const PANEL_HEADER_Y: f64 = 66.0;
const TITLE_Y: f64 = 26.0;

const ROC_FRAME: Frame = Frame {
    left: 86.0,
    top: PLOT_TOP,
    width: PLOT_HEIGHT,
    height: PLOT_HEIGHT,
};
const HIST_FRAME: Frame = Frame {
    left: 606.0,
    top: PLOT_TOP,
    width: 566.0,
    height: PLOT_HEIGHT,
};

/// A plot area in pixel coordinates; maps unit coordinates (0..1, y up) to pixels.
#[derive(Clone, Copy)]
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

/// Margin around 0..1 on the ROC axes so a near-perfect curve stays off the frame.
const ROC_PAD: f64 = 0.02;

impl Frame {
    fn roc_x(&self, v: f64) -> f64 {
        self.x((v.clamp(0.0, 1.0) + ROC_PAD) / (1.0 + 2.0 * ROC_PAD))
    }
    fn roc_y(&self, v: f64) -> f64 {
        self.y((v.clamp(0.0, 1.0) + ROC_PAD) / (1.0 + 2.0 * ROC_PAD))
    }
    fn right(&self) -> f64 {
        self.left + self.width
    }
    fn bottom(&self) -> f64 {
        self.top + self.height
    }
    fn x(&self, u: f64) -> f64 {
        self.left + u.clamp(0.0, 1.0) * self.width
    }
    fn y(&self, v: f64) -> f64 {
        self.bottom() - v.clamp(0.0, 1.0) * self.height
    }
}

// ---------------------------------------------------------------------------
// Drawing abstraction

type Color = [u8; 3];

#[derive(Clone, Copy)]
struct Stroke {
    color: Color,
    width: f64,
    dashed: bool,
}

impl Stroke {
    const fn solid(color: Color, width: f64) -> Self {
        Stroke {
            color,
            width,
            dashed: false,
        }
    }
    const fn dashed(color: Color, width: f64) -> Self {
        Stroke {
            color,
            width,
            dashed: true,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Anchor {
    Start,
    Middle,
    End,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TextSize {
    /// Tick labels and legends.
    Small,
    /// Axis labels and panel headers.
    Label,
    /// The chart title.
    Title,
}

#[derive(Clone, Copy)]
struct TextStyle {
    size: TextSize,
    anchor: Anchor,
    color: Color,
    /// Rotated 90 degrees counter-clockwise (reads bottom to top).
    vertical: bool,
}

impl TextStyle {
    const fn new(size: TextSize, anchor: Anchor, color: Color) -> Self {
        TextStyle {
            size,
            anchor,
            color,
            vertical: false,
        }
    }
}

/// The few primitives the layout needs. Text is positioned by its anchor
/// horizontally and by its vertical centre at `y`.
trait Canvas {
    fn line(&mut self, a: (f64, f64), b: (f64, f64), s: Stroke);
    fn polyline(&mut self, pts: &[(f64, f64)], s: Stroke);
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, s: Stroke);
    fn fill_rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Color, alpha: f64);
    fn circle(&mut self, c: (f64, f64), r: f64, fill: Color, outline: Color);
    fn text(&mut self, x: f64, y: f64, s: &str, style: TextStyle);
    fn text_width(&self, s: &str, size: TextSize) -> f64;
}

// ---------------------------------------------------------------------------
// Layout

fn draw_chart(c: &mut dyn Canvas, p: &SweepPlot) {
    c.fill_rect(0.0, 0.0, f64::from(WIDTH), f64::from(HEIGHT), WHITE, 1.0);
    let title = fit_text(c, p.title, TextSize::Title, f64::from(WIDTH) - 40.0);
    c.text(
        f64::from(WIDTH) / 2.0,
        TITLE_Y,
        &title,
        TextStyle::new(TextSize::Title, Anchor::Middle, INK),
    );
    draw_roc(c, p);
    draw_histograms(c, p);
}

fn draw_roc(c: &mut dyn Canvas, p: &SweepPlot) {
    let f = ROC_FRAME;
    let small_end = TextStyle::new(TextSize::Small, Anchor::End, MUTED);
    let small_mid = TextStyle::new(TextSize::Small, Anchor::Middle, MUTED);
    c.text(
        f.left,
        PANEL_HEADER_Y,
        "ROC curve",
        TextStyle::new(TextSize::Label, Anchor::Start, INK),
    );

    for i in 0..=5 {
        let v = f64::from(i) * 0.2;
        let (x, y) = (f.roc_x(v), f.roc_y(v));
        c.line((x, f.top), (x, f.bottom()), Stroke::solid(GRID, 1.0));
        c.line((f.left, y), (f.right(), y), Stroke::solid(GRID, 1.0));
        c.line(
            (x, f.bottom()),
            (x, f.bottom() + 5.0),
            Stroke::solid(AXIS, 1.0),
        );
        c.line((f.left - 5.0, y), (f.left, y), Stroke::solid(AXIS, 1.0));
        let label = format!("{v:.1}");
        c.text(x, f.bottom() + 16.0, &label, small_mid);
        c.text(f.left - 9.0, y, &label, small_end);
    }
    c.line(
        (f.roc_x(0.0), f.roc_y(0.0)),
        (f.roc_x(1.0), f.roc_y(1.0)),
        Stroke::dashed(CHANCE, 1.0),
    );
    c.rect(f.left, f.top, f.width, f.height, Stroke::solid(AXIS, 1.0));

    let pts = roc_pixels(p.roc, &f);
    if pts.len() >= 2 {
        c.polyline(&pts, Stroke::solid(CURVE, 2.0));
    }

    let (op_fpr, op_tpr) = p.operating_point;
    let op_ok = op_fpr.is_finite() && op_tpr.is_finite();
    if op_ok {
        c.circle((f.roc_x(op_fpr), f.roc_y(op_tpr)), 5.0, POINT, WHITE);
    }

    // Legend, bottom-right inside the plot (the curve hugs the top-left).
    let auc_line = format!("AUC {}", fmt_fixed(p.auc, 4));
    let op_line = if op_ok {
        format!(
            "threshold {}: TPR {}, FPR {}",
            fmt_value(f64::from(p.threshold)),
            fmt_fixed(op_tpr, 3),
            fmt_fixed(op_fpr, 3)
        )
    } else {
        format!("threshold {}", fmt_value(f64::from(p.threshold)))
    };
    let text_w = c
        .text_width(&auc_line, TextSize::Small)
        .max(c.text_width(&op_line, TextSize::Small));
    let row_h = 20.0;
    let box_w = text_w + 46.0;
    let box_h = 2.0 * row_h + 12.0;
    let bx = (f.right() - 10.0 - box_w).max(f.left + 4.0);
    let by = f.bottom() - 10.0 - box_h;
    c.fill_rect(bx, by, box_w, box_h, WHITE, 0.9);
    c.rect(bx, by, box_w, box_h, Stroke::solid(GRID, 1.0));
    let r1 = by + 6.0 + row_h / 2.0;
    let r2 = r1 + row_h;
    let legend_text = TextStyle::new(TextSize::Small, Anchor::Start, INK);
    c.line((bx + 8.0, r1), (bx + 30.0, r1), Stroke::solid(CURVE, 2.0));
    c.text(bx + 38.0, r1, &auc_line, legend_text);
    c.circle((bx + 19.0, r2), 5.0, POINT, WHITE);
    c.text(bx + 38.0, r2, &op_line, legend_text);

    axis_labels(
        c,
        &f,
        "false positive rate",
        "true positive rate",
        f.left - 52.0,
    );
}

/// Maps ROC points to pixels, dropping non-finite points and points closer
/// than about a pixel to the previous kept one (the last point is always kept).
fn roc_pixels(roc: &[(f64, f64)], f: &Frame) -> Vec<(f64, f64)> {
    let mapped: Vec<(f64, f64)> = roc
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| (f.roc_x(x), f.roc_y(y)))
        .collect();
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(mapped.len().min(4096));
    for (i, &pt) in mapped.iter().enumerate() {
        let is_last = i + 1 == mapped.len();
        match out.last() {
            Some(&(lx, ly)) if !is_last && (pt.0 - lx).hypot(pt.1 - ly) < 0.75 => {}
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
        if let Some(slot) = counts.get_mut(idx) {
            *slot += 1;
        }
    }
    let n = values.len().max(1) as f64;
    counts.into_iter().map(|k| k as f64 / n).collect()
}

fn draw_histograms(c: &mut dyn Canvas, p: &SweepPlot) {
    let f = HIST_FRAME;
    let same = finite_values(p.same);
    let diff = finite_values(p.different);
    let has_data = !same.is_empty() || !diff.is_empty();

    // Data range over both classes; widen a zero-width range.
    let (mut lo, mut hi) = same
        .iter()
        .chain(diff.iter())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if !has_data {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo <= hi.abs().max(lo.abs()) * 1e-9 {
        let half = if lo.abs() > 0.0 { lo.abs() * 0.05 } else { 0.5 };
        (lo, hi) = (lo - half, hi + half);
    }

    // Axis range: the data, plus the threshold when it is reasonably close.
    let t = f64::from(p.threshold);
    let near = (hi - lo).max(0.5 * lo.abs().max(hi.abs()));
    let (mut alo, mut ahi) = (lo, hi);
    if t.is_finite() && t >= lo - near && t <= hi + near {
        alo = alo.min(t);
        ahi = ahi.max(t);
    }
    let pad = (ahi - alo) * 0.03;
    let xt = inner_ticks(alo - pad, ahi + pad);
    let (x0, x1) = (xt.lo, xt.hi);
    let xu = |v: f64| f.x((v - x0) / (x1 - x0));

    let same_h = histogram(&same, lo, hi);
    let diff_h = histogram(&diff, lo, hi);
    let ymax = same_h
        .iter()
        .chain(diff_h.iter())
        .fold(0.0f64, |m, &v| m.max(v));
    let yt = nice_ticks(0.0, if ymax > 0.0 { ymax * 1.12 } else { 1.0 });
    let yu = |v: f64| f.y((v - yt.lo) / (yt.hi - yt.lo));

    // Header: panel name on the left, legend on the right.
    c.text(
        f.left,
        PANEL_HEADER_Y,
        "distance distribution",
        TextStyle::new(TextSize::Label, Anchor::Start, INK),
    );
    let legend = [
        (format!("different (n={})", p.different.len()), DIFFERENT),
        (format!("same (n={})", p.same.len()), SAME),
    ];
    let mut lx = f.right();
    for (label, color) in legend.iter() {
        let w = c.text_width(label, TextSize::Small);
        c.text(
            lx,
            PANEL_HEADER_Y,
            label,
            TextStyle::new(TextSize::Small, Anchor::End, INK),
        );
        let sx = lx - w - 22.0;
        c.fill_rect(sx, PANEL_HEADER_Y - 6.0, 14.0, 12.0, *color, 0.4);
        c.rect(
            sx,
            PANEL_HEADER_Y - 6.0,
            14.0,
            12.0,
            Stroke::solid(*color, 1.0),
        );
        lx = sx - 18.0;
    }

    // Grid and ticks.
    let small_end = TextStyle::new(TextSize::Small, Anchor::End, MUTED);
    let small_mid = TextStyle::new(TextSize::Small, Anchor::Middle, MUTED);
    for &v in &yt.ticks {
        let y = yu(v);
        if v > yt.lo && v < yt.hi {
            c.line((f.left, y), (f.right(), y), Stroke::solid(GRID, 1.0));
        }
        c.line((f.left - 5.0, y), (f.left, y), Stroke::solid(AXIS, 1.0));
        c.text(f.left - 9.0, y, &fmt_tick(v, &yt), small_end);
    }
    let mut last_right = f64::NEG_INFINITY;
    for &v in &xt.ticks {
        let x = xu(v);
        c.line(
            (x, f.bottom()),
            (x, f.bottom() + 5.0),
            Stroke::solid(AXIS, 1.0),
        );
        let label = fmt_tick(v, &xt);
        let w = c.text_width(&label, TextSize::Small);
        if x - w / 2.0 > last_right + 6.0 {
            c.text(x, f.bottom() + 16.0, &label, small_mid);
            last_right = x + w / 2.0;
        }
    }

    // Bars: translucent fills first, then crisp step outlines on top.
    let bin_w = (hi - lo) / BINS as f64;
    let classes = [(&diff_h, &diff, DIFFERENT), (&same_h, &same, SAME)];
    for (h, vals, color) in classes.iter() {
        if vals.is_empty() {
            continue;
        }
        for (i, &frac) in h.iter().enumerate() {
            if frac <= 0.0 {
                continue;
            }
            let xa = xu(lo + bin_w * i as f64);
            let xb = xu(lo + bin_w * (i + 1) as f64);
            let ytop = yu(frac);
            c.fill_rect(xa, ytop, xb - xa, f.bottom() - ytop, *color, 0.35);
        }
    }
    for (h, vals, color) in classes.iter() {
        if vals.is_empty() {
            continue;
        }
        let mut pts = Vec::with_capacity(2 * BINS + 2);
        pts.push((xu(lo), f.bottom()));
        for (i, &frac) in h.iter().enumerate() {
            let y = yu(frac);
            pts.push((xu(lo + bin_w * i as f64), y));
            pts.push((xu(lo + bin_w * (i + 1) as f64), y));
        }
        pts.push((xu(hi), f.bottom()));
        c.polyline(&pts, Stroke::solid(*color, 1.5));
    }

    if !has_data {
        c.text(
            (f.left + f.right()) / 2.0,
            (f.top + f.bottom()) / 2.0,
            "no distances",
            TextStyle::new(TextSize::Label, Anchor::Middle, MUTED),
        );
    }

    // Threshold marker.
    if t.is_finite() {
        let label = format!("threshold {}", fmt_value(t));
        let w = c.text_width(&label, TextSize::Small);
        let ly = f.top + 14.0;
        if t >= x0 && t <= x1 {
            let x = xu(t);
            c.line((x, f.top), (x, f.bottom()), Stroke::dashed(THRESH, 1.5));
            let (tx, anchor, bg_x) = if x + 8.0 + w + 4.0 <= f.right() {
                (x + 7.0, Anchor::Start, x + 4.0)
            } else {
                (x - 7.0, Anchor::End, x - 10.0 - w)
            };
            c.fill_rect(bg_x, ly - 8.0, w + 6.0, 16.0, WHITE, 0.85);
            c.text(tx, ly, &label, TextStyle::new(TextSize::Small, anchor, INK));
        } else {
            let label = format!("{label} (off scale)");
            c.text(
                f.right() - 6.0,
                ly,
                &label,
                TextStyle::new(TextSize::Small, Anchor::End, INK),
            );
        }
    }

    c.rect(f.left, f.top, f.width, f.height, Stroke::solid(AXIS, 1.0));
    axis_labels(c, &f, p.metric, "fraction of pairs", f.left - 62.0);
}

fn axis_labels(c: &mut dyn Canvas, f: &Frame, xlabel: &str, ylabel: &str, ylabel_x: f64) {
    let xlabel = fit_text(c, xlabel, TextSize::Label, f.width);
    c.text(
        (f.left + f.right()) / 2.0,
        f.bottom() + 42.0,
        &xlabel,
        TextStyle::new(TextSize::Label, Anchor::Middle, INK),
    );
    let ylabel = fit_text(c, ylabel, TextSize::Label, f.height);
    c.text(
        ylabel_x,
        (f.top + f.bottom()) / 2.0,
        &ylabel,
        TextStyle {
            vertical: true,
            ..TextStyle::new(TextSize::Label, Anchor::Middle, INK)
        },
    );
}

/// Shortens `s` with a trailing "..." so it fits in `max_w` pixels.
fn fit_text(c: &dyn Canvas, s: &str, size: TextSize, max_w: f64) -> String {
    if c.text_width(s, size) <= max_w {
        return s.to_string();
    }
    let mut chars: Vec<char> = s.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>() + "...";
        if c.text_width(&candidate, size) <= max_w {
            return candidate;
        }
    }
    String::new()
}

// ---------------------------------------------------------------------------
// Numbers

struct Ticks {
    lo: f64,
    hi: f64,
    step: f64,
    ticks: Vec<f64>,
}

/// Round tick positions covering `lo..hi` (about 5 to 10 ticks).
fn nice_ticks(lo: f64, hi: f64) -> Ticks {
    let span = hi - lo;
    if !(lo.is_finite() && hi.is_finite() && span > 0.0 && span.is_finite()) {
        return Ticks {
            lo: 0.0,
            hi: 1.0,
            step: 0.2,
            ticks: (0..=5).map(|i| f64::from(i) * 0.2).collect(),
        };
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let mult = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    let step = mult * mag;
    let first = (lo / step).floor();
    let last = (hi / step).ceil();
    let n = (last - first).clamp(1.0, 40.0) as usize;
    let ticks: Vec<f64> = (0..=n).map(|i| (first + i as f64) * step + 0.0).collect();
    let (tlo, thi) = (first * step, (first + n as f64) * step);
    if thi <= tlo || !tlo.is_finite() || !thi.is_finite() {
        return Ticks {
            lo,
            hi,
            step: span,
            ticks: vec![lo, hi],
        };
    }
    Ticks {
        lo: tlo,
        hi: thi,
        step,
        ticks,
    }
}

/// Like [`nice_ticks`] but keeps `lo..hi` as the axis range and only the ticks inside it.
fn inner_ticks(lo: f64, hi: f64) -> Ticks {
    let t = nice_ticks(lo, hi);
    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
        return t;
    }
    let eps = t.step * 1e-9;
    let ticks: Vec<f64> = t
        .ticks
        .iter()
        .copied()
        .filter(|&v| v >= lo - eps && v <= hi + eps)
        .collect();
    Ticks {
        lo,
        hi,
        step: t.step,
        ticks,
    }
}

fn fmt_tick(v: f64, t: &Ticks) -> String {
    let v = v + 0.0; // no "-0"
    let big = t.lo.abs().max(t.hi.abs());
    if big >= 1e6 || t.step < 1e-4 {
        if v == 0.0 {
            return "0".to_string();
        }
        return format!("{v:.2e}");
    }
    let mut decimals = (-t.step.log10().floor()).max(0.0) as usize;
    if (t.step / 10f64.powf(t.step.log10().floor()) - 2.5).abs() < 1e-9 {
        decimals += 1;
    }
    format!("{:.*}", decimals.min(8), v)
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

fn fmt_fixed(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{:.*}", decimals, v + 0.0)
    } else {
        "n/a".to_string()
    }
}

// ---------------------------------------------------------------------------
// SVG backend

struct SvgCanvas {
    out: String,
}

fn svg_font_size(size: TextSize) -> f64 {
    match size {
        TextSize::Small => 12.0,
        TextSize::Label => 14.0,
        TextSize::Title => 19.0,
    }
}

fn hex(c: Color) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Escapes text for XML content and attributes; drops characters XML 1.0 forbids.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

fn num(v: f64) -> String {
    let v = if v.is_finite() { v } else { 0.0 };
    let s = format!("{v:.1}");
    match s.strip_suffix(".0") {
        Some("-0") => "0".to_string(),
        Some(t) => t.to_string(),
        None => s,
    }
}

impl SvgCanvas {
    fn new(w: u32, h: u32) -> Self {
        let mut out = String::with_capacity(64 * 1024);
        let _ = writeln!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             viewBox=\"0 0 {w} {h}\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">"
        );
        SvgCanvas { out }
    }
    fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
    fn stroke_attrs(s: Stroke) -> String {
        let mut a = format!("stroke=\"{}\" stroke-width=\"{}\"", hex(s.color), s.width);
        if s.dashed {
            a.push_str(" stroke-dasharray=\"6 4\"");
        }
        a
    }
}

impl Canvas for SvgCanvas {
    fn line(&mut self, a: (f64, f64), b: (f64, f64), s: Stroke) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" {}/>",
            num(a.0),
            num(a.1),
            num(b.0),
            num(b.1),
            Self::stroke_attrs(s)
        );
    }
    fn polyline(&mut self, pts: &[(f64, f64)], s: Stroke) {
        let mut p = String::with_capacity(pts.len() * 12);
        for (i, &(x, y)) in pts.iter().enumerate() {
            if i > 0 {
                p.push(' ');
            }
            let _ = write!(p, "{},{}", num(x), num(y));
        }
        let _ = writeln!(
            self.out,
            "<polyline points=\"{p}\" fill=\"none\" stroke-linejoin=\"round\" {}/>",
            Self::stroke_attrs(s)
        );
    }
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, s: Stroke) {
        let _ = writeln!(
            self.out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" {}/>",
            num(x),
            num(y),
            num(w.max(0.0)),
            num(h.max(0.0)),
            Self::stroke_attrs(s)
        );
    }
    fn fill_rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Color, alpha: f64) {
        let opacity = if alpha >= 1.0 {
            String::new()
        } else {
            format!(" fill-opacity=\"{:.2}\"", alpha.max(0.0))
        };
        let _ = writeln!(
            self.out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"{opacity}/>",
            num(x),
            num(y),
            num(w.max(0.0)),
            num(h.max(0.0)),
            hex(color)
        );
    }
    fn circle(&mut self, c: (f64, f64), r: f64, fill: Color, outline: Color) {
        let _ = writeln!(
            self.out,
            "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"1.5\"/>",
            num(c.0),
            num(c.1),
            num(r),
            hex(fill),
            hex(outline)
        );
    }
    fn text(&mut self, x: f64, y: f64, s: &str, style: TextStyle) {
        let fs = svg_font_size(style.size);
        let anchor = match style.anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let weight = if style.size != TextSize::Small {
            " font-weight=\"bold\""
        } else {
            ""
        };
        // Shift the baseline so that `y` is the visual centre of the text.
        let base = y + 0.35 * fs;
        let transform = if style.vertical {
            format!(" transform=\"rotate(-90 {} {})\"", num(x), num(y))
        } else {
            String::new()
        };
        let _ = writeln!(
            self.out,
            "<text x=\"{}\" y=\"{}\" font-size=\"{}\" text-anchor=\"{anchor}\" fill=\"{}\"{weight}{transform}>{}</text>",
            num(x),
            num(base),
            fs,
            hex(style.color),
            xml_escape(s)
        );
    }
    fn text_width(&self, s: &str, size: TextSize) -> f64 {
        // Approximate advances of a DejaVu/Helvetica-like sans-serif face, in em.
        let em: f64 = s
            .chars()
            .map(|ch| match ch {
                ' ' | '.' | ',' | ':' | ';' | 'i' | 'l' | 'j' | '!' | '|' | '\'' => 0.3,
                '(' | ')' | '[' | ']' | 'f' | 't' | 'r' | 'I' | '-' => 0.4,
                '0'..='9' => 0.64,
                'm' | 'w' | 'M' | 'W' | '%' => 0.9,
                '=' | '+' | '<' | '>' => 0.84,
                'A'..='Z' => 0.7,
                _ => 0.6,
            })
            .sum();
        let bold = if size == TextSize::Small { 1.0 } else { 1.08 };
        em * svg_font_size(size) * bold
    }
}

// ---------------------------------------------------------------------------
// Raster backend

/// Keeps coordinates in a sane range so line rasterisers never loop for long.
const COORD_LIMIT: f64 = 4096.0;

struct RasterCanvas {
    img: RgbImage,
}

fn raster_scale(size: TextSize) -> i64 {
    match size {
        TextSize::Small | TextSize::Label => 1,
        TextSize::Title => 2,
    }
}

fn glyph(ch: char) -> [u8; 8] {
    BASIC_FONTS
        .get(ch)
        .or_else(|| LATIN_FONTS.get(ch))
        .or_else(|| BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

fn clamp_coord(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(-COORD_LIMIT, COORD_LIMIT)
    } else {
        0.0
    }
}

impl RasterCanvas {
    fn blend(&mut self, x: i64, y: i64, c: Color, alpha: f64) {
        if x < 0 || y < 0 || x >= i64::from(self.img.width()) || y >= i64::from(self.img.height()) {
            return;
        }
        let px = self.img.get_pixel_mut(x as u32, y as u32);
        let a = alpha.clamp(0.0, 1.0);
        for (dst, &src) in px.0.iter_mut().zip(c.iter()) {
            let v = f64::from(src) * a + f64::from(*dst) * (1.0 - a);
            *dst = v.round().clamp(0.0, 255.0) as u8;
        }
    }

    fn fill_px(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Color, alpha: f64) {
        let (w, h) = (i64::from(self.img.width()), i64::from(self.img.height()));
        for y in y0.max(0)..y1.min(h) {
            for x in x0.max(0)..x1.min(w) {
                self.blend(x, y, c, alpha);
            }
        }
    }

    fn solid_segment(&mut self, a: (f64, f64), b: (f64, f64), s: Stroke) {
        let (ax, ay) = (clamp_coord(a.0), clamp_coord(a.1));
        let (bx, by) = (clamp_coord(b.0), clamp_coord(b.1));
        let width = s.width.clamp(1.0, 8.0).round() as i64;
        let half = (width - 1) / 2;
        if (ay - by).abs() < 0.01 {
            // Horizontal: crisp pixel rows.
            let row = ay.floor() as i64 - half;
            let (x0, x1) = (ax.min(bx).round() as i64, ax.max(bx).round() as i64);
            self.fill_px(x0, row, x1 + 1, row + width, s.color, 1.0);
        } else if (ax - bx).abs() < 0.01 {
            let col = ax.floor() as i64 - half;
            let (y0, y1) = (ay.min(by).round() as i64, ay.max(by).round() as i64);
            self.fill_px(col, y0, col + width, y1 + 1, s.color, 1.0);
        } else {
            let steep = (by - ay).abs() > (bx - ax).abs();
            let color = Rgb(s.color);
            for k in 0..width {
                let off = (k - half) as i32;
                let (dx, dy) = if steep { (off, 0) } else { (0, off) };
                draw_antialiased_line_segment_mut(
                    &mut self.img,
                    (ax.round() as i32 + dx, ay.round() as i32 + dy),
                    (bx.round() as i32 + dx, by.round() as i32 + dy),
                    color,
                    |line: Rgb<u8>, orig: Rgb<u8>, w: f32| interpolate(line, orig, w),
                );
            }
        }
    }
}

impl Canvas for RasterCanvas {
    fn line(&mut self, a: (f64, f64), b: (f64, f64), s: Stroke) {
        if !s.dashed {
            self.solid_segment(a, b, s);
            return;
        }
        let (a, b) = (
            (clamp_coord(a.0), clamp_coord(a.1)),
            (clamp_coord(b.0), clamp_coord(b.1)),
        );
        let len = (b.0 - a.0).hypot(b.1 - a.1);
        let (on, off) = (6.0, 4.0);
        let mut t = 0.0;
        while t < len {
            let t1 = (t + on).min(len);
            let p0 = (a.0 + (b.0 - a.0) * t / len, a.1 + (b.1 - a.1) * t / len);
            let p1 = (a.0 + (b.0 - a.0) * t1 / len, a.1 + (b.1 - a.1) * t1 / len);
            self.solid_segment(p0, p1, Stroke { dashed: false, ..s });
            t += on + off;
        }
    }
    fn polyline(&mut self, pts: &[(f64, f64)], s: Stroke) {
        for w in pts.windows(2) {
            self.line(w[0], w[1], s);
        }
    }
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, s: Stroke) {
        let (x1, y1) = (x + w, y + h);
        self.line((x, y), (x1, y), s);
        self.line((x1, y), (x1, y1), s);
        self.line((x1, y1), (x, y1), s);
        self.line((x, y1), (x, y), s);
    }
    fn fill_rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Color, alpha: f64) {
        let (x0, y0) = (clamp_coord(x).round() as i64, clamp_coord(y).round() as i64);
        let (x1, y1) = (
            clamp_coord(x + w).round() as i64,
            clamp_coord(y + h).round() as i64,
        );
        self.fill_px(x0, y0, x1, y1, color, alpha);
    }
    fn circle(&mut self, c: (f64, f64), r: f64, fill: Color, outline: Color) {
        // Antialiased disc with a 1.5 px ring, by pixel coverage.
        let (cx, cy) = (clamp_coord(c.0), clamp_coord(c.1));
        let r = r.clamp(0.5, 200.0);
        let ring = 1.5;
        let outer = r + ring;
        let (x0, x1) = ((cx - outer - 1.0) as i64, (cx + outer + 1.0) as i64);
        let (y0, y1) = ((cy - outer - 1.0) as i64, (cy + outer + 1.0) as i64);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let d = (x as f64 + 0.5 - cx).hypot(y as f64 + 0.5 - cy);
                let cover_outer = (outer + 0.5 - d).clamp(0.0, 1.0);
                let cover_inner = (r + 0.5 - d).clamp(0.0, 1.0);
                if cover_outer > 0.0 {
                    self.blend(x, y, outline, cover_outer - cover_inner);
                }
                if cover_inner > 0.0 {
                    self.blend(x, y, fill, cover_inner);
                }
            }
        }
    }
    fn text(&mut self, x: f64, y: f64, s: &str, style: TextStyle) {
        let scale = raster_scale(style.size);
        // Labels are double-struck one pixel apart to read as a bolder weight.
        let strikes: i64 = if style.size == TextSize::Label { 2 } else { 1 };
        let w = self.text_width(s, style.size) as i64;
        let h = 8 * scale;
        let (x, y) = (clamp_coord(x).round() as i64, clamp_coord(y).round() as i64);
        let shift = match style.anchor {
            Anchor::Start => 0,
            Anchor::Middle => w / 2,
            Anchor::End => w,
        };
        for (i, ch) in s.chars().enumerate() {
            let bitmap = glyph(ch);
            let advance = i as i64 * 8 * scale;
            for (gy, row) in bitmap.iter().enumerate() {
                for gx in 0..8i64 {
                    if row & (1u8 << gx) == 0 {
                        continue;
                    }
                    // Position along the text (u) and across it (v), in pixels.
                    let u0 = advance - shift + gx * scale;
                    let v0 = gy as i64 * scale - h / 2;
                    for du in 0..scale {
                        for dv in 0..scale {
                            for strike in 0..strikes {
                                let (u, v) = (u0 + du + strike, v0 + dv);
                                let (px, py) = if style.vertical {
                                    (x + v, y - u)
                                } else {
                                    (x + u, y + v)
                                };
                                self.blend(px, py, style.color, 1.0);
                            }
                        }
                    }
                }
            }
        }
    }
    fn text_width(&self, s: &str, size: TextSize) -> f64 {
        (s.chars().count() as i64 * 8 * raster_scale(size)) as f64
    }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_roc() -> Vec<(f64, f64)> {
        vec![
            (0.0, 0.0),
            (0.0, 0.5),
            (0.02, 0.9),
            (0.1, 0.97),
            (0.3, 0.995),
            (1.0, 1.0),
        ]
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
            operating_point: (0.02, 0.9),
        }
    }

    fn spread(center: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| center + ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.3)
            .collect()
    }

    #[test]
    fn svg_is_well_formed_and_escaped() {
        let roc = sample_roc();
        let same = spread(0.4, 500);
        let diff = spread(0.85, 500);
        let p = with(&roc, &same, &diff, "A&B <pairs> \"q\" 'x'");
        let svg = render_svg(&p);
        assert!(svg.starts_with("<svg"));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("A&amp;B &lt;pairs&gt; &quot;q&quot; &apos;x&apos;"));
        assert!(!svg.contains("<pairs>"));
        assert!(svg.contains("AUC 0.9876"));
        assert!(svg.contains("threshold 0.600: TPR 0.900, FPR 0.020"));
        assert!(svg.contains("same (n=500)"));
        // Every element opened on its own line is closed.
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        for line in svg.lines().skip(1) {
            if line == "</svg>" {
                continue;
            }
            assert!(line.starts_with('<'), "{line}");
            assert!(line.ends_with("/>") || line.ends_with("</text>"), "{line}");
        }
    }

    #[test]
    fn png_has_size_and_curve_pixels() {
        let roc = sample_roc();
        let same = spread(0.4, 500);
        let diff = spread(0.85, 500);
        let p = with(&roc, &same, &diff, "test");
        let img = render_png(&p);
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let f = ROC_FRAME;
        // Sample the middle of a few segments and look for curve-coloured pixels nearby.
        for w in roc.windows(2).take(4) {
            let (fx, fy) = ((w[0].0 + w[1].0) / 2.0, (w[0].1 + w[1].1) / 2.0);
            let (px, py) = (f.roc_x(fx).round() as i64, f.roc_y(fy).round() as i64);
            let mut found = false;
            for dy in -2..=2 {
                for dx in -2..=2 {
                    let (x, y) = ((px + dx) as u32, (py + dy) as u32);
                    let Rgb([r, g, b]) = *img.get_pixel(x, y);
                    if i32::from(b) > i32::from(r) + 60 && i32::from(b) > i32::from(g) + 20 {
                        found = true;
                    }
                }
            }
            assert!(found, "no curve pixel near ({px},{py})");
        }
        // Both histogram colours appear in the right panel.
        let count = |c: Color| {
            img.enumerate_pixels()
                .filter(|(x, _, px)| f64::from(*x) > HIST_FRAME.left && px.0 == c)
                .count()
        };
        assert!(count(SAME) > 50);
        assert!(count(DIFFERENT) > 50);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let two = [(0.0, 0.0), (1.0, 1.0)];
        let empty: [f32; 0] = [];
        let flat = [0.5f32; 100];
        let extreme = [f32::MAX, -f32::MAX, 0.0, 1e-30, f32::MIN_POSITIVE];
        let near = [1.0e30f32, 1.000_001e30];
        let inf = [f32::INFINITY, f32::NEG_INFINITY, 1.0];
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
        ];
        for (roc, same, diff) in cases {
            let mut p = with(roc, same, diff, &long_title);
            p.auc = f64::NAN;
            let _ = render_png(&p);
            let svg = render_svg(&p);
            assert!(svg.ends_with("</svg>"));
            p.threshold = f32::MAX;
            p.operating_point = (f64::INFINITY, -3.0);
            let _ = render_png(&p);
            let _ = render_svg(&p);
            p.threshold = f32::NAN;
            p.title = "\u{0}\u{7}ünïcødé ☺";
            let _ = render_png(&p);
            assert!(render_svg(&p).contains("ünïcødé"));
        }
    }

    #[test]
    fn nice_ticks_are_round() {
        let t = nice_ticks(0.1, 0.9);
        assert!((t.step - 0.2).abs() < 1e-12);
        assert!(t.lo.abs() < 1e-12 && (t.hi - 1.0).abs() < 1e-12);
        assert_eq!(fmt_tick(t.ticks[2], &t), "0.4");
        let t = nice_ticks(0.13, 1.17);
        assert!((t.step - 0.25).abs() < 1e-12);
        assert_eq!(fmt_tick(t.ticks[2], &t), "0.50");
        let t = inner_ticks(0.13, 1.17);
        assert_eq!((t.lo, t.hi), (0.13, 1.17));
        assert!(t.ticks.iter().all(|&v| (0.13..=1.17).contains(&v)));
        let t = nice_ticks(0.0, 0.061);
        assert_eq!(fmt_tick(t.ticks[1], &t), "0.02");
    }
}
