//! Test support shared by the workspace's crates (a dev-dependency only).
//!
//! [`CountingAlloc`] is a global allocator that forwards to the system allocator and counts,
//! **per thread**, the allocations and reallocations each thread makes. A zero-allocation test
//! measures its own thread with a [`Region`]: the test harness's threads (and any other thread)
//! allocate at times of their own and are not the code under test — a process-wide counter made
//! such tests fail under load with a handful of allocations that were not theirs.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: tandem_testkit::CountingAlloc = tandem_testkit::CountingAlloc;
//!
//! let region = tandem_testkit::Region::new();
//! hot_path();
//! assert_eq!(region.change().allocations, 0);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // Const-initialised, no destructor: reading them from inside the allocator never allocates.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static REALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn bump(counter: &'static std::thread::LocalKey<Cell<usize>>) {
    // `try_with` fails only while the thread's locals are being torn down; such late
    // allocations are not a test's to count.
    let _ = counter.try_with(|c| c.set(c.get() + 1));
}

/// The counting global allocator (see the crate doc).
#[derive(Debug)]
pub struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// thread-local cells that neither allocate nor touch the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCATIONS);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCATIONS);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&REALLOCATIONS);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations and reallocations made on one thread since a [`Region`] began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub allocations: usize,
    pub reallocations: usize,
}

/// A measurement of the current thread's allocations from [`Region::new`] on. Meaningful only
/// when [`CountingAlloc`] is the test binary's global allocator.
#[derive(Debug)]
pub struct Region {
    start: Stats,
}

fn now() -> Stats {
    Stats {
        allocations: ALLOCATIONS.with(Cell::get),
        reallocations: REALLOCATIONS.with(Cell::get),
    }
}

impl Region {
    /// Starts measuring the calling thread.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Region { start: now() }
    }

    /// What the calling thread allocated since [`Region::new`] (call it on the same thread).
    pub fn change(&self) -> Stats {
        let end = now();
        Stats {
            allocations: end.allocations - self.start.allocations,
            reallocations: end.reallocations - self.start.reallocations,
        }
    }
}
