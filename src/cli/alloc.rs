//! The binary's memory allocator: the system allocator, except that large blocks (network
//! weights, activations, patch matrices, decoded photos) are mapped on their own with
//! transparent huge pages requested (`madvise(MADV_HUGEPAGE)`), so first touching them costs a
//! page fault per 2 MiB instead of one per 4 KiB. Short runs such as `verify` spent about a
//! fifth of their time in page faults (measured in README "Speed"). Freed blocks are kept, up
//! to [`CACHE_BYTES`] in all, and handed out again to later blocks of about the same size, so a
//! long run's per-photo buffers are not mapped, faulted in and unmapped over and over.
//!
//! Huge pages pay where a run's working set is small and reused (a model load, a short
//! `verify`). Camera photos are the opposite: tens of MB per photo in blocks of ever different
//! sizes, which miss the cache, so every block was a fresh mapping whose huge pages the kernel
//! zeroes at first touch: up to a third of a 12 MP run's CPU samples on a busy machine
//! (`perf`), 4-5 % of its CPU time on a quiet one (README "Speed"). So at most
//! [`MAP_BUDGET`] bytes are ever mapped this way; later large blocks go to the system
//! allocator, which reuses freed memory without zeroing it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::Ordering::Relaxed;

/// Blocks of at least this many bytes get their own huge-page mapping. Smaller ones go to the
/// system allocator (a huge page under a small block would waste most of it).
const LARGE: usize = 1 << 20;
/// The huge page size (x86-64 and aarch64 with 4 KiB base pages).
const HUGE: usize = 2 << 20;
/// Bytes kept just below each large block: the mapping's base address and length.
const HEADER: usize = 16;

/// Bytes mapped with huge pages over the whole run, at most (see the module doc): a `verify`
/// maps ~60 MB, an `embed` of small photos keeps reusing its first blocks (64 MB slowed
/// `verify` by ~10 %, 256 MB gained less on camera photos).
const MAP_BUDGET: usize = 128 << 20;

/// Bytes mapped with huge pages so far.
static MAPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Freed large blocks kept for reuse, at most this many bytes in all.
const CACHE_BYTES: usize = 96 << 20;
/// Freed large blocks kept for reuse, at most this many.
const CACHE_SLOTS: usize = 32;

/// Freed large blocks: (start, usable bytes), `None` for an empty slot. A fixed array, so the
/// allocator never allocates to manage itself.
struct Cache {
    slots: [Option<(usize, usize)>; CACHE_SLOTS],
    bytes: usize,
}

static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(Cache {
    slots: [None; CACHE_SLOTS],
    bytes: 0,
});

/// A cached block of at least `size` usable bytes and at most twice that, taken out of the
/// cache.
fn take_cached(size: usize) -> Option<(usize, usize)> {
    let mut cache = CACHE.lock().ok()?;
    let slot = cache
        .slots
        .iter_mut()
        .filter(|s| matches!(s, Some((_, body)) if *body >= size && *body <= 2 * size.max(HUGE)))
        .min_by_key(|s| s.map_or(usize::MAX, |(_, body)| body))?;
    let block = slot.take()?;
    cache.bytes -= block.1;
    Some(block)
}

/// Keeps a freed block for reuse; false (nothing kept) when the cache is full.
fn keep(start: usize, body: usize) -> bool {
    let Ok(mut cache) = CACHE.lock() else {
        return false;
    };
    if cache.bytes + body > CACHE_BYTES {
        return false;
    }
    match cache.slots.iter_mut().find(|s| s.is_none()) {
        Some(slot) => {
            *slot = Some((start, body));
            cache.bytes += body;
            true
        }
        None => false,
    }
}

/// See the module doc.
pub struct Allocator;

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= HEADER
}

/// A large block of `size` bytes: a cached one, a new mapping (see [`map`]) while the
/// [`MAP_BUDGET`] lasts, else one from the system allocator ([`from_system`]). Zeroed when
/// `zeroed` (new mappings always are).
unsafe fn large(size: usize, zeroed: bool) -> *mut u8 {
    if let Some((start, _)) = take_cached(size) {
        if zeroed {
            // SAFETY: the cached block has at least `size` usable bytes.
            unsafe { std::ptr::write_bytes(start as *mut u8, 0, size) };
        }
        return start as *mut u8;
    }
    let body = size.div_ceil(HUGE) * HUGE;
    let budget = MAPPED.fetch_update(Relaxed, Relaxed, |m| {
        (m + body <= MAP_BUDGET).then_some(m + body)
    });
    if budget.is_ok() {
        unsafe { map(size) }
    } else {
        unsafe { from_system(size, zeroed) }
    }
}

/// A large block from the system allocator, behind a header of two zeros (no mapping) so that
/// [`release`] hands it back there.
unsafe fn from_system(size: usize, zeroed: bool) -> *mut u8 {
    let Ok(layout) = Layout::from_size_align(size + HEADER, HEADER) else {
        return std::ptr::null_mut();
    };
    // SAFETY: a non-zero size.
    let block = unsafe {
        if zeroed {
            System.alloc_zeroed(layout)
        } else {
            System.alloc(layout)
        }
    };
    if block.is_null() {
        return block;
    }
    // SAFETY: the block has HEADER bytes before the returned address, 16-byte aligned.
    unsafe {
        let header = block as *mut usize;
        header.write(0);
        header.add(1).write(size);
        block.add(HEADER)
    }
}

/// Frees a large block: the system allocator's back to it; a mapping kept in the cache when
/// there is room, else unmapped.
unsafe fn release(ptr: *mut u8) {
    // SAFETY: `ptr` came from `map`, which wrote the mapping's base and length below it, or
    // from `from_system`, which wrote a zero base and the block's size.
    let (base, len) = unsafe {
        let header = (ptr as usize - HEADER) as *const usize;
        (header.read(), header.add(1).read())
    };
    if base == 0 {
        // SAFETY: the layout `from_system` allocated with.
        unsafe {
            let layout = Layout::from_size_align_unchecked(len + HEADER, HEADER);
            System.dealloc(ptr.sub(HEADER), layout);
        }
        return;
    }
    let body = base + len - ptr as usize;
    if !keep(ptr as usize, body) {
        // SAFETY: the whole mapping made by `map`, no longer used.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    }
}

/// Maps `size` bytes (zeroed) at a 2 MiB boundary, with the mapping's base and length stored
/// in the 16 bytes before the returned address. Null when the system refuses.
unsafe fn map(size: usize) -> *mut u8 {
    let body = size.div_ceil(HUGE) * HUGE;
    let len = body + HUGE;
    // SAFETY: an anonymous private mapping, no address hint; the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let base = base as usize;
    // The base is page-aligned, so the next 2 MiB boundary past it leaves at least a page (and
    // at most HUGE bytes) for the header, and `body` bytes fit before the mapping ends.
    let start = (base + HEADER).div_ceil(HUGE) * HUGE;
    // SAFETY: [start - HEADER, start + body) lies inside the mapping just made.
    unsafe {
        let header = (start - HEADER) as *mut usize;
        header.write(base);
        header.add(1).write(len);
        // Advice only: without transparent huge pages the block still works with small pages.
        libc::madvise(start as *mut libc::c_void, body, libc::MADV_HUGEPAGE);
    }
    start as *mut u8
}

// SAFETY: large blocks are whole private mappings, disjoint from everything else and at least
// 16-byte aligned (only layouts with alignment <= 16 take that path); everything else is the
// system allocator's, chosen by the same test on the same layout at every call.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            unsafe { large(layout.size(), false) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            unsafe { large(layout.size(), true) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) {
            unsafe { release(ptr) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (all arms): the caller guarantees `ptr`/`layout` describe a live block and
        // `new_size` is a valid size for `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_large(&layout) && !is_large(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}
