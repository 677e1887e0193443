//! The Gram path never allocates a `D × D` matrix: on a network with `D ≈ 61 000` (a `D × D`
//! f64 matrix would take 30 GB) the peak heap of eigenpairs, directional derivatives and the
//! Newton step stays within a small multiple of the memory formula `O((NR)² + NR·D)`.

use curvops::vivit::{memory_estimate, newton_step, ConvGram, Damping, Vivit, VivitOptions};
use curvops::{ActiveSet, Problem};
use curvops_nn::layers::{Activation, ActivationKind, Layer, Linear};
use curvops_nn::{Dataset, Loss, LossKind, Network, Reduction, Targets};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded to the system allocator.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded to the system allocator.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn problem(n: usize, i: usize, h: usize, c: usize) -> Problem<f64> {
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Linear::new(i, h, true)),
        Box::new(Activation::new(ActivationKind::Tanh, vec![h])),
        Box::new(Linear::new(h, c, true)),
    ];
    let net =
        Network::new(vec![i], layers, Loss { kind: LossKind::CrossEntropy, reduction: Reduction::Mean, positions: 1 });
    let mut rng = curvops_tensor::rng::Rng::new(3);
    let mut theta = vec![0.0; net.num_params()];
    rng.fill_normal(&mut theta);
    for t in &mut theta {
        *t *= 0.05;
    }
    let mut x = vec![0.0; n * i];
    rng.fill_normal(&mut x);
    let y = (0..n).map(|s| s % c).collect();
    let data = Dataset { x, sample_shape: vec![i], n, y: Targets::Classes(y), target_width: 0 };
    Problem { net, theta, data }
}

#[test]
fn gram_path_memory_is_linear_in_d() {
    let (n, c) = (8, 5);
    let p = problem(n, 300, 200, c);
    let d = p.net.num_params();
    let active = ActiveSet::all(&p.net.layout);
    let k = 10;
    let est = memory_estimate(&p.net, &active, n, c, k, ConvGram::Auto, true);
    let run = || {
        let v = Vivit::new(&p, active.clone(), VivitOptions::default()).unwrap();
        let eig = v.eigen(k).unwrap();
        let all: Vec<usize> = (0..n).collect();
        let dd = v.directional(&eig, &all, &all);
        newton_step(&eig, &dd, n, v.reduction_factor(), &Damping::bootstrap(0)).unwrap()
    };
    // warm-up: one-time allocations of the GEMM kernels and the test harness
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    run();
    println!("first run: peak {} B", PEAK.load(Ordering::Relaxed) - base);
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let step = run();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    assert_eq!(step.step.len(), d);
    let dd_bytes = d * d * 8;
    println!("D = {d}, N·R = {}: peak {peak} B, estimate {} B, D×D would be {dd_bytes} B", n * c, est.peak);
    // no D × D matrix, not even a D × (D/100) one
    assert!(peak < dd_bytes / 100, "peak {peak} B");
    // within a small multiple of the formula O((NR)² + NR·D) (plus the K×D eigenvectors)
    let formula = 8 * ((n * c) * (n * c) + (n * c) * d + k * d);
    assert!(peak <= 4 * formula, "peak {peak} B vs formula {formula} B");
    assert!(peak <= 3 * est.peak + (1 << 20), "peak {peak} B vs estimate {} B", est.peak);
}
