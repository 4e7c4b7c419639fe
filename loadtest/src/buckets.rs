//! One Prometheus histogram as its cumulative bucket counts (`_bucket{le=..}`),
//! the difference of two scrapes of it, and its quantiles estimated the way
//! Prometheus's `histogram_quantile` does.
//!
//! Owns: the arithmetic only. Where the counts come from is `scrape`'s
//! business, how an estimate is printed `stats`'.
//!
//! # How a quantile is estimated
//!
//! A histogram only knows how many observations fell at or below each bound,
//! so a quantile is an estimate. [`Buckets::quantile`] follows Prometheus's
//! `histogram_quantile` (promql `bucketQuantile`):
//!
//! - the rank is `q` x the number of observations (the `+Inf` bucket's
//!   count); the first bucket whose cumulative count reaches it holds the
//!   quantile;
//! - inside that bucket the observations are taken as spread evenly from its
//!   lower bound (the bound before it; 0 for the first bucket) to its upper
//!   bound, so the estimate is interpolated linearly: a rank at the top of a
//!   bucket gives the bucket's upper bound;
//! - a first bucket whose upper bound is 0 or less has no lower bound to
//!   interpolate from: its upper bound is the estimate;
//! - a rank in the `+Inf` bucket has no upper bound to interpolate to:
//!   Prometheus returns the largest finite bound, and so do we, as
//!   [`Estimate::Above`], so that a report can say "more than" it;
//! - with no observations there is no estimate ([`Estimate::Empty`];
//!   Prometheus: NaN);
//! - counts that go down from one bound to the next (not cumulative, as a
//!   torn read can give) are raised to the count before, as Prometheus does.
//!
//! The estimate is only as fine as the bucket layout: with bounds 25 and
//! 50 us, a p99 of "37.5 us" means "between 25 and 50 us, about the middle
//! if the observations there are spread evenly".

use std::fmt;

/// A histogram's bounds (ascending, the last `+Inf`) and the cumulative
/// count of observations at or below each.
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    /// Upper bounds (`le`), ascending; at least one finite, the last `+Inf`.
    bounds: Vec<f64>,
    /// Observations at or below the bound of the same index.
    counts: Vec<u64>,
}

/// A quantile of a histogram, in the unit of its bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Estimate {
    /// The histogram holds no observations.
    Empty,
    /// Interpolated inside a finite bucket.
    Within(f64),
    /// In the `+Inf` bucket: more than this, the largest finite bound.
    Above(f64),
}

/// Why counts do not make a histogram, or two histograms cannot be combined.
#[derive(Clone, Debug, PartialEq)]
pub enum BucketsError {
    /// No `le="+Inf"` bucket, so the number of observations is unknown.
    NoInfBucket,
    /// Only the `+Inf` bucket: nothing to estimate within.
    NoFiniteBound,
    /// A bound that is NaN, or appears twice.
    BadBound(f64),
    /// Two histograms with different bounds (the server changed its layout).
    BoundsDiffer,
    /// A count lower in the later scrape: the counters were reset (the
    /// server restarted) between the two.
    WentDown { le: f64, before: u64, after: u64 },
}

impl fmt::Display for BucketsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketsError::NoInfBucket => write!(f, "no le=\"+Inf\" bucket"),
            BucketsError::NoFiniteBound => write!(f, "no bucket but le=\"+Inf\""),
            BucketsError::BadBound(le) => write!(f, "bucket bound le=\"{le}\" is NaN or repeated"),
            BucketsError::BoundsDiffer => write!(f, "the bucket bounds differ between the scrapes"),
            BucketsError::WentDown { le, before, after } => write!(
                f,
                "bucket le=\"{le}\" went down from {before} to {after}: the counters were \
                 reset between the scrapes (did the server restart?)"
            ),
        }
    }
}

impl Buckets {
    /// From `(le, cumulative count)` pairs in any order.
    pub fn new(mut pairs: Vec<(f64, u64)>) -> Result<Buckets, BucketsError> {
        if let Some(&(le, _)) = pairs.iter().find(|(le, _)| le.is_nan()) {
            return Err(BucketsError::BadBound(le));
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(BucketsError::BadBound(w[0].0));
        }
        match pairs.last() {
            Some(&(le, _)) if le == f64::INFINITY => {}
            _ => return Err(BucketsError::NoInfBucket),
        }
        if pairs.len() < 2 {
            return Err(BucketsError::NoFiniteBound);
        }
        let (bounds, counts) = pairs.into_iter().unzip();
        Ok(Buckets { bounds, counts })
    }

    /// Observations in all: the `+Inf` bucket's count.
    pub fn count(&self) -> u64 {
        self.counts.last().copied().unwrap_or(0)
    }

    /// The observations made after `before` was scraped and up to `self`.
    pub fn since(&self, before: &Buckets) -> Result<Buckets, BucketsError> {
        if self.bounds != before.bounds {
            return Err(BucketsError::BoundsDiffer);
        }
        let counts = self
            .counts
            .iter()
            .zip(&before.counts)
            .zip(&self.bounds)
            .map(|((&after, &before), &le)| {
                after
                    .checked_sub(before)
                    .ok_or(BucketsError::WentDown { le, before, after })
            })
            .collect::<Result<_, _>>()?;
        Ok(Buckets {
            bounds: self.bounds.clone(),
            counts,
        })
    }

    /// Adds `other`'s observations (another label's histogram of the same
    /// family) to these.
    pub fn add(&mut self, other: &Buckets) -> Result<(), BucketsError> {
        if self.bounds != other.bounds {
            return Err(BucketsError::BoundsDiffer);
        }
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c = c.saturating_add(*o);
        }
        Ok(())
    }

    /// The `q` quantile (0 < q <= 1) as `histogram_quantile` estimates it
    /// (see the module doc).
    pub fn quantile(&self, q: f64) -> Estimate {
        debug_assert!(q > 0.0 && q <= 1.0, "quantile {q} out of (0, 1]");
        // Cumulative counts that go down are raised to the one before.
        let counts: Vec<u64> = self
            .counts
            .iter()
            .scan(0u64, |max, &c| {
                *max = (*max).max(c);
                Some(*max)
            })
            .collect();
        let total = counts.last().copied().unwrap_or(0);
        if total == 0 {
            return Estimate::Empty;
        }
        let rank = q * total as f64;
        let inf = self.bounds.len() - 1;
        let b = counts[..inf]
            .iter()
            .position(|&c| c as f64 >= rank)
            .unwrap_or(inf);
        if b == inf {
            return Estimate::Above(self.bounds[inf - 1]);
        }
        if b == 0 && self.bounds[0] <= 0.0 {
            return Estimate::Within(self.bounds[0]);
        }
        let (start, below) = match b {
            0 => (0.0, 0),
            _ => (self.bounds[b - 1], counts[b - 1]),
        };
        let end = self.bounds[b];
        // counts[b] >= rank > below, so the bucket holds at least one.
        let in_bucket = (counts[b] - below) as f64;
        Estimate::Within(start + (end - start) * ((rank - below as f64) / in_bucket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    /// The server's command-duration bounds (metrics spec), in seconds.
    const COMMAND_BOUNDS: [f64; 19] = [
        0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, INF,
    ];

    fn buckets(bounds: &[f64], counts: &[u64]) -> Buckets {
        Buckets::new(bounds.iter().copied().zip(counts.iter().copied()).collect()).unwrap()
    }

    fn within(e: Estimate) -> f64 {
        match e {
            Estimate::Within(v) => v,
            other => panic!("expected an estimate within a bucket, got {other:?}"),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-9)
    }

    #[test]
    fn no_observations_give_no_estimate() {
        let h = buckets(&COMMAND_BOUNDS, &[0; 19]);
        assert_eq!(h.count(), 0);
        assert_eq!(h.quantile(0.5), Estimate::Empty);
        assert_eq!(h.quantile(0.99), Estimate::Empty);
    }

    #[test]
    fn all_in_the_first_bucket_interpolate_from_zero() {
        let h = buckets(&COMMAND_BOUNDS, &[10; 19]);
        // rank 5 of 10 in [0, 5 us]: half way.
        assert!(close(within(h.quantile(0.5)), 0.0000025));
        assert!(close(within(h.quantile(0.99)), 0.00000495));
        // The top of a bucket is its upper bound.
        assert!(close(within(h.quantile(1.0)), 0.000005));
    }

    #[test]
    fn interpolates_linearly_inside_the_bucket() {
        let h = buckets(&[1.0, 2.0, 4.0, INF], &[10, 60, 100, 100]);
        // p50: rank 50, bucket (1, 2] holds ranks 11..60: 1 + 1 x 40/50.
        assert!(close(within(h.quantile(0.5)), 1.8));
        // p99: rank 99, bucket (2, 4] holds ranks 61..100: 2 + 2 x 39/40.
        assert!(close(within(h.quantile(0.99)), 3.95));
        // A rank exactly at a bucket's top: that bucket's upper bound.
        let h = buckets(&[1.0, 2.0, INF], &[50, 100, 100]);
        assert!(close(within(h.quantile(0.5)), 1.0));
    }

    #[test]
    fn a_quantile_in_the_inf_bucket_is_above_the_largest_bound() {
        let mut counts = [0u64; 19];
        counts[18] = 10;
        let h = buckets(&COMMAND_BOUNDS, &counts);
        assert_eq!(h.quantile(0.5), Estimate::Above(2.5));
        // 99 of 100 below 1 s: p50 is within, p99 (rank 99) too, p99.5 above.
        let mut counts = [0u64; 19];
        counts[16..18].fill(99);
        counts[18] = 100;
        let h = buckets(&COMMAND_BOUNDS, &counts);
        assert!(within(h.quantile(0.5)) > 0.5);
        assert!(close(within(h.quantile(0.99)), 1.0));
        assert_eq!(h.quantile(0.995), Estimate::Above(2.5));
    }

    #[test]
    fn a_first_bound_at_or_below_zero_is_the_estimate() {
        let h = buckets(&[-1.0, 0.0, 1.0, INF], &[5, 5, 10, 10]);
        assert_eq!(h.quantile(0.5), Estimate::Within(-1.0));
    }

    #[test]
    fn counts_that_go_down_are_raised_as_prometheus_does() {
        // Read as [10, 10, 20, 20].
        let h = buckets(&[1.0, 2.0, 3.0, INF], &[10, 8, 20, 20]);
        assert!(close(within(h.quantile(0.5)), 1.0));
        assert!(close(within(h.quantile(0.75)), 2.5));
    }

    #[test]
    fn shapes_are_checked() {
        let new = |p: &[(f64, u64)]| Buckets::new(p.to_vec());
        assert_eq!(new(&[(1.0, 1), (2.0, 2)]), Err(BucketsError::NoInfBucket));
        assert_eq!(new(&[(INF, 2)]), Err(BucketsError::NoFiniteBound));
        assert_eq!(new(&[]), Err(BucketsError::NoInfBucket));
        assert_eq!(
            new(&[(1.0, 1), (1.0, 1), (INF, 2)]),
            Err(BucketsError::BadBound(1.0))
        );
        assert!(matches!(
            new(&[(f64::NAN, 1), (INF, 2)]),
            Err(BucketsError::BadBound(_))
        ));
        // Any order in, ascending inside.
        let h = new(&[(INF, 3), (2.0, 2), (1.0, 1)]).unwrap();
        assert_eq!(h, buckets(&[1.0, 2.0, INF], &[1, 2, 3]));
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn the_difference_of_two_scrapes() {
        let before = buckets(&[1.0, 2.0, INF], &[5, 7, 8]);
        let after = buckets(&[1.0, 2.0, INF], &[15, 27, 28]);
        let d = after.since(&before).unwrap();
        assert_eq!(d, buckets(&[1.0, 2.0, INF], &[10, 20, 20]));
        let none = buckets(&[1.0, 2.0, INF], &[0, 0, 0]);
        assert_eq!(after.since(&none).unwrap(), after);
        // Counters reset between the scrapes: refused.
        let restarted = buckets(&[1.0, 2.0, INF], &[1, 1, 1]);
        let e = restarted.since(&before).unwrap_err();
        assert_eq!(
            e,
            BucketsError::WentDown {
                le: 1.0,
                before: 5,
                after: 1
            }
        );
        assert!(e.to_string().contains("reset"), "{e}");
        let other = buckets(&[1.0, 3.0, INF], &[15, 27, 28]);
        assert_eq!(other.since(&before), Err(BucketsError::BoundsDiffer));
    }

    #[test]
    fn histograms_of_one_family_add_up() {
        let mut a = buckets(&[1.0, 2.0, INF], &[1, 2, 3]);
        a.add(&buckets(&[1.0, 2.0, INF], &[10, 20, 30])).unwrap();
        assert_eq!(a, buckets(&[1.0, 2.0, INF], &[11, 22, 33]));
        assert_eq!(
            a.add(&buckets(&[1.0, INF], &[1, 1])),
            Err(BucketsError::BoundsDiffer)
        );
    }
}
