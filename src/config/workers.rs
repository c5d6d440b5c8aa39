//! `workers`: how many threads the runtime runs, and so how many fan-out
//! shards write to subscribers.

use super::Config;

/// More would be a mistake (a thread and a shard each, per channel lane).
const MAX_WORKERS: usize = 1024;

/// What is wrong with a `workers` value, if anything.
pub(super) fn problem(workers: Option<usize>) -> Option<String> {
    match workers {
        Some(0) => Some("must be at least 1 (leave it unset for one per core)".into()),
        Some(n) if n > MAX_WORKERS => Some(format!("must be at most {MAX_WORKERS} (got {n})")),
        _ => None,
    }
}

impl Config {
    /// The runtime's worker threads: `workers`, or one per core.
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}
