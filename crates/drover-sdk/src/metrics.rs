//! Metric reporting: points are queued by the training loop and sent in batches by a background
//! thread, so that a slow or briefly unreachable master never stalls training.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use drover_api::rest::{MetricPoint, ReportMetricsRequest, ReportMetricsResponse};
use serde_json::Value;

use crate::SdkError;
use crate::client::MasterClient;

pub(crate) const TRAINING: &str = "training";
pub(crate) const VALIDATION: &str = "validation";

/// A batch is sent once this many metric values are queued...
pub(crate) const MAX_BATCH_VALUES: usize = 1000;
/// ...and one request carries up to this many: a loop that reports faster than the master
/// answers gets fewer, larger requests instead of a growing queue of small ones.
pub(crate) const MAX_REQUEST_VALUES: usize = 20_000;
/// ...or once the oldest queued point has waited this long.
pub(crate) const MAX_DELAY: Duration = Duration::from_millis(200);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// After close() the reporter keeps retrying an unreachable master this long, then gives up, so
/// that a trial whose master is gone still exits.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// While retrying, a still-failing master is mentioned on stderr once per this many attempts.
const LOG_EVERY_FAILURES: u32 = 20;

/// JSON has no NaN or infinity: those are sent as strings so that the master can refuse them
/// with an error that names the metric, instead of failing to parse the whole batch.
pub(crate) fn encode_value(value: f64) -> Value {
    match serde_json::Number::from_f64(value) {
        Some(number) => Value::Number(number),
        None if value.is_nan() => Value::String("NaN".into()),
        None if value > 0.0 => Value::String("inf".into()),
        None => Value::String("-inf".into()),
    }
}

pub(crate) fn make_point(group: &str, step: i64, metrics: &[(&str, f64)]) -> MetricPoint {
    let metrics: BTreeMap<String, Value> = metrics.iter().map(|(name, value)| (name.to_string(), encode_value(*value))).collect();
    MetricPoint { group: group.to_string(), step, metrics }
}

/// What counts towards the batch size: one per metric value (the unit the master stores), and
/// at least one per point so that empty points cannot pile up without bound.
fn point_weight(point: &MetricPoint) -> usize {
    point.metrics.len().max(1)
}

/// The queue and the "is a batch due" rule, without threads or IO.
#[derive(Default)]
pub(crate) struct Batcher {
    queue: VecDeque<(Instant, MetricPoint)>,
    queued_values: usize,
}

impl Batcher {
    pub(crate) fn push(&mut self, point: MetricPoint, now: Instant) {
        self.queued_values += point_weight(&point);
        self.queue.push_back((now, point));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// When the next batch becomes due, or None when nothing is queued.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        let (oldest, _) = self.queue.front()?;
        if self.queued_values >= MAX_BATCH_VALUES { Some(*oldest) } else { Some(*oldest + MAX_DELAY) }
    }

    /// `urgent`: someone waits in flush() or close(), so send whatever is queued now.
    pub(crate) fn ready(&self, now: Instant, urgent: bool) -> bool {
        match self.due_at() {
            None => false,
            Some(due) => urgent || now >= due,
        }
    }

    /// Takes points from the front up to MAX_REQUEST_VALUES values, and always at least one
    /// point, however many values it has.
    pub(crate) fn take_batch(&mut self) -> Vec<MetricPoint> {
        let mut batch = Vec::new();
        let mut values = 0;
        while let Some((_, point)) = self.queue.front() {
            let weight = point_weight(point);
            if !batch.is_empty() && values + weight > MAX_REQUEST_VALUES {
                break;
            }
            values += weight;
            let (_, point) = self.queue.pop_front().expect("front exists");
            batch.push(point);
        }
        self.queued_values -= values;
        batch
    }
}

/// Where batches go: the master, or a fake in tests.
pub(crate) trait MetricsSink: Send + 'static {
    fn send(&mut self, request: &ReportMetricsRequest) -> Result<ReportMetricsResponse, SdkError>;
}

impl MetricsSink for MasterClient {
    fn send(&mut self, request: &ReportMetricsRequest) -> Result<ReportMetricsResponse, SdkError> {
        self.report_metrics(request)
    }
}

struct State {
    batcher: Batcher,
    /// Points ever queued, and points ever stored or dropped. Batches are sent in queue order by
    /// one thread, so "settled >= n" means the first n points are all done.
    enqueued: u64,
    settled: u64,
    /// flush() wants everything up to this count sent now, without waiting for MAX_DELAY.
    flush_upto: u64,
    /// Set by close(): after this instant, undeliverable batches are given up.
    give_up_at: Option<Instant>,
    /// Why points were dropped since the last flush()/close(); reported there.
    errors: Vec<String>,
    worker_alive: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the sender: new points, flush, close.
    wake_sender: Condvar,
    /// Wakes flush(): points settled, or the sender stopped.
    settled: Condvar,
    stop_requested: AtomicBool,
}

impl Shared {
    /// The sender thread never panics while holding the lock, and if it did, the state is still
    /// consistent enough to report and shut down: ignore poisoning.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The handle the Context holds: queue points, flush, close.
pub(crate) struct Reporter {
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
    close_grace: Duration,
}

impl Reporter {
    pub(crate) fn start(sink: impl MetricsSink, close_grace: Duration) -> Result<Reporter, SdkError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                batcher: Batcher::default(),
                enqueued: 0,
                settled: 0,
                flush_upto: 0,
                give_up_at: None,
                errors: Vec::new(),
                worker_alive: true,
            }),
            wake_sender: Condvar::new(),
            settled: Condvar::new(),
            stop_requested: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let sender = std::thread::Builder::new()
            .name("drover-metrics".into())
            .spawn(move || Sender { shared: thread_shared, sink, master_gone: None }.run())
            .map_err(SdkError::io("start the metrics thread for", "drover-metrics"))?;
        Ok(Reporter { shared, sender: Some(sender), close_grace })
    }

    pub(crate) fn report(&self, point: MetricPoint) {
        let mut state = self.shared.lock();
        state.batcher.push(point, Instant::now());
        state.enqueued += 1;
        // The sender sleeps until the oldest point is due; a first point or a full batch
        // changes when that is.
        if state.batcher.queued_values >= MAX_BATCH_VALUES || state.batcher.queue.len() == 1 {
            self.shared.wake_sender.notify_one();
        }
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.shared.stop_requested.load(Ordering::SeqCst)
    }

    pub(crate) fn set_stop_requested(&self) {
        self.shared.stop_requested.store(true, Ordering::SeqCst);
    }

    /// Waits until every point queued before the call is stored or dropped, then reports the
    /// drops since the last flush.
    pub(crate) fn flush(&self) -> Result<(), SdkError> {
        let mut state = self.shared.lock();
        let target = state.enqueued;
        state.flush_upto = state.flush_upto.max(target);
        self.shared.wake_sender.notify_one();
        while state.settled < target {
            if !state.worker_alive {
                return Err(SdkError::ReporterDied);
            }
            state = self.shared.settled.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        take_errors(&mut state)
    }

    /// Sends what is queued (retrying an unreachable master for at most the close grace), stops
    /// the sender thread and reports every drop not yet reported. Idempotent.
    pub(crate) fn close(&mut self) -> Result<(), SdkError> {
        let Some(sender) = self.sender.take() else { return Ok(()) };
        {
            let mut state = self.shared.lock();
            state.give_up_at = Some(Instant::now() + self.close_grace);
            self.shared.wake_sender.notify_one();
        }
        let panicked = sender.join().is_err();
        let mut state = self.shared.lock();
        let drops = take_errors(&mut state);
        if panicked { Err(SdkError::ReporterDied) } else { drops }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Err(err) = self.close() {
            eprintln!("drover: while closing the metrics reporter: {err}");
        }
    }
}

fn take_errors(state: &mut State) -> Result<(), SdkError> {
    if state.errors.is_empty() { Ok(()) } else { Err(SdkError::MetricsDropped(std::mem::take(&mut state.errors).join("; "))) }
}

/// Marks the sender gone even when it unwinds, so that flush() cannot wait forever.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.lock().worker_alive = false;
        self.0.settled.notify_all();
    }
}

enum Delivery {
    Stored,
    Refused(SdkError),
    GaveUp(String),
}

struct Sender<S> {
    shared: Arc<Shared>,
    sink: S,
    /// A batch was given up after close()'s deadline: the master is gone, so the remaining
    /// batches are dropped without another round of timeouts each.
    master_gone: Option<String>,
}

impl<S: MetricsSink> Sender<S> {
    fn run(mut self) {
        let _alive = AliveGuard(Arc::clone(&self.shared));
        let mut state = self.shared.lock();
        loop {
            let now = Instant::now();
            let urgent = state.flush_upto > state.settled || state.give_up_at.is_some();
            if state.batcher.ready(now, urgent) {
                let batch = state.batcher.take_batch();
                drop(state);
                self.deliver(&batch);
                state = self.shared.lock();
                state.settled += batch.len() as u64;
                self.shared.settled.notify_all();
                continue;
            }
            if state.give_up_at.is_some() && state.batcher.is_empty() {
                return;
            }
            state = match state.batcher.due_at() {
                Some(due) => {
                    let wait = due.saturating_duration_since(now);
                    self.shared.wake_sender.wait_timeout(state, wait).unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.shared.wake_sender.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// Sends one batch. A refused batch of several points is split and resent, so that one bad
    /// point (a NaN) loses only itself and not the up to 999 good values around it.
    fn deliver(&mut self, batch: &[MetricPoint]) {
        match self.send_with_retry(batch) {
            Delivery::Stored => {}
            Delivery::Refused(err) if batch.len() > 1 && matches!(err.status(), Some(400 | 413)) => {
                let (first, second) = batch.split_at(batch.len() / 2);
                self.deliver(first);
                self.deliver(second);
            }
            Delivery::Refused(err) => {
                let message = format!("{} point(s) refused: {err}", batch.len());
                eprintln!("drover: metrics: {message}; dropped");
                self.shared.lock().errors.push(message);
            }
            Delivery::GaveUp(reason) => {
                let message = format!("{} point(s) not delivered before exit: {reason}", batch.len());
                eprintln!("drover: metrics: {message}");
                self.shared.lock().errors.push(message);
            }
        }
    }

    fn send_with_retry(&mut self, batch: &[MetricPoint]) -> Delivery {
        if let Some(reason) = &self.master_gone {
            return Delivery::GaveUp(reason.clone());
        }
        let request = ReportMetricsRequest { points: batch.to_vec() };
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0u32;
        loop {
            let err = match self.sink.send(&request) {
                Ok(response) => {
                    if response.stop_requested {
                        self.shared.stop_requested.store(true, Ordering::SeqCst);
                    }
                    if failures > 0 {
                        eprintln!("drover: metrics: delivered after {failures} failed attempt(s)");
                    }
                    return Delivery::Stored;
                }
                Err(err) if !err.is_transient() => return Delivery::Refused(err),
                Err(err) => err,
            };
            failures += 1;
            if failures == 1 || failures.is_multiple_of(LOG_EVERY_FAILURES) {
                eprintln!("drover: metrics: {err}; retrying (attempt {failures})");
            }
            // Sleep on the condvar rather than thread::sleep so that close() cuts a long backoff
            // short when its deadline is nearer. Other wake-ups (new points) sleep on.
            let retry_at = Instant::now() + backoff;
            let mut state = self.shared.lock();
            loop {
                let now = Instant::now();
                if state.give_up_at.is_some_and(|give_up_at| now >= give_up_at) {
                    self.master_gone = Some(format!("an earlier batch failed: {err}"));
                    return Delivery::GaveUp(err.to_string());
                }
                let wake_at = state.give_up_at.map_or(retry_at, |give_up_at| give_up_at.min(retry_at));
                if now >= wake_at {
                    break;
                }
                state = self.shared.wake_sender.wait_timeout(state, wake_at - now).unwrap_or_else(|p| p.into_inner()).0;
            }
            drop(state);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_become_strings() {
        assert_eq!(encode_value(0.25), serde_json::json!(0.25));
        assert_eq!(encode_value(f64::NAN), serde_json::json!("NaN"));
        assert_eq!(encode_value(f64::INFINITY), serde_json::json!("inf"));
        assert_eq!(encode_value(f64::NEG_INFINITY), serde_json::json!("-inf"));
        let point = make_point(TRAINING, 7, &[("loss", 1.5), ("grad", f64::NAN)]);
        assert_eq!(
            serde_json::to_value(&point).unwrap(),
            serde_json::json!({"group": "training", "step": 7, "metrics": {"grad": "NaN", "loss": 1.5}})
        );
    }

    fn point(step: i64, values: usize) -> MetricPoint {
        let names: Vec<String> = (0..values).map(|i| format!("m{i}")).collect();
        let metrics: Vec<(&str, f64)> = names.iter().map(|n| (n.as_str(), 1.0)).collect();
        make_point(TRAINING, step, &metrics)
    }

    #[test]
    fn a_batch_is_due_after_the_delay_or_when_full() {
        let t0 = Instant::now();
        let mut batcher = Batcher::default();
        assert_eq!(batcher.due_at(), None);
        assert!(!batcher.ready(t0, true), "nothing to send even when urgent");

        batcher.push(point(1, 3), t0);
        batcher.push(point(2, 3), t0 + Duration::from_millis(150));
        assert_eq!(batcher.due_at(), Some(t0 + MAX_DELAY), "due by the oldest point");
        assert!(!batcher.ready(t0 + Duration::from_millis(199), false));
        assert!(batcher.ready(t0 + Duration::from_millis(199), true));
        assert!(batcher.ready(t0 + MAX_DELAY, false));

        let mut full = Batcher::default();
        for step in 0..99 {
            full.push(point(step, 10), t0);
        }
        assert!(!full.ready(t0, false), "990 values wait for the delay");
        full.push(point(99, 10), t0);
        assert!(full.ready(t0, false), "1000 values go at once");
    }

    #[test]
    fn batches_hold_at_most_the_limit_in_values_and_keep_order() {
        let t0 = Instant::now();
        let mut batcher = Batcher::default();
        for step in 0..5000 {
            batcher.push(point(step, 6), t0);
        }
        let first = batcher.take_batch();
        assert_eq!(first.len(), 3333, "3333 * 6 = 19998 values, one more would exceed 20000");
        assert_eq!(first.first().unwrap().step, 0);
        assert_eq!(first.last().unwrap().step, 3332);
        let second = batcher.take_batch();
        assert_eq!(second.first().unwrap().step, 3333);
        assert_eq!(second.len(), 1667);
        assert!(batcher.is_empty());
        assert_eq!(batcher.queued_values, 0);
    }

    #[test]
    fn a_point_larger_than_the_limit_goes_alone() {
        let t0 = Instant::now();
        let mut batcher = Batcher::default();
        batcher.push(point(1, MAX_REQUEST_VALUES + 500), t0);
        batcher.push(point(2, 1), t0);
        assert_eq!(batcher.take_batch().len(), 1);
        assert_eq!(batcher.take_batch()[0].step, 2);
    }

    #[test]
    fn empty_points_count_as_one_value() {
        let t0 = Instant::now();
        let mut batcher = Batcher::default();
        for step in 0..1000 {
            batcher.push(point(step, 0), t0);
        }
        assert!(batcher.ready(t0, false));
        assert_eq!(batcher.take_batch().len(), 1000);
    }

    /// A fake master: answers each request by a rule, and records what it stored.
    struct FakeSink<F> {
        respond: F,
        stored: Arc<Mutex<Vec<MetricPoint>>>,
        requests: Arc<Mutex<usize>>,
    }

    impl<F> MetricsSink for FakeSink<F>
    where
        F: FnMut(usize, &ReportMetricsRequest) -> Result<ReportMetricsResponse, SdkError> + Send + 'static,
    {
        fn send(&mut self, request: &ReportMetricsRequest) -> Result<ReportMetricsResponse, SdkError> {
            let attempt = {
                let mut requests = self.requests.lock().unwrap();
                *requests += 1;
                *requests
            };
            let response = (self.respond)(attempt, request)?;
            self.stored.lock().unwrap().extend(request.points.iter().cloned());
            Ok(response)
        }
    }

    type Recorded = (Arc<Mutex<Vec<MetricPoint>>>, Arc<Mutex<usize>>);

    fn fake<F>(respond: F) -> (FakeSink<F>, Recorded)
    where
        F: FnMut(usize, &ReportMetricsRequest) -> Result<ReportMetricsResponse, SdkError> + Send + 'static,
    {
        let stored = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        (FakeSink { respond, stored: Arc::clone(&stored), requests: Arc::clone(&requests) }, (stored, requests))
    }

    fn ok(stop_requested: bool) -> Result<ReportMetricsResponse, SdkError> {
        Ok(ReportMetricsResponse { stored: 0, stop_requested })
    }

    fn unavailable() -> SdkError {
        SdkError::Api { what: "reporting metrics", status: 503, message: "starting".into() }
    }

    #[test]
    fn flush_sends_at_once_and_waits_for_the_answer() {
        let (sink, (stored, requests)) = fake(|_, _| ok(false));
        let reporter = Reporter::start(sink, CLOSE_GRACE).unwrap();
        reporter.report(make_point(TRAINING, 1, &[("loss", 0.5)]));
        reporter.report(make_point(VALIDATION, 1, &[("acc", 0.9)]));
        let started = Instant::now();
        reporter.flush().unwrap();
        assert!(started.elapsed() < MAX_DELAY, "flush must not wait for the batching delay");
        assert_eq!(stored.lock().unwrap().len(), 2);
        assert_eq!(*requests.lock().unwrap(), 1, "both points in one batch");
        reporter.flush().unwrap();
        assert_eq!(*requests.lock().unwrap(), 1, "nothing new, nothing sent");
    }

    #[test]
    fn points_are_sent_without_flush_after_the_delay() {
        let (sink, (stored, _)) = fake(|_, _| ok(false));
        let _reporter = {
            let reporter = Reporter::start(sink, CLOSE_GRACE).unwrap();
            reporter.report(make_point(TRAINING, 1, &[("loss", 0.5)]));
            reporter
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while stored.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the point was never sent");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn transient_errors_are_retried_until_stored() {
        let (sink, (stored, requests)) = fake(|attempt, _| if attempt <= 3 { Err(unavailable()) } else { ok(false) });
        let reporter = Reporter::start(sink, CLOSE_GRACE).unwrap();
        reporter.report(make_point(TRAINING, 1, &[("loss", 0.5)]));
        reporter.flush().unwrap();
        assert_eq!(*requests.lock().unwrap(), 4);
        assert_eq!(stored.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_refused_point_is_dropped_alone_and_reported_by_the_next_flush() {
        // Like the master: refuse a batch that holds any non-finite value.
        let (sink, (stored, _)) = fake(|_, request: &ReportMetricsRequest| {
            let bad = request.points.iter().flat_map(|p| p.metrics.iter()).find(|(_, v)| v.is_string());
            match bad {
                Some((name, _)) => {
                    Err(SdkError::Api { what: "reporting metrics", status: 400, message: format!("metric {name} is not a finite number") })
                }
                None => ok(false),
            }
        });
        let reporter = Reporter::start(sink, CLOSE_GRACE).unwrap();
        for step in 0..10 {
            let loss = if step == 6 { f64::NAN } else { step as f64 };
            reporter.report(make_point(TRAINING, step, &[("loss", loss)]));
        }
        let err = reporter.flush().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SdkError::MetricsDropped(_)), "{err:?}");
        assert!(text.contains("1 point(s) refused") && text.contains("metric loss is not a finite number"), "{text}");
        let steps: Vec<i64> = stored.lock().unwrap().iter().map(|p| p.step).collect();
        assert_eq!(steps.len(), 9);
        assert!(!steps.contains(&6));
        reporter.flush().expect("the error is reported once");
    }

    #[test]
    fn unauthorized_batches_are_dropped_whole() {
        let (sink, (_, requests)) = fake(|_, _| Err(SdkError::Api { what: "reporting metrics", status: 401, message: "bad token".into() }));
        let reporter = Reporter::start(sink, CLOSE_GRACE).unwrap();
        for step in 0..10 {
            reporter.report(make_point(TRAINING, step, &[("loss", 1.0)]));
        }
        let text = reporter.flush().unwrap_err().to_string();
        assert!(text.contains("10 point(s) refused") && text.contains("bad token"), "{text}");
        assert_eq!(*requests.lock().unwrap(), 1, "no point in splitting a batch the master refuses for its sender");
    }

    #[test]
    fn close_gives_up_on_an_unreachable_master_after_the_grace() {
        let (sink, (_, requests)) = fake(|_, _| Err(unavailable()));
        let mut reporter = Reporter::start(sink, Duration::from_millis(400)).unwrap();
        reporter.report(make_point(TRAINING, 1, &[("loss", 0.5)]));
        let started = Instant::now();
        let err = reporter.close().unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(3), "{waited:?}");
        assert!(err.to_string().contains("not delivered before exit"), "{err}");
        assert!(*requests.lock().unwrap() >= 2, "it retried");
        reporter.close().expect("a second close has nothing left to say");
    }

    #[test]
    fn a_stop_request_in_a_response_is_remembered() {
        let (sink, _) = fake(|attempt, _| ok(attempt == 2));
        let reporter = Reporter::start(sink, CLOSE_GRACE).unwrap();
        reporter.report(make_point(TRAINING, 1, &[("loss", 0.5)]));
        reporter.flush().unwrap();
        assert!(!reporter.stop_requested());
        reporter.report(make_point(TRAINING, 2, &[("loss", 0.5)]));
        reporter.flush().unwrap();
        assert!(reporter.stop_requested());
        reporter.report(make_point(TRAINING, 3, &[("loss", 0.5)]));
        reporter.flush().unwrap();
        assert!(reporter.stop_requested(), "a stop request is not taken back");
    }
}
