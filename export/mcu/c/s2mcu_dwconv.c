/* s2mcu kernels: DEPTHWISE_CONV_2D, dense (the spike-driven one is in s2mcu_spike.c).
 * See s2mcu.h and s2mcu_internal.h. Written for s2nn_keras (export.mcu). */
#include "s2mcu_internal.h"

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
