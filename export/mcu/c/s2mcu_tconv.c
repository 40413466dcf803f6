/* s2mcu kernels: TRANSPOSE_CONV, dense and spike-driven.
 * See s2mcu.h and s2mcu_internal.h. Written for s2nn_keras (export.mcu).
 *
 * TFLite's reference scatters every input value x[iy][ix][ic] times its
 * weights into the outputs (iy s_h - pad_t + fy, ix s_w - pad_l + fx). Here
 * each output pixel gathers instead: tap fy reaches output row oy from input
 * row iy = (oy + pad_t - fy) / s_h when that division is exact and iy lies
 * inside the input (columns alike), and the int32 sums are the same. An
 * input value at the zero point adds nothing, so it is skipped: a spike
 * tensor's silent inputs cost one compare each. */
#include "s2mcu_internal.h"

size_t s2_tconv_scratch(const s2_tconv_t *p) { return (size_t)p->out_c * sizeof(int32_t) + 16; }

/* acc[0..n) += v * w[0..n) */
static inline void s2_axpy8(int32_t *acc, const int8_t *w, int32_t v, int n) {
  int i = 0;
#ifdef S2_MVE
  for (; i + 4 <= n; i += 4) vstrwq_s32(acc + i, vmlaq_n_s32(vldrwq_s32(acc + i), vldrbq_s32(w + i), v));
#endif
  for (; i < n; i++) acc[i] += v * w[i];
}

/* acc[0..n) += w[0..n) */
static inline void s2_add8(int32_t *acc, const int8_t *w, int n) {
  int i = 0;
#ifdef S2_MVE
  for (; i + 4 <= n; i += 4) vstrwq_s32(acc + i, vaddq_s32(vldrwq_s32(acc + i), vldrbq_s32(w + i)));
#endif
  for (; i < n; i++) acc[i] += w[i];
}

/* The input index (row or column) tap f reaches output o from, or -1. */
static inline int s2_tconv_source(int o, int pad, int f, int s, int in) {
  const int t = o + pad - f;
  if (t < 0 || t % s) return -1;
  return t / s < in ? t / s : -1;
}

uint32_t s2_tconv(const s2_tconv_t *p, const int8_t *in, int8_t *out, void *scratch) {
  const int IC = p->in_c, OC = p->out_c, spike = (p->flags & S2_TCONV_SPIKE) != 0;
  const int32_t zp = p->in_zp;
  int32_t *acc = (int32_t *)scratch;
  uint32_t fired = 0;
  if (spike) {
    const int n = p->in_h * p->in_w * IC;
    for (int i = 0; i < n; i++) {
      S2_CHECK_CODE(p, in[i]);
      fired += in[i] != zp;
    }
  }
  for (int oy = 0; oy < p->out_h; oy++) {
    for (int ox = 0; ox < p->out_w; ox++) {
      for (int c = 0; c < OC; c++) acc[c] = 0;
      for (int fy = 0; fy < p->k_h; fy++) {
        const int iy = s2_tconv_source(oy, p->pad_t, fy, p->s_h, p->in_h);
        if (iy < 0) continue;
        for (int fx = 0; fx < p->k_w; fx++) {
          const int ix = s2_tconv_source(ox, p->pad_l, fx, p->s_w, p->in_w);
          if (ix < 0) continue;
          const int8_t *x = in + ((size_t)iy * p->in_w + ix) * IC;
          const int8_t *w = p->w + (size_t)(fy * p->k_w + fx) * IC * OC;   /* HWIO */
          for (int ic = 0; ic < IC; ic++) {
            const int32_t v = x[ic] - zp;
            if (v == 0) continue;
            if (spike) s2_add8(acc, w + (size_t)ic * OC, OC);
            else s2_axpy8(acc, w + (size_t)ic * OC, v, OC);
          }
        }
      }
#ifdef S2_MVE
      for (int c = 0; c < OC; c += 4) {
        const mve_pred16_t pr = vctp32q(OC - c);
        int32x4_t a = vldrwq_z_s32(acc + c, pr);
        if (spike) a = vmulq_n_s32(a, p->spike_gain);
        a = vaddq_s32(a, vldrwq_z_s32(p->bias + c, pr));
        s2_requant_store4(out + c, a, p->mult + c, p->shift + c, p->out_zp, p->act_min, p->act_max, pr, 0);
      }
#else
      for (int c = 0; c < OC; c++) {
        const int32_t a = p->bias[c] + (spike ? p->spike_gain * acc[c] : acc[c]);
        out[c] = (int8_t)s2_requant(a, p->mult[c], p->shift[c], p->out_zp, p->act_min, p->act_max);
      }
#endif
      out += OC;
    }
  }
  return fired;
}
