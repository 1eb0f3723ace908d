//! The `custom` searcher: a process outside the master (an "advisor", as in SingaAuto or
//! Determined's former custom searcher) decides which trials to run and which to stop.
//!
//! The search records what happens to its trials in an ordered event log with sequence
//! numbers, and takes the advisor's actions through [`Searcher::external_actions`]. Both live
//! in the searcher's snapshot, so a master restarted from its store loses no event and
//! forgets no decision. The advisor acknowledges events by sequence number; acknowledged
//! events are dropped from the log so that it stays short.
//!
//! Everything else is shared with the other methods: request ids, seeds and the concurrency
//! limit are the [`Searcher`]'s, and an advisor can never get around them.

use std::collections::BTreeMap;

use drover_core::SplitMix64;
use drover_core::hparams::{self, HyperparameterSpace};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Action, Method, Outcome, Proposal, RequestId, SearchError, SearchMethod, Searcher};

/// What the search tells its advisor. Metrics are as the trial reported them, not oriented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The search exists; first event of every custom search, recorded once.
    Initialized {
        metric: String,
        smaller_is_better: bool,
        max_trials: Option<usize>,
        max_concurrent_trials: usize,
        hyperparameters: HyperparameterSpace,
    },
    /// The master created the trial an advisor's `create` asked for.
    TrialCreated { request_id: RequestId, hparams: Map<String, Value>, checkpoint_from: Option<RequestId> },
    /// A trial reported the searcher metric at training time `time` (its time metric, or step).
    ValidationCompleted { request_id: RequestId, metric: f64, time: f64 },
    /// A trial ended: completed, stopped when asked, or canceled.
    TrialExited { request_id: RequestId },
    /// A trial failed beyond its restarts.
    TrialFailed { request_id: RequestId },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedEvent {
    /// 1 for `initialized`, then one more for each event; never reused.
    pub seq: u64,
    pub event: Event,
}

/// What an advisor may ask of the search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AdvisorAction {
    /// Run a trial with these hyperparameters, starting from `checkpoint_from`'s latest
    /// checkpoint (if that trial has one) when given.
    Create { hparams: Map<String, Value>, checkpoint_from: Option<RequestId> },
    /// Ask a live trial to stop; it finishes its step and exits (`trial_exited`).
    Stop { request_id: RequestId },
    /// End the search: no trial is created any more, and the experiment completes (or errors,
    /// with `failure`) once no trial runs. Trials still running finish on their own.
    Shutdown { failure: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomSearch {
    space: HyperparameterSpace,
    max_trials: Option<usize>,
    smaller_is_better: bool,
    /// Events the advisor has not acknowledged yet, oldest first.
    log: Vec<SequencedEvent>,
    last_seq: u64,
    /// Creates handed to the master and not yet confirmed, with what their event will say.
    pending: BTreeMap<RequestId, (Map<String, Value>, Option<RequestId>)>,
}

impl CustomSearch {
    pub fn new(
        space: HyperparameterSpace,
        metric: &str,
        smaller_is_better: bool,
        max_trials: Option<usize>,
        max_concurrent: usize,
    ) -> CustomSearch {
        let mut search =
            CustomSearch { space: space.clone(), max_trials, smaller_is_better, log: Vec::new(), last_seq: 0, pending: BTreeMap::new() };
        search.record(Event::Initialized {
            metric: metric.to_string(),
            smaller_is_better,
            max_trials,
            max_concurrent_trials: max_concurrent,
            hyperparameters: space,
        });
        search
    }

    fn record(&mut self, event: Event) {
        self.last_seq += 1;
        self.log.push(SequencedEvent { seq: self.last_seq, event });
    }
}

impl SearchMethod for CustomSearch {
    /// Only the advisor proposes.
    fn propose(&mut self, _request_id: RequestId, _rng: &mut SplitMix64) -> Option<Proposal> {
        None
    }

    fn validated(&mut self, request_id: RequestId, loss: f64, time: f64) -> Vec<RequestId> {
        // Undo the searcher's orientation; negation is exact, so this is the reported value.
        let metric = if self.smaller_is_better { loss } else { -loss };
        self.record(Event::ValidationCompleted { request_id, metric, time });
        Vec::new()
    }

    fn exited(&mut self, request_id: RequestId, outcome: Outcome) {
        self.record(match outcome {
            Outcome::Completed => Event::TrialExited { request_id },
            Outcome::Failed => Event::TrialFailed { request_id },
        });
    }

    /// Never: the search ends when the advisor says so.
    fn exhausted(&self) -> bool {
        false
    }

    fn total_trials(&self) -> Option<usize> {
        self.max_trials
    }
}

fn refused(field: impl Into<String>, message: impl Into<String>) -> SearchError {
    SearchError::Refused { field: field.into(), message: message.into() }
}

impl Searcher {
    pub fn is_custom(&self) -> bool {
        matches!(self.method, Method::Custom(_))
    }

    /// Checks a batch of an advisor's actions and turns it into actions for the master. The
    /// batch is checked whole first: when one action is refused, nothing changes. Request ids
    /// and seeds are the searcher's to assign, in the order of the batch.
    pub fn external_actions(&mut self, actions: Vec<AdvisorAction>) -> Result<Vec<Action>, SearchError> {
        let Method::Custom(custom) = &self.method else {
            return Err(refused("searcher.name", "only a `custom` search takes actions from an advisor"));
        };
        if self.shut_down {
            return Err(SearchError::Closed("the search has shut down and takes no more actions".into()));
        }
        let mut creates = 0;
        let mut shutdown_at = None;
        for (i, action) in actions.iter().enumerate() {
            let field = format!("actions[{i}]");
            if let Some(j) = shutdown_at {
                return Err(refused(field, format!("comes after the shutdown in actions[{j}]; a shutdown must be the last action")));
            }
            match action {
                AdvisorAction::Create { hparams, checkpoint_from } => {
                    hparams::validate_point(&custom.space, hparams, &format!("{field}.hparams")).map_err(|e| refused(e.path, e.message))?;
                    if let Some(source) = checkpoint_from {
                        // Every request id below the next one was created by this search.
                        if *source == 0 || *source >= self.next_request_id {
                            return Err(refused(
                                format!("{field}.checkpoint_from"),
                                format!("no trial of this search has request id {source}"),
                            ));
                        }
                    }
                    creates += 1;
                    if let Some(max) = custom.max_trials
                        && self.created + creates > max
                    {
                        return Err(refused(
                            field,
                            format!("would create trial {} of a search capped at searcher.max_trials = {max}", self.created + creates),
                        ));
                    }
                    if self.live.len() + creates > self.max_concurrent {
                        return Err(refused(
                            field,
                            format!(
                                "would make {} trials live, more than searcher.max_concurrent_trials = {}; wait for a trial to exit",
                                self.live.len() + creates,
                                self.max_concurrent
                            ),
                        ));
                    }
                }
                AdvisorAction::Stop { request_id } => {
                    if !self.live.contains(request_id) {
                        return Err(refused(
                            format!("{field}.request_id"),
                            format!("request id {request_id} is not a live trial of this search (it never existed or has exited)"),
                        ));
                    }
                }
                AdvisorAction::Shutdown { .. } => shutdown_at = Some(i),
            }
        }

        let mut out = Vec::new();
        for action in actions {
            match action {
                AdvisorAction::Create { hparams, checkpoint_from } => {
                    let request_id = self.next_request_id;
                    self.next_request_id += 1;
                    self.created += 1;
                    self.live.insert(request_id);
                    let seed = self.rng.next_u64() >> 1; // fits an i64 column, like proposed trials
                    if let Method::Custom(custom) = &mut self.method {
                        custom.pending.insert(request_id, (hparams.clone(), checkpoint_from));
                    }
                    out.push(Action::Create { request_id, hparams, seed, checkpoint_from });
                }
                // A trial already asked to stop is not asked twice, so a retried stop is harmless.
                AdvisorAction::Stop { request_id } => {
                    if self.stopping.insert(request_id) {
                        out.push(Action::Stop { request_id });
                    }
                }
                AdvisorAction::Shutdown { failure } => {
                    self.shut_down = true;
                    out.push(Action::Shutdown { failure });
                }
            }
        }
        Ok(out)
    }

    /// The master created the trial for `request_id`: that is the advisor's `trial_created`.
    pub(crate) fn custom_trial_created(&mut self, request_id: RequestId) {
        if let Method::Custom(custom) = &mut self.method
            && let Some((hparams, checkpoint_from)) = custom.pending.remove(&request_id)
        {
            custom.record(Event::TrialCreated { request_id, hparams, checkpoint_from });
        }
    }

    /// Up to `limit` unacknowledged events after sequence number `after`, oldest first; none
    /// for a search that is not custom.
    pub fn events_after(&self, after: u64, limit: usize) -> Vec<SequencedEvent> {
        match &self.method {
            Method::Custom(custom) => custom.log.iter().filter(|e| e.seq > after).take(limit).cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Sequence number of the latest event (0 when there is none, or the search is not custom).
    pub fn last_event_seq(&self) -> u64 {
        match &self.method {
            Method::Custom(custom) => custom.last_seq,
            _ => 0,
        }
    }

    /// The advisor has every event up to `after`: they leave the log. Returns whether any did,
    /// i.e. whether the snapshot changed.
    pub fn acknowledge_events(&mut self, after: u64) -> Result<bool, SearchError> {
        let Method::Custom(custom) = &mut self.method else {
            return Err(refused("searcher.name", "only a `custom` search has events for an advisor"));
        };
        if after > custom.last_seq {
            // Trimming beyond the last event would silently swallow events not yet recorded.
            return Err(refused("after", format!("{after} is beyond the latest event, {}", custom.last_seq)));
        }
        let before = custom.log.len();
        custom.log.retain(|e| e.seq > after);
        Ok(custom.log.len() != before)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use drover_core::ExperimentConfig;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn config(searcher: &str) -> ExperimentConfig {
        let text = format!(
            "name: t\nentrypoint: x\nhyperparameters:\n  lr: {{type: log, minval: -3, maxval: -1}}\n  h: {{type: categorical, vals: [1, 2]}}\n  c: 7\nsearcher: {searcher}\n"
        );
        ExperimentConfig::parse(&text, None).unwrap()
    }

    fn searcher(max_trials: Option<usize>, concurrent: usize) -> Searcher {
        let cap = max_trials.map_or(String::new(), |n| format!(", max_trials: {n}"));
        Searcher::new(
            &config(&format!("{{name: custom, metric: acc, smaller_is_better: false, max_concurrent_trials: {concurrent}{cap}}}")),
            9,
        )
        .unwrap()
    }

    fn point(lr: f64, h: i64) -> Map<String, Value> {
        json!({"lr": lr, "h": h, "c": 7}).as_object().unwrap().clone()
    }

    fn create(lr: f64, h: i64) -> AdvisorAction {
        AdvisorAction::Create { hparams: point(lr, h), checkpoint_from: None }
    }

    /// What the master does with the searcher's actions: confirm every create.
    fn confirm(s: &mut Searcher, actions: &[Action]) {
        for a in actions {
            if let Action::Create { request_id, .. } = a {
                assert!(s.trial_created(*request_id).is_empty());
            }
        }
    }

    fn events(s: &Searcher) -> Vec<Event> {
        s.events_after(0, usize::MAX).into_iter().map(|e| e.event).collect()
    }

    #[test]
    fn the_advisor_drives_and_sees_every_event_in_order() {
        let mut s = searcher(Some(3), 2);
        assert!(s.is_custom());
        assert!(s.initial_trials().is_empty(), "nothing runs until the advisor says so");
        assert_eq!(s.last_event_seq(), 1);
        let Event::Initialized { metric, smaller_is_better, max_trials, max_concurrent_trials, hyperparameters } = &events(&s)[0] else {
            panic!("{:?}", events(&s));
        };
        assert_eq!((metric.as_str(), *smaller_is_better, *max_trials, *max_concurrent_trials), ("acc", false, Some(3), 2));
        assert_eq!(hyperparameters.len(), 3);

        let actions = s.external_actions(vec![create(0.01, 1), create(0.1, 2)]).unwrap();
        let [Action::Create { request_id: 1, seed: a, .. }, Action::Create { request_id: 2, seed: b, .. }] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        assert_ne!(a, b);
        confirm(&mut s, &actions);
        // Accuracy is larger-is-better, and reported as is.
        assert!(s.validation_completed(1, 0.75, 3.0).is_empty());
        assert!(s.trial_exited(1).is_empty(), "the search does not end on its own");
        assert_eq!(s.external_actions(vec![AdvisorAction::Stop { request_id: 2 }]).unwrap(), vec![Action::Stop { request_id: 2 }]);
        assert!(s.external_actions(vec![AdvisorAction::Stop { request_id: 2 }]).unwrap().is_empty(), "a repeated stop is not sent twice");
        assert!(s.trial_failed(2).is_empty());
        assert_eq!(
            events(&s)[1..],
            [
                Event::TrialCreated { request_id: 1, hparams: point(0.01, 1), checkpoint_from: None },
                Event::TrialCreated { request_id: 2, hparams: point(0.1, 2), checkpoint_from: None },
                Event::ValidationCompleted { request_id: 1, metric: 0.75, time: 3.0 },
                Event::TrialExited { request_id: 1 },
                Event::TrialFailed { request_id: 2 },
            ]
        );
        let seqs: Vec<u64> = s.events_after(0, usize::MAX).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(s.events_after(4, 1).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5]);

        // A clone from request 1's checkpoint, then the end.
        let actions = s
            .external_actions(vec![
                AdvisorAction::Create { hparams: point(0.02, 1), checkpoint_from: Some(1) },
                AdvisorAction::Shutdown { failure: false },
            ])
            .unwrap();
        assert!(matches!(actions[0], Action::Create { request_id: 3, checkpoint_from: Some(1), .. }), "{actions:?}");
        assert_eq!(actions[1], Action::Shutdown { failure: false });
        assert!(s.is_shut_down());
        assert_eq!(s.progress(), 2.0 / 3.0);
        let e = s.external_actions(vec![]).unwrap_err();
        assert!(matches!(e, SearchError::Closed(_)), "{e}");
    }

    #[test]
    fn a_bad_batch_is_refused_whole_naming_the_field() {
        let mut s = searcher(Some(3), 2);
        let before = s.clone();
        let refuse = |s: &mut Searcher, actions: Vec<AdvisorAction>| -> String {
            let e = s.external_actions(actions).unwrap_err();
            e.to_string()
        };
        assert_eq!(refuse(&mut s, vec![create(0.01, 1), create(0.5, 1)]), "actions[1].hparams.lr: 0.5 is above 10^-1 = 0.1");
        assert_eq!(refuse(&mut s, vec![create(0.01, 3)]), "actions[0].hparams.h: 3 is not one of 1, 2");
        let mut extra = point(0.01, 1);
        extra.insert("lrr".into(), json!(1));
        let e = refuse(&mut s, vec![AdvisorAction::Create { hparams: extra, checkpoint_from: None }]);
        assert!(e.starts_with("actions[0].hparams.lrr: not a hyperparameter"), "{e}");
        let e = refuse(&mut s, vec![create(0.01, 1), create(0.01, 1), create(0.01, 1)]);
        assert!(e.starts_with("actions[2]: would make 3 trials live, more than searcher.max_concurrent_trials = 2"), "{e}");
        let e = refuse(&mut s, vec![AdvisorAction::Create { hparams: point(0.01, 1), checkpoint_from: Some(1) }]);
        assert_eq!(e, "actions[0].checkpoint_from: no trial of this search has request id 1");
        let e = refuse(&mut s, vec![AdvisorAction::Stop { request_id: 1 }]);
        assert!(e.starts_with("actions[0].request_id: request id 1 is not a live trial"), "{e}");
        let e = refuse(&mut s, vec![AdvisorAction::Shutdown { failure: false }, create(0.01, 1)]);
        assert!(e.starts_with("actions[1]: comes after the shutdown in actions[0]"), "{e}");
        assert_eq!(s, before, "a refused batch changes nothing");

        // The cap on trials counts trials that already ended.
        let a = s.external_actions(vec![create(0.01, 1), create(0.01, 2)]).unwrap();
        confirm(&mut s, &a);
        s.trial_exited(1);
        s.trial_exited(2);
        let a = s.external_actions(vec![create(0.01, 1)]).unwrap();
        confirm(&mut s, &a);
        let e = refuse(&mut s, vec![create(0.01, 1)]);
        assert_eq!(e, "actions[0]: would create trial 4 of a search capped at searcher.max_trials = 3");
        // Other methods take no advice.
        let mut random = Searcher::new(&config("{name: random, metric: m, max_trials: 2}"), 1).unwrap();
        assert!(refuse(&mut random, vec![]).starts_with("searcher.name: "));
        assert!(random.events_after(0, 10).is_empty());
        assert!(random.acknowledge_events(0).is_err());
    }

    #[test]
    fn acknowledged_events_leave_the_log_and_survive_a_snapshot() {
        let mut s = searcher(None, 4);
        let a = s.external_actions(vec![create(0.01, 1)]).unwrap();
        confirm(&mut s, &a);
        s.validation_completed(1, 0.5, 1.0);
        assert_eq!(s.last_event_seq(), 3);
        assert!(s.acknowledge_events(2).unwrap());
        assert!(!s.acknowledge_events(2).unwrap(), "acknowledging again trims nothing");
        assert!(!s.acknowledge_events(0).unwrap(), "an older acknowledgement does not bring events back");
        assert_eq!(s.events_after(0, 10).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
        let e = s.acknowledge_events(4).unwrap_err();
        assert_eq!(e.to_string(), "after: 4 is beyond the latest event, 3");
        let mut r = Searcher::restore(&s.snapshot()).unwrap();
        assert_eq!(r, s);
        s.trial_exited(1);
        r.trial_exited(1);
        assert_eq!(r.events_after(0, 10), s.events_after(0, 10));
        assert_eq!(s.events_after(0, 10).last().unwrap().seq, 4);
        assert_eq!(s.total_trials(), None);
        assert_eq!(s.progress(), 0.0);
    }

    /// One step of a random run: the advisor posts a batch, a trial reports or ends, or the
    /// advisor acknowledges events.
    #[derive(Debug, Clone)]
    enum Step {
        Batch(Vec<(u8, prop::sample::Index, i8, u8)>),
        Validate(prop::sample::Index, f64, u32),
        Exit(prop::sample::Index, bool),
        Ack(prop::sample::Index),
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => proptest::collection::vec((0u8..40, any::<prop::sample::Index>(), -31i8..-9, 0u8..12), 0..4).prop_map(Step::Batch),
            3 => (any::<prop::sample::Index>(), -1.0f64..1.0, 1u32..50).prop_map(|(i, m, t)| Step::Validate(i, m, t)),
            2 => (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(i, f)| Step::Exit(i, f)),
            1 => any::<prop::sample::Index>().prop_map(Step::Ack),
        ]
    }

    /// What a step gave: the master's actions or the refusal, and the events now unread.
    type StepResult = (Result<Vec<Action>, SearchError>, Vec<SequencedEvent>);

    fn run_step(s: &mut Searcher, step: &Step, live: &[RequestId], seen: u64, acked: &mut u64) -> StepResult {
        let pick = |i: &prop::sample::Index| (!live.is_empty()).then(|| live[i.index(live.len())]);
        let result = match step {
            Step::Batch(items) => {
                let actions = items
                    .iter()
                    .map(|(kind, idx, lr_tenths, h)| match kind {
                        // Mostly creates, a few out of the space (lr beyond 10^-1 or below 10^-3, h = 3).
                        0..=27 => AdvisorAction::Create {
                            hparams: point(10f64.powf(f64::from(*lr_tenths) / 10.0), if *h == 0 { 3 } else { 1 + i64::from(*h % 2) }),
                            checkpoint_from: (*kind == 27).then(|| idx.index(5) as RequestId),
                        },
                        28..=38 => AdvisorAction::Stop { request_id: pick(idx).unwrap_or(99) },
                        _ => AdvisorAction::Shutdown { failure: false },
                    })
                    .collect();
                let before = s.clone();
                let result = s.external_actions(actions);
                match &result {
                    Ok(a) => confirm(s, a),
                    Err(_) => assert_eq!(*s, before, "a refused batch changes nothing"),
                }
                result
            }
            Step::Validate(i, metric, time) => {
                Ok(pick(i).map_or_else(Vec::new, |id| s.validation_completed(id, *metric, f64::from(*time))))
            }
            Step::Exit(i, failed) => Ok(pick(i).map_or_else(Vec::new, |id| if *failed { s.trial_failed(id) } else { s.trial_exited(id) })),
            // The advisor acknowledges at most what it has read.
            Step::Ack(i) => {
                let after = *acked + i.index((seen - *acked + 1) as usize) as u64;
                s.acknowledge_events(after).unwrap();
                *acked = after;
                Ok(Vec::new())
            }
        };
        (result, s.events_after(*acked, usize::MAX))
    }

    proptest! {
        /// Whatever the advisor asks and however trials end: never more than max_trials
        /// created or max_concurrent live, a refused batch changes nothing, the advisor sees
        /// every event exactly once in sequence order, and a snapshot taken at any point
        /// restores to a searcher with the very same future.
        #[test]
        fn invariants_and_exact_restore(
            max_trials in proptest::option::of(1usize..12),
            max_concurrent in 1usize..5,
            seed in any::<u64>(),
            steps in proptest::collection::vec(step_strategy(), 0..80),
            snap_at in 0usize..80,
        ) {
            let cap = max_trials.map_or(String::new(), |n| format!(", max_trials: {n}"));
            let cfg = config(&format!("{{name: custom, metric: m, max_concurrent_trials: {max_concurrent}{cap}}}"));
            let mut s = Searcher::new(&cfg, seed).unwrap();
            prop_assert!(s.initial_trials().is_empty());
            let mut live: Vec<RequestId> = Vec::new();
            let mut created = 0;
            let (mut acked, mut restored_acked) = (0u64, 0u64);
            let mut restored: Option<Searcher> = None;
            // The advisor reads what is there at the start, then what is new after each step.
            let mut seen: Vec<u64> = s.events_after(0, usize::MAX).iter().map(|e| e.seq).collect();
            let mut shutdowns = 0;
            for (i, step) in steps.iter().enumerate() {
                if i == snap_at {
                    restored = Some(Searcher::restore(&s.snapshot()).unwrap());
                    restored_acked = acked;
                }
                let max_seen = seen.last().copied().unwrap_or(0);
                let (result, unread) = run_step(&mut s, step, &live, max_seen, &mut acked);
                if let Some(r) = restored.as_mut() {
                    let again = run_step(r, step, &live, max_seen, &mut restored_acked);
                    prop_assert_eq!(&again, &(result.clone(), unread.clone()));
                }
                for e in &unread {
                    if seen.last().is_none_or(|last| e.seq > *last) {
                        seen.push(e.seq);
                    }
                }
                if let (Step::Exit(pick, _), false) = (step, live.is_empty()) {
                    let id = live[pick.index(live.len())];
                    live.retain(|x| *x != id);
                }
                for a in result.iter().flatten() {
                    match a {
                        Action::Create { request_id, .. } => { live.push(*request_id); created += 1; }
                        Action::Stop { request_id } => prop_assert!(live.contains(request_id)),
                        Action::Shutdown { .. } => shutdowns += 1,
                    }
                }
                prop_assert!(live.len() <= max_concurrent);
                prop_assert!(max_trials.is_none_or(|m| created <= m));
                prop_assert!(shutdowns <= 1);
            }
            let expected: Vec<u64> = (1..=s.last_event_seq()).collect();
            prop_assert_eq!(seen, expected, "every event, once, in order");
            let live_set: BTreeSet<RequestId> = live.into_iter().collect();
            prop_assert_eq!(&live_set, &s.live);
        }
    }
}
