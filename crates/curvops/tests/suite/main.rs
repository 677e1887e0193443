//! The integration tests of `curvops`, one module per topic, linked into one test binary
//! (`vivit_memory.rs` stays separate: it installs a counting global allocator).

mod common;
mod diag_nets;

mod debias;
mod diag_identities;
mod diag_reference;
mod identities;
mod kfac_properties;
mod kfac_reference;
mod laplace_anchor;
mod laplace_debias;
mod laplace_dense;
mod laplace_train;
mod reference;
mod reference_extra;
mod vivit_newton;
mod vivit_reference;
mod vivit_stats;
