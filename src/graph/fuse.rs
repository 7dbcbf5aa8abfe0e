//! Graph rewrites the executor applies before compiling: they change which kernels run, never what is computed.

use super::{Graph, Op, TensorId};
use crate::ops::norm::NormAct;

impl Graph {
    /// Every batch norm whose output is read by one ReLU or ReLU6 and nothing else takes that activation in
    /// ([`crate::ops::norm::BatchNormConfig::act`]): it writes the activation's output, and the activation's node
    /// goes. Forward and backward then make one pass over memory instead of two, and neither the normalized
    /// values nor their gradient need a buffer. Tensors keep their ids (the normalized values' tensor stays
    /// declared, read and written by nothing), parameters and names are unchanged.
    pub fn fuse_norm_activations(&self) -> Graph {
        let mut readers = vec![0usize; self.tensors.len()];
        for node in &self.nodes {
            for t in node.op.inputs() {
                readers[t.0] += 1;
            }
        }
        let mut out = self.clone();
        let mut fused = vec![false; self.nodes.len()];
        for i in 0..self.nodes.len() {
            let (bn_y, act) = match &out.nodes[i].op {
                Op::BatchNorm { y, cfg, .. } if cfg.act == NormAct::None && readers[y.0] == 1 => (*y, cfg.act),
                _ => continue,
            };
            debug_assert_eq!(act, NormAct::None);
            // The one reader, if it is a ReLU or ReLU6 of this output.
            let Some(j) = (i + 1..self.nodes.len()).find(|&j| self.nodes[j].op.inputs().contains(&bn_y)) else {
                continue;
            };
            let (act, act_y): (NormAct, TensorId) = match self.nodes[j].op {
                Op::Relu { x, y } if x == bn_y => (NormAct::Relu, y),
                Op::Relu6 { x, y } if x == bn_y => (NormAct::Relu6, y),
                _ => continue,
            };
            if let Op::BatchNorm { y, cfg, .. } = &mut out.nodes[i].op {
                *y = act_y;
                cfg.act = act;
            }
            fused[j] = true;
        }
        let mut keep = fused.iter().map(|f| !f);
        out.nodes.retain(|_| keep.next().unwrap_or(true));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::graph::{cpu, Graph, Op, TensorId, TensorKind};
    use crate::ops::conv::{Conv2dConfig, Padding};
    use crate::ops::norm::{BatchNormConfig, NormAct};
    use crate::reference::{widen, SplitMix};

    /// conv-BN-ReLU6 (fused), conv-BN-ReLU whose normalized values also feed an add (not fused: they have two
    /// readers), ReLU after the add (not after a batch norm), a linear head.
    fn graph() -> Graph {
        let mut g = Graph::new();
        let x = g.input("image", &[3, 2, 5, 5]);
        let labels = g.labels("label", 3);
        let conv = Conv2dConfig { padding: Padding::symmetric(1), ..Default::default() };
        let h = g.conv2d("conv1", x, 3, (3, 3), conv, false).unwrap();
        let h = g.batch_norm("bn1", h, BatchNormConfig::default()).unwrap();
        let a = g.relu6("act1", h).unwrap();
        let h = g.conv2d("conv2", a, 3, (3, 3), conv, false).unwrap();
        let n = g.batch_norm("bn2", h, BatchNormConfig::default()).unwrap();
        let r = g.relu("act2", n).unwrap();
        let s = g.add("sum", n, r).unwrap();
        let s = g.relu("act3", s).unwrap();
        let s = g.global_avg_pool("pool", s).unwrap();
        let logits = g.linear("fc", s, 4, true).unwrap();
        g.cross_entropy("loss", logits, labels, 0.0).unwrap();
        g
    }

    #[test]
    fn only_a_batch_norm_read_by_one_relu_alone_takes_it_in() {
        let g = graph();
        let f = g.fuse_norm_activations();
        assert_eq!(f.nodes.len(), g.nodes.len() - 1, "exactly act1 goes");
        assert!(f.nodes.iter().all(|n| n.name != "act1"));
        let acts: Vec<(String, NormAct)> = f
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::BatchNorm { cfg, .. } => Some((n.name.clone(), cfg.act)),
                _ => None,
            })
            .collect();
        assert_eq!(acts, [("bn1".to_string(), NormAct::Relu6), ("bn2".to_string(), NormAct::None)]);
        let Op::BatchNorm { y, .. } = f.nodes[1].op else { panic!("bn1 is node 1") };
        assert_eq!(f.tensors[y.0].name, "act1.out", "bn1 writes the ReLU6's output");
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
            for t in [act1, g.find("loss.loss").unwrap()] {
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
