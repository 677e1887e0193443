//! Geometry of 2-d sliding windows (convolution, pooling) and `im2col` / `col2im`.
//!
//! For an image `x` of shape `[C, H, W]`, a window of `kh × kw` taps with stride `(sh, sw)`,
//! zero padding `(ph, pw)` and dilation `(dh, dw)`, output position `(oy, ox)` reads tap
//! `(i, j)` at input row `oy·sh − ph + i·dh` and column `ox·sw − pw + j·dw` (zero outside the
//! image). The output size is `⌊(H + 2ph − dh(kh − 1) − 1)/sh⌋ + 1` (and likewise for W), as
//! in PyTorch.
//!
//! `im2col` writes the matrix `cols` of shape `[C·kh·kw, OH·OW]` whose row `(c, i, j)`
//! (row-major over `c, i, j`) holds the input values seen by tap `(i, j)` of channel `c` at
//! every output position; a convolution with weight `W[O, C, kh, kw]` is then the GEMM
//! `W · cols`. `col2im` is its adjoint: it scatters-adds `cols` back to image positions.

use crate::Float;

/// Window geometry for one image `[c, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom2d {
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (rows).
    pub sh: usize,
    /// Stride (columns).
    pub sw: usize,
    /// Zero padding (rows, each side).
    pub ph: usize,
    /// Zero padding (columns, each side).
    pub pw: usize,
    /// Dilation (rows).
    pub dh: usize,
    /// Dilation (columns).
    pub dw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Geom2d {
    /// Builds the geometry; errors when the window does not fit or a size is zero.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c: usize,
        h: usize,
        w: usize,
        k: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        dil: (usize, usize),
    ) -> Result<Self, String> {
        if k.0 == 0 || k.1 == 0 {
            return Err("kernel_size must be positive".into());
        }
        if stride.0 == 0 || stride.1 == 0 {
            return Err("stride must be positive".into());
        }
        if dil.0 == 0 || dil.1 == 0 {
            return Err("dilation must be positive".into());
        }
        let span_h = dil.0 * (k.0 - 1) + 1;
        let span_w = dil.1 * (k.1 - 1) + 1;
        if h + 2 * pad.0 < span_h || w + 2 * pad.1 < span_w {
            return Err(format!(
                "window {}x{} (dilated) does not fit the padded input {}x{}",
                span_h,
                span_w,
                h + 2 * pad.0,
                w + 2 * pad.1
            ));
        }
        let oh = (h + 2 * pad.0 - span_h) / stride.0 + 1;
        let ow = (w + 2 * pad.1 - span_w) / stride.1 + 1;
        Ok(Self {
            c,
            h,
            w,
            kh: k.0,
            kw: k.1,
            sh: stride.0,
            sw: stride.1,
            ph: pad.0,
            pw: pad.1,
            dh: dil.0,
            dw: dil.1,
            oh,
            ow,
        })
    }

    /// Number of rows of `cols`: `c·kh·kw`.
    pub fn col_rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Number of output positions `oh·ow` (columns of `cols`).
    pub fn out_len(&self) -> usize {
        self.oh * self.ow
    }

    /// Input length `c·h·w`.
    pub fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// For output row `oy` and tap row `i`: the input row, or `None` in the padding.
    #[inline]
    pub fn in_row(&self, oy: usize, i: usize) -> Option<usize> {
        let y = (oy * self.sh + i * self.dh) as isize - self.ph as isize;
        (y >= 0 && (y as usize) < self.h).then_some(y as usize)
    }

    /// For output column `ox` and tap column `j`: the input column, or `None` in the padding.
    #[inline]
    pub fn in_col(&self, ox: usize, j: usize) -> Option<usize> {
        let x = (ox * self.sw + j * self.dw) as isize - self.pw as isize;
        (x >= 0 && (x as usize) < self.w).then_some(x as usize)
    }

    /// The range of output columns `ox` whose tap column `j` lies inside the image, and the
    /// input column of the first of them.
    #[inline]
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        // ox·sw + j·dw − pw ∈ [0, w)
        let off = j * self.dw;
        let lo = if off >= self.pw { 0 } else { (self.pw - off).div_ceil(self.sw) };
        let hi_excl =
            if self.w + self.pw <= off { 0 } else { ((self.w + self.pw - off - 1) / self.sw + 1).min(self.ow) };
        (lo, hi_excl.max(lo))
    }

    /// `cols[(c,i,j), (oy,ox)] = x[c, oy·sh − ph + i·dh, ox·sw − pw + j·dw]` (0 in the padding).
    pub fn im2col<T: Float>(&self, x: &[T], cols: &mut [T]) {
        let l = self.out_len();
        debug_assert_eq!(x.len(), self.in_len());
        debug_assert_eq!(cols.len(), self.col_rows() * l);
        for c in 0..self.c {
            let xc = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = ((c * self.kh + i) * self.kw + j) * l;
                    let (lo, hi) = self.valid_cols(j);
                    for oy in 0..self.oh {
                        let dst = &mut cols[row + oy * self.ow..row + (oy + 1) * self.ow];
                        match self.in_row(oy, i) {
                            None => dst.fill(T::zero()),
                            Some(y) => {
                                dst[..lo].fill(T::zero());
                                dst[hi..].fill(T::zero());
                                if hi > lo {
                                    let x0 = lo * self.sw + j * self.dw - self.pw;
                                    let src = &xc[y * self.w..(y + 1) * self.w];
                                    if self.sw == 1 {
                                        dst[lo..hi].copy_from_slice(&src[x0..x0 + hi - lo]);
                                    } else {
                                        for (t, d) in dst[lo..hi].iter_mut().enumerate() {
                                            *d = src[x0 + t * self.sw];
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adjoint of [`Self::im2col`]: `x[c, y, x] += Σ cols[(c,i,j), (oy,ox)]` over all taps and
    /// output positions that read `(y, x)`.
    pub fn col2im_add<T: Float>(&self, cols: &[T], x: &mut [T]) {
        let l = self.out_len();
        debug_assert_eq!(x.len(), self.in_len());
        debug_assert_eq!(cols.len(), self.col_rows() * l);
        for c in 0..self.c {
            let xc = &mut x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = ((c * self.kh + i) * self.kw + j) * l;
                    let (lo, hi) = self.valid_cols(j);
                    if hi <= lo {
                        continue;
                    }
                    for oy in 0..self.oh {
                        if let Some(y) = self.in_row(oy, i) {
                            let src = &cols[row + oy * self.ow + lo..row + oy * self.ow + hi];
                            let x0 = lo * self.sw + j * self.dw - self.pw;
                            let dst = &mut xc[y * self.w..(y + 1) * self.w];
                            if self.sw == 1 {
                                for (d, s) in dst[x0..x0 + hi - lo].iter_mut().zip(src) {
                                    *d += *s;
                                }
                            } else {
                                for (t, s) in src.iter().enumerate() {
                                    dst[x0 + t * self.sw] += *s;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_im2col(g: &Geom2d, x: &[f64]) -> Vec<f64> {
        let l = g.out_len();
        let mut cols = vec![0.0; g.col_rows() * l];
        for c in 0..g.c {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let y = (oy * g.sh + i * g.dh) as isize - g.ph as isize;
                            let xx = (ox * g.sw + j * g.dw) as isize - g.pw as isize;
                            if y >= 0 && xx >= 0 && (y as usize) < g.h && (xx as usize) < g.w {
                                cols[((c * g.kh + i) * g.kw + j) * l + oy * g.ow + ox] =
                                    x[(c * g.h + y as usize) * g.w + xx as usize];
                            }
                        }
                    }
                }
            }
        }
        cols
    }

    #[test]
    fn im2col_matches_naive_and_col2im_is_adjoint() {
        let cases = [
            (2, 7, 6, (3, 2), (1, 1), (1, 0), (1, 1)),
            (1, 9, 8, (3, 3), (2, 3), (2, 1), (2, 1)),
            (3, 5, 5, (1, 1), (2, 2), (0, 0), (1, 1)),
            (1, 4, 6, (2, 3), (1, 2), (1, 2), (1, 2)),
            (2, 3, 3, (3, 3), (1, 1), (3, 3), (3, 3)),
        ];
        for (c, h, w, k, s, p, d) in cases {
            let g = Geom2d::new(c, h, w, k, s, p, d).unwrap();
            let x: Vec<f64> = (0..g.in_len()).map(|i| (i as f64 * 0.731).sin()).collect();
            let mut cols = vec![f64::NAN; g.col_rows() * g.out_len()];
            g.im2col(&x, &mut cols);
            assert_eq!(cols, naive_im2col(&g, &x), "{g:?}");
            // adjoint: <im2col(x), u> = <x, col2im(u)>
            let u: Vec<f64> = (0..cols.len()).map(|i| (i as f64 * 0.377).cos()).collect();
            let mut xt = vec![0.0; g.in_len()];
            g.col2im_add(&u, &mut xt);
            let lhs: f64 = cols.iter().zip(&u).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&xt).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-10 * lhs.abs().max(1.0), "{g:?}");
        }
    }

    #[test]
    fn output_size_as_pytorch() {
        // torch.nn.Conv2d(1,1,3,stride=2,padding=1,dilation=2) on 9x8 → 4x3
        let g = Geom2d::new(1, 9, 8, (3, 3), (2, 2), (1, 1), (2, 2)).unwrap();
        assert_eq!((g.oh, g.ow), (4, 3));
        assert!(Geom2d::new(1, 2, 2, (3, 3), (1, 1), (0, 0), (1, 1)).is_err());
    }
}
