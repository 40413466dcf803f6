/* s2mcu kernels: AVERAGE_POOL_2D, MAX_POOL_2D, MEAN.
 * See s2mcu.h and s2mcu_internal.h. Written for s2nn_keras (export.mcu). */
#include "s2mcu_internal.h"

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
 * REDUCE_MAX over a contiguous run of axes: input [outer, reduce, inner]
 * (TFLite Micro: the input's grid, no requantization; of a spike tensor
 * it is an OR: the on code wherever one input fired)
 * ==================================================================== */

void s2_reduce_max(const s2_reduce_t *p, const int8_t *in, int8_t *out) {
  const int R = p->reduce, I = p->inner;
  for (int o = 0; o < p->outer; o++) {
    const int8_t *base = in + (size_t)o * R * I;
    int8_t *dst = out + (size_t)o * I;
    int i = 0;
#ifdef S2_MVE
    for (; i < I; i += 16) {
      mve_pred16_t pr = vctp8q(I - i);
      int8x16_t m = vdupq_n_s8(-128);
      for (int r = 0; r < R; r++) m = vmaxq_s8(m, vldrbq_z_s8(base + (size_t)r * I + i, pr));
      vstrbq_p_s8(dst + i, m, pr);
    }
#else
    for (; i < I; i++) dst[i] = -128;
    for (int r = 0; r < R; r++) {
      const int8_t *row = base + (size_t)r * I;
      for (i = 0; i < I; i++) dst[i] = row[i] > dst[i] ? row[i] : dst[i];
    }
#endif
  }
}
