//! Replays every committed corpus file (`fuzz/corpus/<target>/*`) and every seed through its
//! fuzz target, so what the fuzzer once explored stays tested by `cargo test`.

use std::path::Path;

fn replay(name: &str) {
    let target = ic_ws_fuzz::TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a known target");
    for seed in (target.seeds)() {
        (target.run)(&seed);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| (target.run)(&data));
        assert!(outcome.is_ok(), "{name}: {} fails", file.display());
    }
}

#[test]
fn frames_corpus() {
    replay("frames");
}

#[test]
fn verify_corpus() {
    replay("verify");
}

#[test]
fn session_corpus() {
    replay("session");
}

#[test]
fn canister_corpus() {
    replay("canister");
}

#[test]
fn meter_corpus() {
    replay("meter");
}

#[test]
fn canister_sig_corpus() {
    replay("canister_sig");
}
