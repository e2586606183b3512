//! Parallel decoding with prefetch, so the backend never waits on JPEG decoding.

use crossbeam_channel::{Receiver, bounded};
use rayon::prelude::*;
use std::thread::JoinHandle;

/// Runs `f` over `items` in batches on a background thread (each batch decoded in parallel with
/// rayon), keeping up to `depth` finished batches ready. Iterating yields batches in order.
pub struct Prefetcher<T: Send + 'static> {
    rx: Receiver<Vec<T>>,
    handle: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetcher<T> {
    /// Starts producing. `f` must be cheap to share (it is called from rayon's pool).
    pub fn new<I, F>(items: Vec<I>, batch_size: usize, depth: usize, f: F) -> Self
    where
        I: Send + Sync + 'static,
        F: Fn(&I) -> T + Send + Sync + 'static,
    {
        let (tx, rx) = bounded(depth.max(1));
        let handle = std::thread::spawn(move || {
            for chunk in items.chunks(batch_size.max(1)) {
                let batch: Vec<T> = chunk.par_iter().map(&f).collect();
                if tx.send(batch).is_err() {
                    return; // consumer went away
                }
            }
        });
        Self { rx, handle: Some(handle) }
    }
}

impl<T: Send + 'static> Iterator for Prefetcher<T> {
    type Item = Vec<T>;
    fn next(&mut self) -> Option<Vec<T>> {
        self.rx.recv().ok()
    }
}

impl<T: Send + 'static> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        // Unblock the producer, then wait so no thread outlives the loader.
        let rx = std::mem::replace(&mut self.rx, bounded(0).1);
        drop(rx);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_all_batches_in_order_and_stops_early_cleanly() {
        let got: Vec<Vec<u32>> = Prefetcher::new((0..10u32).collect(), 4, 2, |x| x * 2).collect();
        assert_eq!(got, vec![vec![0, 2, 4, 6], vec![8, 10, 12, 14], vec![16, 18]]);
        let mut p = Prefetcher::new((0..1000u32).collect(), 1, 1, |x| *x);
        assert_eq!(p.next(), Some(vec![0]));
        drop(p); // must not hang
    }
}
