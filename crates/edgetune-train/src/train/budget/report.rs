//! The budget breakdown as a text table (`edgetune plan`, and the refusal message of
//! [`super::Breakdown::check`]).

use std::fmt::Write as _;

use super::Breakdown;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// A size for messages in the largest unit it has at least one of: `5.50 GiB`, `13.53 MiB`,
/// `100.00 KiB`, `512 bytes` (a tiny budget is not shown as `0.00 GiB`).
pub fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else if b >= MIB {
        format!("{:.2} MiB", b / MIB)
    } else if b >= KIB {
        format!("{:.2} KiB", b / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// `12.34` (MiB, for the table's column).
fn mib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / MIB)
}

/// The table: weights by type, arena by category, adapters, optimizer state, overheads, the
/// total against the budget, and the suggestions when it does not fit.
pub fn report(b: &Breakdown) -> String {
    let mut s = String::new();
    let w = 44;
    let line = |s: &mut String, label: &str, bytes: u64, note: &str| {
        let _ = writeln!(s, "  {label:<w$} {:>11}  {note}", mib(bytes));
    };
    let _ = writeln!(s, "model   {}", b.model);
    let _ = writeln!(s, "config  {}", b.config);
    let _ = writeln!(s, "\n{:<w$}   {:>11}", "", "MiB");

    let wt = &b.weights;
    let how = if wt.locked {
        "locked in memory (--lock-weights)"
    } else if wt.streamed.as_ref().is_some_and(|st| st.head_chunks > 0) {
        "layers and head streamed, the rest resident"
    } else if wt.streamed.is_some() {
        "layers streamed, the rest resident"
    } else {
        "mapped, resident during a step"
    };
    let _ = writeln!(s, "weights ({how})");
    for t in &wt.by_type {
        let note = if t.resident_bytes == t.file_bytes {
            format!("{} tensors", t.tensors)
        } else {
            format!(
                "{} tensors, {} MiB in the file",
                t.tensors,
                mib(t.file_bytes)
            )
        };
        line(&mut s, &t.ty, t.resident_bytes, &note);
    }
    if let Some(g) = &wt.gathered {
        let _ = writeln!(
            s,
            "  ({}: read by pread, never mapped: a staging copy of {} of {} rows of {} B counts)",
            g.tensor, g.rows_per_step, g.n_rows, g.row_bytes
        );
    }
    if let Some(st) = &wt.streamed {
        line(
            &mut s,
            "layer staging (2 buffers of the largest layer)",
            st.staging_bytes,
            &format!(
                "{} layers, {} MiB in the file, read as they run",
                st.layers,
                mib(st.layer_file_bytes)
            ),
        );
        let io = st.io_s_per_step.map_or(String::new(), |t| {
            format!(", ≥ {t:.1} s of reads a step at the board's storage speed")
        });
        let head_reads = if st.head_chunks > 0 {
            format!(" + {} head chunk reads", st.head_reads_per_step)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  (streamed: {}; {} layer reads{head_reads} = {} MiB a step{io})",
            st.reason,
            st.reads_per_step,
            mib(st.read_bytes_per_step)
        );
        if let Some(why) = &st.head_reason {
            let _ = writeln!(
                s,
                "  (head of {} MiB streamed in {} chunks through the staging: {why})",
                mib(st.head_bytes),
                st.head_chunks
            );
        }
    }
    line(
        &mut s,
        "weights resident",
        wt.resident_bytes,
        &format!("of {} MiB in the file", mib(wt.file_bytes)),
    );

    let a = &b.arena;
    let _ = writeln!(s, "arena (one allocation)");
    for c in &a.categories {
        line(
            &mut s,
            &c.category,
            c.bytes,
            &format!("{} buffers", c.buffers),
        );
    }
    line(&mut s, "sum of buffers (no reuse)", a.sum_bytes, "");
    line(&mut s, "peak live (lower bound)", a.peak_live_bytes, "");
    line(
        &mut s,
        "arena",
        a.arena_bytes,
        &format!("{} buffers packed", a.buffers),
    );

    if let Some(bytes) = b.checkpoint_spill_bytes {
        let _ = writeln!(
            s,
            "  (layer inputs in a file in the run directory: {} MiB, written and read once a \
             micro-batch, not resident)",
            mib(bytes)
        );
    }
    if let Some(why) = &b.fused_update {
        let _ = writeln!(
            s,
            "  (gradients: one layer's at a time, each layer updated after its backward: {why})"
        );
    }

    let ad = &b.adapters;
    let _ = writeln!(s, "adapters");
    let note = if ad.disk_bytes > 0 {
        format!(
            "{} linears, {} parameters; one layer's resident, {} MiB on disk",
            ad.adapted,
            ad.n_params,
            mib(ad.disk_bytes)
        )
    } else {
        format!(
            "{} linears, {} parameters (gradients are in the arena)",
            ad.adapted, ad.n_params
        )
    };
    line(&mut s, "f32 master weights", ad.master_bytes, &note);
    if ad.extra_bytes > 0 {
        line(
            &mut s,
            "method extras",
            ad.extra_bytes,
            "base copies, frozen factors, importance buffers",
        );
    }

    let o = &b.optimizer;
    let what = if o.kind == "adamw" {
        format!(
            "AdamW, {}-bit state {}",
            o.state_bits,
            if o.place == "disk" {
                "on disk"
            } else {
                "in RAM"
            }
        )
    } else {
        "SGD".to_string()
    };
    let _ = writeln!(s, "optimizer state ({what})");
    let note = if o.disk_bytes > 0 {
        format!(
            "one tensor's page in use; {} MiB on disk",
            mib(o.disk_bytes)
        )
    } else if o.kind == "adamw" {
        format!("{} tensors 8-bit, {} f32", o.tensors_8bit, o.tensors_f32)
    } else if o.ram_bytes > 0 {
        "momentum buffers".to_string()
    } else {
        "no momentum: no state".to_string()
    };
    line(&mut s, "in RAM", o.ram_bytes, &note);

    let _ = writeln!(s, "runtime overheads");
    for ov in &b.overheads {
        line(&mut s, &ov.name, ov.bytes, &ov.note);
    }
    line(&mut s, "overheads", b.overhead_bytes, "");

    let _ = writeln!(s);
    line(&mut s, "TOTAL", b.total_bytes, &size(b.total_bytes));
    match b.budget_bytes {
        None => {
            let _ = writeln!(s, "  no budget given (--board NAME or --budget SIZE)");
        }
        Some(budget) => {
            line(&mut s, "budget", budget, &size(budget));
            if b.fits {
                let _ = writeln!(s, "  fits, {} to spare", size(budget - b.total_bytes));
            } else {
                let _ = writeln!(s, "  does NOT fit: {} over", size(b.total_bytes - budget));
            }
        }
    }
    if let Some(sg) = &b.suggestions {
        if sg.found.is_empty() {
            let _ = writeln!(s, "\n{}", sg.note.as_deref().unwrap_or("nothing fits"));
        } else {
            let _ = writeln!(
                s,
                "\nnearest configurations that fit ({} evaluated):",
                sg.evaluated
            );
            for (i, x) in sg.found.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  {}. {:<60} total {}",
                    i + 1,
                    x.flags,
                    size(x.total_bytes)
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_use_the_largest_unit_they_have_one_of() {
        assert_eq!(size(5_905_580_032), "5.50 GiB");
        assert_eq!(size(14_187_000), "13.53 MiB");
        assert_eq!(size(100 * 1024), "100.00 KiB");
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(0), "0 bytes");
    }
}
