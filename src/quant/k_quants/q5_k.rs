//! PLACEHOLDER
pub fn dequantize_ref(_src: &[u8], _dst: &mut [f32]) { unimplemented!("placeholder") }
pub fn dequantize(_src: &[u8], _dst: &mut [f32]) { unimplemented!("placeholder") }
pub fn quantize_ref(_src: &[f32], _dst: &mut [u8]) { unimplemented!("placeholder") }
pub fn dot_ref(_row: &[u8], _x: &[f32]) -> f32 { unimplemented!("placeholder") }
pub fn dot(_row: &[u8], _x: &[f32]) -> f32 { unimplemented!("placeholder") }
