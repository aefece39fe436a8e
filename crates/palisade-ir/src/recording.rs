//! A [`Dataplane`] test double that records what it was asked, shared by the tests of
//! everything that drives a backend (the reconciler here, the agent's controller).

use std::sync::{Arc, Mutex};

use crate::{ApplyReport, Dataplane, DataplaneError, NodeRuleset, RulesetDiff};

/// Records each call as text (`full N`, `update N` with N endpoints, `remove`; a call
/// made to fail gets ` FAILED`), and fails the next [`RecordingDataplane::fail_next`]
/// calls. Clones share their record, so a test keeps one while the code under test owns
/// another.
#[derive(Debug, Default, Clone)]
pub struct RecordingDataplane {
    calls: Arc<Mutex<Vec<String>>>,
    failures_left: Arc<Mutex<usize>>,
}

impl RecordingDataplane {
    /// Makes the next `n` calls fail (as a rejected transaction would).
    pub fn fail_next(&self, n: usize) {
        *self.failures_left.lock().unwrap_or_else(|p| p.into_inner()) = n;
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The calls so far, forgetting them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, call: String) -> Result<(), DataplaneError> {
        let mut left = self.failures_left.lock().unwrap_or_else(|p| p.into_inner());
        let failed = *left > 0;
        *left = left.saturating_sub(1);
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if failed {
            calls.push(format!("{call} FAILED"));
            return Err(DataplaneError::Apply {
                backend: "recording",
                action: "apply".into(),
                message: "injected failure".into(),
            });
        }
        calls.push(call);
        Ok(())
    }
}

impl Dataplane for RecordingDataplane {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn apply_full(&mut self, desired: &NodeRuleset) -> Result<ApplyReport, DataplaneError> {
        self.record(format!("full {}", desired.endpoints.len()))?;
        Ok(ApplyReport {
            full: true,
            operations: 1,
        })
    }

    fn apply_update(
        &mut self,
        _: &NodeRuleset,
        desired: &NodeRuleset,
        _: &RulesetDiff,
    ) -> Result<ApplyReport, DataplaneError> {
        self.record(format!("update {}", desired.endpoints.len()))?;
        Ok(ApplyReport {
            full: false,
            operations: 1,
        })
    }

    fn remove(&mut self) -> Result<(), DataplaneError> {
        self.record("remove".into())
    }
}
