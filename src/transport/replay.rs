//! Catch-up output produced as the socket drains: a long-poll answer of
//! many messages, an SSE stream's replayed history.
//!
//! Nothing is assembled whole. Each call to [`Replay::next_chunk`] gives
//! the next piece: small messages are copied together into one chunk of
//! about [`CHUNK`] bytes (one write for many), a large message's envelope
//! goes out as its own chunk, the message's shared `Bytes` (a reference
//! count, no copy). hyper asks for the next chunk only once its write
//! buffer has room, so a client that reads nothing holds one chunk and the
//! messages still to come, which are history's own.
//!
//! On a compressed stream ([`Replay::next_coded`]) the same output is
//! stitched from pieces: each message's piece compressed once and shared
//! (its SSE event, or its envelope and the separator before it), the
//! opening and closing compressed for this stream alone
//! ([`crate::transport::stitch`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;

use super::stitch::{Stitcher, STORED};
use crate::http::BoxError;
use crate::net::output::OutputAccount;
use crate::protocol::compress::{Coding, Piece};
use crate::protocol::Message;

/// Target size of a chunk of copied small messages.
pub const CHUNK: usize = 16 * 1024;

/// Envelopes at least this large are sent as their own, shared chunk
/// rather than copied.
pub const SHARE_AT: usize = 4 * 1024;

/// How each message is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Envelopes separated by commas (inside a long-poll answer's list).
    PollList,
    /// `id: N\ndata: <envelope>\n\n` per message.
    SseEvents,
}

/// A sequence of messages between an opening and a closing, produced in
/// chunks.
pub struct Replay {
    messages: std::vec::IntoIter<Arc<Message>>,
    framing: Framing,
    first: bool,
    opening: Option<Bytes>,
    closing: Option<Bytes>,
    /// A large envelope to send next, as it is.
    shared_next: Option<Bytes>,
    /// What follows that envelope (SSE's blank line).
    tail_next: &'static [u8],
    /// Bytes not yet produced (uncompressed).
    remaining: usize,
}

/// The comma between two envelopes of a long-poll answer, as a stored
/// piece per coding: the same for every answer.
static SEPARATOR: std::sync::LazyLock<[Piece; 2]> = std::sync::LazyLock::new(|| {
    [
        Piece::new(Coding::Gzip, b",", STORED),
        Piece::new(Coding::Brotli, b",", STORED),
    ]
});

fn separator(coding: Coding) -> &'static Piece {
    match coding {
        Coding::Gzip => &SEPARATOR[0],
        Coding::Brotli => &SEPARATOR[1],
    }
}

impl Replay {
    pub fn new(
        framing: Framing,
        opening: Bytes,
        messages: Vec<Arc<Message>>,
        closing: Bytes,
    ) -> Replay {
        let framed: usize = messages
            .iter()
            .map(|m| framing_len(framing, m) + m.envelope.len())
            .sum();
        // The first list entry has no comma before it.
        let first_comma = usize::from(framing == Framing::PollList && !messages.is_empty());
        Replay {
            remaining: opening.len() + framed - first_comma + closing.len(),
            messages: messages.into_iter(),
            framing,
            first: true,
            opening: (!opening.is_empty()).then_some(opening),
            closing: (!closing.is_empty()).then_some(closing),
            shared_next: None,
            tail_next: b"",
        }
    }

    /// Bytes still to come, uncompressed: exact.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    fn tail(&self) -> &'static [u8] {
        match self.framing {
            Framing::PollList => b"",
            Framing::SseEvents => b"\n\n",
        }
    }

    fn put_head(&mut self, out: &mut BytesMut, msg: &Message) {
        match self.framing {
            Framing::PollList => {
                if !self.first {
                    out.put_u8(b',');
                }
            }
            Framing::SseEvents => crate::protocol::message::put_sse_head(out, msg),
        }
        self.first = false;
    }

    /// The next chunk, `None` once everything was produced.
    pub fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(shared) = self.shared_next.take() {
            self.remaining -= shared.len();
            return Some(shared);
        }
        let mut out = BytesMut::with_capacity(self.remaining.min(CHUNK + SHARE_AT));
        if let Some(opening) = self.opening.take() {
            out.put_slice(&opening);
        }
        out.put_slice(std::mem::take(&mut self.tail_next));
        while out.len() < CHUNK {
            let Some(msg) = self.messages.next() else {
                if let Some(closing) = self.closing.take() {
                    out.put_slice(&closing);
                }
                break;
            };
            self.put_head(&mut out, &msg);
            if msg.envelope.len() >= SHARE_AT {
                self.shared_next = Some(msg.envelope.clone());
                self.tail_next = self.tail();
                break;
            }
            out.put_slice(&msg.envelope);
            out.put_slice(self.tail());
        }
        if out.is_empty() {
            return None;
        }
        self.remaining -= out.len();
        Some(out.freeze())
    }
}

impl Replay {
    /// The next chunk of the output compressed on `stitcher`'s stream,
    /// about [`CHUNK`] compressed bytes of pieces; `None` once everything
    /// was produced (the stream's end is the caller's: an SSE stream goes
    /// on). Not to be mixed with [`next_chunk`](Self::next_chunk).
    pub fn next_coded(&mut self, stitcher: &mut Stitcher) -> Option<Bytes> {
        debug_assert!(self.shared_next.is_none() && self.tail_next.is_empty());
        let mut out = BytesMut::new();
        if let Some(opening) = self.opening.take() {
            self.remaining -= opening.len();
            stitcher.push_own(&opening, &mut out);
        }
        while out.len() < CHUNK {
            let Some(msg) = self.messages.next() else {
                if let Some(closing) = self.closing.take() {
                    self.remaining -= closing.len();
                    stitcher.push_own(&closing, &mut out);
                }
                break;
            };
            // The first list entry has no comma before it.
            let no_comma = usize::from(self.framing == Framing::PollList && self.first);
            self.remaining -= framing_len(self.framing, &msg) + msg.envelope.len() - no_comma;
            match self.framing {
                Framing::PollList => {
                    if !self.first {
                        stitcher.push(separator(stitcher.coding()), &mut out);
                    }
                    let level = stitcher.level_for(msg.envelope.len());
                    let piece = msg.envelope_piece(stitcher.coding(), level);
                    stitcher.push(piece, &mut out);
                }
                Framing::SseEvents => {
                    let level = stitcher.level_for(msg.sse_event().len());
                    let piece = msg.sse_piece(stitcher.coding(), level);
                    stitcher.push(piece, &mut out);
                }
            }
            self.first = false;
        }
        (!out.is_empty()).then(|| out.freeze())
    }
}

/// The per-message framing bytes around an envelope.
fn framing_len(framing: Framing, msg: &Message) -> usize {
    match framing {
        Framing::PollList => 1,
        Framing::SseEvents => crate::protocol::message::sse_head_len(msg) + b"\n\n".len(),
    }
}

/// A response body that is a [`Replay`] counted against the client's
/// output account: what is not produced yet is pending output. A
/// compressed one is stitched ([`Replay::next_coded`]) and counted by its
/// uncompressed bytes: what it still holds of the messages.
pub struct ReplayBody {
    replay: Replay,
    account: Arc<OutputAccount>,
    coded: Option<Stitcher>,
}

impl ReplayBody {
    pub fn new(replay: Replay, account: Arc<OutputAccount>) -> ReplayBody {
        ReplayBody {
            replay,
            account,
            coded: None,
        }
    }

    /// The same body compressed on `stitcher`'s stream.
    pub fn coded(self, stitcher: Stitcher) -> ReplayBody {
        ReplayBody {
            coded: Some(stitcher),
            ..self
        }
    }

    /// Uncompressed bytes still to come.
    pub fn remaining(&self) -> usize {
        self.replay.remaining()
    }

    fn next(&mut self) -> Option<Bytes> {
        match &mut self.coded {
            None => self.replay.next_chunk(),
            Some(stitcher) => self
                .replay
                .next_coded(stitcher)
                .or_else(|| stitcher.finish()),
        }
    }
}

impl crate::http::StreamBody for ReplayBody {
    /// Exact for a plain body (it goes out with a Content-Length); a
    /// compressed one's size is known only at its end (chunked).
    fn remaining(&self) -> Option<usize> {
        match &self.coded {
            None => Some(self.replay.remaining()),
            Some(_) => None,
        }
    }

    fn attach_meter(&self, meter: &Arc<crate::net::meter::ConnMeter>) {
        self.account.attach_meter(meter);
    }

    fn watch_stalls(&self) {
        self.account.watch_stalls();
    }

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.account.is_killed() {
            return Poll::Ready(Some(Err("dropped: output limit".into())));
        }
        let before = this.replay.remaining();
        let chunk = this.next();
        this.account.sub(before - this.replay.remaining());
        Poll::Ready(chunk.map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::channel::ChannelName;
    use std::time::Instant;

    fn msgs(sizes: &[usize]) -> Vec<Arc<Message>> {
        let ch = ChannelName::new("r").unwrap();
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let data = format!("\"{}\"", "y".repeat(*size));
                Arc::new(Message::new(
                    ch.clone(),
                    crate::protocol::Epoch::NONE,
                    i as u64 + 1,
                    data.as_bytes(),
                    Instant::now(),
                ))
            })
            .collect()
    }

    fn drain(mut replay: Replay) -> (Vec<u8>, usize) {
        let announced = replay.remaining();
        let mut out = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = replay.next_chunk() {
            assert!(!chunk.is_empty());
            out.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert_eq!(out.len(), announced, "remaining() was exact");
        assert_eq!(replay.remaining(), 0);
        (out, chunks)
    }

    #[test]
    fn a_poll_list_is_the_same_answer_as_the_one_shot_encoding() {
        for sizes in [
            &[][..],
            &[10][..],
            &[10, 20, 30][..],
            &[5_000, 10, 70_000, 3][..],
            &[100; 400][..],
        ] {
            let messages = msgs(sizes);
            let last = messages.last().map_or(0, |m| m.id);
            let expected = crate::protocol::poll_answer::encode_answer(
                messages.iter().map(|m| &m.envelope),
                last,
                crate::protocol::Epoch::NONE,
                false,
                false,
            );
            let replay = crate::transport::longpoll::streamed_answer(
                messages,
                last,
                crate::protocol::Epoch::NONE,
                false,
                false,
            );
            let (body, _) = drain(replay);
            assert_eq!(body, expected.to_vec(), "sizes {sizes:?}");
        }
    }

    #[test]
    fn sse_events_match_the_cached_encoding_and_large_envelopes_are_shared() {
        let messages = msgs(&[10, 9_000, 20]);
        let expected: Vec<u8> = messages
            .iter()
            .flat_map(|m| m.sse_event().to_vec())
            .collect();
        let big = messages[1].envelope.clone();
        let mut replay = Replay::new(
            Framing::SseEvents,
            Bytes::from_static(b"retry: 1\n\n"),
            messages,
            Bytes::new(),
        );
        let mut body = Vec::new();
        let mut shared = false;
        while let Some(chunk) = replay.next_chunk() {
            shared |= chunk.as_ptr() == big.as_ptr();
            body.extend_from_slice(&chunk);
        }
        assert!(shared, "the large envelope went out uncopied");
        assert_eq!(&body[..10], b"retry: 1\n\n");
        assert_eq!(body[10..], expected[..]);
    }

    #[test]
    fn a_coded_replay_decodes_to_the_plain_output() {
        use crate::http::encoding::Compression;
        use crate::protocol::compress::Levels;
        use std::io::Read;
        let compression = Compression {
            enabled: true,
            min_bytes: 256,
            levels: Levels::default(),
        };
        let metrics = Arc::new(crate::metrics::Metrics::new());
        for (framing, coding) in [
            (Framing::PollList, Coding::Gzip),
            (Framing::SseEvents, Coding::Gzip),
            (Framing::PollList, Coding::Brotli),
            (Framing::SseEvents, Coding::Brotli),
        ] {
            for sizes in [
                &[][..],
                &[10][..],
                &[5_000, 10, 70_000, 3][..],
                &[900; 60][..],
            ] {
                let replay = |messages| {
                    Replay::new(
                        framing,
                        Bytes::from_static(b"{\"messages\":["),
                        messages,
                        Bytes::from_static(b"],\"last_id\":9}"),
                    )
                };
                let messages = msgs(sizes);
                let (plain, _) = drain(replay(messages.clone()));
                let mut coded = replay(messages);
                let mut stitcher = Stitcher::new(
                    coding,
                    compression,
                    metrics.clone(),
                    crate::protocol::Transport::LongPoll,
                );
                let mut out = Vec::new();
                while let Some(chunk) = coded.next_coded(&mut stitcher) {
                    assert!(!chunk.is_empty());
                    out.extend_from_slice(&chunk);
                }
                assert_eq!(coded.remaining(), 0, "{sizes:?}");
                out.extend_from_slice(&stitcher.finish().unwrap());
                let mut decoded = Vec::new();
                match coding {
                    Coding::Gzip => {
                        flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut decoded)
                    }
                    Coding::Brotli => {
                        brotli::Decompressor::new(&out[..], 4096).read_to_end(&mut decoded)
                    }
                }
                .unwrap();
                assert_eq!(decoded, plain, "{framing:?} {coding:?} {sizes:?}");
            }
        }
    }

    #[test]
    fn small_messages_are_coalesced_into_few_chunks() {
        let (_, chunks) = drain(Replay::new(
            Framing::PollList,
            Bytes::from_static(b"["),
            msgs(&[100; 1000]),
            Bytes::from_static(b"]"),
        ));
        // ~120 KB in chunks of ~16 KiB.
        assert!(chunks <= 10, "{chunks} chunks");
    }
}
