//! The most frequent items of a stream in bounded memory: the
//! space-saving algorithm (Metwally et al.). With `capacity` counters, any
//! item more frequent than 1/capacity of the stream is kept, and counts are
//! over-estimated by at most the smallest counter.

use std::collections::HashMap;

pub struct SpaceSaving {
    capacity: usize,
    /// item → (count, over-estimate)
    counts: HashMap<String, (u64, u64)>,
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            counts: HashMap::with_capacity(capacity),
        }
    }

    pub fn insert(&mut self, item: &str) {
        if let Some(entry) = self.counts.get_mut(item) {
            entry.0 += 1;
            return;
        }
        if self.counts.len() < self.capacity {
            self.counts.insert(item.to_string(), (1, 0));
            return;
        }
        // Replace the smallest counter; the newcomer inherits its count as
        // the possible over-estimate.
        let (victim, &(min, _)) = self
            .counts
            .iter()
            .min_by_key(|(_, (count, _))| *count)
            .expect("at capacity, so not empty");
        let victim = victim.clone();
        self.counts.remove(&victim);
        self.counts.insert(item.to_string(), (min + 1, min));
    }

    /// The `n` most frequent items with their counts, most frequent first.
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut items: Vec<(String, u64)> = self
            .counts
            .iter()
            .map(|(k, (c, _))| (k.clone(), *c))
            .collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        items.truncate(n);
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_hitters_come_out_in_order() {
        let mut s = SpaceSaving::new(32);
        for i in 0..1000 {
            let page = match i % 10 {
                0..=5 => "/scores",
                6..=8 => "/prices",
                _ => "/queue",
            };
            s.insert(page);
            // A long tail of rare pages.
            s.insert(&format!("/rare/{i}"));
        }
        let top: Vec<String> = s.top(3).into_iter().map(|(p, _)| p).collect();
        assert_eq!(top, vec!["/scores", "/prices", "/queue"]);
    }
}
