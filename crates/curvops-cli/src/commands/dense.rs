//! `curvops dense CURV`.

use crate::args::{Common, Curv};
use crate::common::{CliResult, Progress};
use crate::obj;
use crate::output::emit;
use curvops::dense::{dense_curvature, dense_jacobian};
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
    mc_samples: usize,
    out: &Path,
) -> CliResult<()> {
    let d = active.dim;
    let rows = p.data.n * p.net.out_size();
    let (shape, m) = match super::curvature_of(curv, mc_samples, c.seed)? {
        Some(kind) => {
            let op = CurvatureOperator::new(p, kind, active, bs).with_cache(1 << 30);
            let bar = Progress::new(1, &format!("dense {}", kind.name()));
            (vec![d, d], dense_curvature(&op, &|i, n| bar.set(i, n)))
        }
        None => {
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
    };
    write_npy(out, &shape, &m).map_err(|e| e.to_string())?;
    emit(
        c.json,
        obj! {"shape" => shape, "out" => out.display().to_string(), "frobenius" => curvops_tensor::ops::norm2(&m)},
    );
    Ok(())
}
