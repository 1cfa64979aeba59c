//! How far a latency percentile of one run could move by chance, so `loadgen
//! compare` can mark a ratio that is within noise.
//!
//! Two sources, and the interval is the wider of the two:
//! - **sampling**: the whole-run histogram holds n samples; a distribution-free
//!   95% interval for the q-quantile lies between the samples at ranks
//!   n·q ± 1.96·sqrt(n·q(1-q)) (binomial), unbounded above when that rank is
//!   past the last sample (a p99 over 50 samples says little);
//! - **run-to-run variation**: samples of one run are not independent (a
//!   scheduling hiccup on a busy machine delays many at once), which sampling
//!   alone ignores. The per-interval histograms (the `.hlog` intervals) are
//!   batches: the spread of the percentile across them, over sqrt(batches),
//!   is its standard error (the batch-means method), taken ± t(0.975, k-1).
//!
//! Both are widened by the histogram's precision (3 significant digits).

use hdrhistogram::Histogram;

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.96;
/// The histograms' relative precision (3 significant digits).
pub const PRECISION: f64 = 0.001;
/// Fewer usable batches than this and the batch-means term is left out.
const MIN_BATCHES: usize = 4;

/// Student's t at 0.975 for `df` degrees of freedom (1.96 past 30).
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.wrapping_sub(1)).copied().unwrap_or(Z95)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q.clamp(0.0, 1.0)) as f64 / 1000.0
}

/// The 95% interval (ms) around `v`, the q-quantile of `total`, whose
/// samples were recorded in the batches `intervals`.
pub fn percentile_interval(
    total: &Histogram<u64>,
    intervals: &[Histogram<u64>],
    q: f64,
    v: f64,
) -> (f64, f64) {
    let n = total.len() as f64;
    let spread = Z95 * (n * q * (1.0 - q)).sqrt();
    let lo_rank = (n * q - spread).floor();
    let hi_rank = (n * q + spread).ceil() + 1.0;
    let mut lo = if lo_rank < 1.0 {
        0.0
    } else {
        ms(total, lo_rank / n)
    };
    let mut hi = if hi_rank > n {
        f64::INFINITY
    } else {
        ms(total, hi_rank / n)
    };
    // Batches with at least one sample past the quantile say something about it.
    let batch: Vec<f64> = intervals
        .iter()
        .filter(|h| h.len() as f64 * (1.0 - q) >= 1.0)
        .map(|h| ms(h, q))
        .collect();
    if batch.len() >= MIN_BATCHES {
        let k = batch.len() as f64;
        let mean = batch.iter().sum::<f64>() / k;
        let var = batch.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0);
        let half = t975(batch.len() - 1) * (var / k).sqrt();
        lo = lo.min(v - half);
        hi = hi.max(v + half);
    }
    (
        lo.min(v).max(0.0) * (1.0 - PRECISION),
        hi.max(v) * (1.0 + PRECISION),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in values {
            h.record(*v).unwrap();
        }
        h
    }

    #[test]
    fn few_samples_leave_the_tail_unbounded_and_batches_widen_it() {
        let small = hist(&[1_000, 2_000, 3_000]);
        let (_, hi) = percentile_interval(&small, &[], 0.99, 3.0);
        assert!(hi.is_infinite());
        // 1,000 steady samples per batch, one batch with a hiccup at p99.
        let steady: Vec<u64> = (0..1_000).map(|i| 1_000 + i).collect();
        let mut spiky = steady.clone();
        spiky.extend([50_000; 20]);
        let batches: Vec<Histogram<u64>> = (0..9)
            .map(|_| hist(&steady))
            .chain(std::iter::once(hist(&spiky)))
            .collect();
        let mut total = hist(&[]);
        for b in &batches {
            total.add(b).unwrap();
        }
        let v = ms(&total, 0.99);
        let (lo_s, hi_s) = percentile_interval(&total, &batches[..1], 0.99, v);
        let (lo_b, hi_b) = percentile_interval(&total, &batches, 0.99, v);
        assert!(
            hi_b - lo_b > 5.0 * (hi_s - lo_s),
            "{lo_s}-{hi_s} vs {lo_b}-{hi_b}"
        );
    }
}
