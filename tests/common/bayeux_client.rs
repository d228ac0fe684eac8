//! Helpers for driving the library's Bayeux client in tests: start one, wait for events.

use std::sync::Arc;
use std::time::Duration;

use bayeux_mqtt_bridge::backoff::BackoffOptions;
use bayeux_mqtt_bridge::bayeux::client::Events;
use bayeux_mqtt_bridge::bayeux::{Client, ClientOptions, Event, Extension, Message};

/// How long any single awaited event may take before the test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Options for `url` with a fast backoff, so outages in tests recover quickly.
pub fn fast_options(url: &str) -> ClientOptions {
    let mut options = ClientOptions::new(url.parse().expect("test URL"));
    options.backoff = BackoffOptions {
        increment: Duration::from_millis(250),
        max: Duration::from_secs(2),
        jitter: 0.2,
    };
    options
}

/// Starts a client with `options` plus `extensions`.
pub fn start(mut options: ClientOptions, extensions: Vec<Arc<dyn Extension>>) -> (Client, Events) {
    options.extensions.extend(extensions);
    Client::new(options).expect("client options are valid")
}

/// Waits for the first event matching `pred`, failing with `what` and the events seen.
pub async fn wait_event(events: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(event) = events.recv().await {
            if pred(&event) {
                return Some(event);
            }
            seen.push(event);
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("waiting for {what}: the client stopped; events: {seen:#?}"),
        Err(_) => panic!("waiting for {what}: timed out; events: {seen:#?}"),
    }
}

/// Waits until the server confirmed `pattern`.
pub async fn confirmed(events: &mut Events, pattern: &str) {
    wait_event(
        events,
        &format!("confirmation of {pattern}"),
        |e| matches!(e, Event::SubscriptionConfirmed { subscription } if subscription == pattern),
    )
    .await;
}

/// The next delivery of a subscription, failing after [`EVENT_TIMEOUT`].
pub async fn next_message(
    subscription: &mut bayeux_mqtt_bridge::bayeux::Subscription,
    what: &str,
) -> Message {
    match tokio::time::timeout(EVENT_TIMEOUT, subscription.recv()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("waiting for {what}: subscription closed"),
        Err(_) => panic!("waiting for {what}: timed out"),
    }
}
