//! What a search sees: an immutable [`Snapshot`] of parts (segments and the chunks of
//! rows not yet in one), each with its deleted rows, and the row filter of a query
//! over it.

use super::*;

/// The deleted rows of a part (bit i: row i), if any.
pub(super) type DeadBits = Option<Arc<Vec<u64>>>;

/// Embeddings of rows not yet in a segment, as their storage type.
#[derive(Debug)]
pub(super) enum Emb {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// Rows committed together and not yet in a segment (immutable once published).
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) ids: Vec<u64>,
    pub(super) times: Vec<i64>,
    /// Camera numbers into the snapshot's store-wide camera list.
    pub(super) cameras: Vec<u32>,
    pub(super) emb: Emb,
}

impl Chunk {
    pub(super) fn rows(&self) -> Rows<'_> {
        match &self.emb {
            Emb::F32(v) => Rows::F32(v),
            Emb::F16(v) => Rows::F16(v),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum Src {
    Seg(Arc<Segment>),
    Mem(Arc<Chunk>),
}

/// A run of consecutive rows of the snapshot (a segment or a chunk), with its
/// deleted rows.
#[derive(Debug, Clone)]
pub(super) struct Part {
    pub(super) src: Src,
    /// Deleted rows of the part (bit i: row i), if any.
    pub(super) dead: DeadBits,
}

impl Part {
    pub(super) fn len(&self) -> usize {
        match &self.src {
            Src::Seg(s) => s.len(),
            Src::Mem(c) => c.ids.len(),
        }
    }
    pub(super) fn ids(&self) -> &[u64] {
        match &self.src {
            Src::Seg(s) => s.ids(),
            Src::Mem(c) => &c.ids,
        }
    }
    pub(super) fn times(&self) -> &[i64] {
        match &self.src {
            Src::Seg(s) => s.times(),
            Src::Mem(c) => &c.times,
        }
    }
    pub(super) fn rows(&self) -> Rows<'_> {
        match &self.src {
            Src::Seg(s) => s.rows(),
            Src::Mem(c) => c.rows(),
        }
    }
    pub(super) fn is_dead(&self, i: usize) -> bool {
        self.dead
            .as_ref()
            .is_some_and(|b| b[i / 64] >> (i % 64) & 1 == 1)
    }
    /// Row `i`'s embedding bytes in storage type.
    pub(super) fn row_bytes(&self, i: usize, dim: usize) -> Vec<u8> {
        match &self.src {
            Src::Seg(s) => s.row_bytes(i).to_vec(),
            Src::Mem(c) => match &c.emb {
                Emb::F32(v) => v[i * dim..(i + 1) * dim]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
                Emb::F16(v) => v[i * dim..(i + 1) * dim]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            },
        }
    }
}

/// What a search sees: every part in id order, immutable.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub(super) parts: Vec<Part>,
    /// Store-wide camera names (chunks' camera numbers index this).
    pub(super) cameras: Arc<Vec<String>>,
}

impl Snapshot {
    /// Rows in parts, deleted ones included.
    pub fn rows_in_parts(&self) -> usize {
        self.parts.iter().map(Part::len).sum()
    }

    /// Live rows (not deleted).
    pub fn live_rows(&self) -> usize {
        self.parts
            .iter()
            .map(|p| {
                p.len()
                    - p.dead
                        .as_ref()
                        .map_or(0, |b| b.iter().map(|w| w.count_ones() as usize).sum())
            })
            .sum()
    }

    /// (part, row) of `id`, if it is live.
    pub(super) fn locate(&self, id: u64) -> Option<(usize, usize)> {
        let p = self
            .parts
            .partition_point(|p| p.ids().last().is_some_and(|&l| l < id));
        let part = self.parts.get(p)?;
        let i = part.ids().binary_search(&id).ok()?;
        (!part.is_dead(i)).then_some((p, i))
    }

    /// The allowed rows of a query over the whole snapshot (global row numbers), or
    /// `All` when nothing is filtered and nothing is deleted.
    pub(super) fn filter(&self, q: &Query) -> RowFilter {
        let any_dead = self.parts.iter().any(|p| p.dead.is_some());
        if q.cameras.is_none() && q.time.is_all() && !any_dead && q.exclude.is_empty() {
            return RowFilter::All;
        }
        let total = self.rows_in_parts();
        let mut words = vec![0u64; total.div_ceil(64)];
        let mut base = 0;
        for p in &self.parts {
            let n = p.len();
            // Which of this part's camera numbers are wanted (None: all cameras), as a
            // table indexed by number: a lookup per row, no hashing.
            let wanted: Option<Vec<bool>> = q.cameras.as_ref().map(|names| {
                let table: &[String] = match &p.src {
                    Src::Seg(s) => &s.header.cameras,
                    Src::Mem(_) => &self.cameras,
                };
                table.iter().map(|c| names.iter().any(|n| n == c)).collect()
            });
            if wanted.as_ref().is_some_and(|w| !w.contains(&true)) {
                base += n;
                continue;
            }
            if let Src::Seg(s) = &p.src
                && !q.time.overlaps(s.header.min_time_ms, s.header.max_time_ms)
            {
                base += n;
                continue;
            }
            let cams: &[u32] = match &p.src {
                Src::Seg(s) => s.cameras(),
                Src::Mem(c) => &c.cameras,
            };
            let times = p.times();
            // 64 rows to a word, branch-free, then the word shifted into place.
            let (from, to) = (
                q.time.from.unwrap_or(i64::MIN),
                q.time.to.map_or(i64::MAX, |t| t - 1),
            );
            for (w, (tc, cc)) in times.chunks(64).zip(cams.chunks(64)).enumerate() {
                let mut bits = 0u64;
                match &wanted {
                    None => {
                        for (j, &t) in tc.iter().enumerate() {
                            bits |= u64::from((from..=to).contains(&t)) << j;
                        }
                    }
                    Some(m) => {
                        for (j, (&t, &c)) in tc.iter().zip(cc).enumerate() {
                            let cam = m.get(c as usize).copied().unwrap_or(false);
                            bits |= u64::from(cam & (from..=to).contains(&t)) << j;
                        }
                    }
                }
                let r = base + w * 64;
                words[r / 64] |= bits << (r % 64);
                if r % 64 != 0 && bits >> (64 - r % 64) != 0 {
                    words[r / 64 + 1] |= bits >> (64 - r % 64);
                }
            }
            // Deleted rows off, word by word of the part's dead bitmap.
            if let Some(dead) = &p.dead {
                for (w, &bits) in dead.iter().enumerate() {
                    let mut bits = bits;
                    while bits != 0 {
                        let r = base + w * 64 + bits.trailing_zeros() as usize;
                        words[r / 64] &= !(1 << (r % 64));
                        bits &= bits - 1;
                    }
                }
            }
            base += n;
        }
        for &x in &q.exclude {
            if let Some((pi, i)) = self.locate(x) {
                let r: usize = self.parts[..pi].iter().map(Part::len).sum::<usize>() + i;
                words[r / 64] &= !(1 << (r % 64));
            }
        }
        RowFilter::Bitmap(words)
    }

    pub(super) fn gallery(&self, dim: usize) -> Gallery<'_> {
        Gallery::new(dim, self.parts.iter().map(Part::rows).collect())
    }

    /// (part, row) of global row `r`.
    pub(super) fn part_of(&self, mut r: usize) -> (usize, usize) {
        for (pi, p) in self.parts.iter().enumerate() {
            if r < p.len() {
                return (pi, r);
            }
            r -= p.len();
        }
        panic!("row beyond the snapshot")
    }
}
