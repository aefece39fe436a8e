//! # palisade-nft
//!
//! The nftables dataplane. It owns one `inet` table (default `palisade`) on the node and
//! nothing else: it translates a [`NodeRuleset`] into that table and applies it, always in
//! one `nft -f` transaction, so the kernel never holds half a ruleset.
//!
//! What it must not do: decide what a policy means. Isolation, peers, ports (named ports
//! included) and excepts are already resolved in the IR; this crate only maps them onto
//! nft objects. It depends on `palisade-ir` alone, never on the model or the engine.
//!
//! ## The table
//! - base chain `forward` (hook forward, policy accept): established/related accept, invalid
//!   drop, then the *egress* dispatch on the source address and the *ingress* dispatch on the
//!   destination address, through verdict maps `egress_v4`/`_v6` and `ingress_v4`/`_v6`
//!   (endpoint address -> `jump <direction>_<endpoint>_<hash>`).
//! - one chain per endpoint and isolated direction: one rule per allow rule (and family),
//!   with its [`palisade_ir::RuleOrigin`] as comment, then `counter drop` (default deny).
//!   Egress chains `return` on allow so the destination's ingress check still runs (pod to
//!   pod on one node passes both); ingress chains `accept`. Directions that are not
//!   isolated have no chain and no map entry.
//! - named interval sets: `peer_<hash>_v4`/`_v6` (addresses), named by the policy rule that
//!   uses them, so a pod joining a selector is an element update, not a chain rewrite; and
//!   `port_<hash>` (`inet_proto . inet_service`), the IR's content name. See `names.rs`.
//!
//! Established and related packets are accepted before any policy check: a policy change
//! judges new connections only, established ones live on until conntrack forgets them
//! (DESIGN §12). Packets conntrack marks invalid are dropped.
//!
//! The node's own traffic to its pods (kubelet probes) goes through the output hook, not
//! forward, so it always passes. Traffic from a pod to the node itself (input hook) is not
//! filtered either.
//!
//! ## Where to start reading
//! [`render_full`] and [`render_update`] (pure, in `render.rs`); [`NftDataplane`] applies them
//! through an [`NftExecutor`]: [`SystemNft`] for the real kernel, [`FakeNft`] for tests.
//! The golden files in `tests/golden/` show what the rendered table looks like.

mod exec;
mod names;
mod render;
mod validate;

use palisade_ir::{ApplyReport, Dataplane, DataplaneError, NodeRuleset};

pub use exec::{FakeNft, NftError, NftExecutor, SystemNft};
pub use validate::{RenderError, validate};

/// Backend settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Name of the `inet` table this backend owns (and replaces wholesale).
    pub table: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            table: "palisade".to_string(),
        }
    }
}

/// The whole table as one `nft -f` script: it creates the table if missing, deletes it and
/// re-creates it with every object, in one transaction. Deterministic: the same ruleset
/// always renders to the same text.
pub fn render_full(desired: &NodeRuleset, config: &Config) -> String {
    render::full_script(desired, config).text
}

/// One `nft -f` transaction that moves a table holding `current` (as installed by
/// [`render_full`] or a previous update) to `desired`, touching only what changed: set
/// elements, new and removed sets, changed endpoint chains (flushed and refilled), map
/// entries. Empty when nothing changed.
pub fn render_update(current: &NodeRuleset, desired: &NodeRuleset, config: &Config) -> String {
    render::update_script(current, desired, config).text
}

/// Deletes the table if it exists, in one transaction that never fails on a missing table.
pub fn render_remove(config: &Config) -> String {
    let t = &config.table;
    format!("table inet {t}\ndelete table inet {t}\n")
}

const BACKEND: &str = "nft";

/// The nftables [`Dataplane`].
///
/// `apply_update` sends only the diff; if nft rejects it (the kernel no longer holds
/// `current`, e.g. someone edited the table), it falls back to a full replace, which is
/// always correct, and reports `full: true`.
#[derive(Debug)]
pub struct NftDataplane<E: NftExecutor> {
    executor: E,
    config: Config,
}

impl<E: NftExecutor> NftDataplane<E> {
    pub fn new(executor: E, config: Config) -> NftDataplane<E> {
        NftDataplane { executor, config }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn executor(&self) -> &E {
        &self.executor
    }

    pub fn executor_mut(&mut self) -> &mut E {
        &mut self.executor
    }

    pub fn into_executor(self) -> E {
        self.executor
    }

    fn check(&self, rs: &NodeRuleset, action: &str) -> Result<(), DataplaneError> {
        validate(rs, &self.config).map_err(|e| failed(action, e.to_string()))
    }
}

fn failed(action: &str, message: String) -> DataplaneError {
    DataplaneError::Apply {
        backend: BACKEND,
        action: action.to_string(),
        message,
    }
}

impl<E: NftExecutor + Send> Dataplane for NftDataplane<E> {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn apply_full(&mut self, desired: &NodeRuleset) -> Result<ApplyReport, DataplaneError> {
        let action = format!("full apply of table inet {}", self.config.table);
        self.check(desired, &action)?;
        let script = render::full_script(desired, &self.config);
        self.executor
            .run(&script.text)
            .map_err(|e| failed(&action, e.to_string()))?;
        Ok(ApplyReport {
            full: true,
            operations: script.operations,
        })
    }

    fn apply_update(
        &mut self,
        current: &NodeRuleset,
        desired: &NodeRuleset,
    ) -> Result<ApplyReport, DataplaneError> {
        let action = format!("update of table inet {}", self.config.table);
        self.check(desired, &action)?;
        let script = render::update_script(current, desired, &self.config);
        if script.operations == 0 {
            return Ok(ApplyReport {
                full: false,
                operations: 0,
            });
        }
        match self.executor.run(&script.text) {
            Ok(_) => Ok(ApplyReport {
                full: false,
                operations: script.operations,
            }),
            Err(e) => {
                tracing::warn!(
                    table = %self.config.table,
                    error = %e,
                    "nft rejected the incremental update; replacing the whole table"
                );
                self.apply_full(desired)
            }
        }
    }

    fn remove(&mut self) -> Result<(), DataplaneError> {
        let action = format!("removal of table inet {}", self.config.table);
        if !names::is_identifier(&self.config.table) {
            return Err(failed(
                &action,
                format!("{:?} is not a valid nft table name", self.config.table),
            ));
        }
        self.executor
            .run(&render_remove(&self.config))
            .map(|_| ())
            .map_err(|e| failed(&action, e.to_string()))
    }
}
