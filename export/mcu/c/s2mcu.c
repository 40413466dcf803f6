/* s2mcu kernels: see s2mcu.h. Written for s2nn_keras (export.mcu). */
#include "s2mcu.h"

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#include <arm_mve.h>
#define S2_MVE 1
#elif defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define S2_DSP 1
#endif

#ifdef S2_DSP
/* SXTB16 of the word rotated by 8 (bytes 1 and 3), one instruction */
static inline uint32_t s2_sxtb16_ror8(uint32_t v) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}
#endif

#ifdef S2_CHECK_SPIKES
/* host tests: values of a spike tensor that are neither of its two codes */
volatile uint32_t s2_spike_violations;
#define S2_CHECK_CODE(p, v) \
  do { if ((v) != (int8_t)(p)->in_zp && (v) != (int8_t)((p)->in_zp + (p)->spike_gain)) s2_spike_violations++; } while (0)
#else
#define S2_CHECK_CODE(p, v) ((void)0)
#endif

#define S2_MIN(a, b) ((a) < (b) ? (a) : (b))
#define S2_MAX(a, b) ((a) > (b) ? (a) : (b))

static inline int32_t s2_requant(int32_t acc, int32_t m, int shift, int32_t zp, int32_t lo, int32_t hi) {
  return s2_clamp8(s2_mbqm(acc, m, shift) + zp, lo, hi);
}

#ifdef S2_MVE
/* TFLite's MultiplyByQuantizedMultiplier on 4 lanes: VQRDMULH is SRDHM
 * exactly; RDBP rounds half away from zero, VRSHL half up, so negative
 * values are moved down by one first when a right shift follows. */
static inline int32x4_t s2_mbqm_v(int32x4_t x, int32x4_t m, int32x4_t sh) {
  int32x4_t ls = vmaxq_s32(sh, vdupq_n_s32(0));
  int32x4_t rs = vminq_s32(sh, vdupq_n_s32(0));  /* <= 0: right shift for VRSHL */
  x = vshlq_s32(x, ls);
  x = vqrdmulhq_s32(x, m);
  int32x4_t fix = vshrq_n_s32(vandq_s32(x, rs), 31);
  x = vqaddq_s32(x, fix);
  return vrshlq_s32(x, rs);
}

/* Loads and stores predicated only on a tail: `full` is a constant at every call. */
#define S2_INL static inline __attribute__((always_inline))
S2_INL int8x16_t s2_ld8(const int8_t *a, mve_pred16_t p, int full) { return full ? vldrbq_s8(a) : vldrbq_z_s8(a, p); }
S2_INL int16x8_t s2_ld16(const int8_t *a, mve_pred16_t p, int full) { return full ? vldrbq_s16(a) : vldrbq_z_s16(a, p); }
S2_INL int32x4_t s2_ld32(const int8_t *a, mve_pred16_t p, int full) { return full ? vldrbq_s32(a) : vldrbq_z_s32(a, p); }
S2_INL int32x4_t s2_ldw(const int32_t *a, mve_pred16_t p, int full) { return full ? vldrwq_s32(a) : vldrwq_z_s32(a, p); }
S2_INL void s2_st32(int8_t *a, int32x4_t v, mve_pred16_t p, int full) {
  if (full) vstrbq_s32(a, v); else vstrbq_p_s32(a, v, p);
}

S2_INL void s2_requant_store4(int8_t *out, int32x4_t acc, const int32_t *m, const int8_t *sh, int32_t zp,
                              int32_t lo, int32_t hi, mve_pred16_t p, int full) {
  int32x4_t v = s2_mbqm_v(acc, s2_ldw(m, p, full), s2_ld32(sh, p, full));
  v = vaddq_n_s32(v, zp);
  v = vmaxq_s32(v, vdupq_n_s32(lo));
  v = vminq_s32(v, vdupq_n_s32(hi));
  s2_st32(out, v, p, full);
}
#endif

/* ======================================================================
 * CONV_2D / FULLY_CONNECTED, dense: im2col of one output pixel (padding =
 * the input zero point, so it adds 0 to sum (x - zp) w), then one dot
 * product per output channel; the bias holds -zp * sum(w).
 * ==================================================================== */

size_t s2_conv_dense_scratch(const s2_conv_t *p) {
  size_t k = (size_t)p->k_h * p->k_w * p->in_c;
#ifdef S2_DSP
  return 3 * k + 8;   /* the int8 column, then its int16 widening */
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

/* Few taps (S2_DENSE_HWIO): per output pixel and tap t, acc[:] += x[t] * w[t][:]
 * (the column holds the codes, zero-point padded; the bias carries -zp sum w).
 * Its own function, so the main dense loop keeps its registers. */
#if !defined(S2_DSP)
static void __attribute__((noinline)) s2_conv_dense_hwio(const s2_conv_t *p, const int8_t *restrict in,
                                                         int8_t *restrict out, int8_t *restrict col) {
  const int K = p->k_h * p->k_w * p->in_c;
  const int OC = p->out_c;
  const int32_t zp = p->out_zp, lo = p->act_min, hi = p->act_max;
  /* few taps: per output pixel and tap t, acc[:] += x[t] * w[t][:] (the
   * column holds the codes, zero-point padded; the bias carries -zp sum w) */
  const int8_t *restrict w = p->w;
  const int32_t *restrict bias = p->bias, *restrict mult = p->mult;
  const int8_t *restrict shift = p->shift;
  for (int oy = 0; oy < p->out_h; oy++) {
    for (int ox = 0; ox < p->out_w; ox++) {
      const int8_t *x = s2_im2col(p, in, oy, ox, col);
#if defined(S2_MVE)
      int oc = 0;
      for (; oc + 16 <= OC; oc += 16) {   /* 16 channels in 4 accumulators per pass over the taps */
        int32x4_t a0 = vldrwq_s32(bias + oc), a1 = vldrwq_s32(bias + oc + 4);
        int32x4_t a2 = vldrwq_s32(bias + oc + 8), a3 = vldrwq_s32(bias + oc + 12);
        const int8_t *wp = w + oc;
        for (int t = 0; t < K; t++, wp += OC) {
          const int32_t xv = x[t];
          a0 = vmlaq_n_s32(a0, vldrbq_s32(wp), xv);
          a1 = vmlaq_n_s32(a1, vldrbq_s32(wp + 4), xv);
          a2 = vmlaq_n_s32(a2, vldrbq_s32(wp + 8), xv);
          a3 = vmlaq_n_s32(a3, vldrbq_s32(wp + 12), xv);
        }
        s2_requant_store4(out + oc, a0, mult + oc, shift + oc, zp, lo, hi, 0, 1);
        s2_requant_store4(out + oc + 4, a1, mult + oc + 4, shift + oc + 4, zp, lo, hi, 0, 1);
        s2_requant_store4(out + oc + 8, a2, mult + oc + 8, shift + oc + 8, zp, lo, hi, 0, 1);
        s2_requant_store4(out + oc + 12, a3, mult + oc + 12, shift + oc + 12, zp, lo, hi, 0, 1);
      }
      for (; oc + 4 <= OC; oc += 4) {
        int32x4_t acc = vldrwq_s32(bias + oc);
        for (int t = 0; t < K; t++) acc = vmlaq_n_s32(acc, vldrbq_s32(w + (size_t)t * OC + oc), x[t]);
        s2_requant_store4(out + oc, acc, mult + oc, shift + oc, zp, lo, hi, 0, 1);
      }
      if (oc < OC) {
        mve_pred16_t pr = vctp32q(OC - oc);
        int32x4_t acc = vldrwq_z_s32(bias + oc, pr);
        for (int t = 0; t < K; t++) acc = vmlaq_n_s32(acc, vldrbq_z_s32(w + (size_t)t * OC + oc, pr), x[t]);
        s2_requant_store4(out + oc, acc, mult + oc, shift + oc, zp, lo, hi, pr, 0);
      }
#else
      int32_t acc[64];
      for (int oc0 = 0; oc0 < OC; oc0 += 64) {
        const int nb = S2_MIN(64, OC - oc0);
        for (int o = 0; o < nb; o++) acc[o] = bias[oc0 + o];
        for (int t = 0; t < K; t++) {
          const int32_t xv = x[t];
          const int8_t *wt = w + (size_t)t * OC + oc0;
          for (int o = 0; o < nb; o++) acc[o] += xv * wt[o];
        }
        for (int o = 0; o < nb; o++)
          out[oc0 + o] = (int8_t)s2_requant(acc[o], mult[oc0 + o], shift[oc0 + o], zp, lo, hi);
      }
#endif
      out += OC;
    }
  }
}
#endif

void s2_conv_dense(const s2_conv_t *p, const int8_t *restrict in, int8_t *restrict out, void *restrict scratch) {
  const int K = p->k_h * p->k_w * p->in_c;
  const int OC = p->out_c;
  const int32_t zp = p->out_zp, lo = p->act_min, hi = p->act_max;
  int8_t *col = (int8_t *)scratch;
#if !defined(S2_DSP)   /* the generator sets S2_DENSE_HWIO for Helium (and the host tests) only */
  if (p->flags & S2_DENSE_HWIO) {
    s2_conv_dense_hwio(p, in, out, col);
    return;
  }
#endif
  for (int oy = 0; oy < p->out_h; oy++) {
    for (int ox = 0; ox < p->out_w; ox++) {
      const int8_t *x = s2_im2col(p, in, oy, ox, col);
#if defined(S2_MVE)
      int oc = 0;
      for (; oc < OC; oc += 4) {
        const int8_t *w0 = p->w + (size_t)oc * K;
        const int left = OC - oc;
        const int8_t *w1 = left > 1 ? w0 + K : w0;
        const int8_t *w2 = left > 2 ? w0 + 2 * K : w0;
        const int8_t *w3 = left > 3 ? w0 + 3 * K : w0;
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        const int8_t *xp = x;
        int n = K;
        for (; n >= 16; n -= 16) {
          int8x16_t xv = vldrbq_s8(xp);
          a0 = vmladavaq_s8(a0, xv, vldrbq_s8(w0));
          a1 = vmladavaq_s8(a1, xv, vldrbq_s8(w1));
          a2 = vmladavaq_s8(a2, xv, vldrbq_s8(w2));
          a3 = vmladavaq_s8(a3, xv, vldrbq_s8(w3));
          xp += 16; w0 += 16; w1 += 16; w2 += 16; w3 += 16;
        }
        if (n > 0) {   /* lanes past K are zero in both operands */
          mve_pred16_t pr = vctp8q(n);
          int8x16_t xv = vldrbq_z_s8(xp, pr);
          a0 = vmladavaq_s8(a0, xv, vldrbq_z_s8(w0, pr));
          a1 = vmladavaq_s8(a1, xv, vldrbq_z_s8(w1, pr));
          a2 = vmladavaq_s8(a2, xv, vldrbq_z_s8(w2, pr));
          a3 = vmladavaq_s8(a3, xv, vldrbq_z_s8(w3, pr));
        }
        int32x4_t acc = vdupq_n_s32(a0);
        acc = vsetq_lane_s32(a1, acc, 1);
        acc = vsetq_lane_s32(a2, acc, 2);
        acc = vsetq_lane_s32(a3, acc, 3);
        mve_pred16_t pr = vctp32q(left);
        if (left >= 4) {
          acc = vaddq_s32(acc, vldrwq_s32(p->bias + oc));
          s2_requant_store4(out + oc, acc, p->mult + oc, p->shift + oc, zp, lo, hi, pr, 1);
        } else {
          acc = vaddq_s32(acc, vldrwq_z_s32(p->bias + oc, pr));
          s2_requant_store4(out + oc, acc, p->mult + oc, p->shift + oc, zp, lo, hi, pr, 0);
        }
      }
#elif defined(S2_DSP)
      /* widen the column once: int16 pairs in SXTB16 order (x0, x2), (x1, x3) */
      int16_t *c16 = (int16_t *)(((uintptr_t)col + (size_t)K + 3u) & ~(uintptr_t)3u);
      {
        int k = 0;
        for (; k + 4 <= K; k += 4) {
          uint32_t v;
          __builtin_memcpy(&v, x + k, 4);
          uint32_t e = __sxtb16(v), o = s2_sxtb16_ror8((v));
          __builtin_memcpy(c16 + k, &e, 4);
          __builtin_memcpy(c16 + k + 2, &o, 4);
        }
        for (; k < K; k++) c16[k] = x[k];
      }
      const int K4 = K & ~3;
      int oc = 0;
      for (; oc + 2 <= OC; oc += 2) {
        const int8_t *w0 = p->w + (size_t)oc * K, *w1 = w0 + K;
        int32_t a0 = p->bias[oc], a1 = p->bias[oc + 1];
        const int16_t *cp = c16;
        for (int k = 0; k < K4; k += 4) {
          uint32_t xe, xo, v0, v1;
          __builtin_memcpy(&xe, cp, 4);
          __builtin_memcpy(&xo, cp + 2, 4);
          cp += 4;
          __builtin_memcpy(&v0, w0 + k, 4);
          __builtin_memcpy(&v1, w1 + k, 4);
          a0 = __smlad(__sxtb16(v0), xe, a0);
          a0 = __smlad(s2_sxtb16_ror8((v0)), xo, a0);
          a1 = __smlad(__sxtb16(v1), xe, a1);
          a1 = __smlad(s2_sxtb16_ror8((v1)), xo, a1);
        }
        for (int k = K4; k < K; k++) {
          a0 += x[k] * w0[k];
          a1 += x[k] * w1[k];
        }
        out[oc] = (int8_t)s2_requant(a0, p->mult[oc], p->shift[oc], zp, lo, hi);
        out[oc + 1] = (int8_t)s2_requant(a1, p->mult[oc + 1], p->shift[oc + 1], zp, lo, hi);
      }
      for (; oc < OC; oc++) {
        const int8_t *w0 = p->w + (size_t)oc * K;
        int32_t a0 = p->bias[oc];
        for (int k = 0; k < K; k++) a0 += x[k] * w0[k];
        out[oc] = (int8_t)s2_requant(a0, p->mult[oc], p->shift[oc], zp, lo, hi);
      }
#else
      for (int oc = 0; oc < OC; oc++) {
        const int8_t *w0 = p->w + (size_t)oc * K;
        int32_t acc = p->bias[oc];
        for (int k = 0; k < K; k++) acc += x[k] * w0[k];
        out[oc] = (int8_t)s2_requant(acc, p->mult[oc], p->shift[oc], zp, lo, hi);
      }
#endif
      out += OC;
    }
  }
}

/* The taps (ky, kx) of an output pixel whose input position (iy0 + ky d_h,
 * ix0 + kx d_w) lies inside the input: input pixel index and tap index
 * (ky k_w + kx). At most S2_MAX_TAPS (the generator keeps larger kernels
 * on the paths that do not need the list). Returns how many. */
#define S2_MAX_TAPS 64
static int s2_valid_taps(int k_h, int k_w, int d_h, int d_w, int in_h, int in_w, int iy0, int ix0, int32_t *pix,
                         int32_t *tap) {
  int n = 0;
  for (int ky = 0; ky < k_h; ky++) {
    const int iy = iy0 + ky * d_h;
    if (iy < 0 || iy >= in_h) continue;
    for (int kx = 0; kx < k_w; kx++) {
      const int ix = ix0 + kx * d_w;
      if (ix < 0 || ix >= in_w) continue;
      pix[n] = iy * in_w + ix;
      tap[n] = ky * k_w + kx;
      n++;
    }
  }
  return n;
}

/* ======================================================================
 * CONV_2D / FULLY_CONNECTED reading a spike tensor: codes {zp, on}, so
 * sum (x - zp) w = (on - zp) * S with S the sum of the weights of the
 * inputs that fired. Weights HWIO: a fired input (tap, c) adds the row
 * w[tap][c][0..OC) to the output pixel's accumulators (AC operations,
 * no multiply); acc = bias + (on - zp) S is then requantized as TFLite
 * does. With S2_ACC16 the sums fit int16 (the generator checks
 * max(sum w+, -sum w-) <= 32767 per channel), whose wrap-around additions
 * give the exact sum.
 * ==================================================================== */

#define S2_OB16 32   /* output channels per pass, int16 accumulators */
#define S2_OB32 16   /* output channels per pass, int32 accumulators */

static inline int s2_idx_wide(const s2_conv_t *p) { return p->in_c > 256; }

size_t s2_conv_spike_list_scratch(const s2_conv_t *p) {
  size_t hw = (size_t)p->in_h * p->in_w;
  size_t idx = (p->flags & S2_LIST_IN_PLACE) ? 0u : hw * (size_t)p->in_c * (s2_idx_wide(p) ? 2u : 1u);
  return ((hw * 2u + 3u) & ~(size_t)3u) + idx + 64u;   /* counts (uint16), then the index lists */
}

size_t s2_conv_spike_mask_scratch(const s2_conv_t *p) {
  size_t words = ((size_t)p->in_c + 31u) / 32u;
  return (size_t)p->in_h * p->in_w * words * 4u + 64u;
}

/* Accumulates the rows of the fired inputs of one output pixel, channels
 * [oc0, oc0 + nb), into acc (int16 or int32 lanes), for a list of fired
 * channel indices per input pixel. */
typedef struct {
  const s2_conv_t *p;
  const uint16_t *count;   /* per input pixel (list layout) */
  const void *idx;         /* per input pixel, in_c slots (list layout) */
  const uint32_t *mask;    /* per input pixel, words bit masks (mask layout) */
  int words;
} s2_spikes_t;

/* out[oc0 + o] = requant(bias + g * s[o]) for o < nb */
static void s2_finish_sums(const int32_t *bias, const int32_t *mult, const int8_t *shift, int32_t g, int32_t zp,
                           int32_t lo, int32_t hi, const int32_t *s, int oc0, int nb, int8_t *out);

/* requantize nb accumulators (int32 sums S) of one pixel into out[oc0..) */
static void s2_spike_finish(const s2_conv_t *p, const int32_t *s, int oc0, int nb, int8_t *out) {
  s2_finish_sums(p->bias, p->mult, p->shift, p->spike_gain, p->out_zp, p->act_min, p->act_max, s, oc0, nb, out);
}

static void s2_finish_sums(const int32_t *bias, const int32_t *mult, const int8_t *shift, int32_t g, int32_t zp,
                           int32_t lo, int32_t hi, const int32_t *s, int oc0, int nb, int8_t *out) {
  bias += oc0;
  mult += oc0;
  shift += oc0;
  out += oc0;
#ifdef S2_MVE
  int o = 0;
  for (; o + 4 <= nb; o += 4) {
    int32x4_t acc = vmlaq_n_s32(vldrwq_s32(bias + o), vldrwq_s32(s + o), g);
    s2_requant_store4(out + o, acc, mult + o, shift + o, zp, lo, hi, 0, 1);
  }
  if (o < nb) {
    mve_pred16_t pr = vctp32q(nb - o);
    int32x4_t acc = vmlaq_n_s32(vldrwq_z_s32(bias + o, pr), vldrwq_z_s32(s + o, pr), g);
    s2_requant_store4(out + o, acc, mult + o, shift + o, zp, lo, hi, pr, 0);
  }
#else
  for (int o = 0; o < nb; o++) out[o] = (int8_t)s2_requant(bias[o] + g * s[o], mult[o], shift[o], zp, lo, hi);
#endif
}

/* The fired inputs of one output pixel's receptive field: per tap inside
 * the input, its input pixel and its weights (HWIO, from channel oc0). */
typedef struct {
  int n;
  int32_t pix[S2_MAX_TAPS];
  int32_t woff[S2_MAX_TAPS];   /* tap * in_c * out_c */
} s2_rf_t;

static void s2_conv_rf(const s2_conv_t *p, int oy, int ox, s2_rf_t *rf) {
  rf->n = s2_valid_taps(p->k_h, p->k_w, p->d_h, p->d_w, p->in_h, p->in_w, oy * p->s_h - p->pad_t,
                        ox * p->s_w - p->pad_l, rf->pix, rf->woff);
  for (int t = 0; t < rf->n; t++) rf->woff[t] *= p->in_c * p->out_c;
}

static inline int s2_fired_channel(const s2_spikes_t *sp, int wide, int C, int pix, int j) {
  return wide ? ((const uint16_t *)sp->idx)[(size_t)pix * C + j] : ((const uint8_t *)sp->idx)[(size_t)pix * C + j];
}

#ifdef S2_MVE
/* Channels [oc0, oc0 + nb), int16 lanes: nv (1..4, a constant at each
 * call) vectors of 8 channels; the last one predicated unless full. */
S2_INL void s2_gather_list_mve16(const s2_conv_t *p, const s2_spikes_t *sp, const s2_rf_t *rf, int oc0, int nb,
                                 int32_t *sums, int nv, int full) {
  const int C = p->in_c, OC = p->out_c;
  const int wide = s2_idx_wide(p);
  const mve_pred16_t pl = vctp16q(nb - 8 * (nv - 1));   /* the last vector's lanes */
  int16x8_t a0 = vdupq_n_s16(0), a1 = a0, a2 = a0, a3 = a0;
#define S2_LAST(k) (full || nv != (k) + 1)
  for (int t = 0; t < rf->n; t++) {
    const int pix = rf->pix[t];
    const int n = sp->count[pix];
    const int8_t *wb = p->w + rf->woff[t] + oc0;
    if (!wide && full && nv == 4) {
      /* the AC loop, per fired input: index, row address, 4 loads, 4 adds, loop end */
      const uint8_t *id = (const uint8_t *)sp->idx + (size_t)pix * C;
      int16x8_t t0, t1;
      const int8_t *wp;
      uint32_t c;
      __asm__ volatile(
          "wls lr, %[n], 2f\n"
          "1:\n"
          "ldrb %[c], [%[id]], #1\n"
          "mla %[wp], %[c], %[oc], %[wb]\n"   /* wp: a low register (the widening loads need one) */
          "vldrb.s16 %q[t0], [%[wp]]\n"
          "vldrb.s16 %q[t1], [%[wp], #8]\n"
          "vadd.i16 %q[a0], %q[a0], %q[t0]\n"
          "vadd.i16 %q[a1], %q[a1], %q[t1]\n"
          "vldrb.s16 %q[t0], [%[wp], #16]\n"
          "vldrb.s16 %q[t1], [%[wp], #24]\n"
          "vadd.i16 %q[a2], %q[a2], %q[t0]\n"
          "vadd.i16 %q[a3], %q[a3], %q[t1]\n"
          "le lr, 1b\n"
          "2:\n"
          : [a0] "+w"(a0), [a1] "+w"(a1), [a2] "+w"(a2), [a3] "+w"(a3), [t0] "=&w"(t0), [t1] "=&w"(t1),
            [id] "+r"(id), [wp] "=&l"(wp), [c] "=&r"(c)
          : [n] "r"(n), [oc] "r"(OC), [wb] "r"(wb)
          : "lr", "memory");
      continue;
    }
    for (int j = 0; j < n; j++) {
      const int8_t *wp = wb + (size_t)s2_fired_channel(sp, wide, C, pix, j) * OC;
      a0 = vaddq_s16(a0, s2_ld16(wp, pl, S2_LAST(0)));
      if (nv > 1) a1 = vaddq_s16(a1, s2_ld16(wp + 8, pl, S2_LAST(1)));
      if (nv > 2) a2 = vaddq_s16(a2, s2_ld16(wp + 16, pl, S2_LAST(2)));
      if (nv > 3) a3 = vaddq_s16(a3, s2_ld16(wp + 24, pl, S2_LAST(3)));
    }
  }
#undef S2_LAST
  /* int16 -> int32, in channel order */
  int16_t tmp[32];
  vst1q_s16(tmp, a0);
  if (nv > 1) vst1q_s16(tmp + 8, a1);
  if (nv > 2) vst1q_s16(tmp + 16, a2);
  if (nv > 3) vst1q_s16(tmp + 24, a3);
  for (int o = 0; o < 8 * nv; o += 4) vst1q_s32(sums + o, vldrhq_s32(tmp + o));
}

/* The same with int32 lanes (4 x 4 = 16 channels), for sums beyond int16. */
S2_INL void s2_gather_list_mve32(const s2_conv_t *p, const s2_spikes_t *sp, const s2_rf_t *rf, int oc0, int nb,
                                 int32_t *sums, int full) {
  const int C = p->in_c, OC = p->out_c;
  const int wide = s2_idx_wide(p);
  const mve_pred16_t p0 = vctp32q(nb), p1 = vctp32q(nb - 4), p2 = vctp32q(nb - 8), p3 = vctp32q(nb - 12);
  int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
  for (int t = 0; t < rf->n; t++) {
    const int pix = rf->pix[t];
    const int n = sp->count[pix];
    const int8_t *wb = p->w + rf->woff[t] + oc0;
    for (int j = 0; j < n; j++) {
      const int8_t *wp = wb + (size_t)s2_fired_channel(sp, wide, C, pix, j) * OC;
      a0 = vaddq_s32(a0, s2_ld32(wp, p0, full));
      a1 = vaddq_s32(a1, s2_ld32(wp + 4, p1, full));
      a2 = vaddq_s32(a2, s2_ld32(wp + 8, p2, full));
      a3 = vaddq_s32(a3, s2_ld32(wp + 12, p3, full));
    }
  }
  vst1q_s32(sums, a0); vst1q_s32(sums + 4, a1); vst1q_s32(sums + 8, a2); vst1q_s32(sums + 12, a3);
}
#endif

#ifdef S2_DSP
/* 8 channels per pass over the lists: SXTB16 splits a word of 4 weights
 * into the pairs (w0, w2), (w1, w3); SADD16 adds two int16 lanes. */
static void s2_gather_list_dsp(const s2_conv_t *p, const s2_spikes_t *sp, const s2_rf_t *rf, int oc0, int nb,
                               int32_t *sums) {
  const int C = p->in_c, OC = p->out_c;
  const int wide = s2_idx_wide(p);
  for (int o8 = 0; o8 < nb; o8 += 8) {
    const int two = nb - o8 > 4;
    uint32_t e0 = 0, d0 = 0, e1 = 0, d1 = 0;
    for (int t = 0; t < rf->n; t++) {
      const int pix = rf->pix[t];
      const int n = sp->count[pix];
      const int8_t *wb = p->w + rf->woff[t] + oc0 + o8;
      if (!wide && two) {
        const uint8_t *id = (const uint8_t *)sp->idx + (size_t)pix * C;
        for (int j = 0; j < n; j++) {
          const int8_t *wp = wb + (size_t)id[j] * OC;
          uint32_t v0 = *(const uint32_t *)wp, v1 = *(const uint32_t *)(wp + 4);
          e0 = __sadd16(e0, __sxtb16(v0)); d0 = __sadd16(d0, s2_sxtb16_ror8(v0));
          e1 = __sadd16(e1, __sxtb16(v1)); d1 = __sadd16(d1, s2_sxtb16_ror8(v1));
        }
        continue;
      }
      for (int j = 0; j < n; j++) {
        const int8_t *wp = wb + (size_t)s2_fired_channel(sp, wide, C, pix, j) * OC;
        uint32_t v0 = *(const uint32_t *)wp;
        e0 = __sadd16(e0, __sxtb16(v0)); d0 = __sadd16(d0, s2_sxtb16_ror8(v0));
        if (two) {
          uint32_t v1 = *(const uint32_t *)(wp + 4);
          e1 = __sadd16(e1, __sxtb16(v1)); d1 = __sadd16(d1, s2_sxtb16_ror8(v1));
        }
      }
    }
    int32_t *s = sums + o8;
    s[0] = (int16_t)(e0 & 0xFFFF); s[2] = (int16_t)(e0 >> 16);
    s[1] = (int16_t)(d0 & 0xFFFF); s[3] = (int16_t)(d0 >> 16);
    s[4] = (int16_t)(e1 & 0xFFFF); s[6] = (int16_t)(e1 >> 16);
    s[5] = (int16_t)(d1 & 0xFFFF); s[7] = (int16_t)(d1 >> 16);
  }
}
#endif

/* Bit-mask layout: per input pixel, ceil(C / 32) words, bit c set if
 * channel c fired; the gather walks the set bits (count trailing zeros).
 * Channels [oc0, oc0 + nb) of one output pixel. */
static void s2_gather_mask_block(const s2_conv_t *p, const s2_spikes_t *sp, const s2_rf_t *rf, int oc0, int nb,
                                 int32_t *sums) {
  const int OC = p->out_c, words = sp->words;
  const int acc16 = (p->flags & S2_ACC16) != 0;
#if defined(S2_MVE)
  const mve_pred16_t p0 = vctp16q(nb), p1 = vctp16q(nb - 8), p2 = vctp16q(nb - 16), p3 = vctp16q(nb - 24);
  const mve_pred16_t q0 = vctp32q(nb), q1 = vctp32q(nb - 4), q2 = vctp32q(nb - 8), q3 = vctp32q(nb - 12);
  int16x8_t a0 = vdupq_n_s16(0), a1 = a0, a2 = a0, a3 = a0;
  int32x4_t b0 = vdupq_n_s32(0), b1 = b0, b2 = b0, b3 = b0;
#else
  for (int o = 0; o < nb; o++) sums[o] = 0;
#endif
  for (int t = 0; t < rf->n; t++) {
    const uint32_t *m = sp->mask + (size_t)rf->pix[t] * words;
    const int8_t *wb = p->w + rf->woff[t] + oc0;
    for (int wi = 0; wi < words; wi++) {
      uint32_t bits = m[wi];
      const int8_t *wbase = wb + (size_t)wi * 32 * OC;
      while (bits) {
        const int8_t *wp = wbase + (size_t)__builtin_ctz(bits) * OC;
        bits &= bits - 1u;
#if defined(S2_MVE)
        if (acc16) {
          a0 = vaddq_s16(a0, vldrbq_z_s16(wp, p0));
          a1 = vaddq_s16(a1, vldrbq_z_s16(wp + 8, p1));
          a2 = vaddq_s16(a2, vldrbq_z_s16(wp + 16, p2));
          a3 = vaddq_s16(a3, vldrbq_z_s16(wp + 24, p3));
        } else {
          b0 = vaddq_s32(b0, vldrbq_z_s32(wp, q0));
          b1 = vaddq_s32(b1, vldrbq_z_s32(wp + 4, q1));
          b2 = vaddq_s32(b2, vldrbq_z_s32(wp + 8, q2));
          b3 = vaddq_s32(b3, vldrbq_z_s32(wp + 12, q3));
        }
#else
        for (int o = 0; o < nb; o++) sums[o] += wp[o];
#endif
      }
    }
  }
#if defined(S2_MVE)
  if (acc16) {
    int16_t tmp[32];
    vst1q_s16(tmp, a0); vst1q_s16(tmp + 8, a1); vst1q_s16(tmp + 16, a2); vst1q_s16(tmp + 24, a3);
    for (int o = 0; o < 32; o += 4) vst1q_s32(sums + o, vldrhq_s32(tmp + o));
  } else {
    vst1q_s32(sums, b0); vst1q_s32(sums + 4, b1); vst1q_s32(sums + 8, b2); vst1q_s32(sums + 12, b3);
  }
#else
  (void)acc16;
#endif
}

/* One output pixel of a spike-driven conv: its receptive field once, then
 * per block of output channels the sums S of the fired inputs' weights
 * (index lists, or bit masks when sp->mask), requantized. */
static void s2_gather(const s2_conv_t *p, const s2_spikes_t *sp, int oy, int ox, int8_t *out) {
  const int OC = p->out_c;
  const int acc16 = (p->flags & S2_ACC16) != 0;
  const int OB = acc16 ? S2_OB16 : S2_OB32;
  int32_t sums[S2_OB16];
  s2_rf_t rf;
  s2_conv_rf(p, oy, ox, &rf);
  for (int oc0 = 0; oc0 < OC; oc0 += OB) {
    const int nb = S2_MIN(OB, OC - oc0);
    if (sp->mask) {
      s2_gather_mask_block(p, sp, &rf, oc0, nb, sums);
      s2_spike_finish(p, sums, oc0, nb, out);
      continue;
    }
#if defined(S2_MVE)
    if (acc16) {
      const int nv = (nb + 7) / 8, full = (nb & 7) == 0;
      switch (nv * 2 + full) {
        case 9: s2_gather_list_mve16(p, sp, &rf, oc0, nb, sums, 4, 1); break;
        case 8: s2_gather_list_mve16(p, sp, &rf, oc0, nb, sums, 4, 0); break;
        case 7: s2_gather_list_mve16(p, sp, &rf, oc0, nb, sums, 3, 1); break;
        case 6: s2_gather_list_mve16(p, sp, &rf, oc0, nb, sums, 3, 0); break;
        case 5: s2_gather_list_mve16(p, sp, &rf, oc0, nb, sums, 2, 1); break;
        case 4: s2_gather_list_mve16(p, sp, &rf, oc0, nb, sums, 2, 0); break;
        case 3: s2_gather_list_mve16(p, sp, &rf, oc0, nb, sums, 1, 1); break;
        default: s2_gather_list_mve16(p, sp, &rf, oc0, nb, sums, 1, 0); break;
      }
    } else if (nb == S2_OB32) {
      s2_gather_list_mve32(p, sp, &rf, oc0, nb, sums, 1);
    } else {
      s2_gather_list_mve32(p, sp, &rf, oc0, nb, sums, 0);
    }
#else
#if defined(S2_DSP)
    if (acc16 && (OC & 3) == 0) {
      s2_gather_list_dsp(p, sp, &rf, oc0, nb, sums);
    } else
#endif
    {
      const int C = p->in_c, wide = s2_idx_wide(p);
      for (int o = 0; o < nb; o++) sums[o] = 0;
      for (int t = 0; t < rf.n; t++) {
        const int pix = rf.pix[t], n = sp->count[pix];
        const int8_t *wb = p->w + rf.woff[t] + oc0;
        for (int j = 0; j < n; j++) {
          const int8_t *wp = wb + (size_t)s2_fired_channel(sp, wide, C, pix, j) * OC;
          for (int o = 0; o < nb; o++) sums[o] += wp[o];
        }
      }
    }
#endif
    s2_spike_finish(p, sums, oc0, nb, out);
  }
}

uint32_t s2_conv_spike_list(const s2_conv_t *p, const int8_t *in, int8_t *out, void *scratch) {
  const int C = p->in_c, HW = p->in_h * p->in_w;
  const int8_t zp = (int8_t)p->in_zp;
  uint16_t *count = (uint16_t *)scratch;
  const int wide = s2_idx_wide(p);
  /* in place: pixel pix's list takes its own C bytes, written at n <= c after x[c] is read */
  void *idx = (p->flags & S2_LIST_IN_PLACE) && !wide ? (void *)(uintptr_t)in
                                                     : (uint8_t *)scratch + (((size_t)HW * 2u + 3u) & ~(size_t)3u);
  uint32_t total = 0;
  /* encode: per input pixel, the channels whose code is not the zero point */
  for (int pix = 0; pix < HW; pix++) {
    const int8_t *x = in + (size_t)pix * C;
    int n = 0;
    if (!wide) {
      uint8_t *id = (uint8_t *)idx + (size_t)pix * C;
#ifdef S2_MVE
      for (int c = 0; c < C; c += 16) {
        mve_pred16_t pr = vctp8q(C - c);
        uint32_t bits = (uint32_t)vcmpneq_m_n_s8(vldrbq_z_s8(x + c, pr), zp, pr);
        while (bits) {
          const int b = __builtin_ctz(bits);
          id[n++] = (uint8_t)(c + b);
          bits &= bits - 1u;
        }
      }
#else
      for (int c = 0; c < C; c++) {   /* x[c] is read before id[n <= c] is written (in place) */
        const int8_t v = x[c];
        S2_CHECK_CODE(p, v);
        id[n] = (uint8_t)c;
        n += v != zp;
      }
#endif
    } else {
      uint16_t *id = (uint16_t *)idx + (size_t)pix * C;
      for (int c = 0; c < C; c++) {
        const int8_t v = x[c];
        S2_CHECK_CODE(p, v);
        id[n] = (uint16_t)c;
        n += v != zp;
      }
    }
    count[pix] = (uint16_t)n;
    total += (uint32_t)n;
  }
  s2_spikes_t sp = {p, count, idx, 0, 0};
  for (int oy = 0; oy < p->out_h; oy++)
    for (int ox = 0; ox < p->out_w; ox++) {
      s2_gather(p, &sp, oy, ox, out);
      out += p->out_c;
    }
  return total;
}

uint32_t s2_conv_spike_mask(const s2_conv_t *p, const int8_t *in, int8_t *out, void *scratch) {
  const int C = p->in_c, HW = p->in_h * p->in_w;
  const int words = (C + 31) / 32;
  const int8_t zp = (int8_t)p->in_zp;
  uint32_t *mask = (uint32_t *)scratch;
  uint32_t total = 0;
  for (int pix = 0; pix < HW; pix++) {
    const int8_t *x = in + (size_t)pix * C;
    uint32_t *m = mask + (size_t)pix * words;
    for (int wi = 0; wi < words; wi++) {
      uint32_t bits = 0;
      const int c0 = wi * 32, n = S2_MIN(32, C - c0);
#ifdef S2_MVE
      for (int c = 0; c < n; c += 16) {
        mve_pred16_t pr = vctp8q(n - c);
        bits |= (uint32_t)vcmpneq_m_n_s8(vldrbq_z_s8(x + c0 + c, pr), zp, pr) << c;
      }
#else
      for (int c = 0; c < n; c++) {
        S2_CHECK_CODE(p, x[c0 + c]);
        bits |= (uint32_t)(x[c0 + c] != zp) << c;
      }
#endif
      m[wi] = bits;
      total += (uint32_t)__builtin_popcount(bits);
    }
  }
  s2_spikes_t sp = {p, 0, 0, mask, words};
  for (int oy = 0; oy < p->out_h; oy++)
    for (int ox = 0; ox < p->out_w; ox++) {
      s2_gather(p, &sp, oy, ox, out);
      out += p->out_c;
    }
  return total;
}

/* ======================================================================
 * DEPTHWISE_CONV_2D
 * ==================================================================== */

void s2_dwconv(const s2_dwconv_t *p, const int8_t *restrict in, int8_t *restrict out) {
  const int C = p->out_c, IC = p->in_c, DM = p->depth_mult;
  const int32_t zp = p->out_zp, lo = p->act_min, hi = p->act_max, in_zp = p->in_zp;
  const int8_t *restrict w = p->w;
  const int32_t *restrict bias = p->bias, *restrict mult = p->mult;
  const int8_t *restrict shift = p->shift;
  if (p->pointwise) {
    /* 1x1, stride 1: out[c] = requant(bias'[c] + x[c] w[c]), bias' = bias - zp w */
    const int HW = p->in_h * p->in_w;
    for (int pix = 0; pix < HW; pix++) {
      const int8_t *x = in + (size_t)pix * IC;
      int8_t *o = out + (size_t)pix * C;
#ifdef S2_MVE
      if (DM == 1) {
        int c = 0;
        for (; c + 4 <= C; c += 4) {
          int32x4_t acc = vaddq_s32(vldrwq_s32(bias + c), vmulq_s32(vldrbq_s32(x + c), vldrbq_s32(w + c)));
          s2_requant_store4(o + c, acc, mult + c, shift + c, zp, lo, hi, 0, 1);
        }
        if (c < C) {
          mve_pred16_t pr = vctp32q(C - c);
          int32x4_t acc = vaddq_s32(vldrwq_z_s32(bias + c, pr),
                                    vmulq_s32(vldrbq_z_s32(x + c, pr), vldrbq_z_s32(w + c, pr)));
          s2_requant_store4(o + c, acc, mult + c, shift + c, zp, lo, hi, pr, 0);
        }
        continue;
      }
#endif
      if (DM == 1) {
        for (int c = 0; c < C; c++)
          o[c] = (int8_t)s2_requant(bias[c] + x[c] * w[c], mult[c], shift[c], zp, lo, hi);
        continue;
      }
      for (int c = 0; c < C; c++) {
        int32_t acc = bias[c] + x[c / DM] * w[c];
        o[c] = (int8_t)s2_requant(acc, mult[c], shift[c], zp, lo, hi);
      }
    }
    return;
  }
  /* per output pixel: the taps inside the input (input and weight offsets), then per channel */
  const int taps = p->k_h * p->k_w;
  int32_t xoff[S2_MAX_TAPS], woff[S2_MAX_TAPS];
  for (int oy = 0; oy < p->out_h; oy++) {
    const int iy0 = oy * p->s_h - p->pad_t;
    for (int ox = 0; ox < p->out_w; ox++) {
      const int ix0 = ox * p->s_w - p->pad_l;
      if (taps > S2_MAX_TAPS) {   /* large kernels: bounds per tap */
        for (int c = 0; c < C; c++) {
          int32_t acc = bias[c];
          const int ic = c / DM;
          for (int ky = 0; ky < p->k_h; ky++) {
            const int iy = iy0 + ky * p->d_h;
            if (iy < 0 || iy >= p->in_h) continue;
            for (int kx = 0; kx < p->k_w; kx++) {
              const int ix = ix0 + kx * p->d_w;
              if (ix < 0 || ix >= p->in_w) continue;
              acc += (in[((size_t)iy * p->in_w + ix) * IC + ic] - in_zp) * w[(size_t)(ky * p->k_w + kx) * C + c];
            }
          }
          out[c] = (int8_t)s2_requant(acc, mult[c], shift[c], zp, lo, hi);
        }
        out += C;
        continue;
      }
      const int nt = s2_valid_taps(p->k_h, p->k_w, p->d_h, p->d_w, p->in_h, p->in_w, iy0, ix0, xoff, woff);
      for (int t = 0; t < nt; t++) {
        xoff[t] *= IC;
        woff[t] *= C;
      }
#ifdef S2_MVE
      if (DM == 1) {
        int c = 0;
        for (; c + 4 <= C; c += 4) {
          int32x4_t acc = vldrwq_s32(bias + c);
          for (int t = 0; t < nt; t++) {
            int32x4_t xv = vsubq_n_s32(vldrbq_s32(in + xoff[t] + c), in_zp);
            acc = vaddq_s32(acc, vmulq_s32(xv, vldrbq_s32(w + woff[t] + c)));
          }
          s2_requant_store4(out + c, acc, mult + c, shift + c, zp, lo, hi, 0, 1);
        }
        if (c < C) {
          mve_pred16_t pr = vctp32q(C - c);
          int32x4_t acc = vldrwq_z_s32(bias + c, pr);
          for (int t = 0; t < nt; t++) {
            int32x4_t xv = vsubq_n_s32(vldrbq_z_s32(in + xoff[t] + c, pr), in_zp);
            acc = vaddq_s32(acc, vmulq_s32(xv, vldrbq_z_s32(w + woff[t] + c, pr)));
          }
          s2_requant_store4(out + c, acc, mult + c, shift + c, zp, lo, hi, pr, 0);
        }
        out += C;
        continue;
      }
#endif
      for (int c = 0; c < C; c++) {
        int32_t acc = bias[c];
        const int ic = c / DM;
        for (int t = 0; t < nt; t++) acc += (in[xoff[t] + ic] - in_zp) * w[woff[t] + c];
        out[c] = (int8_t)s2_requant(acc, mult[c], shift[c], zp, lo, hi);
      }
      out += C;
    }
  }
}

/* Depthwise conv reading a spike tensor: per output pixel, each fired
 * input (tap, c) adds w[tap][c * depth_mult + m] to the accumulators of its
 * depth_mult output channels; acc = bias + (on - zp) S, requantized. */
size_t s2_dwconv_spike_list_scratch(const s2_dwconv_t *p) {
  size_t hw = (size_t)p->in_h * p->in_w;
  size_t idx = (p->flags & S2_LIST_IN_PLACE) ? 0u : hw * (size_t)p->in_c * (p->in_c > 256 ? 2u : 1u);
  return ((hw * 2u + 3u) & ~(size_t)3u) + ((idx + 3u) & ~(size_t)3u) + 4u * (size_t)p->out_c + 64u;
}

uint32_t s2_dwconv_spike_list(const s2_dwconv_t *p, const int8_t *in, int8_t *restrict out, void *scratch) {
  const int IC = p->in_c, C = p->out_c, DM = p->depth_mult, HW = p->in_h * p->in_w;
  const int8_t zp = (int8_t)p->in_zp;
  const int wide = IC > 256;
  const int in_place = (p->flags & S2_LIST_IN_PLACE) && !wide;
  uint16_t *count = (uint16_t *)scratch;
  uint8_t *after = (uint8_t *)scratch + (((size_t)HW * 2u + 3u) & ~(size_t)3u);
  uint8_t *idx = in_place ? (uint8_t *)(uintptr_t)in : after;
  int32_t *acc = (int32_t *)(in_place ? after : after + (((size_t)HW * IC * (wide ? 2u : 1u) + 3u) & ~(size_t)3u));
  const int8_t *restrict w = p->w;
  uint32_t total = 0;
  for (int pix = 0; pix < HW; pix++) {
    const int8_t *x = in + (size_t)pix * IC;
    int n = 0;
    if (!wide) {
      uint8_t *id = idx + (size_t)pix * IC;
      for (int c = 0; c < IC; c++) {   /* x[c] is read before id[n <= c] is written (in place) */
        const int8_t v = x[c];
        id[n] = (uint8_t)c;
        n += v != zp;
      }
    } else {
      uint16_t *id = (uint16_t *)idx + (size_t)pix * IC;
      for (int c = 0; c < IC; c++) {
        const int8_t v = x[c];
        id[n] = (uint16_t)c;
        n += v != zp;
      }
    }
    count[pix] = (uint16_t)n;
    total += (uint32_t)n;
  }
  for (int oy = 0; oy < p->out_h; oy++) {
    const int iy0 = oy * p->s_h - p->pad_t;
    for (int ox = 0; ox < p->out_w; ox++) {
      const int ix0 = ox * p->s_w - p->pad_l;
      for (int c = 0; c < C; c++) acc[c] = 0;
      int32_t pixs[S2_MAX_TAPS], taps[S2_MAX_TAPS];
      const int nt = s2_valid_taps(p->k_h, p->k_w, p->d_h, p->d_w, p->in_h, p->in_w, iy0, ix0, pixs, taps);
      for (int t = 0; t < nt; t++) {
        const int pix = pixs[t];
        const int n = count[pix];
        const int8_t *wt = w + (size_t)taps[t] * C;
        if (DM == 1 && !wide) {
          const uint8_t *id = idx + (size_t)pix * IC;
          for (int j = 0; j < n; j++) {
            const int c = id[j];
            acc[c] += wt[c];
          }
        } else {
          for (int j = 0; j < n; j++) {
            const int c = wide ? ((const uint16_t *)idx)[(size_t)pix * IC + j] : idx[(size_t)pix * IC + j];
            for (int m = 0; m < DM; m++) acc[c * DM + m] += wt[c * DM + m];
          }
        }
      }
      s2_finish_sums(p->bias, p->mult, p->shift, p->spike_gain, p->out_zp, p->act_min, p->act_max, acc, 0, C, out);
      out += C;
    }
  }
  return total;
}

/* ======================================================================
 * ADD (TFLite's int8 add: inputs scaled to a common 2^-20 grid)
 * ==================================================================== */

void s2_add(const s2_add_t *p, const int8_t *a, const int8_t *b, int8_t *out) {
  /* out may be a (in place): each element is read before it is written */
  const int n = p->size;
  const int32_t z1 = p->in1_zp, z2 = p->in2_zp, zo = p->out_zp, lo = p->act_min, hi = p->act_max;
  const int32_t m1s = p->m1, m2s = p->m2, mos = p->mo;
  const int sh1 = p->s1, sh2 = p->s2, sho = p->so, left = p->left_shift;
  int i = 0;
#ifdef S2_MVE
  {
    const int32x4_t m1 = vdupq_n_s32(p->m1), m2 = vdupq_n_s32(p->m2), mo = vdupq_n_s32(p->mo);
    const int32x4_t s1 = vdupq_n_s32(p->s1), s2 = vdupq_n_s32(p->s2), so = vdupq_n_s32(p->so);
    const int32x4_t lsh = vdupq_n_s32(p->left_shift);
    const int32x4_t vlo = vdupq_n_s32(lo), vhi = vdupq_n_s32(hi);
#define S2_ADD4(full)                                                               \
    do {                                                                            \
      int32x4_t x = vshlq_s32(vsubq_n_s32(s2_ld32(a + i, pr, full), z1), lsh);      \
      int32x4_t y = vshlq_s32(vsubq_n_s32(s2_ld32(b + i, pr, full), z2), lsh);      \
      int32x4_t s = vaddq_s32(s2_mbqm_v(x, m1, s1), s2_mbqm_v(y, m2, s2));          \
      s = vaddq_n_s32(s2_mbqm_v(s, mo, so), zo);                                    \
      s2_st32(out + i, vminq_s32(vmaxq_s32(s, vlo), vhi), pr, full);                \
    } while (0)
    mve_pred16_t pr = 0;
    for (; i + 4 <= n; i += 4) S2_ADD4(1);
    if (i < n) {
      pr = vctp32q(n - i);
      S2_ADD4(0);
    }
#undef S2_ADD4
    return;
  }
#endif
  for (; i < n; i++) {
    const int32_t x = (a[i] - z1) * (1 << left);
    const int32_t y = (b[i] - z2) * (1 << left);
    const int32_t s = s2_rdbp(s2_srdhm(x, m1s), -sh1) + s2_rdbp(s2_srdhm(y, m2s), -sh2);
    out[i] = s2_clamp8(s2_rdbp(s2_srdhm(s, mos), -sho) + zo, lo, hi);
  }
}

/* ======================================================================
 * AVERAGE_POOL_2D / MAX_POOL_2D (TFLite: the mean of the taps inside the
 * input, rounded half away from zero; no requantization)
 * ==================================================================== */

/* The window of output pixel (oy, ox) inside the input: rows iy0 + [y0, y1),
 * columns ix0 + [x0, x1). */
#define S2_POOL_WINDOW(p, oy, ox)                                                  \
  const int iy0 = (oy) * (p)->s_h - (p)->pad_t, ix0 = (ox) * (p)->s_w - (p)->pad_l; \
  const int y0 = S2_MAX(0, -iy0), y1 = S2_MIN((p)->k_h, (p)->in_h - iy0);          \
  const int x0 = S2_MAX(0, -ix0), x1 = S2_MIN((p)->k_w, (p)->in_w - ix0)

void s2_avgpool(const s2_pool_t *p, const int8_t *in, int8_t *out) {
  const int C = p->c;
  for (int oy = 0; oy < p->out_h; oy++) {
    for (int ox = 0; ox < p->out_w; ox++) {
      S2_POOL_WINDOW(p, oy, ox);
      const int count = (y1 - y0) * (x1 - x0);
#ifdef S2_MVE
      if (p->div_m && count == p->k_h * p->k_w) {
        /* sum of the window (int32 lanes), then round(|sum| / n) half away from zero
         * by the exact multiply-high division, the sign put back */
        const uint32x4_t half = vdupq_n_u32((uint32_t)(count / 2));
        const int32x4_t dshift = vdupq_n_s32(-(int32_t)p->div_s);
        for (int c = 0; c < C; c += 4) {
          mve_pred16_t pr = vctp32q(C - c);
          int32x4_t acc = vdupq_n_s32(0);
          for (int y = y0; y < y1; y++)
            for (int x = x0; x < x1; x++)
              acc = vaddq_s32(acc, vldrbq_z_s32(in + ((size_t)(iy0 + y) * p->in_w + ix0 + x) * C + c, pr));
          uint32x4_t u = vaddq_u32(vreinterpretq_u32_s32(vabsq_s32(acc)), half);
          int32x4_t q = vreinterpretq_s32_u32(vshlq_u32(vmulhq_u32(u, vdupq_n_u32(p->div_m)), dshift));
          q = vpselq_s32(vnegq_s32(q), q, vcmpltq_n_s32(acc, 0));
          q = vminq_s32(vmaxq_s32(q, vdupq_n_s32(p->act_min)), vdupq_n_s32(p->act_max));
          vstrbq_p_s32(out + c, q, pr);
        }
        out += C;
        continue;
      }
#endif
      if (count == 1) {
        const int8_t *src = in + ((size_t)(iy0 + y0) * p->in_w + ix0 + x0) * C;
#ifdef S2_MVE
        const int8x16_t vlo = vdupq_n_s8((int8_t)p->act_min), vhi = vdupq_n_s8((int8_t)p->act_max);
        for (int c = 0; c < C; c += 16) {
          mve_pred16_t pr = vctp8q(C - c);
          vstrbq_p_s8(out + c, vminq_s8(vmaxq_s8(vldrbq_z_s8(src + c, pr), vlo), vhi), pr);
        }
#else
        for (int c = 0; c < C; c++) out[c] = s2_clamp8(src[c], p->act_min, p->act_max);
#endif
        out += C;
        continue;
      }
      for (int c = 0; c < C; c++) {
        int32_t acc = 0;
        for (int y = y0; y < y1; y++)
          for (int x = x0; x < x1; x++) acc += in[((size_t)(iy0 + y) * p->in_w + ix0 + x) * C + c];
        acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
        out[c] = s2_clamp8(acc, p->act_min, p->act_max);
      }
      out += C;
    }
  }
}

void s2_maxpool(const s2_pool_t *p, const int8_t *in, int8_t *out) {
  const int C = p->c;
  for (int oy = 0; oy < p->out_h; oy++) {
    for (int ox = 0; ox < p->out_w; ox++) {
      S2_POOL_WINDOW(p, oy, ox);
#ifdef S2_MVE
      for (int c = 0; c < C; c += 16) {
        mve_pred16_t pr = vctp8q(C - c);
        int8x16_t m = vdupq_n_s8(-128);
        for (int y = y0; y < y1; y++)
          for (int x = x0; x < x1; x++)
            m = vmaxq_s8(m, vldrbq_z_s8(in + ((size_t)(iy0 + y) * p->in_w + ix0 + x) * C + c, pr));
        m = vminq_s8(vmaxq_s8(m, vdupq_n_s8((int8_t)p->act_min)), vdupq_n_s8((int8_t)p->act_max));
        vstrbq_p_s8(out + c, m, pr);
      }
#else
      for (int c = 0; c < C; c++) {
        int32_t m = -128;
        for (int y = y0; y < y1; y++)
          for (int x = x0; x < x1; x++) {
            const int32_t v = in[((size_t)(iy0 + y) * p->in_w + ix0 + x) * C + c];
            m = v > m ? v : m;
          }
        out[c] = s2_clamp8(m, p->act_min, p->act_max);
      }
#endif
      out += C;
    }
  }
}

/* ======================================================================
 * MEAN over a contiguous run of axes: input [outer, reduce, inner]
 * (TFLite Micro: int32 sums of the codes, minus zp * n, times a multiplier
 * that holds 1/n)
 * ==================================================================== */

void s2_mean(const s2_mean_t *p, const int8_t *in, int8_t *out, int32_t *sum) {
  const int R = p->reduce, I = p->inner;
  for (int o = 0; o < p->outer; o++) {
    const int8_t *base = in + (size_t)o * R * I;
    int i = 0;
#ifdef S2_MVE
    for (; i < I; i += 4) {
      mve_pred16_t pr = vctp32q(I - i);
      int32x4_t acc = vdupq_n_s32(0);
      for (int r = 0; r < R; r++) acc = vaddq_s32(acc, vldrbq_z_s32(base + (size_t)r * I + i, pr));
      vstrwq_p_s32(sum + i, acc, pr);
    }
#else
    for (; i < I; i++) sum[i] = 0;
    for (int r = 0; r < R; r++) {
      const int8_t *row = base + (size_t)r * I;
      for (i = 0; i < I; i++) sum[i] += row[i];
    }
#endif
    const int32_t zn = p->in_zp * R;
    for (i = 0; i < I; i++)
      out[(size_t)o * I + i] = s2_clamp8(s2_mbqm(sum[i] - zn, p->mult, p->shift) + p->out_zp, -128, 127);
  }
}

/* ======================================================================
 * QUANTIZE / DEQUANTIZE at the model boundary
 * ==================================================================== */

/* std::round of a float (halves away from zero), saturated to +-2^20 */
static inline int32_t s2_round_sat(float v) {
  if (v >= 1048576.0f) return 1048576;
  if (v <= -1048576.0f) return -1048576;
  int32_t t = (int32_t)v;          /* truncates; exact below 2^23 */
  const float frac = v - (float)t; /* exact */
  if (frac >= 0.5f) t++;
  else if (frac <= -0.5f) t--;
  return t;
}

void s2_quantize(const s2_quant_t *p, const float *in, int8_t *out) {
  for (int i = 0; i < p->size; i++)
    out[i] = s2_clamp8(s2_round_sat(in[i] / p->scale) + p->out_zp, -128, 127);
}

void s2_requantize(const s2_quant_t *p, const int8_t *in, int8_t *out) {
  for (int i = 0; i < p->size; i++)
    out[i] = s2_clamp8(s2_mbqm(in[i] - p->in_zp, p->mult, p->shift) + p->out_zp, -128, 127);
}

void s2_dequantize(const s2_quant_t *p, const int8_t *in, float *out) {
  for (int i = 0; i < p->size; i++) out[i] = (float)(in[i] - p->in_zp) * p->scale;
}
