//! The CPU kernels' prediction-sized output buffers (saved activations, gradients): not zeroed,
//! backed by huge pages, and recycled from one training step to the next.
//!
//! **Why recycle.** A fresh buffer of tens of MiB comes from the OS (glibc maps every allocation
//! above 32 MiB, and smaller ones once the heap is trimmed), and the OS zeroes each page on its
//! first write: at `2x4x128^3` the zeroing of the 64 MiB gradient cost about as much as the
//! fused kernel's own pass over it. A training step allocates the same sizes every time, so a
//! buffer handed to Burn goes back to a small cache when Burn drops it (when the gradient has been
//! used), and the next kernel call of the same size takes it from there, its pages already
//! mapped. [`cached_bytes`] says how much the cache holds; [`free_cache`] gives it back to the OS.
//!
//! **Bounds.** Only buffers of at least [`MIN_CACHED_BYTES`] are cached (smaller ones are cheap
//! and the allocator keeps them anyway); at most [`MAX_CACHED`] buffers and [`MAX_CACHED_BYTES`]
//! in total, the oldest freed first. A buffer is reused only for a request of exactly its length,
//! so nothing larger than asked for is ever held by a tensor.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use burn::tensor::{AllocationProperty, Bytes};
use burn_std::{AccessError, AccessPolicy, AllocationController};

/// The smallest buffer kept for reuse, in bytes.
pub const MIN_CACHED_BYTES: usize = 1 << 20;
/// The most buffers kept for reuse.
pub const MAX_CACHED: usize = 4;
/// The most bytes kept for reuse, all buffers together.
pub const MAX_CACHED_BYTES: usize = 2 << 30;

/// Freed buffers, oldest first.
static CACHE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

fn cache() -> std::sync::MutexGuard<'static, Vec<Vec<f32>>> {
    // A panic while the lock was held cannot leave the list inconsistent (each operation is a
    // single push or remove), so a poisoned lock is used as it is.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer of `len` floats, not initialised (every element is written by exactly one block of
/// the kernel, so it is not zeroed first: that would be one more pass over it): a cached buffer
/// of that length if there is one, else a fresh one on huge pages.
pub(crate) fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    if len * size_of::<f32>() >= MIN_CACHED_BYTES {
        let mut cache = cache();
        if let Some(i) = cache.iter().rposition(|v| v.len() == len) {
            let v = std::mem::ManuallyDrop::new(cache.remove(i));
            // SAFETY: f32 and MaybeUninit<f32> have the same layout; the pointer, length and
            // capacity are those of a live Vec<f32> that is not used again.
            return unsafe {
                Vec::from_raw_parts(v.as_ptr() as *mut MaybeUninit<f32>, v.len(), v.capacity())
            };
        }
    }
    let mut v: Vec<MaybeUninit<f32>> = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(len) };
    huge_pages(&mut v);
    v
}

/// # Safety
/// Every element of `v` has been written.
pub(crate) unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<f32> and f32 have the same layout; the caller guarantees initialisation.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// `values` as Burn's bytes: a buffer large enough to be cached returns to the cache when the
/// tensor that holds it is dropped; a smaller one is an ordinary allocation.
pub(crate) fn into_bytes(values: Vec<f32>) -> Bytes {
    if values.len() * size_of::<f32>() < MIN_CACHED_BYTES {
        return Bytes::from_elems(values);
    }
    let len = values.len() * size_of::<f32>();
    // SAFETY: the controller's memory is the Vec's `len` initialised floats, `len` bytes.
    unsafe { Bytes::from_controller(Box::new(Recycled(values)), len) }
}

/// Bytes held by cached buffers now.
pub fn cached_bytes() -> usize {
    cache().iter().map(|v| v.len() * size_of::<f32>()).sum()
}

/// Frees every cached buffer (see the module docs). Tensors in use are not affected; later
/// kernel calls allocate afresh and fill the cache again.
pub fn free_cache() {
    let freed = std::mem::take(&mut *cache());
    drop(freed);
}

/// Puts a freed buffer in the cache, evicting the oldest ones beyond the bounds.
fn recycle(v: Vec<f32>) {
    if v.len() * size_of::<f32>() < MIN_CACHED_BYTES {
        return;
    }
    let evicted = {
        let mut cache = cache();
        cache.push(v);
        let mut evicted = Vec::new();
        let mut total: usize = cache.iter().map(|v| v.len() * size_of::<f32>()).sum();
        while cache.len() > MAX_CACHED || total > MAX_CACHED_BYTES {
            let old = cache.remove(0);
            total -= old.len() * size_of::<f32>();
            evicted.push(old);
        }
        evicted
    };
    // Freed outside the lock (unmapping tens of MiB takes a while).
    drop(evicted);
}

/// A kernel output held by a Burn tensor, returned to the cache on drop.
struct Recycled(Vec<f32>);

impl AllocationController for Recycled {
    fn alloc_align(&self) -> usize {
        align_of::<f32>()
    }

    fn property(&self) -> AllocationProperty {
        AllocationProperty::Native
    }

    unsafe fn memory_mut(
        &mut self,
        _policy: AccessPolicy,
    ) -> Result<&mut [MaybeUninit<u8>], AccessError> {
        let bytes = self.0.len() * size_of::<f32>();
        // SAFETY: the Vec's elements are `bytes` initialised bytes that this controller owns;
        // the caller writes only initialised data (the trait's contract).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), bytes) })
    }

    fn memory(&self, _policy: AccessPolicy) -> Result<&[MaybeUninit<u8>], AccessError> {
        let bytes = self.0.len() * size_of::<f32>();
        // SAFETY: as in `memory_mut`, read-only.
        Ok(unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), bytes) })
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.0));
    }
}

/// Asks Linux to back a large fresh buffer with 2 MiB pages where it can (transparent huge
/// pages in `madvise` mode): a 64 MiB buffer then costs 32 page faults instead of 16384. Advice
/// only: nothing changes where the kernel declines.
fn huge_pages(v: &mut [MaybeUninit<f32>]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, end) = (
            v.as_ptr() as usize,
            v.as_ptr() as usize + std::mem::size_of_val(v),
        );
        let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if hi >= lo + HUGE {
            // SAFETY: [lo, hi) lies inside the buffer this function borrows mutably; MADV_HUGEPAGE
            // only changes how the kernel backs the pages, not their contents.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many cached buffers have length `len` (other tests may cache buffers of other
    /// lengths meanwhile; these lengths are this test's own).
    fn cached_of(len: usize) -> usize {
        cache().iter().filter(|v| v.len() == len).count()
    }

    #[test]
    fn buffers_are_reused_bounded_and_freed() {
        let len = MIN_CACHED_BYTES / 4 + 1237;
        let mut v = uninit(len);
        v.iter_mut().for_each(|x| {
            x.write(1.5);
        });
        // SAFETY: every element written above.
        let v = unsafe { assume_init(v) };
        let ptr = v.as_ptr();
        let bytes = into_bytes(v);
        assert_eq!(bytes.len(), len * 4);
        assert_eq!(cached_of(len), 0, "held by the tensor, not cached");
        drop(bytes);
        assert_eq!(cached_of(len), 1, "returned to the cache on drop");
        // Another length does not take it; the same length does, the same memory.
        let other = uninit(len + 1);
        assert_ne!(other.as_ptr() as *const f32, ptr);
        let same = uninit(len);
        assert_eq!(same.as_ptr() as *const f32, ptr);
        drop((other, same));
        assert_eq!(cached_of(len), 0);
        // Small buffers are never cached.
        drop(into_bytes(vec![0.0; 16]));
        assert_eq!(cached_of(16), 0);
        // Beyond MAX_CACHED buffers the oldest go.
        for i in 0..MAX_CACHED + 2 {
            drop(into_bytes(vec![0.0; len + 10 + i]));
        }
        assert_eq!(
            cached_of(len + 10) + cached_of(len + 11),
            0,
            "the two oldest evicted"
        );
        for i in 2..MAX_CACHED + 2 {
            assert_eq!(cached_of(len + 10 + i), 1);
        }
        assert!(cache().len() <= MAX_CACHED);
        assert!(cached_bytes() >= (MAX_CACHED * len * 4));
        free_cache();
        assert_eq!(cached_bytes(), 0);
    }
}
