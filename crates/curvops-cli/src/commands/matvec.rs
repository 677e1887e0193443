//! `curvops matvec CURV --vectors V.npy`.

use crate::args::{Common, Curv};
use crate::common::CliResult;
use crate::obj;
use crate::output::emit;
use curvops::{ActiveSet, Problem};
use curvops_nn::io::{read_npy, write_npy};
use curvops_tensor::Float;
use faer::{Mat, MatRef};
use std::path::Path;

#[allow(clippy::too_many_arguments)]
pub fn run<T: Float>(
    c: &Common,
    p: &Problem<T>,
    active: ActiveSet,
    bs: usize,
    curv: Curv,
    vectors: &Path,
    out: &Path,
) -> CliResult<()> {
    let op = super::make_operator(curv, p, active, bs, c)?;
    let (shape, v) = read_npy::<T>(vectors).map_err(|e| e.to_string())?;
    let n_in = op.ncols();
    let k = match shape[..] {
        [d] if d == n_in => 1,
        [d, k] if d == n_in && k > 0 => k,
        _ => {
            return Err(format!(
                "{}: --vectors has shape {shape:?}, expected [{n_in}] or [{n_in}, K] for {}",
                vectors.display(),
                op.describe()
            ))
        }
    };
    let rhs = MatRef::from_row_major_slice(&v, n_in, k);
    let mut res = Mat::<T>::zeros(op.nrows(), k);
    op.apply(res.as_mut(), rhs).map_err(|e| format!("matvec: {e}"))?;
    let rows = op.nrows();
    let mut flat = Vec::with_capacity(rows * k);
    for i in 0..rows {
        for j in 0..k {
            flat.push(res[(i, j)]);
        }
    }
    let oshape = if shape.len() == 1 { vec![rows] } else { vec![rows, k] };
    write_npy(out, &oshape, &flat).map_err(|e| e.to_string())?;
    emit(c.json, obj! {"shape" => oshape, "out" => out.display().to_string(), "operator" => op.describe()});
    Ok(())
}
