//! numpy arrays in and out: borrowed views for the model's tensors, faer blocks for operators.

use crate::value_error;
use curvops_nn::io::{Dtype, Tensors};
use curvops_tensor::Float;
use faer::Mat;
use numpy::{Element, IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// A contiguous numpy array of one of the dtypes the model files allow, borrowed read-only.
pub(crate) enum Buf<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    I32(PyReadonlyArrayDyn<'py, i32>),
}

fn bytes_of<T: Element>(a: &PyReadonlyArrayDyn<'_, T>, what: &str) -> PyResult<&'static [u8]> {
    let s = a.as_slice().map_err(|_| value_error(format!("{what}: the array is not C-contiguous")))?;
    // SAFETY: `s` is a valid slice of plain numbers; its bytes are valid `u8`s. The returned
    // lifetime is widened to 'static: callers keep the `Buf` (which holds the borrow of the
    // numpy array) alive for as long as they use the bytes.
    Ok(unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) })
}

impl<'py> Buf<'py> {
    /// Borrows `obj` (a numpy array of f32, f64, int64 or int32).
    pub(crate) fn of(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'py, f32>>() {
            return Ok(Self::F32(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'py, f64>>() {
            return Ok(Self::F64(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'py, i64>>() {
            return Ok(Self::I64(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'py, i32>>() {
            return Ok(Self::I32(a));
        }
        let ty = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        let dt = obj.getattr("dtype").map(|d| d.to_string()).unwrap_or(ty);
        Err(value_error(format!("{what}: expected a numpy array of float32, float64, int64 or int32, got {dt}")))
    }

    fn shape(&self) -> Vec<usize> {
        match self {
            Self::F32(a) => a.shape().to_vec(),
            Self::F64(a) => a.shape().to_vec(),
            Self::I64(a) => a.shape().to_vec(),
            Self::I32(a) => a.shape().to_vec(),
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            Self::F32(_) => Dtype::F32,
            Self::F64(_) => Dtype::F64,
            Self::I64(_) => Dtype::I64,
            Self::I32(_) => Dtype::I32,
        }
    }

    fn bytes(&self, what: &str) -> PyResult<&'static [u8]> {
        match self {
            Self::F32(a) => bytes_of(a, what),
            Self::F64(a) => bytes_of(a, what),
            Self::I64(a) => bytes_of(a, what),
            Self::I32(a) => bytes_of(a, what),
        }
    }

    /// Adds this array to `t` as `name` (`label` names the source in messages).
    pub(crate) fn add_to(&self, t: &mut Tensors<'_>, label: &str, name: &str) -> PyResult<()> {
        t.insert(label, name, self.dtype(), self.shape(), self.bytes(name)?).map_err(value_error)
    }
}

/// A block of columns from a numpy array of `T`: `[n]` (one column) or `[n, K]`. Returns the
/// block and whether the input was a vector.
pub(crate) fn block_from<T: Float + Element>(
    obj: &Bound<'_, PyAny>,
    rows: usize,
    what: &str,
) -> PyResult<(Mat<T>, bool)> {
    let a: PyReadonlyArrayDyn<'_, T> = obj.extract().map_err(|_| {
        let dt = obj.getattr("dtype").map(|d| d.to_string()).unwrap_or_else(|_| "a non-array".into());
        value_error(format!(
            "{what}: expected a numpy array of {}, got {dt}",
            if T::BYTES == 4 { "float32" } else { "float64" }
        ))
    })?;
    let shape = a.shape().to_vec();
    let (k, vector) = match shape.as_slice() {
        [n] if *n == rows => (1, true),
        [n, k] if *n == rows => (*k, false),
        _ => return Err(value_error(format!("{what}: expected shape [{rows}] or [{rows}, K], got {shape:?}"))),
    };
    let mut m = Mat::<T>::zeros(rows, k);
    match a.as_slice() {
        // C-contiguous (the usual case): column j of the block is every k-th entry from j
        Ok(s) if vector => m.col_as_slice_mut(0).copy_from_slice(s),
        Ok(s) => {
            for j in 0..k {
                for (o, v) in m.col_as_slice_mut(j).iter_mut().zip(s[j..].iter().step_by(k)) {
                    *o = *v;
                }
            }
        }
        Err(_) => {
            let view = a.as_array();
            for j in 0..k {
                for (i, o) in m.col_as_slice_mut(j).iter_mut().enumerate() {
                    *o = if vector { view[[i]] } else { view[[i, j]] };
                }
            }
        }
    }
    Ok((m, vector))
}

/// A faer block as a numpy array `[n, K]` (or `[n]` when `vector`).
pub(crate) fn block_to_py<'py, T: Float + Element>(
    py: Python<'py>,
    m: &Mat<T>,
    vector: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (n, k) = (m.nrows(), m.ncols());
    let v: Vec<T> = if k == 1 {
        m.col_as_slice(0).to_vec()
    } else {
        let cols: Vec<&[T]> = (0..k).map(|j| m.col_as_slice(j)).collect();
        let mut v = Vec::with_capacity(n * k);
        for i in 0..n {
            v.extend(cols.iter().map(|c| c[i]));
        }
        v
    };
    let shape: Vec<usize> = if vector { vec![n] } else { vec![n, k] };
    vec_to_py(py, v, &shape)
}

/// A flat vector as a numpy array of `shape` (row-major).
pub(crate) fn vec_to_py<'py, T: Element>(py: Python<'py>, v: Vec<T>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    let a = v.into_pyarray(py);
    let r: Bound<'py, PyArrayDyn<T>> = a.reshape(shape.to_vec())?;
    Ok(r.into_any())
}
