//! Empty: the test is `tests/threadless.rs` of freeq.
