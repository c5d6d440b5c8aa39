//! Metrics of the fan-out shards: how long one recorded publish takes to
//! reach every subscriber's socket (or queue) on this node.

use prometheus::{Histogram, HistogramOpts, Registry};

/// Fan-out spans from 10 µs to 10 s: one subscriber on an idle shard is a
/// few microseconds, 100,000 on one core most of a second.
const SPAN_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct FanoutMetrics {
    /// `pollbridge_fanout_seconds`: from a publish being recorded (ids
    /// assigned, history appended) to the last of this node's subscribers
    /// being written, once per publish that had subscribers here.
    pub seconds: Histogram,
}

impl FanoutMetrics {
    pub fn new(registry: &Registry) -> FanoutMetrics {
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                "fanout_seconds",
                "Time from a publish being recorded to the last subscriber on this node being written (or queued), per publish with subscribers",
            )
            .buckets(SPAN_BUCKETS.to_vec()),
        )
        .unwrap();
        registry
            .register(Box::new(seconds.clone()))
            .expect("metric names are unique");
        FanoutMetrics { seconds }
    }
}
