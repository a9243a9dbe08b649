//! NumPy `.npy` (format 1.0) files of little-endian f32: streaming writer and a small reader.
//!
//! `edgetune inspect --dequantize` and `perplexity --dump-logits` write these so other tools
//! (numpy, gguf-py) can compare with ours. The writer streams: a 2 GiB dequantized embedding is
//! written row by row, never held whole.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The header of a C-order little-endian f32 array of `shape`, padded to a multiple of 64 bytes
/// (numpy's own alignment, so the data can be mapped aligned).
fn header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    // A 1-tuple needs its trailing comma: `(5,)`.
    let shape_text = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // magic (6) + version (2) + header length (2) + dict + '\n' must be a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(64) - unpadded,
    ));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes an f32 array of a fixed shape in row-major order, in as many pieces as the caller likes.
pub struct NpyWriter {
    path: PathBuf,
    out: BufWriter<File>,
    remaining: u64,
}

impl NpyWriter {
    /// Creates `path` and writes the header for `shape`.
    pub fn create(path: impl AsRef<Path>, shape: &[usize]) -> Result<NpyWriter> {
        let path = path.as_ref().to_path_buf();
        let total = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| {
                Error::Invalid(format!("{}: npy shape {shape:?} overflows", path.display()))
            })?;
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header(shape))
            .map_err(|e| Error::io(&path, e))?;
        Ok(NpyWriter {
            path,
            out,
            remaining: total,
        })
    }

    /// Appends the next `values` in row-major order.
    pub fn write(&mut self, values: &[f32]) -> Result<()> {
        if values.len() as u64 > self.remaining {
            return Err(Error::Invalid(format!(
                "{}: {} more values written than the shape holds",
                self.path.display(),
                values.len() as u64 - self.remaining
            )));
        }
        self.remaining -= values.len() as u64;
        self.out
            .write_all(bytemuck::cast_slice(values))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes the file; fails if fewer values were written than the shape holds.
    pub fn finish(mut self) -> Result<()> {
        if self.remaining != 0 {
            return Err(Error::Invalid(format!(
                "{}: {} values missing for the declared shape",
                self.path.display(),
                self.remaining
            )));
        }
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Writes a whole array at once.
pub fn write_f32(path: impl AsRef<Path>, shape: &[usize], values: &[f32]) -> Result<()> {
    let mut w = NpyWriter::create(path, shape)?;
    w.write(values)?;
    w.finish()
}

/// Reads a C-order little-endian f32 `.npy` file (format 1.0 or 2.0): `(shape, values)`.
pub fn read_f32(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f32>)> {
    let path = path.as_ref();
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    let bad =
        |what: String| Error::Invalid(format!("{}: not an f32 .npy file: {what}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported version {v}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(format!("header of {header_len} bytes runs past the end")))?;
    let dict =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not UTF-8".into()))?;
    if !dict.contains("'descr': '<f4'") || !dict.contains("'fortran_order': False") {
        return Err(bad(format!(
            "only C-order '<f4' arrays are read, header is {}",
            dict.trim()
        )));
    }
    let shape_text = dict
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(|s| s.trim().trim_start_matches('('))
        .ok_or_else(|| bad("no shape".into()))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("bad shape entry `{s}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let data = &bytes[end..];
    if count.and_then(|c| c.checked_mul(4)) != Some(data.len()) {
        return Err(bad(format!(
            "shape {shape:?} does not match {} data bytes",
            data.len()
        )));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_64_and_round_trips() {
        for shape in [vec![5usize], vec![3, 4], vec![0, 7], vec![2, 3, 4]] {
            let h = header(&shape);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            assert_eq!(*h.last().unwrap(), b'\n');
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("a.npy");
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut w = NpyWriter::create(&p, &shape).unwrap();
            let (a, b) = values.split_at(n / 2);
            w.write(a).unwrap();
            w.write(b).unwrap();
            w.finish().unwrap();
            let (s, v) = read_f32(&p).unwrap();
            assert_eq!(s, shape);
            assert_eq!(v, values);
        }
    }

    #[test]
    fn wrong_counts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.npy");
        let mut w = NpyWriter::create(&p, &[2, 2]).unwrap();
        assert!(w.write(&[0.0; 5]).is_err());
        w.write(&[0.0; 3]).unwrap();
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("1 values missing"), "{err}");
    }
}
