//! Byte-range arithmetic for the resync: which parts of a disk to compare, which differ,
//! which are left to do, and how to cut the work into bounded windows.
//!
//! A [`Range`] is `(offset, len)` — the same convention as the tracker's extents and the
//! wire protocol, so nothing converts between `(start, end)` and `(offset, len)` at a module
//! boundary. A list is *normalized* when it is sorted, has no empty range, and no two of its
//! ranges overlap or touch; every function returns normalized lists.
//!
//! Functions that take lists accept any list: one that is not normalized is normalized
//! first (a linear check decides, so normalized input costs no copy). Offsets near
//! `u64::MAX` never panic or wrap: a range's end is saturated at `u64::MAX`, so the byte at
//! offset `u64::MAX` itself is outside every range — no disk is that large.
//!
//! Lists are plain sorted vectors rather than a tree or a bitmap: the resync builds them
//! once, walks them in order, and at 10^6 ranges a vector is 16 MiB and cache-friendly,
//! while a bitmap of a 64 TiB disk at 4 KiB granules would be 2 GiB.

use std::borrow::Cow;
use std::iter::FusedIterator;

/// A byte range `(offset, len)`; in a normalized list `len > 0`.
pub type Range = (u64, u64);

/// The exclusive end of `r`, saturated at `u64::MAX`.
fn end(r: Range) -> u64 {
    r.0.saturating_add(r.1)
}

/// Whether `a` is normalized: sorted, no empty range, no two ranges overlapping or touching,
/// no range reaching past `u64::MAX`.
#[must_use]
pub fn is_normalized(a: &[Range]) -> bool {
    let mut prev_end: Option<u64> = None;
    for &(off, len) in a {
        let Some(e) = off.checked_add(len) else {
            return false;
        };
        if len == 0 || prev_end.is_some_and(|p| p >= off) {
            return false;
        }
        prev_end = Some(e);
    }
    true
}

/// `a` itself if it is normalized, else a normalized copy.
fn norm(a: &[Range]) -> Cow<'_, [Range]> {
    if is_normalized(a) {
        Cow::Borrowed(a)
    } else {
        Cow::Owned(normalize(a.to_vec()))
    }
}

/// Builds a normalized list from `[start, end)` pieces pushed in order of start.
struct Merger {
    out: Vec<Range>,
    cur: Option<(u64, u64)>,
}

impl Merger {
    fn with_capacity(n: usize) -> Merger {
        Merger {
            out: Vec::with_capacity(n),
            cur: None,
        }
    }

    /// Adds `[start, end)`; `start` must not be below the previous piece's start.
    fn push(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        match &mut self.cur {
            Some((_, ce)) if start <= *ce => *ce = (*ce).max(end),
            cur => {
                if let Some((s, e)) = cur.replace((start, end)) {
                    self.out.push((s, e - s));
                }
            }
        }
    }

    fn finish(mut self) -> Vec<Range> {
        if let Some((s, e)) = self.cur {
            self.out.push((s, e - s));
        }
        self.out
    }
}

/// Sorts `v`, drops empty ranges and merges overlapping or adjacent ones.
#[must_use]
pub fn normalize(mut v: Vec<Range>) -> Vec<Range> {
    if is_normalized(&v) {
        return v;
    }
    v.sort_unstable();
    let mut m = Merger::with_capacity(v.len());
    for &r in &v {
        m.push(r.0, end(r));
    }
    m.finish()
}

/// The bytes in `a` or `b`.
#[must_use]
pub fn union(a: &[Range], b: &[Range]) -> Vec<Range> {
    let (a, b) = (norm(a), norm(b));
    let mut m = Merger::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let take_a = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0 <= y.0,
            (Some(_), None) => true,
            _ => false,
        };
        let r = if take_a {
            i += 1;
            a[i - 1]
        } else {
            j += 1;
            b[j - 1]
        };
        m.push(r.0, end(r));
    }
    m.finish()
}

/// The bytes in `a` and not in `b`.
#[must_use]
pub fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let (a, b) = (norm(a), norm(b));
    let mut m = Merger::with_capacity(a.len());
    let mut j = 0;
    for &r in a.iter() {
        let (mut pos, e) = (r.0, end(r));
        while j < b.len() && end(b[j]) <= pos {
            j += 1;
        }
        while let Some(&cut) = b.get(j) {
            if cut.0 >= e {
                break;
            }
            m.push(pos, cut.0);
            pos = pos.max(end(cut));
            if end(cut) > e {
                // `cut` reaches into the next range of `a`: keep it.
                break;
            }
            j += 1;
        }
        m.push(pos, e);
    }
    m.finish()
}

/// The bytes in both `a` and `b`.
#[must_use]
pub fn intersect(a: &[Range], b: &[Range]) -> Vec<Range> {
    let (a, b) = (norm(a), norm(b));
    let mut m = Merger::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        let (xe, ye) = (end(x), end(y));
        m.push(x.0.max(y.0), xe.min(ye));
        if xe <= ye {
            i += 1;
        } else {
            j += 1;
        }
    }
    m.finish()
}

/// The number of bytes in `a` (saturating; overlaps count twice if `a` is not normalized).
#[must_use]
pub fn total(a: &[Range]) -> u64 {
    a.iter().fold(0, |t, r| t.saturating_add(r.1))
}

/// `a` widened to whole granules — starts rounded down and ends rounded up to multiples of
/// `granule` (0 counts as 1) — then clipped to `[0, size)` and normalized.
#[must_use]
pub fn align_out(a: &[Range], granule: u64, size: u64) -> Vec<Range> {
    let g = granule.max(1);
    let v = a
        .iter()
        .filter(|r| r.1 > 0 && r.0 < size)
        .map(|&r| {
            let start = r.0 - r.0 % g;
            // Rounding up past u64::MAX means past `size` too.
            let e = end(r).checked_next_multiple_of(g).unwrap_or(u64::MAX);
            (start, e.min(size) - start)
        })
        .collect();
    normalize(v)
}

/// A superset of `a` with at most `max_count` ranges (0 counts as 1), made by merging
/// neighbours across the smallest gaps: the fewest extra bytes for that count. Never loses
/// coverage. Ties between equal gaps go to the earlier gap.
#[must_use]
pub fn coarsen(a: &[Range], max_count: usize) -> Vec<Range> {
    let a = norm(a);
    let keep = max_count.max(1);
    if a.len() <= keep {
        return a.into_owned();
    }
    // Gap i lies between a[i] and a[i + 1]; merge across the (len - keep) smallest.
    let mut gaps: Vec<(u64, usize)> = a
        .windows(2)
        .enumerate()
        .map(|(i, w)| (w[1].0 - end(w[0]), i))
        .collect();
    let n_merge = a.len() - keep;
    gaps.select_nth_unstable(n_merge - 1);
    let mut merge = vec![false; a.len()];
    for &(_, i) in &gaps[..n_merge] {
        merge[i] = true;
    }
    let mut out = Vec::with_capacity(keep);
    let mut start = a[0].0;
    for (i, &r) in a.iter().enumerate() {
        if !merge[i] {
            out.push((start, end(r) - start));
            if let Some(next) = a.get(i + 1) {
                start = next.0;
            }
        }
    }
    out
}

/// The part of `a` at or after offset `cursor`.
#[must_use]
pub fn after(a: &[Range], cursor: u64) -> Vec<Range> {
    let a = norm(a);
    let i = a.partition_point(|&r| end(r) <= cursor);
    let mut out = a[i..].to_vec();
    if let Some(first) = out.first_mut()
        && first.0 < cursor
    {
        *first = (cursor, end(*first) - cursor);
    }
    out
}

/// Whether every byte of `b` is in `a` (`b ⊆ a`).
#[must_use]
pub fn contains_all(a: &[Range], b: &[Range]) -> bool {
    let (a, b) = (norm(a), norm(b));
    let mut i = 0;
    for &r in b.iter() {
        while a.get(i).is_some_and(|&x| end(x) <= r.0) {
            i += 1;
        }
        match a.get(i) {
            Some(&x) if x.0 <= r.0 && end(r) <= end(x) => {}
            _ => return false,
        }
    }
    true
}

/// Splits `scope` from `cursor` on into windows: each window is a non-empty list of
/// ranges whose total length is at most `max_bytes` and whose count is at most
/// `max_ranges` (0 counts as 1 for both).
///
/// A range longer than `max_bytes` is cut at multiples of `max_bytes` measured from the
/// range's own start — also when `cursor` falls inside it, so a resumed run cuts where the
/// first run did, and the pieces are aligned if the range is. Ranges and pieces are never
/// split to fill a window: a window ends when the next piece does not fit. The windows come
/// in order; their concatenation, normalized, equals [`after`]`(scope, cursor)`.
#[must_use]
pub fn windows(scope: &[Range], cursor: u64, max_bytes: u64, max_ranges: usize) -> Vec<Vec<Range>> {
    Windows::new(scope, cursor, max_bytes, max_ranges).collect()
}

/// The lazy form of [`windows`], with the same semantics: each `next()` builds one window,
/// so a scope of 10^6 ranges is never split all at once.
#[derive(Debug, Clone)]
pub struct Windows<'a> {
    scope: Cow<'a, [Range]>,
    /// The range of `scope` the next piece comes from.
    idx: usize,
    /// Where in `scope[idx]` the next piece starts.
    pos: u64,
    max_bytes: u64,
    max_ranges: usize,
}

impl<'a> Windows<'a> {
    /// Windows of `scope` from `cursor` on; see [`windows`].
    #[must_use]
    pub fn new(scope: &'a [Range], cursor: u64, max_bytes: u64, max_ranges: usize) -> Windows<'a> {
        let scope = norm(scope);
        let idx = scope.partition_point(|&r| end(r) <= cursor);
        let pos = scope.get(idx).map_or(0, |r| r.0.max(cursor));
        Windows {
            scope,
            idx,
            pos,
            max_bytes: max_bytes.max(1),
            max_ranges: max_ranges.max(1),
        }
    }

    /// The next piece, `[self.pos, piece_end)`, without consuming it: up to the range's end
    /// or its next `max_bytes` boundary, whichever is first.
    fn peek_piece(&self) -> Option<(u64, u64)> {
        let r = *self.scope.get(self.idx)?;
        let (start, e) = (r.0, end(r));
        let into = self.pos - start;
        // Past u64::MAX means past the range's end too.
        let boundary = (into / self.max_bytes + 1)
            .checked_mul(self.max_bytes)
            .and_then(|o| start.checked_add(o))
            .unwrap_or(u64::MAX);
        Some((self.pos, e.min(boundary)))
    }

    fn advance_to(&mut self, piece_end: u64) {
        let r = self.scope[self.idx];
        if piece_end >= end(r) {
            self.idx += 1;
            self.pos = self.scope.get(self.idx).map_or(0, |r| r.0);
        } else {
            self.pos = piece_end;
        }
    }
}

impl Iterator for Windows<'_> {
    type Item = Vec<Range>;

    fn next(&mut self) -> Option<Vec<Range>> {
        let mut window = Vec::new();
        let mut room = self.max_bytes;
        while window.len() < self.max_ranges {
            let Some((s, e)) = self.peek_piece() else {
                break;
            };
            // A piece is at most max_bytes, so it always fits an empty window.
            if e - s > room {
                break;
            }
            room -= e - s;
            window.push((s, e - s));
            self.advance_to(e);
        }
        (!window.is_empty()).then_some(window)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.scope.len().saturating_sub(self.idx);
        (usize::from(left > 0), None)
    }
}

impl FusedIterator for Windows<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const U: u64 = 512;
    const MAX: u64 = u64::MAX;

    fn bits(v: &[Range]) -> Vec<bool> {
        let mut b = vec![false; usize::try_from(U).unwrap()];
        for &(off, len) in v {
            for x in off..off + len {
                b[usize::try_from(x).unwrap()] = true;
            }
        }
        b
    }

    fn runs(b: &[bool]) -> Vec<Range> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, &set) in b.iter().chain([&false]).enumerate() {
            let i = u64::try_from(i).unwrap();
            match (set, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push((s, i - s));
                    start = None;
                }
                _ => {}
            }
        }
        out
    }

    fn zip(a: &[bool], b: &[bool], f: impl Fn(bool, bool) -> bool) -> Vec<bool> {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    }

    /// Up to 12 ranges inside 0..U, unsorted, possibly empty, overlapping or touching.
    fn list() -> impl Strategy<Value = Vec<Range>> {
        prop::collection::vec((0..U, 0..64u64), 0..12)
            .prop_map(|v| v.into_iter().map(|(o, l)| (o, l.min(U - o))).collect())
    }

    /// A normalized list or a raw one: both must give the model's answer.
    fn maybe_normalized() -> impl Strategy<Value = Vec<Range>> {
        (list(), any::<bool>()).prop_map(|(v, n)| if n { normalize(v) } else { v })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn normalize_matches_model(v in list()) {
            let n = normalize(v.clone());
            prop_assert!(is_normalized(&n));
            prop_assert_eq!(&n, &runs(&bits(&v)));
            prop_assert_eq!(normalize(n.clone()), n.clone());
            prop_assert_eq!(total(&n), u64::try_from(bits(&v).iter().filter(|&&x| x).count()).unwrap());
        }

        #[test]
        fn set_operations_match_model(a in maybe_normalized(), b in maybe_normalized()) {
            let (ba, bb) = (bits(&a), bits(&b));
            let u = union(&a, &b);
            let s = subtract(&a, &b);
            let i = intersect(&a, &b);
            for r in [&u, &s, &i] {
                prop_assert!(is_normalized(r));
            }
            prop_assert_eq!(u, runs(&zip(&ba, &bb, |x, y| x || y)));
            prop_assert_eq!(s, runs(&zip(&ba, &bb, |x, y| x && !y)));
            prop_assert_eq!(i, runs(&zip(&ba, &bb, |x, y| x && y)));
            let subset = ba.iter().zip(&bb).all(|(&x, &y)| !y || x);
            prop_assert_eq!(contains_all(&a, &b), subset);
        }

        #[test]
        fn contains_all_of_own_pieces(a in list(), cut in 0..U) {
            // Subsets are rarer by chance; build some on purpose.
            let part = intersect(&a, &[(cut, U - cut)]);
            prop_assert!(contains_all(&a, &part));
            prop_assert!(contains_all(&a, &a));
            prop_assert!(contains_all(&a, &[]));
        }

        #[test]
        fn after_matches_model(a in maybe_normalized(), cursor in 0..U + 8) {
            let mut b = bits(&a);
            for (x, bit) in b.iter_mut().enumerate() {
                if u64::try_from(x).unwrap() < cursor {
                    *bit = false;
                }
            }
            prop_assert_eq!(after(&a, cursor), runs(&b));
        }

        #[test]
        fn align_out_matches_model(a in list(), granule in 0..70u64, size in 0..U + 8) {
            let g = granule.max(1);
            let mut b = vec![false; usize::try_from(U + 8 + g).unwrap()];
            for &(off, len) in &a {
                if len == 0 || off >= size {
                    continue;
                }
                let e = (off + len).div_ceil(g) * g;
                for x in off / g * g..e.min(size) {
                    b[usize::try_from(x).unwrap()] = true;
                }
            }
            let got = align_out(&a, granule, size);
            prop_assert_eq!(&got, &runs(&b));
            for &(off, len) in &got {
                prop_assert_eq!(off % g, 0);
                prop_assert!((off + len) % g == 0 || off + len == size);
            }
        }

        #[test]
        fn coarsen_is_a_minimal_superset(a in list(), max_count in 0usize..8) {
            let n = normalize(a.clone());
            let c = coarsen(&a, max_count);
            prop_assert!(is_normalized(&c));
            prop_assert!(contains_all(&c, &n));
            prop_assert!(c.len() <= max_count.max(1));
            if n.len() <= max_count.max(1) {
                prop_assert_eq!(&c, &n);
            }
            // Every output range starts where an input range starts and ends where one ends.
            for &(off, len) in &c {
                prop_assert!(n.iter().any(|r| r.0 == off));
                prop_assert!(n.iter().any(|r| r.0 + r.1 == off + len));
            }
            // The extra bytes are exactly the smallest gaps that had to go.
            let mut gaps: Vec<u64> = n.windows(2).map(|w| w[1].0 - (w[0].0 + w[0].1)).collect();
            gaps.sort_unstable();
            let drop = n.len().saturating_sub(max_count.max(1));
            prop_assert_eq!(total(&c) - total(&n), gaps[..drop].iter().sum::<u64>());
        }

        #[test]
        fn windows_cover_exactly_and_respect_bounds(
            scope in maybe_normalized(),
            cursor in 0..U + 8,
            max_bytes in 0..100u64,
            max_ranges in 0usize..5,
        ) {
            let ws = windows(&scope, cursor, max_bytes, max_ranges);
            let lazy: Vec<Vec<Range>> = Windows::new(&scope, cursor, max_bytes, max_ranges).collect();
            prop_assert_eq!(&ws, &lazy);
            let (mb, mr) = (max_bytes.max(1), max_ranges.max(1));
            let n = normalize(scope.clone());
            let mut prev_end = 0;
            for (k, w) in ws.iter().enumerate() {
                prop_assert!(!w.is_empty());
                prop_assert!(w.len() <= mr);
                prop_assert!(total(w) <= mb);
                for &(off, len) in w {
                    prop_assert!(len > 0);
                    prop_assert!(off >= prev_end, "pieces in order, no overlap");
                    prev_end = off + len;
                    // Cut only at max_bytes multiples from the range's own start.
                    let r = n.iter().find(|r| r.0 <= off && off < r.0 + r.1).unwrap();
                    prop_assert!(off == r.0.max(cursor) || (off - r.0) % mb == 0);
                    prop_assert_eq!((off - r.0) / mb, (off + len - 1 - r.0) / mb);
                    let piece_end = off + len;
                    prop_assert!(piece_end == r.0 + r.1 || (piece_end - r.0) % mb == 0);
                }
                // A window ends only when full or when the next piece does not fit.
                if let Some(next) = ws.get(k + 1) {
                    prop_assert!(w.len() == mr || next[0].1 > mb - total(w));
                }
            }
            let flat: Vec<Range> = ws.concat();
            prop_assert_eq!(normalize(flat), after(&scope, cursor));
        }
    }

    #[test]
    fn windows_examples() {
        // A 10-byte range cut by 4 from its own start, then two short ranges sharing a window.
        let scope = [(2, 10), (20, 1), (30, 2), (40, 5)];
        assert_eq!(
            windows(&scope, 0, 4, 8),
            vec![
                vec![(2, 4)],
                vec![(6, 4)],
                vec![(10, 2), (20, 1)],
                vec![(30, 2)],
                vec![(40, 4)],
                vec![(44, 1)],
            ]
        );
        // The cursor inside a range: the first piece runs to the range's next boundary.
        assert_eq!(
            windows(&scope, 5, 4, 8),
            vec![
                vec![(5, 1)],
                vec![(6, 4)],
                vec![(10, 2), (20, 1)],
                vec![(30, 2)],
                vec![(40, 4)],
                vec![(44, 1)]
            ]
        );
        // Count bound.
        assert_eq!(
            windows(&scope, 12, 100, 2),
            vec![vec![(20, 1), (30, 2)], vec![(40, 5)]]
        );
        assert!(windows(&scope, 45, 4, 8).is_empty());
        assert!(windows(&[], 0, 4, 8).is_empty());
    }

    #[test]
    fn windows_is_lazy_over_a_million_ranges() {
        let scope: Vec<Range> = (0..1_000_000u64).map(|i| (i * 8192, 4096)).collect();
        let mut w = Windows::new(&scope, 4096 * 3, 1 << 20, 64);
        assert!(
            matches!(w.scope, Cow::Borrowed(_)),
            "normalized scope is not copied"
        );
        let first = w.next().unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(first[0], (8192 * 2, 4096));
        assert_eq!(w.size_hint().0, 1);
        assert_eq!(
            w.by_ref().map(|w| w.len()).sum::<usize>(),
            1_000_000 - 2 - 64
        );
        assert_eq!(w.next(), None);
    }

    #[test]
    fn huge_offsets_saturate_and_never_panic() {
        // Ends past u64::MAX are clipped there; a range at u64::MAX itself is empty.
        assert_eq!(normalize(vec![(MAX - 5, 100)]), vec![(MAX - 5, 5)]);
        assert_eq!(normalize(vec![(MAX, 1), (MAX, MAX)]), vec![]);
        assert_eq!(
            normalize(vec![(MAX - 10, 3), (MAX - 7, MAX), (0, MAX)]),
            vec![(0, MAX)]
        );
        assert!(!is_normalized(&[(MAX - 1, 2)]));
        assert!(is_normalized(&[(0, 1), (MAX - 1, 1)]));

        let a = [(0, 10), (MAX - 10, 10)];
        let b = [(5, MAX)]; // end saturates at MAX
        assert_eq!(union(&a, &b), vec![(0, MAX)]);
        assert_eq!(subtract(&a, &b), vec![(0, 5)]);
        assert_eq!(intersect(&a, &b), vec![(5, 5), (MAX - 10, 10)]);
        assert!(contains_all(&b, &[(MAX - 1, 1)]));
        assert!(!contains_all(&a, &b));
        assert_eq!(total(&[(0, MAX), (0, MAX)]), MAX);

        assert_eq!(after(&a, MAX), vec![]);
        assert_eq!(after(&a, MAX - 3), vec![(MAX - 3, 3)]);
        assert_eq!(after(&[(MAX, MAX)], 0), vec![]);

        assert_eq!(
            align_out(&[(MAX - 10, 3)], 4096, MAX),
            vec![(MAX - 4095, 4095)]
        );
        assert_eq!(align_out(&[(MAX - 10, 3)], MAX, MAX), vec![(0, MAX)]);
        assert_eq!(align_out(&[(5, 1)], 0, 100), vec![(5, 1)]);
        assert_eq!(align_out(&[(5, 10)], 4096, 8), vec![(0, 8)]);

        assert_eq!(coarsen(&a, 1), vec![(0, MAX)]);
        assert_eq!(coarsen(&a, 0), vec![(0, MAX)]);
        assert_eq!(coarsen(&[], 0), vec![]);

        // Boundaries past u64::MAX.
        let scope = [(MAX - 100, 100)];
        assert_eq!(windows(&scope, 0, MAX, 4), vec![vec![(MAX - 100, 100)]]);
        assert_eq!(
            windows(&scope, MAX - 50, 64, 4),
            vec![vec![(MAX - 50, 14), (MAX - 36, 36)]]
        );
        assert_eq!(
            windows(&[(0, MAX)], MAX - 1, MAX / 2, 4),
            vec![vec![(MAX - 1, 1)]]
        );
        assert_eq!(
            windows(&[(1, 3)], 0, 0, 0),
            vec![vec![(1, 1)], vec![(2, 1)], vec![(3, 1)]]
        );
    }

    #[test]
    fn coarsen_merges_smallest_gaps_first() {
        let a = [(0, 1), (2, 1), (10, 1), (13, 1), (100, 1)];
        assert_eq!(coarsen(&a, 5), a.to_vec());
        assert_eq!(coarsen(&a, 4), vec![(0, 3), (10, 1), (13, 1), (100, 1)]);
        assert_eq!(coarsen(&a, 3), vec![(0, 3), (10, 4), (100, 1)]);
        assert_eq!(coarsen(&a, 2), vec![(0, 14), (100, 1)]);
        assert_eq!(coarsen(&a, 1), vec![(0, 101)]);
        // Equal gaps: the earlier goes first.
        assert_eq!(coarsen(&[(0, 1), (2, 1), (4, 1)], 2), vec![(0, 3), (4, 1)]);
    }
}
