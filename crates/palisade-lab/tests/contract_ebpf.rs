//! The dataplane contract suite (tests/contract/mod.rs) for the eBPF backend.

#[macro_use]
mod contract;

use std::collections::BTreeSet;
use std::net::IpAddr;

use contract::BackendUnderTest;
use palisade_ebpf::layout::MapKind;
use palisade_ebpf::{BpfError, BpfExecutor, EbpfDataplane, HostRoute, SystemBpf};
use palisade_ir::Dataplane;

/// Real maps and programs, but the generation flip (the last write of every apply) fails:
/// the apply must leave the previous generation in force.
struct FlipRejected(SystemBpf);

impl BpfExecutor for FlipRejected {
    fn prepare(&mut self) -> Result<(), BpfError> {
        self.0.prepare()
    }
    fn update(&mut self, map: MapKind, key: &[u8], value: &[u8]) -> Result<(), BpfError> {
        if map == MapKind::Config {
            return Err(BpfError::Other("injected: the flip write fails".into()));
        }
        self.0.update(map, key, value)
    }
    fn delete(&mut self, map: MapKind, key: &[u8]) -> Result<(), BpfError> {
        self.0.delete(map, key)
    }
    fn lookup(&mut self, map: MapKind, key: &[u8]) -> Result<Option<Vec<u8>>, BpfError> {
        self.0.lookup(map, key)
    }
    fn entries(&mut self, map: MapKind) -> Result<palisade_ebpf::Entries, BpfError> {
        self.0.entries(map)
    }
    fn keys(&mut self, map: MapKind) -> Result<Vec<Vec<u8>>, BpfError> {
        self.0.keys(map)
    }
    fn count(&mut self, map: MapKind, index: u32) -> Result<(u64, u64), BpfError> {
        self.0.count(map, index)
    }
    fn host_routes(&mut self) -> Result<Vec<HostRoute>, BpfError> {
        self.0.host_routes()
    }
    fn local_addresses(&mut self) -> Result<Vec<IpAddr>, BpfError> {
        self.0.local_addresses()
    }
    fn attached(&mut self) -> Result<BTreeSet<u32>, BpfError> {
        self.0.attached()
    }
    fn attach(&mut self, ifindex: u32) -> Result<(), BpfError> {
        self.0.attach(ifindex)
    }
    fn detach(&mut self, ifindex: u32) -> Result<(), BpfError> {
        self.0.detach(ifindex)
    }
    fn read_state(&mut self, name: &str) -> Result<Option<String>, BpfError> {
        self.0.read_state(name)
    }
    fn write_state(&mut self, name: &str, text: &str) -> Result<(), BpfError> {
        self.0.write_state(name, text)
    }
    fn is_loaded(&mut self) -> bool {
        self.0.is_loaded()
    }
    fn remove_all(&mut self) -> Result<(), BpfError> {
        self.0.remove_all()
    }
}

const EBPF: BackendUnderTest = BackendUnderTest {
    name: "ebpf",
    make: |netns| -> Box<dyn Dataplane> {
        Box::new(EbpfDataplane::new(SystemBpf::in_netns(netns)))
    },
    make_failing: |netns| -> Box<dyn Dataplane> {
        Box::new(EbpfDataplane::new(FlipRejected(SystemBpf::in_netns(netns))))
    },
    tamper: |netns| {
        // Detach both programs from every interface behind the backend's back.
        let links = SystemBpf::in_netns(netns).pin_dir().join("links");
        for e in std::fs::read_dir(&links).expect("the links are pinned") {
            std::fs::remove_file(e.expect("entry").path()).expect("unpin a link");
        }
    },
    make_with_events: |netns, events| -> Box<dyn Dataplane> {
        Box::new(EbpfDataplane::new(SystemBpf::in_netns(netns)).with_events(Some(events)))
    },
};

/// Pins of labs that are gone are freed when a test ends, passed or failed.
struct FreePins;

impl Drop for FreePins {
    fn drop(&mut self) {
        palisade_ebpf::gc_stale_pins();
    }
}

mod ebpf {
    contract_tests!(super::EBPF, setup = super::FreePins);
}
