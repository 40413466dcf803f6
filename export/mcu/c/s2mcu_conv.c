/* s2mcu kernels: CONV_2D / FULLY_CONNECTED, dense.
 * See s2mcu.h and s2mcu_internal.h. Written for s2nn_keras (export.mcu). */
#include "s2mcu_internal.h"

/* ======================================================================
 * CONV_2D / FULLY_CONNECTED, dense: im2col of one output pixel (padding =
 * the input zero point, so it adds 0 to sum (x - zp) w), then one dot
 * product per output channel; the bias holds -zp * sum(w).
 * ==================================================================== */

size_t s2_conv_dense_scratch(const s2_conv_t *p) {
  size_t k = (size_t)p->k_h * p->k_w * p->in_c;
#if defined(S2_DSP)
  /* two widened columns; with in_c % 4 != 0 the int8 column first */
  size_t k4 = (k + 3u) & ~(size_t)3u;
  return 4u * k4 + (p->in_c % 4 ? k4 : 0u);
#elif defined(S2_MVE)
  /* three im2col columns (in_c % 16 != 0), or a row of zero points */
  return p->in_c % 16 ? 3u * ((k + 15u) & ~(size_t)15u) : (size_t)p->in_c;
#else
  return k + 16;
#endif
}

/* Copies the receptive field of output pixel (oy, ox) into col (K bytes). */
static const int8_t *s2_im2col(const s2_conv_t *p, const int8_t *in, int oy, int ox, int8_t *col) {
  const int C = p->in_c;
  const int iy0 = oy * p->s_h - p->pad_t, ix0 = ox * p->s_w - p->pad_l;
  if (p->k_h == 1 && p->k_w == 1 && iy0 >= 0 && ix0 >= 0)
    return in + ((size_t)iy0 * p->in_w + ix0) * C;   /* 1x1: the pixel itself */
  int8_t *dst = col;
  for (int ky = 0; ky < p->k_h; ky++) {
    const int iy = iy0 + ky * p->d_h;
    for (int kx = 0; kx < p->k_w; kx++) {
      const int ix = ix0 + kx * p->d_w;
      if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
        for (int c = 0; c < C; c++) dst[c] = (int8_t)p->in_zp;
      } else {
        const int8_t *src = in + ((size_t)iy * p->in_w + ix) * C;
        if (p->d_w == 1 && kx + 1 < p->k_w && ix + 1 < p->in_w) {
          /* contiguous run of taps along x */
          int run = 1;
          while (kx + run < p->k_w && ix + run < p->in_w) run++;
#ifdef S2_MVE
          int n = run * C;
          const int8_t *s = src;
          int8_t *d = dst;
          while (n > 0) {
            mve_pred16_t pr = vctp8q(n);
            vstrbq_p_s8(d, vldrbq_z_s8(s, pr), pr);
            s += 16; d += 16; n -= 16;
          }
#else
          for (int c = 0; c < run * C; c++) dst[c] = src[c];
#endif
          dst += run * C;
          kx += run - 1;
          continue;
        }
        for (int c = 0; c < C; c++) dst[c] = src[c];
      }
      dst += C;
    }
  }
  return col;
}

/* One output value: requantized, or a spike code (S2_OUT_CODES: the channel's
 * threshold on the accumulator, export/mcu/spike_out.py). */
static inline int8_t s2_conv_value(const s2_conv_t *p, int32_t acc, int oc) {
  if (p->flags & S2_OUT_CODES) return acc >= p->thr[oc] ? p->out_on : p->out_off;
  return (int8_t)s2_requant(acc, p->mult[oc], p->shift[oc], p->out_zp, p->act_min, p->act_max);
}


/* Few taps (S2_DENSE_HWIO): per output pixel and tap t, acc[:] += x[t] * w[t][:]
 * (the column holds the codes, zero-point padded; the bias carries -zp sum w).
 * Portable C (the host); Helium and the DSP extension use S2_DENSE_PAIRS.
 * Its own function, so the main dense loop keeps its registers. */
#if !defined(S2_MVE) && !defined(S2_DSP)
static void __attribute__((noinline)) s2_conv_dense_hwio(const s2_conv_t *p, const int8_t *restrict in,
                                                         int8_t *restrict out, int8_t *restrict col) {
  const int K = p->k_h * p->k_w * p->in_c;
  const int OC = p->out_c;
  /* few taps: per output pixel and tap t, acc[:] += x[t] * w[t][:] (the
   * column holds the codes, zero-point padded; the bias carries -zp sum w) */
  const int8_t *restrict w = p->w;
  const int32_t *restrict bias = p->bias;
  for (int oy = 0; oy < p->out_h; oy++) {
    for (int ox = 0; ox < p->out_w; ox++) {
      const int8_t *x = s2_im2col(p, in, oy, ox, col);
      int32_t acc[64];
      for (int oc0 = 0; oc0 < OC; oc0 += 64) {
        const int nb = S2_MIN(64, OC - oc0);
        for (int o = 0; o < nb; o++) acc[o] = bias[oc0 + o];
        for (int t = 0; t < K; t++) {
          const int32_t xv = x[t];
          const int8_t *wt = w + (size_t)t * OC + oc0;
          for (int o = 0; o < nb; o++) acc[o] += xv * wt[o];
        }
        for (int o = 0; o < nb; o++) out[oc0 + o] = s2_conv_value(p, acc[o], oc0 + o);
      }
      out += OC;
    }
  }
}
#endif

#ifdef S2_MVE
/* ----------------------------------------------------------------------
 * Helium, S2_DENSE_PAIRS: 3 output pixels x 2 output channels per pass
 * (several pixels per weight load, as CMSIS-NN): per 16 inputs 2 weight
 * and 3 input loads, 6 VMLADAVA (12 instructions per 96 MACs). Weights:
 * per pair of channels, per 16 inputs, 16 of each channel (K padded to 16
 * with zeros, an odd last channel paired with zeros). Inputs: with in_c %
 * 16 == 0 each tap of each pixel read in place (padding: a row of zero
 * points); else im2col columns of the 3 pixels.
 * -------------------------------------------------------------------- */
/* The dot products of a channel pair with 3 pixels over `taps` taps of
 * `chunks` x 16 inputs each: tab holds per tap the 3 pixels' input pointers. */
#define S2_DOT3X2(a00, a01, a10, a11, a20, a21, TAB, W, TAPS, CHUNKS)                               \
  do {                                                                                            \
    int8x16_t w0_, w1_, v_;                                                                       \
    const int8_t *x0_, *x1_, *x2_;                                                                \
    const int8_t *const *tab_ = (TAB);                                                            \
    const int8_t *w_ = (W);                                                                       \
    uint32_t k_ = (uint32_t)(TAPS);                                                               \
    __asm__ volatile("0:\n"                                                                       \
                     "ldr %[x0], [%[tab]], #4\n"                                                  \
                     "ldr %[x1], [%[tab]], #4\n"                                                  \
                     "ldr %[x2], [%[tab]], #4\n"                                                  \
                     "dls lr, %[n]\n"                                                             \
                     "1:\n"                                                                       \
                     "vldrb.8 %q[w0], [%[w]], #32\n"                                              \
                     "vldrb.8 %q[w1], [%[w], #-16]\n"                                             \
                     "vldrb.8 %q[v], [%[x0]], #16\n"                                              \
                     "vmladava.s8 %[a00], %q[v], %q[w0]\n"                                        \
                     "vmladava.s8 %[a01], %q[v], %q[w1]\n"                                        \
                     "vldrb.8 %q[v], [%[x1]], #16\n"                                              \
                     "vmladava.s8 %[a10], %q[v], %q[w0]\n"                                        \
                     "vmladava.s8 %[a11], %q[v], %q[w1]\n"                                        \
                     "vldrb.8 %q[v], [%[x2]], #16\n"                                              \
                     "vmladava.s8 %[a20], %q[v], %q[w0]\n"                                        \
                     "vmladava.s8 %[a21], %q[v], %q[w1]\n"                                        \
                     "le lr, 1b\n"                                                                \
                     "subs %[k], %[k], #1\n"                                                      \
                     "bne 0b\n"                                                                   \
                     : [a00] "+Te"(a00), [a01] "+Te"(a01), [a10] "+Te"(a10), [a11] "+Te"(a11),        \
                       [a20] "+Te"(a20), [a21] "+Te"(a21), [tab] "+r"(tab_), [w] "+r"(w_), [k] "+r"(k_), \
                       [x0] "=&r"(x0_), [x1] "=&r"(x1_), [x2] "=&r"(x2_), [w0] "=&w"(w0_),          \
                       [w1] "=&w"(w1_), [v] "=&w"(v_)                                             \
                     : [n] "r"(CHUNKS)                                                            \
                     : "lr", "memory", "cc");                                                     \
  } while (0)

/* The output stage of up to 16 channels (from oc) of up to 3 pixels whose
 * sums are acc[pixel][16]: per 4 channels one vector, its bias, multiplier
 * and shift loaded once for the 3 pixels; mode 0 TFLite's requantization,
 * 1 the same with S2_RQ_RIGHT's short form, 2 spike codes (acc >= thr). */
S2_INL void s2_stage16(const s2_conv_t *p, const int32_t (*acc)[16], int oc, int nc, int np, int8_t *out,
                       const int mode) {
  const int OC = p->out_c;
  const int32x4_t zp = vdupq_n_s32(p->out_zp), lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max);
  for (int c = 0; c < nc; c += 4) {
    const mve_pred16_t pr = vctp32q((uint32_t)(nc - c));
    const int32x4_t b = vldrwq_z_s32(p->bias + oc + c, pr);
    int32x4_t m = b, sh = b, t = b;
    if (mode == 2) t = vldrwq_z_s32(p->thr + oc + c, pr);
    else m = vldrwq_z_s32(p->mult + oc + c, pr), sh = vldrbq_z_s32(p->shift + oc + c, pr);
    for (int j = 0; j < np; j++) {
      int32x4_t v = vaddq_s32(vld1q_s32(acc[j] + c), b);
      if (mode == 2) {
        v = vpselq_s32(vdupq_n_s32(p->out_on), vdupq_n_s32(p->out_off), vcmpgeq_s32(v, t));
      } else {
        v = mode == 1 ? s2_mbqm_right_v(v, m, sh) : s2_mbqm_v(v, m, sh);
        v = vminq_s32(vmaxq_s32(vaddq_s32(v, zp), lo), hi);
      }
      vstrbq_p_s32(out + (size_t)j * OC + oc + c, v, pr);
    }
  }
}

/* Every channel pair of 3 pixels (their input pointers per tap in tab),
 * 16 channels' sums at a time in acc, then their output stage. */
S2_INL void s2_pairs_mve_t(const s2_conv_t *p, const int8_t *const *tab, int ntab, int chunks, int K16, int8_t *o,
                           int np, const int mode) {
  const int OC = p->out_c;
  int32_t acc[3][16];
  const int8_t *w = p->w;
  for (int oc0 = 0; oc0 < OC; oc0 += 16) {
    const int nc = S2_MIN(16, OC - oc0);
    for (int c = 0; c < nc; c += 2, w += 2 * K16) {
      int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0, a20 = 0, a21 = 0;
      S2_DOT3X2(a00, a01, a10, a11, a20, a21, tab, w, ntab, chunks);
      acc[0][c] = a00, acc[0][c + 1] = a01, acc[1][c] = a10, acc[1][c + 1] = a11;
      acc[2][c] = a20, acc[2][c + 1] = a21;
    }
    s2_stage16(p, (const int32_t(*)[16])acc, oc0, nc, np, o, mode);
  }
}

/* (its own frame: the dot products need every register but sp and pc) */
static S2_NOINLINE void s2_pairs_mve(const s2_conv_t *p, const int8_t *const *tab, int ntab, int chunks, int K16,
                                     int8_t *o, int np) {
  if (p->flags & S2_OUT_CODES) s2_pairs_mve_t(p, tab, ntab, chunks, K16, o, np, 2);
  else if (p->flags & S2_RQ_RIGHT) s2_pairs_mve_t(p, tab, ntab, chunks, K16, o, np, 1);
  else s2_pairs_mve_t(p, tab, ntab, chunks, K16, o, np, 0);
}

static void s2_conv_dense_pairs(const s2_conv_t *p, const int8_t *restrict in, int8_t *restrict out,
                                int8_t *restrict scratch) {
  const int C = p->in_c, OC = p->out_c, taps = p->k_h * p->k_w, K = taps * C;
  const int K16 = (K + 15) & ~15, direct = C % 16 == 0;
  const int N = p->out_h * p->out_w;
  const int8_t *xp[taps][3];
  const int ntab = direct ? taps : 1, chunks = direct ? C / 16 : K16 / 16;
  if (direct) for (int c = 0; c < C; c++) scratch[c] = (int8_t)p->in_zp;
  for (int n0 = 0; n0 < N; n0 += 3) {
    const int np = S2_MIN(3, N - n0);
    for (int j = 0; j < 3; j++) {
      const int n = n0 + S2_MIN(j, np - 1);
      const int oy = n / p->out_w, ox = n % p->out_w;
      if (!direct) {   /* a copy: the dot product reads K16 bytes */
        int8_t *col = scratch + j * K16;
        const int iy0 = oy * p->s_h - p->pad_t, ix0 = ox * p->s_w - p->pad_l, row = p->k_w * C;
        if (p->d_w == 1 && row <= 16 && ix0 >= 0 && ix0 + p->k_w <= p->in_w) {
          /* an image stem: each kernel row one predicated copy (or zero points) */
          const mve_pred16_t pr = vctp8q((uint32_t)row);
          for (int ky = 0; ky < p->k_h; ky++) {
            const int iy = iy0 + ky * p->d_h;
            const int8x16_t v = iy < 0 || iy >= p->in_h ? vdupq_n_s8((int8_t)p->in_zp)
                                                         : vldrbq_z_s8(in + ((size_t)iy * p->in_w + ix0) * C, pr);
            vstrbq_p_s8(col + ky * row, v, pr);
          }
        } else {
          const int8_t *x = s2_im2col(p, in, oy, ox, col);
          if (x != col) __builtin_memcpy(col, x, (size_t)K);
        }
        xp[0][j] = col;
        continue;
      }
      const int iy0 = oy * p->s_h - p->pad_t, ix0 = ox * p->s_w - p->pad_l;
      for (int ky = 0, t = 0; ky < p->k_h; ky++) {
        const int iy = iy0 + ky * p->d_h;
        for (int kx = 0; kx < p->k_w; kx++, t++) {
          const int ix = ix0 + kx * p->d_w;
          xp[t][j] = (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) ? scratch
                                                                           : in + ((size_t)iy * p->in_w + ix) * C;
        }
      }
    }
    s2_pairs_mve(p, &xp[0][0], ntab, chunks, K16, out + (size_t)n0 * OC, np);
  }
}
#endif

#ifdef S2_DSP
/* ----------------------------------------------------------------------
 * Cortex-M4, S2_DENSE_PAIRS: 2 output pixels x 2 output channels per
 * pass: per 4 inputs one LDRD of 2 weight words (channel pairs interleaved
 * per word, K padded to 4 with zeros), 4 SXTB16 (even and odd bytes of
 * each), 2 LDRD of the widened inputs (the 2 pixels' int16 pairs (x0, x2),
 * (x1, x3), interleaved per 4 inputs), 8 SMLAD: 17 instructions per 16 MACs.
 * -------------------------------------------------------------------- */
static void s2_dot2x2(const uint32_t *x, const int8_t *w, int groups, int32_t *a) {
  int32_t a00 = a[0], a01 = a[1], a10 = a[2], a11 = a[3];
  uint32_t we0, wo0, we1, wo1, t0, t1;
  __asm__ volatile("1:\n"
                   "ldrd %[t0], %[t1], [%[w]], #8\n"
                   "sxtb16 %[we0], %[t0]\n"
                   "sxtb16 %[wo0], %[t0], ror #8\n"
                   "sxtb16 %[we1], %[t1]\n"
                   "sxtb16 %[wo1], %[t1], ror #8\n"
                   "ldrd %[t0], %[t1], [%[x]], #8\n"
                   "smlad %[a00], %[we0], %[t0], %[a00]\n"
                   "smlad %[a00], %[wo0], %[t1], %[a00]\n"
                   "smlad %[a01], %[we1], %[t0], %[a01]\n"
                   "smlad %[a01], %[wo1], %[t1], %[a01]\n"
                   "ldrd %[t0], %[t1], [%[x]], #8\n"
                   "smlad %[a10], %[we0], %[t0], %[a10]\n"
                   "smlad %[a10], %[wo0], %[t1], %[a10]\n"
                   "smlad %[a11], %[we1], %[t0], %[a11]\n"
                   "smlad %[a11], %[wo1], %[t1], %[a11]\n"
                   "subs %[n], %[n], #1\n"
                   "bne 1b\n"
                   : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [x] "+r"(x), [w] "+r"(w),
                     [n] "+r"(groups), [we0] "=&r"(we0), [wo0] "=&r"(wo0), [we1] "=&r"(we1), [wo1] "=&r"(wo1),
                     [t0] "=&r"(t0), [t1] "=&r"(t1)
                   :
                   : "memory", "cc");
  a[0] = a00, a[1] = a01, a[2] = a10, a[3] = a11;
}

/* 4 int8 inputs as SMLAD operands: (x0, x2), (x1, x3) as int16 pairs */
static inline void s2_widen4(uint32_t v, uint32_t *dst) {
  dst[0] = __sxtb16(v);
  dst[1] = s2_sxtb16_ror8(v);
}

static void s2_conv_dense_pairs(const s2_conv_t *p, const int8_t *restrict in, int8_t *restrict out,
                                int8_t *restrict scratch) {
  const int C = p->in_c, OC = p->out_c, taps = p->k_h * p->k_w, K = taps * C, K4 = (K + 3) & ~3;
  const int N = p->out_h * p->out_w;
  uint32_t *cols = (uint32_t *)(void *)scratch;          /* 4 words per 4 inputs: pixel 0 (e, o), pixel 1 (e, o) */
  int8_t *col8 = scratch + 4 * K4;                      /* in_c % 4 != 0: the int8 column first */
  const uint32_t zp4 = (uint32_t)(uint8_t)p->in_zp * 0x01010101u;
  const int32_t zp = p->out_zp, lo = p->act_min, hi = p->act_max;
  for (int n0 = 0; n0 < N; n0 += 2) {
    const int np = S2_MIN(2, N - n0);
    for (int j = 0; j < 2; j++) {
      const int n = n0 + S2_MIN(j, np - 1);
      const int oy = n / p->out_w, ox = n % p->out_w;
      uint32_t *dst = cols + 2 * j;
      if (C % 4) {
        const int8_t *x = s2_im2col(p, in, oy, ox, col8);
        for (int k = 0; k < K4; k += 4, dst += 4) {
          uint32_t v = 0;
          for (int b = 0; b < 4; b++) v |= (uint32_t)(uint8_t)(k + b < K ? x[k + b] : 0) << (8 * b);
          s2_widen4(v, dst);
        }
        continue;
      }
      const int iy0 = oy * p->s_h - p->pad_t, ix0 = ox * p->s_w - p->pad_l;
      for (int ky = 0; ky < p->k_h; ky++) {
        const int iy = iy0 + ky * p->d_h;
        for (int kx = 0; kx < p->k_w; kx++) {
          const int ix = ix0 + kx * p->d_w;
          if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
            for (int c = 0; c < C; c += 4, dst += 4) s2_widen4(zp4, dst);
            continue;
          }
          const int8_t *src = in + ((size_t)iy * p->in_w + ix) * C;
          for (int c = 0; c < C; c += 4, dst += 4) {
            uint32_t v;
            __builtin_memcpy(&v, src + c, 4);
            s2_widen4(v, dst);
          }
        }
      }
    }
    int8_t *o = out + (size_t)n0 * OC;
    for (int oc = 0; oc < OC; oc += 2) {
      int32_t a[4] = {0, 0, 0, 0};
      s2_dot2x2(cols, p->w + (size_t)oc * K4, K4 / 4, a);
      for (int j = 0; j < np; j++) {
        for (int c = 0; c < 2 && oc + c < OC; c++) {
          const int32_t acc = a[2 * j + c] + p->bias[oc + c];
          int8_t v;
          if (p->flags & S2_OUT_CODES) v = acc >= p->thr[oc + c] ? p->out_on : p->out_off;
          else if (p->flags & S2_RQ_RIGHT) v = s2_clamp8(s2_mbqm_right(acc, p->mult[oc + c], -p->shift[oc + c]) + zp, lo, hi);
          else v = (int8_t)s2_requant(acc, p->mult[oc + c], p->shift[oc + c], zp, lo, hi);
          o[(size_t)j * OC + oc + c] = v;
        }
      }
    }
  }
}
#endif

void s2_conv_dense(const s2_conv_t *p, const int8_t *restrict in, int8_t *restrict out, void *restrict scratch) {
  int8_t *col = (int8_t *)scratch;
#if defined(S2_MVE) || defined(S2_DSP)
  /* the generator gives every dense conv of these paths paired weights */
  s2_conv_dense_pairs(p, in, out, col);
#else
  const int K = p->k_h * p->k_w * p->in_c;
  const int OC = p->out_c;
  if (p->flags & S2_DENSE_HWIO) {
    s2_conv_dense_hwio(p, in, out, col);
    return;
  }
  for (int oy = 0; oy < p->out_h; oy++) {
    for (int ox = 0; ox < p->out_w; ox++) {
      const int8_t *x = s2_im2col(p, in, oy, ox, col);
      for (int oc = 0; oc < OC; oc++) {
        const int8_t *w0 = p->w + (size_t)oc * K;
        int32_t acc = p->bias[oc];
        for (int k = 0; k < K; k++) acc += x[k] * w0[k];
        out[oc] = s2_conv_value(p, acc, oc);
      }
      out += OC;
    }
  }
#endif
}
