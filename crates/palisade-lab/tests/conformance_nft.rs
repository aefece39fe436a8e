//! The upstream e2e suite with real packets through the nftables backend, both families.
//! Root only (see `can_run_root_tests`).

use std::time::Duration;

use palisade_conformance::{CaseFile, run};
use palisade_lab::enforce::{Enforcer, LabProber};
use palisade_lab::{Lab, LabPod, LabSpec, can_run_root_tests};
use palisade_model::IpFamily;
use palisade_nft::{Config, NftDataplane, SystemNft};

fn upstream() -> CaseFile {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/conformance/upstream-e2e.yaml"
    );
    CaseFile::parse(&std::fs::read_to_string(path).unwrap(), path).unwrap()
}

fn conformance(family: IpFamily) {
    if !can_run_root_tests(true) {
        return;
    }
    let file = upstream();
    let spec = LabSpec {
        pods: file.pods.iter().map(|k| LabPod::new(k.clone())).collect(),
        ..LabSpec::default()
    };
    let lab = Lab::create(spec).expect("lab");
    let enforcer = Enforcer::new(&lab, |i| {
        Box::new(NftDataplane::new(
            SystemNft::in_netns(lab.node_netns(i)),
            Config::default(),
        ))
    });
    let nodes = enforcer.node_of_pods(&file.pods);
    let addresses = enforcer.addresses(&file.pods, family);
    let mut prober = LabProber::new(enforcer, Duration::from_millis(1000));
    let report = run(&file, family, &addresses, &nodes, &[], &mut prober);
    for f in report.failures.iter().take(40) {
        eprintln!("FAIL {f}");
    }
    eprintln!(
        "{family}: {} ({:?})",
        report.summary(true),
        report.skip_reasons
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.failed, 0);
    // Every TCP and UDP cell ran; only SCTP (3 probes x 72 cells) is skipped.
    assert_eq!(report.skipped, 3 * 72);
    assert_eq!(report.passed, 4680 - 3 * 72);
}

#[test]
fn upstream_e2e_nft_ipv4() {
    conformance(IpFamily::V4);
}

#[test]
fn upstream_e2e_nft_ipv6() {
    conformance(IpFamily::V6);
}
