//! Element-wise ops on the residual stream: `x += y`.

use rayon::prelude::*;

use crate::Result;
use crate::backend::check_len;

/// Below this many values one thread is faster than splitting the work.
const PAR_MIN: usize = 1 << 15;
/// Values per rayon task.
const CHUNK: usize = 1 << 13;

/// `x += y` (same length).
pub fn add_assign(x: &mut [f32], y: &[f32]) -> Result<()> {
    check_len("add_assign", "y", y.len(), 1, x.len())?;
    if x.len() < PAR_MIN {
        add_chunk(x, y);
    } else {
        x.par_chunks_mut(CHUNK)
            .zip(y.par_chunks(CHUNK))
            .for_each(|(a, b)| add_chunk(a, b));
    }
    Ok(())
}

fn add_chunk(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Scalar specification of [`add_assign`].
pub fn add_assign_ref(x: &mut [f32], y: &[f32]) -> Result<()> {
    check_len("add_assign", "y", y.len(), 1, x.len())?;
    for i in 0..x.len() {
        x[i] += y[i];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::random;

    #[test]
    fn matches_ref_serial_and_parallel() {
        // One addition per element in both: the results are bit-identical.
        for n in [0, 1, 7, PAR_MIN + 3 * CHUNK + 5] {
            let y = random(n, 2.0, 1);
            let mut a = random(n, 2.0, 2);
            let mut b = a.clone();
            add_assign(&mut a, &y).unwrap();
            add_assign_ref(&mut b, &y).unwrap();
            assert_eq!(a, b, "n = {n}");
        }
        assert!(add_assign(&mut [1.0, 2.0], &[3.0, 4.0, 5.0]).is_err());
        let mut x = [1.0f32, -2.0];
        add_assign(&mut x, &[0.5, 0.25]).unwrap();
        assert_eq!(x, [1.5, -1.75]);
    }
}
