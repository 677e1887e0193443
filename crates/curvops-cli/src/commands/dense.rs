//! `curvops dense CURV`.

use crate::args::{Common, Curv};
use crate::common::{CliResult, Progress};
use crate::obj;
use crate::output::emit;
use curvops::dense::{dense_curvature, dense_jacobian, dense_of};
use curvops::{ActiveSet, CurvatureOperator, Problem};
use curvops_nn::io::write_npy;
use curvops_tensor::Float;
use std::path::Path;

pub fn run<T: Float>(
    c: &Common,
    p: &Problem<T>,
    active: ActiveSet,
    bs: usize,
    curv: Curv,
    out: &Path,
) -> CliResult<()> {
    let d = active.dim;
    let rows = p.data.n * p.net.out_size();
    let (shape, m) = match (super::curvature_of(curv, c)?, c.blocks) {
        (Some(kind), None) => {
            // the cheap route: Gram matrices of factors, or blocks of unit vectors
            let op = CurvatureOperator::new(p, kind, active, bs).with_cache(c.cache_mb << 20);
            let bar = Progress::new(1, &format!("dense {}", kind.name()));
            (vec![d, d], dense_curvature(&op, &|i, n| bar.set(i, n)))
        }
        _ if matches!(curv, Curv::Jacobian | Curv::JacobianT) && c.blocks.is_none() => {
            let j = dense_jacobian(p, &active, bs);
            if curv == Curv::JacobianT {
                let mut t = vec![T::zero(); j.len()];
                for r in 0..rows {
                    for col in 0..d {
                        t[col * rows + r] = j[r * d + col];
                    }
                }
                (vec![d, rows], t)
            } else {
                (vec![rows, d], j)
            }
        }
        _ => {
            let op = super::make_operator(curv, p, active, bs, c)?;
            (vec![op.nrows(), op.ncols()], dense_of(op.as_ref()).map_err(|e| format!("dense: {e}"))?)
        }
    };
    write_npy(out, &shape, &m).map_err(|e| e.to_string())?;
    emit(
        c.json,
        obj! {"shape" => shape, "out" => out.display().to_string(), "frobenius" => curvops_tensor::ops::norm2(&m)},
    );
    Ok(())
}
