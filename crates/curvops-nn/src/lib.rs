//! Feed-forward networks and their derivatives: the differentiation engine of curvops.
//!
//! * [`layers`]: one module per layer type, each implementing [`layers::Layer`]: forward,
//!   batched JVP/VJP with respect to input and parameters, per-sample parameter gradients and
//!   the second-order (R-op) rule used for exact Hessian-vector products.
//! * [`loss`]: MSE, cross-entropy (class indices or probabilities) and BCE-with-logits: value,
//!   gradient, Hessian-vector product in output space, a symmetric factor `S` with
//!   `S Sᵀ = ∇²_f ℓ_n`, and label sampling from the model's predictive distribution.
//! * [`network`]: a sequential network, its flat parameter layout (state-dict order) and the
//!   whole-network forward / JVP / VJP / per-sample VJP / Hessian-vector product on a batch.
//! * [`spec`], [`io`], [`data`]: `model.json`, safetensors weights and data, `.npy` files.
//!
//! Batch layout: a batch of `N` samples with per-sample size `S` is a row-major `[N, S]`
//! slice; `K` stacked tangents (or cotangents) of it are a row-major `[N, K, S]` slice.
//! Parameter-space blocks of `K` vectors are row-major `[K, D]` (faer column-major `[D, K]`).

// Index loops over several arrays are the clearest form for numerical kernels.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

pub mod data;
pub mod data_formats;
pub mod error;
pub mod inflate;
pub mod io;
pub mod layers;
pub mod loss;
pub mod network;
pub mod spec;

pub use data::{Batch, Dataset, Targets, TargetsRef};
pub use error::NnError;
pub use loss::{Loss, LossKind, Reduction};
pub use network::{ActiveSet, Network, ParamEntry, ParamLayout, Tape};
