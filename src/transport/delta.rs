//! Delta delivery, shared by every transport: for a client that asked for
//! deltas (`"delta":true` on a WebSocket subscribe, `?delta=1` on SSE and
//! long-poll), the value it last received on a channel, and the choice per
//! message between the shared delta encoding (when that value is the
//! message's base) and the whole one. A client that resumes, falls behind
//! (conflation, drops) or is at another base simply gets whole values: the
//! check is the base id, never a guess.

use std::sync::Arc;

use bytes::Bytes;

use crate::metrics::DeltaMetrics;
use crate::protocol::delta::DeltaEncoded;
use crate::protocol::poll_answer::encode_answer;
use crate::protocol::{Cursor, Epoch, Message, Transport};

/// `delta=1` (or `delta=true`) in a query: the client asks for deltas.
pub fn wants_delta(query: Option<&str>) -> bool {
    // Most queries (every plain poll's) name no `delta`: one scan says so.
    if !query.is_some_and(|q| crate::http::may_name(q, "delta")) {
        return false;
    }
    crate::http::query_pairs(query)
        .filter(|(k, _)| k == "delta")
        .last()
        .is_some_and(|(_, v)| v == "1" || v == "true")
}

/// The value a delta-reading client holds on one channel.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeltaTrack {
    /// The id (and epoch) of the last value it received; None until the
    /// first one, so the first value after a (re)subscribe is whole.
    holds: Option<Cursor>,
}

impl DeltaTrack {
    /// A client holding the value of `at` (a long-poll's `since`).
    pub fn holding(at: Cursor) -> DeltaTrack {
        DeltaTrack { holds: Some(at) }
    }

    /// `msg` is going to this client next: its delta encoding when the
    /// client holds its base, else None (send the whole envelope). Counts
    /// the delivery either way.
    pub fn pick<'m>(
        &mut self,
        msg: &'m Message,
        transport: Transport,
        metrics: &DeltaMetrics,
    ) -> Option<&'m DeltaEncoded> {
        let delta = self
            .holds
            .and_then(|held| msg.delta_after(held.id, held.epoch));
        self.holds = Some(Cursor::new(msg.id, msg.epoch));
        match delta {
            Some(d) => metrics.delta(transport, msg.envelope.len(), d.envelope.len()),
            None => metrics.whole(transport),
        }
        delta
    }

    /// `msg` went to this client whole (a replay): it holds that value now.
    pub fn sent_whole(&mut self, msg: &Message, transport: Transport, metrics: &DeltaMetrics) {
        self.holds = Some(Cursor::new(msg.id, msg.epoch));
        metrics.whole(transport);
    }

    /// The value the client holds, if it has had one since it subscribed.
    pub fn holds(&self) -> Option<Cursor> {
        self.holds
    }

    /// Publishers wrote deltas up to `at` to this client (WebSocket direct
    /// mode, counted by [`record_direct_deltas`]): it holds that value now.
    pub fn wrote_up_to(&mut self, at: Cursor) {
        self.holds = Some(at);
    }
}

/// Counts `msgs`, written to a WebSocket client as their shared deltas by
/// a publisher (direct mode), like [`DeltaTrack::pick`] counts the
/// connection's own.
pub fn record_direct_deltas(metrics: &DeltaMetrics, msgs: &[Arc<Message>]) {
    for msg in msgs {
        let delta = msg
            .base_id()
            .and_then(|base| msg.delta_after(base, msg.epoch));
        if let Some(d) = delta {
            metrics.direct_delta(msg.envelope.len(), d.envelope.len());
        }
    }
}

/// A long-poll answer for a client holding a value (`track`): each message
/// a delta when it chains from the one before (the first from the
/// client's cursor), else whole. None when it would exceed one
/// [`replay::CHUNK`](super::replay::CHUNK): the caller then streams the
/// whole envelopes (a delta only ever saves bytes, so this is rare).
pub fn poll_answer(
    mut track: DeltaTrack,
    messages: &[Arc<Message>],
    (last_id, epoch): (u64, Epoch),
    conflated: bool,
    metrics: &DeltaMetrics,
) -> Option<Bytes> {
    if let ([only], false) = (messages, conflated) {
        // The fan-out case: one answer per message, shared (whole: the
        // caller's own shared answer).
        let delta = track.pick(only, Transport::LongPoll, metrics)?;
        return Some(delta.poll_answer(only).clone());
    }
    let mut envelopes = Vec::with_capacity(messages.len());
    for m in messages {
        envelopes.push(match track.pick(m, Transport::LongPoll, metrics) {
            Some(delta) => delta.envelope.clone(),
            None => m.envelope.clone(),
        });
    }
    let size: usize = envelopes.iter().map(|e| e.len() + 1).sum();
    (size <= super::replay::CHUNK)
        .then(|| encode_answer(envelopes.iter(), last_id, epoch, false, conflated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_flag() {
        assert!(wants_delta(Some("delta=1")));
        assert!(wants_delta(Some("since=3&delta=true")));
        assert!(!wants_delta(Some("delta=0")));
        assert!(!wants_delta(Some("delta=1&delta=0")));
        assert!(!wants_delta(None));
        assert!(!wants_delta(Some("since=3&timeout=30")));
        assert!(wants_delta(Some("%64elta=1")));
        assert!(wants_delta(Some("x=delta&delta=1")));
        assert!(!wants_delta(Some("del+ta=1&deltas=1")));
    }

    proptest::proptest! {
        /// As it was read before the fast paths: every pair, decoded.
        #[test]
        fn delta_flag_reads_as_before(
            query in "((delta|%64elta|del%74a|since|d|x)(=(1|true|0|%31|tru%65|)?)?&?){0,4}",
        ) {
            let reference = form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k == "delta")
                .last()
                .is_some_and(|(_, v)| v == "1" || v == "true");
            proptest::prop_assert_eq!(wants_delta(Some(&query)), reference);
        }
    }
}
