//! Writes every target's seeds (built from the test vectors) into `<dir>/<target>/seed-<n>`:
//! `cargo run -p ic-ws-fuzz --example write_seeds -- fuzz/corpus` (see FUZZING.md).

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    for target in ic_ws_fuzz::TARGETS {
        let out = std::path::Path::new(&dir).join(target.name);
        std::fs::create_dir_all(&out)?;
        for (n, seed) in (target.seeds)().iter().enumerate() {
            std::fs::write(out.join(format!("seed-{n}")), seed)?;
        }
    }
    Ok(())
}
