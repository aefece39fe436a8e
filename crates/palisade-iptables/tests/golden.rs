//! Golden files: each fixture's full render (ipset and iptables-restore input, as `apply
//! --dry-run` prints it), compared exactly with `tests/golden/<name>.txt`. The fixtures are
//! palisade-nft's, so both backends are pinned on the same rulesets.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p palisade-iptables --test golden`.

// The fixtures of palisade-nft (that module allows its own dead code).
#[path = "../../palisade-nft/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use palisade_iptables::render_full;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"))
}

#[test]
fn golden_files_match() {
    let update = std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1");
    let mut failures = Vec::new();
    for (name, rs) in common::fixtures() {
        rs.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let rendered = render_full(&rs).text();
        assert_eq!(
            rendered,
            render_full(&rs).text(),
            "{name}: not deterministic"
        );
        let path = golden_path(name);
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
        "{}\nIf the change is intended: UPDATE_GOLDEN=1 cargo test -p palisade-iptables --test golden",
        failures.join("\n")
    );
}

#[test]
fn no_stray_golden_files() {
    let names: Vec<&str> = common::fixtures().iter().map(|(n, _)| *n).collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("dir entry").path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        assert!(
            names.contains(&stem.as_str()),
            "{}: no fixture of that name",
            path.display()
        );
    }
}
