//! What the subscription task knows of one channel it watches: whether
//! the current connection confirmed it, the sequence (epoch) it follows and
//! where it stands in it, and who waits for the confirmation.

use std::time::Instant;

use tokio::sync::oneshot;

use crate::protocol::Epoch;

/// One channel this node watches.
#[derive(Default)]
pub(super) struct Watch {
    /// Confirmed by the server on the current connection.
    pub(super) confirmed: bool,
    /// A subscribe command was sent on the current connection.
    pub(super) requested: bool,
    /// Was live before: the next confirmation must fill the gap since the
    /// last delivered id.
    pub(super) resume: bool,
    /// The channel's last id when this node started watching it (or
    /// started following a new epoch: 0).
    pub(super) floor: u64,
    /// The sequence this node follows (`NONE`: the channel had none yet).
    pub(super) epoch: Epoch,
    /// Epochs left behind, newest last: their notifications still in
    /// flight are stale.
    pub(super) retired: Vec<Epoch>,
    /// The last id notified live on the current connection: live ids only
    /// grow, so one at or below it means the ids went backwards.
    pub(super) live_last: u64,
    /// Id and publish time (Redis clock, µs) of the last entry this node
    /// delivered: tells the entry at that id apart from another of the same
    /// id.
    pub(super) last_delivered: (u64, u64),
    /// Subscribers waiting for the confirmation.
    pub(super) waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// Since when no local subscriber is left.
    pub(super) idle_since: Option<Instant>,
}
