//! Plots as PNG and SVG (plotters): learning curves and confusion matrices.

use alexnet_core::metrics::Confusion;
use alexnet_core::report::RunReport;
use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A bundled font keeps text identical on every machine (no system font lookup).
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Something drawable on any plotters backend.
pub trait Figure {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Draws `fig` into `<base>.svg` and `<base>.png`; returns both paths.
pub fn both(base: &Path, size: (u32, u32), fig: &impl Figure) -> Result<Vec<PathBuf>> {
    register_font();
    let svg = base.with_extension("svg");
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        fig.draw(&root)?;
        root.present().map_err(|e| anyhow!("{}: {e}", svg.display()))?;
    }
    let png = base.with_extension("png");
    let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        fig.draw(&root)?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    image::RgbImage::from_raw(size.0, size.1, buf)
        .ok_or_else(|| anyhow!("bitmap size"))?
        .save(&png)
        .map_err(|e| anyhow!("{}: {e}", png.display()))?;
    Ok(vec![svg, png])
}

/// One named series of (x, y) points, with an optional band (x, low, high) drawn shaded behind
/// it (the range over folds or repeats).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points, band: vec![] }
    }
}

/// A line chart of several series.
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    /// Fixed y range (accuracy: 0..1); otherwise fitted.
    pub y_range: Option<(f64, f64)>,
    /// The x values are counts (ensemble members): the axis spans the first to the last, with
    /// whole-number ticks, instead of starting at 0.
    pub x_counts: bool,
}

impl Figure for LineChart<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let band_points = self.series.iter().flat_map(|s| s.band.iter().flat_map(|(x, lo, hi)| [(*x, *lo), (*x, *hi)]));
        let all: Vec<(f64, f64)> = self.series.iter().flat_map(|s| s.points.iter().copied()).chain(band_points).collect();
        let x_max = all.iter().map(|p| p.0).fold(1e-9, f64::max);
        let x_range = if self.x_counts {
            let x_min = all.iter().map(|p| p.0).fold(x_max, f64::min);
            (x_min - 0.25)..(x_max + 0.25)
        } else {
            0f64..x_max
        };
        let (y_min, y_max) = self.y_range.unwrap_or_else(|| {
            let lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let hi = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            if lo.is_finite() { (lo.min(0.0), hi * 1.05 + 1e-9) } else { (0.0, 1.0) }
        });
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x_range, y_min..y_max)
            .map_err(|e| anyhow!("{e}"))?;
        let whole = |x: &f64| if (x - x.round()).abs() < 1e-6 { format!("{x:.0}") } else { String::new() };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.x_label).y_desc(self.y_label).label_style(("sans-serif", 13));
        if self.x_counts {
            mesh.x_labels(4 * x_max as usize + 1).x_label_formatter(&whole);
        }
        mesh.draw().map_err(|e| anyhow!("{e}"))?;
        for (i, s) in self.series.iter().enumerate() {
            if s.band.len() > 1 {
                let outline: Vec<(f64, f64)> = s.band.iter().map(|b| (b.0, b.2)).chain(s.band.iter().rev().map(|b| (b.0, b.1))).collect();
                chart.draw_series(std::iter::once(Polygon::new(outline, Palette99::pick(i).mix(0.18).filled()))).map_err(|e| anyhow!("{e}"))?;
            }
        }
        for (i, s) in self.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(s.name.clone())
                .legend(legend_key(color.stroke_width(2)));
            chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled()))).map_err(|e| anyhow!("{e}"))?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}

/// A legend entry's key: a short line in the series' style.
fn legend_key(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style)
}

/// The series legend every line chart draws: a white box with a black border, 13 px text.
fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, at: SeriesLabelPosition) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(at)
        .draw()
        .map_err(|e| anyhow!("{e}"))
}

/// `curve.png/svg`: accuracy (train, val, test) and training loss against step.
pub fn learning_curve(report: &RunReport, base: &Path) -> Result<Vec<PathBuf>> {
    let pts = |f: &dyn Fn(&alexnet_core::report::CurvePoint) -> Option<f64>| -> Vec<(f64, f64)> {
        report.curve.iter().filter_map(|p| f(p).map(|v| (p.step as f64, v))).collect()
    };
    let mut acc = vec![
        Series::line("train (running)", pts(&|p| Some(p.train_accuracy))),
        Series::line("validation", pts(&|p| p.val_accuracy)),
        Series::line("test", pts(&|p| p.test_accuracy)),
    ];
    // An ensemble: each member's validation curve (test is scored once, on the finished members).
    if !report.members.is_empty() {
        acc.truncate(1);
        acc[0].name = "train (running), member 0".into();
        for m in &report.members {
            let val = m.curve.iter().filter_map(|p| p.val_accuracy.map(|v| (p.step as f64, v))).collect();
            acc.push(Series::line(format!("validation, member {}", m.member), val));
        }
    }
    let loss = [Series::line("train loss", pts(&|p| Some(p.train_loss as f64)))];
    let title = format!("{} · fine-tune {} · {}", report.backend, report.policy, report.device);
    both(
        base,
        (1000, 700),
        &Stacked(
            LineChart { title: &title, x_label: "step", y_label: "accuracy", series: &acc, y_range: Some((0.0, 1.0)), x_counts: false },
            LineChart { title: "training loss", x_label: "step", y_label: "cross-entropy", series: &loss, y_range: None, x_counts: false },
        ),
    )
}

/// The accuracy of ensembles of the first k members against k, alone and together: the mean
/// over `runs` (folds or repeats of one setting), shaded from the lowest to the highest run.
pub fn ensemble_series(runs: &[&RunReport], prefix: &str) -> Vec<Series> {
    type Pick = fn(&alexnet_core::ensemble::MemberReport) -> Option<f64>;
    let picks: [(&str, Pick); 5] = [
        ("validation, ensemble of the first k", |m| Some(m.ensemble_val_accuracy)),
        ("validation cross-fitted, ensemble of the first k", |m| m.ensemble_val_crossfit),
        ("test, ensemble of the first k", |m| Some(m.ensemble_test_accuracy)),
        ("validation, the k-th member alone", |m| Some(m.val_accuracy)),
        ("test, the k-th member alone", |m| Some(m.test_accuracy)),
    ];
    let k = runs.iter().map(|r| r.members.len()).min().unwrap_or(0);
    let n = runs.len() as f64;
    picks
        .iter()
        .filter_map(|(name, pick)| {
            let (mut points, mut band) = (vec![], vec![]);
            for i in 0..k {
                // A series is drawn only where every run has it (cross-fitted: runs since it existed).
                let v: Vec<f64> = runs.iter().map(|r| pick(&r.members[i])).collect::<Option<_>>()?;
                let x = (i + 1) as f64;
                points.push((x, v.iter().sum::<f64>() / n));
                band.push((x, v.iter().copied().fold(1.0, f64::min), v.iter().copied().fold(0.0, f64::max)));
            }
            let name = if runs.len() > 1 { format!("{prefix}{name} (mean of {}, range shaded)", runs.len()) } else { format!("{prefix}{name}") };
            Some(Series { name, points, band: if runs.len() > 1 { band } else { vec![] } })
        })
        .collect()
}

/// `ensemble.png/svg` of one run: accuracy against the number of members.
pub fn ensemble_members(report: &RunReport, base: &Path) -> Result<Vec<PathBuf>> {
    let series = ensemble_series(&[report], "");
    let title = format!("ensemble of {} · {} · fine-tune {} · {}", report.members.len(), report.backend, report.policy, report.device);
    ensemble_chart(&series, &title, base)
}

/// Draws ensemble series (accuracy against members) into `<base>.png/svg`.
pub fn ensemble_chart(series: &[Series], title: &str, base: &Path) -> Result<Vec<PathBuf>> {
    let lowest = series.iter().flat_map(|s| s.points.iter().map(|p| p.1).chain(s.band.iter().map(|b| b.1))).fold(1.0f64, f64::min);
    let y_range = Some((((lowest - 0.02) * 20.0).floor().max(0.0) / 20.0, 1.0));
    both(base, (1000, 620), &LineChart { title, x_label: "members (k)", y_label: "accuracy", series, y_range, x_counts: true })
}

/// Two figures, one above the other (60/40).
pub struct Stacked<A, B>(pub A, pub B);

impl<A: Figure, B: Figure> Figure for Stacked<A, B> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let h = area.dim_in_pixel().1;
        let (top, bottom) = area.split_vertically(h * 6 / 10);
        self.0.draw(&top)?;
        self.1.draw(&bottom)
    }
}

/// `confusion.png/svg`: a confusion matrix, rows true, columns predicted, shaded by row share.
pub fn confusion(c: &Confusion, classes: &[String], title: &str, base: &Path) -> Result<Vec<PathBuf>> {
    both(base, (760, 680), &ConfusionFigure { c, classes, title })
}

struct ConfusionFigure<'a> {
    c: &'a Confusion,
    classes: &'a [String],
    title: &'a str,
}

impl Figure for ConfusionFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let n = self.classes.len();
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(60)
            .y_label_area_size(110)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
            .map_err(|e| anyhow!("{e}"))?;
        let label = |v: &SegmentValue<usize>, flip: bool| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if *i < n => self.classes[if flip { n - 1 - i } else { *i }].clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&|v| label(v, false))
            .y_label_formatter(&|v| label(v, true))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for t in 0..n {
            let row_total: u64 = self.c.counts[t].iter().sum::<u64>().max(1);
            let y = n - 1 - t;
            for p in 0..n {
                let v = self.c.counts[t][p];
                let frac = v as f64 / row_total as f64;
                let shade = (255.0 * (1.0 - 0.85 * frac)) as u8;
                let cell = [(SegmentValue::Exact(p), SegmentValue::Exact(y)), (SegmentValue::Exact(p + 1), SegmentValue::Exact(y + 1))];
                chart.draw_series(std::iter::once(Rectangle::new(cell, RGBColor(shade, shade, 255).filled()))).map_err(|e| anyhow!("{e}"))?;
                let color = if frac > 0.5 { WHITE } else { BLACK };
                let style = ("sans-serif", 18).into_font().color(&color).pos(Pos::new(HPos::Center, VPos::Center));
                chart
                    .draw_series(std::iter::once(Text::new(v.to_string(), (SegmentValue::CenterOf(p), SegmentValue::CenterOf(y)), style)))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        Ok(())
    }
}

/// `lr_find.png/svg`: loss against learning rate (log scale), raw and smoothed, with the
/// suggested rates marked.
pub fn lr_find(rep: &alexnet_core::lr_find::LrFindReport, title: &str, base: &Path) -> Result<Vec<PathBuf>> {
    both(base, (1000, 620), &LrFigure { rep, title })
}

struct LrFigure<'a> {
    rep: &'a alexnet_core::lr_find::LrFindReport,
    title: &'a str,
}

impl Figure for LrFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let pts = &self.rep.points;
        let raw: Vec<(f64, f64)> = pts.iter().filter(|p| p.loss.is_finite()).map(|p| (p.lr as f64, p.loss as f64)).collect();
        let smooth: Vec<(f64, f64)> = pts.iter().filter(|p| p.smoothed.is_finite()).map(|p| (p.lr as f64, p.smoothed)).collect();
        let x0 = pts.first().map_or(1e-6, |p| p.lr as f64);
        let x1 = pts.last().map_or(1.0, |p| p.lr as f64).max(x0 * 10.0);
        // The y range follows the smoothed curve up to twice its start: a diverging tail would
        // squash everything else.
        let first = smooth.first().map_or(1.0, |p| p.1);
        let lo = smooth.iter().chain(&raw).map(|p| p.1).fold(f64::INFINITY, f64::min).min(first);
        let hi = (first * 2.0).max(lo * 1.1 + 1e-9);
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((x0..x1).log_scale(), (lo * 0.9)..hi)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("learning rate (log scale)")
            .y_desc("training loss")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let clip = |v: &[(f64, f64)]| v.iter().map(|(x, y)| (*x, y.min(hi))).collect::<Vec<_>>();
        let grey = RGBColor(170, 170, 170);
        chart
            .draw_series(LineSeries::new(clip(&raw), grey.stroke_width(1)))
            .map_err(|e| anyhow!("{e}"))?
            .label("batch loss")
            .legend(legend_key(grey.stroke_width(1)));
        let blue = Palette99::pick(0).to_rgba();
        chart
            .draw_series(LineSeries::new(clip(&smooth), blue.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label("smoothed (EMA 0.98)")
            .legend(legend_key(blue.stroke_width(2)));
        let marks = [(self.rep.steepest, "steepest descent", Palette99::pick(1)), (self.rep.min_over_10, "minimum / 10", Palette99::pick(3))];
        for (lr, name, color) in marks {
            let Some(lr) = lr else { continue };
            let color = color.to_rgba();
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(lr as f64, lo * 0.9), (lr as f64, hi)], color.stroke_width(2))))
                .map_err(|e| anyhow!("{e}"))?
                .label(format!("{name}: {lr:.2e}"))
                .legend(legend_key(color.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    }
}

/// `paired.png/svg`: each setting's paired difference to the reference setting (the best on
/// validation), in points of accuracy, with its 95% interval: validation (cross-fitted when the
/// reference was chosen on it) and test, one row per setting, and a line at zero. An interval
/// that does not cross the line is a significant difference.
pub fn paired(rows: &[alexnet_core::experiment::Paired], title: &str, base: &Path) -> Result<Vec<PathBuf>> {
    let height = 150 + 64 * rows.len() as u32;
    // One reference for every row (one backend): named once, in the title.
    let shared = rows.iter().all(|p| p.reference == rows[0].reference).then(|| rows[0].reference.as_str());
    let title = match shared {
        Some(r) => format!("{title} · against {r}"),
        None => title.to_string(),
    };
    let most = rows.iter().map(|p| p.test.n).max().unwrap_or(0);
    both(base, (1000, height), &PairedFigure { rows, title: &title, shared: shared.is_some(), most })
}

struct PairedFigure<'a> {
    rows: &'a [alexnet_core::experiment::Paired],
    title: &'a str,
    /// Every row has the same reference (named in the title, not per row).
    shared: bool,
    /// The most pairs any row has; rows with fewer say how many.
    most: usize,
}

impl PairedFigure<'_> {
    /// The validation difference shown: the one the reference was chosen on.
    fn val(p: &alexnet_core::experiment::Paired) -> Option<(alexnet_core::metrics::Spread, &'static str)> {
        match (p.chosen_by_crossfit, p.crossfit, p.val) {
            (true, Some(c), _) => Some((c, "validation (cross-fitted)")),
            (_, _, Some(v)) => Some((v, "validation")),
            _ => None,
        }
    }
}

impl Figure for PairedFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let n = self.rows.len();
        // Every interval in view, and zero; in points.
        let ends = self.rows.iter().flat_map(|p| [Some(p.test), Self::val(p).map(|v| v.0)]).flatten().flat_map(|s| [s.ci95.0, s.ci95.1]);
        let (lo, hi) = ends.map(|v| 100.0 * v).fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = ((hi - lo) * 0.08).max(0.1);
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(10)
            // Below the last row, room for the legend.
            .build_cartesian_2d((lo - pad)..(hi + pad), -0.8f64..n as f64)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("difference to the best on validation, points of accuracy (95% interval; paired fold by fold)")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(0.0, -0.8), (0.0, n as f64)], BLACK.stroke_width(1))))
            .map_err(|e| anyhow!("{e}"))?;
        let (val_color, test_color) = (Palette99::pick(0).to_rgba(), Palette99::pick(1).to_rgba());
        let mut labelled = (false, false);
        for (i, p) in self.rows.iter().enumerate() {
            // Top row first; each row: its label, then validation above test.
            let y = (n - i) as f64;
            let mark = |s: &alexnet_core::metrics::Spread| if s.excludes_zero() { ", significant" } else { "" };
            let against = if self.shared { String::new() } else { format!(" (against {})", p.reference) };
            let pairs = if p.test.n < self.most { format!(", {} pairs", p.test.n) } else { String::new() };
            let name = format!("{}{against}{pairs}{}", p.setting, Self::val(p).map_or("", |v| mark(&v.0)));
            let style = ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Top));
            chart.draw_series(std::iter::once(Text::new(name, (lo - pad * 0.9, y - 0.06), style))).map_err(|e| anyhow!("{e}"))?;
            let whisker = |s: &alexnet_core::metrics::Spread, at: f64, color: RGBAColor| {
                let (a, b, m) = (100.0 * s.ci95.0, 100.0 * s.ci95.1, 100.0 * s.mean);
                vec![
                    PathElement::new(vec![(a, at), (b, at)], color.stroke_width(2)),
                    PathElement::new(vec![(a, at - 0.06), (a, at + 0.06)], color.stroke_width(2)),
                    PathElement::new(vec![(b, at - 0.06), (b, at + 0.06)], color.stroke_width(2)),
                    PathElement::new(vec![(m, at - 0.1), (m, at + 0.1)], color.stroke_width(4)),
                ]
            };
            if let Some((v, what)) = Self::val(p) {
                let drawn = chart.draw_series(whisker(&v, y - 0.45, val_color)).map_err(|e| anyhow!("{e}"))?;
                if !labelled.0 {
                    labelled.0 = true;
                    drawn.label(what).legend(legend_key(val_color.stroke_width(2)));
                }
            }
            let drawn = chart.draw_series(whisker(&p.test, y - 0.72, test_color)).map_err(|e| anyhow!("{e}"))?;
            if !labelled.1 {
                labelled.1 = true;
                drawn.label("test (reported, never chosen by)").legend(legend_key(test_color.stroke_width(2)));
            }
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}
