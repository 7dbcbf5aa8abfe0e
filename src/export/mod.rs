//! Models for other runtimes: [`onnx`] writes a model (architecture, head, classes, weights) as an ONNX file that
//! onnxruntime, onnxruntime-web, TensorRT or OpenVINO run as they are.
//!
//! The ONNX graph is the eval-mode forward pass of the model's [`Graph`], op by op: batch norm stays a
//! `BatchNormalization` node with the running statistics (not folded into the convolutions, so the file holds the
//! model's own tensors under their own names), dropout is left out, TF-SAME padding becomes the convolution's own
//! asymmetric `pads`, and the loss becomes the graph's `logits` output.
//!
//! ```no_run
//! use wgtune::export::{onnx, OnnxOptions};
//! use wgtune::nn::model::ModelSpec;
//! use wgtune::nn::weights::Weights;
//!
//! let weights = Weights::open("model.safetensors".as_ref())?;
//! let spec = ModelSpec::of_weights(&weights, None)?;
//! let bytes = onnx(&spec, &weights, &OnnxOptions { normalize: true, ..Default::default() })?;
//! std::fs::write("model.onnx", bytes)?;
//! # Ok::<(), wgtune::Error>(())
//! ```

mod proto;

use std::collections::HashMap;
use std::ops::RangeInclusive;

use prost::Message;

use crate::error::{Error, Result};
use crate::graph::{Graph, Op, TensorId, TensorKind};
use crate::nn::model::ModelSpec;
use crate::nn::weights::{read_for, Weights};
use crate::ops::loss::Loss;
use crate::ops::norm::NormAct;
use proto::attribute_proto::AttributeType;
use proto::tensor_proto::DataType;
use proto::tensor_shape_proto::{dimension, Dimension};
use proto::type_proto::{self, Tensor as TensorType};
use proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The opsets [`onnx`] writes. Every op it uses has had its present form since opset 13.
pub const OPSETS: RangeInclusive<i64> = 13..=21;
/// The default opset: supported by every onnxruntime since 1.11 (2022).
pub const DEFAULT_OPSET: i64 = 17;

/// How to export.
#[derive(Clone, Debug, PartialEq)]
pub struct OnnxOptions {
    /// The ONNX opset (within [`OPSETS`]).
    pub opset: i64,
    /// A fixed batch size, or None for a dynamic one (the input's first dimension is named `batch`).
    pub batch: Option<usize>,
    /// Add a `probabilities` output (softmax over the logits) after `logits`.
    pub probabilities: bool,
    /// Put the model's normalization inside the graph: the input is then `pixels`, RGB values 0 to 255 as f32,
    /// instead of the normalized `image`.
    pub normalize: bool,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        OnnxOptions { opset: DEFAULT_OPSET, batch: None, probabilities: false, normalize: false }
    }
}

/// The ONNX IR version that goes with an opset (onnx.helper's VERSION_TABLE).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// The model as ONNX bytes. Errors name the option, the tensor (weights that do not fit the model) or the layer
/// that cannot be exported.
pub fn onnx(spec: &ModelSpec, weights: &Weights, opts: &OnnxOptions) -> Result<Vec<u8>> {
    check(opts)?;
    // A fixed batch builds the graph for it: reshapes and broadcasts (a ViT's) then carry the right sizes.
    let graph = spec.graph(opts.batch.unwrap_or(1), 0.1)?;
    if opts.batch.is_none() {
        if let Some(node) = graph.nodes.iter().find(|n| matches!(n.op, Op::View { .. } | Op::Expand { .. })) {
            return Err(Error::Invalid(format!(
                "{} exports with a fixed batch size only (layer '{}' reshapes with the batch in its shape): give \
                 --batch N",
                spec.arch.name(),
                node.name
            )));
        }
    }
    let values = read_for(&graph, weights, |n| n.ends_with("num_batches_tracked"))?;
    encode(spec, &graph, &values, opts)
}

fn check(opts: &OnnxOptions) -> Result<()> {
    if !OPSETS.contains(&opts.opset) {
        return Err(Error::Invalid(format!(
            "ONNX opset {} is not supported: wgtune writes opsets {} to {}",
            opts.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    if opts.batch == Some(0) {
        return Err(Error::Invalid("the exported batch size must be at least 1 (or dynamic)".into()));
    }
    Ok(())
}

/// `graph` (built for `spec`) with the parameter and statistic `values` as ONNX bytes.
fn encode(spec: &ModelSpec, graph: &Graph, values: &HashMap<String, Vec<f32>>, opts: &OnnxOptions) -> Result<Vec<u8>> {
    let mut b = Builder::new(graph);
    let (input, logits, loss) = b.model(spec, opts)?;
    let batch_dim = match opts.batch {
        Some(n) => dimension::Value::DimValue(n as i64),
        None => dimension::Value::DimParam("batch".into()),
    };
    let s = spec.input_size as i64;
    let classes = spec.classes.len() as i64;
    let mut outputs = vec![value_info(&logits, &batch_dim, &[classes], "class scores before softmax or sigmoid")];
    if opts.probabilities {
        if loss.multi_label() {
            b.node("Sigmoid", "probabilities", &[&logits], &["probabilities"], vec![]);
            outputs.push(value_info("probabilities", &batch_dim, &[classes], "sigmoid of each logit (multi-label)"));
        } else {
            b.node("Softmax", "probabilities", &[&logits], &["probabilities"], vec![int("axis", 1)]);
            outputs.push(value_info("probabilities", &batch_dim, &[classes], "softmax of the logits"));
        }
    }
    let input_doc = if opts.normalize {
        format!("RGB values 0 to 255, {s} x {s}")
    } else {
        format!("RGB, {s} x {s}, normalized as {}", spec.normalization.describe())
    };
    // Parameters and running statistics, in the graph's order.
    let initializer = graph
        .tensors
        .iter()
        .enumerate()
        .filter_map(|(i, t)| values.get(&t.name).map(|v| tensor(&t.name, &onnx_shape(graph, TensorId(i)), v)))
        .chain(b.constants.drain(..))
        .collect();
    let graph_proto = GraphProto {
        node: std::mem::take(&mut b.nodes),
        name: Some(format!("{} ({} head)", spec.arch.name(), spec.head.name())),
        initializer,
        doc_string: None,
        input: vec![value_info(&input, &batch_dim, &[3, s, s], &input_doc)],
        output: outputs,
        value_info: vec![],
    };
    let mut metadata: Vec<(String, String)> = spec.metadata().into_iter().collect();
    metadata.push(("wgtune.input".into(), format!("{input}: float32 (N, 3, {s}, {s}), {input_doc}")));
    metadata.push(("wgtune.normalization_in_graph".into(), opts.normalize.to_string()));
    metadata.sort();
    let model = ModelProto {
        ir_version: Some(ir_version(opts.opset)),
        producer_name: Some("wgtune".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: Some(1),
        doc_string: Some(format!(
            "{} with the {} head, {} classes, exported by wgtune; eval mode (batch norm with running \
             statistics, no dropout)",
            spec.arch.name(),
            spec.head.name(),
            classes
        )),
        graph: Some(graph_proto),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opts.opset) }],
        metadata_props: metadata
            .into_iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) })
            .collect(),
    };
    Ok(model.encode_to_vec())
}

/// The shape an initializer is stored with: the graph's, except a layer scale's gamma over the channels of a
/// feature map, stored (C, 1, 1) so that ONNX's Mul broadcasts it against (N, C, H, W).
fn onnx_shape(graph: &Graph, t: TensorId) -> Vec<usize> {
    let feature_map = graph.nodes.iter().find_map(|node| match node.op {
        Op::LayerScale { gamma, x, axis, .. } if gamma == t && axis.inner > 1 => Some(graph.shape(x).len()),
        _ => None,
    });
    match feature_map {
        Some(rank) => {
            let mut shape = graph.info(t).shape.clone();
            shape.resize(rank - 1, 1);
            shape
        }
        None => graph.info(t).shape.clone(),
    }
}

/// Builds the node list of one graph.
struct Builder<'g> {
    graph: &'g Graph,
    nodes: Vec<NodeProto>,
    /// Constants the mapping adds (ReLU6's bounds, the normalization), as initializers.
    constants: Vec<TensorProto>,
}

impl<'g> Builder<'g> {
    fn new(graph: &'g Graph) -> Self {
        Builder { graph, nodes: vec![], constants: vec![] }
    }

    fn node(&mut self, op_type: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(name.into()),
            op_type: Some(op_type.into()),
            attribute,
            doc_string: None,
            domain: None,
        });
    }

    /// A 1-D int64 constant holding `shape` (Reshape's and Expand's target).
    fn shape_constant(&mut self, name: &str, shape: &[usize]) -> String {
        let values: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        self.int64_constant(name, &[shape.len()], &values)
    }

    /// An int64 constant.
    fn int64_constant(&mut self, name: &str, shape: &[usize], values: &[i64]) -> String {
        if !self.constants.iter().any(|t| t.name.as_deref() == Some(name)) {
            self.constants.push(TensorProto {
                dims: shape.iter().map(|&d| d as i64).collect(),
                data_type: Some(DataType::Int64 as i32),
                name: Some(name.into()),
                raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
                doc_string: None,
            });
        }
        name.into()
    }

    /// A scalar f32 constant.
    fn scalar(&mut self, name: &str, value: f32) -> String {
        self.constant(name, &[], &[value])
    }

    fn constant(&mut self, name: &str, shape: &[usize], values: &[f32]) -> String {
        if !self.constants.iter().any(|t| t.name.as_deref() == Some(name)) {
            self.constants.push(tensor(name, shape, values));
        }
        name.into()
    }

    /// ReLU6 as ONNX's Clip to [0, 6].
    fn relu6(&mut self, layer: &str, x: String, y: String) {
        let lo = self.constant("relu6.min", &[], &[0.0]);
        let hi = self.constant("relu6.max", &[], &[6.0]);
        self.node_owned("Clip", layer, vec![x, lo, hi], y, vec![]);
    }

    /// Every node of the eval-mode forward pass; returns the input's and the logits' value names and the loss.
    fn model(&mut self, spec: &ModelSpec, opts: &OnnxOptions) -> Result<(String, String, Loss)> {
        let graph = self.graph;
        let kind_of = |i: usize| graph.nodes[i].op.kind().name();
        // The loss's input is the output, `logits`; nothing may come after the loss.
        let Some(loss) = graph.nodes.iter().position(|n| n.op.as_loss().is_some()) else {
            return Err(Error::Invalid("the model has no loss layer: nothing says which value is the output".into()));
        };
        if let Some(after) = graph.nodes.get(loss + 1) {
            return Err(Error::Invalid(format!(
                "layer '{}' ({}) comes after the loss: only the forward pass up to the loss can be exported",
                after.name,
                kind_of(loss + 1)
            )));
        }
        let (logits, _, _, _, loss_fn) = graph.nodes[loss].op.as_loss().expect("found as a loss");
        // Every value keeps its graph tensor's name, except the logits and dropout's outputs (eval mode: the
        // identity, so the input's value).
        let mut names = HashMap::from([(logits, "logits".to_string())]);
        let name = |names: &HashMap<TensorId, String>, t: TensorId| {
            names.get(&t).cloned().unwrap_or_else(|| graph.info(t).name.clone())
        };
        for node in &graph.nodes[..loss] {
            if let Op::Dropout { x, y, .. } | Op::DropPath { x, y, .. } = node.op {
                names.insert(y, name(&names, x));
            }
        }
        let Some(x) = (0..graph.tensors.len()).map(TensorId).find(|&t| graph.info(t).kind == TensorKind::Input) else {
            return Err(Error::Invalid("the model has no image input".into()));
        };
        let input = self.input(x, spec, opts);
        for node in &graph.nodes[..loss] {
            let layer = node.name.as_str();
            let n = |t: &TensorId| name(&names, *t);
            match &node.op {
                Op::Linear { x, w, b, y } => {
                    let inputs: Vec<String> =
                        [Some(n(x)), Some(n(w)), b.as_ref().map(n)].into_iter().flatten().collect();
                    self.node_owned("Gemm", layer, inputs, n(y), vec![int("transB", 1)]);
                }
                Op::Conv2d { x, w, b, y, shape } => {
                    let c = shape.cfg;
                    let p = c.padding;
                    let attrs = vec![
                        ints("kernel_shape", &[shape.kernel_h, shape.kernel_w]),
                        ints("strides", &[c.stride.0, c.stride.1]),
                        ints("pads", &[p.top, p.left, p.bottom, p.right]),
                        ints("dilations", &[c.dilation.0, c.dilation.1]),
                        int("group", c.groups as i64),
                    ];
                    let inputs: Vec<String> =
                        [Some(n(x)), Some(n(w)), b.as_ref().map(n)].into_iter().flatten().collect();
                    self.node_owned("Conv", layer, inputs, n(y), attrs);
                }
                Op::BatchNorm { x, gamma, beta, running_mean, running_var, y, cfg, residual, .. } => {
                    let inputs = vec![n(x), n(gamma), n(beta), n(running_mean), n(running_var)];
                    let eps = vec![float("epsilon", cfg.eps)];
                    // An executor's graph fuses a residual add or an activation into batch norm: ONNX gets it
                    // back as its own node after the normalization.
                    let last = |done: bool, name: &str| if done { n(y) } else { format!("{layer}.{name}") };
                    let (add, act) = (residual.is_some(), cfg.act != NormAct::None);
                    let mut value = last(!add && !act, "normalized");
                    self.node_owned("BatchNormalization", layer, inputs, value.clone(), eps);
                    if let Some(r) = residual {
                        let sum = last(!act, "sum");
                        self.node_owned("Add", &format!("{layer}.add"), vec![value, n(r)], sum.clone(), vec![]);
                        value = sum;
                    }
                    match cfg.act {
                        NormAct::None => {}
                        NormAct::Relu => self.node_owned("Relu", &format!("{layer}.act"), vec![value], n(y), vec![]),
                        NormAct::Relu6 => self.relu6(&format!("{layer}.act"), value, n(y)),
                    }
                }
                Op::Relu { x, y } => self.node_owned("Relu", layer, vec![n(x)], n(y), vec![]),
                Op::Relu6 { x, y } => self.relu6(layer, n(x), n(y)),
                Op::LeakyRelu { x, y, slope } => {
                    self.node_owned("LeakyRelu", layer, vec![n(x)], n(y), vec![float("alpha", *slope)])
                }
                Op::Add { a, b, y } => self.node_owned("Add", layer, vec![n(a), n(b)], n(y), vec![]),
                Op::MaxPool { x, y, shape, .. } | Op::AvgPool { x, y, shape } => {
                    let c = shape.cfg;
                    let p = c.padding;
                    let mut attrs = vec![
                        ints("kernel_shape", &[c.kernel.0, c.kernel.1]),
                        ints("strides", &[c.stride.0, c.stride.1]),
                        ints("pads", &[p.top, p.left, p.bottom, p.right]),
                    ];
                    let op = if let Op::AvgPool { .. } = node.op {
                        attrs.push(int("count_include_pad", c.count_include_pad as i64));
                        "AveragePool"
                    } else {
                        "MaxPool"
                    };
                    self.node_owned(op, layer, vec![n(x)], n(y), attrs);
                }
                Op::GlobalAvgPool { x, y, .. } => {
                    // ONNX's global pools keep (N, C, 1, 1); wgtune's give (N, C).
                    let pooled = format!("{layer}.nc11");
                    self.node("GlobalAveragePool", layer, &[&n(x)], &[&pooled], vec![]);
                    self.node_owned("Flatten", &format!("{layer}.flatten"), vec![pooled], n(y), vec![int("axis", 1)]);
                }
                Op::ConcatPool { x, y, .. } => {
                    // fastai's AdaptiveConcatPool2d: [max, mean] along the channels.
                    let (max, avg, cat) = (format!("{layer}.max"), format!("{layer}.mean"), format!("{layer}.cat"));
                    self.node("GlobalMaxPool", &max, &[&n(x)], &[&max], vec![]);
                    self.node("GlobalAveragePool", &avg, &[&n(x)], &[&avg], vec![]);
                    self.node("Concat", &cat, &[&max, &avg], &[&cat], vec![int("axis", 1)]);
                    self.node_owned("Flatten", layer, vec![cat], n(y), vec![int("axis", 1)]);
                }
                Op::Concat { xs, y } => {
                    let inputs = xs.iter().map(n).collect();
                    self.node_owned("Concat", layer, inputs, n(y), vec![int("axis", 1)]);
                }
                Op::Flatten { x, y } => self.node_owned("Flatten", layer, vec![n(x)], n(y), vec![int("axis", 1)]),
                Op::Dropout { .. } | Op::DropPath { .. } => {} // named above
                Op::Gelu { x, y, tanh: false } => {
                    // x * (1 + erf(x / sqrt 2)) / 2
                    let (sqrt2, one, half) =
                        (self.scalar("gelu.sqrt2", 2f32.sqrt()), self.scalar("one", 1.0), self.scalar("half", 0.5));
                    let t = |s: &str| format!("{layer}.{s}");
                    self.node("Div", &t("scaled"), &[&n(x), &sqrt2], &[&t("scaled")], vec![]);
                    self.node("Erf", &t("erf"), &[&t("scaled")], &[&t("erf")], vec![]);
                    self.node("Add", &t("cdf2"), &[&t("erf"), &one], &[&t("cdf2")], vec![]);
                    self.node("Mul", &t("x_cdf2"), &[&n(x), &t("cdf2")], &[&t("x_cdf2")], vec![]);
                    self.node_owned("Mul", layer, vec![t("x_cdf2"), half], n(y), vec![]);
                }
                Op::View { x, y } => {
                    let shape = self.shape_constant(&format!("{layer}.shape"), graph.shape(*y));
                    self.node_owned("Reshape", layer, vec![n(x), shape], n(y), vec![]);
                }
                Op::Expand { x, y } => {
                    let shape = self.shape_constant(&format!("{layer}.shape"), graph.shape(*y));
                    self.node_owned("Expand", layer, vec![n(x), shape], n(y), vec![]);
                }
                Op::Permute { x, y, perm } => {
                    self.node_owned("Transpose", layer, vec![n(x)], n(y), vec![ints("perm", perm)]);
                }
                Op::MatMul { a, b, y, trans_b } => {
                    let b_in = if *trans_b {
                        let t = format!("{layer}.b_t");
                        self.node("Transpose", &t, &[&n(b)], &[&t], vec![ints("perm", &[0, 2, 1])]);
                        t
                    } else {
                        n(b)
                    };
                    self.node_owned("MatMul", layer, vec![n(a), b_in], n(y), vec![]);
                }
                Op::Softmax { x, y, scale } => {
                    let (s, scaled) = (self.scalar(&format!("{layer}.scale"), *scale), format!("{layer}.scaled"));
                    self.node("Mul", &scaled, &[&n(x), &s], &[&scaled], vec![]);
                    self.node_owned("Softmax", layer, vec![scaled], n(y), vec![int("axis", -1)]);
                }
                Op::Slice { x, y, start } => {
                    let end = start + graph.shape(*y)[1];
                    let starts = self.int64_constant(&format!("{layer}.starts"), &[1], &[*start as i64]);
                    let ends = self.int64_constant(&format!("{layer}.ends"), &[1], &[end as i64]);
                    let axes = self.int64_constant(&format!("{layer}.axes"), &[1], &[1]);
                    self.node_owned("Slice", layer, vec![n(x), starts, ends, axes], n(y), vec![]);
                }
                Op::Gelu { tanh: true, .. } => {
                    return Err(Error::Invalid(format!(
                        "layer '{layer}' (gelu, tanh form) has no ONNX mapping: no architecture wgtune exports uses it"
                    )))
                }
                Op::LayerNorm { x, gamma, beta, y, axis, eps, .. } => {
                    if opts.opset < 17 {
                        return Err(Error::Invalid(format!(
                            "layer '{layer}' (layer_norm) needs ONNX's LayerNormalization: export {} with --opset 17 \
                             or later",
                            spec.arch.name()
                        )));
                    }
                    let attrs = || vec![int("axis", -1), float("epsilon", *eps)];
                    if axis.inner == 1 {
                        let inputs = vec![n(x), n(gamma), n(beta)];
                        self.node_owned("LayerNormalization", layer, inputs, n(y), attrs());
                    } else {
                        // Over the channels of NCHW: to NHWC, normalize the last axis, back.
                        let (nhwc, normed) = (format!("{layer}.nhwc"), format!("{layer}.normed"));
                        self.node("Transpose", &nhwc, &[&n(x)], &[&nhwc], vec![ints("perm", &[0, 2, 3, 1])]);
                        let inputs = [nhwc.as_str(), &n(gamma), &n(beta)];
                        self.node("LayerNormalization", &normed, &inputs, &[&normed], attrs());
                        self.node_owned("Transpose", layer, vec![normed], n(y), vec![ints("perm", &[0, 3, 1, 2])]);
                    }
                }
                // gamma is stored (C, 1, 1) when the channels are followed by H and W (see `onnx_shape`).
                Op::LayerScale { x, gamma, y, .. } => self.node_owned("Mul", layer, vec![n(x), n(gamma)], n(y), vec![]),
                Op::SoftmaxCrossEntropy { .. } | Op::SigmoidBinaryCrossEntropy { .. } => {
                    unreachable!("only the last layer is a loss")
                }
            }
        }
        // A dropout as the last layer hands on its input's name: give the output its own.
        if names[&logits] != "logits" {
            let out = names[&logits].clone();
            self.node("Identity", "logits", &[&out], &["logits"], vec![]);
        }
        Ok((input, "logits".into(), loss_fn))
    }

    fn node_owned(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: Vec<String>,
        output: String,
        attrs: Vec<AttributeProto>,
    ) {
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node(op_type, name, &inputs, &[&output], attrs);
    }

    /// The graph input: the normalized image, or raw pixels normalized by two nodes.
    fn input(&mut self, x: TensorId, spec: &ModelSpec, opts: &OnnxOptions) -> String {
        let image = self.graph.info(x).name.clone();
        if !opts.normalize {
            return image;
        }
        let norm = spec.normalization;
        let scale = self.constant("normalize.scale", &[1, 3, 1, 1], &norm.scale);
        let shift = self.constant("normalize.shift", &[1, 3, 1, 1], &norm.shift);
        self.node("Mul", "normalize.scale", &["pixels", &scale], &["pixels.scaled"], vec![]);
        self.node("Add", "normalize.shift", &["pixels.scaled", &shift], &[&image], vec![]);
        "pixels".into()
    }
}

fn attribute(name: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(kind as i32), ..Default::default() }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { i: Some(i), ..attribute(name, AttributeType::Int) }
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto { ints: v.iter().map(|&x| x as i64).collect(), ..attribute(name, AttributeType::Ints) }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto { f: Some(f), ..attribute(name, AttributeType::Float) }
}

/// An f32 initializer (little-endian raw data, as ONNX stores it).
fn tensor(name: &str, shape: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        doc_string: None,
    }
}

/// A graph input or output: f32 of shape (batch, rest...).
fn value_info(name: &str, batch: &dimension::Value, rest: &[i64], doc: &str) -> ValueInfoProto {
    let mut dim = vec![Dimension { value: Some(batch.clone()), denotation: None }];
    dim.extend(rest.iter().map(|&d| Dimension { value: Some(dimension::Value::DimValue(d)), denotation: None }));
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(TensorType {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        doc_string: Some(doc.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Arch;

    fn spec() -> ModelSpec {
        ModelSpec { input_size: 16, ..ModelSpec::imagenet(Arch::Resnet18) }
    }

    /// A graph the model builders never make: conv, loss, then one more layer.
    fn graph(after_loss: bool) -> Graph {
        let mut g = Graph::new();
        let x = g.input("image", &[1, 3, 16, 16]);
        let labels = g.labels("label", 1);
        let h = g.conv2d("conv", x, 4, (3, 3), Default::default(), false).unwrap();
        let h = g.global_avg_pool("pool", h).unwrap();
        let logits = g.linear("fc", h, 2, true).unwrap();
        let loss = g.cross_entropy("loss", logits, labels, 0.0).unwrap();
        if after_loss {
            g.relu("after", loss).unwrap();
        }
        g
    }

    fn values(g: &Graph) -> HashMap<String, Vec<f32>> {
        g.tensors.iter().filter_map(|t| Some((t.name.clone(), t.init.clone()?))).collect()
    }

    #[test]
    fn a_layer_after_the_loss_is_named() {
        let g = graph(true);
        let e = encode(&spec(), &g, &values(&g), &OnnxOptions::default()).unwrap_err().to_string();
        assert!(e.contains("'after' (relu)") && e.contains("after the loss"), "{e}");
    }

    #[test]
    fn the_protobuf_decodes_to_the_graph() {
        let g = graph(false);
        let bytes = encode(&spec(), &g, &values(&g), &OnnxOptions { batch: Some(3), ..Default::default() }).unwrap();
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = m.graph.unwrap();
        let ops: Vec<_> = graph.node.iter().map(|n| n.op_type().to_string()).collect();
        assert_eq!(ops, ["Conv", "GlobalAveragePool", "Flatten", "Gemm"]);
        assert_eq!(graph.node[3].output, ["logits"]);
        let inits: Vec<_> = graph.initializer.iter().map(|t| t.name().to_string()).collect();
        assert_eq!(inits, ["conv.weight", "fc.weight", "fc.bias"]);
        assert_eq!(graph.initializer[0].raw_data().len(), 4 * 4 * 3 * 3 * 3);
        let dims = |v: &ValueInfoProto| match &v.r#type.as_ref().unwrap().value {
            Some(type_proto::Value::TensorType(t)) => {
                t.shape.as_ref().unwrap().dim.iter().map(|d| d.value.clone()).collect::<Vec<_>>()
            }
            None => vec![],
        };
        let fixed = |n| Some(dimension::Value::DimValue(n));
        assert_eq!(dims(&graph.input[0]), [fixed(3), fixed(3), fixed(16), fixed(16)]);
        assert_eq!(dims(&graph.output[0]), [fixed(3), fixed(1000)]);
        assert_eq!((m.ir_version, m.opset_import[0].version), (Some(8), Some(DEFAULT_OPSET)));
        let conv = &graph.node[0].attribute;
        let pads = conv.iter().find(|a| a.name() == "pads").unwrap();
        assert_eq!(pads.ints, [0, 0, 0, 0], "zero pads are still written");
        let group = conv.iter().find(|a| a.name() == "group").unwrap();
        assert_eq!((group.r#type(), group.i), (AttributeType::Int, Some(1)));
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let e = check(&OnnxOptions { opset: 12, ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("opset 12") && e.contains("13 to 21"), "{e}");
        let e = check(&OnnxOptions { batch: Some(0), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        assert!(check(&OnnxOptions { opset: 21, batch: Some(1), ..Default::default() }).is_ok());
    }
}
