//! SVG chart for `ringsync bench --plot FILE.svg`.
//!
//! Turns benchmark result rows ([`Point`]) into one self-contained SVG document: a grid of small
//! multiples with one row per mode (read, write, copy) and one panel per copy path measured in that
//! mode. Each panel plots throughput (MB/s, linear axis from 0) against block size (log2 axis,
//! ticks at the block sizes that were measured), with one coloured line per queue depth (and thread
//! count, when more than one was used). Panels in the same row share their y axis so they can be
//! compared at a glance; one shared legend under the title maps colours and marker shapes to series.
//!
//! What this module must not do: it performs no I/O (the caller writes the returned `String`
//! wherever it likes), it never panics on odd input (non-finite or negative throughputs and zero
//! block sizes are skipped, duplicates keep their best value, huge values just get a matching
//! scale, a mode with more than 8 paths wraps onto further grid lines, and panel and legend counts
//! are capped), and it needs no system fonts: text is emitted as SVG `<text>` with a generic
//! `sans-serif` family and laid out with estimated widths. All text (title, footer, path names) is
//! stripped of characters XML forbids and XML-escaped by the plotters SVG backend.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// One measured combination.
#[derive(Debug, Clone, Copy)]
pub struct Point<'a> {
    /// Copy path, e.g. "uring-vec", "uring-fixed", "uring-direct", "psync", "cfr", "splice", "reflink".
    pub path: &'a str,
    /// "read", "write" or "copy".
    pub mode: &'a str,
    /// Block size in bytes (any positive value; 0 is skipped).
    pub block_size: u64,
    /// Queue depth (1 for paths without one).
    pub qd: u32,
    /// Number of worker threads.
    pub threads: u32,
    /// Throughput in MB/s (10^6 bytes per second); NaN, infinite or negative values are skipped.
    pub mb_s: f64,
}

/// Width of one panel in pixels.
const PANEL_W: u32 = 360;
/// Height of one panel in pixels.
const PANEL_H: u32 = 260;
/// Outer margin of the whole document.
const MARGIN: u32 = 20;
/// Panels per grid line; a mode with more paths continues on the next line.
const MAX_COLS: usize = 8;
/// Upper bound on drawn panels (the rest are counted in a footnote).
const MAX_PANELS: usize = 96;
/// Upper bound on legend entries (colours and shapes repeat long before this anyway).
const MAX_LEGEND: usize = 40;
/// Widest canvas that text alone may ask for.
const MAX_TEXT_W: u32 = 3000;
/// Modes in the order their rows appear; unknown modes follow in order of appearance.
const MODE_ORDER: [&str; 3] = ["read", "write", "copy"];

// Font sizes in SVG pixels.
const TITLE_PX: f64 = 18.0;
const CAPTION_PX: f64 = 14.0;
const LEGEND_PX: f64 = 13.0;
const TICK_PX: f64 = 11.0;
const DESC_PX: f64 = 12.0;
const FOOTER_PX: f64 = 14.0;
const NOTE_PX: f64 = 11.0;

const LEGEND_ROW_H: u32 = 22;
const X_LABEL_AREA: u32 = 40;
const PANEL_MARGIN: u32 = 8;
const PANEL_MARGIN_RIGHT: u32 = 18;

/// matplotlib "tab10" colours: distinct, readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];
const TEXT: RGBColor = RGBColor(0x22, 0x22, 0x22);
const MUTED: RGBColor = RGBColor(0x66, 0x66, 0x66);
const GRID: RGBColor = RGBColor(0xe2, 0xe2, 0xe2);
const AXIS: RGBColor = RGBColor(0x88, 0x88, 0x88);
const PANEL_BG: RGBColor = RGBColor(0xfa, 0xfa, 0xfa);

type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;

/// x axis: block sizes in bytes, placed on a log2 scale between `lo` and `hi` (log2 values),
/// with one key point (grid line) per measured block size.
#[derive(Clone)]
struct BlockAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<u64>,
}

impl Ranged for BlockAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = u64;

    fn map(&self, value: &u64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        let frac = if span > 0.0 {
            (log2(*value) - self.lo) / span
        } else {
            0.5
        };
        // Keep hostile values on (or just off) the canvas; `as` saturates anyway.
        let frac = if frac.is_finite() {
            frac.clamp(-1.0, 2.0)
        } else {
            0.0
        };
        let px = f64::from(limit.0) + frac * (f64::from(limit.1) - f64::from(limit.0));
        px.round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<u64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<u64> {
        (self.lo.exp2() as u64)..(self.hi.exp2() as u64)
    }
}

/// Marker shapes, cycled per series together with the colour so that lines stay distinguishable
/// for colour-blind readers and in greyscale prints.
#[derive(Clone, Copy)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
}
const SHAPES: [Shape; 5] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Diamond,
    Shape::Cross,
];

/// Colour and marker of the series with global index `idx`.
fn series_style(idx: usize) -> (RGBColor, Shape) {
    // Colour cycles fastest; the shape changes with every colour step as well (5 and 10 share a
    // factor, so offset the shape by the palette lap to get 50 distinct combinations).
    let colour = PALETTE[idx % PALETTE.len()];
    let shape = SHAPES[(idx + idx / PALETTE.len()) % SHAPES.len()];
    (colour, shape)
}

/// One (mode, path) panel: its series as (global series index, [(block size, MB/s)]).
struct Panel {
    mode_idx: usize,
    caption: String,
    series: Vec<(usize, Vec<(u64, f64)>)>,
}

/// Everything needed to draw, derived from the raw points.
struct Model {
    /// Mode rows in display order: (mode, panels of that mode).
    rows: Vec<(String, Vec<Panel>)>,
    /// y maximum per mode row (already padded).
    y_max: Vec<f64>,
    /// Legend labels, indexed by global series index.
    labels: Vec<String>,
    /// Distinct block sizes over all panels, ascending.
    block_sizes: Vec<u64>,
    /// Panels dropped because of [`MAX_PANELS`].
    omitted_panels: usize,
}

/// The whole SVG document as a String. `title` goes on top (e.g. "ringsync bench: /var/tmp (ext4), 256 MiB files, cold cache"),
/// `best` is an optional footer line (e.g. "fastest copy path on this disk: uring-fixed, 1M, qd 32: 1350 MB/s").
/// Err(message) only for failures of the drawing backend; empty `points` must still give a valid SVG saying "no results".
pub fn render_svg(title: &str, best: Option<&str>, points: &[Point]) -> Result<String, String> {
    // The canvas grows to fit these texts up to MAX_TEXT_W; beyond that they are shortened.
    let title = fit(&clean_text(title), TITLE_PX, MAX_TEXT_W - 2 * MARGIN);
    let best = best
        .map(|b| fit(&clean_text(b), FOOTER_PX, MAX_TEXT_W - 2 * MARGIN))
        .filter(|b| !b.is_empty());
    let model = build_model(points);
    let mut out = String::new();
    if model.rows.is_empty() {
        render_empty(&mut out, &title, best.as_deref())?;
    } else {
        render_grid(&mut out, &title, best.as_deref(), &model)?;
    }
    Ok(out)
}

/// Drawing errors become plain messages.
fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: drawing the SVG failed: {e}")
}

/// Replaces characters that may not appear in XML 1.0 (control characters, U+FFFE, U+FFFF)
/// with spaces; escaping of `<`, `&` and quotes is done by the SVG backend.
fn clean_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c == '\u{fffe}' || c == '\u{ffff}' {
                ' '
            } else {
                c
            }
        })
        .collect::<String>()
        .trim()
        .to_string()
}

/// A font of `px` SVG pixels (plotters divides the requested size by 1.24 when writing SVG).
fn font(px: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::SansSerif, px * 1.24, FontStyle::Normal)
}

fn bold(px: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::SansSerif, px * 1.24, FontStyle::Bold)
}

/// Generous estimate of the rendered width of `s` in a sans-serif font of `px` pixels.
fn text_w(s: &str, px: f64) -> u32 {
    let w = s.chars().count() as f64 * px * 0.62;
    w.ceil().min(f64::from(u32::MAX / 4)) as u32
}

/// `s`, shortened with an ellipsis so that its estimated width at `px` stays within `max_w`.
fn fit(s: &str, px: f64, max_w: u32) -> String {
    if text_w(s, px) <= max_w {
        return s.to_string();
    }
    let keep = (f64::from(max_w) / (px * 0.62)).floor() as usize;
    let mut out: String = s.chars().take(keep.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Groups, filters and deduplicates the points.
fn build_model(points: &[Point]) -> Model {
    // Valid points only; duplicates keep the highest throughput.
    type Key<'p> = (&'p str, &'p str, u64, u32, u32);
    let mut best: HashMap<Key, f64> = HashMap::new();
    let mut path_order: Vec<&str> = Vec::new();
    let mut extra_modes: Vec<&str> = Vec::new();
    for p in points {
        if p.block_size == 0 || !p.mb_s.is_finite() || p.mb_s < 0.0 {
            continue;
        }
        if !path_order.contains(&p.path) {
            path_order.push(p.path);
        }
        if !MODE_ORDER.contains(&p.mode) && !extra_modes.contains(&p.mode) {
            extra_modes.push(p.mode);
        }
        let v = best
            .entry((p.mode, p.path, p.block_size, p.qd, p.threads))
            .or_insert(p.mb_s);
        if p.mb_s > *v {
            *v = p.mb_s;
        }
    }

    let series_keys: BTreeSet<(u32, u32)> = best.keys().map(|k| (k.3, k.4)).collect();
    let thread_counts: BTreeSet<u32> = series_keys.iter().map(|k| k.1).collect();
    let labels: Vec<String> = series_keys
        .iter()
        .map(|&(qd, thr)| {
            if thread_counts.len() > 1 {
                format!("qd {qd} · {thr} thr")
            } else {
                format!("qd {qd}")
            }
        })
        .collect();
    let series_idx: HashMap<(u32, u32), usize> =
        series_keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();

    // mode -> path -> series index -> block size -> MB/s.
    type BySeries = BTreeMap<usize, BTreeMap<u64, f64>>;
    let mut grouped: HashMap<&str, HashMap<&str, BySeries>> = HashMap::new();
    for (&(mode, path, bs, qd, thr), &v) in &best {
        let idx = series_idx.get(&(qd, thr)).copied().unwrap_or(0);
        grouped
            .entry(mode)
            .or_default()
            .entry(path)
            .or_default()
            .entry(idx)
            .or_default()
            .insert(bs, v);
    }

    let modes: Vec<&str> = MODE_ORDER
        .iter()
        .copied()
        .filter(|m| grouped.contains_key(m))
        .chain(extra_modes.iter().copied())
        .collect();

    let mut rows = Vec::new();
    let mut y_max = Vec::new();
    let mut block_sizes = BTreeSet::new();
    let mut drawn = 0usize;
    let mut omitted_panels = 0usize;
    for mode in modes {
        let Some(by_path) = grouped.get(mode) else {
            continue;
        };
        let mut panels = Vec::new();
        let mut row_max = 0.0f64;
        for path in &path_order {
            let Some(by_series) = by_path.get(path) else {
                continue;
            };
            if drawn >= MAX_PANELS {
                omitted_panels += 1;
                continue;
            }
            drawn += 1;
            let mut series = Vec::new();
            for (&idx, pts) in by_series {
                let mut line = Vec::with_capacity(pts.len());
                for (&bs, &v) in pts {
                    block_sizes.insert(bs);
                    row_max = row_max.max(v);
                    line.push((bs, v));
                }
                series.push((idx, line));
            }
            panels.push(Panel {
                mode_idx: rows.len(),
                caption: fit(
                    &format!("{} · {}", clean_text(mode), clean_text(path)),
                    CAPTION_PX,
                    PANEL_W - 2 * PANEL_MARGIN,
                ),
                series,
            });
        }
        if panels.is_empty() {
            continue;
        }
        y_max.push(pad_max(row_max));
        rows.push((clean_text(mode), panels));
    }

    Model {
        rows,
        y_max,
        labels,
        block_sizes: block_sizes.into_iter().collect(),
        omitted_panels,
    }
}

fn log2(bs: u64) -> f64 {
    (bs as f64).log2()
}

/// Top of the y axis for a row whose largest value is `max`: 10% headroom, never degenerate.
fn pad_max(max: f64) -> f64 {
    if max.is_nan() || max <= 0.0 {
        return 1.0;
    }
    let padded = max * 1.1;
    let top = if padded.is_finite() { padded } else { max };
    top.max(1e-6)
}

/// "4K", "64K", "1M", "8M", "1.5K", "512".
fn human_size(b: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (1 << 60, "E"),
        (1 << 50, "P"),
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (unit, suffix) in UNITS {
        if b >= unit {
            if b % unit == 0 {
                return format!("{}{suffix}", b / unit);
            }
            let s = format!("{:.1}", b as f64 / unit as f64);
            let s = s.strip_suffix(".0").unwrap_or(&s);
            return format!("{s}{suffix}");
        }
    }
    b.to_string()
}

/// Formats a y tick; `top` is the axis maximum, which decides the precision.
fn format_mb_s(v: f64, top: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    if top >= 1e6 {
        return format!("{v:.1e}");
    }
    let step = top / 5.0;
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-step.log10()).ceil().clamp(0.0, 6.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// Canvas width for the grid and the texts that must fit.
fn canvas_width(grid_cols: usize, texts: &[(&str, f64)]) -> u32 {
    let grid = (grid_cols.max(1) as u32)
        .saturating_mul(PANEL_W)
        .saturating_add(2 * MARGIN);
    let text = texts
        .iter()
        .map(|(s, px)| text_w(s, *px).saturating_add(2 * MARGIN))
        .max()
        .unwrap_or(0)
        .min(MAX_TEXT_W);
    grid.max(text).max(480)
}

/// The document for "nothing to show".
fn render_empty(out: &mut String, title: &str, best: Option<&str>) -> Result<(), String> {
    let width = canvas_width(1, &[(title, TITLE_PX), (best.unwrap_or(""), FOOTER_PX)]);
    let height = 200;
    let root = SVGBackend::with_string(out, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mx = MARGIN as i32;
    if !title.is_empty() {
        root.draw_text(title, &bold(TITLE_PX).color(&TEXT), (mx, 18))
            .map_err(err)?;
    }
    let style = font(24.0).color(&MUTED).pos(Pos::new(HPos::Center, VPos::Center));
    root.draw_text("no results", &style, (width as i32 / 2, height as i32 / 2))
        .map_err(err)?;
    if let Some(best) = best {
        root.draw_text(best, &bold(FOOTER_PX).color(&TEXT), (mx, height as i32 - 34))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Legend entries laid out in lines: (line, x offset, label index). Returns also the line count.
fn layout_legend(labels: &[String], avail_w: u32) -> (Vec<(u32, u32, usize)>, u32) {
    let mut placed = Vec::new();
    let (mut line, mut x) = (0u32, 0u32);
    for (i, label) in labels.iter().enumerate().take(MAX_LEGEND) {
        let w = legend_entry_w(label);
        if x > 0 && x.saturating_add(w) > avail_w {
            line += 1;
            x = 0;
        }
        placed.push((line, x, i));
        x = x.saturating_add(w);
    }
    let lines = if placed.is_empty() { 0 } else { line + 1 };
    (placed, lines)
}

fn legend_entry_w(label: &str) -> u32 {
    30 + 6 + text_w(label, LEGEND_PX) + 22
}

fn render_grid(out: &mut String, title: &str, best: Option<&str>, model: &Model) -> Result<(), String> {
    // Grid geometry: each mode occupies ceil(panels / MAX_COLS) grid lines.
    let lines_per_row: Vec<usize> = model
        .rows
        .iter()
        .map(|(_, p)| p.len().div_ceil(MAX_COLS))
        .collect();
    let grid_lines: usize = lines_per_row.iter().sum();
    let grid_cols = model
        .rows
        .iter()
        .map(|(_, p)| p.len().min(MAX_COLS))
        .max()
        .unwrap_or(1);

    let note = "MB/s = 10^6 bytes per second · block size axis is log2 · y axes shared within each row";
    let omitted = if model.omitted_panels > 0 {
        format!("{} more panels not shown", model.omitted_panels)
    } else {
        String::new()
    };
    let width = canvas_width(
        grid_cols,
        &[
            (title, TITLE_PX),
            (best.unwrap_or(""), FOOTER_PX),
            (note, NOTE_PX),
            (&omitted, NOTE_PX),
        ],
    );

    let (legend, legend_lines) = layout_legend(&model.labels, width - 2 * MARGIN);
    let legend_more = model.labels.len().saturating_sub(MAX_LEGEND);
    let title_h = if title.is_empty() { 0 } else { 34 };
    let legend_top = MARGIN + title_h;
    let grid_top = legend_top + legend_lines * LEGEND_ROW_H + 10;
    let grid_h = (grid_lines as u32).saturating_mul(PANEL_H);
    let footer_top = grid_top.saturating_add(grid_h).saturating_add(8);
    let mut footer_lines = 1; // the note
    if best.is_some() {
        footer_lines += 1;
    }
    if !omitted.is_empty() {
        footer_lines += 1;
    }
    let height = footer_top
        .saturating_add(footer_lines * 22)
        .saturating_add(MARGIN);

    let root = SVGBackend::with_string(out, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mx = MARGIN as i32;

    if !title.is_empty() {
        root.draw_text(title, &bold(TITLE_PX).color(&TEXT), (mx, MARGIN as i32))
            .map_err(err)?;
    }

    // Shared legend.
    let legend_font = font(LEGEND_PX)
        .color(&TEXT)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut last_end = (0i32, legend_top as i32);
    for &(line, x, idx) in &legend {
        let (colour, shape) = series_style(idx);
        let cy = (legend_top + line * LEGEND_ROW_H + LEGEND_ROW_H / 2) as i32;
        let x0 = mx + x as i32;
        root.draw(&PathElement::new(
            vec![(x0, cy), (x0 + 30, cy)],
            colour.stroke_width(2),
        ))
        .map_err(err)?;
        draw_marker(&root, (x0 + 15, cy), shape, colour)?;
        root.draw_text(&model.labels[idx], &legend_font, (x0 + 36, cy))
            .map_err(err)?;
        last_end = (x0 + legend_entry_w(&model.labels[idx]) as i32, cy);
    }
    if legend_more > 0 {
        let style = font(LEGEND_PX)
            .color(&MUTED)
            .pos(Pos::new(HPos::Left, VPos::Center));
        root.draw_text(&format!("+{legend_more} more series"), &style, last_end)
            .map_err(err)?;
    }

    // Shared x axis: half an octave of room on each side, ticks at the measured block sizes.
    let (lo, hi) = match (model.block_sizes.first(), model.block_sizes.last()) {
        (Some(&a), Some(&b)) => (log2(a), log2(b)),
        _ => (0.0, 0.0),
    };
    let (x_lo, x_hi) = if hi - lo < 1e-9 {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo - 0.5, hi + 0.5)
    };

    // y label area wide enough for the widest tick label in any row.
    let y_label_w = model
        .y_max
        .iter()
        .map(|&top| text_w(&format_mb_s(top, top), TICK_PX))
        .max()
        .unwrap_or(0)
        .min(200);
    let y_area = y_label_w + 12 + 22;

    // x tick labels: every measured block size gets a grid line, labels are thinned so they
    // never overlap (estimated plot width and label widths).
    let plot_w = PANEL_W
        .saturating_sub(y_area + PANEL_MARGIN + PANEL_MARGIN_RIGHT)
        .max(40) as f64;
    // Every label is budgeted at the widest one, so evenly spaced sizes get evenly thinned labels.
    let half = model
        .block_sizes
        .iter()
        .map(|&b| f64::from(text_w(&human_size(b), TICK_PX)) / 2.0 + 4.0)
        .fold(0.0, f64::max);
    let mut labelled: Vec<u64> = Vec::new();
    let mut last_right = f64::NEG_INFINITY;
    for &b in &model.block_sizes {
        let centre = (log2(b) - x_lo) / (x_hi - x_lo) * plot_w;
        if centre - half >= last_right {
            labelled.push(b);
            last_right = centre + half;
        }
    }
    let x_fmt = |b: &u64| -> String {
        if labelled.binary_search(b).is_ok() {
            human_size(*b)
        } else {
            String::new()
        }
    };
    let x_axis = BlockAxis {
        lo: x_lo,
        hi: x_hi,
        ticks: model.block_sizes.clone(),
    };

    let mut grid_line = 0usize;
    for (row_idx, (_, panels)) in model.rows.iter().enumerate() {
        for (i, panel) in panels.iter().enumerate() {
            let line = grid_line + i / MAX_COLS;
            let col = i % MAX_COLS;
            let left = MARGIN.saturating_add((col as u32).saturating_mul(PANEL_W));
            let top = grid_top.saturating_add((line as u32).saturating_mul(PANEL_H));
            let area = root.clone().shrink((left, top), (PANEL_W, PANEL_H));
            let y_top = model.y_max.get(panel.mode_idx).copied().unwrap_or(1.0);
            draw_panel(&root, &area, panel, &x_axis, &x_fmt, y_top, y_area)?;
        }
        grid_line += lines_per_row[row_idx];
    }

    // Footer.
    let mut fy = footer_top as i32;
    if let Some(best) = best {
        root.draw_text(best, &bold(FOOTER_PX).color(&TEXT), (mx, fy))
            .map_err(err)?;
        fy += 22;
    }
    if !omitted.is_empty() {
        root.draw_text(&omitted, &font(NOTE_PX).color(&MUTED), (mx, fy))
            .map_err(err)?;
        fy += 22;
    }
    root.draw_text(note, &font(NOTE_PX).color(&MUTED), (mx, fy))
        .map_err(err)?;

    root.present().map_err(err)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn draw_panel(
    root: &Area,
    area: &Area,
    panel: &Panel,
    x_axis: &BlockAxis,
    x_fmt: &dyn Fn(&u64) -> String,
    y_top: f64,
    y_area: u32,
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.caption, bold(CAPTION_PX).color(&TEXT))
        .margin(PANEL_MARGIN)
        .margin_right(PANEL_MARGIN_RIGHT)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(y_area)
        .build_cartesian_2d(x_axis.clone(), 0f64..y_top)
        .map_err(err)?;
    chart.plotting_area().fill(&PANEL_BG).map_err(err)?;
    let y_fmt = |v: &f64| format_mb_s(*v, y_top);
    chart
        .configure_mesh()
        .x_desc("block size")
        .y_desc("MB/s")
        .x_label_formatter(x_fmt)
        .y_label_formatter(&y_fmt)
        .y_labels(6)
        .max_light_lines(0)
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(TRANSPARENT)
        .axis_style(AXIS.stroke_width(1))
        .label_style(font(TICK_PX).color(&TEXT))
        .axis_desc_style(font(DESC_PX).color(&MUTED))
        .draw()
        .map_err(err)?;

    for (idx, pts) in &panel.series {
        let (colour, _) = series_style(*idx);
        if pts.len() > 1 {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(err)?;
        }
    }
    // Markers last so lines never hide them; drawn in pixel space so all shapes share one helper.
    for (idx, pts) in &panel.series {
        let (colour, shape) = series_style(*idx);
        for p in pts {
            draw_marker(root, chart.backend_coord(p), shape, colour)?;
        }
    }
    Ok(())
}

/// Draws one series marker centred on `(x, y)` (canvas pixels).
fn draw_marker(root: &Area, (x, y): (i32, i32), shape: Shape, colour: RGBColor) -> Result<(), String> {
    let fill = colour.filled();
    let edge = WHITE.stroke_width(1);
    match shape {
        Shape::Circle => {
            root.draw(&Circle::new((x, y), 4, fill)).map_err(err)?;
            root.draw(&Circle::new((x, y), 4, edge)).map_err(err)?;
        }
        Shape::Square => {
            root.draw(&Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], fill))
                .map_err(err)?;
        }
        Shape::Triangle => {
            root.draw(&Polygon::new(
                vec![(x, y - 5), (x + 5, y + 4), (x - 5, y + 4)],
                fill,
            ))
            .map_err(err)?;
        }
        Shape::Diamond => {
            root.draw(&Polygon::new(
                vec![(x, y - 5), (x + 5, y), (x, y + 5), (x - 5, y)],
                fill,
            ))
            .map_err(err)?;
        }
        Shape::Cross => {
            let style = colour.stroke_width(3);
            root.draw(&PathElement::new(vec![(x - 4, y - 4), (x + 4, y + 4)], style))
                .map_err(err)?;
            root.draw(&PathElement::new(vec![(x - 4, y + 4), (x + 4, y - 4)], style))
                .map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal XML well-formedness check (enough for what the SVG backend emits): one root
    /// element, properly nested and named tags, quoted attributes without raw `<`, and no raw `&`
    /// or `<` in text or attribute values except as valid references. Returns the first problem.
    fn check_xml(doc: &str) -> Result<(), String> {
        fn check_chars(s: &str, at: usize) -> Result<(), String> {
            let mut rest = s;
            while let Some(i) = rest.find(['&', '<']) {
                if rest[i..].starts_with('<') {
                    return Err(format!("raw '<' near byte {at}"));
                }
                let after = &rest[i + 1..];
                let end = after
                    .find(';')
                    .ok_or_else(|| format!("unterminated '&' near byte {at}"))?;
                let name = &after[..end];
                let ok = matches!(name, "lt" | "gt" | "amp" | "quot" | "apos")
                    || name
                        .strip_prefix("#x")
                        .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
                    || name
                        .strip_prefix('#')
                        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
                if !ok {
                    return Err(format!("bad reference '&{name};' near byte {at}"));
                }
                rest = &after[end + 1..];
            }
            if let Some(c) = s
                .chars()
                .find(|&c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
            {
                return Err(format!("control character {c:?} near byte {at}"));
            }
            Ok(())
        }
        fn is_name_char(c: char) -> bool {
            c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.')
        }

        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut pos = 0;
        let bytes = doc.as_bytes();
        if doc.starts_with("<?xml") {
            pos = doc.find("?>").ok_or("unterminated prolog")? + 2;
        }
        while pos < doc.len() {
            let Some(rel) = doc[pos..].find('<') else {
                let tail = &doc[pos..];
                if !tail.trim().is_empty() {
                    return Err("text after the root element".into());
                }
                break;
            };
            let text = &doc[pos..pos + rel];
            if stack.is_empty() && !text.trim().is_empty() {
                return Err(format!("text outside the root element near byte {pos}"));
            }
            check_chars(text, pos)?;
            pos += rel;
            if doc[pos..].starts_with("<!--") {
                pos += doc[pos..].find("-->").ok_or("unterminated comment")? + 3;
                continue;
            }
            if doc[pos..].starts_with("</") {
                let end = pos + doc[pos..].find('>').ok_or("unterminated end tag")?;
                let name = doc[pos + 2..end].trim_end();
                match stack.pop() {
                    Some(open) if open == name => {}
                    other => return Err(format!("</{name}> closes {other:?} near byte {pos}")),
                }
                pos = end + 1;
                continue;
            }
            // Start tag.
            pos += 1;
            let name_len = doc[pos..]
                .find(|c: char| !is_name_char(c))
                .unwrap_or(doc.len() - pos);
            if name_len == 0 {
                return Err(format!("empty tag name near byte {pos}"));
            }
            let name = &doc[pos..pos + name_len];
            pos += name_len;
            loop {
                while pos < doc.len() && bytes[pos].is_ascii_whitespace() {
                    pos += 1;
                }
                if doc[pos..].starts_with("/>") {
                    pos += 2;
                    if stack.is_empty() {
                        roots += 1;
                    }
                    break;
                }
                if doc[pos..].starts_with('>') {
                    pos += 1;
                    if stack.is_empty() {
                        roots += 1;
                    }
                    stack.push(name);
                    break;
                }
                let attr_len = doc[pos..].find(|c: char| !is_name_char(c)).unwrap_or(0);
                if attr_len == 0 {
                    return Err(format!("bad attribute in <{name}> near byte {pos}"));
                }
                pos += attr_len;
                if !doc[pos..].starts_with("=\"") {
                    return Err(format!("unquoted attribute in <{name}> near byte {pos}"));
                }
                pos += 2;
                let end = pos + doc[pos..].find('"').ok_or("unterminated attribute")?;
                check_chars(&doc[pos..end], pos)?;
                pos = end + 1;
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed elements {stack:?}"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(())
    }

    fn pt<'a>(mode: &'a str, path: &'a str, block_size: u64, qd: u32, threads: u32, mb_s: f64) -> Point<'a> {
        Point {
            path,
            mode,
            block_size,
            qd,
            threads,
            mb_s,
        }
    }

    /// Text drawn by the backend sits on its own line inside `<text>`.
    fn has_text(svg: &str, s: &str) -> bool {
        svg.contains(&format!(">\n{s}\n</text>"))
    }

    const PATHS: [&str; 4] = ["uring-vec", "uring-fixed", "psync", "splice"];
    const SIZES: [u64; 4] = [4096, 65536, 1 << 20, 8 << 20];

    /// 3 modes x 4 paths x 4 block sizes x qd {1, 32}, modes deliberately not in display order.
    fn realistic() -> Vec<Point<'static>> {
        let mut v = Vec::new();
        for (m, mode) in ["copy", "read", "write"].into_iter().enumerate() {
            for (p, path) in PATHS.into_iter().enumerate() {
                for (b, bs) in SIZES.into_iter().enumerate() {
                    for qd in [1, 32] {
                        let mb_s = 200.0 + 100.0 * (b + p + m) as f64 + f64::from(qd) * 10.0;
                        v.push(pt(mode, path, bs, qd, 1, mb_s));
                    }
                }
            }
        }
        v
    }

    #[test]
    fn checker_rejects_broken_xml() {
        assert!(check_xml("<svg><text>a</text></svg>").is_ok());
        assert!(check_xml("<svg><text>a & b</text></svg>").is_err());
        assert!(check_xml("<svg><text>a < b</text></svg>").is_err());
        assert!(check_xml("<svg><text>a</svg></text>").is_err());
        assert!(check_xml("<svg a=\"<\"/>").is_err());
        assert!(check_xml("<svg/><svg/>").is_err());
        assert!(check_xml("<svg>").is_err());
    }

    #[test]
    fn empty_input_says_no_results() {
        let svg = render_svg("ringsync bench: /tmp", None, &[]).unwrap();
        check_xml(&svg).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(has_text(&svg, "no results"));
        assert!(has_text(&svg, "ringsync bench: /tmp"));

        // Only invalid points is the same as none.
        let bad = [
            pt("copy", "psync", 0, 1, 1, 10.0),
            pt("copy", "psync", 4096, 1, 1, f64::NAN),
        ];
        let svg = render_svg("t", Some("best: none"), &bad).unwrap();
        check_xml(&svg).unwrap();
        assert!(has_text(&svg, "no results"));
        assert!(has_text(&svg, "best: none"));
    }

    #[test]
    fn realistic_set_has_every_panel_and_series() {
        let best = "fastest copy path on this disk: uring-fixed, 1M, qd 32: 1350 MB/s";
        let svg = render_svg("ringsync bench: /var/tmp (ext4)", Some(best), &realistic()).unwrap();
        check_xml(&svg).unwrap();
        for mode in ["read", "write", "copy"] {
            for path in PATHS {
                assert!(
                    has_text(&svg, &format!("{mode} · {path}")),
                    "missing panel {mode} · {path}"
                );
            }
        }
        assert!(has_text(&svg, "qd 1"));
        assert!(has_text(&svg, "qd 32"));
        assert!(
            !svg.contains(" thr"),
            "one thread count: labels must not mention threads"
        );
        for tick in ["4K", "64K", "1M", "8M", "block size", "MB/s"] {
            assert!(has_text(&svg, tick), "missing {tick}");
        }
        assert!(has_text(&svg, best));
        // Rows in the order read, write, copy regardless of input order.
        let at = |s: &str| svg.find(&format!(">\n{s}\n</text>")).unwrap();
        assert!(at("read · uring-vec") < at("write · uring-vec"));
        assert!(at("write · uring-vec") < at("copy · uring-vec"));
        // Columns in first-appearance order of the paths.
        assert!(at("read · uring-vec") < at("read · uring-fixed"));
        assert!(at("read · psync") < at("read · splice"));
    }

    #[test]
    fn model_layout_and_dedup() {
        let mut pts = realistic();
        pts.push(pt("read", "uring-vec", 4096, 1, 1, 99_999.0)); // duplicate, higher: kept
        pts.push(pt("read", "uring-vec", 65536, 1, 1, 0.5)); // duplicate, lower: dropped
        let model = build_model(&pts);
        let modes: Vec<&str> = model.rows.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(modes, ["read", "write", "copy"]);
        let (_, read) = &model.rows[0];
        let captions: Vec<&str> = read.iter().map(|p| p.caption.as_str()).collect();
        assert_eq!(
            captions,
            [
                "read · uring-vec",
                "read · uring-fixed",
                "read · psync",
                "read · splice"
            ]
        );
        assert_eq!(model.labels, ["qd 1", "qd 32"]);
        let qd1 = &read[0].series[0].1;
        assert_eq!(qd1[0], (4096, 99_999.0));
        assert_eq!(qd1[1], (65536, 200.0 + 100.0 * 2.0 + 10.0));
        assert_eq!(qd1.len(), 4);
        // Shared y maximum per row, padded by 10%.
        assert!((model.y_max[0] - 99_999.0 * 1.1).abs() < 1e-6);
        assert_eq!(model.block_sizes, SIZES);
    }

    #[test]
    fn thread_counts_appear_in_labels_when_they_vary() {
        let pts = [
            pt("copy", "uring-fixed", 1 << 20, 32, 1, 900.0),
            pt("copy", "uring-fixed", 1 << 20, 32, 2, 1300.0),
            pt("copy", "psync", 1 << 20, 1, 4, 500.0),
        ];
        let svg = render_svg("threads", None, &pts).unwrap();
        check_xml(&svg).unwrap();
        for label in ["qd 32 · 1 thr", "qd 32 · 2 thr", "qd 1 · 4 thr"] {
            assert!(has_text(&svg, label), "missing {label}");
        }
    }

    #[test]
    fn title_and_names_are_escaped() {
        let title = "bench: /mnt/a&b <x> \"q\" 'a' \u{1}";
        let pts = [pt("copy", "we<ird&", 4096, 1, 1, 10.0)];
        let svg = render_svg(title, Some("best <&>"), &pts).unwrap();
        check_xml(&svg).unwrap();
        assert!(svg.contains("bench: /mnt/a&amp;b &lt;x&gt; &quot;q&quot; &apos;a&apos;"));
        assert!(!svg.contains("a&b"));
        assert!(!svg.contains("<x>"));
        assert!(svg.contains("best &lt;&amp;&gt;"));
        assert!(svg.contains("we&lt;ird&amp;"));
        assert!(!svg.contains('\u{1}'));

        let svg = render_svg(title, None, &[]).unwrap();
        check_xml(&svg).unwrap();
        assert!(svg.contains("&lt;x&gt;"));
    }

    #[test]
    fn hostile_values_do_not_panic() {
        let pts = [
            pt("copy", "x", 0, 1, 1, 5.0),
            pt("copy", "x", 4096, 1, 1, f64::NAN),
            pt("copy", "x", 4096, 1, 1, f64::INFINITY),
            pt("copy", "x", 4096, 1, 1, f64::NEG_INFINITY),
            pt("copy", "x", 4096, 1, 1, -1.0),
            pt("copy", "y", 4096, 1, 1, 0.0),
            pt("copy", "y", 4096, 1, 1, 0.0),
            pt("read", "z", u64::MAX, u32::MAX, u32::MAX, f64::MAX),
            pt("read", "z", 1, 0, 0, f64::MIN_POSITIVE),
            pt("read", "z", 3, 0, 0, 1e-300),
            pt("write", "tiny", 4096, 1, 1, 1e-9),
            pt("write", "tiny", 8192, 1, 1, 2e-9),
            pt("\u{0}weird\u{ffff}", "", 512, 1, 1, 1e300),
            pt("", "\u{7f}", 511, 1, 1, 1.0),
        ];
        for n in 1..=pts.len() {
            let svg = render_svg("\u{0}\u{fffe}<&>", Some("\u{1b}[1m"), &pts[..n]).unwrap();
            check_xml(&svg).unwrap_or_else(|e| panic!("{n} points: {e}"));
        }
        let model = build_model(&pts);
        let all: usize = model
            .rows
            .iter()
            .flat_map(|(_, p)| p)
            .flat_map(|p| &p.series)
            .map(|s| s.1.len())
            .sum();
        assert_eq!(
            all, 8,
            "NaN, infinite, negative and zero-size points are skipped, duplicates merged"
        );
        assert!(model.y_max.iter().all(|y| y.is_finite() && *y > 0.0));
    }

    #[test]
    fn single_point_and_many_panels() {
        let one = [pt("copy", "reflink", 8 << 20, 1, 1, 5000.0)];
        let svg = render_svg("one", None, &one).unwrap();
        check_xml(&svg).unwrap();
        assert!(has_text(&svg, "copy · reflink"));
        assert!(has_text(&svg, "8M"));
        // Only the legend swatch is a 2 px line: a one-point series is a marker, not a line.
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 1);
        assert_eq!(
            svg.matches("<circle").count(),
            4,
            "legend and point: fill + white edge each"
        );

        let names: Vec<String> = (0..150).map(|i| format!("path-{i}")).collect();
        let mut many = Vec::new();
        for mode in ["read", "copy"] {
            for n in &names[..if mode == "read" { 30 } else { 150 }] {
                for bs in [4096, 1 << 20] {
                    many.push(pt(mode, n, bs, 1, 1, 100.0));
                }
            }
        }
        let svg = render_svg("many", None, &many).unwrap();
        check_xml(&svg).unwrap();
        assert!(has_text(&svg, "read · path-29"));
        assert!(has_text(
            &svg,
            &format!("{} more panels not shown", 180 - MAX_PANELS)
        ));
    }

    #[test]
    fn long_texts_are_shortened() {
        let long = "x".repeat(5000);
        let pts = [pt("copy", &long, 4096, 1, 1, 1.0)];
        let svg = render_svg(&long, Some(&long), &pts).unwrap();
        check_xml(&svg).unwrap();
        assert!(!svg.contains(&long));
        assert!(svg.contains('…'));
    }

    #[test]
    fn human_sizes() {
        let cases = [
            (512, "512"),
            (1536, "1.5K"),
            (4096, "4K"),
            (65536, "64K"),
            (1 << 20, "1M"),
            (8 << 20, "8M"),
            (1 << 30, "1G"),
            (u64::MAX, "16E"),
        ];
        for (b, s) in cases {
            assert_eq!(human_size(b), s);
        }
        assert_eq!(format_mb_s(0.0, 1500.0), "0");
        assert_eq!(format_mb_s(1200.0, 1500.0), "1200");
        assert_eq!(format_mb_s(0.2, 1.0), "0.2");
        assert_eq!(format_mb_s(2e6, 3e6), "2.0e6");
    }
}
