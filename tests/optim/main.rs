//! The optim integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test optim MODULE::`.

mod eight_bit;
mod state;
