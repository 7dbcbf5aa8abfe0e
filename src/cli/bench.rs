//! `wgtune info` and `wgtune bench ...`: print what the library's benchmarks measured.

use wgtune::bench::{bench_conv, bench_matmul, bench_step, default_conv_layers, BenchConfig, MatmulRecord, StepInput};
use wgtune::gpu::{AdapterRequest, Gpu, MIN_SUBGROUP_SIZE};
use wgtune::ops::matmul::MatmulKernel;

use super::args::{BenchCommand, ModelsArgs, StepArgs};
use super::train::with_memory_advice;

/// The adapter asked for; `debug` (a RenderDoc capture) opens it with object labels reaching the driver.
pub(crate) fn open_gpu(adapter: Option<String>, debug: bool) -> anyhow::Result<Gpu> {
    Ok(Gpu::new(&AdapterRequest { name: adapter, debug, ..Default::default() })?)
}

pub(crate) fn info(gpu: &Gpu, json: bool) -> anyhow::Result<()> {
    let s = gpu.summary();
    let l = gpu.limits();
    let limits = serde_json::json!({
        "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
        "max_buffer_size": l.max_buffer_size,
        "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
        "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
        "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
        "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
    });
    let features: Vec<String> = gpu.features().iter_names().map(|(n, _)| n.to_string()).collect();
    let pipeline_cache = gpu.pipeline_cache_path().map(|p| p.display().to_string());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "adapter": s,
                "limits": limits,
                "features": features,
                "shader_checks": gpu.shader_checks(),
                "subgroups": gpu.subgroups().map(|(min, max)| [min, max]),
                "pipeline_cache": pipeline_cache,
            })
        );
        return Ok(());
    }
    println!("adapter      {}", s.name);
    println!("backend      {}", s.backend);
    println!("device type  {}{}", s.device_type, if s.is_software { " (software: correct but slow)" } else { "" });
    println!("driver       {} {}", s.driver, s.driver_info);
    println!("limits");
    if let Some(map) = limits.as_object() {
        for (k, v) in map {
            println!("  {k:<40} {v}");
        }
    }
    println!(
        "features     {}",
        if features.is_empty() { "(none of the optional ones)".into() } else { features.join(", ") }
    );
    println!(
        "shader checks {}",
        if gpu.shader_checks() {
            "on: every kernel keeps wgpu's bounds clamps and loop counters (WGTUNE_SHADER_CHECKS)"
        } else {
            "off for the audited kernels (WGTUNE_SHADER_CHECKS=on keeps wgpu's)"
        }
    );
    match gpu.subgroups() {
        Some((min, max)) => println!(
            "reductions   subgroups of {} lanes (batch norm, depthwise weight gradients; WGTUNE_SUBGROUPS=off for \
             workgroup trees)",
            if min == max { min.to_string() } else { format!("{min}-{max}") }
        ),
        None if gpu.adapter_has_subgroups() => println!("reductions   workgroup trees (subgroups turned off)"),
        None => println!("reductions   workgroup trees (no subgroups of {MIN_SUBGROUP_SIZE} lanes or more)"),
    }
    println!(
        "pipeline cache {}",
        pipeline_cache.as_deref().unwrap_or("none (the backend has none, or there is no cache folder)")
    );
    Ok(())
}

/// One measurement: a JSON line with `--json`, else the text row `row` makes.
fn emit<T: serde::Serialize>(json: bool, record: &T, row: impl FnOnce(&T) -> String) {
    if json {
        println!("{}", serde_json::to_string(record).unwrap_or_default());
    } else {
        println!("{}", row(record));
    }
}

pub(crate) fn print_matmul(
    gpu: &Gpu,
    sizes: &[usize],
    kernels: &[MatmulKernel],
    cfg: BenchConfig,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        println!(
            "{:<16} {:>6} {:>6} {:>6} {:>10} {:>12} {:>5}",
            "kernel", "m", "n", "k", "GFLOP/s", "median ms", "runs"
        );
    }
    bench_matmul(gpu, sizes, kernels, cfg, |r: &MatmulRecord| {
        emit(json, r, |r| {
            let kernel = r.tuned.map_or(r.kernel.to_string(), |t| format!("{} -> {t}", r.kernel));
            format!(
                "{:<16} {:>6} {:>6} {:>6} {:>10.3} {:>12.2} {:>5}",
                kernel, r.m, r.n, r.k, r.gflops, r.median_ms, r.runs
            )
        })
    })?;
    Ok(())
}

/// Run one `wgtune bench` subcommand.
pub(crate) fn bench(adapter: Option<String>, what: BenchCommand) -> anyhow::Result<()> {
    match what {
        BenchCommand::Matmul { sizes, kernels, runs, json } => {
            let kernels = kernels
                .iter()
                .map(|k| {
                    MatmulKernel::from_name(k).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--kernels: unknown matmul kernel '{k}' (expected naive, tiled, shared32, shared64, \
                             shared128, staged128 or auto)"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let gpu = open_gpu(adapter, false)?;
            print_matmul(&gpu, &sizes, &kernels, BenchConfig { runs, ..Default::default() }, json)
        }
        BenchCommand::Data { images, presize, size, bs, workers, json } => {
            let gpu = open_gpu(adapter, false)?;
            let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            for r in wgtune::bench::bench_data(&gpu, images, (500, 375), presize, size, bs, workers)? {
                emit(json, &r, |r| {
                    format!(
                        "{:<15} {:>9.1} images/s  ({}, presize {}, size {}, {} workers)",
                        r.stage, r.images_per_s, r.source, r.presize, r.size, r.workers
                    )
                });
            }
            Ok(())
        }
        BenchCommand::Predict { models: ModelsArgs { model, bs, size, precision }, runs, json } => {
            let gpu = std::sync::Arc::new(open_gpu(adapter, false)?);
            let mut failed = 0;
            for name in &model {
                match wgtune::bench::bench_predict(gpu.clone(), *name, bs, size, runs, precision.into()) {
                    Ok(r) => emit(json, &r, |r| {
                        format!(
                            "{:<14} batch {:>3} at {}px: {:>8.2} images/s ({:.0} ms per batch)",
                            r.model, r.batch, r.size, r.images_per_s, r.median_ms
                        )
                    }),
                    Err(e) => {
                        failed += 1;
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({"bench": "predict", "model": name.name(), "error": e.to_string()})
                            );
                        } else {
                            eprintln!("{name}: error: {e}");
                        }
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} models could not be measured", model.len());
            }
            Ok(())
        }
        BenchCommand::Memory { models: ModelsArgs { model, bs, size, precision }, bound, json } => {
            let gpu = std::sync::Arc::new(open_gpu(adapter, false)?);
            for name in &model {
                let r = wgtune::bench::bench_memory(gpu.clone(), *name, bs, size, precision.into(), bound)?;
                let mib = |b: u64| b as f64 / (1 << 20) as f64;
                emit(json, &r, |r| {
                    format!(
                        "{:<14} batch {:>3} at {}px {:?}: training {:>8.1} MiB (activations {:.1} MiB), evaluation {:>8.1} \
                         MiB (persistent {:.1} MiB)",
                        r.model,
                        r.batch,
                        r.size,
                        r.precision,
                        mib(r.train_bytes),
                        mib(r.train_activation_bytes),
                        mib(r.eval_bytes),
                        mib(r.persistent_bytes)
                    ) + &r.step_bound_bytes.map_or(String::new(), |b| format!("; one step binds {:.1} MiB", mib(b)))
                });
            }
            Ok(())
        }
        BenchCommand::Tune { step: StepArgs { model, bs, size, precision }, json } => {
            let gpu = std::sync::Arc::new(open_gpu(adapter, false)?);
            let r = wgtune::bench::bench_tune(gpu, &model, bs, size, precision.into())
                .map_err(|e| with_memory_advice(e, bs, size))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            let t = &r.report;
            println!("device   {}", t.device);
            println!("mode     {:?} (WGTUNE_AUTOTUNE)", t.mode);
            println!("cache    {} ({} choices read at start)", t.cache.as_deref().unwrap_or("none"), t.loaded);
            println!(
                "compiled {} batch {} at {}px in {:.2} s, {:.2} s of it timing variants",
                r.model, r.batch, r.size, r.compile_s, t.spent_s
            );
            for (problem, c) in &t.choices {
                let alts: Vec<String> = c.measured_ms.iter().map(|(k, ms)| format!("{k} {ms:.3}")).collect();
                let pending = match c.pending.as_slice() {
                    [] => String::new(),
                    p => format!("; untimed so far: {}", p.join(", ")),
                };
                println!("{problem:<62} {:<8} ms: {}{pending}", c.kernel, alts.join(", "));
            }
            Ok(())
        }
        BenchCommand::Train { step: StepArgs { model, bs, size, precision }, steps, profile, host_input, json } => {
            let graph = |bs: usize| wgtune::bench::train_graph(&model, bs, size);
            let gpu = std::sync::Arc::new(open_gpu(adapter, false)?);
            let input = if host_input { StepInput::Host } else { StepInput::Resident };
            let (r, split, profiled) =
                pollster::block_on(bench_step(gpu, &model, graph, bs, steps, profile, precision.into(), input))
                    .map_err(|e| with_memory_advice(e, bs, size))?;
            if let Some(s) = split.filter(|_| !json) {
                println!(
                    "batch {bs} does not fit this adapter's storage-binding limit: {} accumulated micro-batches of {}",
                    s.parts, s.micro
                );
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            println!("model             {} (batch {}, {}x{})", r.model, r.batch, r.size, r.size);
            println!("images/s          {:.2}", r.images_per_s);
            println!("steps/s           {:.3}", r.steps_per_s);
            println!("first step        {:.2} s (compile, upload, run, read back)", r.first_step_s);
            println!(
                "input             {} ({:.1} KiB written from the host per step)",
                match r.input {
                    StepInput::Resident => "resident: copied on the GPU each step",
                    StepInput::Host => "from host memory each step",
                },
                r.upload_bytes_per_step / 1024.0
            );
            println!("encode            {:.0} us per step (CPU)", r.encode_us);
            println!("train_step call   {:.0} us (includes waiting for the adapter)", r.call_us);
            println!("submits           {} per step", r.submits_per_step);
            println!("read back         {} bytes per step", r.readback_bytes_per_step);
            println!(
                "bytes bound       {:.1} MiB per step ({:?} activations)",
                r.bound_bytes_per_step as f64 / (1 << 20) as f64,
                r.precision
            );
            println!("planned GPU bytes {:.1} MiB", r.planned_bytes as f64 / (1 << 20) as f64);
            if let Some(p) = profiled {
                println!("\n{}", wgtune::profile::render("profiled training step", &p, 15));
            }
            Ok(())
        }
        BenchCommand::Conv { matmul_sizes, no_matmul, runs, json } => {
            let gpu = open_gpu(adapter, false)?;
            let cfg = BenchConfig { runs, ..Default::default() };
            if !json {
                println!(
                    "{:<16} {:<16} {:>6} {:>9} {:>9} {:>11} {:>5}",
                    "layer", "pass", "groups", "GFLOP/s", "GB/s", "median ms", "runs"
                );
            }
            bench_conv(&gpu, &default_conv_layers(), cfg, |r| {
                emit(json, r, |r| {
                    format!(
                        "{:<16} {:<16} {:>6} {:>9.3} {:>9.3} {:>11.2} {:>5}",
                        r.layer, r.pass, r.groups, r.gflops, r.gbps, r.median_ms, r.runs
                    )
                })
            })?;
            if no_matmul {
                return Ok(());
            }
            if !json {
                println!();
            }
            print_matmul(&gpu, &matmul_sizes, &[MatmulKernel::Tiled], cfg, json)
        }
    }
}
