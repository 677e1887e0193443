//! Integration tests of curvops-linalg (one binary to keep build and link time down).

// Index loops over matrix entries read more plainly in tests.
#![allow(clippy::needless_range_loop)]

mod common;
mod eigen;
mod estimators;
mod slq;
mod solvers;
mod suite;
