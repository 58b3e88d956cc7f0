//! Property tests against a naive model: one `bool` per cell of a small disk.
//!
//! A cell is `unit` bytes (1 on the byte-level tests, 512 on the larger disks); operations
//! are whole cells, and the disk is a whole number of cells, so "the bytes a map reports"
//! and "the model's dirty bytes" can both be written as cell vectors and compared exactly.
//!
//! After every operation, whatever the mode:
//! - `iter()` yields non-empty extents inside the disk, sorted, disjoint and non-adjacent
//!   (`prev.end < next.start`); `len()`, `is_empty()` and `dirty_bytes()` agree with it;
//!   `contains()` agrees with it on both sides of every extent boundary and of the op;
//! - memory: `memory_bytes() <= budget.max_memory_bytes()`; fine mode holds at most
//!   `max_extents` extents; coarse mode holds at most `bitmap_bytes`;
//! - the fallback happens exactly when a fine map at its budget gets an op that would add an
//!   extent (the model's run count grows), never otherwise;
//! - **fine mode**: the reported bytes equal the model's dirty bytes exactly;
//! - **coarse mode**: the reported bytes are a superset of the model's (nothing lost), every
//!   extent is granule-aligned (its end may be the disk's end), and the reported bytes are
//!   *exactly* the granules of a granule-level model: at the fallback, the granules holding a
//!   dirty byte; then an insert sets every granule it touches and a remove clears every
//!   granule lying wholly inside it (the last granule ends at the disk's end). So the
//!   over-approximation is bounded to granules an insert touched and no remove fully cleared;
//! - `take()` hands over exactly what was reported and leaves an empty fine map.

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    /// Insert `len` cells from cell `at` (may reach past the disk: clamping).
    Insert { at: u64, len: u64 },
    /// Remove `len` cells from cell `at` (may reach past the disk).
    Remove { at: u64, len: u64 },
    /// Take the contents (the shipper's cycle boundary).
    Take,
}

fn ops(cells: u64, max_ops: usize) -> impl Strategy<Value = Vec<Op>> {
    let at = 0..cells + cells / 8 + 1;
    let len = prop_oneof![3 => 1..=8u64, 1 => 1..=cells.div_ceil(3)];
    let op = prop_oneof![
        6 => (at.clone(), len.clone()).prop_map(|(at, len)| Op::Insert { at, len }),
        3 => (at, len).prop_map(|(at, len)| Op::Remove { at, len }),
        1 => Just(Op::Take),
    ];
    prop::collection::vec(op, 1..max_ops)
}

/// The model and the map under test, side by side.
struct Harness {
    map: DirtyMap,
    budget: DirtyBudget,
    unit: u64,
    /// One bool per cell: the bytes actually written and not since removed.
    truth: Vec<bool>,
    /// While the map is coarse: one bool per granule, what it must report.
    granules: Option<Vec<bool>>,
}

/// Cells `[at, at + len)` clamped to the disk's `cells`.
fn cell_range(cells: usize, at: u64, len: u64) -> (usize, usize) {
    let start = usize::try_from(at).unwrap().min(cells);
    let end = usize::try_from(at + len).unwrap().min(cells);
    (start, end)
}

fn runs(cells: &[bool]) -> usize {
    cells
        .iter()
        .enumerate()
        .filter(|&(i, &d)| d && (i == 0 || !cells[i - 1]))
        .count()
}

impl Harness {
    fn new(disk_cells: u64, unit: u64, budget: DirtyBudget) -> Self {
        let map = DirtyMap::new(disk_cells * unit, budget).unwrap();
        Self {
            map,
            budget,
            unit,
            truth: vec![false; usize::try_from(disk_cells).unwrap()],
            granules: None,
        }
    }

    fn cells_per_granule(&self) -> usize {
        usize::try_from(self.map.coarse_granule() / self.unit).unwrap()
    }

    /// The granule-level view of the truth: granules holding at least one dirty cell.
    fn granules_of_truth(&self) -> Vec<bool> {
        self.truth
            .chunks(self.cells_per_granule())
            .map(|c| c.contains(&true))
            .collect()
    }

    /// Expands a granule vector to cells.
    fn granule_cells(&self, granules: &[bool]) -> Vec<bool> {
        let per = self.cells_per_granule();
        (0..self.truth.len()).map(|c| granules[c / per]).collect()
    }

    /// Applies an insert or remove of cells `[s, e)` to the granule model.
    fn apply_to_granules(
        granules: &mut [bool],
        per: usize,
        cells: usize,
        s: usize,
        e: usize,
        insert: bool,
    ) {
        if s >= e {
            return;
        }
        if insert {
            granules[s / per..=(e - 1) / per].fill(true);
        } else {
            let first = s.div_ceil(per);
            let last = if e >= cells { granules.len() } else { e / per };
            if first < last {
                granules[first..last].fill(false);
            }
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let cells = self.truth.len();
        let (at, len, insert) = match *op {
            Op::Insert { at, len } => (at, len, true),
            Op::Remove { at, len } => (at, len, false),
            Op::Take => return self.take(),
        };
        let extent = Extent::new(at * self.unit, len * self.unit).unwrap();
        let (s, e) = cell_range(cells, at, len);
        let was_fine = self.map.mode() == Mode::Fine;
        let (len_before, runs_before) = (self.map.len(), runs(&self.truth));
        let granules_before = was_fine.then(|| self.granules_of_truth());

        if insert {
            self.map.insert(extent);
        } else {
            self.map.remove(extent);
        }
        self.truth[s..e].fill(insert);

        let per = self.cells_per_granule();
        if was_fine {
            let fell_back = self.map.mode() != Mode::Fine;
            let should = len_before == self.budget.max_extents() && runs(&self.truth) > runs_before;
            prop_assert_eq!(fell_back, should, "fallback timing, op {:?}", op);
            if fell_back {
                // Converted from the old truth, then the op applied to the bitmap.
                self.granules = granules_before;
            }
        }
        if let Some(g) = &mut self.granules {
            Self::apply_to_granules(g, per, cells, s, e, insert);
        }
        if insert && e > s {
            let clamped =
                Extent::from_bounds(extent.offset(), extent.end().min(self.map.disk_size()));
            prop_assert!(self.map.covers(clamped.unwrap()));
        }
        self.check()
    }

    fn take(&mut self) -> Result<(), TestCaseError> {
        let reported = self.reported_cells()?;
        let taken = self.map.take();
        let mut taken_cells = vec![false; self.truth.len()];
        for x in taken {
            taken_cells[self.cell(x.offset())..self.cell(x.end())].fill(true);
        }
        prop_assert_eq!(taken_cells, reported);
        prop_assert!(self.map.is_empty() && self.map.mode() == Mode::Fine);
        self.truth.fill(false);
        self.granules = None;
        self.check()
    }

    fn cell(&self, byte: u64) -> usize {
        usize::try_from(byte / self.unit).unwrap()
    }

    /// The reported extents as cells, checking their shape on the way.
    fn reported_cells(&self) -> Result<Vec<bool>, TestCaseError> {
        let disk = self.map.disk_size();
        let mut cells = vec![false; self.truth.len()];
        let mut prev_end: Option<u64> = None;
        let (mut count, mut bytes) = (0usize, 0u64);
        for x in self.map.iter() {
            prop_assert!(x.end() <= disk, "{:?} past the disk", x);
            if let Some(p) = prev_end {
                prop_assert!(
                    p < x.offset(),
                    "not sorted/disjoint/non-adjacent at {:?}",
                    x
                );
            }
            if let Mode::Coarse { granule } = self.map.mode() {
                prop_assert!(
                    x.offset() % granule == 0 && (x.end() % granule == 0 || x.end() == disk)
                );
            }
            prop_assert!(x.offset() % self.unit == 0 && x.end() % self.unit == 0);
            for b in [
                x.offset().checked_sub(1),
                Some(x.offset()),
                Some(x.end() - 1),
                Some(x.end()),
            ]
            .into_iter()
            .flatten()
            {
                let inside = b >= x.offset() && b < x.end();
                prop_assert_eq!(self.map.contains(b), inside, "contains({})", b);
            }
            cells[self.cell(x.offset())..self.cell(x.end())].fill(true);
            prev_end = Some(x.end());
            count += 1;
            bytes += x.len();
        }
        prop_assert_eq!(self.map.len(), count);
        prop_assert_eq!(self.map.is_empty(), count == 0);
        prop_assert_eq!(self.map.dirty_bytes(), bytes);
        Ok(cells)
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let reported = self.reported_cells()?;
        prop_assert!(self.map.memory_bytes() <= self.budget.max_memory_bytes());
        match self.map.mode() {
            Mode::Fine => {
                prop_assert!(self.map.len() <= self.budget.max_extents());
                prop_assert!(self.granules.is_none());
                prop_assert_eq!(&reported, &self.truth, "fine mode must be exact");
            }
            Mode::Coarse { granule } => {
                prop_assert_eq!(granule, self.map.coarse_granule());
                let bitmap_bytes = u64::try_from(self.budget.bitmap_bytes()).unwrap();
                prop_assert!(self.map.memory_bytes() <= bitmap_bytes);
                let lost = self
                    .truth
                    .iter()
                    .zip(&reported)
                    .position(|(&t, &r)| t && !r);
                prop_assert_eq!(lost, None, "coarse mode lost a dirty cell");
                let g = self.granules.as_ref().unwrap();
                prop_assert_eq!(&reported, &self.granule_cells(g), "granule model");
            }
        }
        Ok(())
    }
}

fn run(disk_cells: u64, unit: u64, budget: DirtyBudget, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(disk_cells, unit, budget);
    for op in ops {
        h.apply(op)?;
    }
    // Finally, byte by byte where it is cheap: contains() agrees with the reported extents.
    if h.map.disk_size() <= 1 << 14 {
        let reported = h.reported_cells()?;
        for b in 0..h.map.disk_size() {
            prop_assert_eq!(h.map.contains(b), reported[h.cell(b)]);
        }
    }
    Ok(())
}

/// Byte-granular disks up to 16 KiB, with budgets from "never falls back" to "coarse at
/// once" (granule 4 KiB: a handful of granules, last one partial).
fn byte_case() -> impl Strategy<Value = (u64, DirtyBudget, Vec<Op>)> {
    let max_extents = prop_oneof![1 => Just(usize::MAX), 2 => 0..=6usize];
    (1..=16_384u64, max_extents).prop_flat_map(|(disk, max_extents)| {
        let budget = DirtyBudget::new(max_extents, 8).unwrap();
        (Just(disk), Just(budget), ops(disk, 48))
    })
}

/// 512-byte cells on disks up to 1 MiB, with bitmaps from one word (16 KiB granules at
/// 1 MiB) to plenty (4 KiB), so fallbacks land on many granule sizes and partial last granules.
fn sector_case() -> impl Strategy<Value = (u64, DirtyBudget, Vec<Op>)> {
    let max_extents = prop_oneof![1 => Just(usize::MAX), 3 => 0..=8usize];
    let bitmap = prop_oneof![Just(8usize), Just(16), Just(24), Just(64)];
    (1..=2048u64, max_extents, bitmap).prop_flat_map(|(cells, max_extents, bitmap)| {
        let budget = DirtyBudget::new(max_extents, bitmap).unwrap();
        (Just(cells), Just(budget), ops(cells, 64))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn byte_model((disk, budget, ops) in byte_case()) {
        run(disk, 1, budget, &ops)?;
    }

    #[test]
    fn sector_model((cells, budget, ops) in sector_case()) {
        run(cells, 512, budget, &ops)?;
    }

    /// Long exact runs: many small writes and removes, a budget that is never reached.
    #[test]
    fn fine_stays_exact(ops in ops(4096, 200)) {
        run(4096, 1, DirtyBudget::new(usize::MAX, 8).unwrap(), &ops)?;
    }
}
