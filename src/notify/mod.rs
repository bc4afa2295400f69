//! Webhook notifiers: delivering the timeline's events to the URLs apps registered.
//!
//! The writer puts one outbox entry per (event, notifier that selects it) in the very commit
//! that records the event (`store::writer`), so an event is never lost between being stored and
//! being queued. This module's worker ([`spawn`]) reads the outbox, POSTs each due entry
//! (signed, `signing`), and writes each attempt's result back through the writer: the entry is
//! deleted in the commit that records its success, so a delivery is never resent after that;
//! a crash before it resends it with the same delivery id (at-least-once). Retries follow
//! `schedule`. Retention pruning of events, outbox entries and attempts is the worker's too.
//!
//! It never runs on the writer thread and never writes the store directly; a slow or dead
//! webhook holds at most one in-flight attempt of its own notifier, never ingest or another
//! notifier's deliveries.

pub mod schedule;
pub mod signing;
mod worker;

pub(crate) use worker::spawn;

/// Header carrying the body's HMAC-SHA256 signature (`sha256=<hex>`).
pub const SIGNATURE_HEADER: &str = "X-Deployd-Signature";
/// Header carrying the delivery id: the same on every attempt of one delivery.
pub const DELIVERY_HEADER: &str = "X-Deployd-Delivery";
/// Header carrying the event's type (`deployment`, `new_notifier`…).
pub const EVENT_HEADER: &str = "X-Deployd-Event";
/// Header carrying the attempt number (1 for the first).
pub const ATTEMPT_HEADER: &str = "X-Deployd-Attempt";
