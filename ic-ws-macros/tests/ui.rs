//! Compile-time behaviour of the attributes (trybuild): accepted handler shapes in
//! `ui/pass` (compiled and run), rejected ones in `ui/fail` with their exact diagnostics in
//! the `.stderr` files (regenerate with `TRYBUILD=overwrite cargo test -p ic-ws-macros --test ui`
//! and review the diff).

#[test]
fn ui() {
    // trybuild builds its cases and every dev-dependency in a project of its own (no profile
    // settings of ours apply there). Without debug info that cold build took 99 s instead of
    // 109 s here and a third of the disk; the cases' diagnostics do not depend on it. The
    // variable reaches only the cargo that trybuild starts (this test binary is already built).
    std::env::set_var("CARGO_PROFILE_DEV_DEBUG", "0");
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
