/* s2mcu kernels, spike-driven: CONV_2D / FULLY_CONNECTED (spike_list,
 * spike_mask) and DEPTHWISE_CONV_2D (spike_list) reading a spike tensor.
 * See s2mcu.h and s2mcu_internal.h. Written for s2nn_keras (export.mcu). */
#include "s2mcu_internal.h"

#ifdef S2_CHECK_SPIKES
/* host tests: values of a spike tensor that are neither of its two codes */
volatile uint32_t s2_spike_violations;
#endif

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
static S2_SUMS_INLINE void s2_finish_sums(const int32_t *bias, const int32_t *mult, const int8_t *shift,
                                          int32_t g, int32_t zp, int32_t lo, int32_t hi, const int32_t *s,
                                          int oc0, int nb, int8_t *out);

/* requantize nb accumulators (int32 sums S) of one pixel into out[oc0..) */
static inline void s2_spike_finish(const s2_conv_t *p, const int32_t *s, int oc0, int nb, int8_t *out) {
  s2_finish_sums(p->bias, p->mult, p->shift, p->spike_gain, p->out_zp, p->act_min, p->act_max, s, oc0, nb, out);
}

static S2_SUMS_INLINE void s2_finish_sums(const int32_t *bias, const int32_t *mult, const int8_t *shift,
                                          int32_t g, int32_t zp, int32_t lo, int32_t hi, const int32_t *s,
                                          int oc0, int nb, int8_t *out) {
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
