//! The one seam to the kernel: a script goes in, nft's output comes out. [`SystemNft`] runs
//! the real `nft`; [`FakeNft`] records scripts for tests.

use std::collections::VecDeque;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Errors of running nft. The message names the command and carries nft's own error text
/// (which quotes the offending script line).
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft: cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft: `{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Runs nft scripts. Every script is one transaction: it applies whole or not at all.
pub trait NftExecutor {
    /// Runs `script` as `nft -f -`; returns what nft printed on stdout.
    fn run(&mut self, script: &str) -> Result<String, NftError>;

    /// `nft list table inet TABLE`, through [`NftExecutor::run`].
    fn list_table(&mut self, table: &str) -> Result<String, NftError> {
        self.run(&format!("list table inet {table}\n"))
    }
}

/// The real nft binary, in the current network namespace or (with `netns`) inside a named
/// one, through `ip netns exec NS nft -f -`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemNft {
    /// A namespace as listed by `ip netns list`; `None` is the caller's own.
    pub netns: Option<String>,
}

impl SystemNft {
    pub fn new() -> SystemNft {
        SystemNft { netns: None }
    }

    pub fn in_netns(name: impl Into<String>) -> SystemNft {
        SystemNft {
            netns: Some(name.into()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        match &self.netns {
            None => {
                let mut c = Command::new("nft");
                c.args(args);
                c
            }
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str(), "nft"]).args(args);
                c
            }
        }
    }

    fn describe(&self, args: &[&str]) -> String {
        match &self.netns {
            None => format!("nft {}", args.join(" ")),
            Some(ns) => format!("ip netns exec {ns} nft {}", args.join(" ")),
        }
    }

    /// Runs nft with `args` (no script); returns stdout.
    pub fn run_args(&self, args: &[&str]) -> Result<String, NftError> {
        let command = self.describe(args);
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| NftError::Spawn {
                command: command.clone(),
                source,
            })?;
        finish(command, out)
    }

    /// `nft -c -f -`: the kernel checks the script in a transaction that is then aborted.
    pub fn check(&self, script: &str) -> Result<String, NftError> {
        self.run_script(&["-c", "-f", "-"], script)
    }

    fn run_script(&self, args: &[&str], script: &str) -> Result<String, NftError> {
        let command = self.describe(args);
        let spawn_err = |source| NftError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let stdin = child.stdin.take();
        // Feed stdin from another thread while this one drains stdout and stderr, so that
        // neither side can block the other on a full pipe.
        let out = std::thread::scope(|scope| {
            scope.spawn(move || {
                if let Some(mut pipe) = stdin {
                    // A write error means nft stopped reading; its exit status says why.
                    let _ = pipe.write_all(script.as_bytes());
                }
            });
            child.wait_with_output()
        })
        .map_err(spawn_err)?;
        finish(command, out)
    }
}

fn finish(command: String, out: std::process::Output) -> Result<String, NftError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
        })
    }
}

impl NftExecutor for SystemNft {
    fn run(&mut self, script: &str) -> Result<String, NftError> {
        self.run_script(&["-f", "-"], script)
    }

    fn list_table(&mut self, table: &str) -> Result<String, NftError> {
        self.run_args(&["list", "table", "inet", table])
    }
}

/// Records every script instead of running it. Answers `Ok("")` unless told otherwise with
/// [`FakeNft::push_result`].
#[derive(Debug, Default, Clone)]
pub struct FakeNft {
    /// Every script received, in order (including failed ones).
    pub scripts: Vec<String>,
    results: VecDeque<Result<String, String>>,
}

impl FakeNft {
    pub fn new() -> FakeNft {
        FakeNft::default()
    }

    /// Queues the answer to the next unanswered script: `Err(message)` makes it fail as
    /// nft would (as [`NftError::Failed`] with `message` as stderr).
    pub fn push_result(&mut self, result: Result<String, String>) {
        self.results.push_back(result);
    }

    pub fn last(&self) -> Option<&str> {
        self.scripts.last().map(String::as_str)
    }
}

impl NftExecutor for FakeNft {
    fn run(&mut self, script: &str) -> Result<String, NftError> {
        self.scripts.push(script.to_string());
        match self.results.pop_front() {
            None => Ok(String::new()),
            Some(Ok(out)) => Ok(out),
            Some(Err(stderr)) => Err(NftError::Failed {
                command: "nft -f - (fake)".to_string(),
                status: "exit status: 1".to_string(),
                stderr,
            }),
        }
    }
}
