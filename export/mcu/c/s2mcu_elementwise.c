/* s2mcu kernels: ADD; QUANTIZE, REQUANTIZE, DEQUANTIZE at the model boundary;
 * broadcast ADD / MUL / GREATER_EQUAL and SELECT_V2.
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

/* ======================================================================
 * Broadcast ADD / MUL / GREATER_EQUAL (TFLite's reference arithmetic per
 * element; up to 4 collapsed dimensions, stride 0 where an input repeats)
 * ==================================================================== */

static inline __attribute__((always_inline)) int32_t s2_binary_one(const s2_binary_t *p, int op, int32_t x,
                                                                  int32_t y) {
  x -= p->a_zp;
  y -= p->b_zp;
  if (op == S2_BIN_MUL)
    return s2_clamp8(s2_mbqm(x * y, p->mo, p->so) + p->out_zp, p->act_min, p->act_max);
  x = s2_rdbp(s2_srdhm(x * (1 << p->left_shift), p->m1), -p->s1);
  y = s2_rdbp(s2_srdhm(y * (1 << p->left_shift), p->m2), -p->s2);
  if (op == S2_BIN_GE) return x >= y;
  return s2_clamp8(s2_rdbp(s2_srdhm(x + y, p->mo), -p->so) + p->out_zp, p->act_min, p->act_max);
}

#ifdef S2_MVE
/* One row of n outputs on 4 lanes: a contiguous, b contiguous (b_step 1) or
 * one value (b_step 0); the same arithmetic as s2_binary_one (s2_mbqm_v is
 * MBQM exactly; ADD's and GREATER_EQUAL's shifts are <= 0). */
static inline __attribute__((always_inline)) void s2_binary_row_v(const s2_binary_t *p, int op, const int8_t *a,
                                                                  const int8_t *b, int b_step, int8_t *out,
                                                                  int32_t n) {
  const int32x4_t lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max), ls = vdupq_n_s32(p->left_shift);
  const int32x4_t one_b = vdupq_n_s32(b[0] - p->b_zp);
  for (int32_t i = 0; i < n; i += 4) {
    const mve_pred16_t pr = vctp32q(n - i);
    int32x4_t x = vsubq_n_s32(vldrbq_z_s32(a + i, pr), p->a_zp);
    int32x4_t y = b_step ? vsubq_n_s32(vldrbq_z_s32(b + i, pr), p->b_zp) : one_b;
    int32x4_t v;
    if (op == S2_BIN_MUL) {
      v = s2_mbqm_v(vmulq_s32(x, y), vdupq_n_s32(p->mo), vdupq_n_s32(p->so));
    } else {
      x = s2_mbqm_v(vshlq_s32(x, ls), vdupq_n_s32(p->m1), vdupq_n_s32(p->s1));
      y = s2_mbqm_v(vshlq_s32(y, ls), vdupq_n_s32(p->m2), vdupq_n_s32(p->s2));
      if (op == S2_BIN_GE) {
        vstrbq_p_s32(out + i, vpselq_s32(vdupq_n_s32(1), vdupq_n_s32(0), vcmpgeq_s32(x, y)), pr);
        continue;
      }
      v = s2_mbqm_v(vaddq_s32(x, y), vdupq_n_s32(p->mo), vdupq_n_s32(p->so));
    }
    v = vminq_s32(vmaxq_s32(vaddq_n_s32(v, p->out_zp), lo), hi);
    vstrbq_p_s32(out + i, v, pr);
  }
}
#endif

/* the loops, once per op (op is a constant at each call) */
static inline __attribute__((always_inline)) void s2_binary_loops(const s2_binary_t *p, int op, const int8_t *a,
                                                                  const int8_t *b, int8_t *out) {
  const int32_t *n = p->shape, *sa = p->a_stride, *sb = p->b_stride;
  for (int32_t i0 = 0; i0 < n[0]; i0++)
    for (int32_t i1 = 0; i1 < n[1]; i1++)
      for (int32_t i2 = 0; i2 < n[2]; i2++) {
        const int8_t *pa = a + i0 * sa[0] + i1 * sa[1] + i2 * sa[2];
        const int8_t *pb = b + i0 * sb[0] + i1 * sb[1] + i2 * sb[2];
#ifdef S2_MVE
        if (sa[3] == 1 && (sb[3] == 1 || sb[3] == 0)) {
          s2_binary_row_v(p, op, pa, pb, sb[3], out, n[3]);
          out += n[3];
          continue;
        }
#endif
        for (int32_t i3 = 0; i3 < n[3]; i3++) *out++ = (int8_t)s2_binary_one(p, op, pa[i3 * sa[3]], pb[i3 * sb[3]]);
      }
}

void s2_binary(const s2_binary_t *p, const int8_t *a, const int8_t *b, int8_t *out) {
  /* out may be a when a has the output's shape: each element is read before it is written */
  if (p->op == S2_BIN_MUL) s2_binary_loops(p, S2_BIN_MUL, a, b, out);
  else if (p->op == S2_BIN_GE) s2_binary_loops(p, S2_BIN_GE, a, b, out);
  else s2_binary_loops(p, S2_BIN_ADD, a, b, out);
}

/* ======================================================================
 * SELECT_V2 (the codes of x where cond, else of y)
 * ==================================================================== */

void s2_select(const s2_select_t *p, const int8_t *cond, const int8_t *x, const int8_t *y, int8_t *out) {
  for (int32_t i = 0; i < p->size; i++) out[i] = cond[i] ? x[i * p->x_step] : y[i * p->y_step];
}
