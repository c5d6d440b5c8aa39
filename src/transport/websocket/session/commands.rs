//! What a WebSocket session does with what its client sends: control
//! frames (ping, close), the echo handler, and the JSON commands
//! (subscribe, unsubscribe, publish) with their rate limits and auth
//! checks. Answers go out through [`delivery`](super::delivery).

use std::time::Instant;

use tokio::io::AsyncWrite;

use super::super::command::{self, Command, CommandError};
use super::super::guard::{CommandGuard, Limit, Refusal};
use super::super::reader::Inbound;
use super::subscriptions::Subscribed;
use super::{End, Handler, SendProgress, Session};
use crate::auth::Credentials;
use crate::bus::{Bus, HistoryRead, Subscription};
use crate::config::ChannelMode;
use crate::protocol::channel::ChannelName;
use crate::protocol::ws_frame as frame;
use crate::protocol::Payload;
use crate::protocol::{Cursor, Transport};
use crate::transport::delta::DeltaTrack;

/// What an anonymous client presents.
static NO_CREDENTIALS: Credentials = Credentials {
    token: None,
    cookie: None,
    authorization: None,
};

impl<W: AsyncWrite + SendProgress + Unpin> Session<W> {
    /// Handles what the client sent: every complete frame, in order.
    pub(super) async fn on_bytes(&mut self) -> Result<(), End> {
        let mut events = Vec::new();
        self.decoder.decode(&mut events).await;
        for event in events {
            self.on_inbound(event).await?;
        }
        Ok(())
    }

    async fn on_inbound(&mut self, event: Inbound) -> Result<(), End> {
        match event {
            Inbound::Text(text) => match self.handler {
                Handler::Commands => self.on_command(&text).await,
                Handler::Echo => self.echo(frame::OP_TEXT, text.as_bytes()).await,
            },
            Inbound::Binary(data) => match self.handler {
                Handler::Commands => {
                    let err = CommandError::new(
                        "binary_not_supported",
                        "send commands as JSON text frames",
                    );
                    self.send_text(&err.to_json()).await
                }
                Handler::Echo => self.echo(frame::OP_BINARY, &data).await,
            },
            Inbound::Ping(payload) => {
                self.write_frames(&[frame::encode(frame::OP_PONG, &payload)])
                    .await
            }
            Inbound::Pong => Ok(()),
            Inbound::Close(code) => {
                // Echo the client's code (RFC 6455 §5.5.1), then we're done.
                let _ = self.write_frames(&[frame::close(code, "")]).await;
                Err(End::Drop)
            }
            Inbound::Violation(code, reason) => Err(End::Close(code, reason.into())),
        }
    }

    async fn on_command(&mut self, text: &str) -> Result<(), End> {
        let now = Instant::now();
        let limits = &self.gw.config.limits.ws;
        let guard = self
            .guard
            .get_or_insert_with(|| Box::new(CommandGuard::new(limits, now)));
        if let Err(refusal) = guard.command(now, &self.gw.metrics.floods) {
            return self.refused(refusal).await;
        }
        let result = match command::parse(text) {
            Ok(Command::Subscribe {
                channel,
                since,
                delta,
            }) => self.subscribe(channel, since, delta).await,
            Ok(Command::Unsubscribe { channel }) => self.unsubscribe(channel).await,
            Ok(Command::Publish { channel, payload }) => self.publish(channel, payload).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(result) => result,
            Err(e) => self.send_text(&e.to_json()).await,
        }
    }

    /// Answers a command refused by a rate limit, or ends the session
    /// when the client has had too many refusals.
    async fn refused(&mut self, refusal: Refusal) -> Result<(), End> {
        match refusal {
            Refusal::Answer(e) => self.send_text(&e.to_json()).await,
            Refusal::Close(reason) => Err(End::Close(1008, reason)),
        }
    }

    async fn subscribe(
        &mut self,
        channel: ChannelName,
        since: Option<crate::protocol::channel::Since>,
        delta: bool,
    ) -> Result<Result<(), End>, CommandError> {
        if let Some(existing) = self.subscriptions.get(&channel) {
            let ack = subscribed_ack(&channel, existing.cursor, false, false);
            return Ok(self
                .send_text(&serde_json::to_vec(&ack).expect("json"))
                .await);
        }
        let max = self.gw.config.limits.max_subscriptions_per_connection;
        if self.subscriptions.len() >= max {
            return Err(CommandError::new(
                "too_many_subscriptions",
                format!("a connection may subscribe to at most {max} channels"),
            )
            .on(channel.as_str()));
        }
        self.authorize(&channel).await?;
        let limit = self.gw.config.history.size;
        let (subscription, history) = self
            .gw
            .subscribe(&channel, since, &self.queue, limit)
            .await
            .map_err(|e| {
                CommandError::new("bus_unavailable", e.to_string()).on(channel.as_str())
            })?;
        Ok(self.adopt(channel, subscription, history, delta).await)
    }

    /// Records a subscription and sends its ack and replayed history.
    pub(super) async fn adopt(
        &mut self,
        channel: ChannelName,
        subscription: Subscription,
        history: HistoryRead,
        delta: bool,
    ) -> Result<(), End> {
        let ack = subscribed_ack(
            &channel,
            Cursor::new(history.last_id, history.epoch),
            history.truncated,
            history.conflated,
        );
        // The cursor starts just before the replay; write_messages moves it.
        let cursor = Cursor::new(
            history
                .messages
                .first()
                .map(|m| m.id - 1)
                .unwrap_or(history.last_id),
            history.epoch,
        );
        self.send_text(&serde_json::to_vec(&ack).expect("json"))
            .await?;
        let is_state = self.gw.rules.resolve(channel.as_str()).mode == ChannelMode::State;
        // Found by the hub's copy of the name from now on; the request's
        // copy goes (one allocation less per idle connection).
        drop(channel);
        self.subscriptions.insert(Subscribed {
            subscription,
            cursor,
            // The first value after a (re)subscribe is whole. Only
            // `state` channels have deltas: elsewhere the flag is moot
            // (and would only cost this connection its direct mode).
            delta: (delta && is_state).then(Box::<DeltaTrack>::default),
        });
        self.write_messages(&history.messages).await
    }

    /// The channel's rule lets this client read it (keeps the earliest
    /// token expiry: the session ends then).
    async fn authorize(&mut self, channel: &ChannelName) -> Result<(), CommandError> {
        let grant = self
            .gw
            .auth
            .may_subscribe(
                channel,
                self.credentials.as_deref().unwrap_or(&NO_CREDENTIALS),
                self.client,
            )
            .await
            .map_err(|e| CommandError::new(e.code(), e.to_string()).on(channel.as_str()))?;
        self.expire_at(grant.expires);
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: ChannelName) -> Result<Result<(), End>, CommandError> {
        if self.subscriptions.remove(&channel).is_none() {
            return Err(
                CommandError::new("not_subscribed", "not subscribed to this channel")
                    .on(channel.as_str()),
            );
        }
        let ack = serde_json::json!({"type": "unsubscribed", "channel": channel.as_str()});
        Ok(self
            .send_text(&serde_json::to_vec(&ack).expect("json"))
            .await)
    }

    async fn publish(
        &mut self,
        channel: ChannelName,
        payload: Payload,
    ) -> Result<Result<(), End>, CommandError> {
        if !self.gw.rules.resolve(channel.as_str()).allow_client_publish {
            return Err(
                CommandError::new("forbidden", "clients may not publish on this channel")
                    .on(channel.as_str()),
            );
        }
        let size = payload.to_json_bytes().len();
        let now = Instant::now();
        if let Some(guard) = self.guard.as_deref_mut() {
            match guard.publish(size, now, &self.gw.metrics.floods) {
                Ok(()) => {}
                Err(Refusal::Answer(e)) => return Err(e.on(channel.as_str())),
                Err(Refusal::Close(reason)) => return Ok(Err(End::Close(1008, reason))),
            }
        }
        // Only a client allowed to read a channel may write to it.
        self.authorize(&channel).await?;
        if let Err(cap) = self.gw.client_channels.admit(&channel, now) {
            self.gw.metrics.floods.commands_refused[Limit::ClientChannels as usize].inc();
            return Err(CommandError::new(
                "too_many_channels",
                format!(
                    "clients may publish on at most {} channels (limits.ws.max_client_channels); not published",
                    cap.0
                ),
            )
            .on(channel.as_str()));
        }
        let published = self.gw.bus.publish(&channel, &payload).await.map_err(|e| {
            CommandError::new("bus_unavailable", e.to_string()).on(channel.as_str())
        })?;
        self.gw
            .metrics
            .transport(Transport::WebSocket)
            .payload_in
            .inc_by(size as u64);
        let ack = serde_json::json!({"type": "published", "channel": channel.as_str(), "id": published.id});
        Ok(self
            .send_text(&serde_json::to_vec(&ack).expect("json"))
            .await)
    }
}

/// `{"type":"subscribed",…}`: where the client now is on `channel`, with
/// the cursor (`N-E`) to resume from.
fn subscribed_ack(
    channel: &ChannelName,
    at: Cursor,
    truncated: bool,
    conflated: bool,
) -> serde_json::Value {
    serde_json::json!({
        "type": "subscribed",
        "channel": channel.as_str(),
        "last_id": at.id,
        // null while the channel has no sequence yet.
        "epoch": (!at.epoch.is_none()).then(|| at.epoch.to_string()),
        "cursor": at.text(),
        "truncated": truncated,
        "conflated": conflated,
    })
}
