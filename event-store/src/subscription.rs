//! The consuming side of the relay: a durable JetStream pull consumer that hands out
//! the relayed envelopes in batches.
//!
//! JetStream is transport, not record (ARCHITECTURE.md): a delivery carries the event's
//! position (header [`POSITION_HEADER`]) and, when its body decodes, the envelope. A
//! consumer checks positions against its own checkpoint, fills any gap from PostgreSQL
//! and acknowledges only after its own commit, so a redelivered, duplicated or lost
//! message never changes what it applies. This module only moves messages; deciding what
//! a position means is the consumer's job.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::{FutureExt, StreamExt};
use tracing::{instrument, warn};

use crate::bus::{self, StreamLimits};
use crate::envelope::RecordedEvent;
use crate::relay::{POSITION_HEADER, RelayError};

/// How long the server waits for an ack before redelivering. Long enough for a batch to
/// commit under load (a batch commits in milliseconds; a slow disk, in seconds), short
/// enough that a consumer that died mid-batch is replaced quickly.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// Unacknowledged messages the server lets the consumer hold: two full batches of the
/// largest size a projector fetches, so the next batch is already in flight while one
/// commits.
pub const MAX_ACK_PENDING: i64 = 20_000;

/// Idle heartbeat of a pull request. A missing heartbeat is how a consumer notices a
/// dead server or connection; five seconds notices within a few seconds.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// Which durable consumer to follow.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    pub stream_name: String,
    pub subject_prefix: String,
    /// The stream's replication and retention, applied if the subscription creates it.
    /// The consumer inherits the stream's replicas.
    pub stream_limits: StreamLimits,
    /// The durable consumer's name: one per projection, so each keeps its own place.
    pub durable_name: String,
    /// Most messages one pull request asks for, and one [`Subscription::next_batch`]
    /// returns.
    pub max_batch: usize,
}

/// Why the subscription could not deliver; the caller reconnects.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("could not create or find the JetStream stream")]
    Stream(#[from] RelayError),
    #[error("could not create or find the durable consumer")]
    Consumer(#[from] jetstream::stream::ConsumerError),
    #[error("could not start pulling messages")]
    Pull(#[from] jetstream::consumer::StreamError),
    #[error("pulling messages failed")]
    Messages(#[from] pull::MessagesError),
    #[error("the consumer's message stream ended")]
    Ended,
    #[error("could not acknowledge a message")]
    Ack(#[source] async_nats::Error),
}

/// One message: the position it claims and the envelope, when the body decoded.
#[derive(Debug)]
pub struct Delivery {
    /// From the position header, or from the body when the header is missing; `None`
    /// when neither can be read (not one of the relay's messages).
    pub position: Option<i64>,
    /// `None` when the body is not an envelope; the consumer reads the event from
    /// PostgreSQL instead.
    pub event: Option<RecordedEvent>,
    message: jetstream::Message,
}

impl Delivery {
    /// Acknowledges the message; call only once what it carried is committed.
    pub async fn ack(&self) -> Result<(), SubscriptionError> {
        self.message.ack().await.map_err(SubscriptionError::Ack)
    }

    /// The message's `traceparent` header (the relay's publish span, or the request's
    /// context), for the consumer to continue; `None` without one.
    pub fn traceparent(&self) -> Option<&str> {
        self.message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(crate::relay::TRACEPARENT_HEADER))
            .map(|value| value.as_str())
    }

    fn from_message(message: jetstream::Message) -> Self {
        let event: Option<RecordedEvent> = serde_json::from_slice(&message.payload).ok();
        let header_position = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(POSITION_HEADER))
            .and_then(|value| value.as_str().parse::<i64>().ok());
        let position = header_position.or_else(|| event.as_ref().map(|event| event.position));
        if let (Some(position), Some(event)) = (position, &event)
            && position != event.position
        {
            warn!(
                header = position,
                body = event.position,
                "position header and body disagree; trusting neither"
            );
            return Self {
                position: Some(position.min(event.position)),
                event: None,
                message,
            };
        }
        Self {
            position,
            event,
            message,
        }
    }
}

/// A live pull from one durable consumer.
pub struct Subscription {
    messages: pull::Stream,
    max_batch: usize,
}

impl Subscription {
    /// Makes sure the stream and the durable consumer exist, then starts pulling.
    ///
    /// A new consumer starts with the messages published from now on: its owner catches
    /// up from PostgreSQL first (which holds everything the stream does, and more), so
    /// replaying the stream's whole history would only be skipped again.
    #[instrument(skip_all, fields(durable = %config.durable_name))]
    pub async fn connect(
        client: async_nats::Client,
        config: &SubscriptionConfig,
    ) -> Result<Self, SubscriptionError> {
        let jetstream = jetstream::new(client);
        let stream = bus::ensure_stream(
            &jetstream,
            &config.stream_name,
            &config.subject_prefix,
            &config.stream_limits,
        )
        .await?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &config.durable_name,
                pull::Config {
                    durable_name: Some(config.durable_name.clone()),
                    deliver_policy: jetstream::consumer::DeliverPolicy::New,
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: MAX_ACK_PENDING,
                    filter_subject: format!("{}.>", config.subject_prefix),
                    ..Default::default()
                },
            )
            .await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(config.max_batch)
            .heartbeat(HEARTBEAT)
            .messages()
            .await?;
        Ok(Self {
            messages,
            max_batch: config.max_batch,
        })
    }

    /// Waits up to `wait` for a first message, then takes every message already
    /// received, up to the batch size. Empty when nothing arrived in time.
    pub async fn next_batch(&mut self, wait: Duration) -> Result<Vec<Delivery>, SubscriptionError> {
        let first = match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_elapsed) => return Ok(Vec::new()),
            Ok(None) => return Err(SubscriptionError::Ended),
            Ok(Some(message)) => message?,
        };
        let mut batch = Vec::with_capacity(self.max_batch);
        batch.push(Delivery::from_message(first));
        while batch.len() < self.max_batch {
            match self.messages.next().now_or_never() {
                Some(Some(message)) => batch.push(Delivery::from_message(message?)),
                Some(None) => return Err(SubscriptionError::Ended),
                None => break,
            }
        }
        Ok(batch)
    }
}

/// Deletes a durable consumer, for tests and operators retiring a projection.
pub async fn delete_consumer(
    client: async_nats::Client,
    stream_name: &str,
    durable_name: &str,
) -> Result<(), async_nats::Error> {
    let jetstream = jetstream::new(client);
    let stream = jetstream.get_stream(stream_name).await?;
    stream.delete_consumer(durable_name).await?;
    Ok(())
}
