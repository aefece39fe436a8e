//! The dataplane contract suite (tests/contract/mod.rs) for the nftables backend.

#[macro_use]
mod contract;

use contract::BackendUnderTest;
use palisade_ir::Dataplane;
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
    make_with_events: |netns, events| -> Box<dyn Dataplane> {
        Box::new(NftDataplane::new(
            SystemNft::in_netns(netns),
            Config {
                events: Some(events),
                ..Config::default()
            },
        ))
    },
};

mod nft {
    contract_tests!(super::NFT);
}
