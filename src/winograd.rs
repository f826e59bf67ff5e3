//! Winograd minimal filtering: the fast path of 3x3, stride-1, padding-1 convolutions.
//!
//! # The transform
//!
//! A direct 3x3 convolution spends 9 multiply-adds per output pixel, input channel and output
//! channel. Winograd's F(m x m, 3 x 3) computes an `m x m` block of outputs from an
//! `n x n` input tile (`n = m + 2`) with `n^2` multiplies instead of `9 m^2`:
//!
//! ```text
//! Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A
//! ```
//!
//! where `g` is the 3x3 kernel, `d` the input tile, `⊙` the element-wise product and `A`, `B`,
//! `G` small constant matrices (Cook-Toom: polynomial evaluation at `n - 1` points plus the point
//! at infinity, then interpolation). Summed over input channels, the element-wise products
//! become, for each of the `n^2` tile positions `p`, one matrix product
//! `M_p [c_out, tiles] = U_p [c_out, c_in] @ V_p [c_in, tiles]`. A convolution is then:
//!
//! 1. weights, once at load: `U_p = (G g G^T)_p` for every kernel (in f64, rounded to f32);
//! 2. input transform: every `n x n` tile of every channel (zero-padded at the borders) becomes
//!    `B^T d B`; eight tiles at a time, one per SIMD lane (with AVX2, a tile row of eight tiles
//!    is eight loads and one 8x8 register transpose);
//! 3. `n^2` independent products `M_p = U_p V_p` (with AVX2 a register-blocked kernel, 4
//!    output channels x 24 tiles, with AVX-512 8 x 48, each sum over `c_in` in order, so both
//!    give the same bits; else the `gemm` crate);
//! 4. output transform: `A^T M A` per tile and output channel, plus the bias and the
//!    activation, transposed back to tile rows and written straight into the NCHW output.
//!
//! The batch's tiles go through steps 2-4 in blocks whose `V` and `M` fit in a core's L2
//! cache; with at least as many blocks as threads each block is one job, otherwise (batch 1)
//! each step spreads its channels or positions over the pool ([`crate::nn::serial`] honoured).
//!
//! # Tile choice
//!
//! Larger tiles save more multiplies (F(2x2): 2.25x, F(4x4): 4x, F(6x6): 5.06x fewer than
//! direct on whole tiles) but cost more transform work per output, round small images up to
//! whole tiles, enlarge the transformed weights (`n^2 / 9` times the direct ones) and lose
//! precision (the points ±2, ±1/2 of F(6x6) scale values by up to 32). The ResNet's four
//! stride-1 stages are 35x35x32, 17x17x64, 8x8x128 and 3x3x256. Single-threaded CPU time per
//! image of one convolution at batch 16 (`tests::timing`, machine shared, µs):
//!
//! ```text
//! stage       direct   F(2x2)  F(4x4)  F(6x6)
//! 35x35x32       439     511     316     331
//! 17x17x64       359     376     269     220
//! 8x8x128        341     244     131     268
//! 3x3x256        169     203      81     232
//! ```
//!
//! So [`Tile::for_side`] takes F(6x6) at 17 (18 = 3 tiles) and F(4x4) elsewhere: at 35 the
//! transforms, not the products, dominate with only 32 channels; at 8 F(4x4) fits exactly. A
//! 3x3 image is one F(4x4) tile, so [`WinogradConv::pays`] sends batches with fewer than 8
//! tiles (batch < 8 there, batch 1 at 8x8) to the direct convolution. The error stays near f32
//! rounding of the sums (see the tests and tests/embed_parity.rs).
//!
//! Results do not depend on the thread count or on which tiles share a block: every product
//! is single-threaded and each output element sums its `c_in` terms in the same order.

use rayon::prelude::*;

use crate::nn::{for_each_chunk, is_serial, serial, with_scratch, Act, SyncPtr};

/// Tiles transformed together, one per SIMD lane (8 f32 in an AVX register).
const L: usize = 8;
type Lanes = [f32; L];

/// A Winograd tile size: F(m x m, 3 x 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tile {
    /// F(2x2, 3x3): 4x4 input tiles, 16 products for 36 direct ones. Measured, and slower
    /// than F(4x4) on every ResNet stage (see the module doc), so only the tests use it.
    #[cfg_attr(not(test), allow(dead_code))]
    F2,
    /// F(4x4, 3x3): 6x6 input tiles, 36 products for 144.
    F4,
    /// F(6x6, 3x3): 8x8 input tiles, 64 products for 324.
    F6,
}

impl Tile {
    /// The tile this module uses for an image side `side` (see the module doc).
    /// `None` below 3 (a 1x1 or 2x2 image is mostly padding: the direct convolution is cheaper).
    pub(crate) fn for_side(side: usize) -> Option<Tile> {
        match side {
            0..=2 => None,
            13..=24 => Some(Tile::F6),
            _ => Some(Tile::F4),
        }
    }

    /// Outputs per tile side (`m`).
    pub(crate) fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
            Tile::F6 => 6,
        }
    }

    /// Input tile side (`n = m + 2`).
    fn n(self) -> usize {
        self.m() + 2
    }
}

/// F(2x2, 3x3) (Lavin & Gray 2016; points 0, ±1, ∞).
mod f2 {
    pub const BT: [[f32; 4]; 4] = [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ];
    pub const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    pub const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
}

/// F(4x4, 3x3) (points 0, ±1, ±2, ∞).
mod f4 {
    pub const BT: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    pub const G: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    pub const AT: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];
}

/// F(6x6, 3x3) (points 0, ±1, ±2, ±1/2, ∞).
mod f6 {
    pub const BT: [[f32; 8]; 8] = [
        [1.0, 0.0, -5.25, 0.0, 5.25, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, -4.25, -4.25, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 4.25, -4.25, -1.0, 1.0, 0.0],
        [0.0, 0.5, 0.25, -2.5, -1.25, 2.0, 1.0, 0.0],
        [0.0, -0.5, 0.25, 2.5, -1.25, -2.0, 1.0, 0.0],
        [0.0, 2.0, 4.0, -2.5, -5.0, 0.5, 1.0, 0.0],
        [0.0, -2.0, 4.0, 2.5, -5.0, -0.5, 1.0, 0.0],
        [0.0, -1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0],
    ];
    pub const G: [[f64; 3]; 8] = [
        [1.0, 0.0, 0.0],
        [-2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0],
        [-2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0],
        [1.0 / 90.0, 1.0 / 45.0, 2.0 / 45.0],
        [1.0 / 90.0, -1.0 / 45.0, 2.0 / 45.0],
        [32.0 / 45.0, 16.0 / 45.0, 8.0 / 45.0],
        [32.0 / 45.0, -16.0 / 45.0, 8.0 / 45.0],
        [0.0, 0.0, 1.0],
    ];
    pub const AT: [[f32; 8]; 6] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 0.25, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 0.125, -0.125, 0.0],
        [0.0, 1.0, 1.0, 16.0, 16.0, 0.0625, 0.0625, 0.0],
        [0.0, 1.0, -1.0, 32.0, -32.0, 0.03125, -0.03125, 1.0],
    ];
}

/// A 3x3, stride-1, padding-1 convolution with its weights in the Winograd domain.
pub(crate) struct WinogradConv {
    tile: Tile,
    c_in: usize,
    c_out: usize,
    /// `U[p][c_out][c_in]`: the transformed kernels, one `[c_out, c_in]` matrix per position,
    /// computed at the first product that uses them ([`Self::kernels`]): they are up to 4x the
    /// direct weights (47 MB for the ResNet), which a short run such as `verify`, whose batches
    /// are too small for Winograd on the last stages, would pay for at every start.
    u: std::sync::OnceLock<Vec<f32>>,
    bias: Vec<f32>,
}

/// The geometry of one forward call: how an image of `h x w` is cut into tiles.
#[derive(Clone, Copy)]
struct Tiling {
    m: usize,
    h: usize,
    w: usize,
    /// Tiles per row of an image, and per image.
    tiles_x: usize,
    per_image: usize,
    /// Side of the zero-padded copy of a plane that holds every tile's input whole.
    padded_h: usize,
    padded_w: usize,
}

impl Tiling {
    fn new(tile: Tile, h: usize, w: usize) -> Self {
        let m = tile.m();
        let (tiles_y, tiles_x) = (h.div_ceil(m), w.div_ceil(m));
        Tiling {
            m,
            h,
            w,
            tiles_x,
            per_image: tiles_y * tiles_x,
            padded_h: tiles_y * m + 2,
            padded_w: tiles_x * m + 2,
        }
    }

    /// (image, top output row, left output column) of tile `t` of the batch.
    fn place(&self, t: usize) -> (usize, usize, usize) {
        let (img, r) = (t / self.per_image, t % self.per_image);
        (
            img,
            (r / self.tiles_x) * self.m,
            (r % self.tiles_x) * self.m,
        )
    }
}

/// Floats after the last padded plane, so that the AVX2 input transform can load 8 floats
/// from the start of any tile row (a tile row is only `n <= 8` long).
const PADDED_SLACK: usize = L;

/// Tiles per product kernel call (three vectors of 8): full blocks hold a multiple.
const COLUMNS: usize = 3 * L;

/// Bytes of transformed inputs and products per block of tiles: a block's `V` and `M` stay in
/// a core's L2 cache (1 MiB on Zen 4) from one step to the next.
const BLOCK_BYTES: usize = 768 * 1024;

impl WinogradConv {
    /// Transforms `weight` (`[c_out, c_in, 3, 3]`, row-major) for `tile`; `bias` has `c_out`
    /// values.
    pub(crate) fn new(weight: &[f32], bias: &[f32], c_in: usize, c_out: usize, tile: Tile) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "Winograd weights");
        assert_eq!(bias.len(), c_out, "Winograd bias");
        WinogradConv {
            tile,
            c_in,
            c_out,
            u: std::sync::OnceLock::new(),
            bias: bias.to_vec(),
        }
    }

    /// The transformed kernels `U[p][c_out][c_in]` of the direct `weight` (`[c_out, c_in, 3, 3]`,
    /// the same as given to [`Self::new`]), computed once (in f64, rounded to f32), positions in
    /// parallel.
    fn kernels(&self, weight: &[f32]) -> &[f32] {
        self.u.get_or_init(|| {
            let (c_in, c_out, n) = (self.c_in, self.c_out, self.tile.n());
            assert_eq!(weight.len(), c_out * c_in * 9, "Winograd weights");
            let g: &[[f64; 3]] = match self.tile {
                Tile::F2 => &f2::G,
                Tile::F4 => &f4::G,
                Tile::F6 => &f6::G,
            };
            let mut u = vec![0f32; n * n * c_out * c_in];
            for_each_chunk(&mut u, c_out * c_in, |p, u_p| {
                let (gi, gj) = (g[p / n], g[p % n]);
                // (G k G^T)[i][j] = sum over a, b of G[i][a] k[a][b] G[j][b].
                for (dst, k) in u_p.iter_mut().zip(weight.chunks_exact(9)) {
                    let v: f64 = (0..3)
                        .map(|a| gi[a] * (0..3).map(|b| k[a * 3 + b] as f64 * gj[b]).sum::<f64>())
                        .sum();
                    *dst = v as f32;
                }
            });
            u
        })
    }

    /// Whether Winograd pays for `b` images of `h x w`: only when the batch fills at least one
    /// group of [`L`] tiles (a 3x3 image is one F(4x4) tile: at batch 1 seven of the eight
    /// lanes would be wasted, and the 4x larger transformed weights read for one tile).
    pub(crate) fn pays(&self, b: usize, h: usize, w: usize) -> bool {
        b * h.div_ceil(self.tile.m()) * w.div_ceil(self.tile.m()) >= L
    }

    /// Multiply-adds of the products for one image of `h x w` (transforms not counted).
    pub(crate) fn macs(&self, h: usize, w: usize) -> usize {
        let (m, n) = (self.tile.m(), self.tile.n());
        h.div_ceil(m) * w.div_ceil(m) * n * n * self.c_in * self.c_out
    }

    /// Convolves `b` images `c_in x h x w` (NCHW in `src`), returning `[b, c_out, h, w]` after
    /// the bias and `act`. Spreads over the thread pool unless [`crate::nn::serial`].
    pub(crate) fn forward(
        &self,
        weight: &[f32],
        src: &[f32],
        b: usize,
        h: usize,
        w: usize,
        act: Act,
    ) -> Vec<f32> {
        self.forward_with(weight, src, b, h, w, act, crate::dconv::usable())
    }

    /// [`Self::forward`], with the AVX2 kernels or the portable ones.
    #[allow(clippy::too_many_arguments)]
    fn forward_with(
        &self,
        weight: &[f32],
        src: &[f32],
        b: usize,
        h: usize,
        w: usize,
        act: Act,
        avx2: bool,
    ) -> Vec<f32> {
        assert_eq!(src.len(), b * self.c_in * h * w, "Winograd input");
        let u = self.kernels(weight);
        match self.tile {
            Tile::F2 => self.run::<2, 4>(&f2::BT, &f2::AT, u, src, b, h, w, act, avx2),
            Tile::F4 => self.run::<4, 6>(&f4::BT, &f4::AT, u, src, b, h, w, act, avx2),
            Tile::F6 => self.run::<6, 8>(&f6::BT, &f6::AT, u, src, b, h, w, act, avx2),
        }
    }

    /// The whole convolution: the batch's tiles in blocks that fit in L2 (see [`BLOCK_BYTES`]).
    /// With at least as many blocks as threads each block is one single-threaded job; otherwise
    /// the blocks run one after another, each spreading its steps over the pool.
    #[allow(clippy::too_many_arguments)]
    fn run<const M: usize, const N: usize>(
        &self,
        bt: &[[f32; N]; N],
        at: &[[f32; N]; M],
        u: &[f32],
        src: &[f32],
        b: usize,
        h: usize,
        w: usize,
        act: Act,
        avx2: bool,
    ) -> Vec<f32> {
        let t = Tiling::new(self.tile, h, w);
        // 1. A zero-padded copy of every plane, so every tile reads whole rows.
        let padded_plane = t.padded_h * t.padded_w;
        let mut padded = vec![0f32; b * self.c_in * padded_plane + PADDED_SLACK];
        for_each_chunk(
            &mut padded[..b * self.c_in * padded_plane],
            padded_plane,
            |i, dst| {
                let plane = &src[i * h * w..][..h * w];
                for (y, row) in plane.chunks_exact(w).enumerate() {
                    dst[(y + 1) * t.padded_w + 1..][..w].copy_from_slice(row);
                }
            },
        );

        let tiles = b * t.per_image;
        let per_tile = N * N * (self.c_in + self.c_out) * std::mem::size_of::<f32>();
        let max_block = (BLOCK_BYTES / per_tile).max(COLUMNS) / COLUMNS * COLUMNS;
        let n_blocks = tiles.div_ceil(max_block);
        let block = tiles.div_ceil(n_blocks).next_multiple_of(L);
        let blocks: Vec<std::ops::Range<usize>> = (0..tiles)
            .step_by(block)
            .map(|s| s..(s + block).min(tiles))
            .collect();

        let mut out = vec![0f32; b * self.c_out * h * w];
        let dst = SyncPtr(out.as_mut_ptr());
        let job = |tiles: &std::ops::Range<usize>| {
            self.block::<M, N>(bt, at, u, &padded, &t, tiles.clone(), act, avx2, &dst)
        };
        let threads = if is_serial() {
            1
        } else {
            rayon::current_num_threads()
        };
        if threads > 1 && blocks.len() >= threads {
            blocks.par_iter().for_each(|r| serial(|| job(r)));
        } else {
            blocks.iter().for_each(job);
        }
        out
    }

    /// Steps 2-4 for the batch's tiles `tiles`, writing their outputs through `dst`
    /// (`[b, c_out, h, w]`).
    #[allow(clippy::too_many_arguments)]
    fn block<const M: usize, const N: usize>(
        &self,
        bt: &[[f32; N]; N],
        at: &[[f32; N]; M],
        u: &[f32],
        padded: &[f32],
        t: &Tiling,
        tiles: std::ops::Range<usize>,
        act: Act,
        avx2: bool,
        dst: &SyncPtr,
    ) {
        let nn = N * N;
        let stride = tiles.len().next_multiple_of(L);
        // V[p][c_in][tile] and M[p][c_out][tile]; each position's matrix starts a cache line
        // after a multiple of the row length, so that a position's rows, or the same row of
        // every position, do not all fall in the same L1 cache set.
        let (v_ps, m_ps) = (self.c_in * stride + 16, self.c_out * stride + 16);
        let (v_len, m_len) = (nn * v_ps, nn * m_ps);
        with_scratch(v_len + m_len, |scratch| {
            let (v, prod) = scratch.split_at_mut(v_len);
            // 2. Input transform, one channel per job.
            let plane = t.padded_h * t.padded_w;
            let places: Vec<(usize, usize, usize)> = tiles.clone().map(|i| t.place(i)).collect();
            let tr = Transform {
                t,
                tiles: tiles.clone(),
                places: &places,
                stride,
                p_stride: v_ps,
            };
            let v_out = SyncPtr(v.as_mut_ptr());
            for_each_index(self.c_in, |c| {
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 and FMA are present (checked at run time); `padded` has
                    // PADDED_SLACK floats past its last plane; `v` holds nn * v_ps floats.
                    unsafe {
                        avx2::input_transform::<N>(bt, padded, self.c_in, c, plane, &tr, &v_out)
                    };
                    return;
                }
                input_transform::<N>(bt, padded, self.c_in, c, plane, &tr, &v_out)
            });

            // 3. One product per tile position, one position per job.
            let u_size = self.c_out * self.c_in;
            let wide = avx2 && crate::dconv::wide();
            let v = &*v;
            for_each_chunk(prod, m_ps, |p, mp| {
                let u_p = &u[p * u_size..][..u_size];
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 and FMA (and AVX-512F for `wide`) are present; V_p's
                    // c_in rows of `stride` floats
                    // start at p * v_ps in `v`; `mp` holds c_out rows of `stride`.
                    unsafe {
                        let product = if wide {
                            avx2::product512
                        } else {
                            avx2::product
                        };
                        product(
                            u_p,
                            self.c_out,
                            self.c_in,
                            v[p * v_ps..].as_ptr(),
                            stride,
                            stride,
                            mp.as_mut_ptr(),
                            stride,
                        )
                    };
                    return;
                }
                // SAFETY: `mp` holds c_out rows of `stride` >= tiles.len() values; U_p is
                // c_out x c_in; V_p's c_in rows of `stride` values start at p * v_ps.
                unsafe {
                    gemm::gemm(
                        self.c_out,
                        tiles.len(),
                        self.c_in,
                        mp.as_mut_ptr(),
                        1,
                        stride as isize,
                        false,
                        u_p.as_ptr(),
                        1,
                        self.c_in as isize,
                        v[p * v_ps..].as_ptr(),
                        1,
                        stride as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            });

            // 4. Output transform, one output channel per job.
            let prod = &*prod;
            let tr = Transform {
                p_stride: m_ps,
                ..tr
            };
            for_each_index(self.c_out, |co| {
                let post = Post {
                    bias: self.bias[co],
                    act: act.for_channel(co),
                    c_out: self.c_out,
                    co,
                };
                let m_co = &prod[co * stride..];
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2 and FMA are present (checked at run time).
                    unsafe { avx2::output_transform::<M, N>(at, m_co, &tr, &post, dst) };
                    return;
                }
                output_transform::<M, N>(at, m_co, &tr, &post, dst)
            });
        });
    }
}

/// Which tiles a transform works on, and where its `V` or `M` values are: the value of tile
/// `tiles.start + i`, position `p`, channel `c` is at `p * p_stride + c * stride + i`.
struct Transform<'a> {
    t: &'a Tiling,
    tiles: std::ops::Range<usize>,
    /// [`Tiling::place`] of each of `tiles`.
    places: &'a [(usize, usize, usize)],
    stride: usize,
    p_stride: usize,
}

/// Calls `f(i)` for `i` in `0..n`, in parallel unless [`serial`].
fn for_each_index(n: usize, f: impl Fn(usize) + Sync + Send) {
    if is_serial() {
        (0..n).for_each(f);
    } else {
        (0..n).into_par_iter().for_each(f);
    }
}

/// What the output transform adds: output channel `co`'s bias and activation.
struct Post<'a> {
    bias: f32,
    act: Act<'a>,
    c_out: usize,
    co: usize,
}

impl Post<'_> {
    #[inline(always)]
    fn apply(&self, x: f32) -> f32 {
        let x = x + self.bias;
        match self.act {
            Act::Identity => x,
            Act::Relu => x.max(0.0),
            Act::PReluSlope(a) => x.max(0.0) + a * x.min(0.0),
            Act::PRelu(p) => x.max(0.0) + p.slope(self.co) * x.min(0.0),
        }
    }
}

/// `acc += c * x` lane-wise; nothing for `c == 0` (the constant matrices are sparse, and
/// `0 * x` cannot be dropped by the compiler on its own).
#[inline(always)]
fn axpy(acc: &mut Lanes, c: f32, x: &Lanes) {
    if c != 0.0 {
        for (a, v) in acc.iter_mut().zip(x) {
            *a += c * v;
        }
    }
}

/// `B^T d B` for the `N x N` tiles `d[row][col][lane]`.
#[inline(always)]
fn transform_tile<const R: usize, const N: usize>(
    mat: &[[f32; N]; R],
    d: &[[Lanes; N]; N],
) -> [[Lanes; R]; R] {
    // Rows first: tmp = mat d (R x N), then columns: tmp mat^T (R x R).
    let mut tmp = [[[0f32; L]; N]; R];
    for (i, row) in tmp.iter_mut().enumerate() {
        for (j, d_row) in d.iter().enumerate() {
            for (t, x) in row.iter_mut().zip(d_row) {
                axpy(t, mat[i][j], x);
            }
        }
    }
    let mut out = [[[0f32; L]; R]; R];
    for (o_row, t_row) in out.iter_mut().zip(&tmp) {
        for (k, o) in o_row.iter_mut().enumerate() {
            for (l, x) in t_row.iter().enumerate() {
                axpy(o, mat[k][l], x);
            }
        }
    }
    out
}

/// Step 2 for channel `c` of the tiles `tr.tiles`: `padded` holds the batch's zero-padded
/// planes ([`Tiling::padded_h`] x [`Tiling::padded_w`] each, `plane` floats); writes channel
/// `c` of `V` through `v` (see [`Transform`]), zeros past the last tile.
#[inline(always)]
fn input_transform<const N: usize>(
    bt: &[[f32; N]; N],
    padded: &[f32],
    c_in: usize,
    c: usize,
    plane: usize,
    tr: &Transform,
    v: &SyncPtr,
) {
    let t = tr.t;
    for g in (0..tr.stride).step_by(L) {
        let mut d = [[[0f32; L]; N]; N];
        for lane in 0..L.min(tr.tiles.len().saturating_sub(g)) {
            let (img, oy, ox) = tr.places[g + lane];
            let at = (img * c_in + c) * plane + oy * t.padded_w + ox;
            for (i, row) in d.iter_mut().enumerate() {
                let src = &padded[at + i * t.padded_w..][..N];
                for (cell, &x) in row.iter_mut().zip(src) {
                    cell[lane] = x;
                }
            }
        }
        let vt = transform_tile::<N, N>(bt, &d);
        for (p, lanes) in vt.iter().flatten().enumerate() {
            let at = p * tr.p_stride + c * tr.stride + g;
            // SAFETY: `v` holds every position's c_in rows of `stride`; channel c's row is
            // this job's alone.
            unsafe { std::ptr::copy_nonoverlapping(lanes.as_ptr(), v.get().add(at), L) };
        }
    }
}

/// Step 4 for one output channel of the tiles `tr.tiles`: `m_co[p * tr.p_stride + tile]`
/// holds the channel's products; writes `post(A^T M A)` of each tile, cut to the image, through `dst`.
#[inline(always)]
fn output_transform<const M: usize, const N: usize>(
    at: &[[f32; N]; M],
    m_co: &[f32],
    tr: &Transform,
    post: &Post,
    dst: &SyncPtr,
) {
    let t = tr.t;
    for g in (0..tr.tiles.len()).step_by(L) {
        let mut mt = [[[0f32; L]; N]; N];
        for (p, lanes) in mt.iter_mut().flatten().enumerate() {
            lanes.copy_from_slice(&m_co[p * tr.p_stride + g..][..L]);
        }
        let y = transform_tile::<M, N>(at, &mt);
        for lane in 0..L.min(tr.tiles.len() - g) {
            let (img, oy, ox) = tr.places[g + lane];
            let plane = (img * post.c_out + post.co) * t.h * t.w;
            for (i, row) in y.iter().enumerate().take(t.h - oy) {
                for (k, cell) in row.iter().enumerate().take(t.w - ox) {
                    // SAFETY: (oy + i, ox + k) lies in the h x w plane of (img, co); each
                    // output pixel belongs to exactly one tile and one channel job.
                    unsafe {
                        *dst.get().add(plane + (oy + i) * t.w + ox + k) = post.apply(cell[lane]);
                    }
                }
            }
        }
    }
}

/// The transforms with AVX2 intrinsics: tiles are gathered and scattered with 8x8 register
/// transposes instead of one float at a time, and each pass keeps its sums in registers.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Post, Transform, L};
    use crate::dconv::simd::{rows_kernel, F32x};
    use crate::nn::{Act, SyncPtr};

    /// Transposes 8 rows of 8 floats.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// `(mat x) mat^T` (`mat` is R x N, `x` N x N), on vectors of 8 tiles.
    #[inline(always)]
    unsafe fn transform<const R: usize, const N: usize>(
        mat: &[[f32; N]; R],
        x: &[[__m256; N]; N],
    ) -> [[__m256; R]; R] {
        let mut out = [[_mm256_setzero_ps(); R]; R];
        for (i, out_row) in out.iter_mut().enumerate() {
            // Row i of mat x, in registers.
            let mut row = [_mm256_setzero_ps(); N];
            for (j, x_row) in x.iter().enumerate() {
                let c = mat[i][j];
                if c != 0.0 {
                    let c = _mm256_set1_ps(c);
                    for (r, &v) in row.iter_mut().zip(x_row) {
                        *r = _mm256_fmadd_ps(c, v, *r);
                    }
                }
            }
            for (k, o) in out_row.iter_mut().enumerate() {
                let mut acc = _mm256_setzero_ps();
                for (l, &v) in row.iter().enumerate() {
                    let c = mat[k][l];
                    if c != 0.0 {
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(c), v, acc);
                    }
                }
                *o = acc;
            }
        }
        out
    }

    /// [`super::input_transform`] with AVX2: each row of a group of 8 tiles is loaded as 8
    /// vectors (one per tile) and transposed into one vector per tile column.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `padded` must hold [`super::PADDED_SLACK`] floats past
    /// its last plane.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_transform<const N: usize>(
        bt: &[[f32; N]; N],
        padded: &[f32],
        c_in: usize,
        c: usize,
        plane: usize,
        tr: &Transform,
        v: &SyncPtr,
    ) {
        let t = tr.t;
        for g in (0..tr.stride).step_by(L) {
            let lanes = L.min(tr.tiles.len().saturating_sub(g));
            let at: [Option<usize>; L] = std::array::from_fn(|lane| {
                (lane < lanes).then(|| {
                    let (img, oy, ox) = tr.places[g + lane];
                    (img * c_in + c) * plane + oy * t.padded_w + ox
                })
            });
            let mut d = [[_mm256_setzero_ps(); N]; N];
            for (i, d_row) in d.iter_mut().enumerate() {
                let rows: [__m256; 8] = std::array::from_fn(|lane| match at[lane] {
                    Some(a) => _mm256_loadu_ps(padded[a + i * t.padded_w..][..L].as_ptr()),
                    None => _mm256_setzero_ps(),
                });
                let cols = transpose8(rows);
                d_row.copy_from_slice(&cols[..N]);
            }
            let vt = transform::<N, N>(bt, &d);
            for (p, &lanes) in vt.iter().flatten().enumerate() {
                // SAFETY (caller): `v` holds every position's c_in rows of `stride`; channel
                // c's row is this job's alone.
                _mm256_storeu_ps(v.get().add(p * tr.p_stride + c * tr.stride + g), lanes);
            }
        }
    }

    /// [`super::output_transform`] with AVX2: each output row of a group of 8 tiles is
    /// transposed into one vector per tile and stored with a mask cut to the image.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `dst` as for [`super::output_transform`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_transform<const M: usize, const N: usize>(
        at: &[[f32; N]; M],
        m_co: &[f32],
        tr: &Transform,
        post: &Post,
        dst: &SyncPtr,
    ) {
        let t = tr.t;
        let zero = _mm256_setzero_ps();
        let bias = _mm256_set1_ps(post.bias);
        let slope = match post.act {
            Act::PReluSlope(a) => Some(_mm256_set1_ps(a)),
            Act::PRelu(p) => Some(_mm256_set1_ps(p.slope(post.co))),
            _ => None,
        };
        let relu = matches!(post.act, Act::Relu);
        let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for g in (0..tr.tiles.len()).step_by(L) {
            let mut mt = [[zero; N]; N];
            for (p, v) in mt.iter_mut().flatten().enumerate() {
                *v = _mm256_loadu_ps(m_co[p * tr.p_stride + g..][..L].as_ptr());
            }
            let y = transform::<M, N>(at, &mt);
            let lanes = L.min(tr.tiles.len() - g);
            let places = &tr.places[g..g + lanes];
            for (i, y_row) in y.iter().enumerate() {
                let mut rows = [zero; 8];
                for (r, &v) in rows.iter_mut().zip(y_row) {
                    let v = _mm256_add_ps(v, bias);
                    *r = match slope {
                        Some(a) => {
                            _mm256_fmadd_ps(a, _mm256_min_ps(v, zero), _mm256_max_ps(v, zero))
                        }
                        None if relu => _mm256_max_ps(v, zero),
                        None => v,
                    };
                }
                let per_tile = transpose8(rows);
                for (&(img, oy, ox), &v) in places.iter().zip(&per_tile).take(lanes) {
                    if oy + i >= t.h {
                        continue;
                    }
                    let count = (t.w - ox).min(M);
                    let at = dst
                        .get()
                        .add(((img * post.c_out + post.co) * t.h + oy + i) * t.w + ox);
                    // SAFETY: the first `count` floats from `at` lie in row oy + i of the
                    // (img, co) plane, inside this tile's columns; each output pixel belongs
                    // to exactly one tile and one channel job.
                    if count == M && M.is_multiple_of(2) {
                        // A whole tile row: plain 4- and 2-float stores (masked stores are
                        // slow on AMD cores).
                        let (low, high) =
                            (_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                        match M {
                            2 => _mm_storel_pd(at.cast(), _mm_castps_pd(low)),
                            4 => _mm_storeu_ps(at, low),
                            _ => {
                                _mm_storeu_ps(at, low);
                                _mm_storel_pd(at.add(4).cast(), _mm_castps_pd(high));
                            }
                        }
                    } else {
                        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), index);
                        _mm256_maskstore_ps(at, mask, v);
                    }
                }
            }
        }
    }
    /// `M_p = U_p V_p`: `u` is `c_out x c_in` row-major; row `ci` of `V_p` starts at
    /// `v + ci * v_rs` and holds `cols` floats (a multiple of 8); `m` gets `c_out` rows of
    /// `cols` floats, `m_rs` apart. Each sum runs over `ci` in order, in registers, so a
    /// tile's result does not depend on the other tiles of the block.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; the pointers must be valid for the sizes above.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(
        u: &[f32],
        c_out: usize,
        c_in: usize,
        v: *const f32,
        v_rs: usize,
        cols: usize,
        m: *mut f32,
        m_rs: usize,
    ) {
        product_with::<__m256>(u, c_out, c_in, v, v_rs, cols, m, m_rs)
    }

    /// [`product`] with 16-lane registers: rows in groups of 8, columns in blocks of 48, 32
    /// or 16 (a last 8 with AVX2); every sum the same as [`product`]'s.
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA must be present; the pointers as for [`product`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product512(
        u: &[f32],
        c_out: usize,
        c_in: usize,
        v: *const f32,
        v_rs: usize,
        cols: usize,
        m: *mut f32,
        m_rs: usize,
    ) {
        product_with::<__m512>(u, c_out, c_in, v, v_rs, cols, m, m_rs)
    }

    /// [`product`] on registers `S`: groups of 4 rows (8 with 16 lanes, 8 x 3 accumulators
    /// fitting AVX-512's 32 registers), then single rows.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn product_with<S: F32x>(
        u: &[f32],
        c_out: usize,
        c_in: usize,
        v: *const f32,
        v_rs: usize,
        cols: usize,
        m: *mut f32,
        m_rs: usize,
    ) {
        debug_assert!(cols.is_multiple_of(L) && u.len() >= c_out * c_in);
        let mut co = 0;
        while co < c_out {
            let u = u.as_ptr().add(co * c_in);
            let m = m.add(co * m_rs);
            let rows = c_out - co;
            if S::LANES >= 16 && rows >= 8 {
                product_rows::<S, 8>(u, c_in, v, v_rs, cols, m, m_rs);
                co += 8;
            } else if rows >= 4 {
                product_rows::<S, 4>(u, c_in, v, v_rs, cols, m, m_rs);
                co += 4;
            } else {
                product_rows::<S, 1>(u, c_in, v, v_rs, cols, m, m_rs);
                co += 1;
            }
        }
    }

    /// `R` rows of [`product_with`], in column blocks of 3, 2 or 1 registers, then (16 lanes)
    /// a last 8 columns with AVX2.
    #[inline(always)]
    unsafe fn product_rows<S: F32x, const R: usize>(
        u: *const f32,
        c_in: usize,
        v: *const f32,
        v_rs: usize,
        cols: usize,
        m: *mut f32,
        m_rs: usize,
    ) {
        let w = S::LANES;
        let mut t = 0;
        while cols - t >= 3 * w {
            kernel::<S, R, 3>(u, c_in, v.add(t), v_rs, m.add(t), m_rs);
            t += 3 * w;
        }
        if cols - t >= 2 * w {
            kernel::<S, R, 2>(u, c_in, v.add(t), v_rs, m.add(t), m_rs);
            t += 2 * w;
        }
        if cols - t >= w {
            kernel::<S, R, 1>(u, c_in, v.add(t), v_rs, m.add(t), m_rs);
            t += w;
        }
        if cols - t >= L {
            kernel::<__m256, R, 1>(u, c_in, v.add(t), v_rs, m.add(t), m_rs);
        }
    }

    /// `R x (LANES * V)` outputs: `R * V` accumulators, one FMA per (row, vector) per input
    /// channel (the register block of [`crate::dconv`], rows `v_rs` apart, started from zero).
    #[inline(always)]
    unsafe fn kernel<S: F32x, const R: usize, const V: usize>(
        u: *const f32,
        c_in: usize,
        v: *const f32,
        v_rs: usize,
        m: *mut f32,
        m_rs: usize,
    ) {
        rows_kernel::<S, R, V>(c_in, |ci| ci * v_rs, u, c_in, [0.0; R], v, m, m_rs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Conv2d;
    use candle_core::{Device, Tensor};

    /// Deterministic pseudo-random values in [-1, 1).
    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.f64() as f32 * 2.0 - 1.0).collect()
    }

    fn conv(c_in: usize, c_out: usize, seed: u64) -> Conv2d {
        let w = Tensor::from_vec(
            random(c_out * c_in * 9, seed)
                .into_iter()
                .map(|x| x * 0.1)
                .collect::<Vec<_>>(),
            (c_out, c_in, 3, 3),
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::from_vec(random(c_out, seed + 1), c_out, &Device::Cpu).unwrap();
        Conv2d::new(w, Some(b), 1, 1).unwrap()
    }

    /// The stride-1 3x3 convolutions of dlib's ResNet: (side, channels).
    const SHAPES: [(usize, usize); 4] = [(35, 32), (17, 64), (8, 128), (3, 256)];

    /// Row-major values of a CPU tensor.
    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Largest difference between `got` and `want`, relative to `want`'s largest magnitude.
    fn relative_error(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        diff / scale
    }

    /// Each tile's matrices compute a 3-tap correlation: sum over positions p of
    /// `A^T[k][p] G[p][j] B^T[p][i]` is 1 where `i == k + j` and 0 elsewhere.
    #[test]
    fn transform_matrices_satisfy_the_winograd_identity() {
        #[allow(clippy::needless_range_loop)] // the indices are the identity's
        fn check<const M: usize, const N: usize>(
            bt: &[[f32; N]; N],
            g: &[[f64; 3]; N],
            at: &[[f32; N]; M],
        ) {
            for k in 0..M {
                for j in 0..3 {
                    for i in 0..N {
                        let sum: f64 = (0..N)
                            .map(|p| at[k][p] as f64 * g[p][j] * bt[p][i] as f64)
                            .sum();
                        let want = if i == k + j { 1.0 } else { 0.0 };
                        assert!((sum - want).abs() < 1e-9, "F({M}) k{k} j{j} i{i}: {sum}");
                    }
                }
            }
        }
        check(&f2::BT, &f2::G, &f2::AT);
        check(&f4::BT, &f4::G, &f4::AT);
        check(&f6::BT, &f6::G, &f6::AT);
    }

    /// Every tile, on every stride-1 shape of the ResNet, with the AVX2 and the portable
    /// kernels, at batch 1 and 3, equals the direct convolution up to f32 rounding.
    #[test]
    fn matches_the_direct_convolution_on_every_resnet_shape() {
        for (side, c) in SHAPES {
            let direct = conv(c, c, side as u64);
            let weight = values(direct.weight());
            let bias = random(c, side as u64 + 1);
            for b in [1, 3] {
                let x = random(b * c * side * side, 99);
                let xt = Tensor::from_vec(x.clone(), (b, c, side, side), &Device::Cpu).unwrap();
                for act in [Act::Identity, Act::Relu] {
                    let want = values(&direct.forward_act(&xt, act).unwrap());
                    for tile in [Tile::F2, Tile::F4, Tile::F6] {
                        let wg = WinogradConv::new(&weight, &bias, c, c, tile);
                        for avx2 in [false, crate::dconv::usable()] {
                            let got = wg.forward_with(&weight, &x, b, side, side, act, avx2);
                            let err = relative_error(&got, &want);
                            assert!(
                                err < 2e-5,
                                "{side}x{side}x{c} b{b} {tile:?} avx2 {avx2}: error {err}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// dlib's own weights (one convolution of each stage, affine folded in as the ResNet
    /// does), on inputs shaped like its activations (non-negative, after a relu).
    #[test]
    fn matches_the_direct_convolution_with_dlibs_weights() {
        let vb = crate::models::ModelSource::Embedded
            .var_builder(crate::models::DLIB_RESNET, &Device::Cpu)
            .unwrap();
        for ((side, c), layer) in SHAPES.into_iter().zip([0, 4, 8, 11]) {
            let vb = vb.pp(format!("layers.{layer}.conv2"));
            let w = vb.get((c, c, 3, 3), "weight").unwrap();
            let bias = vb.get(c, "bias").unwrap();
            let direct = Conv2d::new(w.clone(), Some(bias.clone()), 1, 1).unwrap();
            let b = 2;
            let x: Vec<f32> = random(b * c * side * side, 5)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            let xt = Tensor::from_vec(x.clone(), (b, c, side, side), &Device::Cpu).unwrap();
            let want = values(&direct.forward_act(&xt, Act::Relu).unwrap());
            let tile = Tile::for_side(side).unwrap();
            let weight = values(&w);
            let wg = WinogradConv::new(&weight, &values(&bias), c, c, tile);
            let got = wg.forward(&weight, &x, b, side, side, Act::Relu);
            let err = relative_error(&got, &want);
            assert!(err < 2e-5, "layers.{layer} {tile:?}: error {err}");
        }
    }

    /// The result does not depend on the thread count, nor on which tiles share a block.
    #[test]
    fn avx512_product_gives_the_avx2_bits() {
        if !crate::dconv::wide() {
            eprintln!("SKIPPED: no AVX-512F on this CPU");
            return;
        }
        // Row tails of 4 and 1, column tails of 32, 16 and 8 after blocks of 48.
        for (i, &(c_out, c_in, cols)) in [(32, 32, 104), (13, 64, 56), (5, 7, 8), (8, 3, 128)]
            .iter()
            .enumerate()
        {
            let u = random(c_out * c_in, 70 + i as u64);
            let v = random(c_in * cols, 80 + i as u64);
            let mut want = vec![0f32; c_out * cols];
            let mut got = vec![1f32; c_out * cols];
            // SAFETY: AVX-512F, AVX2 and FMA are present (wide()); u is c_out x c_in, v c_in
            // rows of `cols`, the outputs c_out rows of `cols`.
            unsafe {
                let args = (v.as_ptr(), cols, cols);
                avx2::product(
                    &u,
                    c_out,
                    c_in,
                    args.0,
                    args.1,
                    args.2,
                    want.as_mut_ptr(),
                    cols,
                );
                avx2::product512(
                    &u,
                    c_out,
                    c_in,
                    args.0,
                    args.1,
                    args.2,
                    got.as_mut_ptr(),
                    cols,
                );
            }
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "c_out {c_out} c_in {c_in} cols {cols}"
            );
            assert!(want.iter().all(|v| *v != 0.0));
        }
    }

    #[test]
    fn same_result_for_any_threads_and_batch() {
        let (side, c) = (17, 64);
        let direct = conv(c, c, 1);
        let weight = values(direct.weight());
        let wg = WinogradConv::new(&weight, &random(c, 2), c, c, Tile::F6);
        let b = 16;
        let x = random(b * c * side * side, 3);
        let all = serial(|| wg.forward(&weight, &x, b, side, side, Act::Relu));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        assert!(pool.install(|| wg.forward(&weight, &x, b, side, side, Act::Relu)) == all);
        let per = c * side * side;
        for i in [0, 7, 15] {
            let one = wg.forward(
                &weight,
                &x[i * per..(i + 1) * per],
                1,
                side,
                side,
                Act::Relu,
            );
            assert!(
                one == all[i * per..(i + 1) * per],
                "image {i} alone differs"
            );
        }
    }

    fn thread_cpu_seconds() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }

    /// Thread CPU time per image of one convolution of each ResNet stage shape, single-threaded,
    /// direct and with each tile (min of 7 runs): `cargo test --release --lib winograd::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let only = std::env::var("TIMING_ONLY").ok();
        let reps: usize = std::env::var("TIMING_REPS").map_or(7, |r| r.parse().unwrap());
        for (side, c) in [(35, 32), (17, 64), (8, 128), (3, 256)] {
            if only.as_ref().is_some_and(|o| *o != side.to_string()) {
                continue;
            }
            for b in [1usize, 16] {
                let x = Tensor::from_vec(
                    random(b * c * side * side, 7),
                    (b, c, side, side),
                    &Device::Cpu,
                )
                .unwrap();
                let mut line = format!("{side}x{side}x{c} b{b:<2}");
                for tile in [None, Some(Tile::F2), Some(Tile::F4), Some(Tile::F6)] {
                    let mut cv = conv(c, c, 3);
                    if let Some(tile) = tile {
                        cv = cv.winograd(tile);
                    }
                    let best = (0..reps)
                        .map(|_| {
                            let t0 = thread_cpu_seconds();
                            serial(|| cv.forward_act(&x, Act::Relu).unwrap());
                            thread_cpu_seconds() - t0
                        })
                        .fold(f64::INFINITY, f64::min);
                    let name = tile.map_or("direct".to_string(), |t| format!("{t:?}"));
                    line.push_str(&format!("  {name} {:.1} us", best * 1e6 / b as f64));
                }
                eprintln!("{line}");
            }
        }
    }
}
