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
