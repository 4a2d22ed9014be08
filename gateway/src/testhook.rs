//! Test hooks: failures on demand, for the gateway's own tests only.
//!
//! They are enabled by the hidden flag `--test-hook-dir DIR` (not in `--help`; never set it
//! in production) and driven by files the test creates in DIR:
//! - `panic-relay`: the next relay batch (of any canister) panics;
//! - `panic-poller`: the next poll (of any canister) panics;
//! - `panic-session-<client id>`: that client's session task panics on its next frame;
//! - `panic-accept`, `panic-admin`: the accept loop / the admin server panics (within 20 ms);
//! - `hold-restarts`: while it exists, the supervisor does not restart a failed worker, so a
//!   test can observe the degraded window (`/healthz` 503) before it removes the file.
//!
//! A `panic-*` file is removed when it fires, so each fires once. Without the flag every check
//! is a comparison with `None`.

use crate::config::Config;

/// Whether the one-shot hook `name` is set; consumes it.
pub fn fire(config: &Config, name: &str) -> bool {
    match &config.test_hook_dir {
        Some(dir) => std::fs::remove_file(dir.join(name)).is_ok(),
        None => false,
    }
}

/// Whether the hook `name` is set (not consumed).
pub fn holds(config: &Config, name: &str) -> bool {
    match &config.test_hook_dir {
        Some(dir) => dir.join(name).exists(),
        None => false,
    }
}
