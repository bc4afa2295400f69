//! deployd: a self-hosted deployments service, wire-compatible with Scalingo's deployments API.
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod hub;
pub mod lines;
pub mod model;
pub mod pipeline;
pub mod server;
pub mod sessions;
pub mod sources;
pub mod status;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod ws;
