//! Graph rewrites the executor applies before compiling: they change which kernels run, never what is computed.

use super::{Graph, Op, TensorId};
use crate::ops::norm::NormAct;

impl Graph {
    /// Batch norms take in an elementwise op that alone reads their output ([`Op::BatchNorm`]'s `residual`,
    /// [`crate::ops::norm::BatchNormConfig::act`]), one each:
    /// - a residual add of the normalized value and a tensor computed before the batch norm (a block's skip
    ///   connection, as in EfficientNet and ResNet): the batch norm adds it and writes the sum;
    /// - otherwise a ReLU or ReLU6: the batch norm writes the activation of its value (backward recomputes the
    ///   activation's input from x, so it cannot follow a residual: ResNet's ReLU after the add stays its own).
    ///
    /// The taken-in nodes go. Forward and backward then make one pass over memory where they made two or three,
    /// and the intermediate values and their gradients need no buffers. Tensors keep their ids (the intermediate
    /// ones stay declared, read and written by nothing); parameters and names are unchanged.
    pub fn fuse_norm_activations(&self) -> Graph {
        let mut g = self.clone();
        // Residual adds: the batch norm must come after whatever computes the other operand.
        let taken = g.fuse_into_norms(|g, bn_index, bn_y, op| match *op {
            Op::Add { a, b, y } if a != b => {
                let other = if a == bn_y { b } else { a };
                let before = g.producer(other).is_none_or(|p| p < bn_index);
                (before && g.shape(other) == g.shape(bn_y)).then_some((y, Some(other), NormAct::None))
            }
            _ => None,
        });
        let mut g = g.without(&taken);
        let taken = g.fuse_into_norms(|_, _, bn_y, op| match *op {
            Op::Relu { x, y } if x == bn_y => Some((y, None, NormAct::Relu)),
            Op::Relu6 { x, y } if x == bn_y => Some((y, None, NormAct::Relu6)),
            _ => None,
        });
        g.without(&taken)
    }

    /// For every batch norm that has taken nothing in yet (one fused op each: backward recomputes an activation's
    /// input from x, which a residual would change) and whose output has exactly one reader: `take(graph, its node
    /// index, its output, the reader's op)` says whether the batch norm takes the reader in, as (the reader's output,
    /// which the batch norm then writes; a residual to add, if any; the activation). Returns the nodes taken in.
    fn fuse_into_norms(
        &mut self,
        take: impl Fn(&Graph, usize, TensorId, &Op) -> Option<(TensorId, Option<TensorId>, NormAct)>,
    ) -> Vec<bool> {
        let mut readers = vec![Vec::new(); self.tensors.len()];
        for (j, node) in self.nodes.iter().enumerate() {
            for t in node.op.inputs() {
                readers[t.0].push(j);
            }
        }
        let mut taken = vec![false; self.nodes.len()];
        for i in 0..self.nodes.len() {
            let bn_y = match &self.nodes[i].op {
                Op::BatchNorm { y, cfg, residual: None, .. } if cfg.act == NormAct::None => *y,
                _ => continue,
            };
            let &[j] = readers[bn_y.0].as_slice() else { continue };
            let Some((out, add, act)) = take(self, i, bn_y, &self.nodes[j].op) else { continue };
            let Op::BatchNorm { y, cfg, residual, .. } = &mut self.nodes[i].op else { unreachable!("matched above") };
            *y = out;
            *residual = add;
            cfg.act = act;
            taken[j] = true;
        }
        taken
    }

    /// The graph without the nodes marked.
    fn without(mut self, taken: &[bool]) -> Graph {
        let mut keep = taken.iter().map(|t| !t);
        self.nodes.retain(|_| keep.next().unwrap_or(true));
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::graph::{cpu, Graph, Op, TensorId, TensorKind};
    use crate::ops::conv::{Conv2dConfig, Padding};
    use crate::ops::norm::{BatchNormConfig, NormAct};
    use crate::reference::{widen, SplitMix};

    /// conv-BN-ReLU6 (act taken in); conv-BN whose output also feeds a ReLU and an add (two readers: nothing taken
    /// in); conv-BN-add(skip)-ReLU (ResNet: the add taken in, the ReLU after it not); a BN added to a conv computed after it (the add
    /// cannot be taken in); conv-BN-add(skip) (EfficientNet: the add taken in, the BN as the add's second operand); a
    /// linear head.
    fn graph() -> Graph {
        let mut g = Graph::new();
        let x = g.input("image", &[3, 2, 5, 5]);
        let labels = g.labels("label", 3);
        let conv = Conv2dConfig { padding: Padding::symmetric(1), ..Default::default() };
        let bn = BatchNormConfig::default();
        let h = g.conv2d("conv1", x, 3, (3, 3), conv, false).unwrap();
        let h = g.batch_norm("bn1", h, bn).unwrap();
        let a = g.relu6("act1", h).unwrap();
        let h = g.conv2d("conv2", a, 3, (3, 3), conv, false).unwrap();
        let n = g.batch_norm("bn2", h, bn).unwrap();
        let r = g.relu("act2", n).unwrap();
        let s = g.add("sum2", n, r).unwrap();
        let s = g.relu("act3", s).unwrap();
        let h = g.conv2d("conv3", s, 3, (3, 3), conv, false).unwrap();
        let h = g.batch_norm("bn3", h, bn).unwrap();
        let h = g.add("sum3", h, s).unwrap();
        let s = g.relu("act4", h).unwrap();
        let h = g.conv2d("conv4", s, 3, (3, 3), conv, false).unwrap();
        let early = g.batch_norm("bn4", h, bn).unwrap();
        let late = g.conv2d("conv5", s, 3, (3, 3), conv, true).unwrap();
        let s = g.add("sum4", early, late).unwrap();
        let h = g.conv2d("conv6", s, 3, (3, 3), conv, false).unwrap();
        let h = g.batch_norm("bn5", h, bn).unwrap();
        let s = g.add("sum5", s, h).unwrap();
        let s = g.global_avg_pool("pool", s).unwrap();
        let logits = g.linear("fc", s, 4, true).unwrap();
        g.cross_entropy("loss", logits, labels, 0.0).unwrap();
        g
    }

    #[test]
    fn batch_norms_take_in_the_ops_that_alone_read_them() {
        let g = graph();
        let f = g.fuse_norm_activations();
        let names: Vec<&str> = f.nodes.iter().map(|n| n.name.as_str()).collect();
        for gone in ["act1", "sum3", "sum5"] {
            assert!(!names.contains(&gone), "{gone} is taken in: {names:?}");
        }
        assert_eq!(f.nodes.len(), g.nodes.len() - 3);
        let name = |t: TensorId| f.tensors[t.0].name.clone();
        let norms: Vec<(String, NormAct, Option<String>, String)> = f
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::BatchNorm { cfg, residual, y, .. } => Some((n.name.clone(), cfg.act, residual.map(name), name(*y))),
                _ => None,
            })
            .collect();
        let s = |v: &str| v.to_string();
        assert_eq!(
            norms,
            [
                (s("bn1"), NormAct::Relu6, None, s("act1.out")),
                (s("bn2"), NormAct::None, None, s("bn2.out")),
                (s("bn3"), NormAct::None, Some(s("act3.out")), s("sum3.out")),
                (s("bn4"), NormAct::None, None, s("bn4.out")),
                (s("bn5"), NormAct::None, Some(s("sum4.out")), s("sum5.out")),
            ]
        );
        assert_eq!(f.tensors.len(), g.tensors.len(), "tensor ids stay");
    }

    /// The fused graph computes what the unfused one does, forward and backward, training and eval (f64 CPU
    /// passes): the activation applied after normalizing, and dy masked where its derivative is 0.
    #[test]
    fn the_fused_graph_computes_the_same_values_and_gradients() {
        let g = graph();
        let f = g.fuse_norm_activations();
        let mut rng = SplitMix(7);
        let mut values: HashMap<TensorId, Vec<f64>> = HashMap::new();
        for (i, t) in g.tensors.iter().enumerate() {
            if let (TensorKind::Param { .. } | TensorKind::State, Some(init)) = (&t.kind, &t.init) {
                values.insert(TensorId(i), widen(init));
            }
        }
        // bn1's shift and scale put values on both sides of 0 and 6.
        let beta = g.find("bn1.bias").unwrap();
        values.insert(beta, vec![3.0, -0.5, 5.5]);
        let gamma = g.find("bn1.weight").unwrap();
        values.insert(gamma, vec![4.0, 2.0, 3.0]);
        let x = widen(&rng.vec_f32(3 * 2 * 5 * 5, -1.0, 1.0));
        let labels = [0u32, 2, 3];
        for training in [true, false] {
            let fwd_g = cpu::forward(&g, &values, &x, &labels, training, 1);
            let fwd_f = cpu::forward(&f, &values, &x, &labels, training, 1);
            let act1 = g.find("act1.out").unwrap();
            let clipped = fwd_g[&act1].iter().filter(|&&v| v == 0.0 || v == 6.0).count();
            assert!(clipped > 10 && clipped < fwd_g[&act1].len() - 10, "both kinks in use: {clipped}");
            for name in ["act1.out", "act4.out", "sum5.out", "loss.loss"] {
                let t = g.find(name).unwrap();
                assert_eq!(fwd_g[&t], fwd_f[&t], "{} (training {training})", g.tensors[t.0].name);
            }
            let bg = cpu::backward(&g, &fwd_g, &labels, training, 1);
            let bf = cpu::backward(&f, &fwd_f, &labels, training, 1);
            for p in g.params() {
                let (a, b) = (&bg[&p], &bf[&p]);
                let worst = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(worst <= 1e-12, "{}: {worst:e} (training {training})", g.tensors[p.0].name);
            }
        }
    }
}
