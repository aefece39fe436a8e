//! A [`Dataplane`] test double that records what it was asked, shared by the tests of
//! everything that drives a backend (the reconciler here, the agent's controller).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use crate::{
    ApplyReport, CounterReader, Counters, Dataplane, DataplaneError, NodeRuleset, RulesetDiff,
};

/// Records each call as text (`full N`, `update N` with N endpoints, `remove`; a call
/// made to fail gets ` FAILED`), and fails the next [`RecordingDataplane::fail_next`]
/// calls. Clones share their record, so a test keeps one while the code under test owns
/// another. It has a [`Dataplane::counter_reader`] only after
/// [`RecordingDataplane::block_counter_reads`].
#[derive(Debug, Default, Clone)]
pub struct RecordingDataplane {
    calls: Arc<Mutex<Vec<String>>>,
    failures_left: Arc<Mutex<usize>>,
    /// Where the counter reader's reads wait for their result.
    counter_results: Arc<Mutex<Option<CounterResults>>>,
    reads_started: Arc<AtomicUsize>,
    reads_done: Arc<AtomicUsize>,
}

impl RecordingDataplane {
    /// Makes the next `n` calls fail (as a rejected transaction would).
    pub fn fail_next(&self, n: usize) {
        *self.failures_left.lock().unwrap_or_else(|p| p.into_inner()) = n;
    }

    /// Gives this dataplane a counter reader whose every read blocks until the test sends
    /// what it returns through the sender (a read fails once the sender is dropped): a slow
    /// counter read, made as slow as the test wants.
    pub fn block_counter_reads(&self) -> Sender<Counters> {
        let (tx, rx) = channel();
        *self
            .counter_results
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Mutex::new(rx)));
        tx
    }

    /// Counter reads started and finished so far, by readers of this dataplane.
    pub fn counter_reads(&self) -> (usize, usize) {
        (
            self.reads_started.load(Ordering::SeqCst),
            self.reads_done.load(Ordering::SeqCst),
        )
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

    fn counter_reader(&mut self) -> Result<Box<dyn CounterReader>, DataplaneError> {
        let results = self
            .counter_results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(DataplaneError::Unsupported {
                backend: "recording",
                what: "reading counters apart from applies",
            })?;
        Ok(Box::new(BlockingCounterReader {
            results,
            started: self.reads_started.clone(),
            done: self.reads_done.clone(),
        }))
    }
}

/// Where a blocked counter read waits for what it returns.
type CounterResults = Arc<Mutex<Receiver<Counters>>>;

/// See [`RecordingDataplane::block_counter_reads`].
struct BlockingCounterReader {
    results: CounterResults,
    started: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
}

impl CounterReader for BlockingCounterReader {
    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let got = self
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv()
            .map_err(|_| DataplaneError::Apply {
                backend: "recording",
                action: "reading counters".into(),
                message: "the test stopped answering counter reads".into(),
            });
        self.done.fetch_add(1, Ordering::SeqCst);
        got
    }
}
