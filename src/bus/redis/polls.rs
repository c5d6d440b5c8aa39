//! Parking a long-poll on the Redis bus: listed on this node's hub before
//! the channel is made live and the shared history read (the order a
//! subscription keeps), let go if that read has something for it.

use std::sync::Arc;

use super::Shared;
use crate::bus::{BusError, Parking, WaitingPoll};
use crate::protocol::channel::{ChannelName, Since};
use crate::protocol::{Cursor, Epoch};

impl Shared {
    /// [`crate::bus::Bus::park_poll`] on the Redis bus.
    pub(super) async fn park_poll(
        &self,
        channel: &ChannelName,
        since: Since,
        poll: &Arc<dyn WaitingPoll>,
        limit: usize,
    ) -> Result<Parking, BusError> {
        // Listed first, so that this node counts the poll as wanting the
        // channel before it makes sure the channel is live (the order
        // `subscribe` keeps; see `subscriber::sweep_idle`), at the client's
        // cursor until the shared history says which sequence it is in.
        let listed = Cursor::new(since.id, since.epoch.unwrap_or(Epoch::NONE));
        let Some(registration) = self.hub.list_poll(channel, listed, poll) else {
            self.ensure_live(channel).await?;
            let read = self.history(channel, Some(since), limit).await?;
            return Ok(Parking::Read(read));
        };
        let read = match self.ensure_live(channel).await {
            Ok(()) => self.history(channel, Some(since), limit).await,
            Err(e) => Err(e),
        };
        // The client's cursor, in the sequence the read found when it
        // named none (a plain id): what a parked poll's answer is measured
        // against, so that one of a lost sequence is told `truncated`.
        let settled = |epoch| Cursor::new(since.id, since.epoch.unwrap_or(epoch));
        let cursor = match &read {
            Ok(read) if read.messages.is_empty() && !read.truncated && !read.conflated => {
                settled(read.epoch)
            }
            // Something to answer (or an error): unless a live message was
            // offered to the poll meanwhile, which it is answering.
            _ if poll.cancel() => return read.map(Parking::Read),
            _ => {
                registration.taken();
                let epoch = read.map_or(listed.epoch, |read| read.epoch);
                return Ok(Parking::Taken(settled(epoch)));
            }
        };
        if cursor.epoch != listed.epoch {
            registration.set_cursor(cursor);
        }
        Ok(Parking::Parked(registration, cursor))
    }
}
