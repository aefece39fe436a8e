//! The one reconcile loop every caller (agent, lab, CLI) drives a backend with.
//!
//! It remembers what it last applied and moves the kernel there by the smallest step
//! that is still safe:
//! - the first apply, the first after a failure, and one every `resync_every` replace the
//!   whole ruleset (a failed transaction left the kernel as it was, but the next attempt
//!   does not trust a diff against it; a periodic full apply undoes anyone's edits to
//!   the backend's own objects);
//! - otherwise only the [`RulesetDiff`] is sent, and nothing when it is empty.
//!
//! A ruleset that breaks an IR invariant is refused before the backend sees it, and like
//! any failed apply it leaves the previous ruleset in force (never a half-applied one).

use std::time::{Duration, Instant};

use crate::{ApplyReport, Counters, Dataplane, DataplaneError, NodeRuleset, RulesetDiff};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilerConfig {
    /// How often a full apply repairs drift; `None` never (tests, one-shot CLI use).
    pub resync_every: Option<Duration>,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            resync_every: Some(Duration::from_secs(300)),
        }
    }
}

/// What one [`Reconciler::reconcile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The desired ruleset is what is applied, and no resync was due: nothing was sent.
    Unchanged,
    Applied {
        report: ApplyReport,
        /// Set elements added or removed (0 for a full apply).
        element_changes: usize,
    },
}

pub struct Reconciler {
    dataplane: Box<dyn Dataplane>,
    config: ReconcilerConfig,
    applied: Option<NodeRuleset>,
    needs_full: bool,
    /// The last attempt failed (the first one included).
    failed: bool,
    generation: u64,
    last_full: Option<Instant>,
    last_apply_completed: Option<Instant>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("backend", &self.dataplane.name())
            .field("generation", &self.generation)
            .field("needs_full", &self.needs_full)
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    pub fn new(dataplane: Box<dyn Dataplane>, config: ReconcilerConfig) -> Reconciler {
        Reconciler {
            dataplane,
            config,
            applied: None,
            needs_full: true,
            failed: false,
            generation: 0,
            last_full: None,
            last_apply_completed: None,
        }
    }

    pub fn backend(&self) -> &'static str {
        self.dataplane.name()
    }

    /// The ruleset in force: the last one applied successfully.
    pub fn applied(&self) -> Option<&NodeRuleset> {
        self.applied.as_ref()
    }

    /// Counts successful applies that changed something.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn last_apply_completed(&self) -> Option<Instant> {
        self.last_apply_completed
    }

    /// True after a failed apply (or a refused ruleset), until an apply succeeds.
    pub fn failing(&self) -> bool {
        self.failed
    }

    /// When the next periodic full apply is due (`None`: never, or not applied yet).
    pub fn resync_due_at(&self) -> Option<Instant> {
        Some(self.last_full? + self.config.resync_every?)
    }

    /// Moves the backend to `desired` (see the module docs for full vs diff).
    pub fn reconcile(&mut self, desired: NodeRuleset) -> Result<Reconciled, DataplaneError> {
        let backend = self.dataplane.name();
        desired
            .validate()
            .map_err(|source| DataplaneError::Invalid { backend, source })
            .inspect_err(|_| self.failed = true)?;
        let resync_due = self.resync_due_at().is_some_and(|at| Instant::now() >= at);
        let outcome = match (&self.applied, self.needs_full || resync_due) {
            (Some(current), false) => {
                let diff = RulesetDiff::between(current, &desired);
                if diff.is_empty() {
                    return Ok(Reconciled::Unchanged);
                }
                self.dataplane
                    .apply_update(current, &desired, &diff)
                    .map(|report| Reconciled::Applied {
                        element_changes: if report.full {
                            0
                        } else {
                            diff.element_changes()
                        },
                        report,
                    })
            }
            _ => self
                .dataplane
                .apply_full(&desired)
                .map(|report| Reconciled::Applied {
                    report,
                    element_changes: 0,
                }),
        };
        match &outcome {
            Ok(Reconciled::Applied { report, .. }) => {
                let now = Instant::now();
                if report.full {
                    self.last_full = Some(now);
                }
                self.last_apply_completed = Some(now);
                self.generation += 1;
                self.needs_full = false;
                self.failed = false;
                self.applied = Some(desired);
            }
            Ok(Reconciled::Unchanged) => self.failed = false,
            Err(e) => {
                tracing::warn!(backend, error = %e, "apply failed; the previous ruleset stays in force");
                self.needs_full = true;
                self.failed = true;
            }
        }
        outcome
    }

    /// Re-applies what is applied, in full (drift repair on demand).
    pub fn resync(&mut self) -> Result<Reconciled, DataplaneError> {
        match self.applied.clone() {
            Some(rs) => {
                self.needs_full = true;
                self.reconcile(rs)
            }
            None => Ok(Reconciled::Unchanged),
        }
    }

    pub fn counters(&mut self) -> Result<Counters, DataplaneError> {
        self.dataplane.counters()
    }

    /// The backend's counter reader for another thread ([`Dataplane::counter_reader`]).
    pub fn counter_reader(&mut self) -> Result<Box<dyn crate::CounterReader>, DataplaneError> {
        self.dataplane.counter_reader()
    }

    /// The backend's verdict events ([`Dataplane::events`]).
    pub fn events(&mut self) -> Result<Box<dyn crate::events::EventSource>, DataplaneError> {
        self.dataplane.events()
    }

    /// Removes everything the backend installed; the next reconcile starts from scratch.
    pub fn remove(&mut self) -> Result<(), DataplaneError> {
        self.dataplane.remove()?;
        self.applied = None;
        self.needs_full = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordingDataplane;

    fn ruleset(endpoints: usize) -> NodeRuleset {
        let mut rs = NodeRuleset {
            node: "n".into(),
            ..Default::default()
        };
        for i in 0..endpoints {
            let name = format!("ns/p{i}");
            rs.endpoints.insert(
                name.clone(),
                crate::Endpoint {
                    name,
                    ips: vec![format!("10.0.0.{}", i + 1).parse().unwrap()],
                    ingress: Default::default(),
                    egress: Default::default(),
                },
            );
        }
        rs
    }

    #[test]
    fn full_first_then_diffs_nothing_when_equal_and_full_after_a_failure() {
        let log = RecordingDataplane::default();
        let mut r = Reconciler::new(
            Box::new(log.clone()),
            ReconcilerConfig { resync_every: None },
        );
        log.fail_next(1);
        assert!(r.reconcile(ruleset(1)).is_err());
        assert!(
            r.failing(),
            "a failed first apply is a failure to retry too"
        );
        r.reconcile(ruleset(1)).unwrap();
        r.reconcile(ruleset(2)).unwrap();
        assert_eq!(r.reconcile(ruleset(2)).unwrap(), Reconciled::Unchanged);
        assert_eq!(log.take(), ["full 1 FAILED", "full 1", "update 2"]);
        assert_eq!(r.generation(), 2);

        log.fail_next(1);
        assert!(r.reconcile(ruleset(3)).is_err());
        assert!(r.failing());
        assert_eq!(
            r.applied(),
            Some(&ruleset(2)),
            "the failed ruleset is not recorded as applied"
        );
        r.reconcile(ruleset(3)).unwrap();
        assert!(!r.failing());
        assert_eq!(log.take(), ["update 3 FAILED", "full 3"]);
    }

    #[test]
    fn an_invalid_ruleset_never_reaches_the_backend() {
        let log = RecordingDataplane::default();
        let mut r = Reconciler::new(
            Box::new(log.clone()),
            ReconcilerConfig { resync_every: None },
        );
        r.reconcile(ruleset(1)).unwrap();
        let mut bad = ruleset(2);
        bad.endpoints.get_mut("ns/p1").unwrap().ips = vec!["10.0.0.1".parse().unwrap()];
        let e = r.reconcile(bad).unwrap_err();
        assert!(e.to_string().contains("also belongs to endpoint"), "{e}");
        assert_eq!(log.take(), ["full 1"]);
        assert_eq!(r.applied(), Some(&ruleset(1)));
    }

    #[test]
    fn a_due_resync_applies_in_full_even_when_nothing_changed() {
        let log = RecordingDataplane::default();
        let mut r = Reconciler::new(
            Box::new(log.clone()),
            ReconcilerConfig {
                resync_every: Some(Duration::ZERO),
            },
        );
        r.reconcile(ruleset(1)).unwrap();
        r.reconcile(ruleset(1)).unwrap();
        r.resync().unwrap();
        assert_eq!(log.take(), ["full 1", "full 1", "full 1"]);
    }
}
