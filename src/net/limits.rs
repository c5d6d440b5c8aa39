//! Per-client-address limits: open connections, and long-polls per second.
//!
//! The client address is the TCP peer, unless the peer is a trusted proxy:
//! then it is the right-most address in `X-Forwarded-For` that is not a
//! trusted proxy itself (addresses further left could be forged by the
//! client). Connections that arrive through a trusted proxy are not counted
//! per address at accept time — the proxy carries many clients.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use http::HeaderMap;
use ipnet::IpNet;
use parking_lot::Mutex;

use super::bucket::TokenBucket;
use crate::config::LimitsConfig;

/// The maps' hasher: keyed by client addresses, which a client with an
/// IPv6 prefix chooses by the million, so seeded at random per process;
/// foldhash rather than SipHash, as it runs on every poll.
type Keyed = foldhash::fast::RandomState;

pub struct IpLimits {
    max_connections: usize,
    open: DashMap<IpAddr, usize, Keyed>,
    poll_rate: u32,
    /// Per address: `longpoll_rate_per_ip` per second, a burst of twice that.
    polls: DashMap<IpAddr, Mutex<TokenBucket>, Keyed>,
    trusted: Vec<IpNet>,
}

/// One counted connection; dropping it releases the slot.
pub struct IpSlot {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        // remove_if: the entry goes when its last connection does, so the
        // map holds only addresses with open connections.
        if let Some(mut count) = self.limits.open.get_mut(&self.ip) {
            *count -= 1;
        }
        self.limits.open.remove_if(&self.ip, |_, count| *count == 0);
    }
}

/// The address already has `limits.max_connections_per_ip` open.
#[derive(Debug)]
pub struct AddressFull;

/// Past the long-poll rate: retry after this many seconds.
pub struct RateLimited {
    pub retry_after: u64,
}

impl IpLimits {
    pub fn new(config: &LimitsConfig) -> Arc<IpLimits> {
        let trusted = config
            .trusted_proxies
            .iter()
            .filter_map(|cidr| {
                cidr.parse::<IpNet>()
                    .ok()
                    .or_else(|| cidr.parse::<IpAddr>().ok().map(IpNet::from))
            })
            .collect();
        Arc::new(IpLimits {
            max_connections: config.max_connections_per_ip,
            open: DashMap::default(),
            poll_rate: config.longpoll_rate_per_ip,
            polls: DashMap::default(),
            trusted,
        })
    }

    /// True for a peer in `limits.trusted_proxies`.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Counts a new connection from `peer`; `None` when that address is at
    /// its limit. Trusted proxies and an unlimited setting always pass.
    pub fn connect(self: &Arc<Self>, peer: IpAddr) -> Result<Option<IpSlot>, AddressFull> {
        if self.max_connections == 0 || self.is_trusted(peer) {
            return Ok(None);
        }
        let mut count = self.open.entry(peer).or_insert(0);
        if *count >= self.max_connections {
            return Err(AddressFull);
        }
        *count += 1;
        Ok(Some(IpSlot {
            limits: self.clone(),
            ip: peer,
        }))
    }

    /// The client's address for a request from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.is_trusted(*ip))
            .unwrap_or(peer)
    }

    /// Takes one long-poll token for `ip`.
    pub fn allow_poll(&self, ip: IpAddr) -> Result<(), RateLimited> {
        if self.poll_rate == 0 {
            return Ok(());
        }
        let rate = self.poll_rate as f64;
        let now = Instant::now();
        // A shared (read) lock on the map for an address it knows, which
        // is every poll of a client but its first.
        let taken = match self.polls.get(&ip) {
            Some(bucket) => bucket.lock().take(1.0, now),
            None => self
                .polls
                .entry(ip)
                .or_insert_with(|| Mutex::new(TokenBucket::new(rate, 2.0 * rate, now)))
                .lock()
                .take(1.0, now),
        };
        taken.map_err(|wait| RateLimited {
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
    }

    /// Forgets buckets that have been full for a while (bounded memory).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.polls.retain(|_, bucket| !bucket.lock().is_full(now));
    }
}

/// Admission control for new WebSocket and SSE sessions: a token bucket
/// over the whole gateway, so a reconnect storm is met with quick `503`s and
/// a `Retry-After` (spread with jitter) instead of an accept queue that
/// overflows while every client waits.
pub struct Admission {
    rate: f64,
    bucket: Mutex<TokenBucket>,
}

/// Refused by admission control: retry after this many seconds.
pub struct Overloaded {
    pub retry_after: u64,
}

impl Admission {
    /// `rate` sessions per second, with a burst of one second's worth.
    /// 0: unlimited.
    pub fn new(rate: u32) -> Admission {
        Admission {
            rate: rate as f64,
            bucket: Mutex::new(TokenBucket::new(rate as f64, rate as f64, Instant::now())),
        }
    }

    pub fn admit(&self) -> Result<(), Overloaded> {
        if self.rate == 0.0 {
            return Ok(());
        }
        if self.bucket.lock().take(1.0, Instant::now()).is_ok() {
            return Ok(());
        }
        // Spread the retries over a few seconds so they don't come back
        // as one wave.
        Err(Overloaded {
            retry_after: 1 + crate::protocol::random_below(4),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, rate: u32, trusted: &[&str]) -> Arc<IpLimits> {
        IpLimits::new(&LimitsConfig {
            max_connections_per_ip: max,
            longpoll_rate_per_ip: rate,
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn connections_per_address() {
        let l = limits(2, 0, &[]);
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        let a = l.connect(ip).unwrap();
        let _b = l.connect(ip).unwrap();
        assert!(l.connect(ip).is_err());
        assert!(l.connect("10.1.1.2".parse().unwrap()).is_ok());
        drop(a);
        assert!(l.connect(ip).is_ok());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let l = limits(2, 0, &["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.9".parse().unwrap(),
        );
        assert_eq!(
            l.client_ip("10.0.0.1".parse().unwrap(), &h),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            l.client_ip("8.8.8.8".parse().unwrap(), &h),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        assert!(
            l.connect("10.0.0.1".parse().unwrap()).unwrap().is_none(),
            "proxies are not counted"
        );
    }

    #[test]
    fn admission_allows_the_rate_then_refuses_with_a_spread_retry() {
        let a = Admission::new(3);
        for _ in 0..3 {
            assert!(a.admit().is_ok());
        }
        let refused = a.admit().expect_err("over the rate");
        assert!((1..=4).contains(&refused.retry_after));
        assert!(Admission::new(0).admit().is_ok());
    }

    #[test]
    fn poll_rate_allows_a_burst_then_limits() {
        let l = limits(0, 5, &[]);
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        for _ in 0..10 {
            assert!(l.allow_poll(ip).is_ok());
        }
        let refused = l.allow_poll(ip).unwrap_err();
        assert!(refused.retry_after >= 1);
    }
}
