//! Shader checks that need no GPU: every shaders/*.wgsl parses and validates with naga, the registry lists
//! exactly those files, every kernel signature (binding numbers and access) matches what its entry point uses,
//! and every Rust parameter struct has the size of its WGSL twin.

use std::collections::BTreeSet;

use naga::valid::{Capabilities, ValidationFlags, Validator};
use wgtune::gpu::{
    variant_source, with_subgroups, Access, Precision, ACT_ALIAS, FAMILIES, LHS_ALIAS, RES_ALIAS, RHS_ALIAS,
    SUBGROUPS_BEGIN, SUBGROUPS_END, TREE_BEGIN, TREE_END,
};

fn parse(name: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    parse_with(name, source, Capabilities::empty())
}

fn parse_with(name: &str, source: &str, caps: Capabilities) -> (naga::Module, naga::valid::ModuleInfo) {
    let module =
        naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    (module, info)
}

#[test]
fn every_shader_file_is_registered_and_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("shaders/")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".wgsl").map(str::to_string))
        .collect();
    let registered: BTreeSet<String> = FAMILIES.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(on_disk, registered, "shaders/*.wgsl and gpu::kernels::FAMILIES must list the same families");
    for fam in FAMILIES {
        let text = std::fs::read_to_string(dir.join(format!("{}.wgsl", fam.name))).expect("read");
        assert_eq!(text, fam.source, "{}: registry holds a stale copy", fam.name);
        assert!(text.starts_with("// "), "{}.wgsl must open with a header comment", fam.name);
        parse(fam.name, fam.source);
    }
}

/// The f16 variants (issue 14) are generated from the f32 files: each family with the `alias act = f32;` line
/// (exactly one) must give valid WGSL with the line made f16; each with `alias res = f32;` too a valid variant
/// with f16 operands and an f32 result; each with `alias lhs = f32;` or `alias rhs = f32;` (a GEMM operand that
/// may be an f32 weight) a valid variant keeping that operand f32 and making the rest f16. Only the optimizer's
/// families (f32 master weights and state) have no f16 variant; the f32-weight variants are those of the families
/// that read weights next to activations.
/// The subgroup variants: exactly the families with both blocks (the batch-norm and depthwise reductions) have
/// one, and it is valid WGSL at every precision the family has, with the tree's lines gone.
#[test]
fn subgroup_variants_are_valid() {
    let mut with = Vec::new();
    for fam in FAMILIES {
        let marked = fam.source.contains(TREE_BEGIN) || fam.source.contains(SUBGROUPS_BEGIN);
        let Some(source) = with_subgroups(fam.source) else {
            assert!(!marked, "{}: one of the two blocks without the other", fam.name);
            continue;
        };
        for line in [TREE_BEGIN, TREE_END, SUBGROUPS_BEGIN, SUBGROUPS_END] {
            assert_eq!(fam.source.matches(line).count(), 1, "{}: '{line}' once", fam.name);
        }
        assert!(!source.contains("workgroupBarrier();\n    for (var stride = 128u"), "{}: the tree stayed", fam.name);
        let caps = Capabilities::SUBGROUP | Capabilities::SHADER_FLOAT16;
        parse_with(&format!("{} (subgroups)", fam.name), &source, caps);
        for precision in Precision::ALL {
            if let Some(variant) = variant_source(*fam, precision) {
                let sub = with_subgroups(&variant).expect("every precision keeps the blocks");
                parse_with(&format!("{} ({precision:?}, subgroups)", fam.name), &sub, caps);
            }
        }
        with.push(fam.name);
    }
    assert_eq!(with, ["depthwise", "norm"]);
}

#[test]
fn f16_variants_are_valid() {
    let mut without = Vec::new();
    let mut weighted = Vec::new();
    for fam in FAMILIES {
        let Some(source) = variant_source(*fam, Precision::F16) else {
            without.push(fam.name);
            continue;
        };
        parse_with(&format!("{} (f16)", fam.name), &source, Capabilities::SHADER_FLOAT16);
        assert_eq!(fam.source.matches(ACT_ALIAS).count(), 1, "{}: one alias line", fam.name);
        for line in [RES_ALIAS, LHS_ALIAS, RHS_ALIAS] {
            assert!(!source.contains(line), "{}: the f16 variant kept '{line}'", fam.name);
        }
        if let Some(mixed) = variant_source(*fam, Precision::F16ToF32) {
            parse_with(&format!("{} (f16, f32 result)", fam.name), &mixed, Capabilities::SHADER_FLOAT16);
            assert_eq!(mixed.matches(RES_ALIAS).count(), 1, "{}: one result alias line", fam.name);
        }
        for (precision, line) in [(Precision::F16WithF32Lhs, LHS_ALIAS), (Precision::F16WithF32Rhs, RHS_ALIAS)] {
            if let Some(mixed) = variant_source(*fam, precision) {
                parse_with(&format!("{} ({precision:?})", fam.name), &mixed, Capabilities::SHADER_FLOAT16);
                assert_eq!(mixed.matches(line).count(), 1, "{}: {precision:?} keeps '{line}'", fam.name);
                assert!(!mixed.contains(ACT_ALIAS) && !mixed.contains(RES_ALIAS), "{}: {precision:?}", fam.name);
                weighted.push(format!("{} {precision:?}", fam.name));
            }
        }
    }
    assert_eq!(
        weighted,
        [
            "matmul F16WithF32Lhs",
            "matmul F16WithF32Rhs",
            "conv2d F16WithF32Lhs",
            "depthwise F16WithF32Rhs",
            "slice F16WithF32Rhs"
        ],
        "families reading an f32 weight next to f16 activations"
    );
    // The optimizer, the gradient sums and the loss scaler's unscale/update read and write only f32 gradients,
    // weights and state.
    assert_eq!(without, ["optim", "accumulate", "scaler"], "families without an f16 variant");
}

#[test]
fn kernel_signatures_match_their_entry_points() {
    for spec in wgtune::ops::all_kernels() {
        let fam = FAMILIES.iter().find(|f| f.name == spec.family).expect("family");
        let (module, info) = parse(fam.name, fam.source);
        let index = module
            .entry_points
            .iter()
            .position(|e| e.name == spec.entry)
            .unwrap_or_else(|| panic!("{} has no entry point {}", fam.name, spec.entry));
        let ep_info = info.get_entry_point(index);
        let mut used = Vec::new();
        for (handle, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else { continue };
            if ep_info[handle].is_empty() {
                continue;
            }
            assert_eq!(binding.group, 0, "{}: group", spec.entry);
            let access = match var.space {
                naga::AddressSpace::Uniform => None,
                naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => {
                    Some(Access::ReadWrite)
                }
                naga::AddressSpace::Storage { .. } => Some(Access::Read),
                other => panic!("{}: unexpected address space {other:?}", spec.entry),
            };
            used.push((binding.binding, access));
        }
        used.sort_by_key(|u| u.0);
        let mut declared: Vec<(u32, Option<Access>)> = vec![(0, None)];
        declared.extend(spec.storage.iter().map(|&(b, a)| (b, Some(a))));
        assert_eq!(used, declared, "{}: bindings used by the shader vs the Rust signature", spec.entry);
    }
}

/// A WGSL struct's size and members (name, byte offset), as naga's layouter placed them.
fn wgsl_struct(module: &naga::Module, name: &str) -> (u32, Vec<(String, u32)>) {
    module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .map(|(_, t)| match &t.inner {
            naga::TypeInner::Struct { span, members } => {
                (*span, members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset)).collect())
            }
            other => panic!("{name} is not a struct: {other:?}"),
        })
        .unwrap_or_else(|| panic!("no struct {name}"))
}

/// (WGSL family, WGSL struct, Rust size, Rust fields with their offsets) of a uniform struct and its twin.
macro_rules! twin {
    ($family:expr, $wgsl:literal, $ty:ty { $($field:ident),* $(,)? }) => {
        ($family, $wgsl, size_of::<$ty>(), vec![$((stringify!($field), std::mem::offset_of!($ty, $field))),*])
    };
}

/// Every uniform struct has the size and the member offsets of its WGSL twin: each named field at the same byte
/// offset (naga's layout vs `offset_of!`), padding members inside the Rust padding. Fields must be listed in full:
/// a field missing here or in the WGSL fails.
#[test]
fn uniform_structs_match_their_rust_twins() {
    use wgtune::data::augment::AugmentParams;
    use wgtune::ops::*;
    // The dense and the depthwise convolutions share one parameter struct.
    let conv_params = |family: &'static str| {
        twin! { family, "ConvParams", conv::ConvParams {
            batch, in_c, in_h, in_w, out_c, out_h, out_w, groups, kernel_h, kernel_w, stride_h, stride_w, pad_top,
            pad_left, dilation_h, dilation_w, flags, split_len, _pad
        } }
    };
    let cases = [
        twin! { "matmul", "MatmulParams", matmul::MatmulParams {
            m, n, k, batch, a_batch, a_row, a_col, b_batch, b_row, b_col, flags, _pad
        } },
        twin! { "elementwise", "EltParams", elementwise::EltParams { len, flags, alpha, _pad } },
        twin! { "reduce", "ReduceParams", reduce::ReduceParams { outer, mid, inner, flags } },
        twin! { "loss", "LossParams", loss::LossParams { batch, classes, smoothing, scale, words, threshold, _pad } },
        twin! { "optim", "OptimParams", optim::OptimParams {
            len, flags, lr, mom, sqr_mom, eps, wd, debias1, debias2, bucket, step, _pad
        } },
        twin! { "accumulate", "AccumulateParams", accumulate::AccumulateParams { len, mode, scale, _pad } },
        conv_params("conv2d"),
        conv_params("depthwise"),
        twin! { "pool", "PoolParams", pool::PoolParams {
            batch, channels, in_h, in_w, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left,
            pad_bottom, pad_right, flags, out_c_total, out_c_offset, _pad
        } },
        twin! { "concat", "ConcatParams", concat::ConcatParams {
            batch, channels, hw, flags, src_c_total, src_c_offset, dst_c_total, dst_c_offset
        } },
        twin! { "norm", "NormParams", norm::NormParams { batch, channels, hw, flags, eps, momentum, chunk_len, _pad } },
        twin! { "dropout", "DropoutParams", dropout::DropoutParams { len, seed, step, threshold, scale, flags, per, _pad } },
        twin! { "layer_norm", "LayerNormParams", layer_norm::LayerNormParams { outer, channels, inner, flags, eps, _pad } },
        twin! { "permute", "PermuteParams", permute::PermuteParams { len, rank, flags, _pad, dims, strides } },
        twin! { "softmax", "SoftmaxParams", softmax::SoftmaxParams { rows, len, flags, scale } },
        twin! { "slice", "SliceParams", slice::SliceParams { outer, channels, inner, flags, start, len, _pad } },
        twin! { "augment", "AugmentParams", AugmentParams { batch, in_size, out_size, flags, scale, shift } },
    ];
    for (family, name, rust_size, fields) in cases {
        let fam = FAMILIES.iter().find(|f| f.name == family).expect("family");
        let (module, _) = parse(family, fam.source);
        let (size, members) = wgsl_struct(&module, name);
        assert_eq!(size as usize, rust_size, "{family}: {name} size");
        assert_eq!(rust_size % 16, 0, "{name}: uniform structs are padded to 16 bytes");
        let pad = fields.iter().find(|(f, _)| *f == "_pad").map(|&(_, at)| at);
        for (member, offset) in &members {
            let offset = *offset as usize;
            match fields.iter().find(|(f, _)| f == member) {
                Some(&(_, at)) => assert_eq!(offset, at, "{family}: {name}.{member} offset"),
                None if member.starts_with("_pad") => {
                    let at = pad.unwrap_or_else(|| panic!("{family}: {name}.{member} has no Rust padding"));
                    assert!(offset >= at && offset < rust_size, "{family}: {name}.{member} outside the padding");
                }
                None => panic!("{family}: {name}.{member} has no Rust field"),
            }
        }
        for (field, _) in &fields {
            let named = members.iter().any(|(m, _)| m == field);
            assert!(named || *field == "_pad", "{family}: Rust field {name}.{field} is not in the WGSL struct");
        }
    }
}

/// The text of a top-level WGSL item (`struct NAME` or `fn NAME`) up to its closing brace, or of a one-line
/// `const` up to its semicolon; comments before it excluded.
fn item(source: &str, head: &str) -> String {
    let start = source.lines().position(|l| l.starts_with(head)).unwrap_or_else(|| panic!("no `{head}`"));
    let first = source.lines().nth(start).unwrap_or_default();
    if let Some(declaration) = first.split_once(';') {
        return declaration.0.to_string(); // a one-line `const`
    }
    let body: Vec<&str> = source.lines().skip(start).take_while(|l| *l != "}").collect();
    body.join("\n")
}

/// Blocks duplicated on purpose (WGSL has no includes): the 16x8 and the staged 8x8 register blocks and the staged
/// tile's sizes, slabs and stores of matmul and the implicit-GEMM convolution, the convolution parameters of the dense and depthwise
/// kernels. They must stay identical.
#[test]
fn wgsl_blocks_shared_between_families_stay_identical() {
    let source = |name: &str| FAMILIES.iter().find(|f| f.name == name).expect("family").source;
    for (head, families) in [
        ("struct Block", ["matmul", "conv2d"]),
        ("fn rank1_update(", ["matmul", "conv2d"]),
        ("const TM:", ["matmul", "conv2d"]),
        ("const TN:", ["matmul", "conv2d"]),
        ("struct Block8", ["matmul", "conv2d"]),
        ("fn rank1_update8(", ["matmul", "conv2d"]),
        ("const ST_TILE:", ["matmul", "conv2d"]),
        ("const ST_BK:", ["matmul", "conv2d"]),
        ("const ST_PITCH:", ["matmul", "conv2d"]),
        ("var<workgroup> staged_a:", ["matmul", "conv2d"]),
        ("var<workgroup> staged_b:", ["matmul", "conv2d"]),
        ("fn stage_a(", ["matmul", "conv2d"]),
        ("fn stage_b(", ["matmul", "conv2d"]),
        ("fn staged_products(", ["matmul", "conv2d"]),
        ("struct ConvParams", ["conv2d", "depthwise"]),
        ("fn workgroup_sums(", ["norm", "layer_norm"]),
    ] {
        let [a, b] = families.map(|f| item(source(f), head));
        assert_eq!(a, b, "`{head}` differs between {} and {}", families[0], families[1]);
    }
    // The reductions' entry into a workgroup (`Lane` and `enter`, with the subgroup variant's private copies), in
    // both of the blocks that src/gpu/kernels.rs swaps.
    for section in ["// [workgroup tree]", "/* [subgroups]"] {
        let [a, b] = ["depthwise", "norm"].map(|f| lane_block(source(f), section));
        assert!(a.contains("fn enter(lane: Lane) -> u32"), "{section}: {a}");
        assert_eq!(a, b, "`Lane` and `enter` in {section} differ between depthwise and norm");
    }
}

/// From `section` on, the text from `struct Lane` to the end of `fn enter`.
fn lane_block<'a>(source: &'a str, section: &str) -> &'a str {
    let rest = &source[source.find(section).unwrap_or_else(|| panic!("no `{section}`"))..];
    let rest = &rest[rest.find("struct Lane").unwrap_or_else(|| panic!("no `struct Lane` after `{section}`"))..];
    let enter = rest.find("\nfn enter(").unwrap_or_else(|| panic!("no `fn enter` after `{section}`"));
    let end = enter + rest[enter..].find("\n}\n").expect("the end of `fn enter`") + 2;
    &rest[..end]
}

/// Every launcher is named after its entry point, so entry points are unique across families (the same entry with
/// other pipeline constants is the same kernel specialized).
#[test]
fn entry_points_are_unique_across_families() {
    let mut seen = std::collections::HashMap::new();
    for k in wgtune::ops::all_kernels() {
        if let Some(family) = seen.insert(k.entry, k.family) {
            assert_eq!(family, k.family, "entry point '{}' is in both '{family}' and '{}'", k.entry, k.family);
        }
    }
}
