//! loom models (placeholder until written).
#![cfg(loom)]
