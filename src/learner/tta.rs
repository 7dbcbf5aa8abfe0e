//! fastai's test-time augmentation (`learn.tta(n=4, beta=0.25)`): the mean of the probabilities of `n` augmented
//! views of each validation image, blended with the plain view's as `torch.lerp(augmented, plain, beta)`.

use super::{Learner, Scores};
use crate::data::augment::{AugmentConfig, ImageTransform};
use crate::error::Result;
use crate::reference::SplitMix;

/// fastai's defaults.
pub const TTA_VIEWS: usize = 4;
pub const TTA_BETA: f64 = 0.25;

/// Validation with and without test-time augmentation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Tta {
    pub views: usize,
    pub beta: f64,
    pub valid_loss: f64,
    pub accuracy: f64,
    pub plain_valid_loss: f64,
    pub plain_accuracy: f64,
    /// Multi-label: samples-averaged F2 with and without TTA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fbeta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_fbeta: Option<f64>,
}

/// fastai's blend: `(1 - beta) * mean(views) + beta * plain`, element by element (views empty: the plain view).
pub fn tta_blend(plain: &[f32], views: &[Vec<f32>], beta: f64) -> Vec<f32> {
    if views.is_empty() {
        return plain.to_vec();
    }
    (0..plain.len())
        .map(|i| {
            let mean = views.iter().map(|v| v[i] as f64).sum::<f64>() / views.len() as f64;
            ((1.0 - beta) * mean + beta * plain[i] as f64) as f32
        })
        .collect()
}

/// fastai's augmentation for the views: the training run's (`aug`), whether or not the run trained with it.
pub fn tta_transforms(aug: &AugmentConfig, rng: &mut SplitMix, n: usize) -> Vec<ImageTransform> {
    (0..n).map(|_| aug.sample(rng)).collect()
}

impl Learner {
    blocking! {
        /// Validate with test-time augmentation: `views` augmented views per image (drawn from a generator seeded
        /// by the run's seed, so repeatable) blended with the plain view by `beta`.
        pub fn tta(&mut self, views: usize, beta: f64) -> Result<Tta> => tta_async
    }

    pub async fn tta_async(&mut self, views: usize, beta: f64) -> Result<Tta> {
        let mut rng = SplitMix(self.cfg.seed ^ 0x77a);
        let (mut plain_c, mut tta_c) =
            (Scores::new(&self.spec.classes, self.spec.loss), Scores::new(&self.spec.classes, self.spec.loss));
        let (mut plain_loss, mut tta_loss) = (0.0, 0.0);
        for batch in self.valid.epoch(0) {
            let batch = batch?;
            let plain = self.ex.predict_pixels_async(&batch.pixels).await?;
            let mut augmented = Vec::with_capacity(views);
            for _ in 0..views {
                let transforms = tta_transforms(&self.aug, &mut rng, self.cfg.bs);
                augmented.push(self.ex.predict_pixels_with_async(&batch.pixels, &transforms).await?);
            }
            let blended = tta_blend(&plain, &augmented, beta);
            plain_loss += plain_c.add_rows(&plain, &batch.labels, batch.real);
            tta_loss += tta_c.add_rows(&blended, &batch.labels, batch.real);
        }
        let n = plain_c.total().max(1) as f64;
        Ok(Tta {
            views,
            beta,
            valid_loss: tta_loss / n,
            accuracy: tta_c.accuracy(),
            plain_valid_loss: plain_loss / n,
            plain_accuracy: plain_c.accuracy(),
            fbeta: tta_c.fbeta(),
            plain_fbeta: plain_c.fbeta(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_is_fastais_lerp_of_the_views_mean_and_the_plain_view() {
        let plain = [0.2f32, 0.8];
        let views = vec![vec![0.6f32, 0.4], vec![1.0, 0.0]];
        // mean of views (0.8, 0.2); lerp with beta 0.25: 0.75 * 0.8 + 0.25 * 0.2 = 0.65.
        let b = tta_blend(&plain, &views, 0.25);
        assert!((b[0] - 0.65).abs() < 1e-6 && (b[1] - 0.35).abs() < 1e-6, "{b:?}");
        assert_eq!(tta_blend(&plain, &views, 1.0), plain, "beta 1: the plain view");
        assert_eq!(tta_blend(&plain, &[], 0.25), plain, "no views: the plain view");
        let m = tta_blend(&plain, &views, 0.0);
        assert!((m[0] - 0.8).abs() < 1e-6, "beta 0: the views' mean {m:?}");
    }
}
