//! Builds the workspace's canister crates to wasm for tests, benchmarks and demos.
//!
//! Every end-to-end test of the project needs canister wasm. [`build_canister`] runs
//!
//! ```text
//! cargo build --target wasm32-unknown-unknown --profile canister -p <package>
//!     --target-dir <workspace>/target/canisters
//! ```
//!
//! from the workspace root and returns the path of the `.wasm` file.
//!
//! Why this shape:
//! - The build uses its **own target directory** (`<workspace>/target/canisters`): a test runs
//!   while the outer `cargo test` may still hold the lock of the normal target directory, and a
//!   nested cargo on the same directory would wait for it forever (or rebuild host artefacts
//!   with different flags). Cargo's own file lock on `target/canisters` serialises concurrent
//!   test *processes*; within one process a mutex makes concurrent tests share one build.
//! - It honours the `CARGO` environment variable (set by cargo for the processes it runs), so
//!   the same toolchain that runs the tests builds the canisters.
//! - Results are cached per process: the second call for a package returns at once. Cargo's
//!   incremental build makes a call in a new process cheap when nothing changed (< 1 s).
//! - The workspace root is found by walking up from `CARGO_MANIFEST_DIR` (of the running test,
//!   else of this crate) to the first `Cargo.toml` that has a `[workspace]` table.
//!
//! ```no_run
//! let wasm_path = ic_ws_replica::wasm_build::build_canister("ic-ws-replica-test-canister")?;
//! let wasm = std::fs::read(wasm_path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Why a canister could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WasmBuildError {
    /// No `Cargo.toml` with a `[workspace]` table above `CARGO_MANIFEST_DIR`.
    #[error("cannot find the cargo workspace root above {0}")]
    NoWorkspace(PathBuf),
    /// Cargo could not be started.
    #[error("cannot run {cargo:?}: {source}")]
    Spawn {
        /// The cargo executable that was tried.
        cargo: OsString,
        /// The OS error.
        source: std::io::Error,
    },
    /// Cargo ran and failed; `stderr` holds the tail of its output.
    #[error("building canister `{package}` failed ({status}):\n{stderr}")]
    BuildFailed {
        /// Package name.
        package: String,
        /// Exit status of cargo.
        status: std::process::ExitStatus,
        /// Last lines of cargo's stderr.
        stderr: String,
    },
    /// Cargo succeeded but the expected `.wasm` file is not there (not a `cdylib`?).
    #[error("cargo built `{package}` but {path} does not exist (is the crate a cdylib?)")]
    MissingOutput {
        /// Package name.
        package: String,
        /// Path that was expected.
        path: PathBuf,
    },
    /// The wasm file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path of the wasm file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Target triple canisters are built for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// Cargo profile canisters are built with (defined in the workspace manifest).
pub const CANISTER_PROFILE: &str = "canister";

fn cache() -> &'static Mutex<HashMap<String, PathBuf>> {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Builds workspace package `package` (a `cdylib` canister crate) to wasm and returns the path of
/// the `.wasm` file. Cached per process; see the module documentation.
pub fn build_canister(package: &str) -> Result<PathBuf, WasmBuildError> {
    // Holding the lock while building makes concurrent tests of one process wait for a single
    // build instead of starting several cargo processes that would queue on cargo's lock anyway.
    let mut cache = cache()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = cache.get(package) {
        return Ok(path.clone());
    }
    let root = workspace_root()?;
    // Whoever builds canisters from source (tests, benchmarks) also keeps their compiled
    // modules beside them, for the next process (`engine::use_module_cache`).
    crate::engine::use_module_cache(canister_target_dir(&root).join("replica-modules"));
    let path = run_cargo(&root, package)?;
    cache.insert(package.to_string(), path.clone());
    Ok(path)
}

/// [`build_canister`], then reads the wasm bytes.
pub fn build_canister_wasm(package: &str) -> Result<Vec<u8>, WasmBuildError> {
    let path = build_canister(package)?;
    std::fs::read(&path).map_err(|source| WasmBuildError::Read { path, source })
}

/// The workspace root: the first directory, walking up from `CARGO_MANIFEST_DIR` (runtime value,
/// else this crate's), whose `Cargo.toml` has a `[workspace]` table.
pub fn workspace_root() -> Result<PathBuf, WasmBuildError> {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    find_workspace_root(&start).ok_or(WasmBuildError::NoWorkspace(start))
}

fn find_workspace_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        manifest
            .lines()
            .any(|line| line.trim() == "[workspace]")
            .then(|| dir.to_path_buf())
    })
}

/// Directory canister builds go to: `$IC_WS_CANISTER_TARGET_DIR` if set (CI points it at its
/// cache outside the clone), else `<workspace>/target/canisters`.
pub fn canister_target_dir(workspace_root: &Path) -> PathBuf {
    match std::env::var_os("IC_WS_CANISTER_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root.join(dir),
        None => workspace_root.join("target").join("canisters"),
    }
}

fn run_cargo(root: &Path, package: &str) -> Result<PathBuf, WasmBuildError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let target_dir = canister_target_dir(root);
    let output = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--target",
            WASM_TARGET,
            "--profile",
            CANISTER_PROFILE,
            "-p",
            package,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer cargo's settings are for host builds; the flag above wins over this
        // variable anyway, removing it just makes that obvious.
        .env_remove("CARGO_TARGET_DIR")
        // Built as `cargo build` builds the wasm that ships: cargo hashes a workspace rustc
        // wrapper (scripts/test's clippy wrapper, which the tests inherit) into the members'
        // symbol names, and a wasm built through one has other bytes (same size).
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .map_err(|source| WasmBuildError::Spawn {
            cargo: cargo.clone(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        return Err(WasmBuildError::BuildFailed {
            package: package.to_string(),
            status: output.status,
            stderr: tail,
        });
    }
    let path = target_dir
        .join(WASM_TARGET)
        .join(CANISTER_PROFILE)
        .join(format!("{}.wasm", package.replace('-', "_")));
    if !path.is_file() {
        return Err(WasmBuildError::MissingOutput {
            package: package.to_string(),
            path,
        });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_workspace_root() {
        let root = find_workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")));
        let root = root.expect("the replica crate lives in a workspace");
        assert!(root.join("replica").join("Cargo.toml").is_file());
        assert_ne!(root, Path::new(env!("CARGO_MANIFEST_DIR")));
    }

    #[test]
    fn no_workspace_above_filesystem_root() {
        assert_eq!(find_workspace_root(Path::new("/")), None);
    }
}
