//! State machines of experiments, trials and allocations as plain data: which transitions are
//! allowed is decided here and nowhere else, so the master and the store cannot disagree.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot move {what} from {from} to {to}")]
pub struct TransitionError {
    pub what: &'static str,
    pub from: String,
    pub to: String,
}

macro_rules! state_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Moves to `to` if the machine allows it.
            pub fn transition(self, to: $name) -> Result<$name, TransitionError> {
                if self.can_become(to) {
                    Ok(to)
                } else {
                    Err(TransitionError { what: $what, from: self.as_str().into(), to: to.as_str().into() })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} state `{other}`", $what)),
                }
            }
        }
    };
}

state_enum!(
    /// Determined's experiment lifecycle: ACTIVE and PAUSED, then a STOPPING_* state while trials
    /// wind down, then a terminal state.
    ExperimentState, "experiment" {
        Active => "ACTIVE",
        Paused => "PAUSED",
        StoppingCompleted => "STOPPING_COMPLETED",
        StoppingCanceled => "STOPPING_CANCELED",
        StoppingKilled => "STOPPING_KILLED",
        StoppingError => "STOPPING_ERROR",
        Completed => "COMPLETED",
        Canceled => "CANCELED",
        Error => "ERROR",
    }
);

impl ExperimentState {
    pub fn can_become(self, to: ExperimentState) -> bool {
        use ExperimentState::*;
        match self {
            Active => matches!(to, Paused | StoppingCompleted | StoppingCanceled | StoppingKilled | StoppingError),
            Paused => matches!(to, Active | StoppingCanceled | StoppingKilled | StoppingError),
            // A kill may overtake a graceful stop; the reverse would resurrect killed work.
            StoppingCompleted => matches!(to, Completed | StoppingCanceled | StoppingKilled | StoppingError),
            StoppingCanceled => matches!(to, Canceled | StoppingKilled | StoppingError),
            StoppingKilled => matches!(to, Canceled | StoppingError),
            StoppingError => matches!(to, Error | StoppingKilled),
            Completed | Canceled | Error => false,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, ExperimentState::Completed | ExperimentState::Canceled | ExperimentState::Error)
    }

    pub fn is_stopping(self) -> bool {
        use ExperimentState::*;
        matches!(self, StoppingCompleted | StoppingCanceled | StoppingKilled | StoppingError)
    }

    /// The terminal state a stopping experiment ends in once its trials are gone.
    pub fn settles_to(self) -> Option<ExperimentState> {
        use ExperimentState::*;
        match self {
            StoppingCompleted => Some(Completed),
            StoppingCanceled | StoppingKilled => Some(Canceled),
            StoppingError => Some(Error),
            _ => None,
        }
    }
}

state_enum!(
    /// A trial waits in QUEUED for slots, RUNNING while its process lives, goes back to QUEUED
    /// for a restart, and passes through STOPPING_* while its process is being stopped.
    TrialState, "trial" {
        Queued => "QUEUED",
        Running => "RUNNING",
        Paused => "PAUSED",
        StoppingPaused => "STOPPING_PAUSED",
        StoppingCompleted => "STOPPING_COMPLETED",
        StoppingCanceled => "STOPPING_CANCELED",
        StoppingKilled => "STOPPING_KILLED",
        Completed => "COMPLETED",
        Canceled => "CANCELED",
        Error => "ERROR",
    }
);

impl TrialState {
    pub fn can_become(self, to: TrialState) -> bool {
        use TrialState::*;
        match self {
            // Nothing runs yet, so a queued trial stops at once.
            Queued => matches!(to, Running | Paused | Completed | Canceled | Error),
            Running => matches!(to, Queued | Completed | Error | StoppingPaused | StoppingCompleted | StoppingCanceled | StoppingKilled),
            Paused => matches!(to, Queued | Canceled),
            StoppingPaused => matches!(to, Paused | StoppingCanceled | StoppingKilled | Completed | Error),
            StoppingCompleted => matches!(to, Completed | StoppingCanceled | StoppingKilled | Error),
            StoppingCanceled => matches!(to, Canceled | StoppingKilled | Completed | Error),
            StoppingKilled => matches!(to, Canceled),
            Completed | Canceled | Error => false,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TrialState::Completed | TrialState::Canceled | TrialState::Error)
    }

    /// Whether a process may be alive for this trial.
    pub fn has_process(self) -> bool {
        use TrialState::*;
        matches!(self, Running | StoppingPaused | StoppingCompleted | StoppingCanceled | StoppingKilled)
    }
}

state_enum!(
    /// One attempt at running a trial on the cluster.
    AllocationState, "allocation" {
        Pending => "PENDING",
        Assigned => "ASSIGNED",
        Running => "RUNNING",
        Terminating => "TERMINATING",
        Terminated => "TERMINATED",
    }
);

impl AllocationState {
    pub fn can_become(self, to: AllocationState) -> bool {
        use AllocationState::*;
        match self {
            Pending => matches!(to, Assigned | Terminated),
            Assigned => matches!(to, Running | Terminating | Terminated),
            Running => matches!(to, Terminating | Terminated),
            Terminating => matches!(to, Terminated),
            Terminated => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the whole transition table: every listed pair is allowed and every other refused.
    fn check_table<S: Copy + PartialEq + fmt::Debug>(all: &[S], allowed: &[(S, S)], can: impl Fn(S, S) -> bool) {
        for &from in all {
            for &to in all {
                let expected = allowed.contains(&(from, to));
                assert_eq!(can(from, to), expected, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn experiment_transitions() {
        use ExperimentState::*;
        let allowed = [
            (Active, Paused),
            (Active, StoppingCompleted),
            (Active, StoppingCanceled),
            (Active, StoppingKilled),
            (Active, StoppingError),
            (Paused, Active),
            (Paused, StoppingCanceled),
            (Paused, StoppingKilled),
            (Paused, StoppingError),
            (StoppingCompleted, Completed),
            (StoppingCompleted, StoppingCanceled),
            (StoppingCompleted, StoppingKilled),
            (StoppingCompleted, StoppingError),
            (StoppingCanceled, Canceled),
            (StoppingCanceled, StoppingKilled),
            (StoppingCanceled, StoppingError),
            (StoppingKilled, Canceled),
            (StoppingKilled, StoppingError),
            (StoppingError, Error),
            (StoppingError, StoppingKilled),
        ];
        check_table(ExperimentState::ALL, &allowed, |a, b| a.can_become(b));
        assert_eq!(Active.transition(Paused), Ok(Paused));
        let err = Completed.transition(Active).unwrap_err();
        assert_eq!(err.to_string(), "cannot move experiment from COMPLETED to ACTIVE");
        for s in ExperimentState::ALL {
            assert_eq!(s.as_str().parse::<ExperimentState>(), Ok(*s));
            if let Some(t) = s.settles_to() {
                assert!(s.can_become(t), "{s} must be able to settle to {t}");
            }
        }
    }

    #[test]
    fn trial_transitions() {
        use TrialState::*;
        let allowed = [
            (Queued, Running),
            (Queued, Paused),
            (Queued, Completed),
            (Queued, Canceled),
            (Queued, Error),
            (Running, Queued),
            (Running, Completed),
            (Running, Error),
            (Running, StoppingPaused),
            (Running, StoppingCompleted),
            (Running, StoppingCanceled),
            (Running, StoppingKilled),
            (Paused, Queued),
            (Paused, Canceled),
            (StoppingPaused, Paused),
            (StoppingPaused, StoppingCanceled),
            (StoppingPaused, StoppingKilled),
            (StoppingPaused, Completed),
            (StoppingPaused, Error),
            (StoppingCompleted, Completed),
            (StoppingCompleted, StoppingCanceled),
            (StoppingCompleted, StoppingKilled),
            (StoppingCompleted, Error),
            (StoppingCanceled, Canceled),
            (StoppingCanceled, StoppingKilled),
            (StoppingCanceled, Completed),
            (StoppingCanceled, Error),
            (StoppingKilled, Canceled),
        ];
        check_table(TrialState::ALL, &allowed, |a, b| a.can_become(b));
        assert!(Running.transition(Queued).is_ok());
        assert!(Completed.transition(Running).is_err());
        assert!("BOGUS".parse::<TrialState>().is_err());
    }

    #[test]
    fn allocation_transitions() {
        use AllocationState::*;
        let allowed = [
            (Pending, Assigned),
            (Pending, Terminated),
            (Assigned, Running),
            (Assigned, Terminating),
            (Assigned, Terminated),
            (Running, Terminating),
            (Running, Terminated),
            (Terminating, Terminated),
        ];
        check_table(AllocationState::ALL, &allowed, |a, b| a.can_become(b));
    }

    #[test]
    fn json_names_match_determined() {
        assert_eq!(serde_json::to_string(&ExperimentState::StoppingCanceled).unwrap(), "\"STOPPING_CANCELED\"");
        assert_eq!(serde_json::from_str::<TrialState>("\"RUNNING\"").unwrap(), TrialState::Running);
    }
}
