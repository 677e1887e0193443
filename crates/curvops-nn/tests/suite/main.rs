//! The integration tests of `curvops-nn`, one module per topic, linked into one test binary.

mod data_formats;
mod layer_rules;
mod loading;
