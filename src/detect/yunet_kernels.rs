//! CPU kernels of the YuNet port, on HWC (row, column, channel) f32 maps, the layout
//! libfacedetection itself uses (its depth-wise weights are tap-major `[9][C]` for that reason).
//!
//! Work is split over fixed bands of output rows whose size depends only on the map's shape, and
//! every output value is computed by the same sequence of operations whatever band it falls in,
//! so the results are bit-identical for any rayon thread count. The loops are written to
//! auto-vectorise over channels; where the CPU has AVX2 the same code is compiled a second time
//! for it (no FMA contraction, so the numbers are identical on either path).

use rayon::prelude::*;

/// An HWC feature map.
#[derive(Debug, Clone, PartialEq)]
pub struct Map {
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// `h * w * c` values, row-major HWC.
    pub data: Vec<f32>,
}

/// Output rows per parallel task for a map of `w` columns and `c` channels (about 16k values,
/// fixed by the shape, never by the thread count).
fn band_rows(w: usize, c: usize) -> usize {
    (16384 / (w * c).max(1)).max(1)
}

/// Runs `row(y, out_row)` for every output row, in parallel over fixed bands of rows.
fn for_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if row_len == 0 {
        return;
    }
    let band = band_rows(row_len, 1) * row_len;
    out.par_chunks_mut(band).enumerate().for_each(|(b, chunk)| {
        let first = b * (band / row_len);
        for (k, row) in chunk.chunks_mut(row_len).enumerate() {
            f(first + k, row);
        }
    });
}

/// Compiles `$body` (an `#[inline(always)]` function) plainly and with AVX2, and picks the AVX2
/// copy at run time when the CPU has it.
macro_rules! multiversion {
    ($name:ident, $avx:ident, $body:ident, ($($arg:ident : $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx($($arg: $ty),*) {
            $body($($arg),*)
        }

        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { $avx($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// `P` consecutive output pixels of a 1x1 conv with `N` outputs: for each pixel,
/// `acc[o] = sum_i x[i] * wt[i*N + o]` (i ascending), then `+ bias[o]`, then the optional ReLU.
/// Several pixels share each weight load; every value is computed the same way whatever `P`.
#[inline(always)]
fn pw_pixels<const N: usize, const P: usize>(
    x: &[f32],
    c_in: usize,
    wt: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let mut acc = [[0f32; N]; P];
    for i in 0..c_in {
        let wr: &[f32; N] = wt[i * N..i * N + N].try_into().expect("N weights");
        for p in 0..P {
            let xv = x[p * c_in + i];
            for o in 0..N {
                acc[p][o] += xv * wr[o];
            }
        }
    }
    for p in 0..P {
        for o in 0..N {
            let v = acc[p][o] + bias[o];
            out[p * N + o] = if relu { v.max(0.0) } else { v };
        }
    }
}

/// One output pixel of a 1x1 conv with any number of outputs (as [`pw_pixels`]).
#[inline(always)]
fn pw_pixel_dyn(x: &[f32], wt: &[f32], bias: &[f32], relu: bool, out: &mut [f32]) {
    let n = out.len();
    out.iter_mut().for_each(|v| *v = 0.0);
    for (i, &xv) in x.iter().enumerate() {
        let wr = &wt[i * n..i * n + n];
        for o in 0..n {
            out[o] += xv * wr[o];
        }
    }
    for o in 0..n {
        let s = out[o] + bias[o];
        out[o] = if relu { s.max(0.0) } else { s };
    }
}

/// A row of pixels through a 1x1 conv with `N` outputs, `P` pixels at a time.
#[inline(always)]
fn pw_row_n<const N: usize, const P: usize>(
    x: &[f32],
    c_in: usize,
    wt: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let n = out.len() / N;
    let mut p = 0;
    while p + P <= n {
        pw_pixels::<N, P>(
            &x[p * c_in..],
            c_in,
            wt,
            bias,
            relu,
            &mut out[p * N..(p + P) * N],
        );
        p += P;
    }
    while p < n {
        pw_pixels::<N, 1>(
            &x[p * c_in..],
            c_in,
            wt,
            bias,
            relu,
            &mut out[p * N..(p + 1) * N],
        );
        p += 1;
    }
}

/// A row of pixels through a 1x1 conv: `x` holds `out.len() / c_out` pixels of `c_in` values.
#[inline(always)]
fn pw_row_body(x: &[f32], c_in: usize, wt: &[f32], bias: &[f32], relu: bool, out: &mut [f32]) {
    let c_out = bias.len();
    match c_out {
        16 => pw_row_n::<16, 4>(x, c_in, wt, bias, relu, out),
        32 => pw_row_n::<32, 2>(x, c_in, wt, bias, relu, out),
        64 => pw_row_n::<64, 1>(x, c_in, wt, bias, relu, out),
        _ => {
            let n = out.len() / c_out;
            for p in 0..n {
                pw_pixel_dyn(
                    &x[p * c_in..(p + 1) * c_in],
                    wt,
                    bias,
                    relu,
                    &mut out[p * c_out..(p + 1) * c_out],
                );
            }
        }
    }
}

multiversion!(pw_row, pw_row_avx2, pw_row_body, (x: &[f32], c_in: usize, wt: &[f32], bias: &[f32], relu: bool, out: &mut [f32]));

#[cfg(test)]
/// Point-wise (1x1) convolution with weights transposed to `[I][O]` (`wt[i*O + o]`), bias
/// `[O]`, optional ReLU.
pub fn pointwise(x: &Map, wt: &[f32], bias: &[f32], relu: bool) -> Map {
    let c_out = bias.len();
    debug_assert_eq!(wt.len(), x.c * c_out);
    let mut out = vec![0f32; x.h * x.w * c_out];
    let in_row = x.w * x.c;
    for_rows(&mut out, x.w * c_out, |y, row| {
        pw_row(
            &x.data[y * in_row..(y + 1) * in_row],
            x.c,
            wt,
            bias,
            relu,
            row,
        )
    });
    Map {
        h: x.h,
        w: x.w,
        c: c_out,
        data: out,
    }
}

/// One output row of a 3x3 depth-wise conv (pad 1, stride 1) with `C` channels, tap-major
/// weights `w[t*C + c]`: `bias[c]` plus the in-bounds taps in order t = 0..9 (a zero-padded tap
/// would add exactly 0). `C = 0` means the channel count is only known at run time.
#[inline(always)]
fn dw_row_n<const C: usize>(
    map: &Map,
    y: usize,
    wt: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    let (x, h, w) = (&map.data, map.h, map.w);
    let c = if C == 0 { bias.len() } else { C };
    // The input rows y-1, y, y+1 that exist, with their kernel row ky.
    let kys: Vec<usize> = (0..3).filter(|ky| y + ky != 0 && y + ky <= h).collect();
    let rows: Vec<&[f32]> = kys
        .iter()
        .map(|ky| &x[(y + ky - 1) * w * c..(y + ky) * w * c])
        .collect();
    for (xo, o) in out.chunks_exact_mut(c).enumerate() {
        if C != 0 && xo >= 1 && xo + 1 < w {
            // Interior column: all three taps of each valid row, fixed-size arrays.
            let mut acc = [0f32; C];
            acc.copy_from_slice(bias);
            for (&ky, src_row) in kys.iter().zip(&rows) {
                for kx in 0..3 {
                    let src: &[f32; C] = src_row[(xo + kx - 1) * C..(xo + kx) * C]
                        .try_into()
                        .expect("C values");
                    let tap: &[f32; C] = wt[(ky * 3 + kx) * C..(ky * 3 + kx + 1) * C]
                        .try_into()
                        .expect("C weights");
                    for k in 0..C {
                        acc[k] += src[k] * tap[k];
                    }
                }
            }
            for k in 0..C {
                o[k] = if relu { acc[k].max(0.0) } else { acc[k] };
            }
            continue;
        }
        o.copy_from_slice(bias);
        for (&ky, src_row) in kys.iter().zip(&rows) {
            for kx in 0..3 {
                let xx = xo + kx;
                if xx == 0 || xx > w {
                    continue;
                }
                let src = &src_row[(xx - 1) * c..xx * c];
                let tap = &wt[(ky * 3 + kx) * c..(ky * 3 + kx + 1) * c];
                for ((a, &v), &k) in o.iter_mut().zip(src).zip(tap) {
                    *a += v * k;
                }
            }
        }
        if relu {
            for v in o.iter_mut() {
                *v = v.max(0.0);
            }
        }
    }
}

/// [`dw_row_n`] specialised for the channel counts YuNet uses.
#[inline(always)]
fn dw_row_body(map: &Map, y: usize, wt: &[f32], bias: &[f32], relu: bool, out: &mut [f32]) {
    match bias.len() {
        16 => dw_row_n::<16>(map, y, wt, bias, relu, out),
        32 => dw_row_n::<32>(map, y, wt, bias, relu, out),
        64 => dw_row_n::<64>(map, y, wt, bias, relu, out),
        _ => dw_row_n::<0>(map, y, wt, bias, relu, out),
    }
}

multiversion!(dw_row, dw_row_avx2, dw_row_body, (map: &Map, y: usize, wt: &[f32], bias: &[f32], relu: bool, out: &mut [f32]));

#[cfg(test)]
/// Depth-wise 3x3 convolution, pad 1, stride 1, tap-major weights `[9][C]`, bias `[C]`,
/// optional ReLU.
pub fn depthwise3x3(x: &Map, wt: &[f32], bias: &[f32], relu: bool) -> Map {
    debug_assert_eq!(wt.len(), 9 * x.c);
    let mut out = vec![0f32; x.data.len()];
    for_rows(&mut out, x.w * x.c, |y, row| {
        dw_row(x, y, wt, bias, relu, row)
    });
    Map {
        h: x.h,
        w: x.w,
        c: x.c,
        data: out,
    }
}

/// A `dp` pair fused: a 1x1 conv (`pw_wt` `[I][O]`, `pw_b`, no ReLU) then a 3x3 depth-wise conv
/// (`dw_w` `[9][O]`, `dw_b`, optional ReLU), over bands of rows whose size depends only on the
/// map's height. Each band computes the 1x1 rows it needs (its rows and one more on either side)
/// into a local buffer, so the intermediate map is never stored whole; the values are exactly
/// those of [`pointwise`] followed by [`depthwise3x3`].
pub fn pointwise_depthwise(x: &Map, pw: (&[f32], &[f32]), dw: (&[f32], &[f32]), relu: bool) -> Map {
    let (c, h, w) = (pw.1.len(), x.h, x.w);
    let mut out = vec![0f32; h * w * c];
    let row_len = w * c;
    if row_len == 0 || h == 0 {
        return Map { h, w, c, data: out };
    }
    let band = h.div_ceil(16).max(16);
    let in_row = w * x.c;
    out.par_chunks_mut(band * row_len)
        .enumerate()
        .for_each(|(b, chunk)| {
            let y0 = b * band;
            let y1 = (y0 + band).min(h);
            let (r0, r1) = (y0.saturating_sub(1), (y1 + 1).min(h));
            let mut tmp = vec![0f32; (r1 - r0) * row_len];
            for (r, t) in (r0..r1).zip(tmp.chunks_exact_mut(row_len)) {
                pw_row(
                    &x.data[r * in_row..(r + 1) * in_row],
                    x.c,
                    pw.0,
                    pw.1,
                    false,
                    t,
                );
            }
            // The band's borders are the map's borders or rows the band itself computed, so
            // the depth-wise conv's zero padding falls only on the map's real borders.
            let t = Map {
                h: r1 - r0,
                w,
                c,
                data: tmp,
            };
            for (y, o) in (y0..y1).zip(chunk.chunks_exact_mut(row_len)) {
                dw_row(&t, y - r0, dw.0, dw.1, relu, o);
            }
        });
    Map { h, w, c, data: out }
}

/// 2x2 stride-2 max-pool (the maps are always even).
pub fn max_pool2(x: &Map) -> Map {
    let (h, w, c) = (x.h / 2, x.w / 2, x.c);
    let mut out = vec![0f32; h * w * c];
    for_rows(&mut out, w * c, |y, row| {
        let r0 = &x.data[2 * y * x.w * c..(2 * y + 1) * x.w * c];
        let r1 = &x.data[(2 * y + 1) * x.w * c..(2 * y + 2) * x.w * c];
        for (xo, o) in row.chunks_exact_mut(c).enumerate() {
            let a = 2 * xo * c;
            for (k, v) in o.iter_mut().enumerate() {
                *v = r0[a + k]
                    .max(r0[a + c + k])
                    .max(r1[a + k].max(r1[a + c + k]));
            }
        }
    });
    Map { h, w, c, data: out }
}

/// `up(coarse) + fine`: nearest x2 upsampling of `coarse` added to `fine` (twice its size).
pub fn upsample2_add(coarse: &Map, fine: &Map) -> Map {
    let c = fine.c;
    let mut out = vec![0f32; fine.data.len()];
    for_rows(&mut out, fine.w * c, |y, row| {
        let src = &coarse.data[(y / 2) * coarse.w * c..(y / 2 + 1) * coarse.w * c];
        let f = &fine.data[y * fine.w * c..(y + 1) * fine.w * c];
        for (xo, (o, fp)) in row.chunks_exact_mut(c).zip(f.chunks_exact(c)).enumerate() {
            let s = &src[(xo / 2) * c..(xo / 2 + 1) * c];
            for ((v, &a), &b) in o.iter_mut().zip(s).zip(fp) {
                *v = a + b;
            }
        }
    });
    Map {
        h: fine.h,
        w: fine.w,
        c,
        data: out,
    }
}

/// Map size of the first layer's output for an `h x w` image: the image zero-padded to a
/// multiple of 32, halved.
pub fn first_layer_size(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(32) * 16, w.div_ceil(32) * 16)
}

/// Fills one row `r` of the space-to-depth map (27 channels per pixel, `(ky*3 + kx)*3 + ch`):
/// `img[2r+ky-1][2c+kx-1][ch]` with ch = B, G, R, 0 outside the image. `img` holds BGR bytes,
/// or RGB bytes when `rgb` (read in reverse).
fn s2d_row(img: &[u8], rgb: bool, h: usize, w: usize, r: usize, out: &mut [f32]) {
    let (b, r_) = if rgb { (2, 0) } else { (0, 2) };
    for (c, px) in out.chunks_exact_mut(27).enumerate() {
        for ky in 0..3 {
            let y = (2 * r + ky).wrapping_sub(1);
            for kx in 0..3 {
                let x = (2 * c + kx).wrapping_sub(1);
                let t = (ky * 3 + kx) * 3;
                if y < h && x < w {
                    let p = &img[(y * w + x) * 3..(y * w + x) * 3 + 3];
                    px[t] = p[b] as f32;
                    px[t + 1] = p[1] as f32;
                    px[t + 2] = p[r_] as f32;
                } else {
                    px[t..t + 3].iter_mut().for_each(|v| *v = 0.0);
                }
            }
        }
    }
}

/// The space-to-depth map with libfacedetection's 32 channels (27 real, 5 zero): what its
/// first layer's 1x1 conv reads. Only for checks; [`first_layer`] builds it a row at a time.
pub fn space_to_depth(bgr: &[u8], h: usize, w: usize) -> Map {
    let (rows, cols) = first_layer_size(h, w);
    let mut data = vec![0f32; rows * cols * 32];
    let mut row = vec![0f32; cols * 27];
    for r in 0..rows {
        s2d_row(bgr, false, h, w, r, &mut row);
        for (dst, src) in data[r * cols * 32..(r + 1) * cols * 32]
            .chunks_exact_mut(32)
            .zip(row.chunks_exact(27))
        {
            dst[..27].copy_from_slice(src);
        }
    }
    Map {
        h: rows,
        w: cols,
        c: 32,
        data,
    }
}

/// The first layer, a 3x3 stride-2 pad-1 conv on the BGR bytes zero-padded to a multiple of 32,
/// computed as libfacedetection does: space-to-depth (27 channels) then a 1x1 conv with
/// `wt` = `[27][O]`, bias, ReLU. `img` is BGR, or RGB when `rgb`.
pub fn first_layer(img: &[u8], rgb: bool, h: usize, w: usize, wt: &[f32], bias: &[f32]) -> Map {
    let (rows, cols) = first_layer_size(h, w);
    let c_out = bias.len();
    let mut out = vec![0f32; rows * cols * c_out];
    for_rows(&mut out, cols * c_out, |r, row| {
        let mut s2d = vec![0f32; cols * 27];
        s2d_row(img, rgb, h, w, r, &mut s2d);
        pw_row(&s2d, 27, wt, bias, true, row);
    });
    Map {
        h: rows,
        w: cols,
        c: c_out,
        data: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(h: usize, w: usize, c: usize, seed: u32) -> Map {
        let data = (0..h * w * c)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect();
        Map { h, w, c, data }
    }

    #[test]
    fn depthwise_matches_a_naive_loop() {
        let x = map(5, 7, 3, 1);
        let wt: Vec<f32> = (0..27).map(|i| i as f32 * 0.1 - 1.3).collect();
        let bias = [0.5, -0.25, 0.0];
        let y = depthwise3x3(&x, &wt, &bias, false);
        for r in 0..5 {
            for c in 0..7 {
                for ch in 0..3 {
                    let mut v = bias[ch];
                    for t in 0..9 {
                        let (yy, xx) = (r as isize + t / 3 - 1, c as isize + t % 3 - 1);
                        if (0..5).contains(&yy) && (0..7).contains(&xx) {
                            v +=
                                x.data[((yy * 7 + xx) * 3) as usize + ch] * wt[t as usize * 3 + ch];
                        }
                    }
                    assert_eq!(y.data[(r * 7 + c) * 3 + ch], v);
                }
            }
        }
    }

    #[test]
    fn fused_pair_equals_the_two_layers() {
        for (h, w) in [(1, 3), (17, 5), (40, 9)] {
            let x = map(h, w, 16, 3);
            let wt: Vec<f32> = (0..16 * 32)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let b: Vec<f32> = (0..32).map(|i| i as f32 * 0.01).collect();
            let dw: Vec<f32> = (0..9 * 32)
                .map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0)
                .collect();
            let db: Vec<f32> = (0..32).map(|i| 0.1 - i as f32 * 0.02).collect();
            let fused = pointwise_depthwise(&x, (&wt, &b), (&dw, &db), true);
            let two = depthwise3x3(&pointwise(&x, &wt, &b, false), &dw, &db, true);
            assert_eq!(fused, two);
        }
    }

    #[test]
    fn pool_and_upsample() {
        let x = map(4, 6, 2, 7);
        let p = max_pool2(&x);
        assert_eq!((p.h, p.w, p.c), (2, 3, 2));
        let at = |m: &Map, y: usize, x: usize, c: usize| m.data[(y * m.w + x) * m.c + c];
        assert_eq!(
            at(&p, 1, 2, 1),
            at(&x, 2, 4, 1)
                .max(at(&x, 2, 5, 1))
                .max(at(&x, 3, 4, 1))
                .max(at(&x, 3, 5, 1))
        );
        let u = upsample2_add(&p, &x);
        assert_eq!(at(&u, 3, 5, 0), at(&p, 1, 2, 0) + at(&x, 3, 5, 0));
    }
}
