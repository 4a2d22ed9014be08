//! Compile-time behaviour of the attributes (trybuild): accepted handler shapes in
//! `ui/pass` (compiled and run), rejected ones in `ui/fail` with their exact diagnostics in
//! the `.stderr` files (regenerate with `TRYBUILD=overwrite cargo test -p ic-ws-macros --test ui`
//! and review the diff).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
