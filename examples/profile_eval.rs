fn main() -> wgtune::Result<()> {
    use std::sync::Arc;
    let args: Vec<String> = std::env::args().collect();
    let arch = wgtune::nn::Arch::parse(args.get(1).map(String::as_str).unwrap_or("effnet-lite0"))?;
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let bs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    let gpu = Arc::new(wgtune::gpu::Gpu::new(&wgtune::gpu::AdapterRequest::from_env())?);
    let training = args.get(4).is_some_and(|a| a == "train");
    let g = if training { arch.with_fastai_head(bs, size, 10, 0.1)? } else { arch.classifier(bs, size, 1000)? };
    let kinds: std::collections::HashMap<String, &'static str> =
        g.nodes.iter().map(|n| (n.name.clone(), n.op.kind())).collect();
    let mut ex = wgtune::graph::executor::Executor::new(gpu, g, Default::default())?;
    let x = wgtune::reference::SplitMix(1).vec_f32(bs * 3 * size * size, -1.0, 1.0);
    let labels = vec![0u32; bs];
    ex.profile(training, &x, &labels)?;
    let prof = ex.profile(training, &x, &labels)?;
    let mut by_kind: std::collections::BTreeMap<String, f64> = Default::default();
    for (name, t) in &prof {
        let base = name.trim_end_matches(" backward");
        let bwd = if name.ends_with(" backward") { " bwd" } else { "" };
        let k = kinds.get(base).copied().unwrap_or("?");
        let shape = if name.contains("depthwise") {
            " depthwise"
        } else if name.contains("expand") || name.contains("project") || name.contains("conv_head") {
            " 1x1"
        } else {
            ""
        };
        let k = format!("{k}{shape}{bwd}");
        *by_kind.entry(k).or_default() += t;
    }
    let total: f64 = prof.iter().map(|p| p.1).sum();
    let mut top = prof.clone();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, t) in top.iter().take(12) {
        println!("  {name:<40} {:>8.1} ms", t * 1e3);
    }
    println!("total {:.1} ms for {bs} images at {size}px", total * 1e3);
    for (k, t) in by_kind {
        println!("{k:<20} {:>8.1} ms {:>5.1}%", t * 1e3, t / total * 100.0);
    }
    Ok(())
}
