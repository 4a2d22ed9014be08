//! The suite's lint gate: `scripts/test` builds the tests with `scripts/lint-rustc` as cargo's
//! workspace rustc wrapper (clippy's lints run as the crates compile) and fails its "cargo
//! clippy" step when `scripts/lint-rustc --report` finds lints in the build's output. If the
//! wrapper stopped linting, nothing else would notice: CI would pass with lints in the code.
//! Here it builds a throwaway crate with a lint and a compiler warning in it, through the
//! wrapper, in the ways the suite's builds use it.

use ic_ws_e2e::process::temp_dir;
use ic_ws_replica::wasm_build::workspace_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    workspace_root().expect("the repository")
}

/// The toolchain of `rust-toolchain.toml`, for the cargo started outside the repository (where
/// rustup would otherwise pick its default toolchain, maybe one without clippy).
fn toolchain() -> String {
    let file = std::fs::read_to_string(repo().join("rust-toolchain.toml")).expect("toolchain");
    let line = file
        .lines()
        .find(|l| l.trim_start().starts_with("channel"))
        .expect("a channel line");
    line.split('"')
        .nth(1)
        .expect("a quoted channel")
        .to_string()
}

/// A crate whose code has one clippy lint (`clone_on_copy`) and one rustc warning (an unused
/// variable).
fn probe_crate(root: &Path) -> PathBuf {
    let dir = root.join("probe");
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"lint-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .expect("write manifest");
    std::fs::write(
        dir.join("src/lib.rs"),
        "pub fn twice(x: u8) -> u8 {\n    let unused = 1;\n    x.clone() * 2\n}\n",
    )
    .expect("write lib.rs");
    dir
}

struct Build<'a> {
    lint_root: Option<&'a Path>,
    lint_skip: Option<&'a Path>,
    target: Option<&'a str>,
}

/// Builds the probe through the wrapper (in a build directory of its own: the wrapper's
/// settings are not part of cargo's fingerprint) and returns cargo's output and what
/// `--report` says about it.
fn build(root: &Path, name: &str, b: Build<'_>) -> (String, Output) {
    let krate = probe_crate(root);
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&krate)
        .args(["build", "--color", "never"])
        .env("CARGO_TARGET_DIR", root.join(format!("target-{name}")))
        .env("RUSTC_WORKSPACE_WRAPPER", repo().join("scripts/lint-rustc"))
        .env_remove("IC_WS_LINT_ROOT")
        .env_remove("IC_WS_LINT_SKIP")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER");
    if std::env::var_os("RUSTUP_TOOLCHAIN").is_none() {
        cmd.env("RUSTUP_TOOLCHAIN", toolchain());
    }
    if let Some(dir) = b.lint_root {
        cmd.env("IC_WS_LINT_ROOT", dir);
    }
    if let Some(dir) = b.lint_skip {
        cmd.env("IC_WS_LINT_SKIP", dir);
    }
    if let Some(target) = b.target {
        cmd.args(["--target", target]);
    }
    let out = cmd.output().expect("run cargo");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{name}: the probe did not build:\n{log}"
    );
    let log_file = root.join(format!("{name}.log"));
    std::fs::write(&log_file, &log).expect("write log");
    let report = Command::new(repo().join("scripts/lint-rustc"))
        .arg("--report")
        .arg(&log_file)
        .output()
        .expect("run --report");
    (log, report)
}

#[test]
fn the_wrapper_lints_the_repositorys_host_builds_and_the_report_fails_on_them() {
    let tmp = temp_dir("lint-gate-linted").expect("temp dir");
    let root = tmp.as_path();
    let (log, report) = build(
        root,
        "linted",
        Build {
            lint_root: Some(root),
            lint_skip: None,
            target: None,
        },
    );
    assert!(
        log.contains("clippy::clone_on_copy") || log.contains("using `clone` on type `u8`"),
        "clippy did not run through the wrapper:\n{log}"
    );
    assert!(log.contains("unused variable"), "no rustc warning:\n{log}");
    assert!(
        !report.status.success(),
        "--report passed a build with lints:\n{log}"
    );
    let said = String::from_utf8_lossy(&report.stdout);
    assert!(
        said.contains("`lint-probe` (lib) generated 2 warnings"),
        "--report did not name the crate: {said}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn outside_the_root_under_the_skipped_directory_and_for_wasm_it_is_plain_rustc() {
    let tmp = temp_dir("lint-gate-plain").expect("temp dir");
    let root = tmp.as_path();
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let cases = [
        (
            "outside",
            Build {
                lint_root: Some(&elsewhere),
                lint_skip: None,
                target: None,
            },
        ),
        (
            "unset",
            Build {
                lint_root: None,
                lint_skip: None,
                target: None,
            },
        ),
        (
            "skipped",
            Build {
                lint_root: Some(root),
                lint_skip: Some(root),
                target: None,
            },
        ),
        (
            "wasm",
            Build {
                lint_root: Some(root),
                lint_skip: None,
                target: Some("wasm32-unknown-unknown"),
            },
        ),
    ];
    for (name, b) in cases {
        let (log, report) = build(root, name, b);
        assert!(
            !log.contains("clone_on_copy") && !log.contains("using `clone`"),
            "{name}: clippy ran:\n{log}"
        );
        // rustc's own warning is there (plain rustc ran) and --report counts it: in the suite
        // these builds are the canisters' wasm and trybuild's projects, whose warnings the
        // report never sees (they are not in the test build's output).
        assert!(
            log.contains("unused variable"),
            "{name}: no rustc run?\n{log}"
        );
        assert!(
            !report.status.success(),
            "{name}: --report missed a warning"
        );
    }
    let _ = std::fs::remove_dir_all(root);
}
