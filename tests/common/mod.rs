//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod bayeux_client;
pub mod bayeux_peer;
pub mod bridge;
pub mod certs;
pub mod fake_server;
pub mod gate;
pub mod inbox;
pub mod mosquitto;
pub mod mqtt_peer;
pub mod no_upgrade;
pub mod peers;
pub mod salesforce;
pub mod tls_proxy;
