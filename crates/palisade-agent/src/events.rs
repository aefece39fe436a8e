//! Verdict events: the agent's reader of its dataplane's [`EventSource`]. Each kernel
//! report becomes one [`VerdictEvent`] (retransmissions of one connection attempt folded
//! in, see [`Deduplicator`]) with its reason from the rulesets the controller applied,
//! written as a JSON line on stdout, counted in /metrics and sent to every follower of
//! `/events` ([`EventHub::subscribe`]).

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use palisade_ir::NodeRuleset;
use palisade_ir::events::{
    Deduplicator, EventSource, KernelEvent, ReasonIndex, Verdict, VerdictEvent,
};
use tokio::sync::broadcast;

use crate::metrics::Metrics;

/// Reports of one connection attempt within this window are one event.
const DEDUP_WINDOW: Duration = Duration::from_secs(10);
/// Events a slow follower of `/events` may lag behind before it misses some.
const FOLLOWER_BUFFER: usize = 4096;

/// What the reader needs from the controller: reasons for tags, names for addresses.
#[derive(Debug, Default)]
struct Context {
    reasons: ReasonIndex,
    local_pods: HashMap<IpAddr, String>,
}

/// Shared by the controller (which publishes what it applied), the reader thread and the
/// HTTP server.
#[derive(Debug)]
pub struct EventHub {
    node: String,
    context: RwLock<Context>,
    followers: broadcast::Sender<Arc<VerdictEvent>>,
}

impl EventHub {
    pub fn new(node: String) -> Arc<EventHub> {
        let (followers, _) = broadcast::channel(FOLLOWER_BUFFER);
        Arc::new(EventHub {
            node,
            context: RwLock::new(Context::default()),
            followers,
        })
    }

    /// Called after each successful apply: tags of `applied` resolve from now on (tags of
    /// earlier rulesets still do: a report may be read after the rule changed).
    pub fn applied(&self, applied: &NodeRuleset) {
        let reasons = ReasonIndex::of(applied);
        let local_pods = applied
            .endpoints
            .values()
            .flat_map(|ep| ep.ips.iter().map(|ip| (*ip, ep.name.clone())))
            .collect();
        let mut context = self.context.write().unwrap_or_else(|p| p.into_inner());
        context.reasons.merge(reasons);
        context.local_pods = local_pods;
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<VerdictEvent>> {
        self.followers.subscribe()
    }

    /// The event for one kernel report.
    pub fn resolve(&self, event: &KernelEvent, packets: u32) -> VerdictEvent {
        let context = self.context.read().unwrap_or_else(|p| p.into_inner());
        let reason = context.reasons.get(&event.tag).cloned();
        let p = &event.packet;
        VerdictEvent {
            time: rfc3339_now(),
            node: self.node.clone(),
            verdict: event.tag.verdict,
            direction: reason.as_ref().map_or_else(
                || guess_direction(&context.local_pods, p.src),
                |r| r.direction,
            ),
            src: p.src,
            dst: p.dst,
            protocol: p.protocol_name(),
            src_port: p.src_port,
            port: p.dst_port,
            src_pod: context.local_pods.get(&p.src).cloned(),
            dst_pod: context.local_pods.get(&p.dst).cloned(),
            reason,
            tag: event.tag.to_string(),
            packets,
        }
    }
}

/// Without a reason (never expected), a packet from a local pod is its egress.
fn guess_direction(local: &HashMap<IpAddr, String>, src: IpAddr) -> palisade_ir::Direction {
    if local.contains_key(&src) {
        palisade_ir::Direction::Egress
    } else {
        palisade_ir::Direction::Ingress
    }
}

fn rfc3339_now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Reads `source` until `stop` fires: every first report of a connection attempt becomes
/// one event (stdout JSON line, metric, followers).
pub fn read_events(
    mut source: Box<dyn EventSource>,
    hub: Arc<EventHub>,
    metrics: Arc<Metrics>,
    stop: Receiver<()>,
) {
    let mut dedup = Deduplicator::new(DEDUP_WINDOW);
    let stdout = std::io::stdout();
    let mut lost = 0;
    loop {
        match stop.try_recv() {
            Ok(()) | Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {}
        }
        let reports = match source.recv(Duration::from_millis(200)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading verdict events failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let now_lost = source.lost();
        if now_lost > lost {
            tracing::warn!(
                lost = now_lost - lost,
                "verdict events lost before they were read"
            );
            metrics.verdict_events_lost.inc_by(now_lost - lost);
            lost = now_lost;
        }
        for report in reports {
            if !dedup.first(&report) {
                metrics.verdict_retransmissions.inc();
                continue;
            }
            let event = hub.resolve(&report, 1);
            metrics.verdict_event(event.verdict, event.direction);
            metrics
                .verdict_event_delay
                .observe(report.received.elapsed().as_secs_f64());
            if event.reason.is_none() {
                tracing::warn!(tag = %event.tag, "verdict event with a tag no applied ruleset names");
            }
            if let Ok(line) = serde_json::to_string(&event) {
                let mut out = stdout.lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            // No follower is not an error.
            let _ = hub.followers.send(Arc::new(event));
        }
    }
}

/// Whether `event` passes a follower's filters (`palisade events`, `/events?...`).
pub fn matches(
    event: &VerdictEvent,
    namespace: Option<&str>,
    pod: Option<&str>,
    verdict: Option<Verdict>,
) -> bool {
    let pods = [event.src_pod.as_deref(), event.dst_pod.as_deref()];
    let endpoint = event.reason.as_ref().and_then(|r| r.endpoint.as_deref());
    let names = || pods.into_iter().flatten().chain(endpoint);
    verdict.is_none_or(|v| v == event.verdict)
        && namespace.is_none_or(|ns| names().any(|n| n.split('/').next() == Some(ns)))
        && pod.is_none_or(|want| {
            names().any(|n| n == want || n.split_once('/').is_some_and(|(_, name)| name == want))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = rfc3339_now();
        assert!(t.parse::<jiff::Timestamp>().is_ok(), "{t}");
        assert!(t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}
