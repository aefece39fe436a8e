//! Golden files: each fixture's full render, compared exactly with `tests/golden/<name>.nft`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p palisade-nft --test golden`.

mod common;

use std::path::PathBuf;

use palisade_ir::NodeRuleset;
use palisade_ir::events::EventConfig;
use palisade_nft::{Config, render_full};

/// Fixtures rendered with verdict events on (allowed connections too), as `<name>.events`.
const WITH_EVENTS: [&str; 2] = ["allow_from_selector_port_range", "audit_mode"];

/// Every golden file's name, ruleset and backend configuration.
fn renders() -> Vec<(String, NodeRuleset, Config)> {
    let mut out: Vec<(String, NodeRuleset, Config)> = common::fixtures()
        .into_iter()
        .map(|(name, rs)| (name.to_string(), rs, Config::default()))
        .collect();
    for (name, rs) in common::fixtures() {
        if WITH_EVENTS.contains(&name) {
            let events = EventConfig {
                log_allowed: true,
                ..EventConfig::default()
            };
            let config = Config {
                events: Some(events),
                ..Config::default()
            };
            out.push((format!("{name}.events"), rs, config));
        }
    }
    out
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.nft"))
}

#[test]
fn golden_files_match() {
    let update = std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1");
    let mut failures = Vec::new();
    for (name, rs, config) in renders() {
        rs.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let rendered = render_full(&rs, &config);
        assert_eq!(
            rendered,
            render_full(&rs, &config),
            "{name}: not deterministic"
        );
        let path = golden_path(&name);
        if update {
            std::fs::write(&path, &rendered).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == rendered => {}
            Ok(expected) => failures.push(format!(
                "{name}: differs from {} (- golden, + rendered):\n{}",
                path.display(),
                common::diff(&expected, &rendered)
            )),
            Err(e) => failures.push(format!("{name}: {}: {e}", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nIf the change is intended: UPDATE_GOLDEN=1 cargo test -p palisade-nft --test golden",
        failures.join("\n")
    );
}

#[test]
fn no_stray_golden_files() {
    let names: Vec<String> = renders().into_iter().map(|(n, _, _)| n).collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("dir entry").path();
        let stem = path
            .file_name()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_suffix(".nft"))
            .unwrap_or_default()
            .to_string();
        assert!(
            names.contains(&stem),
            "{}: no fixture renders it",
            path.display()
        );
    }
}

/// `nft -c -f`: the kernel accepts every golden script (checked inside a test netns, so the
/// host ruleset is never involved, and aborted, so nothing is installed).
#[test]
fn golden_files_pass_nft_check() {
    if !common::kernel_available("golden_files_pass_nft_check") {
        return;
    }
    let ns = common::Netns::new();
    let nft = ns.nft();
    for (name, _, _) in renders() {
        let script = std::fs::read_to_string(golden_path(&name)).expect("golden file");
        nft.check(&script).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let all = render_full(&common::combined(), &Config::default());
    nft.check(&all).unwrap_or_else(|e| panic!("combined: {e}"));
}
