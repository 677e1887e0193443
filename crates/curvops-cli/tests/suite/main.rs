//! The command-line tests, one module per topic, linked into one test binary.

mod common;

mod cli;
mod debias_cli;
mod kfac_cli;
mod laplace_cli;
mod laplace_debias_cli;
mod linalg_cli;
mod vivit_cli;
