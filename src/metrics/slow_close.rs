//! The label for why the gateway closed a slow client.

/// Why the gateway closed a slow client; metric label `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowClose {
    /// Its socket accepted nothing for `limits.write_timeout`.
    WriteTimeout = 0,
    /// Its pending output passed `limits.client_output_hard_bytes`.
    HardLimit = 1,
    /// It stayed past `limits.client_output_soft_bytes` too long.
    SoftLimit = 2,
    /// It was among the largest when the gateway-wide budget ran out.
    Budget = 3,
}

impl SlowClose {
    pub const ALL: [SlowClose; 4] = [
        SlowClose::WriteTimeout,
        SlowClose::HardLimit,
        SlowClose::SoftLimit,
        SlowClose::Budget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SlowClose::WriteTimeout => "write_timeout",
            SlowClose::HardLimit => "output_hard_limit",
            SlowClose::SoftLimit => "output_soft_limit",
            SlowClose::Budget => "output_budget",
        }
    }
}
