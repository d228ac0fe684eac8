//! Bayeux → MQTT: deliveries of each route's subscription become MQTT publishes.
//!
//! Each message takes a permit from the direction's semaphore before it is read, and holds it
//! until the broker has acknowledged the publish, so at most `queue_capacity` messages are in
//! flight or waiting for the broker. When they are all taken the loop stops reading, the Bayeux
//! client's subscription buffer fills, and the client stops polling the server: back-pressure,
//! not drops. Publishes are handed to the MQTT client in delivery order.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, trace, warn};

use super::payload::bayeux_to_mqtt_payload;
use super::stats::Direction;
use super::{Shared, Slot};
use crate::bayeux::{Message, Subscription};
use crate::mqtt::{MqttError, MqttHandle};

/// Runs until `stop` turns true or every subscription has ended.
pub(super) async fn run(
    shared: Arc<Shared>,
    mqtt: MqttHandle,
    subscriptions: Vec<(usize, Subscription)>,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let streams = subscriptions.into_iter().map(|(route, subscription)| {
        futures_util::stream::unfold(subscription, move |mut s| async move {
            s.recv().await.map(|message| ((route, message), s))
        })
        .boxed()
    });
    let mut deliveries = futures_util::stream::select_all(streams);
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            next = deliveries.next() => next,
        };
        let Some((route, message)) = next else { break };
        let slot = Slot::new(permit, &shared.b2m_in_flight);
        forward(&shared, &mqtt, route, message, slot).await;
    }
    debug!("Bayeux → MQTT pipeline stopped taking messages.");
}

async fn forward(
    shared: &Arc<Shared>,
    mqtt: &MqttHandle,
    route_index: usize,
    message: Message,
    permit: Slot,
) {
    let Some(route) = shared.routes.get(route_index) else {
        return;
    };
    shared
        .stats
        .received(Direction::BayeuxToMqtt, route.number());
    let data =
        serde_json::to_vec(message.data.as_ref().unwrap_or(&Value::Null)).unwrap_or_default();
    if shared
        .bayeux_echoes()
        .take(&message.channel, &data, Instant::now())
    {
        shared.stats.echo(Direction::BayeuxToMqtt);
        debug!(channel = %message.channel, route = route.number(), "Own publish echoed by the Bayeux server; not forwarded back.");
        return;
    }
    let Some(topic) = route.channel_to_topic(&message.channel) else {
        shared.drop_message(
            Direction::BayeuxToMqtt,
            "unmapped",
            route.number(),
            &message.channel,
            "the channel has no MQTT topic under this route",
        );
        return;
    };
    let payload = bayeux_to_mqtt_payload(&message, route.payload);
    if let Some(mut echoes) = shared.mqtt_echoes() {
        echoes.record(&topic, &payload, Instant::now());
    }
    trace!(channel = %message.channel, %topic, payload = %String::from_utf8_lossy(&payload), "Forwarding to MQTT.");
    let qos = super::qos_of(route.qos);
    match mqtt
        .publish_queued(&topic, payload.into(), qos, route.retain)
        .await
    {
        Ok(completion) => {
            let shared = Arc::clone(shared);
            let number = route.number();
            tokio::spawn(async move {
                let _permit = permit;
                match completion.await {
                    Ok(()) => shared.stats.forwarded(Direction::BayeuxToMqtt, number),
                    Err(e) => {
                        shared.count_publish_error("mqtt", reason(&e));
                        shared.drop_message(
                            Direction::BayeuxToMqtt,
                            reason(&e),
                            number,
                            &topic,
                            &e.to_string(),
                        )
                    }
                }
            });
        }
        Err(e) => {
            warn!(%topic, error = %e, "MQTT refused the publish.");
            shared.count_publish_error("mqtt", reason(&e));
            shared.drop_message(
                Direction::BayeuxToMqtt,
                reason(&e),
                route.number(),
                &topic,
                &e.to_string(),
            );
        }
    }
}

/// The drop reason for an MQTT publish failure.
fn reason(e: &MqttError) -> &'static str {
    e.reason()
}
