//! HTTP routes, JSON errors, auth, the WebSocket stream and the push endpoint.
pub mod protocol;
