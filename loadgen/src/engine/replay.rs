//! Replay's arrival loop: recorded requests sent at their recorded times (or at a fixed rate),
//! each as many times as amplification says, held to the cap, timed from when each was due.
//!
//! The loop keeps a position in the recording that advances with the clock, times the speed and
//! the control's factor (a pause or a back-off slows the recording itself: nothing is skipped,
//! and nothing is owed). A request is due when the position passes its recorded offset; it is
//! timed from that instant (coordinated omission corrected, as in `run`).
//!
//! The cap is a token bucket refilled at the cap's rate with at most 50 ms of burst. When it is
//! empty the request at hand waits, and the position stops at that request: the replay slows
//! down to the cap and does not race through what it skipped when the cap rises again.

use std::sync::{Arc, atomic::Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;

use super::journey::{Active, InFlight, marks};
use super::{AbortReason, Driver, Ending, Interval, MAX_ARRIVALS_PER_PASS, Shared, stopped_ending};
use crate::replay::plan::{Feed as Item, Prepared, Request, Timing};
use crate::stats::{ErrorClass, Outcome};

/// What the engine needs to replay: the reader's channel and how to pace it.
#[derive(Debug)]
pub(crate) struct Feed {
    /// Requests from the reader thread, in order, in batches.
    pub(crate) rx: tokio::sync::mpsc::Receiver<Item>,
    /// The rest of the last batch.
    pub(crate) buffer: std::collections::VecDeque<Prepared>,
    /// Recorded times (with a speed) or a fixed rate.
    pub(crate) timing: Timing,
    /// Stop sending after this long (the run then drains, and completes).
    pub(crate) duration: Option<Duration>,
    /// Most replayed requests in flight; a copy due beyond it is dropped and counted.
    pub(crate) max_in_flight: usize,
}

/// The most burst the cap's bucket holds, in seconds of the cap's rate (at least one request).
const CAP_BURST: f64 = 0.05;

/// A record with copies still to send.
struct AtHand {
    prepared: Prepared,
    left: u32,
}

pub(super) async fn drive<F: FnMut(&Interval<'_>) -> Option<AbortReason> + Send>(
    d: &mut Driver<F>,
    mut feed: Feed,
) -> Ending {
    let (shared, stop) = (d.shared.clone(), d.stop.clone());
    // Position units: recorded seconds (recorded timing) or requests (a fixed rate); `pace` is
    // how many of them pass per second at factor 1.
    let (pace, by_rate) = match feed.timing {
        Timing::Recorded { speed } => (speed, false),
        Timing::Rate(rate) => (rate, true),
    };
    let deadline = feed.duration.and_then(|limit| d.started.checked_add(limit));
    let mut position = 0.0f64;
    // The next copy's position under a fixed rate: one request after another.
    let mut slot = 0.0f64;
    let mut last = Instant::now();
    // The bucket starts empty: nothing goes out before the cap's rate has paid for it (and a
    // cap of 0, "not known yet", never pays).
    let mut tokens = 0.0f64;
    let mut held = false;
    let mut at_hand: Option<AtHand> = None;
    let mut ended = false;
    loop {
        if stop.is_stopped() {
            stop.set_capped(false);
            return stopped_ending(&stop);
        }
        let changed = stop.next_change();
        let now = Instant::now();
        if deadline.is_some_and(|t| now >= t) {
            stop.set_capped(false);
            return Ending::Completed;
        }
        let dt = (now - last).as_secs_f64();
        last = now;
        let factor = stop.effective_factor();
        let cap = stop.cap();
        if cap.is_finite() {
            tokens = (tokens + cap * dt).min((cap * CAP_BURST).max(1.0));
        }
        // Held by the cap: the recording waits where it is.
        if !held {
            position += dt * pace * factor;
        }
        held = false;
        let mut spawned = 0u64;
        let mut more = false;
        loop {
            if at_hand.is_none() {
                if feed.buffer.is_empty() {
                    match feed.rx.try_recv() {
                        Ok(Item::Requests(batch)) => feed.buffer.extend(batch),
                        Ok(Item::Failed(why)) => {
                            stop.set_capped(false);
                            return Ending::Aborted(AbortReason::Replay(why));
                        }
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            ended = true;
                            break;
                        }
                    }
                }
                let Some(p) = feed.buffer.pop_front() else { continue };
                at_hand = Some(AtHand { left: p.copies, prepared: p });
            }
            let Some(hand) = at_hand.as_mut() else { break };
            stop.set_position(hand.prepared.stamped);
            if hand.left == 0 {
                // Amplification below 1 leaves this record out.
                at_hand = None;
                continue;
            }
            let due_at = if by_rate { slot } else { hand.prepared.offset };
            // Paused (by the operator, or held by the controls): nothing goes out, even what
            // was due before the pause.
            if due_at > position || factor <= 0.0 {
                break;
            }
            if cap.is_finite() && tokens < 1.0 {
                held = true;
                position = position.min(due_at);
                break;
            }
            if spawned >= MAX_ARRIVALS_PER_PASS {
                more = true;
                break;
            }
            if cap.is_finite() {
                tokens -= 1.0;
            }
            hand.left -= 1;
            slot += 1.0;
            spawned += 1;
            let request = hand.prepared.request.clone();
            if hand.left == 0 {
                at_hand = None;
            }
            if shared.active.load(Ordering::Relaxed) >= feed.max_in_flight {
                d.counts.dropped += 1;
                continue;
            }
            // Due when the position passed it: back from now by how far it is past.
            let behind = (position - due_at) / (pace * factor).max(1e-12);
            let due = Duration::try_from_secs_f64(behind.min(3600.0))
                .ok()
                .and_then(|b| now.checked_sub(b))
                .unwrap_or(now);
            d.counts.started += 1;
            shared.active.fetch_add(1, Ordering::Relaxed);
            d.journeys.spawn(send(shared.clone(), request, due));
        }
        stop.set_capped(held);
        while d.journeys.try_join_next().is_some() {}
        if let Some(reason) = d.report(now) {
            stop.set_capped(false);
            return Ending::Aborted(reason);
        }
        if ended && at_hand.is_none() {
            stop.set_capped(false);
            return Ending::Completed;
        }
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        // When to look again: the next request's due time, the cap's next token, the report,
        // the deadline; or a change (stop, pause, rate, cap), or the reader's next request.
        let mut wake = d.next_report;
        if let Some(t) = deadline {
            wake = wake.min(t);
        }
        if held {
            let wait = (1.0 - tokens) / cap.max(1e-9);
            wake = wake.min(now + Duration::from_secs_f64(wait.clamp(0.0, 3600.0)));
        } else if let Some(hand) = &at_hand
            && factor > 0.0
        {
            let due_at = if by_rate { slot } else { hand.prepared.offset };
            let wait = (due_at - position) / (pace * factor);
            wake = wake.min(now + Duration::from_secs_f64(wait.clamp(0.0, 3600.0)));
        }
        if at_hand.is_none() && feed.buffer.is_empty() && !ended {
            tokio::select! {
                biased;
                () = stop.stopped() => {
                    stop.set_capped(false);
                    return stopped_ending(&stop);
                }
                item = feed.rx.recv() => match item {
                    Some(Item::Requests(batch)) => feed.buffer.extend(batch),
                    Some(Item::Failed(why)) => {
                        stop.set_capped(false);
                        return Ending::Aborted(AbortReason::Replay(why));
                    }
                    None => ended = true,
                },
                () = changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        } else {
            tokio::select! {
                biased;
                () = stop.stopped() => {
                    stop.set_capped(false);
                    return stopped_ending(&stop);
                }
                () = changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// Sends one replayed request and records it in its route's row, timed from `due`.
async fn send(shared: Arc<Shared>, request: Arc<Request>, due: Instant) {
    let _active = Active(&shared);
    let tally = shared.journeys.first();
    if let Some(t) = tally {
        t.started.fetch_add(1, Ordering::Relaxed);
    }
    let failure = exchange(&shared, &request, due).await;
    // Not sent because the run stopped: cancelled, not failed.
    if failure == Some(ErrorClass::Cancelled) && shared.stopped.load(Ordering::SeqCst) {
        return;
    }
    let counter = if failure.is_none() { &shared.completed } else { &shared.failed };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(t) = tally {
        t.finish(failure.map(|class| {
            let row = shared.stats.name(request.row).unwrap_or_else(|| Arc::from("?"));
            format!("{row}: {}", class.as_str())
        }));
    }
}

async fn exchange(shared: &Shared, request: &Request, due: Instant) -> Option<ErrorClass> {
    let mut builder = http::Request::builder().method(request.method.clone()).uri(request.uri.clone());
    if let Some(headers) = builder.headers_mut() {
        headers.clone_from(&request.headers);
        let marker = shared.marker.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        headers.insert(synth_ctx::http::SYNTHETIC_TRAFFIC, marker);
    }
    let Ok(req) = builder.body(Full::new(Bytes::clone(&request.body))) else {
        shared.stats.record(request.row, Outcome::unanswered(ErrorClass::Expectation));
        return Some(ErrorClass::Expectation);
    };
    if !shared.may_send() {
        shared.stats.record(request.row, Outcome::unanswered(ErrorClass::Cancelled));
        return Some(ErrorClass::Cancelled);
    }
    let mut in_flight = InFlight::start(shared, request.row);
    let result = shared.client.send(req).await;
    let latency_us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
    let res = match result {
        Ok(res) => res,
        Err(class) => {
            in_flight.finish(Outcome::unanswered(class));
            return Some(class);
        }
    };
    let status = res.status().as_u16();
    let (tagged, shed) = marks(shared, &res);
    let error = (status >= 400).then_some(ErrorClass::Status);
    in_flight.finish(Outcome {
        latency_us: Some(latency_us),
        status: Some(status),
        grpc_status: None,
        error,
        tagged,
        shed,
    });
    error
}
