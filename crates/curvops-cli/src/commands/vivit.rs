//! `curvops vivit` (issue 5). Until it lands this returns a clear error.

use crate::args::Common;
use crate::common::CliResult;
use curvops::{ActiveSet, Problem};
use curvops_tensor::Float;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
}

pub fn run<T: Float>(_a: &Args, _p: &Problem<T>, _active: ActiveSet, _bs: usize) -> CliResult<()> {
    Err("vivit: not available in this build".into())
}
