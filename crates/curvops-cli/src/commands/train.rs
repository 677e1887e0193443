//! `curvops train` (issue 6). Until it lands this returns a clear error.

use crate::args::Common;
use crate::common::CliResult;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
}

pub fn run(_a: &Args, _c: &Common) -> CliResult<()> {
    Err("train: not available in this build".into())
}
