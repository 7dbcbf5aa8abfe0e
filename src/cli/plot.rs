//! PNG charts of a run, drawn with plotters into an RGB buffer and saved atomically: fastai's loss curve
//! (`plot_loss`), the lr_find curve (`plot_lr_find`) and the confusion matrix (`plot_confusion_matrix`).
//! Text uses the embedded DejaVu Sans (assets/fonts), so charts look the same on every machine.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::register_font;

use wgtune::error::{Error, Result};
use wgtune::learner::{Confusion, EpochRecord, LrFind, StepLoss};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SANS: &str = "sans-serif";

type DrawError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(SANS, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid("the embedded chart font could not be loaded".into()))
    }
}

/// Draw into a `width` x `height` RGB canvas with `draw`, then write it to `path` as PNG (temp file + rename).
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> std::result::Result<(), DrawError>,
) -> Result<()> {
    font()?;
    let bad = |e: String| Error::Invalid(format!("cannot draw '{}': {e}", path.display()));
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        draw(&root).map_err(|e| bad(format!("{e:?}")))?;
        root.present().map_err(|e| bad(format!("{e:?}")))?;
    }
    let img = image::RgbImage::from_raw(width, height, buf).ok_or_else(|| bad("canvas size".into()))?;
    let tmp = wgtune::nn::weights::temp_path(path);
    img.save_with_format(&tmp, image::ImageFormat::Png).map_err(|e| bad(e.to_string()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The series labels in a framed box.
fn legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
) -> std::result::Result<(), DrawError> {
    chart.configure_series_labels().label_font((SANS, 14)).background_style(WHITE.mix(0.9)).border_style(BLACK).draw()
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else {
        let pad = ((hi - lo) * 0.05).max(1e-3);
        (lo - pad, hi + pad)
    }
}

/// fastai's plot_loss: the smoothed training loss of every step, and the validation loss at the end of each
/// epoch (at the step it was measured after).
pub fn loss_curve(path: &Path, history: &[StepLoss], records: &[EpochRecord], steps_per_epoch: usize) -> Result<()> {
    let valid: Vec<(f64, f64)> =
        records.iter().enumerate().map(|(i, r)| (((i + 1) * steps_per_epoch) as f64, r.valid_loss)).collect();
    let train: Vec<(f64, f64)> = history.iter().enumerate().map(|(i, s)| ((i + 1) as f64, s.smooth as f64)).collect();
    let (lo, hi) = range(train.iter().chain(&valid).map(|p| p.1));
    let steps = (history.len().max(records.len() * steps_per_epoch)).max(1) as f64;
    render(path, (800, 500), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption("loss", (SANS, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..steps, lo.max(0.0)..hi)?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("loss")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((SANS, 13))
            .draw()?;
        chart
            .draw_series(LineSeries::new(train, BLUE.stroke_width(2)))?
            .label("train (smoothed)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        let orange = RGBColor(230, 120, 20);
        chart
            .draw_series(LineSeries::new(valid.clone(), orange.stroke_width(2)))?
            .label("valid")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(2)));
        chart.draw_series(valid.iter().map(|&p| Circle::new(p, 4, orange.filled())))?;
        legend(&mut chart)
    })
}

/// fastai's plot_lr_find: smoothed loss against the learning rate (log scale), without the last 5 steps (where
/// the loss shoots up), the suggestion marked.
pub fn lr_find(path: &Path, found: &LrFind) -> Result<()> {
    let shown = found.lrs.len().saturating_sub(5).max(found.lrs.len().min(2));
    let points: Vec<(f64, f64)> =
        found.lrs[..shown].iter().zip(&found.losses).filter(|p| p.1.is_finite()).map(|(&l, &s)| (l, s)).collect();
    let (lo, hi) = range(points.iter().map(|p| p.1));
    let (first, last) = match (points.first().map(|p| &p.0), points.last().map(|p| &p.0)) {
        (Some(&a), Some(&b)) if b > a => (a, b),
        _ => return Err(Error::Invalid("lr-find recorded fewer than two steps: nothing to plot".into())),
    };
    render(path, (800, 500), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption("learning rate finder", (SANS, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((first..last).log_scale(), lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("learning rate (log scale)")
            .y_desc("smoothed loss")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .label_style((SANS, 13))
            .draw()?;
        chart.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))?;
        if let Some(s) = found.suggestion {
            let at = points.iter().min_by(|a, b| (a.0 / s).ln().abs().total_cmp(&(b.0 / s).ln().abs()));
            if let Some(&(x, y)) = at {
                let red = RGBColor(200, 30, 30);
                chart
                    .draw_series([Circle::new((x, y), 6, red.filled())])?
                    .label(format!("valley: {s:.2e}"))
                    .legend(move |(x, y)| Circle::new((x + 10, y), 5, red.filled()));
                legend(&mut chart)?;
            }
        }
        Ok(())
    })
}

/// fastai's plot_confusion_matrix: actual classes down, predicted across, cells shaded by count.
pub fn confusion(path: &Path, c: &Confusion) -> Result<()> {
    let k = c.classes.len().max(1);
    let cell = (560 / k as u32).clamp(24, 72);
    let (left, top) = (130u32, 60u32);
    let size = (left + cell * k as u32 + 20, top + cell * k as u32 + 70);
    let max = c.counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    render(path, size, |root| {
        root.fill(&WHITE)?;
        let title = format!("confusion matrix (accuracy {:.1}%)", c.accuracy() * 100.0);
        root.draw(&Text::new(title, (left as i32, 18), (SANS, 18).into_font()))?;
        let label = (SANS, 12).into_font();
        for a in 0..k {
            let y = (top + a as u32 * cell) as i32;
            let name: String = c.classes[a].chars().take(18).collect();
            root.draw(&Text::new(name, (8, y + cell as i32 / 2 - 6), label.clone()))?;
            for p in 0..k {
                let x = (left + p as u32 * cell) as i32;
                let n = c.get(a, p);
                // White to dark blue by count.
                let t = n as f64 / max;
                let shade = |lo: f64, hi: f64| (lo + (hi - lo) * t) as u8;
                let fill = RGBColor(shade(255.0, 8.0), shade(255.0, 48.0), shade(255.0, 107.0));
                root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], fill.filled()))?;
                root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], BLACK.mix(0.15)))?;
                let ink = if t > 0.5 { WHITE } else { BLACK };
                let text = n.to_string();
                let tx = x + cell as i32 / 2 - 4 * text.len() as i32;
                root.draw(&Text::new(text, (tx, y + cell as i32 / 2 - 6), label.clone().color(&ink)))?;
            }
        }
        // Predicted-class names under the columns, staggered in two rows so long names do not collide.
        let bottom = (top + cell * k as u32) as i32;
        for p in 0..k {
            let name: String = c.classes[p].chars().take(12).collect();
            let x = (left + p as u32 * cell) as i32 + 2;
            root.draw(&Text::new(name, (x, bottom + 6 + 16 * (p as i32 % 2)), label.clone()))?;
        }
        root.draw(&Text::new("rows: actual, columns: predicted", (left as i32, bottom + 44), label.clone()))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(path: &Path) -> image::RgbImage {
        image::open(path).unwrap().to_rgb8()
    }

    /// Each chart is a real PNG of the stated size with ink on it (not a blank canvas), written without leaving a
    /// temp file behind.
    #[test]
    fn charts_are_pngs_with_content() {
        let dir = std::env::temp_dir().join(format!("wgtune-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let history: Vec<StepLoss> = (0..40)
            .map(|i| StepLoss { loss: 2.0 / (1.0 + i as f32), smooth: 2.0 / (1.0 + i as f32), skipped: false })
            .collect();
        let rec = |e: usize, v: f64| EpochRecord {
            phase: "frozen".into(),
            epoch: e,
            train_loss: v,
            valid_loss: v,
            accuracy: 0.5,
            error_rate: 0.5,
            fbeta: None,
            seconds: 1.0,
            improved: None,
            early_stop: false,
            kept_epoch: None,
            confusion: None,
        };
        loss_curve(&dir.join("loss.png"), &history, &[rec(0, 1.0), rec(1, 0.5)], 20).unwrap();
        let found = LrFind {
            lrs: (0..50).map(|i| 1e-7 * 10f64.powf(i as f64 / 6.0)).collect(),
            losses: (0..50)
                .map(|i| 2.0 - (i as f64 / 30.0).min(1.0) + if i > 40 { (i - 40) as f64 } else { 0.0 })
                .collect(),
            suggestion: Some(1e-3),
            stopped_early: true,
        };
        lr_find(&dir.join("lr.png"), &found).unwrap();
        let mut c = Confusion::new(vec!["cat".into(), "dog".into(), "Ankle boot".into()]);
        for (a, p) in [(0, 0), (0, 1), (1, 1), (2, 2), (2, 2)] {
            c.add(a, p);
        }
        confusion(&dir.join("cm.png"), &c).unwrap();
        for name in ["loss.png", "lr.png", "cm.png"] {
            let img = decoded(&dir.join(name));
            let dark = img.pixels().filter(|p| p.0.iter().all(|&v| v < 100)).count();
            let blue = img.pixels().filter(|p| p.0[2] as i32 > p.0[0] as i32 + 40).count();
            assert!(dark > 500 && blue > 50, "{name}: {dark} dark and {blue} blue pixels");
        }
        assert_eq!(decoded(&dir.join("loss.png")).dimensions(), (800, 500));
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
