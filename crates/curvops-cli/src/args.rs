//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Curvature of neural networks as matrix-free linear operators.
#[derive(Parser, Debug)]
#[command(name = "curvops", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The problem and how to compute on it (SPEC.md §5 common flags).
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// A problem directory holding model.json, weights.safetensors, data.safetensors.
    #[arg(long)]
    pub problem: Option<PathBuf>,
    /// model.json (layers and loss).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weights (safetensors, PyTorch state-dict keys).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Data (safetensors with "x" and "y").
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Mini-batch size for accumulation (default: all data in one batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Compute dtype (default: the weights' dtype).
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Restrict to these parameters (state-dict names, comma separated; a layer index selects
    /// all its parameters).
    #[arg(long, value_delimiter = ',')]
    pub params: Option<Vec<String>>,
    /// Threads (default 1).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object per command (per line for bench).
    #[arg(long)]
    pub json: bool,
    /// Monte-Carlo samples per data point (fisher-mc, KFAC with --fisher mc, MC diagonals).
    #[arg(long, default_value_t = 1)]
    pub mc_samples: usize,
    /// KFAC/EKFAC: which backpropagated vectors form the gradient factor.
    #[arg(long, value_enum, default_value = "type-2")]
    pub fisher: FisherType,
    /// KFAC/EKFAC: weight sharing in conv2d (Eschenhagen et al. 2023).
    #[arg(long, value_enum, default_value = "expand")]
    pub kfac_approx: KfacApprox,
    /// KFAC/EKFAC: treat weight and bias of a layer as one block.
    #[arg(long)]
    pub joint_bias: bool,
    /// KFAC/EKFAC: load fitted factors from this file instead of a data pass.
    #[arg(long)]
    pub kfac_factors: Option<PathBuf>,
    /// KFAC: how --damping enters solve/logdet and the KFAC preconditioner (exact: KFAC + λI;
    /// same: λ added to both Kronecker factors; pi: Martens-Grosse π-damping of the factors).
    #[arg(long, value_enum, default_value = "exact")]
    pub kfac_damping: KfacDamping,
    /// Restrict the operator to its block diagonal (per layer or per parameter tensor).
    #[arg(long, value_enum)]
    pub blocks: Option<Blocks>,
    /// Memory budget (MiB) for forward passes kept across operator applications.
    #[arg(long, default_value_t = 1024)]
    pub cache_mb: usize,
}

/// KFAC's Fisher type.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FisherType {
    /// Exact loss-Hessian factor columns.
    #[value(name = "type-2")]
    Type2,
    /// Sampled labels (`--mc-samples`, `--seed`).
    Mc,
    /// Per-sample gradients.
    Empirical,
    /// Input factor only (gradient factor = identity).
    ForwardOnly,
}

/// KFAC's treatment of weight sharing.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KfacApprox {
    /// Spatial positions as extra data points.
    Expand,
    /// Sum over spatial positions first.
    Reduce,
}

/// How a damping λ enters KFAC's inverse.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KfacDamping {
    /// (B ⊗ A + λI)⁻¹, exact in the Kronecker eigenbasis.
    Exact,
    /// (B + λI)⁻¹ ⊗ (A + λI)⁻¹.
    Same,
    /// Martens-Grosse π-damping of the two factors.
    Pi,
}

/// Block-diagonal restriction.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    /// One block per layer (weight and bias together).
    Layer,
    /// One block per parameter tensor.
    Param,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
}

/// A curvature operator (`CURV`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curv {
    Hessian,
    Ggn,
    Ef,
    FisherMc,
    Jacobian,
    JacobianT,
    Kfac,
    Ekfac,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    /// ∇ℓ_n per sample [N, D].
    Grad,
    /// c ∇ℓ_n (BackPACK BatchGrad) [N, D].
    BatchGrad,
    /// ‖c ∇ℓ_n‖² per parameter tensor (BackPACK BatchL2Grad) [N, P].
    L2,
    /// Σ_n (c ∇ℓ_n)² (BackPACK SumGradSquared) [D].
    SumGradSquared,
    /// 1/N Σ_n (c∇ℓ_n)² − (∇L/N)² (BackPACK Variance) [D].
    Variance,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sizes and parameter order of a problem.
    Info {
        #[command(flatten)]
        common: Common,
    },
    /// Loss and gradient over the data set.
    LossGrad {
        #[command(flatten)]
        common: Common,
        /// Gradient output (.npy, [D]).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The dense matrix of a curvature operator.
    Dense {
        curv: Curv,
        #[command(flatten)]
        common: Common,
        /// Output (.npy).
        #[arg(long)]
        out: PathBuf,
    },
    /// Apply a curvature operator to vectors.
    Matvec {
        curv: Curv,
        #[command(flatten)]
        common: Common,
        /// Input vectors (.npy, [D] or [D, K]).
        #[arg(long)]
        vectors: PathBuf,
        /// Output (.npy, same layout as the input).
        #[arg(long)]
        out: PathBuf,
    },
    /// Per-sample gradients and BackPACK's first-order statistics.
    PerSample {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "grad")]
        quantity: Quantity,
        /// Output (.npy).
        #[arg(long)]
        out: PathBuf,
    },
    /// Extreme eigenvalues (and eigenvectors) of a curvature operator.
    Eigs(crate::commands::eigs::Args),
    /// Trace (exact or estimated).
    Trace(crate::commands::trace::Args),
    /// Diagonal (exact or estimated).
    Diag(crate::commands::diag::Args),
    /// log det(CURV + λI).
    Logdet(crate::commands::logdet::Args),
    /// Spectral density by stochastic Lanczos quadrature (CSV + SVG).
    Spectrum(crate::commands::spectrum::Args),
    /// x = (CURV + λI)⁻¹ b (with --debias: the debiased mini-batch Newton step, issue 12).
    Solve(crate::commands::solve::Args),
    /// Mini-batch curvature bias: eigenpairs of C_B on the same, an independent and all data;
    /// CG on q_B against the full-data quadratic (table, JSON, SVG).
    Bias(crate::commands::bias::Args),
    /// ViViT: the GGN's low-rank structure, eigenpairs and per-sample directional derivatives.
    Vivit(crate::commands::vivit::Args),
    /// Train the network (SGD or Adam) and write the weights.
    Train(crate::commands::train::Args),
    /// Laplace approximations: fit, predict, evaluate.
    Laplace(crate::commands::laplace::Args),
    /// Fit KFAC or EKFAC and save the factors (reuse them with --kfac-factors).
    KfacFit(crate::commands::kfac::FitArgs),
    /// The main job on a built-in default: a small network on built-in data.
    Demo {
        #[command(flatten)]
        common: Common,
    },
    /// Benchmark gradient, GGN-vp, HVP and GGN blocks on problem directories.
    Bench {
        /// A problem directory, or a directory of problem directories.
        dir: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Timed repetitions per operation (median reported).
        #[arg(long, default_value_t = 20)]
        reps: usize,
        /// Dtypes to run (default both).
        #[arg(long, value_enum, value_delimiter = ',')]
        dtypes: Option<Vec<Dtype>>,
        /// Thread counts to run (default 1,2).
        #[arg(long, value_delimiter = ',')]
        thread_counts: Option<Vec<usize>>,
        /// Only these operations (default all), e.g. gradient,ggn_vp.
        #[arg(long, value_delimiter = ',')]
        ops: Option<Vec<String>>,
    },
}
