//! The delivery worker: polls the outbox, sends due entries (one in flight per notifier, a
//! bounded number overall), records each attempt through the writer, and prunes by age.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::schedule::{retry_delay, verdict_for_status, within_retry_window, Verdict};
use super::{signing, ATTEMPT_HEADER, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER};
use crate::config::NotificationsConfig;
use crate::model::AppId;
use crate::pipeline::fetch::{pinned_client, FetchError};
use crate::store::codec::{TAG_DELIVERY, TAG_EVENT, TAG_OUTBOX, TAG_USER_EVENT};
use crate::store::timeline_codec::{StoredDelivery, StoredOutbox};
use crate::store::writer::{Writer, MAX_PRUNE_KEYS};
use crate::store::Store;

/// Outbox entries looked at per poll: bounds one poll's work when a backlog builds up (the
/// oldest come first, and delivered ones leave the outbox).
const MAX_OUTBOX_SCAN: usize = 10_000;
/// How often retention runs: ages are in days, so hourly is precise enough and costs little.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest error text kept in a delivery record.
const MAX_ERROR_CHARS: usize = 300;

/// Notifiers with an attempt in flight. A `std` mutex: held only to insert or remove, never
/// across an `.await`.
type InFlight = Arc<Mutex<HashSet<[u8; 16]>>>;

/// Starts the worker; it stops when `shutdown` is cancelled (an attempt in flight is then
/// abandoned unrecorded, and made again after the restart with the same delivery id).
pub(crate) fn spawn(
    store: Store,
    writer: Writer,
    config: NotificationsConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let in_flight: InFlight = Arc::default();
        let permits = match config.max_concurrent {
            0 => None,
            n => Some(Arc::new(Semaphore::new(n))),
        };
        let mut last_prune: Option<Instant> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(config.poll_interval) => {}
                () = shutdown.cancelled() => return,
            }
            let scan = store.clone();
            let entries =
                match tokio::task::spawn_blocking(move || scan.outbox(MAX_OUTBOX_SCAN)).await {
                    Ok(Ok(entries)) => entries,
                    Ok(Err(err)) => {
                        tracing::error!(error = %err, "reading the notification outbox");
                        continue;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "outbox read task");
                        continue;
                    }
                };
            let now = now_nanos();
            for entry in entries {
                if entry.next_attempt_at > now {
                    continue;
                }
                let permit = match &permits {
                    Some(permits) => match permits.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => break,
                    },
                    None => None,
                };
                {
                    let mut busy = in_flight.lock().expect("invariant: never poisoned");
                    if !busy.insert(entry.notifier_id) {
                        continue;
                    }
                }
                let (store, writer, config) = (store.clone(), writer.clone(), config.clone());
                let in_flight = in_flight.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let notifier = entry.notifier_id;
                    tokio::select! {
                        () = attempt(&store, &writer, &config, entry) => {}
                        () = shutdown.cancelled() => {}
                    }
                    in_flight
                        .lock()
                        .expect("invariant: never poisoned")
                        .remove(&notifier);
                    drop(permit);
                });
            }
            if let Some(max_age) = config.events_max_age {
                if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL) {
                    last_prune = Some(Instant::now());
                    prune(&store, &writer, max_age).await;
                }
            }
        }
    })
}

fn now_nanos() -> i64 {
    // i64 nanoseconds cover 1677..2262.
    OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// How one POST went.
struct Sent {
    verdict: Verdict,
    status_code: Option<u16>,
    error: Option<String>,
}

/// Makes one attempt of `entry` and records it.
async fn attempt(
    store: &Store,
    writer: &Writer,
    config: &NotificationsConfig,
    entry: StoredOutbox,
) {
    let read = store.clone();
    let (app, id) = (
        AppId::from_bytes(entry.app_id),
        uuid::Uuid::from_bytes(entry.notifier_id),
    );
    let notifier = match tokio::task::spawn_blocking(move || read.notifier(app, id)).await {
        Ok(Ok(notifier)) => notifier,
        Ok(Err(err)) => {
            tracing::error!(error = %err, "reading a notifier");
            return;
        }
        Err(err) => {
            tracing::error!(error = %err, "notifier read task");
            return;
        }
    };
    let Some(notifier) = notifier else {
        // The notifier (or its app) is gone: drop the entry.
        if let Err(err) = writer.finish_delivery(entry, None, None).await {
            tracing::warn!(error = %err, "dropping an outbox entry of a deleted notifier");
        }
        return;
    };
    let number = entry.attempts.saturating_add(1);
    let at = now_nanos();
    let started = Instant::now();
    let sent = post(
        config,
        &notifier.webhook_url,
        &notifier.secret,
        &entry,
        number,
    )
    .await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let age_nanos = now_nanos().saturating_sub(entry.created_at).max(0);
    let age = Duration::from_nanos(u64::try_from(age_nanos).unwrap_or(0));
    let verdict = within_retry_window(sent.verdict, age, config.retry_for);
    let next = (verdict == Verdict::Retry).then(|| {
        let delay = retry_delay(
            number,
            config.first_retry_delay,
            config.max_retry_delay,
            rand::rng().random::<f64>(),
        );
        StoredOutbox {
            attempts: number,
            next_attempt_at: at.saturating_add(nanos(delay)),
            ..entry.clone()
        }
    });
    let delivery = StoredDelivery {
        delivery_id: entry.delivery_id,
        event_type: entry.event_type.clone(),
        attempt: number,
        at,
        duration_ms,
        status_code: sent.status_code,
        outcome: match verdict {
            Verdict::Delivered => "delivered",
            Verdict::Retry => "retrying",
            Verdict::Final => "failed",
        }
        .to_owned(),
        error: sent.error,
        next_retry_at: next.as_ref().map(|n| n.next_attempt_at),
    };
    if let Err(err) = writer.finish_delivery(entry, Some(delivery), next).await {
        // Unrecorded: the entry stays due and is attempted again (same delivery id).
        tracing::error!(error = %err, "recording a delivery attempt");
    }
}

async fn post(
    config: &NotificationsConfig,
    url: &str,
    secret: &str,
    entry: &StoredOutbox,
    number: u32,
) -> Sent {
    let failed = |verdict, error: String| Sent {
        verdict,
        status_code: None,
        error: Some(error.chars().take(MAX_ERROR_CHARS).collect()),
    };
    let parsed = match reqwest::Url::parse(url) {
        Ok(url) => url,
        Err(err) => return failed(Verdict::Final, format!("invalid URL: {err}")),
    };
    let client = match pinned_client(&parsed, config.allow_private).await {
        Ok(client) => client,
        Err(err @ FetchError::Resolve { .. }) | Err(err @ FetchError::NoAddress { .. }) => {
            return failed(Verdict::Retry, err.to_string())
        }
        Err(err) => return failed(Verdict::Final, err.to_string()),
    };
    let delivery_id = uuid::Uuid::from_bytes(entry.delivery_id).to_string();
    let mut request = client
        .post(parsed)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::USER_AGENT, "deployd-webhook")
        .header(
            SIGNATURE_HEADER,
            signing::signature(secret, entry.body.as_bytes()),
        )
        .header(DELIVERY_HEADER, delivery_id)
        .header(EVENT_HEADER, entry.event_type.as_str())
        .header(ATTEMPT_HEADER, number.to_string())
        .body(entry.body.clone());
    if !config.request_timeout.is_zero() {
        request = request.timeout(config.request_timeout);
    }
    match request.send().await {
        Ok(response) => {
            let code = response.status().as_u16();
            Sent {
                verdict: verdict_for_status(code),
                status_code: Some(code),
                error: None,
            }
        }
        Err(err) => failed(Verdict::Retry, format!("{err}")),
    }
}

/// Deletes events, outbox entries and attempts older than `max_age`, in bounded commits.
async fn prune(store: &Store, writer: &Writer, max_age: Duration) {
    let now_ms =
        u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let before_ms = now_ms.saturating_sub(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
    for tag in [TAG_EVENT, TAG_USER_EVENT, TAG_DELIVERY, TAG_OUTBOX] {
        loop {
            let read = store.clone();
            let keys = tokio::task::spawn_blocking(move || {
                read.expired_keys(tag, before_ms, MAX_PRUNE_KEYS)
            })
            .await;
            let keys = match keys {
                Ok(Ok(keys)) if !keys.is_empty() => keys,
                Ok(Ok(_)) => break,
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "reading expired timeline keys");
                    break;
                }
                Err(err) => {
                    tracing::error!(error = %err, "retention task");
                    break;
                }
            };
            let count = keys.len();
            if let Err(err) = writer.prune(keys).await {
                tracing::error!(error = %err, "pruning expired timeline keys");
                break;
            }
            tracing::info!(tag, count, "pruned expired timeline records");
        }
    }
}
