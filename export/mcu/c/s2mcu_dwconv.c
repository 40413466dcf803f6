/* s2mcu kernels: DEPTHWISE_CONV_2D, dense (the spike-driven one is in s2mcu_spike.c).
 * See s2mcu.h and s2mcu_internal.h. Written for s2nn_keras (export.mcu). */
#include "s2mcu_internal.h"

/* ======================================================================
 * DEPTHWISE_CONV_2D
 * ==================================================================== */

/* The spike bits of channels [c0 + from, c0 + n) of one pixel's codes x, one compare each. */
static inline uint32_t s2_neuron_bits(const s2_dwconv_t *p, const int8_t *x, int c0, int from, int n) {
  uint32_t bits = 0;
  for (int o = from; o < n; o++) {
    const int c = c0 + o;
    const int8_t v = (int8_t)(x[c] ^ (p->neg8 ? p->neg8[c] : 0));
    bits |= (uint32_t)(v >= p->t8[c] && !(p->never8 && p->never8[c])) << o;
  }
  return bits;
}

/* A 1x1 depthwise neuron (the BN + neuron of a shared tensor) writing
 * spikes: acc = bias + (x - zp) w has one input code x per channel, so the
 * generator enumerates all 256 (export/mcu/spike_out.py) and channel c fires
 * iff (x ^ neg8[c]) >= t8[c] and not never8[c] (neg8 -1: a falling channel,
 * w < 0) -- one compare per output, no multiply and no requantization;
 * written as codes or as a spike stream (s2mcu.h). */
void s2_dwconv_neuron(const s2_dwconv_t *p, const int8_t *in, void *out) {
  const int C = p->out_c, HW = p->in_h * p->in_w;
  const int stream = (p->flags & S2_OUT_STREAM) != 0;
  uint8_t *ep = (uint8_t *)out;
  int8_t *o8 = (int8_t *)out;
#ifdef S2_MVE
  const int8x16_t on = vdupq_n_s8(p->out_on), off = vdupq_n_s8(p->out_off);
#endif
  for (int pix = 0; pix < HW; pix++, in += C) {
    uint8_t *cp = stream ? ep++ : 0;
#ifdef S2_MVE
    for (int c = 0; c < C; c += 16) {
      const mve_pred16_t pr = vctp8q(C - c);
      int8x16_t v = vldrbq_z_s8(in + c, pr);
      if (p->neg8) v = veorq_s8(v, vldrbq_z_s8(p->neg8 + c, pr));
      mve_pred16_t f = vcmpgeq_m_s8(v, vldrbq_z_s8(p->t8 + c, pr), pr);
      if (p->never8) f = vcmpeqq_m_n_s8(vldrbq_z_s8(p->never8 + c, pr), 0, f);
      if (stream) ep = s2_emit(ep, (uint32_t)f, (uint32_t)c);
      else vstrbq_p_s8(o8 + c, vpselq_s8(on, off, f), pr);
    }
#else
    for (int c0 = 0; c0 < C; c0 += 32) {
      const int n = S2_MIN(32, C - c0);
      uint32_t bits = 0;
      int o = 0;
#ifdef S2_DSP
      /* 4 channels per word: SSUB8 sets a GE flag per byte where x ^ neg >= t,
       * SEL turns them into 0xFF bytes, USAD8 of those bytes masked to bit i in
       * byte i adds up the 4-bit mask */
      for (; o + 4 <= n; o += 4) {
        uint32_t x, t, g;
        __builtin_memcpy(&x, in + c0 + o, 4);
        __builtin_memcpy(&t, p->t8 + c0 + o, 4);
        if (p->neg8) {
          __builtin_memcpy(&g, p->neg8 + c0 + o, 4);
          x ^= g;
        }
        (void)__ssub8((int8x4_t)x, (int8x4_t)t);
        uint32_t f = __sel(0xFFFFFFFFu, 0u);
        if (p->never8) {
          __builtin_memcpy(&g, p->never8 + c0 + o, 4);
          f &= ~(g * 0xFFu);
        }
        bits |= __usada8(f & 0x08040201u, 0u, 0u) << o;
      }
#endif
      bits |= s2_neuron_bits(p, in, c0, o, n);
      if (stream) {
        ep = s2_emit(ep, bits, (uint32_t)c0);
      } else {
        for (int k = 0; k < n; k++) o8[c0 + k] = (bits >> k) & 1u ? p->out_on : p->out_off;
      }
    }
#endif
    if (cp) *cp = (uint8_t)(ep - cp - 1);
    else o8 += C;
  }
}

/* One output of the generic loops: requantized, or a spike code (S2_OUT_CODES: acc >= thr). */
static inline int8_t s2_dw_value(const s2_dwconv_t *p, int32_t acc, int c) {
  if (p->flags & S2_OUT_CODES) return acc >= p->thr[c] ? p->out_on : p->out_off;
  return (int8_t)s2_requant(acc, p->mult[c], p->shift[c], p->out_zp, p->act_min, p->act_max);
}

void s2_dwconv(const s2_dwconv_t *p, const int8_t *restrict in, void *restrict out_) {
  int8_t *restrict out = (int8_t *)out_;
#ifdef S2_MVE
  const int vec = !(p->flags & S2_OUT_CODES);   /* the vector paths requantize */
#endif
  const int C = p->out_c, IC = p->in_c, DM = p->depth_mult;
  const int32_t in_zp = p->in_zp;
  const int8_t *restrict w = p->w;
  const int32_t *restrict bias = p->bias;
#ifdef S2_MVE
  const int32_t zp = p->out_zp, lo = p->act_min, hi = p->act_max;
  const int32_t *restrict mult = p->mult;
  const int8_t *restrict shift = p->shift;
#endif
  if (p->pointwise) {
    /* 1x1, stride 1: out[c] = requant(bias'[c] + x[c] w[c]), bias' = bias - zp w */
    const int HW = p->in_h * p->in_w;
    for (int pix = 0; pix < HW; pix++) {
      const int8_t *x = in + (size_t)pix * IC;
      int8_t *o = out + (size_t)pix * C;
#ifdef S2_MVE
      if (DM == 1 && vec) {
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
        for (int c = 0; c < C; c++) o[c] = s2_dw_value(p, bias[c] + x[c] * w[c], c);
        continue;
      }
      for (int c = 0; c < C; c++) o[c] = s2_dw_value(p, bias[c] + x[c / DM] * w[c], c);
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
          out[c] = s2_dw_value(p, acc, c);
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
      if (DM == 1 && vec) {
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
        out[c] = s2_dw_value(p, acc, c);
      }
      out += C;
    }
  }
}
