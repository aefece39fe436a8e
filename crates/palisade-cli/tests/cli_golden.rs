//! Golden tests of the CLI's outputs: each case runs `palisade` from the repository root
//! and compares stdout, stderr and the exit code with `tests/golden/<name>.txt`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p palisade-cli --test cli_golden`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

const CASES: &[(&str, &[&str])] = &[
    ("validate_ok", &["validate", "-f", "testdata/analysis"]),
    ("validate_errors", &["validate", "-f", "testdata/invalid"]),
    (
        "validate_errors_json",
        &["validate", "-f", "testdata/invalid", "-o", "json"],
    ),
    ("matrix_demo", &["matrix", "-f", "examples/demo"]),
    (
        "matrix_shop",
        &[
            "matrix",
            "-f",
            "testdata/analysis",
            "--port",
            "9000/TCP",
            "--port",
            "53/UDP",
        ],
    ),
    (
        "matrix_json",
        &["matrix", "-f", "examples/demo", "-o", "json"],
    ),
    (
        "matrix_audit",
        &[
            "matrix",
            "-f",
            "examples/demo/00-cluster.yaml",
            "-f",
            "testdata/audit",
        ],
    ),
    (
        "matrix_audit_enforced",
        &[
            "matrix",
            "-f",
            "examples/demo/00-cluster.yaml",
            "-f",
            "testdata/audit",
            "--audit",
        ],
    ),
    (
        "explain_audit_denied",
        &[
            "explain",
            "-f",
            "examples/demo/00-cluster.yaml",
            "-f",
            "testdata/audit",
            "--from",
            "default/nginx",
            "--to",
            "default/backend",
            "--port",
            "80/TCP",
            "-o",
            "json",
        ],
    ),
    (
        "explain_allowed",
        &[
            "explain",
            "-f",
            "testdata/analysis",
            "--from",
            "shop/web",
            "--to",
            "shop/api",
            "--port",
            "9000/TCP",
        ],
    ),
    (
        "explain_denied",
        &[
            "explain",
            "-f",
            "testdata/analysis",
            "--from",
            "shop/db",
            "--to",
            "shop/api",
            "--port",
            "9000/TCP",
        ],
    ),
    (
        "explain_external",
        &[
            "explain",
            "-f",
            "testdata/analysis",
            "--from",
            "shop/api",
            "--to",
            "10.1.2.3",
            "--port",
            "443/TCP",
        ],
    ),
    (
        "explain_except",
        &[
            "explain",
            "-f",
            "testdata/analysis",
            "--from",
            "shop/api",
            "--to",
            "10.96.0.10",
            "--port",
            "443/TCP",
        ],
    ),
    (
        "explain_yaml",
        &[
            "explain",
            "-f",
            "testdata/analysis",
            "--from",
            "monitoring/prometheus",
            "--to",
            "shop/api",
            "--port",
            "9090",
            "-o",
            "yaml",
        ],
    ),
    (
        "explain_unknown_pod",
        &[
            "explain",
            "-f",
            "examples/demo",
            "--from",
            "default/nope",
            "--to",
            "default/nginx",
            "--port",
            "80",
        ],
    ),
    ("connlist_shop", &["connlist", "-f", "testdata/analysis"]),
    (
        "connlist_shop_json",
        &["connlist", "-f", "testdata/analysis", "-o", "json"],
    ),
    (
        "connlist_demo_json",
        &["connlist", "-f", "examples/demo", "-o", "json"],
    ),
    (
        "lint_shop",
        &[
            "lint",
            "-f",
            "testdata/analysis",
            "-f",
            "testdata/invalid/bad.yaml",
        ],
    ),
    (
        "invalid_input_stops_analysis",
        &["matrix", "-f", "testdata/invalid"],
    ),
    (
        "conformance_upstream_ipv4",
        &[
            "conformance",
            "--cases",
            "testdata/conformance/upstream-e2e.yaml",
            "--family",
            "ipv4",
        ],
    ),
    (
        "explain_mixed_families",
        &[
            "explain",
            "-f",
            "testdata/apply",
            "--from",
            "10.0.2.20",
            "--to",
            "fd00::1:10",
            "--port",
            "8080/TCP",
        ],
    ),
    (
        "explain_pod_address",
        &[
            "explain",
            "-f",
            "testdata/apply",
            "--from",
            "10.0.2.20",
            "--to",
            "10.0.1.10",
            "--port",
            "8080/TCP",
        ],
    ),
    (
        "validate_typed_lists",
        &["validate", "-f", "testdata/lists"],
    ),
    (
        "matrix_typed_lists",
        &["matrix", "-f", "testdata/lists/snapshot.json"],
    ),
    (
        "validate_no_objects",
        &["validate", "-f", "testdata/no-objects"],
    ),
    (
        "matrix_no_objects",
        &["matrix", "-f", "testdata/no-objects"],
    ),
    (
        "validate_strict_cidrs",
        &["validate", "-f", "testdata/versions/host-bits.yaml"],
    ),
    (
        "validate_strict_cidrs_1_35",
        &[
            "validate",
            "-f",
            "testdata/versions/host-bits.yaml",
            "--kubernetes-version",
            "1.35",
        ],
    ),
    (
        "validate_new_fields",
        &["validate", "-f", "testdata/versions/new-fields.yaml"],
    ),
    (
        "validate_fields_strict",
        &["validate", "-f", "testdata/versions/typo.yaml"],
    ),
    (
        "validate_fields_warn",
        &[
            "validate",
            "-f",
            "testdata/versions/typo.yaml",
            "--validate",
            "warn",
        ],
    ),
    (
        "validate_fields_ignore",
        &[
            "validate",
            "-f",
            "testdata/versions/typo.yaml",
            "--validate=ignore",
        ],
    ),
    (
        "explain_self",
        &[
            "explain",
            "-f",
            "examples/demo",
            "--from",
            "default/nginx",
            "--to",
            "default/nginx",
            "--port",
            "80/TCP",
        ],
    ),
    (
        "connlist_shop_dot",
        &["connlist", "-f", "testdata/analysis", "-o", "dot"],
    ),
    (
        "connlist_demo_dot",
        &["connlist", "-f", "examples/demo", "-o", "dot"],
    ),
    (
        "diff_shop",
        &["diff", "testdata/diff/old", "testdata/diff/new"],
    ),
    (
        "diff_shop_json",
        &[
            "diff",
            "testdata/diff/old",
            "testdata/diff/new",
            "-o",
            "json",
        ],
    ),
    (
        "diff_shop_md",
        &["diff", "testdata/diff/old", "testdata/diff/new", "-o", "md"],
    ),
    (
        "diff_shop_dot",
        &[
            "diff",
            "testdata/diff/old",
            "testdata/diff/new",
            "-o",
            "dot",
        ],
    ),
    (
        "diff_unchanged",
        &["diff", "testdata/analysis", "testdata/diff/old"],
    ),
    (
        "diff_invalid_side",
        &["diff", "testdata/diff/old", "testdata/invalid"],
    ),
    (
        "apply_dry_run",
        &[
            "apply",
            "--backend",
            "nft",
            "-f",
            "testdata/apply",
            "--node",
            "node-a",
            "--dry-run",
        ],
    ),
    (
        "apply_dry_run_iptables",
        &[
            "apply",
            "--backend",
            "iptables",
            "-f",
            "testdata/apply",
            "--node",
            "node-a",
            "--dry-run",
        ],
    ),
];

fn run(args: &[&str]) -> String {
    run_in(&repo_root(), args)
}

fn run_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .current_dir(dir)
        // The git repository is the one of the current directory, whatever the caller's.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .output()
        .expect("run palisade");
    format!(
        "$ palisade {}\n--- exit: {}\n--- stdout:\n{}--- stderr:\n{}",
        args.join(" "),
        out.status.code().map_or("signal".into(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Compares `actual` with `tests/golden/<name>.txt` (or writes it, with UPDATE_GOLDEN);
/// a mismatch is added to `mismatches`.
fn check_golden(name: &str, actual: &str, mismatches: &mut Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.txt"));
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}: run with UPDATE_GOLDEN=1", path.display()));
    if expected != actual {
        mismatches.push(format!(
            "{name}:\n--- expected\n{expected}\n--- actual\n{actual}"
        ));
    }
}

#[test]
fn cli_outputs_match_golden_files() {
    let mut mismatches = Vec::new();
    for (name, args) in CASES {
        check_golden(name, &run(args), &mut mismatches);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Runs git in `dir` (the test's own repository), failing the test when git fails.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies the manifests of `testdata/<from>` into `to`.
fn copy_manifests(from: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(repo_root().join(from)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The output part of a golden text (after its command line), to compare two commands.
fn stdout_of(golden: &str) -> &str {
    let start = golden.find("--- stdout:\n").expect("stdout");
    let end = golden.find("--- stderr:\n").expect("stderr");
    &golden[start..end]
}

/// `palisade diff REV:PATH ...` in a git repository made by the test: the manifests of
/// `testdata/diff/old` committed, then those of `testdata/diff/new`; each side read from a
/// revision gives what the same files on disk give (`diff_shop`).
#[test]
fn diff_of_git_revisions_matches_golden_files() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    git(root, &["init", "--quiet"]);
    git(root, &["config", "user.name", "Palisade Test"]);
    git(
        root,
        &["config", "user.email", "palisade-test@example.invalid"],
    );
    git(root, &["config", "commit.gpgsign", "false"]);
    copy_manifests("testdata/diff/old", &root.join("deploy"));
    // A file git holds that is not a manifest is not read, as on disk.
    std::fs::write(root.join("deploy/README"), "not a manifest\n").unwrap();
    git(root, &["add", "deploy"]);
    git(root, &["commit", "--quiet", "-m", "old policies"]);
    copy_manifests("testdata/diff/new", &root.join("deploy"));
    git(root, &["commit", "--quiet", "-a", "-m", "new policies"]);
    std::fs::create_dir(root.join("ci")).unwrap();

    let cases: &[(&str, &str, &[&str])] = &[
        // The work tree against the previous commit, as in a pull request's CI job.
        (
            "diff_git_worktree",
            ".",
            &["diff", "HEAD~1:deploy", "deploy"],
        ),
        (
            "diff_git_revisions_md",
            ".",
            &["diff", "HEAD~1:deploy", "HEAD:deploy", "-o", "md"],
        ),
        // PATH is relative to the current directory, as git takes it.
        (
            "diff_git_subdir",
            "ci",
            &["diff", "HEAD~1:../deploy", "../deploy"],
        ),
        (
            "diff_git_unchanged",
            ".",
            &["diff", "HEAD:deploy", "deploy"],
        ),
        (
            "diff_git_bad_revision",
            ".",
            &["diff", "nope:deploy", "deploy"],
        ),
        (
            "diff_git_no_such_path",
            ".",
            &["diff", "HEAD~1:nope", "deploy"],
        ),
    ];
    let mut mismatches = Vec::new();
    let mut outputs = std::collections::BTreeMap::new();
    for (name, dir, args) in cases {
        let actual = run_in(&root.join(dir), args);
        check_golden(name, &actual, &mut mismatches);
        outputs.insert(*name, actual);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // The same connectivity difference as the two folders on disk.
    let on_disk = run(&["diff", "testdata/diff/old", "testdata/diff/new"]);
    assert!(on_disk.contains("--- exit: 1\n"), "{on_disk}");
    for name in ["diff_git_worktree", "diff_git_subdir"] {
        assert_eq!(stdout_of(&outputs[name]), stdout_of(&on_disk), "{name}");
    }
    // The Markdown headline names the sides; its table rows must be the same.
    let rows = |text: &str| -> Vec<String> {
        stdout_of(text)
            .lines()
            .filter(|l| l.starts_with('|'))
            .map(String::from)
            .collect()
    };
    let md = run(&["diff", "testdata/diff/old", "testdata/diff/new", "-o", "md"]);
    assert!(rows(&md).len() > 2, "{md}");
    assert_eq!(rows(&outputs["diff_git_revisions_md"]), rows(&md));
    for name in ["diff_git_bad_revision", "diff_git_no_such_path"] {
        assert!(outputs[name].contains("--- exit: 2\n"), "{}", outputs[name]);
    }
}

#[test]
fn connlist_is_stable_across_runs() {
    let args = ["connlist", "-f", "testdata/analysis", "-o", "json"];
    assert_eq!(run(&args), run(&args));
}

#[test]
fn stdin_is_read_with_dash() {
    let text = std::fs::read_to_string(repo_root().join("examples/demo/00-cluster.yaml")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["validate", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "6 valid object(s), 0 error(s)\n"
    );
}
