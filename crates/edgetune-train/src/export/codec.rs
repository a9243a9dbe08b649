//! Element encodings of adapter tensors: f32 values to and from the bytes of a ggml type
//! (GGUF) or a safetensors dtype (our format, PEFT), through the quant table's reference
//! encoders (F16 and BF16 round to nearest even, as torch and ggml do).

use safetensors::Dtype;

use edgetune_core::quant::{self, GgmlType};
use edgetune_core::{Error, Result};

/// `src` encoded as `ty` (whole blocks: the caller checked the row length).
pub fn encode(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let n = ty.bytes_for(src.len() as u64).ok_or_else(|| {
        Error::Invalid(format!(
            "{} values are not a whole number of {ty} blocks ({} values each)",
            src.len(),
            ty.block_elems()
        ))
    })?;
    let mut out = vec![0u8; n as usize];
    quant::quantize(ty, src, &mut out)?;
    Ok(out)
}

/// `bytes` of type `ty` decoded into `n` f32 values.
pub fn decode(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; n];
    quant::dequantize(ty, bytes, &mut out)?;
    Ok(out)
}

/// The safetensors dtype holding the same bits as `ty`, for the float types.
pub fn safetensors_dtype(ty: GgmlType) -> Option<Dtype> {
    match ty {
        GgmlType::F32 => Some(Dtype::F32),
        GgmlType::F16 => Some(Dtype::F16),
        GgmlType::BF16 => Some(Dtype::BF16),
        _ => None,
    }
}

/// The values of a safetensors tensor of `n` elements (F32, F16, BF16 exactly; F64 rounded to
/// nearest); any other dtype is `None` (the caller names file and tensor).
pub fn decode_safetensors(dtype: Dtype, bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    let ty = match dtype {
        Dtype::F32 => GgmlType::F32,
        Dtype::F16 => GgmlType::F16,
        Dtype::BF16 => GgmlType::BF16,
        Dtype::F64 => {
            if bytes.len() != 8 * n {
                return None;
            }
            let v = bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect();
            return Some(v);
        }
        _ => return None,
    };
    if ty.bytes_for(n as u64) != Some(bytes.len() as u64) {
        return None;
    }
    decode(ty, bytes, n).ok()
}

/// The bytes of a tensor file (safetensors), mapped read-only rather than read: an 8B adapter
/// is then held once, as the f32 values it is decoded into, not twice.
pub fn map_file(path: &std::path::Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        return Err(Error::Gguf {
            path: path.to_path_buf(),
            offset: 0,
            what: format!("{len} bytes: too short for a safetensors file"),
        });
    }
    // SAFETY: the map is only read as `&[u8]` and the safetensors parser bounds-checks
    // everything, so any contents are fine. As for GGUF files (`GgufFile::open`), we assume no
    // other process truncates the file while it is mapped; edgetune itself replaces files by
    // rename, which leaves an existing map on the old inode.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// A safetensors error on `path` as a crate error with a readable message (the crate's own
/// `Display` prints its `Debug` form, `IoError(Os { … })`): an I/O error keeps its
/// [`Error::Io`] form with the path, everything else says what is wrong.
pub fn safetensors_error(path: &std::path::Path, e: safetensors::SafeTensorError) -> Error {
    match e {
        safetensors::SafeTensorError::IoError(io) => Error::io(path, io),
        other => Error::Invalid(format!(
            "{}: safetensors: {}",
            path.display(),
            safetensors_what(other)
        )),
    }
}

/// What a safetensors error means, in words (the crate's `Display` is its `Debug` form).
pub fn safetensors_what(e: safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::IoError(io) => io.to_string(),
        E::InvalidHeader => "the header is not valid UTF-8".to_string(),
        E::InvalidHeaderStart => "the header does not start with `{`".to_string(),
        E::InvalidHeaderDeserialization => "the header is not valid JSON".to_string(),
        E::HeaderTooLarge => "the header is larger than 100 MB".to_string(),
        E::HeaderTooSmall => "the file is shorter than its 8-byte header length".to_string(),
        E::InvalidHeaderLength => "the header length is past the end of the file".to_string(),
        E::TensorNotFound(name) => format!("tensor `{name}` is not in the file"),
        E::TensorInvalidInfo => "a tensor's shape, dtype and offsets do not agree".to_string(),
        E::InvalidOffset(name) => format!("the offsets of tensor `{name}` are invalid"),
        E::JsonError(j) => format!("the header's JSON: {j}"),
        E::InvalidTensorView(dtype, shape, len) => {
            format!("{len} bytes do not hold a {dtype:?} tensor of shape {shape:?}")
        }
        E::MetadataIncompleteBuffer => {
            "the tensors do not cover the data section exactly".to_string()
        }
        E::ValidationOverflow => "a tensor's shape overflows".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_encodings_round_trip_and_match_hand_values() {
        let v = [1.0f32, -2.5, 0.1, 65504.0];
        let f16 = encode(GgmlType::F16, &v).unwrap();
        // 1.0 = 0x3C00, -2.5 = 0xC100 in IEEE half.
        assert_eq!(&f16[..4], &[0x00, 0x3C, 0x00, 0xC1]);
        let back = decode_safetensors(Dtype::F16, &f16, 4).unwrap();
        assert_eq!(back[0], 1.0);
        assert_eq!(back[1], -2.5);
        assert!((back[2] - 0.1).abs() < 1e-4);
        // bf16 of 1.0 is 0x3F80.
        let bf = encode(GgmlType::BF16, &v).unwrap();
        assert_eq!(&bf[..2], &[0x80, 0x3F]);
        let f32b = encode(GgmlType::F32, &v).unwrap();
        assert_eq!(decode_safetensors(Dtype::F32, &f32b, 4).unwrap(), v);
        let f64b: Vec<u8> = v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect();
        assert_eq!(decode_safetensors(Dtype::F64, &f64b, 4).unwrap(), v);
        assert!(decode_safetensors(Dtype::I32, &f32b, 4).is_none());
        assert!(decode_safetensors(Dtype::F32, &f32b, 3).is_none());
    }

    #[test]
    fn encode_refuses_partial_blocks() {
        assert!(encode(GgmlType::Q8_0, &[0.0; 16]).is_err());
        assert_eq!(encode(GgmlType::Q8_0, &[0.0; 32]).unwrap().len(), 34);
    }
}
