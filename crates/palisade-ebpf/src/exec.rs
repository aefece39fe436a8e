//! The kernel seam: [`BpfExecutor`] (map writes, attachments, node facts), [`SystemBpf`]
//! for the real kernel (libbpf-rs, pins under bpffs) and [`FakeBpf`], a stateful stand-in
//! whose [`FakeBpf::judge`] runs a packet through the same lookups as the program.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_ir::DataplaneError;
use palisade_ir::events::{EventSource, KernelEvent};

use crate::layout::{self, MapKind};

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("{what}: {message}")]
    Kernel { what: String, message: String },
    #[error("{0}")]
    Other(String),
}

fn kernel(what: impl Into<String>, e: impl std::fmt::Display) -> BpfError {
    BpfError::Kernel {
        what: what.into(),
        message: e.to_string(),
    }
}

/// Map entries as raw (key, value) bytes.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A host route to one address: the pod's interface as the node's routing table names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    pub addr: IpAddr,
    pub ifname: String,
    pub ifindex: u32,
}

/// Everything the dataplane asks of the kernel.
pub trait BpfExecutor: Send {
    /// Loads and pins the programs and maps unless they are pinned already (then opens
    /// them). Idempotent.
    fn prepare(&mut self) -> Result<(), BpfError>;
    fn update(&mut self, map: MapKind, key: &[u8], value: &[u8]) -> Result<(), BpfError>;
    fn delete(&mut self, map: MapKind, key: &[u8]) -> Result<(), BpfError>;
    fn lookup(&mut self, map: MapKind, key: &[u8]) -> Result<Option<Vec<u8>>, BpfError>;
    fn entries(&mut self, map: MapKind) -> Result<Entries, BpfError>;
    /// The keys of a map (cheaper than [`BpfExecutor::entries`] on the kernel).
    fn keys(&mut self, map: MapKind) -> Result<Vec<Vec<u8>>, BpfError> {
        Ok(self.entries(map)?.into_iter().map(|(k, _)| k).collect())
    }
    /// A counter of one of the counter maps: (packets, bytes).
    fn count(&mut self, map: MapKind, index: u32) -> Result<(u64, u64), BpfError>;
    /// Host routes (/32, /128) of the node, with their interfaces.
    fn host_routes(&mut self) -> Result<Vec<HostRoute>, BpfError>;
    /// The node's own addresses.
    fn local_addresses(&mut self) -> Result<Vec<IpAddr>, BpfError>;
    /// Interfaces (ifindex) both programs are attached to.
    fn attached(&mut self) -> Result<BTreeSet<u32>, BpfError>;
    fn attach(&mut self, ifindex: u32) -> Result<(), BpfError>;
    fn detach(&mut self, ifindex: u32) -> Result<(), BpfError>;
    /// Small state files kept beside the pins (ids, generation stamps).
    fn read_state(&mut self, name: &str) -> Result<Option<String>, BpfError>;
    fn write_state(&mut self, name: &str, text: &str) -> Result<(), BpfError>;
    /// Whether anything is pinned (programs or maps).
    fn is_loaded(&mut self) -> bool;
    /// Detaches everything and unpins every program and map: nothing of ours is left.
    fn remove_all(&mut self) -> Result<(), BpfError>;
    /// Another executor for the same maps, for reading counters from another thread while
    /// this one applies; `None` when there is none (a fake's state lives inside it).
    fn reader(&self) -> Option<Box<dyn BpfExecutor>> {
        None
    }
    /// A reader of the verdict events ring buffer (`pal_events`), once prepared.
    fn open_events(&mut self) -> Result<Box<dyn EventSource>, BpfError> {
        Err(BpfError::Other(
            "this executor cannot read verdict events".into(),
        ))
    }
}

// ---------------------------------------------------------------- the fake

#[derive(Debug, Default)]
pub struct FakeState {
    pub loaded: bool,
    pub maps: BTreeMap<MapKind, BTreeMap<Vec<u8>, Vec<u8>>>,
    pub counts: BTreeMap<(MapKind, u32), (u64, u64)>,
    pub attached: BTreeSet<u32>,
    pub routes: Vec<HostRoute>,
    pub local: Vec<IpAddr>,
    pub files: BTreeMap<String, String>,
    /// Writes (update/delete) since creation.
    pub writes: usize,
    /// Fail every map write from this write count on.
    pub fail_from_write: Option<usize>,
    /// A fake clock for connection expiry and the event rate limit (ns).
    pub now: u64,
    /// Records the program wrote to the ring buffer, not read yet.
    pub events: Vec<Vec<u8>>,
    /// The event rate limit: key -> theoretical arrival time of its next report (ns).
    pub limits: BTreeMap<u32, u64>,
}

impl FakeState {
    /// The program's `take_token` (a GCRA: one theoretical arrival time per key).
    fn take_token(&mut self, key: u32, rate: u64, burst: u64) -> bool {
        if rate == 0 || burst == 0 {
            return false;
        }
        let now = self.now;
        let interval = 1_000_000_000 / rate;
        let tolerance = (burst - 1) * interval;
        let Some(&tat) = self.limits.get(&key) else {
            self.limits.insert(key, now + interval);
            return true;
        };
        let start = tat.max(now);
        if start - now > tolerance {
            return false;
        }
        self.limits.insert(key, start + interval);
        true
    }

    /// The program's `report`: a record in the ring buffer, if the bucket has a token.
    fn report(
        &mut self,
        cfg: &[u8],
        verdict: u8,
        dir: u32,
        tag: u64,
        limit_key: u32,
        packet: &palisade_ir::events::PacketSummary,
    ) {
        let (rate, burst) = (
            u64::from(layout::u32_at(cfg, 8)),
            u64::from(layout::u32_at(cfg, 12)),
        );
        if self.take_token(limit_key, rate, burst) {
            self.events
                .push(layout::encode_event(tag, verdict, dir, packet));
        }
    }
}

/// A stateful fake kernel; clones share state (like pins shared by two dataplanes).
#[derive(Debug, Clone, Default)]
pub struct FakeBpf {
    pub state: Arc<Mutex<FakeState>>,
}

/// A packet for [`FakeBpf::judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakePacket {
    pub ifindex: u32,
    /// [`layout::HOOK_FROM_POD`] or [`layout::HOOK_TO_POD`].
    pub hook: u8,
    /// 0 for a packet the node itself sends.
    pub ingress_ifindex: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// 6, 17, 132, or another protocol number (ports ignored then).
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub syn_only: bool,
}

impl FakeBpf {
    pub fn new() -> FakeBpf {
        FakeBpf::default()
    }

    pub fn with_routes(routes: Vec<HostRoute>) -> FakeBpf {
        let f = FakeBpf::default();
        f.lock().routes = routes;
        f
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lpm(map: &BTreeMap<Vec<u8>, Vec<u8>>, key: &[u8], fixed: u32, max: u32) -> Option<Vec<u8>> {
        // Longest prefix first: the entry whose first `plen` bits equal the key's.
        for plen in (fixed..=max).rev() {
            let mut k = key.to_vec();
            k[0..4].copy_from_slice(&plen.to_ne_bytes());
            let data = &mut k[4..];
            let bits = plen as usize;
            for (i, b) in data.iter_mut().enumerate() {
                let keep = bits.saturating_sub(i * 8).min(8);
                *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
            }
            if let Some(v) = map.get(&k) {
                return Some(v.clone());
            }
        }
        None
    }

    /// Runs a packet through the program's logic on the fake maps: true = passes. Same
    /// lookups, same order, same counters and connection entries as `palisade.bpf.c`.
    pub fn judge(&self, p: FakePacket) -> bool {
        use layout::*;
        let mut st = self.lock();
        if p.hook == HOOK_TO_POD && p.ingress_ifindex == 0 {
            return true;
        }
        let fam = family(&p.src);
        if p.hook == HOOK_FROM_POD
            && st
                .maps
                .get(&MapKind::Local)
                .is_some_and(|m| m.contains_key(&addr_key(&p.dst)))
        {
            return true;
        }
        let (s, d) = (addr16(&p.src), addr16(&p.dst));
        let ported = matches!(p.proto, 6 | 17 | 132);
        let (sport, dport) = if ported { (p.sport, p.dport) } else { (0, 0) };
        let now = st.now;
        let conns = st.maps.entry(MapKind::Conns).or_default();
        let mut known = |k: Vec<u8>| -> bool {
            let timeout: u64 = if p.proto == 6 { 3600 } else { 120 } * 1_000_000_000;
            match conns.get_mut(&k) {
                Some(v) => {
                    let seen = u64::from_ne_bytes(v[..8].try_into().unwrap_or([0; 8]));
                    if now.saturating_sub(seen) > timeout {
                        return false;
                    }
                    v[..8].copy_from_slice(&now.to_ne_bytes());
                    true
                }
                None => false,
            }
        };
        if !p.syn_only {
            if known(conn_key(
                p.ifindex, p.hook, p.proto, fam, &s, &d, sport, dport,
            )) {
                return true;
            }
            if known(conn_key(
                p.ifindex,
                p.hook ^ 1,
                p.proto,
                fam,
                &d,
                &s,
                dport,
                sport,
            )) {
                return true;
            }
        }
        let Some(cfg) = st
            .maps
            .get(&MapKind::Config)
            .and_then(|m| m.get(&0u32.to_ne_bytes()[..]))
            .cloned()
        else {
            return false;
        };
        let gen_ = (u32_at(&cfg, 0) & 1) as u8;
        let dir = if p.hook == HOOK_FROM_POD {
            DIR_EGRESS
        } else {
            DIR_INGRESS
        };
        let (me, peer) = if dir == DIR_EGRESS {
            (p.src, p.dst)
        } else {
            (p.dst, p.src)
        };
        let ep = st
            .maps
            .get(&MapKind::Endpoints)
            .and_then(|m| m.get(&with_gen(MapKind::Endpoints, &ep_key(&me), gen_)))
            .and_then(|v| EpVal::decode(v));
        let mut action = ACT_OPEN;
        let mut origin = 0;
        if let Some(ep) = ep {
            let class = ep.class[dir as usize];
            if class != 0 {
                action = ep.miss[dir as usize];
                let full = if fam == FAM_V4 { 32 } else { 128 };
                let pk = with_gen(
                    MapKind::Peers,
                    &peer_key(fam, class, &addr16(&peer), full),
                    gen_,
                );
                let empty = BTreeMap::new();
                let group = Self::lpm(
                    st.maps.get(&MapKind::Peers).unwrap_or(&empty),
                    &pk,
                    64,
                    64 + full as u32,
                );
                if let Some(g) = group {
                    let g = u32_at(&g, 0);
                    let tk = if ported {
                        with_gen(MapKind::Ports, &port_key(p.proto, g, dport, 16), gen_)
                    } else {
                        with_gen(MapKind::Ports, &port_key(0, g, 0, 0), gen_)
                    };
                    let max = if ported { 80 } else { 64 };
                    if let Some(v) =
                        Self::lpm(st.maps.get(&MapKind::Ports).unwrap_or(&empty), &tk, 64, max)
                    {
                        action = u32_at(&v, 0);
                        origin = u32_at(&v, 4);
                    }
                }
            }
        }
        let cfg = st
            .maps
            .get(&MapKind::EventConfig)
            .and_then(|m| m.get(&0u32.to_ne_bytes()[..]))
            .cloned()
            .filter(|c| u32_at(c, 0) != 0);
        let summary = palisade_ir::events::PacketSummary {
            src: p.src,
            dst: p.dst,
            protocol: p.proto,
            src_port: ported.then_some(sport),
            dst_port: ported.then_some(dport),
        };
        if action == ACT_ALLOW {
            let c = st.counts.entry((MapKind::AllowCounts, origin)).or_default();
            c.0 += 1;
            let tag = st
                .maps
                .get(&MapKind::OriginTags)
                .and_then(|m| m.get(&origin.to_ne_bytes()[..]))
                .map(|v| u64_at(v, 0));
            if let (Some(cfg), Some(tag)) = (&cfg, tag)
                && u32_at(cfg, 4) != 0
                && tag != 0
            {
                let key = (LIMIT_ALLOWED << 20) | origin;
                st.report(cfg, EV_ALLOWED, dir, tag, key, &summary);
            }
        }
        if let Some(ep) = ep
            && (action == ACT_DEFAULT_DENY || action == ACT_AUDIT)
        {
            let index = ep.slot * 2 + dir;
            let tag = ep.tag[dir as usize];
            let (counts, verdict, limit) = if action == ACT_DEFAULT_DENY {
                (MapKind::DenyCounts, EV_DENIED, LIMIT_DENIED)
            } else {
                action = ACT_OPEN;
                (MapKind::AuditCounts, EV_AUDIT_DENIED, LIMIT_AUDIT)
            };
            st.counts.entry((counts, index)).or_default().0 += 1;
            if let Some(cfg) = &cfg
                && tag != 0
            {
                st.report(cfg, verdict, dir, tag, (limit << 20) | index, &summary);
            }
        }
        if action != ACT_ALLOW && action != ACT_OPEN {
            return false;
        }
        st.maps.entry(MapKind::Conns).or_default().insert(
            conn_key(p.ifindex, p.hook, p.proto, fam, &s, &d, sport, dport),
            now.to_ne_bytes().to_vec(),
        );
        true
    }
}

impl BpfExecutor for FakeBpf {
    fn prepare(&mut self) -> Result<(), BpfError> {
        let mut st = self.lock();
        if !st.loaded {
            st.loaded = true;
            st.maps
                .entry(MapKind::Config)
                .or_default()
                .insert(0u32.to_ne_bytes().to_vec(), layout::config_val(0));
        }
        Ok(())
    }

    fn update(&mut self, map: MapKind, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        let mut st = self.lock();
        st.writes += 1;
        if st.fail_from_write.is_some_and(|n| st.writes >= n) {
            return Err(kernel(
                format!("update of {}", map.name()),
                "injected failure",
            ));
        }
        st.maps
            .entry(map)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, map: MapKind, key: &[u8]) -> Result<(), BpfError> {
        let mut st = self.lock();
        st.writes += 1;
        if st.fail_from_write.is_some_and(|n| st.writes >= n) {
            return Err(kernel(
                format!("delete from {}", map.name()),
                "injected failure",
            ));
        }
        st.maps.entry(map).or_default().remove(key);
        Ok(())
    }

    fn lookup(&mut self, map: MapKind, key: &[u8]) -> Result<Option<Vec<u8>>, BpfError> {
        Ok(self.lock().maps.get(&map).and_then(|m| m.get(key)).cloned())
    }

    fn entries(&mut self, map: MapKind) -> Result<Entries, BpfError> {
        Ok(self
            .lock()
            .maps
            .get(&map)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn count(&mut self, map: MapKind, index: u32) -> Result<(u64, u64), BpfError> {
        Ok(self
            .lock()
            .counts
            .get(&(map, index))
            .copied()
            .unwrap_or_default())
    }

    fn host_routes(&mut self) -> Result<Vec<HostRoute>, BpfError> {
        Ok(self.lock().routes.clone())
    }

    fn local_addresses(&mut self) -> Result<Vec<IpAddr>, BpfError> {
        Ok(self.lock().local.clone())
    }

    fn attached(&mut self) -> Result<BTreeSet<u32>, BpfError> {
        Ok(self.lock().attached.clone())
    }

    fn attach(&mut self, ifindex: u32) -> Result<(), BpfError> {
        self.lock().attached.insert(ifindex);
        Ok(())
    }

    fn detach(&mut self, ifindex: u32) -> Result<(), BpfError> {
        self.lock().attached.remove(&ifindex);
        Ok(())
    }

    fn read_state(&mut self, name: &str) -> Result<Option<String>, BpfError> {
        Ok(self.lock().files.get(name).cloned())
    }

    fn write_state(&mut self, name: &str, text: &str) -> Result<(), BpfError> {
        self.lock().files.insert(name.to_string(), text.to_string());
        Ok(())
    }

    fn is_loaded(&mut self) -> bool {
        self.lock().loaded
    }

    fn remove_all(&mut self) -> Result<(), BpfError> {
        let mut st = self.lock();
        st.loaded = false;
        st.maps.clear();
        st.counts.clear();
        st.attached.clear();
        st.files.clear();
        st.events.clear();
        st.limits.clear();
        Ok(())
    }

    fn open_events(&mut self) -> Result<Box<dyn EventSource>, BpfError> {
        Ok(Box::new(FakeEvents { fake: self.clone() }))
    }
}

/// Reads the records [`FakeBpf::judge`] wrote, through the same decoding as the kernel's.
#[derive(Debug)]
struct FakeEvents {
    fake: FakeBpf,
}

impl EventSource for FakeEvents {
    fn recv(&mut self, _timeout: Duration) -> Result<Vec<KernelEvent>, DataplaneError> {
        let records = std::mem::take(&mut self.fake.lock().events);
        Ok(records.iter().filter_map(|r| kernel_event(r)).collect())
    }
}

/// One ring-buffer record as a [`KernelEvent`] read now.
fn kernel_event(record: &[u8]) -> Option<KernelEvent> {
    let (tag, packet) = layout::decode_event(record)?;
    Some(KernelEvent {
        tag,
        packet,
        received: Instant::now(),
    })
}

/// Reads `pal_events` (a BPF ring buffer) through libbpf's epoll-driven consumer.
struct RingEvents {
    // Field order is drop order: the consumer before the map it reads.
    ring: libbpf_rs::RingBuffer<'static>,
    received: std::sync::mpsc::Receiver<KernelEvent>,
    malformed: Arc<std::sync::atomic::AtomicU64>,
    _map: libbpf_rs::MapHandle,
    /// `pal_events_lost`.
    lost: libbpf_rs::MapHandle,
}

impl std::fmt::Debug for RingEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingEvents").finish_non_exhaustive()
    }
}

impl RingEvents {
    fn open(pin: &Path, lost_pin: &Path) -> Result<RingEvents, BpfError> {
        let open = |pin: &Path| {
            libbpf_rs::MapHandle::from_pinned_path(pin)
                .map_err(|e| kernel(format!("opening pinned map {}", pin.display()), e))
        };
        let map = open(pin)?;
        let lost = open(lost_pin)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let malformed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let bad = Arc::clone(&malformed);
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(&map, move |record: &[u8]| {
                match kernel_event(record) {
                    Some(e) => {
                        let _ = tx.send(e);
                    }
                    None => {
                        bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                0
            })
            .map_err(|e| kernel("reading the ring buffer pal_events", e))?;
        let ring = builder
            .build()
            .map_err(|e| kernel("reading the ring buffer pal_events", e))?;
        Ok(RingEvents {
            ring,
            received: rx,
            malformed,
            _map: map,
            lost,
        })
    }
}

impl EventSource for RingEvents {
    fn recv(&mut self, timeout: Duration) -> Result<Vec<KernelEvent>, DataplaneError> {
        self.ring.poll(timeout).map_err(|e| DataplaneError::Apply {
            backend: "ebpf",
            action: "reading verdict events".into(),
            message: e.to_string(),
        })?;
        Ok(self.received.try_iter().collect())
    }

    /// Reports the ring had no room for, and records of a shape this reader does not know
    /// (a program of another version).
    fn lost(&self) -> u64 {
        use libbpf_rs::MapCore;
        let no_room = self
            .lost
            .lookup(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .ok()
            .flatten()
            .filter(|v| v.len() >= 8)
            .map_or(0, |v| layout::u64_at(&v, 0));
        no_room + self.malformed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------- the kernel

/// The compiled object (build.rs runs clang on bpf/palisade.bpf.c).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/palisade.bpf.o"));

/// Where bpffs is mounted; pins live under `BPFFS/palisade-ebpf/<scope>/`.
pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT: &str = "/sys/fs/bpf/palisade-ebpf";

const PROG_FROM: &str = "palisade_from_pod";
const PROG_TO: &str = "palisade_to_pod";
/// The handle and priority of our tc filters on the clsact path ("pa1" + 1).
const TC_HANDLE: u32 = 0x0a11;
const TC_PRIORITY: u32 = 0x0a11;

/// The real kernel, inside one network namespace (or the current one).
#[derive(Debug)]
pub struct SystemBpf {
    netns: Option<String>,
    dir: PathBuf,
    /// Attach through clsact (tc filters) even where TCX is available.
    force_clsact: bool,
    maps: HashMap<MapKind, libbpf_rs::MapHandle>,
}

impl SystemBpf {
    /// In this process's network namespace; pins under `PIN_ROOT/host`.
    pub fn new() -> SystemBpf {
        SystemBpf {
            netns: None,
            dir: Path::new(PIN_ROOT).join("host"),
            force_clsact: false,
            maps: HashMap::new(),
        }
    }

    /// Inside the named network namespace (`ip netns` name); pins under
    /// `PIN_ROOT/netns-<name>`.
    pub fn in_netns(netns: &str) -> SystemBpf {
        SystemBpf {
            netns: Some(netns.to_string()),
            dir: Path::new(PIN_ROOT).join(format!("netns-{netns}")),
            force_clsact: false,
            maps: HashMap::new(),
        }
    }

    /// Attaches through a clsact qdisc and tc filters (the path for kernels before 6.6,
    /// taken by itself when TCX is refused) even where TCX is available.
    pub fn with_clsact(mut self) -> SystemBpf {
        self.force_clsact = true;
        self
    }

    /// Runs one of the loaded programs on `frame` (an Ethernet frame) with the kernel's
    /// test runner (BPF_PROG_TEST_RUN), inside this executor's network namespace, as if it
    /// were seen on `ifindex` (an interface of that namespace; 1 = lo) having come in on
    /// `ingress_ifindex` (0: sent by the node). Nothing is sent anywhere. Returns the
    /// program's verdict (`TC_ACT_SHOT` = 2, `TC_ACT_UNSPEC` = -1).
    pub fn test_run(
        &self,
        to_pod: bool,
        frame: &[u8],
        ifindex: u32,
        ingress_ifindex: u32,
    ) -> Result<i32, BpfError> {
        let prog = if to_pod { PROG_TO } else { PROG_FROM };
        let prog_pin = self.prog_pin(prog);
        let handle = libbpf_rs::ProgramHandle::from_pinned_path(&prog_pin)
            .map_err(|e| kernel(format!("opening {}", prog_pin.display()), e))?;
        use std::os::fd::{AsFd, AsRawFd};
        let fd = handle.as_fd().as_raw_fd();
        // struct __sk_buff: ingress_ifindex at byte 36, ifindex at byte 40 (192 bytes).
        let mut ctx = [0u8; 192];
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let data = frame.to_vec();
        let retval = self.run_in_netns(move || {
            let mut opts = libbpf_rs::libbpf_sys::bpf_test_run_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_test_run_opts>() as _,
                data_in: data.as_ptr().cast(),
                data_size_in: data.len() as u32,
                ctx_in: ctx.as_ptr().cast(),
                ctx_size_in: ctx.len() as u32,
                ..Default::default()
            };
            // SAFETY: every pointer in opts points into `data` and `ctx`, alive for the
            // call, with their true sizes; no output buffers are given. fd stays open
            // (the handle outlives this closure).
            let rc = unsafe { libbpf_rs::libbpf_sys::bpf_prog_test_run_opts(fd, &mut opts) };
            if rc < 0 {
                return Err(kernel(
                    format!("test run of {prog}"),
                    std::io::Error::from_raw_os_error(-rc),
                ));
            }
            Ok(opts.retval as i32)
        })?;
        drop(handle);
        Ok(retval)
    }

    /// Marker of a clsact attachment (tc filters are not pinned: they live on the
    /// interface), beside the state files.
    fn tc_marker(&self, ifindex: u32, hook: &str) -> PathBuf {
        state_dir(&self.dir)
            .join("tc")
            .join(format!("{ifindex}-{hook}"))
    }

    fn tc_hook(fd: std::os::fd::BorrowedFd<'_>, ifindex: u32, ingress: bool) -> libbpf_rs::TcHook {
        libbpf_rs::TcHookBuilder::new(fd)
            .ifindex(ifindex as i32)
            .replace(true)
            .handle(TC_HANDLE)
            .priority(TC_PRIORITY)
            .hook(if ingress {
                libbpf_rs::TC_INGRESS
            } else {
                libbpf_rs::TC_EGRESS
            })
    }

    fn attach_clsact(&self, ifindex: u32, prog: &str, ingress: bool) -> Result<(), BpfError> {
        let hook = if ingress { "from" } else { "to" };
        let prog_pin = self.prog_pin(prog);
        let handle = libbpf_rs::ProgramHandle::from_pinned_path(&prog_pin)
            .map_err(|e| kernel(format!("opening {}", prog_pin.display()), e))?;
        self.run_in_netns(|| {
            use std::os::fd::AsFd;
            let mut h = Self::tc_hook(handle.as_fd(), ifindex, ingress);
            // create() makes the clsact qdisc; it may exist already.
            let _ = h.create();
            h.attach().map_err(|e| {
                kernel(format!("attaching {prog} (clsact) to ifindex {ifindex}"), e)
            })?;
            Ok(())
        })?;
        let marker = self.tc_marker(ifindex, hook);
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| kernel(format!("creating {}", dir.display()), e))?;
        }
        std::fs::write(&marker, prog)
            .map_err(|e| kernel(format!("writing {}", marker.display()), e))
    }

    fn detach_clsact(&self, ifindex: u32, ingress: bool) -> Result<(), BpfError> {
        let marker = self.tc_marker(ifindex, if ingress { "from" } else { "to" });
        if !marker.exists() {
            return Ok(());
        }
        let prog = if ingress { PROG_FROM } else { PROG_TO };
        let prog_pin = self.prog_pin(prog);
        if let Ok(handle) = libbpf_rs::ProgramHandle::from_pinned_path(&prog_pin) {
            self.run_in_netns(|| {
                use std::os::fd::AsFd;
                let mut h = Self::tc_hook(handle.as_fd(), ifindex, ingress);
                // The interface may be gone, and its filters with it.
                let _ = h.detach();
                Ok(())
            })?;
        }
        std::fs::remove_file(&marker)
            .map_err(|e| kernel(format!("removing {}", marker.display()), e))
    }

    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    fn map_pin(&self, m: MapKind) -> PathBuf {
        self.dir.join("maps").join(m.name())
    }

    fn prog_pin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn link_pin(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.dir.join("links").join(format!("{ifindex}-{hook}"))
    }

    fn handle(&mut self, m: MapKind) -> Result<&libbpf_rs::MapHandle, BpfError> {
        if !self.maps.contains_key(&m) {
            let path = self.map_pin(m);
            let h = libbpf_rs::MapHandle::from_pinned_path(&path)
                .map_err(|e| kernel(format!("opening pinned map {}", path.display()), e))?;
            self.maps.insert(m, h);
        }
        Ok(&self.maps[&m])
    }

    fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value, BpfError> {
        let mut cmd = Command::new("ip");
        if let Some(ns) = &self.netns {
            cmd.args(["-n", ns]);
        }
        cmd.arg("-j").args(args);
        let out = cmd
            .output()
            .map_err(|e| kernel(format!("running ip {}", args.join(" ")), e))?;
        if !out.status.success() {
            return Err(kernel(
                format!("ip {}", args.join(" ")),
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(serde_json::Value::Array(Vec::new()));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| kernel(format!("parsing ip {}", args.join(" ")), e))
    }

    /// Runs `f` on a thread inside this executor's network namespace.
    fn run_in_netns<T: Send>(
        &self,
        f: impl FnOnce() -> Result<T, BpfError> + Send,
    ) -> Result<T, BpfError> {
        let Some(ns) = &self.netns else {
            return f();
        };
        let path = Path::new("/run/netns").join(ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path)
                    .map_err(|e| kernel(format!("opening {}", path.display()), e))?;
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on a valid open namespace file descriptor, for this
                // freshly spawned thread only (it ends with the closure); no memory is
                // shared with the kernel.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(kernel(
                        format!("entering netns {ns}"),
                        std::io::Error::last_os_error(),
                    ));
                }
                f()
            })
            .join()
            .map_err(|_| BpfError::Other("netns worker thread panicked".into()))?
        })
    }

    fn load(&mut self) -> Result<(), BpfError> {
        std::fs::create_dir_all(self.dir.join("maps"))
            .and_then(|_| std::fs::create_dir_all(self.dir.join("links")))
            .map_err(|e| kernel(format!("creating {}", self.dir.display()), e))?;
        let mut open = libbpf_rs::ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(|e| kernel("opening the BPF object", e))?;
        for mut m in open.maps_mut() {
            let name = m.name().to_string_lossy().to_string();
            if let Some(kind) = MapKind::ALL.iter().find(|k| k.name() == name) {
                let pin = self.map_pin(*kind);
                // An existing pin is reused (libbpf checks it is compatible).
                m.set_pin_path(&pin)
                    .map_err(|e| kernel(format!("pin path of {name}"), e))?;
            }
        }
        let obj = open
            .load()
            .map_err(|e| kernel("loading the BPF programs (verifier)", e))?;
        for mut prog in obj.progs_mut() {
            let name = prog.name().to_string_lossy().to_string();
            let pin = self.prog_pin(&name);
            if pin.exists() {
                let _ = std::fs::remove_file(&pin);
            }
            prog.pin(&pin)
                .map_err(|e| kernel(format!("pinning program {name}"), e))?;
        }
        Ok(())
    }

    fn attach_one(&self, ifindex: u32, prog: &str, ingress: bool) -> Result<(), BpfError> {
        let hook = if ingress { "from" } else { "to" };
        let pin = self.link_pin(ifindex, hook);
        if pin.exists() || self.tc_marker(ifindex, hook).exists() {
            return Ok(());
        }
        if self.force_clsact {
            return self.attach_clsact(ifindex, prog, ingress);
        }
        let prog_pin = self.prog_pin(prog);
        let handle = libbpf_rs::ProgramHandle::from_pinned_path(&prog_pin)
            .map_err(|e| kernel(format!("opening {}", prog_pin.display()), e))?;
        use std::os::fd::{AsFd, AsRawFd};
        let prog_fd = handle.as_fd().as_raw_fd();
        let pin_c = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
            .map_err(|e| BpfError::Other(e.to_string()))?;
        let tcx = self.run_in_netns(move || {
            let attach_type = if ingress {
                libbpf_rs::libbpf_sys::BPF_TCX_INGRESS
            } else {
                libbpf_rs::libbpf_sys::BPF_TCX_EGRESS
            };
            // SAFETY: a zeroed bpf_link_create_opts with its size set is the documented
            // way to pass no options; prog_fd stays open (handle outlives this call).
            let fd = unsafe {
                let mut opts: libbpf_rs::libbpf_sys::bpf_link_create_opts = std::mem::zeroed();
                opts.sz = std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_link_create_opts>() as _;
                libbpf_rs::libbpf_sys::bpf_link_create(prog_fd, ifindex as _, attach_type, &opts)
            };
            if fd < 0 {
                let err = std::io::Error::from_raw_os_error(-fd);
                // A kernel before 6.6 does not know the TCX attach types.
                if matches!(-fd, libc::EINVAL | libc::EOPNOTSUPP) {
                    return Ok(Err(err));
                }
                return Err(kernel(
                    format!("attaching {prog} (tcx) to ifindex {ifindex}"),
                    err,
                ));
            }
            // SAFETY: fd is a link fd we own; the path is a valid C string; after pinning
            // the pin holds the link and our fd is closed exactly once.
            let rc = unsafe {
                let rc = libbpf_rs::libbpf_sys::bpf_obj_pin(fd, pin_c.as_ptr());
                libc::close(fd);
                rc
            };
            if rc < 0 {
                return Err(kernel(
                    format!("pinning the link of {prog} on ifindex {ifindex}"),
                    std::io::Error::from_raw_os_error(-rc),
                ));
            }
            Ok(Ok(()))
        })?;
        drop(handle);
        match tcx {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::info!(ifindex, error = %e, "ebpf: TCX refused; attaching through clsact");
                self.attach_clsact(ifindex, prog, ingress)
            }
        }
    }
}

impl Default for SystemBpf {
    fn default() -> Self {
        SystemBpf::new()
    }
}

/// Mounts bpffs at [`BPFFS`] unless one is there.
fn ensure_bpffs() -> Result<(), BpfError> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    let out = Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS])
        .output()
        .map_err(|e| kernel("mounting bpffs", e))?;
    if !out.status.success() {
        return Err(kernel(
            format!("mount -t bpf bpf {BPFFS}"),
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

/// Removes pin directories of network namespaces that no longer exist (a lab deleted
/// without `remove()`): their links died with their interfaces; this frees the maps.
pub fn gc_stale_pins() {
    let Ok(dir) = std::fs::read_dir(PIN_ROOT) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(ns) = name.strip_prefix("netns-")
            && !Path::new("/run/netns").join(ns).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
            let _ = std::fs::remove_dir_all(state_dir(&e.path()));
        }
    }
}

impl BpfExecutor for SystemBpf {
    fn prepare(&mut self) -> Result<(), BpfError> {
        ensure_bpffs()?;
        let complete = MapKind::ALL.iter().all(|m| self.map_pin(*m).exists())
            && [PROG_FROM, PROG_TO]
                .iter()
                .all(|p| self.prog_pin(p).exists());
        if !complete {
            gc_stale_pins();
            self.maps.clear();
            self.load()?;
        }
        Ok(())
    }

    fn update(&mut self, map: MapKind, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        use libbpf_rs::MapCore;
        self.handle(map)?
            .update(key, value, libbpf_rs::MapFlags::ANY)
            .map_err(|e| kernel(format!("update of {}", map.name()), e))
    }

    fn delete(&mut self, map: MapKind, key: &[u8]) -> Result<(), BpfError> {
        use libbpf_rs::MapCore;
        match self.handle(map)?.delete(key) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(kernel(format!("delete from {}", map.name()), e)),
        }
    }

    fn lookup(&mut self, map: MapKind, key: &[u8]) -> Result<Option<Vec<u8>>, BpfError> {
        use libbpf_rs::MapCore;
        self.handle(map)?
            .lookup(key, libbpf_rs::MapFlags::ANY)
            .map_err(|e| kernel(format!("lookup in {}", map.name()), e))
    }

    fn entries(&mut self, map: MapKind) -> Result<Entries, BpfError> {
        use libbpf_rs::MapCore;
        let h = self.handle(map)?;
        let mut out = Vec::new();
        for k in h.keys() {
            if let Some(v) = h
                .lookup(&k, libbpf_rs::MapFlags::ANY)
                .map_err(|e| kernel(format!("lookup in {}", map.name()), e))?
            {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    fn keys(&mut self, map: MapKind) -> Result<Vec<Vec<u8>>, BpfError> {
        use libbpf_rs::MapCore;
        Ok(self.handle(map)?.keys().collect())
    }

    fn count(&mut self, map: MapKind, index: u32) -> Result<(u64, u64), BpfError> {
        use libbpf_rs::MapCore;
        let v = self
            .handle(map)?
            .lookup(&index.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .map_err(|e| kernel(format!("lookup in {}", map.name()), e))?
            .unwrap_or_default();
        if v.len() < 16 {
            return Ok((0, 0));
        }
        Ok((layout::u64_at(&v, 0), layout::u64_at(&v, 8)))
    }

    fn host_routes(&mut self) -> Result<Vec<HostRoute>, BpfError> {
        let links = self.ip_json(&["link", "show"])?;
        let ifindex: HashMap<String, u32> = links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| {
                Some((
                    l.get("ifname")?.as_str()?.to_string(),
                    l.get("ifindex")?.as_u64()? as u32,
                ))
            })
            .collect();
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let routes = self.ip_json(&[fam, "route", "show", "table", "main"])?;
            for r in routes.as_array().into_iter().flatten() {
                let (Some(dst), Some(dev)) = (
                    r.get("dst").and_then(|d| d.as_str()),
                    r.get("dev").and_then(|d| d.as_str()),
                ) else {
                    continue;
                };
                if r.get("gateway").is_some() {
                    continue;
                }
                let addr = dst
                    .strip_suffix("/32")
                    .or_else(|| dst.strip_suffix("/128"))
                    .unwrap_or(dst);
                let (Ok(addr), Some(&idx)) = (addr.parse::<IpAddr>(), ifindex.get(dev)) else {
                    continue;
                };
                out.push(HostRoute {
                    addr,
                    ifname: dev.to_string(),
                    ifindex: idx,
                });
            }
        }
        Ok(out)
    }

    fn local_addresses(&mut self) -> Result<Vec<IpAddr>, BpfError> {
        let addrs = self.ip_json(&["addr", "show"])?;
        let mut out = Vec::new();
        for l in addrs.as_array().into_iter().flatten() {
            for a in l
                .get("addr_info")
                .and_then(|a| a.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(ip) = a
                    .get("local")
                    .and_then(|x| x.as_str())
                    .and_then(|x| x.parse::<IpAddr>().ok())
                {
                    out.push(ip);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn attached(&mut self) -> Result<BTreeSet<u32>, BpfError> {
        let mut from = BTreeSet::new();
        let mut to = BTreeSet::new();
        if let Ok(dir) = std::fs::read_dir(self.dir.join("links")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some((idx, hook)) = name.split_once('-')
                    && let Ok(idx) = idx.parse::<u32>()
                {
                    // A link whose interface went away, or that someone detached, is
                    // defunct (ifindex 0): unpin it so the next apply attaches again.
                    if !link_alive(&e.path()) {
                        let _ = std::fs::remove_file(e.path());
                        continue;
                    }
                    match hook {
                        "from" => from.insert(idx),
                        "to" => to.insert(idx),
                        _ => false,
                    };
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(state_dir(&self.dir).join("tc")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some((idx, hook)) = name.split_once('-')
                    && let Ok(idx) = idx.parse::<u32>()
                {
                    match hook {
                        "from" => from.insert(idx),
                        "to" => to.insert(idx),
                        _ => false,
                    };
                }
            }
        }
        Ok(from.intersection(&to).copied().collect())
    }

    fn attach(&mut self, ifindex: u32) -> Result<(), BpfError> {
        self.attach_one(ifindex, PROG_FROM, true)?;
        self.attach_one(ifindex, PROG_TO, false)
    }

    fn detach(&mut self, ifindex: u32) -> Result<(), BpfError> {
        self.detach_clsact(ifindex, true)?;
        self.detach_clsact(ifindex, false)?;
        // Unpinning drops the last reference to the link: the kernel detaches it.
        for hook in ["from", "to"] {
            let pin = self.link_pin(ifindex, hook);
            if pin.exists() {
                std::fs::remove_file(&pin)
                    .map_err(|e| kernel(format!("unpinning {}", pin.display()), e))?;
            }
        }
        Ok(())
    }

    fn read_state(&mut self, name: &str) -> Result<Option<String>, BpfError> {
        // State files live beside the pins' directory (bpffs holds only BPF objects).
        let path = state_dir(&self.dir).join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(kernel(format!("reading {}", path.display()), e)),
        }
    }

    fn write_state(&mut self, name: &str, text: &str) -> Result<(), BpfError> {
        let dir = state_dir(&self.dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| kernel(format!("creating {}", dir.display()), e))?;
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, dir.join(name)))
            .map_err(|e| kernel(format!("writing {}", dir.join(name).display()), e))
    }

    fn is_loaded(&mut self) -> bool {
        self.dir.exists()
    }

    fn remove_all(&mut self) -> Result<(), BpfError> {
        // tc filters live on the interfaces: take them off first.
        for ifindex in self.attached()? {
            self.detach_clsact(ifindex, true)?;
            self.detach_clsact(ifindex, false)?;
        }
        self.maps.clear();
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .map_err(|e| kernel(format!("removing {}", self.dir.display()), e))?;
        }
        let state = state_dir(&self.dir);
        if state.exists() {
            std::fs::remove_dir_all(&state)
                .map_err(|e| kernel(format!("removing {}", state.display()), e))?;
        }
        // The shared roots go with the last scope; another dataplane's files keep them (a
        // directory that is not empty is not removed).
        let _ = std::fs::remove_dir(PIN_ROOT);
        let _ = std::fs::remove_dir(STATE_ROOT);
        Ok(())
    }
    fn open_events(&mut self) -> Result<Box<dyn EventSource>, BpfError> {
        Ok(Box::new(RingEvents::open(
            &self.map_pin(MapKind::Events),
            &self.map_pin(MapKind::EventsLost),
        )?))
    }

    fn reader(&self) -> Option<Box<dyn BpfExecutor>> {
        // Map handles are opened afresh from the pins.
        Some(Box::new(SystemBpf {
            netns: self.netns.clone(),
            dir: self.dir.clone(),
            force_clsact: self.force_clsact,
            maps: HashMap::new(),
        }))
    }
}

/// Is the pinned TCX link still attached to an interface?
fn link_alive(pin: &Path) -> bool {
    let Ok(link) = libbpf_rs::Link::open(pin) else {
        return false;
    };
    match link.info() {
        Ok(info) => match info.info {
            libbpf_rs::query::LinkTypeInfo::Tcx(t) => t.ifindex != 0,
            _ => true,
        },
        Err(_) => true,
    }
}

/// `/run/palisade-ebpf/<scope>`: the small state files of a pin directory.
const STATE_ROOT: &str = "/run/palisade-ebpf";

fn state_dir(pin_dir: &Path) -> PathBuf {
    Path::new(STATE_ROOT).join(pin_dir.file_name().unwrap_or_default())
}
