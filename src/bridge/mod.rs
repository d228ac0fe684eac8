//! The bridge daemon: joins the Bayeux client and the MQTT client according to the routes.
//!
//! [`mapping`] compiles the `[[route]]` tables and rewrites names; [`payload`] converts
//! message bodies. Both are pure.

pub mod mapping;
pub mod payload;
