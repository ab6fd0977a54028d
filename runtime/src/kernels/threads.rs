//! The thread pool (rayon's global pool, which the calling thread joins) and the parallel
//! helpers every kernel frame uses; sequential at one thread and without `std`.

use alloc::vec::Vec;

/// `f(i, chunk)` for chunk `i` of `size` values of `x`, on the pool (sequentially at one
/// thread or without `std`).
pub fn par_chunks_mut<T: Send>(
    x: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    #[cfg(feature = "std")]
    {
        use rayon::prelude::*;
        if rayon::current_num_threads() > 1 {
            x.par_chunks_mut(size)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
            return;
        }
    }
    x.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
}

/// `f(0), f(1), ..., f(count - 1)`, computed on the pool (sequentially at one thread or without
/// `std`).
pub fn par_map<T: Send>(count: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    par_map_init(count, || (), |_, i| f(i))
}

/// [`par_map`] with working memory: `f(&mut state, i)`, one `state` from `init` per piece of
/// work the pool splits off (one in all at one thread), reused for the indices it covers.
pub fn par_map_init<S, T: Send>(
    count: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize) -> T + Sync + Send,
) -> Vec<T> {
    #[cfg(feature = "std")]
    {
        use rayon::prelude::*;
        if rayon::current_num_threads() > 1 {
            return (0..count).into_par_iter().map_init(init, f).collect();
        }
    }
    let mut state = init();
    (0..count).map(|i| f(&mut state, i)).collect()
}

/// Threads of the pool.
#[cfg(feature = "std")]
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Sets the number of threads of the pool (once, before the first use; later calls fail). The
/// calling thread becomes one of them: the products it starts run partly on itself, and it
/// hands work to the others without sleeping and being woken for each one.
#[cfg(feature = "std")]
pub fn set_threads(n: usize) -> Result<(), rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread()
        .build_global()
}
