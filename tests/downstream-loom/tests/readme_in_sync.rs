//! The loom model in freeq's guide (`freeq::guide::loom`, the markdown
//! file `src/guide/loom.md`) is `tests/readme.rs`, verbatim, so the guide
//! shows code that compiles and passes.

#[test]
fn guide_shows_the_tested_model() {
    let guide = include_str!("../../../src/guide/loom.md");
    let file = include_str!("readme.rs");
    let start = file
        .find("#![cfg(loom)]")
        .expect("the model starts at its cfg");
    let model = file[start..].trim_end();
    assert!(
        guide.contains(model),
        "src/guide/loom.md's loom model differs from tests/downstream-loom/tests/readme.rs"
    );
}
