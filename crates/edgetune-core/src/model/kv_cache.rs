//! The KV cache: for every layer, the rotated keys and the values of positions
//! `0..len`, preallocated for `capacity` positions (f32, `[capacity, n_head_kv · head_dim]`
//! per layer and per K/V).

use crate::backend::{Backend, CpuBackend};
use crate::{Error, Result};

/// A KV cache held in a backend's buffers.
pub struct KvCacheOf<B: Backend> {
    /// Per layer, `[capacity, kv_dim]`.
    pub(crate) k: Vec<B::Buffer>,
    pub(crate) v: Vec<B::Buffer>,
    len: usize,
    capacity: usize,
    kv_dim: usize,
}

/// The CPU KV cache that [`Llama`](super::Llama) uses.
pub type KvCache = KvCacheOf<CpuBackend>;

impl<B: Backend> KvCacheOf<B> {
    /// Allocates `n_layer × 2` buffers of `capacity × kv_dim` f32 (zeroed).
    pub fn new(backend: &B, n_layer: usize, kv_dim: usize, capacity: usize) -> Result<Self> {
        let per = capacity.checked_mul(kv_dim).ok_or_else(|| {
            Error::Invalid(format!(
                "KV cache of {capacity} positions × {kv_dim} values overflows"
            ))
        })?;
        let mut k = Vec::with_capacity(n_layer);
        let mut v = Vec::with_capacity(n_layer);
        for _ in 0..n_layer {
            k.push(backend.alloc(per)?);
            v.push(backend.alloc(per)?);
        }
        Ok(KvCacheOf {
            k,
            v,
            len: 0,
            capacity,
            kv_dim,
        })
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps the first `n` positions (no-op when `n ≥ len`), e.g. to rewind to a shared prompt.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Layers held.
    pub fn n_layer(&self) -> usize {
        self.k.len()
    }

    /// Values per position per layer (`n_head_kv · head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Checks that `n` more positions fit.
    pub(crate) fn check_room(&self, n: usize) -> Result<()> {
        if n > self.capacity - self.len {
            return Err(Error::Invalid(format!(
                "KV cache overflow: {} positions held + {n} new > capacity {}",
                self.len, self.capacity
            )));
        }
        Ok(())
    }

    /// Records `n` positions written after the current ones.
    pub(crate) fn advance(&mut self, n: usize) {
        debug_assert!(self.len + n <= self.capacity);
        self.len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping() {
        let mut c = KvCache::new(&CpuBackend, 3, 8, 10).unwrap();
        assert_eq!(
            (c.len(), c.capacity(), c.n_layer(), c.kv_dim()),
            (0, 10, 3, 8)
        );
        assert_eq!(c.k[2].len(), 80);
        c.advance(7);
        assert!(c.check_room(3).is_ok());
        let e = c.check_room(4).unwrap_err().to_string();
        assert!(e.contains("7 positions held + 4 new > capacity 10"), "{e}");
        c.truncate(9);
        assert_eq!(c.len(), 7);
        c.truncate(2);
        assert_eq!(c.len(), 2);
        c.clear();
        assert!(c.is_empty());
    }
}
