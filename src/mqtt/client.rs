//! [`start`] and the cloneable [`MqttHandle`] the rest of the daemon talks to.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, info_span, warn};

use super::driver::{Driver, Shared};
use super::engine::{Engine, publish_packet_size};
use super::error::MqttError;
use super::options::{MqttOptions, Protocol};
use super::outcome::OutcomeSender;
use super::tls;
use super::topic::TopicName;
use super::topic::{validate_filter, validate_topic};
use super::tracker::{OutMessage, PublishReply, Tracker};
use super::{AckToken, MqttEvent, Properties, QoS, SubscriptionSpec};

/// Publishes that may wait in rumqttc's request channel at once. More callers wait in
/// [`MqttHandle::publish_queued`] (back-pressure); the channel stays short so that acks for
/// incoming messages, which queue behind publishes, are not delayed much.
const PUBLISH_SLOTS: usize = 64;

/// Validates `options`, spawns the client task on the current Tokio runtime and returns the
/// handle and the event channel. Connecting happens in the background: watch for
/// [`MqttEvent::Connected`]. `subscriptions` are made on the first connect and after every
/// session loss. Fails for invalid options or filters, unreadable TLS files, or when not
/// called within a Tokio runtime.
pub fn start(
    options: MqttOptions,
    subscriptions: Vec<SubscriptionSpec>,
) -> Result<(MqttHandle, mpsc::Receiver<MqttEvent>), MqttError> {
    options.validate()?;
    for spec in &subscriptions {
        validate_filter(&spec.filter).map_err(|reason| MqttError::InvalidFilter {
            filter: spec.filter.clone(),
            reason,
        })?;
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| MqttError::NoRuntime)?;
    let tls = options.tls.as_ref().map(tls::client_config).transpose()?;
    let span = info_span!("mqtt", broker = %options.broker());

    // Room for every publish slot, the acks of a full receive window (twice, for the window
    // of a connection that just dropped) and a few (un)subscriptions.
    let capacity = PUBLISH_SLOTS + 2 * usize::from(options.inflight) + 64;
    let (sender, engine) = Engine::new(&options, tls, capacity);
    let permits = Arc::new(Semaphore::new(PUBLISH_SLOTS));
    let idle = Arc::new(Notify::new());
    let tracker = Tracker::new(
        Box::new(sender),
        Arc::clone(&permits),
        Arc::clone(&idle),
        subscriptions,
        options.max_packet_size,
    );
    let shared = Arc::new(Shared::new(
        tracker,
        permits,
        idle,
        options.protocol,
        span.clone(),
    ));
    let (events_tx, events_rx) = mpsc::channel(options.event_buffer);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let driver = Driver::new(
        engine,
        Arc::clone(&shared),
        events_tx,
        &options,
        stop_rx,
        stopped_tx,
    );
    runtime.spawn(driver.run().instrument(span));
    let handle = MqttHandle {
        inner: Arc::new(Inner {
            shared,
            stop: stop_tx,
            stopped: stopped_rx,
        }),
    };
    Ok((handle, events_rx))
}

/// A handle to one MQTT client; clones share the connection. When the last clone is dropped
/// the client stops at once, without DISCONNECT (so the broker publishes the will); call
/// [`MqttHandle::disconnect`] for a graceful end.
#[derive(Clone)]
pub struct MqttHandle {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Dropping it (with the last handle) also stops the client task.
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
}

impl fmt::Debug for MqttHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tracker = self.inner.shared.lock();
        f.debug_struct("MqttHandle")
            .field("connected", &tracker.is_connected())
            .field("stopped", &tracker.is_stopped())
            .field("outstanding", &tracker.outstanding())
            .finish()
    }
}

impl MqttHandle {
    /// Publishes and resolves `Ok` when the broker acknowledged the message (QoS 1 PUBACK,
    /// QoS 2 PUBCOMP) or, for QoS 0, when it was written.
    ///
    /// Survives disconnects: a message not yet acknowledged is sent again after reconnect
    /// (also when the broker lost the session), so callers see at-least-once, and the broker
    /// may get a duplicate. Fails only for a packet over the maximum packet size, an invalid
    /// topic, the client shutting down, or (MQTT 5) a broker refusing it with a reason code.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<(), MqttError> {
        self.publish_queued(topic, payload, qos, retain)
            .await?
            .await
    }

    /// Hands a publish to the client and returns, once it is queued, the future of its
    /// acknowledgement (see [`MqttHandle::publish`]). Messages go out in the order of these
    /// calls; awaiting this in a loop keeps order while acknowledgements are awaited
    /// concurrently. Waits while many publishes are queued already (back-pressure). Dropping
    /// the returned future does not cancel the publish.
    pub async fn publish_queued(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<PublishCompletion, MqttError> {
        self.publish_queued_with(topic, payload, qos, retain, None)
            .await
    }

    /// [`MqttHandle::publish_queued`] with MQTT 5 `properties` (not sent on MQTT 3.1.1).
    pub async fn publish_queued_with(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<Arc<Properties>>,
    ) -> Result<PublishCompletion, MqttError> {
        let (reply, completion) = oneshot::channel();
        let message = Publish::new(topic.to_owned(), payload, qos, retain, properties);
        self.enqueue(message, |_| PublishReply::Once(reply)).await?;
        Ok(PublishCompletion { rx: completion })
    }

    /// Like [`MqttHandle::publish_queued`], but the outcome comes as an [`Outcome`] with
    /// `tag` on the channel of `outcomes`, instead of as a future: for a caller that
    /// publishes continuously, without a channel per message. Once this returns `Ok`, exactly
    /// one outcome with `tag` follows (`Err(Shutdown)` if the client stops first); after an
    /// `Err` none does.
    ///
    /// [`Outcome`]: super::Outcome
    pub async fn publish_tagged(
        &self,
        message: Publish,
        tag: u64,
        outcomes: &OutcomeSender,
    ) -> Result<(), MqttError> {
        self.enqueue(message, |topic| {
            PublishReply::Tagged(outcomes.promise(tag, topic.clone()))
        })
        .await
    }

    async fn enqueue(
        &self,
        message: Publish,
        reply: impl FnOnce(&TopicName) -> PublishReply,
    ) -> Result<(), MqttError> {
        let Publish {
            topic,
            payload,
            qos,
            retain,
            mut properties,
        } = message;
        if let Err(reason) = validate_topic(&topic) {
            return Err(MqttError::InvalidTopic { topic, reason });
        }
        let shared = &self.inner.shared;
        if shared.protocol == Protocol::V311 || properties.as_ref().is_some_and(|p| p.is_empty()) {
            properties = None;
        }
        if let Some(Err(reason)) = properties.as_ref().map(|p| p.validate()) {
            return Err(MqttError::InvalidProperty { topic, reason });
        }
        let properties_len = properties.as_ref().map_or(0, |p| p.encoded_len());
        let size = publish_packet_size(shared.protocol, &topic, payload.len(), qos, properties_len);
        let max = shared.lock().packet_limit();
        if size > max {
            return Err(MqttError::PayloadTooLarge { topic, size, max });
        }
        let permit = shared
            .permits
            .acquire()
            .await
            .map_err(|_| MqttError::Shutdown)?;
        let topic = TopicName::from(topic);
        let reply = reply(&topic);
        let message = OutMessage {
            topic,
            payload,
            qos,
            retain,
            properties,
        };
        shared.lock().enqueue_publish(message, size, reply)?;
        // The tracker gives the permit back when rumqttc takes the message off its channel.
        permit.forget();
        Ok(())
    }

    /// Acknowledges an incoming QoS 1/2 message. Acks are released to the broker strictly in
    /// receive order (MQTT-4.6.0-2): acking message 2 before 1 holds 2's PUBACK until 1 is
    /// acked. A no-op for QoS 0, and for a message that arrived on a connection that has since
    /// dropped (the broker sends it again).
    pub fn ack(&self, token: AckToken) {
        if token.needs_ack() {
            self.inner.shared.lock().ack(token);
        }
    }

    /// Subscribes (or changes the subscription of the same filter) and resolves when the
    /// broker confirmed it. The subscription joins the set made again after a session loss,
    /// also when the broker refused it this time. Waits for a connection if there is none.
    pub async fn subscribe(&self, spec: SubscriptionSpec) -> Result<(), MqttError> {
        validate_filter(&spec.filter).map_err(|reason| MqttError::InvalidFilter {
            filter: spec.filter.clone(),
            reason,
        })?;
        let (reply, result) = oneshot::channel();
        self.inner.shared.lock().enqueue_subscribe(spec, reply)?;
        result.await.unwrap_or(Err(MqttError::Shutdown))
    }

    /// Unsubscribes and removes the filter from the set; resolves when the broker confirmed.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), MqttError> {
        validate_filter(filter).map_err(|reason| MqttError::InvalidFilter {
            filter: filter.to_owned(),
            reason,
        })?;
        let (reply, result) = oneshot::channel();
        self.inner
            .shared
            .lock()
            .enqueue_unsubscribe(filter.to_owned(), reply)?;
        result.await.unwrap_or(Err(MqttError::Shutdown))
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.lock().is_connected()
    }

    /// Ends the client gracefully, within `deadline`: refuses new publishes, waits for the
    /// ones in flight to be acknowledged, sends DISCONNECT (MQTT 5: normal disconnection, so
    /// the broker does not publish the will), and stops the task. Publishes still
    /// unacknowledged at the deadline fail with [`MqttError::Shutdown`]. Returns once the task
    /// stopped; calling it again (or from another clone) is harmless.
    pub async fn disconnect(&self, deadline: Duration) {
        let span = self.inner.shared.span.clone();
        self.disconnect_inner(deadline).instrument(span).await;
    }

    async fn disconnect_inner(&self, deadline: Duration) {
        let shared = &self.inner.shared;
        // A year stands for "no deadline" without overflowing `Instant`.
        let deadline = deadline.min(Duration::from_secs(365 * 24 * 3600));
        let end = Instant::now() + deadline;
        // Keep a little of the deadline for the DISCONNECT itself.
        let acks_end = end - (deadline / 4).min(Duration::from_secs(1));
        shared.lock().close();
        loop {
            let idle = shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let outstanding = {
                let tracker = shared.lock();
                if tracker.is_stopped() {
                    0
                } else {
                    tracker.outstanding()
                }
            };
            if outstanding == 0 {
                break;
            }
            if tokio::time::timeout_at(acks_end, idle).await.is_err() {
                warn!(
                    outstanding,
                    "Disconnecting with publishes not acknowledged yet."
                );
                break;
            }
        }
        let sent = {
            let mut tracker = shared.lock();
            let connected = tracker.is_connected() && !tracker.is_stopped();
            if connected {
                tracker.request_disconnect();
            }
            connected
        };
        if sent {
            let _ = tokio::time::timeout_at(end, self.wait_stopped()).await;
        }
        self.inner.stop.send_replace(true);
        self.wait_stopped().await;
    }

    async fn wait_stopped(&self) {
        let mut stopped = self.inner.stopped.clone();
        // An error means the task is gone (e.g. its runtime shut down): stopped as well.
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }
}

/// A publish for [`MqttHandle::publish_tagged`].
#[derive(Debug, Clone)]
pub struct Publish {
    /// The topic name.
    pub topic: String,
    /// The message body.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// The retain flag.
    pub retain: bool,
    /// MQTT 5 properties; not sent on MQTT 3.1.1.
    pub properties: Option<Arc<Properties>>,
}

impl Publish {
    /// A publish of `payload` to `topic`.
    pub fn new(
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<Arc<Properties>>,
    ) -> Publish {
        Publish {
            topic,
            payload,
            qos,
            retain,
            properties,
        }
    }
}

/// The acknowledgement of a queued publish; resolves like [`MqttHandle::publish`].
#[derive(Debug)]
#[must_use = "the publish happens anyway; await this to learn whether the broker acknowledged it"]
pub struct PublishCompletion {
    rx: oneshot::Receiver<Result<(), MqttError>>,
}

impl Future for PublishCompletion {
    type Output = Result<(), MqttError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(MqttError::Shutdown)))
    }
}
