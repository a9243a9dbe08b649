//! A counting global allocator for the zero-allocation tests: while [`counted`] runs its
//! closure, every allocation on any thread (alloc, alloc_zeroed, realloc) is counted with its
//! size. Include it in a test binary with `mod alloc_support;` — it installs itself as that
//! binary's `#[global_allocator]` — and keep one test per binary, so that no other test's
//! allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static LARGEST: AtomicU64 = AtomicU64::new(0);

fn count(bytes: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
        LARGEST.fetch_max(bytes as u64, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What was allocated while [`counted`] ran its closure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Number of allocations (a realloc counts as one).
    pub allocs: u64,
    /// Σ bytes asked for.
    pub bytes: u64,
    /// The largest single request.
    pub largest: u64,
}

/// Runs `f` with counting on and returns its result with what it (and any other thread
/// meanwhile) allocated.
#[allow(dead_code)] // each test binary uses what it needs
pub fn counted<R>(f: impl FnOnce() -> R) -> (R, Counted) {
    ALLOCS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    LARGEST.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    let c = Counted {
        allocs: ALLOCS.load(Ordering::SeqCst),
        bytes: BYTES.load(Ordering::SeqCst),
        largest: LARGEST.load(Ordering::SeqCst),
    };
    (r, c)
}

/// Checks that this binary's allocator counts (so that a zero count means something).
#[allow(dead_code)]
pub fn assert_counting_works() {
    let (v, c) = counted(|| std::hint::black_box(vec![1u8; 1000]));
    assert_eq!(v.len(), 1000);
    assert!(
        c.allocs >= 1 && c.bytes >= 1000 && c.largest >= 1000,
        "the counting allocator is not installed: {c:?}"
    );
}

/// `main` of a counting binary (`harness = false` in Cargo.toml): runs `test` alone on this
/// thread, with no test harness beside it. libtest's own thread would allocate while the test
/// runs — it prints "has been running for over 60 seconds" at 60 s — and counting is global:
/// a training case that crossed the 60 s mark during a counted step failed with 3 allocations
/// that were the harness's. Understands libtest's arguments as far as one test needs: name
/// filters (the test runs if its name contains one, or if none is given), `--skip FILTER`,
/// `--exact`, `--list`, `--ignored` (there are no ignored tests here); the values of
/// `--test-threads`, `--format`, `--color`, `--logfile`, `--shuffle-seed` and `-Z` are not
/// taken for filters; other flags are ignored. Prints libtest's lines, so summaries that add
/// up `test result:` lines count it.
#[allow(dead_code)]
pub fn run_alone(name: &str, test: fn()) {
    const WITH_VALUE: [&str; 7] = [
        "--test-threads",
        "--skip",
        "--format",
        "--color",
        "--logfile",
        "--shuffle-seed",
        "-Z",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{name}: test");
        return;
    }
    let exact = args.iter().any(|a| a == "--exact");
    let matches = |f: &str| if exact { name == f } else { name.contains(f) };
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip" => skips.extend(it.next()),
            f if WITH_VALUE.contains(&f) => {
                it.next();
            }
            f if f.starts_with('-') => {}
            f => filters.push(f),
        }
    }
    let skip = args.iter().any(|a| a == "--ignored")
        || !(filters.is_empty() || filters.iter().any(|f| matches(f)))
        || skips.iter().any(|f| name.contains(f.as_str()));
    println!("\nrunning {} test", if skip { 0 } else { 1 });
    let start = std::time::Instant::now();
    if !skip {
        test();
        println!("test {name} ... ok");
    }
    println!(
        "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; {} filtered out; \
         finished in {:.2}s\n",
        usize::from(!skip),
        usize::from(skip),
        start.elapsed().as_secs_f64()
    );
}
