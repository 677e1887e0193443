//! `curvops laplace fit|predict|evaluate` (issue 6). Until it lands this returns a clear error.

use crate::common::CliResult;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_a: &Args) -> CliResult<()> {
    Err("laplace: not available in this build".into())
}
