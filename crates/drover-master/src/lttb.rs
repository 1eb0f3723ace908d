//! Largest-Triangle-Three-Buckets downsampling (Steinarsson 2013): keeps the points that shape
//! a line chart, so a million-point curve can be drawn from a few hundred.

/// Reduces `points` (sorted by x) to at most `threshold` points, always keeping the first and
/// last.
pub fn lttb(points: &[(i64, f64)], threshold: usize) -> Vec<(i64, f64)> {
    let n = points.len();
    if threshold >= n || threshold < 3 {
        return if threshold < 3 && n > threshold {
            points.iter().take(threshold.min(1)).chain(points.last().filter(|_| threshold >= 2)).copied().collect()
        } else {
            points.to_vec()
        };
    }
    let mut out = Vec::with_capacity(threshold);
    out.push(points[0]);
    let bucket = (n - 2) as f64 / (threshold - 2) as f64;
    let mut a = 0usize;
    for i in 0..threshold - 2 {
        let start = (i as f64 * bucket) as usize + 1;
        let end = (((i + 1) as f64 * bucket) as usize + 1).min(n - 1);
        // The average of the next bucket is the third corner of the triangle.
        let next_start = end;
        let next_end = (((i + 2) as f64 * bucket) as usize + 1).min(n);
        let span = &points[next_start..next_end.max(next_start + 1).min(n)];
        let (avg_x, avg_y) = span.iter().fold((0.0, 0.0), |acc, p| (acc.0 + p.0 as f64, acc.1 + p.1));
        let (avg_x, avg_y) = (avg_x / span.len() as f64, avg_y / span.len() as f64);
        let (ax, ay) = (points[a].0 as f64, points[a].1);
        let mut best = start;
        let mut best_area = -1.0;
        for (j, p) in points.iter().enumerate().take(end.max(start + 1)).skip(start) {
            let area = ((ax - avg_x) * (p.1 - ay) - (ax - p.0 as f64) * (avg_y - ay)).abs();
            if area > best_area {
                best_area = area;
                best = j;
            }
        }
        out.push(points[best]);
        a = best;
    }
    out.push(points[n - 1]);
    out
}

#[cfg(test)]
mod tests {
    use super::lttb;

    #[test]
    fn keeps_ends_and_spikes_and_size() {
        let mut pts: Vec<(i64, f64)> = (0..10_000).map(|i| (i, (i as f64 / 100.0).sin())).collect();
        pts[5000].1 = 40.0;
        let out = lttb(&pts, 200);
        assert_eq!(out.len(), 200);
        assert_eq!(out[0], pts[0]);
        assert_eq!(*out.last().unwrap(), pts[9999]);
        assert!(out.contains(&(5000, 40.0)));
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn short_series_pass_through() {
        let pts = vec![(1, 1.0), (2, 2.0)];
        assert_eq!(lttb(&pts, 100), pts);
        assert_eq!(lttb(&[(1, 1.0), (2, 2.0), (3, 0.0)], 2), vec![(1, 1.0), (3, 0.0)]);
    }
}
