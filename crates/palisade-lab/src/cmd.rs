//! Running the outside tools (`ip`, `nft`, `sh`), always bounded in time.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::LabError;

/// How long any one `ip` invocation of the lab's own setup may take.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

fn describe(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs `program args`, feeding `stdin`, and returns its output whatever its exit status.
/// Killed (and an error) if it runs longer than `timeout`.
pub(crate) fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, LabError> {
    let command = describe(program, args);
    tracing::debug!(%command, "lab: run");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Command {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let mut write_error = None;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits early closes the pipe; its status tells the story.
        if let Err(e) = pipe.write_all(data)
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            write_error = Some(e);
        }
    }
    let status = wait_bounded(&mut child, timeout);
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let status = match status {
        Ok(Some(status)) => status,
        Ok(None) => {
            return Err(LabError::Command {
                command,
                reason: format!("still running after {timeout:?}: killed"),
            });
        }
        Err(e) => {
            return Err(LabError::Command {
                command,
                reason: e.to_string(),
            });
        }
    };
    if let Some(e) = write_error {
        return Err(LabError::Command {
            command,
            reason: format!("writing stdin: {e}"),
        });
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// `Ok(None)` = timed out (the child has been killed and reaped).
fn wait_bounded(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Like [`run`], but a non-zero exit is an error carrying the command's stderr.
pub(crate) fn run_ok(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, LabError> {
    let output = run(program, args, stdin, timeout)?;
    if output.status.success() {
        Ok(output)
    } else {
        let mut reason = format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        if let Some(script) = stdin {
            reason.push_str("\n--- input ---\n");
            reason.push_str(&String::from_utf8_lossy(script));
        }
        Err(LabError::Command {
            command: describe(program, args),
            reason,
        })
    }
}

/// Runs an `ip -batch` script, in `netns` when given (`ip -n NETNS -batch -`).
pub(crate) fn ip_batch(netns: Option<&str>, script: &str) -> Result<(), LabError> {
    if script.trim().is_empty() {
        return Ok(());
    }
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    run_ok("ip", &args, Some(script.as_bytes()), SETUP_TIMEOUT).map(drop)
}
