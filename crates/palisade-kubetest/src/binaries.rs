//! Finding the programs the harness runs: the real `kube-apiserver` and `etcd` (built from
//! source by `scripts/build-k8s.sh`), and the `palisade` binary under test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};

/// The repository root (this crate is `crates/palisade-kubetest`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sBinaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
}

const DEFAULT_CACHE: &str = "/var/cache/palisade-k8s";

/// A build from source takes many minutes; this bounds it all the same.
const BUILD_K8S_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Where the binaries are, in this order:
/// 1. `PALISADE_KUBE_APISERVER` and `PALISADE_ETCD` (both set): used as they are, so CI or a
///    developer can point at any build;
/// 2. `$PALISADE_K8S_CACHE/bin/` (default `/var/cache/palisade-k8s/bin/`), where
///    `scripts/build-k8s.sh` puts them: no Go toolchain is needed when they are there;
/// 3. otherwise `scripts/build-k8s.sh --print-env`, which builds them (once per machine) and
///    prints where they are.
///
/// Resolved once per process; concurrent tests wait for the one resolution.
pub fn k8s_binaries() -> Result<K8sBinaries> {
    static FOUND: OnceLock<K8sBinaries> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let found = find_k8s_binaries()?;
    tracing::info!(apiserver = %found.kube_apiserver.display(), etcd = %found.etcd.display(), "kubetest: binaries");
    Ok(FOUND.get_or_init(|| found).clone())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_k8s_binaries() -> Result<K8sBinaries> {
    if let (Some(a), Some(e)) = (
        std::env::var_os("PALISADE_KUBE_APISERVER"),
        std::env::var_os("PALISADE_ETCD"),
    ) {
        let found = K8sBinaries {
            kube_apiserver: a.into(),
            etcd: e.into(),
        };
        for p in [&found.kube_apiserver, &found.etcd] {
            if !is_executable(p) {
                return Err(Error::other(format!(
                    "{} (from PALISADE_KUBE_APISERVER/PALISADE_ETCD) is not an executable",
                    p.display()
                )));
            }
        }
        return Ok(found);
    }
    let cache = std::env::var_os("PALISADE_K8S_CACHE")
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from);
    let cached = K8sBinaries {
        kube_apiserver: cache.join("bin/kube-apiserver"),
        etcd: cache.join("bin/etcd"),
    };
    if is_executable(&cached.kube_apiserver) && is_executable(&cached.etcd) {
        return Ok(cached);
    }
    let script = repo_root().join("scripts/build-k8s.sh");
    tracing::warn!(script = %script.display(), "kubetest: kube-apiserver/etcd not built yet; building them (this takes minutes)");
    let out = run_bounded(
        Command::new("bash").arg(&script).arg("--print-env"),
        BUILD_K8S_TIMEOUT,
    )?;
    let mut apiserver = None;
    let mut etcd = None;
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("PALISADE_KUBE_APISERVER=") {
            apiserver = Some(PathBuf::from(v));
        }
        if let Some(v) = line.strip_prefix("PALISADE_ETCD=") {
            etcd = Some(PathBuf::from(v));
        }
    }
    match (apiserver, etcd) {
        (Some(kube_apiserver), Some(etcd)) => Ok(K8sBinaries {
            kube_apiserver,
            etcd,
        }),
        _ => Err(Error::other(format!(
            "{}: no PALISADE_KUBE_APISERVER/PALISADE_ETCD in its output:\n{out}",
            script.display()
        ))),
    }
}

/// Runs a command to completion (stdout captured, stderr inherited), killing it past `timeout`.
fn run_bounded(command: &mut Command, timeout: Duration) -> Result<String> {
    let what = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .ctx(&what)?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().ctx(&what)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout {
                what,
                after: timeout,
                detail: "killed".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::other(format!("{what}: {status}")));
    }
    Ok(out)
}

/// The `palisade` binary under test.
///
/// `PALISADE_BIN` if set. Otherwise it is built with `cargo build -p palisade-cli --bin
/// palisade` into the target directory and profile this test executable itself comes from
/// (`<target>/<profile>/deps/<test>` -> `<target>/<profile>/palisade`), once per process.
/// Always building rather than taking an existing file: cargo's no-op build takes a second,
/// and a stale binary would test old agent code. (`env!("CARGO_BIN_EXE_palisade")` only
/// exists inside palisade-cli's own tests.) Cargo holds no lock while tests run, so the
/// nested build does not wait on the outer `cargo test`.
pub fn palisade_binary() -> Result<PathBuf> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let found = match std::env::var_os("PALISADE_BIN") {
        Some(p) => PathBuf::from(p),
        None => build_palisade()?,
    };
    if !is_executable(&found) {
        return Err(Error::other(format!(
            "{} is not an executable",
            found.display()
        )));
    }
    Ok(FOUND.get_or_init(|| found).clone())
}

fn build_palisade() -> Result<PathBuf> {
    let exe = std::env::current_exe().ctx("current_exe")?;
    // <target>/<profile>/deps/<test exe>
    let profile_dir = exe.parent().and_then(Path::parent).ok_or_else(|| {
        Error::other(format!(
            "{}: not inside <target>/<profile>/deps",
            exe.display()
        ))
    })?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| Error::other("no target dir"))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // Cargo runs tests with the package's own variables set (CARGO_MANIFEST_DIR, ...); a
    // build script that tracks one (ring's does) would see it change and rebuild half the
    // tree, and the next plain `cargo build` would rebuild it back. Build as from a shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_for_tests = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            );
        if set_for_tests {
            command.env_remove(&*name);
        }
    }
    command
        .current_dir(repo_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "palisade-cli",
            "--bin",
            "palisade",
            "--target-dir",
        ])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let started = Instant::now();
    run_bounded(&mut command, Duration::from_secs(30 * 60))?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "kubetest: cargo build -p palisade-cli"
    );
    Ok(profile_dir.join("palisade"))
}
