//! The quantization integration tests in one binary: ICQ and `edgetune quantize`, and the
//! quantized products against f64, one module per former `tests/quant_*.rs` file, so fewer
//! binaries link. Run one with `cargo test --test quant MODULE::`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../python_support/mod.rs"]
mod python_support;

mod icq;
mod matmul;
