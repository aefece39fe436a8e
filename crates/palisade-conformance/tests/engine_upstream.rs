//! The upstream e2e suite on the engine: every cell of every probe, both families.

use std::collections::BTreeMap;

use palisade_conformance::{CaseFile, EngineProber, default_addresses, run};
use palisade_model::IpFamily;

fn upstream() -> CaseFile {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/conformance/upstream-e2e.yaml"
    );
    let text = std::fs::read_to_string(path).expect("bundled upstream cases");
    CaseFile::parse(&text, path).expect("cases parse")
}

fn check(family: IpFamily) {
    let file = upstream();
    assert_eq!(file.probe_count(), 65);
    let addresses = default_addresses(&file.pods, family);
    let report = run(
        &file,
        family,
        &addresses,
        &BTreeMap::new(),
        &[],
        &mut EngineProber,
    );
    for f in report.failures.iter().take(20) {
        eprintln!("{f}");
    }
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.summary(false), "4680 passed, 0 failed");
}

#[test]
fn upstream_e2e_ipv4() {
    check(IpFamily::V4);
}

#[test]
fn upstream_e2e_ipv6() {
    check(IpFamily::V6);
}
