//! The dataplanes the lab's benchmarks measure, by name (`--backend(s)`), shared by
//! `dataplane_bench` and `events_bench`.

use palisade_iptables::{IptablesDataplane, IptablesMode, SystemIptables};
use palisade_ir::Dataplane;
use palisade_ir::events::EventConfig;
use palisade_nft::{Config, NftDataplane, SystemNft};

/// A dataplane a benchmark can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchBackend {
    Nft,
    IptablesNft,
    IptablesLegacy,
    Ebpf,
}

impl BenchBackend {
    pub fn parse(s: &str) -> Result<BenchBackend, String> {
        match s.trim() {
            "nft" => Ok(BenchBackend::Nft),
            "iptables-nft" => Ok(BenchBackend::IptablesNft),
            "iptables-legacy" => Ok(BenchBackend::IptablesLegacy),
            "ebpf" => Ok(BenchBackend::Ebpf),
            other => Err(format!(
                "unknown backend {other:?} (nft, iptables-nft, iptables-legacy, ebpf)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BenchBackend::Nft => "nft",
            BenchBackend::IptablesNft => "iptables-nft",
            BenchBackend::IptablesLegacy => "iptables-legacy",
            BenchBackend::Ebpf => "ebpf",
        }
    }

    /// The backend's dataplane inside `netns`, reporting verdict events when `events`.
    pub fn make(self, netns: &str, events: Option<EventConfig>) -> Box<dyn Dataplane> {
        let iptables = |mode| -> Box<dyn Dataplane> {
            Box::new(
                IptablesDataplane::new(SystemIptables::new(Some(netns), Some(mode)))
                    .with_events(events),
            )
        };
        match self {
            BenchBackend::Nft => Box::new(NftDataplane::new(
                SystemNft::in_netns(netns),
                Config {
                    events,
                    ..Config::default()
                },
            )),
            BenchBackend::IptablesNft => iptables(IptablesMode::Nft),
            BenchBackend::IptablesLegacy => iptables(IptablesMode::Legacy),
            BenchBackend::Ebpf => Box::new(
                palisade_ebpf::EbpfDataplane::new(palisade_ebpf::SystemBpf::in_netns(netns))
                    .with_events(events),
            ),
        }
    }
}
