//! Starting sen's own binaries from tests and tools, also under an emulator.
//!
//! `make test-aarch64` runs aarch64 test binaries on an x86-64 machine through
//! `qemu-aarch64` (cargo's target runner). A test that starts another aarch64 binary
//! (`sen`, or itself as a child) must go through the same emulator: it sets
//! `SEN_TEST_RUNNER` to the runner's command line, and [`command`] prefixes it.

use std::ffi::OsStr;
use std::process::Command;

/// The environment variable holding the runner command line (words separated by
/// spaces, e.g. `qemu-aarch64 -L /path/to/sysroot`); unset or empty: none.
pub const RUNNER_VAR: &str = "SEN_TEST_RUNNER";

/// A `Command` for `exe`, through `SEN_TEST_RUNNER` when it is set.
pub fn command(exe: impl AsRef<OsStr>) -> Command {
    command_with(std::env::var(RUNNER_VAR).ok().as_deref(), exe)
}

/// A `Command` for `exe` through `runner` (a command line; None or blank: none).
pub fn command_with(runner: Option<&str>, exe: impl AsRef<OsStr>) -> Command {
    let mut words = runner.unwrap_or("").split_whitespace();
    match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_runner_prefixes_the_program() {
        let c = super::command_with(Some("qemu-aarch64  -L /sysroot"), "/bin/sen");
        assert_eq!(c.get_program(), "qemu-aarch64");
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["-L", "/sysroot", "/bin/sen"]);
        for none in [None, Some(""), Some("  ")] {
            let c = super::command_with(none, "/bin/sen");
            assert_eq!(
                (c.get_program(), c.get_args().count()),
                ("/bin/sen".as_ref(), 0)
            );
        }
    }
}
