//! Kernel launchers: each builds a [`Dispatch`](crate::gpu::Dispatch) for one kernel from tensors and options,
//! checking shapes first. Every launcher shares its name with its WGSL entry point and its CPU reference in
//! [`crate::reference`]. The `#[repr(C)]` parameter structs mirror the WGSL structs field for field.

// Launchers take the tensors of a kernel's signature one by one, in binding order, plus its options: wide by nature.
#![allow(clippy::too_many_arguments)]

pub mod accumulate;
pub mod concat;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod layer_norm;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod permute;
pub mod pool;
pub mod reduce;
pub mod scaler;
pub mod slice;
pub mod softmax;

/// Workgroups for `n` items at `per_group` items each, on a 2-D grid whose x stays within `max_x`.
pub fn grid_1d(n: usize, per_group: usize, max_x: u32) -> [u32; 3] {
    let groups = n.div_ceil(per_group).max(1) as u64;
    let x = groups.min(max_x as u64);
    let y = groups.div_ceil(x);
    [x as u32, y as u32, 1]
}

/// Workgroups for `n` items at one invocation each, 256 per workgroup, on this adapter's 2-D grid (the layout of
/// every element-wise, per-row and per-position kernel).
pub fn flat_grid(gpu: &crate::gpu::Gpu, n: usize) -> [u32; 3] {
    grid_1d(n, 256, gpu.limits().max_compute_workgroups_per_dimension)
}

/// The storage precision of a launch from its activation tensors: all f32, or all f16 (the kernel's f16 variant);
/// a mix is an error naming the tensors.
pub fn storage_precision(
    kernel: &str,
    label: &str,
    tensors: &[&crate::gpu::Tensor],
) -> crate::Result<crate::gpu::Precision> {
    use crate::gpu::{DType, Precision};
    let precision = |t: &crate::gpu::Tensor| match t.dtype() {
        DType::F16 => Some(Precision::F16),
        DType::F32 => Some(Precision::F32),
        DType::U32 => None,
    };
    let first = tensors[0];
    let want = precision(first);
    match tensors.iter().find(|t| precision(t) != want) {
        None => want.ok_or_else(|| {
            crate::Error::Invalid(format!("{kernel} '{label}': '{}' is u32, expected f32 or f16", first.label()))
        }),
        Some(bad) => Err(crate::Error::Invalid(format!(
            "{kernel} '{label}': '{}' is {:?} but '{}' is {:?}: the tensors of one launch share one precision",
            first.label(),
            first.dtype(),
            bad.label(),
            bad.dtype()
        ))),
    }
}

/// Dispatch `spec` at the precision of `acts`, the launch's activation tensors (all f32, or all f16 for the
/// family's f16 variant); parameters, statistics and indices keep their own types.
pub(crate) fn dispatch_at(
    gpu: &crate::gpu::Gpu,
    spec: &crate::gpu::KernelSpec,
    acts: &[&crate::gpu::Tensor],
    params: &[u8],
    tensors: &[&crate::gpu::Tensor],
    grid: [u32; 3],
    label: &str,
) -> crate::Result<crate::gpu::Dispatch> {
    let spec = spec.with_precision(storage_precision(spec.entry, label, acts)?);
    gpu.dispatch(&spec, params, tensors, grid, label)
}

/// Dispatch `spec`, a kernel of a family whose result has its own storage type (the GEMMs and the loss): the
/// `operands` all f32 or all f16, the `result` f32, or f16 with f16 operands (the variants of [`Precision`]); or,
/// with f16 activations, two operands `[lhs, rhs]` of which one is an f32 weight and the other f16 with an f16
/// result (the weight read as it is, in the family's `lhs` or `rhs` variant).
///
/// [`Precision`]: crate::gpu::Precision
#[allow(clippy::too_many_arguments)]
pub(crate) fn dispatch_to(
    gpu: &crate::gpu::Gpu,
    spec: &crate::gpu::KernelSpec,
    operands: &[&crate::gpu::Tensor],
    result: &crate::gpu::Tensor,
    params: &[u8],
    tensors: &[&crate::gpu::Tensor],
    grid: [u32; 3],
    label: &str,
) -> crate::Result<crate::gpu::Dispatch> {
    use crate::gpu::{DType, Precision};
    let weight = match (operands, result.dtype()) {
        ([l, r], DType::F16) => match (l.dtype(), r.dtype()) {
            (DType::F32, DType::F16) => Some(Precision::F16WithF32Lhs),
            (DType::F16, DType::F32) => Some(Precision::F16WithF32Rhs),
            _ => None,
        },
        _ => None,
    };
    let precision = match weight {
        Some(p) if spec.has_variant(p) => p,
        Some(_) => {
            return Err(crate::Error::Invalid(format!(
                "{} '{label}': '{}' is {:?} and '{}' {:?}: this kernel reads an f32 weight only as its {} operand",
                spec.entry,
                operands[0].label(),
                operands[0].dtype(),
                operands[1].label(),
                operands[1].dtype(),
                if spec.has_variant(Precision::F16WithF32Lhs) { "left" } else { "right" }
            )))
        }
        None => match (storage_precision(spec.entry, label, operands)?, result.dtype()) {
            (Precision::F32, DType::F32) => Precision::F32,
            (Precision::F16, DType::F16) => Precision::F16,
            (Precision::F16, DType::F32) => Precision::F16ToF32,
            (operands, result_type) => {
                return Err(crate::Error::Invalid(format!(
                    "{} '{label}': '{}' is {result_type:?} but the operands are {operands:?}: the result is f32, or \
                     f16 from f16 operands (one of two may be an f32 weight)",
                    spec.entry,
                    result.label()
                )))
            }
        },
    };
    gpu.dispatch(&spec.with_precision(precision), params, tensors, grid, label)
}

/// Convert a size to the u32 the kernels take, naming it when it does not fit.
pub fn dim(value: usize, what: &str) -> crate::Result<u32> {
    u32::try_from(value).map_err(|_| crate::Error::Invalid(format!("{what} = {value} does not fit in 32 bits")))
}

/// Every kernel the crate launches, for tests that check signatures against the WGSL.
pub fn all_kernels() -> Vec<crate::gpu::KernelSpec> {
    let mut v = vec![
        matmul::MATMUL,
        matmul::MATMUL_NAIVE,
        matmul::MATMUL_SHARED,
        matmul::MATMUL_STAGED,
        conv::CONV2D_FORWARD,
        conv::CONV2D_FORWARD_STAGED,
        conv::CONV2D_BACKWARD_DATA,
        conv::CONV2D_BACKWARD_WEIGHT,
        conv::gemm_spec(&conv::CONV2D_BACKWARD_WEIGHT, true, 0),
        conv::DEPTHWISE_CONV2D_FORWARD,
        conv::rows4(3, 1),
        conv::DEPTHWISE_CONV2D_BACKWARD_DATA,
        conv::DEPTHWISE_CONV2D_BACKWARD_WEIGHT,
        conv::DEPTHWISE_CONV2D_BACKWARD_WEIGHT_ROWS,
        conv::DEPTHWISE_CONV2D_BACKWARD_WEIGHT_3X3,
        conv::DEPTHWISE_CONV2D_BACKWARD_WEIGHT_5X5,
        conv::DEPTHWISE_CONV2D_BACKWARD_WEIGHT_7X7,
        reduce::SUM_REDUCE,
        scaler::UNSCALE_CHECK,
        scaler::UPDATE_SCALE,
        reduce::SUM_REDUCE_ROWS,
        pool::MAX_POOL_FORWARD,
        pool::MAX_POOL_BACKWARD,
        pool::AVG_POOL_FORWARD,
        pool::AVG_POOL_BACKWARD,
        pool::GLOBAL_POOL_FORWARD,
        pool::GLOBAL_POOL_FORWARD_ROWS,
        pool::GLOBAL_AVG_POOL_BACKWARD,
        pool::GLOBAL_MAX_POOL_BACKWARD,
        concat::CONCAT_FORWARD,
        concat::CONCAT_BACKWARD,
        norm::BATCH_NORM_STATISTICS,
        norm::BATCH_NORM_STATISTICS_ROWS,
        norm::BATCH_NORM_BACKWARD_REDUCE_ROWS,
        norm::BATCH_NORM_FORWARD,
        norm::BATCH_NORM_BACKWARD_REDUCE,
        norm::BATCH_NORM_BACKWARD_DATA,
        norm::BATCH_NORM_FORWARD_SINGLE,
        norm::BATCH_NORM_FORWARD_SINGLE_ROWS,
        norm::BATCH_NORM_BACKWARD_SINGLE,
        norm::BATCH_NORM_BACKWARD_SINGLE_ROWS,
        norm::BATCH_NORM_BACKWARD_SINGLE_RESIDUAL,
        norm::BATCH_NORM_BACKWARD_SINGLE_RESIDUAL_ROWS,
        norm::BATCH_NORM_STATISTICS_CHUNKS,
        norm::BATCH_NORM_STATISTICS_COMBINE,
        norm::BATCH_NORM_BACKWARD_REDUCE_CHUNKS,
        norm::BATCH_NORM_BACKWARD_COMBINE,
        dropout::DROPOUT_FORWARD,
        dropout::DROPOUT_BACKWARD,
        layer_norm::LAYER_NORM_FORWARD,
        layer_norm::LAYER_NORM_BACKWARD_DATA,
        layer_norm::LAYER_NORM_FORWARD_ROWS,
        layer_norm::LAYER_NORM_BACKWARD_DATA_ROWS,
        layer_norm::LAYER_NORM_BACKWARD_PARAMS,
        layer_norm::LAYER_SCALE_FORWARD,
        layer_norm::LAYER_SCALE_BACKWARD_DATA,
        layer_norm::LAYER_SCALE_BACKWARD_WEIGHT,
        permute::PERMUTE,
        softmax::SOFTMAX_ROWS_FORWARD,
        softmax::SOFTMAX_ROWS_BACKWARD,
        slice::SLICE_FORWARD,
        slice::SLICE_BACKWARD,
        slice::EXPAND_FORWARD,
        crate::data::augment::AUGMENT,
        loss::SOFTMAX_CROSS_ENTROPY_FORWARD,
        loss::SOFTMAX_CROSS_ENTROPY_BACKWARD,
        loss::SOFTMAX_CROSS_ENTROPY_BACKWARD_SCALED,
        loss::CORRECT_COUNT,
        loss::SOFTMAX_FORWARD,
        loss::SIGMOID_BCE_FORWARD,
        loss::SIGMOID_BCE_BACKWARD,
        loss::SIGMOID_BCE_BACKWARD_SCALED,
        loss::MULTI_LABEL_CORRECT,
        loss::SIGMOID_FORWARD,
        optim::SGD_STEP,
        optim::ADAM_STEP,
        accumulate::ACCUMULATE_GRADIENTS,
    ];
    v.extend(elementwise::Elementwise::ALL.iter().map(|e| e.spec()));
    v
}

#[cfg(test)]
mod tests {
    use super::grid_1d;

    #[test]
    fn grid_1d_covers_every_item_within_the_x_limit() {
        for (n, per, max_x) in
            [(1, 256, 65535), (256, 256, 65535), (257, 256, 65535), (65535 * 256 + 1, 256, 65535), (10, 1, 3)]
        {
            let [x, y, z] = grid_1d(n, per, max_x);
            assert!(x <= max_x && z == 1);
            let covered = x as usize * y as usize * per;
            assert!(covered >= n && covered - n < x as usize * per, "n={n}: grid {x}x{y}");
        }
    }
}
