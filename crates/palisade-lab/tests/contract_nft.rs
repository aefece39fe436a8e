//! The dataplane contract suite (tests/contract/mod.rs) for the nftables backend.

mod contract;

use contract::BackendUnderTest;
use palisade_ir::Dataplane;
use palisade_model::IpFamily;
use palisade_nft::{Config, NftDataplane, NftError, NftExecutor, SystemNft};

/// Real nft, but every script ends with a rule for a chain that does not exist: nft
/// rejects the whole transaction in the kernel.
struct Rejected(SystemNft);

impl NftExecutor for Rejected {
    fn run(&mut self, script: &str) -> Result<String, NftError> {
        self.0.run(&format!(
            "{script}add rule inet palisade palisade_test_no_such_chain accept\n"
        ))
    }
    fn list_table(&mut self, table: &str) -> Result<String, NftError> {
        self.0.list_table(table)
    }
}

const NFT: BackendUnderTest = BackendUnderTest {
    name: "nft",
    make: |netns| -> Box<dyn Dataplane> {
        Box::new(NftDataplane::new(
            SystemNft::in_netns(netns),
            Config::default(),
        ))
    },
    make_failing: |netns| -> Box<dyn Dataplane> {
        Box::new(NftDataplane::new(
            Rejected(SystemNft::in_netns(netns)),
            Config::default(),
        ))
    },
    tamper: |netns| {
        SystemNft::in_netns(netns)
            .run("delete table inet palisade\n")
            .expect("delete the table behind the backend's back");
    },
    make_with_events: Some(|netns, events| -> Box<dyn Dataplane> {
        Box::new(NftDataplane::new(
            SystemNft::in_netns(netns),
            Config {
                events: Some(events),
                ..Config::default()
            },
        ))
    }),
};

#[test]
fn nft_upstream_e2e_ipv4() {
    contract::upstream_conformance(&NFT, IpFamily::V4);
}

#[test]
fn nft_upstream_e2e_ipv6() {
    contract::upstream_conformance(&NFT, IpFamily::V6);
}

#[test]
fn nft_update_equals_full_as_kernel_state() {
    contract::update_equals_full(&NFT);
}

#[test]
fn nft_atomic_under_large_updates() {
    contract::atomic_under_large_updates(&NFT);
}

#[test]
fn nft_failed_apply_keeps_previous() {
    contract::failed_apply_keeps_previous(&NFT);
}

#[test]
fn nft_verdict_events_name_the_engine_reason() {
    contract::events::events_name_the_engine_reason(&NFT);
}

#[test]
fn nft_drift_is_repaired() {
    contract::drift_is_repaired(&NFT);
}

#[test]
fn nft_random_worlds_real_packets_equal_engine_verdicts() {
    contract::differential::random_clusters_real_packets_equal_engine_verdicts(&NFT);
}

#[test]
fn nft_random_worlds_under_cpu_load() {
    contract::differential::stress_long_sequences_under_cpu_load(&NFT);
}
