//! Network namespaces: entering one (per thread), listing and deleting the lab's own,
//! the registry of live labs, signal cleanup, and the preflight checks.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, Once};
use std::thread;

use nix::sched::{CloneFlags, setns};

use crate::LabError;
use crate::cmd::{self, SETUP_TIMEOUT};

/// Every namespace the lab creates is named `palisade-<labid>-...`; `lab down` deletes
/// every namespace starting with this.
pub const NETNS_PREFIX: &str = "palisade-";

const NETNS_DIR: &str = "/run/netns";

/// Names of the named network namespaces (`/run/netns`) starting with `prefix`, sorted.
pub fn list_netns(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Deletes every named netns starting with `prefix` (which must itself start with
/// [`NETNS_PREFIX`], so nothing else can ever be hit). Returns how many were deleted.
/// Deleting a namespace removes its interfaces (and so the veth peers in the others).
pub fn delete_netns_matching(prefix: &str) -> Result<usize, LabError> {
    if !prefix.starts_with(NETNS_PREFIX) {
        return Err(LabError::Spec(format!(
            "refusing to delete namespaces matching {prefix:?}"
        )));
    }
    let names = list_netns(prefix);
    if names.is_empty() {
        return Ok(0);
    }
    let script: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    // -force: go on past a namespace that vanished meanwhile; check what is left after.
    let result = cmd::run(
        "ip",
        &["-force", "-batch", "-"],
        Some(script.as_bytes()),
        SETUP_TIMEOUT,
    );
    let left = list_netns(prefix);
    let deleted = names.len().saturating_sub(left.len());
    match result {
        Ok(_) if left.is_empty() => Ok(deleted),
        Ok(out) => Err(LabError::Command {
            command: "ip -force -batch - (netns del)".into(),
            reason: format!(
                "{} left: {}; {}",
                left.len(),
                left.join(", "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
        Err(e) => Err(e),
    }
}

/// Deletes every lab namespace on this machine (`palisade-*`), whoever created it: what
/// `palisade lab down` runs to remove leftovers of a killed process. Returns the count.
pub fn down_all() -> Result<usize, LabError> {
    delete_netns_matching(NETNS_PREFIX)
}

/// An open handle on a named netns, to enter it from a thread.
#[derive(Debug)]
pub(crate) struct NetnsHandle {
    pub name: String,
    file: File,
}

impl NetnsHandle {
    pub fn open(name: &str) -> Result<Self, LabError> {
        let path = Path::new(NETNS_DIR).join(name);
        let file = File::open(&path).map_err(|source| LabError::Io {
            context: format!("open {}", path.display()),
            source,
        })?;
        Ok(Self {
            name: name.to_string(),
            file,
        })
    }

    /// Moves the *calling thread* into this netns. Only ever called on threads the lab
    /// spawned for the purpose, never on a caller's thread.
    pub fn enter(&self) -> Result<(), LabError> {
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| LabError::Setns {
            netns: self.name.clone(),
            source,
        })
    }

    /// Runs `f` on a fresh thread inside this netns (sockets created there stay there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        thread::scope(|s| {
            let worker = s.spawn(|| {
                self.enter()?;
                Ok(f())
            });
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

// ---- registry of live labs, for signal cleanup ----

static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    LIVE.lock().unwrap_or_else(|poison| poison.into_inner())
}

pub(crate) fn register(prefix: &str) {
    live().insert(prefix.to_string());
}

pub(crate) fn unregister(prefix: &str) {
    live().remove(prefix);
}

/// Deletes the namespaces of every lab of this process that is still alive. For a signal
/// handler of the caller's own (e.g. `tokio::signal::ctrl_c`); returns how many namespaces
/// were deleted. The `Lab` values stay usable only for dropping.
pub fn cleanup_live_labs() -> usize {
    let prefixes: Vec<String> = live().iter().cloned().collect();
    let mut deleted = 0;
    for prefix in prefixes {
        match delete_netns_matching(&prefix) {
            Ok(n) => deleted += n,
            Err(e) => tracing::warn!(%prefix, error = %e, "lab: cleanup failed"),
        }
    }
    deleted
}

/// Installs (once per process) a handler for SIGINT, SIGTERM and SIGHUP that deletes the
/// namespaces of every live lab, then exits with status 128 + the signal number. For the
/// CLI's `lab` commands; a process that already handles these signals should instead call
/// [`cleanup_live_labs`] from its own handler. SIGKILL cannot be caught: `lab down`
/// ([`down_all`]) removes what such a death leaves behind.
pub fn install_signal_cleanup() -> Result<(), LabError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(
        || match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(mut signals) => {
                let spawned = thread::Builder::new()
                    .name("palisade-lab-signals".into())
                    .spawn(move || {
                        if let Some(signal) = signals.forever().next() {
                            let n = cleanup_live_labs();
                            eprintln!("palisade-lab: signal {signal}: deleted {n} lab namespaces");
                            std::process::exit(128 + signal);
                        }
                    });
                if let Err(source) = spawned {
                    result = Err(LabError::Io {
                        context: "spawn signal thread".into(),
                        source,
                    });
                }
            }
            Err(source) => {
                result = Err(LabError::Io {
                    context: "install signal handlers".into(),
                    source,
                });
            }
        },
    );
    result
}

// ---- preflight ----

/// Checks what a lab with rules needs: root, `ip` (iproute2), IPv6 in the kernel, `nft`.
/// The error lists everything missing, with what to do about it.
pub fn check_prerequisites() -> Result<(), LabError> {
    let mut missing = lab_prerequisites_missing();
    if cmd::run("nft", &["--version"], None, SETUP_TIMEOUT).is_err() {
        missing.push("`nft` (nftables) not found: apt-get install -y nftables".into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Prerequisites(missing))
    }
}

/// Checks what [`crate::Lab::create`] itself needs: [`check_prerequisites`] without `nft`.
pub fn check_lab_prerequisites() -> Result<(), LabError> {
    let missing = lab_prerequisites_missing();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Prerequisites(missing))
    }
}

pub(crate) fn lab_prerequisites_missing() -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(
            "root (creating network namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN)".into(),
        );
    }
    match cmd::run("ip", &["-V"], None, SETUP_TIMEOUT) {
        Ok(out) if out.status.success() => {}
        _ => missing.push("`ip` from iproute2 not found: apt-get install -y iproute2".into()),
    }
    if !Path::new("/proc/sys/net/ipv6").exists() {
        missing.push("IPv6 in the kernel (/proc/sys/net/ipv6 is missing)".into());
    }
    missing
}

/// Reads the host's addresses and routes (read-only) and refuses lab ranges the host uses.
pub(crate) fn check_host_ranges() -> Result<(), LabError> {
    let read = |args: &[&str]| -> Result<String, LabError> {
        let out = cmd::run_ok("ip", args, None, SETUP_TIMEOUT)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let addrs = read(&["-o", "addr", "show"])?;
    let mut routes = read(&["-o", "-4", "route", "show", "table", "all"])?;
    routes.push_str(&read(&["-o", "-6", "route", "show", "table", "all"])?);
    let found = crate::plan::host_conflicts(&addrs, &routes);
    if found.is_empty() {
        Ok(())
    } else {
        Err(LabError::HostOverlap {
            ranges: format!(
                "{} / {}",
                crate::plan::lab_range_v4(),
                crate::plan::lab_range_v6()
            ),
            found: found.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_is_confined_to_lab_names() {
        assert!(matches!(
            delete_netns_matching("pal"),
            Err(LabError::Spec(_))
        ));
        assert!(matches!(delete_netns_matching(""), Err(LabError::Spec(_))));
        assert_eq!(delete_netns_matching("palisade-no-such-lab-").unwrap(), 0);
    }
}
