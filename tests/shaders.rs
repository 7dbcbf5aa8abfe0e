//! Shader checks that need no GPU: every shaders/*.wgsl parses and validates with naga, the registry lists
//! exactly those files, every kernel signature (binding numbers and access) matches what its entry point uses,
//! and every Rust parameter struct has the size of its WGSL twin.

use std::collections::BTreeSet;

use naga::valid::{Capabilities, ValidationFlags, Validator};
use wgtune::gpu::{Access, FAMILIES};

fn parse(name: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module =
        naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
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

fn struct_size(module: &naga::Module, name: &str) -> u32 {
    module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .map(|(_, t)| match &t.inner {
            naga::TypeInner::Struct { span, .. } => *span,
            other => panic!("{name} is not a struct: {other:?}"),
        })
        .unwrap_or_else(|| panic!("no struct {name}"))
}

#[test]
fn uniform_structs_match_their_rust_twins() {
    use wgtune::ops::*;
    let cases: &[(&str, &str, usize)] = &[
        ("matmul", "MatmulParams", size_of::<matmul::MatmulParams>()),
        ("elementwise", "EltParams", size_of::<elementwise::EltParams>()),
        ("reduce", "ReduceParams", size_of::<reduce::ReduceParams>()),
        ("loss", "LossParams", size_of::<loss::LossParams>()),
        ("optim", "OptimParams", size_of::<optim::OptimParams>()),
        ("conv2d", "ConvParams", size_of::<conv::ConvParams>()),
        ("depthwise", "ConvParams", size_of::<conv::ConvParams>()),
        ("pool", "PoolParams", size_of::<pool::PoolParams>()),
        ("concat", "ConcatParams", size_of::<concat::ConcatParams>()),
        ("norm", "NormParams", size_of::<norm::NormParams>()),
        ("dropout", "DropoutParams", size_of::<dropout::DropoutParams>()),
        ("augment", "AugmentParams", size_of::<wgtune::data::augment::AugmentParams>()),
    ];
    for &(family, name, rust_size) in cases {
        let fam = FAMILIES.iter().find(|f| f.name == family).expect("family");
        let (module, _) = parse(family, fam.source);
        assert_eq!(struct_size(&module, name) as usize, rust_size, "{family}: {name}");
        assert_eq!(rust_size % 16, 0, "{name}: uniform structs are padded to 16 bytes");
    }
}
