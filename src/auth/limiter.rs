//! Bounds on requests to the auth backend (`auth = "backend"` channels):
//! in flight and per second, per client address and gateway-wide, so no
//! client (and no crowd) can turn the gateway into a load multiplier for
//! the backend. Cached answers cost nothing and are not counted.
//!
//! Past a per-address bound the client gets 429 `auth_rate_limited`; past
//! a gateway-wide one, 503 `auth_unavailable` (both with `Retry-After`;
//! over a WebSocket, an error answer with that code).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::config::AuthConfig;
use crate::metrics::FloodMetrics;
use crate::net::bucket::TokenBucket;
use crate::protocol::error::ApiError;

/// Why a check was refused, in `FloodMetrics::auth_refused` order.
#[derive(Clone, Copy)]
enum Refused {
    IpRate = 0,
    IpConcurrency = 1,
    Rate = 2,
    Concurrency = 3,
}

/// One client address's share.
struct PerIp {
    in_flight: usize,
    bucket: Option<TokenBucket>,
}

pub struct AuthLimiter {
    max_in_flight: usize,
    max_in_flight_per_ip: usize,
    rate_per_ip: f64,
    in_flight: AtomicUsize,
    rate: Option<Mutex<TokenBucket>>,
    /// Only addresses with a request in flight or a bucket not yet full
    /// (see [`AuthLimiter::sweep`]).
    per_ip: DashMap<IpAddr, PerIp>,
    refused: [prometheus::IntCounter; 4],
}

/// A request allowed to go to the backend; dropping it frees its slots.
pub struct Permit<'a> {
    limiter: &'a AuthLimiter,
    ip: IpAddr,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(mut entry) = self.limiter.per_ip.get_mut(&self.ip) {
            entry.in_flight -= 1;
        }
    }
}

impl AuthLimiter {
    pub fn new(config: &AuthConfig, metrics: &FloodMetrics) -> AuthLimiter {
        let now = Instant::now();
        AuthLimiter {
            max_in_flight: config.auth_max_concurrent,
            max_in_flight_per_ip: config.auth_max_concurrent_per_ip,
            rate_per_ip: config.auth_rate_per_ip as f64,
            in_flight: AtomicUsize::new(0),
            rate: (config.auth_rate > 0).then(|| {
                let rate = config.auth_rate as f64;
                Mutex::new(TokenBucket::new(rate, rate, now))
            }),
            per_ip: DashMap::new(),
            refused: metrics.auth_refused.clone(),
        }
    }

    fn refuse(&self, why: Refused, error: ApiError) -> ApiError {
        self.refused[why as usize].inc();
        error
    }

    /// Room for one backend request on behalf of `ip`, or the error the
    /// client gets instead.
    pub fn acquire(&self, ip: IpAddr) -> Result<Permit<'_>, ApiError> {
        let now = Instant::now();
        {
            let rate = self.rate_per_ip;
            let mut entry = self.per_ip.entry(ip).or_insert_with(|| PerIp {
                in_flight: 0,
                bucket: (rate > 0.0).then(|| TokenBucket::new(rate, 2.0 * rate, now)),
            });
            if self.max_in_flight_per_ip > 0 && entry.in_flight >= self.max_in_flight_per_ip {
                return Err(self.refuse(Refused::IpConcurrency, ApiError::AuthRateLimited(1)));
            }
            if let Some(bucket) = &mut entry.bucket {
                if let Err(wait) = bucket.take(1.0, now) {
                    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                    return Err(self.refuse(Refused::IpRate, ApiError::AuthRateLimited(secs)));
                }
            }
            entry.in_flight += 1;
        }
        // From here on the permit undoes the per-address count if a
        // gateway-wide bound refuses.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = Permit { limiter: self, ip };
        if self.max_in_flight > 0 && self.in_flight.load(Ordering::Acquire) > self.max_in_flight {
            return Err(self.refuse(Refused::Concurrency, busy()));
        }
        if let Some(rate) = &self.rate {
            if rate.lock().take(1.0, now).is_err() {
                return Err(self.refuse(Refused::Rate, busy()));
            }
        }
        Ok(permit)
    }

    /// Forgets addresses with nothing in flight and a full bucket
    /// (bounded memory whatever the number of addresses).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.per_ip.retain(|_, entry| {
            entry.in_flight > 0 || entry.bucket.as_ref().is_some_and(|b| !b.is_full(now))
        });
    }
}

fn busy() -> ApiError {
    ApiError::AuthUnavailable(
        "the authorisation backend is busy (gateway limit on auth requests); retry shortly".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn limiter(
        per_ip_conc: usize,
        per_ip_rate: u32,
        conc: usize,
        rate: u32,
    ) -> (AuthLimiter, Metrics) {
        let metrics = Metrics::new();
        let config = AuthConfig {
            auth_max_concurrent: conc,
            auth_max_concurrent_per_ip: per_ip_conc,
            auth_rate: rate,
            auth_rate_per_ip: per_ip_rate,
            ..AuthConfig::default()
        };
        (AuthLimiter::new(&config, &metrics.floods), metrics)
    }

    #[test]
    fn in_flight_per_address_and_in_total() {
        let (l, _m) = limiter(2, 0, 3, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.acquire(a).unwrap();
        let _p2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err().unwrap().code(), "auth_rate_limited");
        let _p3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err().unwrap().code(), "auth_unavailable");
        drop(p1);
        assert!(l.acquire(a).is_ok(), "a slot came free");
    }

    #[test]
    fn rate_per_address_and_in_total() {
        let (l, m) = limiter(0, 2, 0, 5);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..4 {
            assert!(l.acquire(a).is_ok(), "burst of twice the rate");
        }
        let refused = l.acquire(a).err().unwrap();
        assert_eq!(refused.code(), "auth_rate_limited");
        assert_eq!(refused.status(), 429);
        assert!(l.acquire("10.0.0.2".parse().unwrap()).is_ok());
        let total = l.acquire("10.0.0.3".parse().unwrap()).err().unwrap();
        assert_eq!(total.code(), "auth_unavailable");
        assert_eq!(total.status(), 503);
        assert_eq!(m.floods.auth_refused[Refused::IpRate as usize].get(), 1);
        assert_eq!(m.floods.auth_refused[Refused::Rate as usize].get(), 1);
        l.sweep();
    }
}
