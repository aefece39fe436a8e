//! # palisade-ebpf
//!
//! The eBPF dataplane. It owns two tc programs (`bpf/palisade.bpf.c`, compiled by clang at
//! build time), the maps they read, and their pins under `/sys/fs/bpf/palisade-ebpf/<scope>`
//! (state files under `/run/palisade-ebpf/<scope>`), nothing else. It translates a
//! [`NodeRuleset`] into map entries; a change is map writes only, never a program reload.
//!
//! What it must not do: decide what a policy means. Isolation, peers, ports, excepts, tiers
//! and attribution come from `palisade-ir` (its [`palisade_ir::pieces`] cut the rules into
//! the disjoint pieces an LPM trie needs); this crate maps them onto maps. It depends on
//! `palisade-ir` alone.
//!
//! ## Where it attaches
//! On the *host side* of each local pod's interface, in the node's network namespace,
//! found from the node's host routes to the pod's addresses (as a routed CNI such as
//! Calico sets them up): `palisade_from_pod` on tc ingress judges the pod's **egress**,
//! `palisade_to_pod` on tc egress judges its **ingress**. So the egress of a pod is
//! checked on its node, the ingress on the destination's node; pod to pod on one node
//! meets both. A new pod is one more attachment, made by the apply that first enforces it.
//!
//! Attached with TCX links (kernel 6.6 or later, pinned), or through a clsact qdisc and
//! tc filters when the kernel refuses TCX. A packet the programs let through goes on to
//! whatever is attached after them (`TC_ACT_UNSPEC`).
//!
//! ## Per packet (constant work, no loop over rules or peers)
//! 1. Not IP: pass. Packets the node itself sends to a pod (no input interface) pass, so
//!    do a pod's packets to the node's own addresses (`pal_local`), link-local, multicast
//!    and neighbour discovery: nft's forward hook never sees those either.
//! 2. Connection state (`pal_conns`, LRU, entries expire after 1 h for TCP, 120 s
//!    otherwise): a packet of a flow this interface already passed in this direction, or
//!    the reply of a flow it passed in the other direction, passes; so does an ICMP error
//!    about such a flow (related). The key holds the interface and the direction, so a
//!    packet on another interface cannot ride a flow. A TCP SYN is always judged (a new
//!    connection), as nft judges `ct state new`. An ICMP error about no known flow is
//!    dropped (conntrack calls it invalid).
//! 3. New connections: `pal_endpoints` {generation, address} (the source for egress, the
//!    destination for ingress) -> the class of that direction; `pal_peers` (LPM)
//!    {generation, class, peer address} -> group; `pal_ports` (LPM) {generation, protocol,
//!    group, port prefix} -> verdict and RuleOrigin id. A miss is the class's *no match*:
//!    default deny if isolated (counted per endpoint and direction in `pal_deny_cnt`), else
//!    open. Allowed connections are counted per RuleOrigin in `pal_allow_cnt` (shared
//!    arrays bumped atomically) and remembered in `pal_conns`.
//!
//!    An endpoint entry also says, per direction, what a packet no rule matches gets:
//!    default deny (isolated), *audit-denied* (policies in audit mode would isolate it: it
//!    passes, counted in `pal_audit_cnt` and reported), or open.
//!
//! ## Verdict events
//! With [`EbpfDataplane::with_events`], default-deny drops, audit-denied connections and
//! (with `log_allowed`) allowed ones are written to the ring buffer `pal_events` as a
//! fixed record ([`layout::decode_event`]) carrying the [`EventTag`] hash of the reason:
//! the endpoint entry holds the tag of its miss per direction, `pal_origin_tags` the tag
//! of each RuleOrigin. The rate limit (per endpoint and direction, per rule for allows) is
//! a GCRA in `pal_limits` moved by compare-and-swap. [`Dataplane::events`] reads the ring.
//!
//! ## Atomic changes: two generations
//! Every policy key carries a generation byte; `pal_config[0]` names the active one. An
//! apply writes the *inactive* generation (only the entries that differ from what it held,
//! or everything after clearing it when what it held is unknown), then flips
//! `pal_config[0]` in one write (a one-byte change): packets see the old ruleset or the
//! new one, never a mix. A failed write leaves the active generation untouched. What each
//! generation holds is remembered (with a stamp file beside the pins, so another instance
//! writing it is noticed and a full rewrite follows). A full apply rewrites the inactive
//! generation whole and flips.
//!
//! ## Reading it back
//! [`Dataplane::kernel_state`] prints the active generation canonically (classes and
//! groups numbered by content, origins by name, counters left out): two dataplanes that
//! enforce the same print the same. [`Dataplane::counters`] reads the counter maps.
//!
//! ## Where to start reading
//! `layout.rs` (the bytes of every key and value), `plan.rs` (IR -> entries), then
//! [`EbpfDataplane`], which applies plans through a [`BpfExecutor`]: [`SystemBpf`] for the
//! real kernel, [`FakeBpf`] (a stateful stand-in that also runs the program's lookups on
//! a packet) for tests.

mod exec;
pub mod layout;
mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use palisade_ir::events::{EventConfig, EventSource, EventTag};
use palisade_ir::{
    ApplyReport, Count, CounterReader, Counters, Dataplane, DataplaneError, Direction, NodeRuleset,
    RuleOrigin, RulesetDiff, SetId,
};

pub use exec::{
    BpfError, BpfExecutor, Entries, FakeBpf, FakePacket, FakeState, HostRoute, PIN_ROOT, SystemBpf,
    gc_stale_pins,
};
use layout::MapKind;
pub use plan::{Ids, Part, Plan, PlanCache};

const BACKEND: &str = "ebpf";
const IDS_FILE: &str = "ids.json";
/// RuleOrigin ids index `pal_allow_cnt` (262,144 entries).
const MAX_ORIGINS: usize = 262_143;
/// Default-deny slots index `pal_deny_cnt` (2 per endpoint).
const MAX_SLOTS: usize = 262_143;

fn failed(action: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Apply {
        backend: BACKEND,
        action: action.to_string(),
        message: e.to_string(),
    }
}

/// The map entries of `desired` as [`Dataplane::apply_full`] would write them (generation
/// 0), as canonical text: what `apply --dry-run` prints.
pub fn render_full(desired: &NodeRuleset) -> String {
    let mut ids = Ids::default();
    let plan = plan::plan(desired, &mut ids, &mut PlanCache::default());
    let origins = ids.origins.clone();
    let slots = ids.slots.clone();
    let mut out = format!(
        "# palisade-ebpf: map entries for node {:?} ({} entries)\n",
        desired.node,
        plan.entries()
    );
    out.push_str(&plan::canonical(
        &plan.map(MapKind::Endpoints),
        &plan.map(MapKind::Peers),
        &plan.map(MapKind::Ports),
        &|id| {
            id.checked_sub(1)
                .and_then(|i| origins.get(i as usize))
                .map_or_else(|| format!("origin#{id}"), |o| o.to_string())
        },
        &|s| {
            slots
                .get(s as usize)
                .cloned()
                .unwrap_or_else(|| format!("slot#{s}"))
        },
    ));
    out
}

/// The eBPF [`Dataplane`].
#[derive(Debug)]
pub struct EbpfDataplane<E: BpfExecutor> {
    executor: E,
    ids: Option<Ids>,
    /// What each generation holds, with the stamp written when it was filled.
    gens: [Option<(String, std::sync::Arc<Plan>)>; 2],
    /// Interfaces of local endpoints, from the last apply that read the routes.
    wanted: Option<BTreeSet<u32>>,
    cache: PlanCache,
    /// (origins, slots) in the ids file this instance last wrote.
    ids_written: Option<(usize, usize)>,
    /// Verdict events: `None` leaves them off (the program then reports nothing).
    events: Option<EventConfig>,
    /// Whether this instance wrote `pal_event_cfg` since its last full apply.
    event_config_written: bool,
    /// How many origins' tags this instance wrote into `pal_origin_tags` (they only grow,
    /// like the origin ids).
    origin_tags_written: usize,
    /// What the counter slots are named after the last apply, for counter readers.
    published: Arc<Mutex<Arc<CounterNames>>>,
}

/// What the counter maps' indexes stand for: RuleOrigin id - 1 and endpoint slot.
#[derive(Debug, Default)]
struct CounterNames {
    origins: Vec<RuleOrigin>,
    slots: Vec<String>,
}

/// The counters the maps hold, named by `names`.
fn read_counters(
    executor: &mut dyn BpfExecutor,
    names: &CounterNames,
) -> Result<Counters, BpfError> {
    let mut c = Counters::default();
    for (i, origin) in names.origins.iter().enumerate() {
        let (packets, bytes) = executor.count(MapKind::AllowCounts, i as u32 + 1)?;
        if packets > 0 {
            let e = c.allowed.entry(origin.clone()).or_default();
            e.packets += packets;
            e.bytes += bytes;
        }
    }
    for (slot, name) in names.slots.iter().enumerate() {
        for (d, dir) in [(0u32, Direction::Ingress), (1, Direction::Egress)] {
            for (map, out) in [
                (MapKind::DenyCounts, &mut c.default_deny),
                (MapKind::AuditCounts, &mut c.audit_denied),
            ] {
                let (packets, bytes) = executor.count(map, slot as u32 * 2 + d)?;
                if packets > 0 {
                    out.insert((name.clone(), dir), Count { packets, bytes });
                }
            }
        }
    }
    Ok(c)
}

/// Reads an [`EbpfDataplane`]'s counters on another thread (see
/// [`Dataplane::counter_reader`]): its own map handles, the names of the last apply.
struct EbpfCounterReader {
    executor: Box<dyn BpfExecutor>,
    names: Arc<Mutex<Arc<CounterNames>>>,
}

impl CounterReader for EbpfCounterReader {
    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        let names = Arc::clone(&self.names.lock().unwrap_or_else(|p| p.into_inner()));
        if !self.executor.is_loaded() {
            return Ok(Counters::default());
        }
        read_counters(self.executor.as_mut(), &names)
            .map_err(|e| failed("reading the eBPF counters", e))
    }
}

impl<E: BpfExecutor> EbpfDataplane<E> {
    pub fn new(executor: E) -> EbpfDataplane<E> {
        EbpfDataplane {
            executor,
            ids: None,
            gens: [None, None],
            wanted: None,
            cache: PlanCache::default(),
            ids_written: None,
            events: None,
            event_config_written: false,
            origin_tags_written: 0,
            published: Arc::default(),
        }
    }

    /// Turns verdict events on (`Some`) or off: default-deny drops and audit-denied
    /// connections (and allowed ones with `log_allowed`) are reported through the ring
    /// buffer `pal_events`, rate-limited in the program per endpoint and direction (per
    /// rule for allows).
    pub fn with_events(mut self, events: Option<EventConfig>) -> EbpfDataplane<E> {
        self.events = events;
        self
    }

    /// The event configuration (written by the first apply and by every full one: the
    /// pins may be shared with an instance configured otherwise).
    fn write_event_config(&mut self) -> Result<(), BpfError> {
        self.executor.update(
            MapKind::EventConfig,
            &0u32.to_ne_bytes(),
            &layout::event_config(self.events.as_ref()),
        )?;
        self.event_config_written = true;
        Ok(())
    }

    /// Writes the event configuration when due, and the tags of origins this instance has
    /// not written yet (only when allowed connections are reported).
    fn sync_event_maps(&mut self, ids: &Ids, full: bool) -> Result<(), BpfError> {
        if full || !self.event_config_written {
            self.write_event_config()?;
        }
        if self.events.is_some_and(|e| e.log_allowed) {
            for (i, origin) in ids
                .origins
                .iter()
                .enumerate()
                .skip(self.origin_tags_written)
            {
                self.executor.update(
                    MapKind::OriginTags,
                    &(i as u32 + 1).to_ne_bytes(),
                    &EventTag::allowed(origin).hash.to_ne_bytes(),
                )?;
            }
            self.origin_tags_written = ids.origins.len();
        }
        Ok(())
    }

    pub fn executor(&self) -> &E {
        &self.executor
    }

    pub fn executor_mut(&mut self) -> &mut E {
        &mut self.executor
    }

    fn load_ids(&mut self) -> Result<Ids, BpfError> {
        if let Some(ids) = self.ids.take() {
            return Ok(ids);
        }
        let mut ids: Ids = match self.executor.read_state(IDS_FILE)? {
            Some(text) => serde_json::from_str(&text).unwrap_or_default(),
            None => Ids::default(),
        };
        ids.reindex();
        Ok(ids)
    }

    fn active_gen(&mut self) -> Result<u8, BpfError> {
        Ok(self
            .executor
            .lookup(MapKind::Config, &0u32.to_ne_bytes())?
            .map_or(0, |v| (layout::u32_at(&v, 0) & 1) as u8))
    }

    /// Writes generation `g` from `from` (what it holds) to `to`; `None`: clear it first.
    fn write_gen(&mut self, g: u8, from: Option<&Plan>, to: &Plan) -> Result<usize, BpfError> {
        let mut ops = 0;
        let Some(old) = from else {
            for m in MapKind::POLICY {
                for k in self.executor.keys(m)? {
                    if layout::gen_of(m, &k) == Some(g) {
                        self.executor.delete(m, &k)?;
                        ops += 1;
                    }
                }
            }
            ops += self.write_diff(g, MapKind::Endpoints, &BTreeMap::new(), &to.endpoints)?;
            for (m, parts) in [(MapKind::Peers, &to.classes), (MapKind::Ports, &to.groups)] {
                for part in parts.values() {
                    ops += self.write_diff(g, m, &BTreeMap::new(), part)?;
                }
            }
            return Ok(ops);
        };
        ops += self.write_diff(g, MapKind::Endpoints, &old.endpoints, &to.endpoints)?;
        let empty = BTreeMap::new();
        for (m, new, before) in [
            (MapKind::Peers, &to.classes, &old.classes),
            (MapKind::Ports, &to.groups, &old.groups),
        ] {
            for (id, part) in new {
                match before.get(id) {
                    Some(b) if std::sync::Arc::ptr_eq(b, part) => {}
                    Some(b) => ops += self.write_diff(g, m, b, part)?,
                    None => ops += self.write_diff(g, m, &empty, part)?,
                }
            }
            for (id, b) in before {
                if !new.contains_key(id) {
                    ops += self.write_diff(g, m, b, &empty)?;
                }
            }
        }
        Ok(ops)
    }

    /// Writes what differs between `old` and `new` (entries of one map) into generation `g`.
    fn write_diff(
        &mut self,
        g: u8,
        m: MapKind,
        old: &BTreeMap<Vec<u8>, Vec<u8>>,
        new: &BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> Result<usize, BpfError> {
        let mut ops = 0;
        for (k, v) in new {
            if old.get(k) != Some(v) {
                self.executor.update(m, &layout::with_gen(m, k, g), v)?;
                ops += 1;
            }
        }
        for k in old.keys() {
            if !new.contains_key(k) {
                self.executor.delete(m, &layout::with_gen(m, k, g))?;
                ops += 1;
            }
        }
        Ok(ops)
    }

    fn sync_local(&mut self) -> Result<(), BpfError> {
        let want: BTreeSet<Vec<u8>> = self
            .executor
            .local_addresses()?
            .iter()
            .map(layout::addr_key)
            .collect();
        let have: BTreeSet<Vec<u8>> = self
            .executor
            .entries(MapKind::Local)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for k in want.difference(&have) {
            self.executor.update(MapKind::Local, k, &[1])?;
        }
        for k in have.difference(&want) {
            self.executor.delete(MapKind::Local, k)?;
        }
        Ok(())
    }

    fn wanted_interfaces(&mut self, rs: &NodeRuleset) -> Result<BTreeSet<u32>, BpfError> {
        let ips: BTreeSet<IpAddr> = rs
            .endpoints
            .values()
            .flat_map(|e| e.ips.iter().copied())
            .collect();
        Ok(self
            .executor
            .host_routes()?
            .into_iter()
            .filter(|r| ips.contains(&r.addr))
            .map(|r| r.ifindex)
            .collect())
    }

    /// Moves generation `g` to `plan`: by a diff from what it holds when that is known
    /// (and `diff_ok`), else by clearing it and writing everything. Returns the writes and
    /// whether it was a full rewrite.
    fn fill(
        &mut self,
        g: u8,
        plan: &std::sync::Arc<Plan>,
        diff_ok: bool,
    ) -> Result<(usize, bool), BpfError> {
        let stamp_file = format!("gen{g}.stamp");
        let on_disk = self.executor.read_state(&stamp_file)?;
        let known = match self.gens[usize::from(g)].take() {
            Some((stamp, p)) if diff_ok && on_disk.as_deref() == Some(stamp.as_str()) => Some(p),
            _ => None,
        };
        self.executor.write_state(&stamp_file, "dirty")?;
        let ops = self.write_gen(g, known.as_deref(), plan)?;
        let stamp = format!("{:016x}", rand::random::<u64>());
        self.executor.write_state(&stamp_file, &stamp)?;
        self.gens[usize::from(g)] = Some((stamp, std::sync::Arc::clone(plan)));
        Ok((ops, known.is_none()))
    }

    fn apply(
        &mut self,
        desired: &NodeRuleset,
        diff: Option<&RulesetDiff>,
    ) -> Result<ApplyReport, BpfError> {
        self.executor.prepare()?;
        let mut ids = self.load_ids()?;
        match diff {
            None => self.cache.clear(),
            Some(d) => {
                let changed: BTreeSet<SetId> = d
                    .peer_set_members
                    .keys()
                    .chain(d.peer_sets_added.keys())
                    .chain(d.peer_sets_removed.iter())
                    .cloned()
                    .collect();
                self.cache.invalidate(&changed);
            }
        }
        let plan = std::sync::Arc::new(plan::plan(desired, &mut ids, &mut self.cache));
        let too_many = ids.origins.len() > MAX_ORIGINS || ids.slots.len() > MAX_SLOTS;
        // Ids only grow: the file is rewritten when they did.
        let counts = (ids.origins.len(), ids.slots.len());
        let ids_text = if self.ids_written == Some(counts) {
            None
        } else {
            Some(serde_json::to_string(&ids).map_err(|e| BpfError::Other(e.to_string()))?)
        };
        if too_many {
            self.ids = Some(ids);
            return Err(BpfError::Other(format!(
                "more than {MAX_ORIGINS} rule origins or endpoints since the maps were created; remove() and apply again"
            )));
        }
        // Before the flip: the new generation may report with tags of new origins.
        let synced = self.sync_event_maps(&ids, diff.is_none());
        self.ids = Some(ids);
        synced?;
        let active = self.active_gen()?;
        let inactive = 1 - active;
        let (mut ops, full) = self.fill(inactive, &plan, diff.is_some())?;
        if let Some(text) = ids_text {
            self.executor.write_state(IDS_FILE, &text)?;
            self.ids_written = Some(counts);
            if let Some(ids) = &self.ids {
                *self.published.lock().unwrap_or_else(|p| p.into_inner()) =
                    Arc::new(CounterNames {
                        origins: ids.origins.clone(),
                        slots: ids.slots.clone(),
                    });
            }
        }
        // Interfaces: re-read the routes when endpoints came or moved, or on a full apply.
        let reread = diff.is_none_or(|d| {
            !d.endpoints_added.is_empty()
                || !d.endpoints_removed.is_empty()
                || d.endpoints_changed.values().any(|c| c.ips_changed)
        }) || self.wanted.is_none();
        if reread {
            self.sync_local()?;
            self.wanted = Some(self.wanted_interfaces(desired)?);
        }
        let wanted = self.wanted.clone().unwrap_or_default();
        let attached = self.executor.attached()?;
        for i in wanted.difference(&attached) {
            self.executor.attach(*i)?;
            ops += 2;
        }
        // The flip: one write, seen by the next packet.
        self.executor.update(
            MapKind::Config,
            &0u32.to_ne_bytes(),
            &layout::config_val(inactive),
        )?;
        ops += 1;
        // The old generation is brought up to date at once, so the next update is a
        // diff again. It is not in force: a failure here only costs a full rewrite later.
        match self.fill(active, &plan, true) {
            Ok((n, _)) => ops += n,
            Err(e) => {
                tracing::warn!(error = %e, "ebpf: syncing the inactive generation failed; the next apply rewrites it")
            }
        }
        if reread {
            for i in attached.difference(&wanted) {
                self.executor.detach(*i)?;
            }
        }
        Ok(ApplyReport {
            full,
            operations: ops,
        })
    }
}

impl<E: BpfExecutor> Dataplane for EbpfDataplane<E> {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn apply_full(&mut self, desired: &NodeRuleset) -> Result<ApplyReport, DataplaneError> {
        let action = "full apply of the eBPF maps";
        desired
            .validate()
            .map_err(|source| DataplaneError::Invalid {
                backend: BACKEND,
                source,
            })?;
        self.apply(desired, None).map_err(|e| failed(action, e))
    }

    fn apply_update(
        &mut self,
        _current: &NodeRuleset,
        desired: &NodeRuleset,
        diff: &RulesetDiff,
    ) -> Result<ApplyReport, DataplaneError> {
        let action = "update of the eBPF maps";
        desired
            .validate()
            .map_err(|source| DataplaneError::Invalid {
                backend: BACKEND,
                source,
            })?;
        self.apply(desired, Some(diff))
            .map_err(|e| failed(action, e))
    }

    fn remove(&mut self) -> Result<(), DataplaneError> {
        self.ids = None;
        self.gens = [None, None];
        self.wanted = None;
        self.cache.clear();
        self.ids_written = None;
        self.event_config_written = false;
        self.origin_tags_written = 0;
        self.executor
            .remove_all()
            .map_err(|e| failed("removal of the eBPF programs and maps", e))
    }

    fn kernel_state(&mut self) -> Result<String, DataplaneError> {
        let action = "reading the eBPF maps";
        if !self.executor.is_loaded() {
            return Ok(String::new());
        }
        let read = |me: &mut Self| -> Result<String, BpfError> {
            let g = me.active_gen()?;
            let mut maps: BTreeMap<MapKind, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
            for m in MapKind::POLICY {
                let entries = me.executor.entries(m)?;
                maps.insert(
                    m,
                    entries
                        .into_iter()
                        .filter(|(k, _)| layout::gen_of(m, k) == Some(g))
                        .map(|(k, v)| (layout::with_gen(m, &k, 0), v))
                        .collect(),
                );
            }
            let ids = me.load_ids()?;
            let text = plan::canonical(
                &maps[&MapKind::Endpoints],
                &maps[&MapKind::Peers],
                &maps[&MapKind::Ports],
                &|id| {
                    ids.origin_of(id)
                        .map_or_else(|| format!("origin#{id}"), |o| o.to_string())
                },
                &|s| {
                    ids.slots
                        .get(s as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("slot#{s}"))
                },
            );
            me.ids = Some(ids);
            Ok(text)
        };
        read(self).map_err(|e| failed(action, e))
    }

    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        let action = "reading the eBPF counters";
        if !self.executor.is_loaded() {
            return Ok(Counters::default());
        }
        let read = |me: &mut Self| -> Result<Counters, BpfError> {
            let ids = me.load_ids()?;
            let names = CounterNames {
                origins: ids.origins.clone(),
                slots: ids.slots.clone(),
            };
            me.ids = Some(ids);
            read_counters(&mut me.executor, &names)
        };
        read(self).map_err(|e| failed(action, e))
    }

    fn events(&mut self) -> Result<Box<dyn EventSource>, DataplaneError> {
        if self.events.is_none() {
            return Err(DataplaneError::Unsupported {
                backend: BACKEND,
                what: "verdict events on a backend configured without them",
            });
        }
        let open = |me: &mut Self| -> Result<Box<dyn EventSource>, BpfError> {
            // The ring buffer is pinned with the programs; the configuration is written
            // by the first apply (or here, when events are read before any apply).
            me.executor.prepare()?;
            if !me.event_config_written {
                me.write_event_config()?;
            }
            me.executor.open_events()
        };
        open(self).map_err(|e| failed("opening verdict events (ring buffer)", e))
    }

    fn counter_reader(&mut self) -> Result<Box<dyn CounterReader>, DataplaneError> {
        let executor = self.executor.reader().ok_or(DataplaneError::Unsupported {
            backend: BACKEND,
            what: "reading counters apart from applies with this executor",
        })?;
        Ok(Box::new(EbpfCounterReader {
            executor,
            names: Arc::clone(&self.published),
        }))
    }
}

/// How many map entries one generation of `rs` takes (endpoints, peer and port tries).
pub fn entry_count(rs: &NodeRuleset) -> usize {
    plan::plan(rs, &mut Ids::default(), &mut PlanCache::default()).entries()
}
