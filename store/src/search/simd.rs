//! Inner-product kernels over gallery rows, one per instruction-set class, chosen at
//! run time.
//!
//! | path | needs | f32 rows | f16 rows |
//! |---|---|---|---|
//! | `portable` | nothing | 8 partial sums the compiler vectorises for the baseline target | the same after `f16 -> f32` |
//! | `avx` | AVX, FMA, F16C | 256-bit FMA | F16C `vcvtph2ps` then 256-bit FMA |
//! | `avx2` | AVX2, FMA, F16C | the `avx` kernels compiled with AVX2 on | likewise |
//! | `avx512` | AVX-512F | 512-bit FMA | 512-bit `vcvtph2ps` then FMA |
//! | `neon` | AArch64 Advanced SIMD (every AArch64 CPU) | 128-bit `fmla` | `fcvtl`/`fcvtl2` then `fmla` |
//!
//! 256-bit floating-point FMA is an AVX + FMA instruction, not an AVX2 one, so CPUs
//! with FMA but without AVX2 (some AMD EPYC guests, AMD Piledriver) get the vector
//! kernels too. The `avx` and `avx2` paths run the same floating-point instructions;
//! `avx2` lets the compiler use 256-bit integer instructions in the code around them.
//! `SEN_SIMD=portable|avx|avx2|avx512|neon` forces a path (refused when this CPU lacks
//! it).

use half::f16;
use std::sync::OnceLock;

/// An instruction-set class the kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimdPath {
    Portable,
    Avx,
    Avx2,
    Avx512,
    Neon,
}

/// `SEN_SIMD` names a path this CPU cannot run, or no path at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SimdError(pub String);

impl SimdPath {
    /// Every path, portable first.
    pub const ALL: [SimdPath; 5] = [
        SimdPath::Portable,
        SimdPath::Avx,
        SimdPath::Avx2,
        SimdPath::Avx512,
        SimdPath::Neon,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Portable => "portable",
            SimdPath::Avx => "avx",
            SimdPath::Avx2 => "avx2",
            SimdPath::Avx512 => "avx512",
            SimdPath::Neon => "neon",
        }
    }

    /// The CPU features the path needs, as `/proc/cpuinfo` spells them.
    pub fn needs(self) -> &'static str {
        match self {
            SimdPath::Portable => "nothing",
            SimdPath::Avx => "avx, fma and f16c",
            SimdPath::Avx2 => "avx2, fma and f16c",
            SimdPath::Avx512 => "avx512f",
            SimdPath::Neon => "an AArch64 CPU with asimd",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            SimdPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx => {
                std::arch::is_x86_feature_detected!("avx")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => {
                SimdPath::Avx.supported() && std::arch::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            SimdPath::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The paths this CPU can run, portable first.
    pub fn available() -> Vec<SimdPath> {
        Self::ALL.into_iter().filter(|p| p.supported()).collect()
    }

    /// The fastest path this CPU can run (measured: `cargo bench -p sen-benches
    /// --bench search -- simd`).
    pub fn best() -> SimdPath {
        *Self::available()
            .last()
            .expect("portable is always available")
    }

    /// The path the kernels use: `SEN_SIMD` if set, else [`SimdPath::best`]. Read once.
    pub fn active() -> Result<SimdPath, SimdError> {
        static ACTIVE: OnceLock<Result<SimdPath, SimdError>> = OnceLock::new();
        ACTIVE
            .get_or_init(|| match std::env::var("SEN_SIMD") {
                Ok(v) if !v.trim().is_empty() => Self::forced(v.trim()),
                _ => Ok(Self::best()),
            })
            .clone()
    }

    /// The path `SEN_SIMD=name` asks for, if this CPU has it.
    pub fn forced(name: &str) -> Result<SimdPath, SimdError> {
        let avail = || {
            Self::available()
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let path = Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                SimdError(format!(
                    "SEN_SIMD={name}: not a kernel path; use one of portable, avx, avx2, avx512, neon \
                     (this CPU runs {})",
                    avail()
                ))
            })?;
        if !path.supported() {
            return Err(SimdError(format!(
                "SEN_SIMD={name}: this CPU lacks {} (the {name} path needs them); it runs {}. \
                 Unset SEN_SIMD to take the fastest of those",
                path.needs(),
                avail()
            )));
        }
        Ok(path)
    }
}

impl std::fmt::Display for SimdPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernels of one [`SimdPath`] this CPU supports (checked at construction, so the
/// calls below never execute an instruction the CPU lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    path: SimdPath,
}

impl Kernel {
    /// The kernels of `path`, if this CPU has it.
    pub fn new(path: SimdPath) -> Result<Kernel, SimdError> {
        if path.supported() {
            Ok(Kernel { path })
        } else {
            Err(SimdError(format!(
                "the {path} kernels need {}, which this CPU lacks",
                path.needs()
            )))
        }
    }

    /// The kernels of [`SimdPath::active`].
    pub fn active() -> Result<Kernel, SimdError> {
        Ok(Kernel {
            path: SimdPath::active()?,
        })
    }

    pub fn path(self) -> SimdPath {
        self.path
    }

    /// `out[i] = <query, rows[i]>` for f32 rows of `query.len()` values.
    pub fn dots_f32(self, query: &[f32], rows: &[f32], out: &mut [f32]) {
        assert_eq!(rows.len(), out.len() * query.len(), "rows are not n x d");
        match self.path {
            SimdPath::Portable => dots_f32_portable(query, rows, out),
            // SAFETY (each x86 arm): `Kernel` exists only for supported paths.
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx => unsafe { x86_avx::dots_f32(query, rows, out) },
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => unsafe { x86_avx2::dots_f32(query, rows, out) },
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => unsafe { x86_avx512::dots_f32(query, rows, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "aarch64")]
            SimdPath::Neon => unsafe { neon::dots_f32(query, rows, out) },
            #[allow(unreachable_patterns)]
            _ => unreachable!("Kernel::new refuses paths of other architectures"),
        }
    }

    /// `out[i] = <query, rows[i]>` for f16 rows, accumulated in f32.
    pub fn dots_f16(self, query: &[f32], rows: &[f16], out: &mut [f32]) {
        assert_eq!(rows.len(), out.len() * query.len(), "rows are not n x d");
        match self.path {
            SimdPath::Portable => dots_f16_portable(query, rows, out),
            // SAFETY (each x86 arm): `Kernel` exists only for supported paths.
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx => unsafe { x86_avx::dots_f16(query, rows, out) },
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => unsafe { x86_avx2::dots_f16(query, rows, out) },
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => unsafe { x86_avx512::dots_f16(query, rows, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "aarch64")]
            SimdPath::Neon => unsafe { neon::dots_f16(query, rows, out) },
            #[allow(unreachable_patterns)]
            _ => unreachable!("Kernel::new refuses paths of other architectures"),
        }
    }
}

/// The vector kernels' scalar tail: `out[i] += <query[body..], row_i[body..]>`.
#[inline]
fn add_tail_f32(query: &[f32], rows: &[f32], body: usize, out: &mut [f32]) {
    let d = query.len();
    if body < d {
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(d)) {
            *o += query[body..]
                .iter()
                .zip(&r[body..])
                .map(|(a, b)| a * b)
                .sum::<f32>();
        }
    }
}

/// `f16 -> f32` without a per-value CPU-feature check (`half`'s scalar conversion
/// asks for F16C on every call): exact for every half, subnormals, infinities and
/// NaN included (F. Giesen's `half_to_float_fast`).
#[inline]
pub(crate) fn f16_to_f32(h: f16) -> f32 {
    let h = h.to_bits() as u32;
    let shifted_exp = 0x7c00u32 << 13;
    let mut o = (h & 0x7fff) << 13;
    let exp = shifted_exp & o;
    o += (127 - 15) << 23;
    if exp == shifted_exp {
        o += (128 - 16) << 23; // infinity or NaN
    } else if exp == 0 {
        // Subnormal: renormalise through a float subtraction.
        o += 1 << 23;
        o = (f32::from_bits(o) - f32::from_bits(113 << 23)).to_bits();
    }
    f32::from_bits(o | ((h & 0x8000) << 16))
}

impl Kernel {
    /// Rows per tile of the batched kernel ([`Kernel::tile_f32`]).
    pub fn tile_rows(self) -> usize {
        match self.path {
            SimdPath::Portable => 4,
            SimdPath::Avx | SimdPath::Avx2 | SimdPath::Neon => 6,
            SimdPath::Avx512 => 8,
        }
    }

    /// Queries per register block of the batched kernel: query counts are padded to a
    /// multiple of this.
    pub fn query_block(self) -> usize {
        match self.path {
            SimdPath::Portable | SimdPath::Neon => 8,
            SimdPath::Avx | SimdPath::Avx2 => 16,
            SimdPath::Avx512 => 32,
        }
    }

    /// The batched kernel: `out[r * qpad + q] = <rows[r], query q>` for the
    /// [`Kernel::tile_rows`] rows of `rows` (`tile_rows x d`, row-major) and `qpad`
    /// queries given transposed in `qt` (`d x qpad`; `qpad` a multiple of
    /// [`Kernel::query_block`]). Each row value is broadcast against a register block
    /// of queries (a GEMM micro-kernel), so every row loaded is used `qpad` times.
    pub fn tile_f32(self, rows: &[f32], qt: &[f32], qpad: usize, out: &mut [f32]) {
        let (r, qb) = (self.tile_rows(), self.query_block());
        assert!(
            qpad > 0 && qpad.is_multiple_of(qb),
            "qpad {qpad} is not a multiple of {qb}"
        );
        assert_eq!(qt.len() % qpad, 0, "qt is not d x qpad");
        let d = qt.len() / qpad;
        assert_eq!(rows.len(), r * d, "rows are not {r} x {d}");
        assert_eq!(out.len(), r * qpad, "out is not {r} x {qpad}");
        match self.path {
            SimdPath::Portable => tile_portable(rows, d, qt, qpad, out),
            // SAFETY (each x86 arm): `Kernel` exists only for supported paths; the
            // lengths were checked above.
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx => unsafe { x86_avx::tile(rows, d, qt, qpad, out) },
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => unsafe { x86_avx2::tile(rows, d, qt, qpad, out) },
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => unsafe { x86_avx512::tile(rows, d, qt, qpad, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "aarch64")]
            SimdPath::Neon => unsafe { neon::tile(rows, d, qt, qpad, out) },
            #[allow(unreachable_patterns)]
            _ => unreachable!("Kernel::new refuses paths of other architectures"),
        }
    }
}

impl Kernel {
    /// `dst[i] = src[i] as f32` (F16C or AVX-512 conversions where the path has them).
    pub fn halves_to_f32(self, src: &[f16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len());
        match self.path {
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx | SimdPath::Avx2 | SimdPath::Avx512 => {
                // SAFETY: every x86 vector path needs F16C (avx, avx2) or AVX-512F, and
                // `Kernel` exists only for supported paths.
                unsafe {
                    match self.path {
                        SimdPath::Avx512 => x86_avx512::halves(src, dst),
                        SimdPath::Avx2 => x86_avx2::halves(src, dst),
                        _ => x86_avx::halves(src, dst),
                    }
                }
            }
            // SAFETY: `Kernel` exists only for supported paths.
            #[cfg(target_arch = "aarch64")]
            SimdPath::Neon => unsafe { neon::halves(src, dst) },
            _ => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f16_to_f32(*s);
                }
            }
        }
    }
}

/// The portable batched kernel: 4 rows x 8 queries of accumulators the compiler keeps
/// in vector registers.
fn tile_portable(rows: &[f32], d: usize, qt: &[f32], qpad: usize, out: &mut [f32]) {
    const R: usize = 4;
    const C: usize = 8;
    for q0 in (0..qpad).step_by(C) {
        let mut acc = [[0f32; C]; R];
        for k in 0..d {
            let qv: &[f32; C] = qt[k * qpad + q0..k * qpad + q0 + C]
                .try_into()
                .expect("C values");
            for (r, a) in acc.iter_mut().enumerate() {
                let x = rows[r * d + k];
                for j in 0..C {
                    a[j] += x * qv[j];
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            out[r * qpad + q0..r * qpad + q0 + C].copy_from_slice(a);
        }
    }
}

/// Eight independent partial sums so the compiler can vectorise for the baseline
/// target (a plain multiply-add: `mul_add` without hardware FMA is a library call).
fn dots_f32_portable(query: &[f32], rows: &[f32], out: &mut [f32]) {
    let d = query.len();
    let (qc, qr) = query.split_at(d - d % 8);
    for (row, o) in rows.chunks_exact(d).zip(out.iter_mut()) {
        let mut acc = [0f32; 8];
        let (rc, rr) = row.split_at(d - d % 8);
        for (q8, r8) in qc.chunks_exact(8).zip(rc.chunks_exact(8)) {
            for j in 0..8 {
                acc[j] += q8[j] * r8[j];
            }
        }
        let mut s = acc.iter().sum::<f32>();
        for (q, r) in qr.iter().zip(rr) {
            s += q * r;
        }
        *o = s;
    }
}

fn dots_f16_portable(query: &[f32], rows: &[f16], out: &mut [f32]) {
    let d = query.len();
    let (qc, qr) = query.split_at(d - d % 8);
    for (row, o) in rows.chunks_exact(d).zip(out.iter_mut()) {
        let mut acc = [0f32; 8];
        let (rc, rr) = row.split_at(d - d % 8);
        for (q8, r8) in qc.chunks_exact(8).zip(rc.chunks_exact(8)) {
            for j in 0..8 {
                acc[j] += q8[j] * f16_to_f32(r8[j]);
            }
        }
        let mut s = acc.iter().sum::<f32>();
        for (q, r) in qr.iter().zip(rr) {
            s += q * f16_to_f32(*r);
        }
        *o = s;
    }
}

/// The 256-bit kernels, compiled once per feature set (`avx` and `avx2`).
#[cfg(target_arch = "x86_64")]
macro_rules! avx256_kernels {
    ($name:ident, $features:literal) => {
        mod $name {
            use half::f16;
            use std::arch::x86_64::*;

            #[inline]
            #[target_feature(enable = $features)]
            fn hsum(v: __m256) -> f32 {
                let lo = _mm256_castps256_ps128(v);
                let hi = _mm256_extractf128_ps::<1>(v);
                let s = _mm_add_ps(lo, hi);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }

            /// Four rows at a time, two accumulators each (eight FMA chains in flight,
            /// each query load used four times); the `d % 8` tail in scalar code.
            #[target_feature(enable = $features)]
            pub unsafe fn dots_f32(query: &[f32], rows: &[f32], out: &mut [f32]) {
                let d = query.len();
                let body = d - d % 8;
                let q = query.as_ptr();
                let n = out.len();
                let mut i = 0;
                while i + 4 <= n {
                    // SAFETY: rows i..i + 4 lie within `rows` (len n * d); every load
                    // reads 8 values below `body`.
                    unsafe {
                        let r = rows.as_ptr().add(i * d);
                        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                        let mut j = 0;
                        while j + 16 <= body {
                            let q0 = _mm256_loadu_ps(q.add(j));
                            let q1 = _mm256_loadu_ps(q.add(j + 8));
                            for (k, a) in acc.iter_mut().enumerate() {
                                let rk = r.add(k * d + j);
                                a[0] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(rk), a[0]);
                                a[1] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(rk.add(8)), a[1]);
                            }
                            j += 16;
                        }
                        if j < body {
                            let q0 = _mm256_loadu_ps(q.add(j));
                            for (k, a) in acc.iter_mut().enumerate() {
                                a[0] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r.add(k * d + j)), a[0]);
                            }
                        }
                        for (k, a) in acc.iter().enumerate() {
                            out[i + k] = hsum(_mm256_add_ps(a[0], a[1]));
                        }
                    }
                    i += 4;
                }
                while i < n {
                    // SAFETY: as above, for one row.
                    unsafe {
                        let r0 = rows.as_ptr().add(i * d);
                        let mut a0 = _mm256_setzero_ps();
                        let mut j = 0;
                        while j < body {
                            a0 = _mm256_fmadd_ps(
                                _mm256_loadu_ps(q.add(j)),
                                _mm256_loadu_ps(r0.add(j)),
                                a0,
                            );
                            j += 8;
                        }
                        out[i] = hsum(a0);
                    }
                    i += 1;
                }
                super::add_tail_f32(query, rows, body, out);
            }

            /// `dst = src as f32`, 8 at a time.
            #[target_feature(enable = $features)]
            pub unsafe fn halves(src: &[f16], dst: &mut [f32]) {
                let n = src.len();
                let mut i = 0;
                while i + 8 <= n {
                    // SAFETY: i + 8 <= n for both slices (equal lengths).
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(i), load(src.as_ptr().add(i))) };
                    i += 8;
                }
                for j in i..n {
                    dst[j] = super::f16_to_f32(src[j]);
                }
            }

            /// The batched kernel: 6 rows x 16 queries (12 accumulators of 16 ymm).
            #[target_feature(enable = $features)]
            pub unsafe fn tile(rows: &[f32], d: usize, qt: &[f32], qpad: usize, out: &mut [f32]) {
                const R: usize = 6;
                let (rp, qp, op) = (rows.as_ptr(), qt.as_ptr(), out.as_mut_ptr());
                let mut q0 = 0;
                while q0 < qpad {
                    // SAFETY: the caller checked rows (R x d), qt (d x qpad) and out
                    // (R x qpad); q0 + 16 <= qpad.
                    unsafe {
                        let mut acc = [[_mm256_setzero_ps(); 2]; R];
                        for k in 0..d {
                            let q = qp.add(k * qpad + q0);
                            let (qa, qb) = (_mm256_loadu_ps(q), _mm256_loadu_ps(q.add(8)));
                            for (r, a) in acc.iter_mut().enumerate() {
                                let x = _mm256_broadcast_ss(&*rp.add(r * d + k));
                                a[0] = _mm256_fmadd_ps(x, qa, a[0]);
                                a[1] = _mm256_fmadd_ps(x, qb, a[1]);
                            }
                        }
                        for (r, a) in acc.iter().enumerate() {
                            let o = op.add(r * qpad + q0);
                            _mm256_storeu_ps(o, a[0]);
                            _mm256_storeu_ps(o.add(8), a[1]);
                        }
                    }
                    q0 += 16;
                }
            }

            /// 8 halves (16 bytes) at `p` as 8 floats. (A function, not a closure:
            /// closures do not inherit `target_feature`, and the conversion would be
            /// an out-of-line call.)
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load(p: *const f16) -> __m256 {
                // SAFETY: the caller keeps 8 halves readable at `p`.
                unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
            }

            /// One row at a time, two accumulators, each half converted by F16C.
            /// (Four rows at a time, as for f32, measured slower: 4.6 vs 3.2 ms for
            /// 100k x 512 on one thread.)
            #[target_feature(enable = $features)]
            pub unsafe fn dots_f16(query: &[f32], rows: &[f16], out: &mut [f32]) {
                let d = query.len();
                let body = d - d % 8;
                let q = query.as_ptr();
                for (i, o) in out.iter_mut().enumerate() {
                    // SAFETY: row i lies within `rows`; each load reads 8 halves below
                    // `body`.
                    unsafe {
                        let r = rows.as_ptr().add(i * d);
                        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                        let mut j = 0;
                        while j + 16 <= body {
                            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j)), load(r.add(j)), a0);
                            a1 = _mm256_fmadd_ps(
                                _mm256_loadu_ps(q.add(j + 8)),
                                load(r.add(j + 8)),
                                a1,
                            );
                            j += 16;
                        }
                        if j < body {
                            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j)), load(r.add(j)), a0);
                        }
                        *o = hsum(_mm256_add_ps(a0, a1));
                    }
                    let row = &rows[i * d + body..(i + 1) * d];
                    for (a, b) in query[body..].iter().zip(row) {
                        *o += a * super::f16_to_f32(*b);
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
avx256_kernels!(x86_avx, "avx,fma,f16c");
#[cfg(target_arch = "x86_64")]
avx256_kernels!(x86_avx2, "avx2,avx,fma,f16c");

#[cfg(target_arch = "x86_64")]
mod x86_avx512 {
    use half::f16;
    use std::arch::x86_64::*;

    /// Four rows at a time, 16 lanes, two accumulators each; a masked load takes the
    /// `d % 16` tail, so any dimension runs in vector code.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots_f32(query: &[f32], rows: &[f32], out: &mut [f32]) {
        let d = query.len();
        let body = d - d % 16;
        let tail: __mmask16 = ((1u32 << (d % 16)) - 1) as __mmask16;
        let q = query.as_ptr();
        let n = out.len();
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: rows i..i + 4 lie within `rows`; full loads stay below `body`,
            // the masked loads read only the `d % 16` valid values.
            unsafe {
                let r = rows.as_ptr().add(i * d);
                let mut acc = [[_mm512_setzero_ps(); 2]; 4];
                let mut j = 0;
                while j + 32 <= body {
                    let q0 = _mm512_loadu_ps(q.add(j));
                    let q1 = _mm512_loadu_ps(q.add(j + 16));
                    for (k, a) in acc.iter_mut().enumerate() {
                        let rk = r.add(k * d + j);
                        a[0] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(rk), a[0]);
                        a[1] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(rk.add(16)), a[1]);
                    }
                    j += 32;
                }
                if j < body {
                    let q0 = _mm512_loadu_ps(q.add(j));
                    for (k, a) in acc.iter_mut().enumerate() {
                        a[0] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(r.add(k * d + j)), a[0]);
                    }
                }
                if tail != 0 {
                    let q0 = _mm512_maskz_loadu_ps(tail, q.add(body));
                    for (k, a) in acc.iter_mut().enumerate() {
                        let rk = _mm512_maskz_loadu_ps(tail, r.add(k * d + body));
                        a[1] = _mm512_fmadd_ps(q0, rk, a[1]);
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    out[i + k] = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
                }
            }
            i += 4;
        }
        while i < n {
            // SAFETY: as above, for one row.
            unsafe {
                let r0 = rows.as_ptr().add(i * d);
                let mut a0 = _mm512_setzero_ps();
                let mut j = 0;
                while j < body {
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(j)), _mm512_loadu_ps(r0.add(j)), a0);
                    j += 16;
                }
                if tail != 0 {
                    a0 = _mm512_fmadd_ps(
                        _mm512_maskz_loadu_ps(tail, q.add(body)),
                        _mm512_maskz_loadu_ps(tail, r0.add(body)),
                        a0,
                    );
                }
                out[i] = _mm512_reduce_add_ps(a0);
            }
            i += 1;
        }
    }

    /// `dst = src as f32`, 16 at a time.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn halves(src: &[f16], dst: &mut [f32]) {
        let n = src.len();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n for both slices (equal lengths).
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(i), load(src.as_ptr().add(i))) };
            i += 16;
        }
        for j in i..n {
            dst[j] = super::f16_to_f32(src[j]);
        }
    }

    /// The batched kernel: 8 rows x 32 queries (16 accumulators of 32 zmm).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile(rows: &[f32], d: usize, qt: &[f32], qpad: usize, out: &mut [f32]) {
        const R: usize = 8;
        let (rp, qp, op) = (rows.as_ptr(), qt.as_ptr(), out.as_mut_ptr());
        let mut q0 = 0;
        while q0 < qpad {
            // SAFETY: the caller checked rows (R x d), qt (d x qpad) and out (R x qpad);
            // q0 + 32 <= qpad.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); 2]; R];
                for k in 0..d {
                    let q = qp.add(k * qpad + q0);
                    let (qa, qb) = (_mm512_loadu_ps(q), _mm512_loadu_ps(q.add(16)));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*rp.add(r * d + k));
                        a[0] = _mm512_fmadd_ps(x, qa, a[0]);
                        a[1] = _mm512_fmadd_ps(x, qb, a[1]);
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    let o = op.add(r * qpad + q0);
                    _mm512_storeu_ps(o, a[0]);
                    _mm512_storeu_ps(o.add(16), a[1]);
                }
            }
            q0 += 32;
        }
    }

    /// 16 halves (32 bytes) at `p` as 16 floats (a function: see the 256-bit `load`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f16) -> __m512 {
        // SAFETY: the caller keeps 16 halves readable at `p`.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }

    /// One row at a time, two accumulators, each half converted by `vcvtph2ps`
    /// (four rows at a time measured slower, as in the 256-bit kernel).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots_f16(query: &[f32], rows: &[f16], out: &mut [f32]) {
        let d = query.len();
        let body = d - d % 16;
        let q = query.as_ptr();
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: row i lies within `rows`; each load reads 16 halves below `body`.
            unsafe {
                let r = rows.as_ptr().add(i * d);
                let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                let mut j = 0;
                while j + 32 <= body {
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(j)), load(r.add(j)), a0);
                    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(j + 16)), load(r.add(j + 16)), a1);
                    j += 32;
                }
                if j < body {
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(j)), load(r.add(j)), a0);
                }
                *o = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
            }
            let row = &rows[i * d + body..(i + 1) * d];
            for (a, b) in query[body..].iter().zip(row) {
                *o += a * super::f16_to_f32(*b);
            }
        }
    }
}

/// The AArch64 kernels (Advanced SIMD, which every AArch64 CPU has). Half-to-float
/// conversion is `fcvtl`/`fcvtl2` through `asm!`: the f16 NEON intrinsics are stable
/// only from Rust 1.94, and this workspace builds with 1.90.
#[cfg(target_arch = "aarch64")]
mod neon {
    use half::f16;
    use std::arch::aarch64::*;
    use std::arch::asm;

    /// 8 halves at `p` as two vectors of 4 floats.
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> (float32x4_t, float32x4_t) {
        // SAFETY: the caller keeps 8 halves readable at `p`; `fcvtl`/`fcvtl2` only
        // convert registers (`out` operands never share the input's register).
        unsafe {
            let h = vld1q_u16(p as *const u16);
            let (lo, hi): (float32x4_t, float32x4_t);
            asm!(
                "fcvtl {lo:v}.4s, {h:v}.4h",
                "fcvtl2 {hi:v}.4s, {h:v}.8h",
                h = in(vreg) h,
                lo = out(vreg) lo,
                hi = out(vreg) hi,
                options(pure, nomem, nostack, preserves_flags)
            );
            (lo, hi)
        }
    }

    /// Four rows at a time, two accumulators each; the `d % 8` tail in scalar code.
    pub unsafe fn dots_f32(query: &[f32], rows: &[f32], out: &mut [f32]) {
        let d = query.len();
        let body = d - d % 8;
        let q = query.as_ptr();
        let n = out.len();
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: rows i..i + 4 lie within `rows` (len n * d); every load reads 4
            // values below `body`.
            unsafe {
                let r = rows.as_ptr().add(i * d);
                let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
                let mut j = 0;
                while j < body {
                    let (q0, q1) = (vld1q_f32(q.add(j)), vld1q_f32(q.add(j + 4)));
                    for (k, a) in acc.iter_mut().enumerate() {
                        let rk = r.add(k * d + j);
                        a[0] = vfmaq_f32(a[0], q0, vld1q_f32(rk));
                        a[1] = vfmaq_f32(a[1], q1, vld1q_f32(rk.add(4)));
                    }
                    j += 8;
                }
                for (k, a) in acc.iter().enumerate() {
                    out[i + k] = vaddvq_f32(vaddq_f32(a[0], a[1]));
                }
            }
            i += 4;
        }
        while i < n {
            // SAFETY: as above, for one row.
            unsafe {
                let r = rows.as_ptr().add(i * d);
                let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                let mut j = 0;
                while j < body {
                    a0 = vfmaq_f32(a0, vld1q_f32(q.add(j)), vld1q_f32(r.add(j)));
                    a1 = vfmaq_f32(a1, vld1q_f32(q.add(j + 4)), vld1q_f32(r.add(j + 4)));
                    j += 8;
                }
                out[i] = vaddvq_f32(vaddq_f32(a0, a1));
            }
            i += 1;
        }
        super::add_tail_f32(query, rows, body, out);
    }

    /// One row at a time, 8 halves per step into two accumulators.
    pub unsafe fn dots_f16(query: &[f32], rows: &[f16], out: &mut [f32]) {
        let d = query.len();
        let body = d - d % 8;
        let q = query.as_ptr();
        for (i, o) in out.iter_mut().enumerate() {
            // SAFETY: row i lies within `rows`; each load reads 8 halves below `body`.
            unsafe {
                let r = rows.as_ptr().add(i * d);
                let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                let mut j = 0;
                while j < body {
                    let (lo, hi) = load8(r.add(j));
                    a0 = vfmaq_f32(a0, vld1q_f32(q.add(j)), lo);
                    a1 = vfmaq_f32(a1, vld1q_f32(q.add(j + 4)), hi);
                    j += 8;
                }
                *o = vaddvq_f32(vaddq_f32(a0, a1));
            }
            let row = &rows[i * d + body..(i + 1) * d];
            for (a, b) in query[body..].iter().zip(row) {
                *o += a * super::f16_to_f32(*b);
            }
        }
    }

    /// `dst = src as f32`, 8 at a time.
    pub unsafe fn halves(src: &[f16], dst: &mut [f32]) {
        let n = src.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n for both slices (equal lengths).
            unsafe {
                let (lo, hi) = load8(src.as_ptr().add(i));
                vst1q_f32(dst.as_mut_ptr().add(i), lo);
                vst1q_f32(dst.as_mut_ptr().add(i + 4), hi);
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = super::f16_to_f32(src[j]);
        }
    }

    /// The batched kernel: 6 rows x 8 queries (12 accumulators of the 32 registers).
    pub unsafe fn tile(rows: &[f32], d: usize, qt: &[f32], qpad: usize, out: &mut [f32]) {
        const R: usize = 6;
        let (rp, qp, op) = (rows.as_ptr(), qt.as_ptr(), out.as_mut_ptr());
        let mut q0 = 0;
        while q0 < qpad {
            // SAFETY: the caller checked rows (R x d), qt (d x qpad) and out (R x qpad);
            // q0 + 8 <= qpad.
            unsafe {
                let mut acc = [[vdupq_n_f32(0.0); 2]; R];
                for k in 0..d {
                    let q = qp.add(k * qpad + q0);
                    let (qa, qb) = (vld1q_f32(q), vld1q_f32(q.add(4)));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let x = vdupq_n_f32(*rp.add(r * d + k));
                        a[0] = vfmaq_f32(a[0], x, qa);
                        a[1] = vfmaq_f32(a[1], x, qb);
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    let o = op.add(r * qpad + q0);
                    vst1q_f32(o, a[0]);
                    vst1q_f32(o.add(4), a[1]);
                }
            }
            q0 += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn every_supported_path_agrees_with_f64_dot_products() {
        let paths = SimdPath::available();
        assert!(paths.contains(&SimdPath::Portable));
        println!("kernel paths tested here: {paths:?}");
        let mut seed = 3;
        // Dimensions with every tail: 8- and 16-lane multiples, odd sizes, tiny ones.
        for d in [1, 7, 8, 13, 16, 24, 31, 33, 128, 512, 520] {
            for n in [1, 2, 3, 5] {
                let q: Vec<f32> = (0..d).map(|_| lcg(&mut seed)).collect();
                let g: Vec<f32> = (0..n * d).map(|_| lcg(&mut seed)).collect();
                let gh: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
                for &p in &paths {
                    let k = Kernel::new(p).unwrap();
                    let (mut f, mut h) = (vec![0f32; n], vec![0f32; n]);
                    k.dots_f32(&q, &g, &mut f);
                    k.dots_f16(&q, &gh, &mut h);
                    for i in 0..n {
                        let row = i * d..(i + 1) * d;
                        let exact: f64 = g[row.clone()]
                            .iter()
                            .zip(&q)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum();
                        let exact_h: f64 = gh[row]
                            .iter()
                            .zip(&q)
                            .map(|(a, b)| a.to_f64() * *b as f64)
                            .sum();
                        let tol = 1e-5 * d as f64;
                        assert!(
                            (f[i] as f64 - exact).abs() < tol,
                            "{p} f32 d {d} row {i}: {} vs {exact}",
                            f[i]
                        );
                        assert!(
                            (h[i] as f64 - exact_h).abs() < tol,
                            "{p} f16 d {d} row {i}: {} vs {exact_h}",
                            h[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_batched_kernel_agrees_with_f64_dot_products() {
        let mut seed = 9;
        for p in SimdPath::available() {
            let k = Kernel::new(p).unwrap();
            let (r, qb) = (k.tile_rows(), k.query_block());
            for d in [1, 5, 16, 37, 128] {
                for qpad in [qb, 3 * qb] {
                    let rows: Vec<f32> = (0..r * d).map(|_| lcg(&mut seed)).collect();
                    let qt: Vec<f32> = (0..d * qpad).map(|_| lcg(&mut seed)).collect();
                    let mut out = vec![f32::NAN; r * qpad];
                    k.tile_f32(&rows, &qt, qpad, &mut out);
                    for i in 0..r {
                        for q in 0..qpad {
                            let want: f64 = (0..d)
                                .map(|j| rows[i * d + j] as f64 * qt[j * qpad + q] as f64)
                                .sum();
                            let got = out[i * qpad + q] as f64;
                            assert!(
                                (got - want).abs() < 1e-5 * d as f64,
                                "{p} d {d} row {i} query {q}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn half_conversion_is_exact_for_every_half() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let (want, got) = (h.to_f32(), f16_to_f32(h));
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                "{bits:#06x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn every_paths_half_conversion_matches_the_portable_one() {
        // All 65,536 halves, then a length with a tail below every vector width.
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for &p in &SimdPath::available() {
            let k = Kernel::new(p).unwrap();
            for src in [&all[..], &all[1000..1013]] {
                let mut got = vec![0f32; src.len()];
                k.halves_to_f32(src, &mut got);
                for (h, g) in src.iter().zip(&got) {
                    let want = f16_to_f32(*h);
                    assert!(
                        want.to_bits() == g.to_bits() || (want.is_nan() && g.is_nan()),
                        "{p}: {:#06x}: {g} vs {want}",
                        h.to_bits()
                    );
                }
            }
        }
    }

    #[test]
    fn forcing_a_path_names_what_is_missing() {
        assert_eq!(SimdPath::forced("portable"), Ok(SimdPath::Portable));
        let e = SimdPath::forced("sse9").unwrap_err().0;
        assert!(
            e.contains("SEN_SIMD=sse9") && e.contains("portable, avx, avx2, avx512, neon"),
            "{e}"
        );
        for p in SimdPath::ALL {
            match SimdPath::forced(p.name()) {
                Ok(got) => assert!(got == p && p.supported()),
                Err(e) => {
                    assert!(!p.supported());
                    assert!(e.0.contains(p.needs()), "{e}");
                }
            }
        }
        assert!(SimdPath::best().supported());
    }
}
