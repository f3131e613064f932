//! Helpers the unit tests share: the real tools they check output with.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `program` with `args`, `input` on its stdin; its stdout and stderr. Panics, saying so,
/// when the tool cannot start or fails.
pub fn run_tool(program: &str, args: &[&str], input: &[u8]) -> (String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} could not start ({e}); run scripts/setup.sh"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // The tool may stop reading early; a broken pipe then is not the test's concern.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("tool runs");
    writer.join().expect("writer");
    assert!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `ffprobe -v error ARGS -` (`FFPROBE` names another build) over `input`: stdout and stderr.
pub fn ffprobe(input: &[u8], args: &[&str]) -> (String, String) {
    let program = std::env::var("FFPROBE").unwrap_or_else(|_| "ffprobe".into());
    let args = [&["-v", "error"], args, &["-"]].concat();
    run_tool(&program, &args, input)
}
