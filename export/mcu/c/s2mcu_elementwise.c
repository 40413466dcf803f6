/* s2mcu kernels: ADD; QUANTIZE, REQUANTIZE, DEQUANTIZE at the model boundary.
 * See s2mcu.h and s2mcu_internal.h. Written for s2nn_keras (export.mcu). */
#include "s2mcu_internal.h"

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
