//! The transport label: the ways a client reaches the gateway. Metrics,
//! output accounting and the bus's subscriber counts are kept per label.

/// The ways a client reaches the gateway; metric label `transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Transport {
    WebSocket = 0,
    LongPoll = 1,
    Sse = 2,
    Proxy = 3,
    Bridge = 4,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::WebSocket,
        Transport::LongPoll,
        Transport::Sse,
        Transport::Proxy,
        Transport::Bridge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "longpoll",
            Transport::Sse => "sse",
            Transport::Proxy => "proxy",
            Transport::Bridge => "bridge",
        }
    }
}
