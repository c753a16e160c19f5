//! The loom model in freeq's README is `tests/readme.rs`, verbatim, so the
//! README shows code that compiles and passes.

#[test]
fn readme_shows_the_tested_model() {
    let readme = include_str!("../../../README.md");
    let file = include_str!("readme.rs");
    let start = file
        .find("#![cfg(loom)]")
        .expect("the model starts at its cfg");
    let model = file[start..].trim_end();
    assert!(
        readme.contains(model),
        "README.md's loom model differs from tests/downstream-loom/tests/readme.rs"
    );
}
