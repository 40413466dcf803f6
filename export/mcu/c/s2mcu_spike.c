/* s2mcu kernels, spike-driven: CONV_2D / FULLY_CONNECTED (spike_list,
 * spike_mask) and DEPTHWISE_CONV_2D (spike_list) reading a spike tensor,
 * and ADD followed by its neuron writing one. See s2mcu.h and
 * s2mcu_internal.h. Written for s2nn_keras (export.mcu). */
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
 * does -- or, when the output is itself a spike tensor, compared with the
 * channel's threshold: out == on  <=>  S >= thr (export/mcu/spike_out.py
 * derives thr with TFLite's arithmetic; requantize-and-clamp is monotone
 * in acc). With S2_ACC16 the sums fit int16 (the generator checks every
 * channel: max(sum w+, -sum w-) <= 32767 for a requantized output,
 * sum w+ - thr <= 32767 and sum w- - thr >= -32768 for a spike output),
 * whose wrap-around additions give the exact value.
 * ==================================================================== */

/* Where an output pixel goes: int8 values (requantized or codes), or the
 * next free byte of a spike stream. */
typedef struct {
  int8_t *out;
  uint8_t *ep;
} s2_dst_t;

/* out[oc0 + o] = requant(bias + g * s[o]) for o < nb (right: S2_RQ_RIGHT's short form) */
static S2_SUMS_INLINE void s2_finish_sums(const int32_t *bias, const int32_t *mult, const int8_t *shift,
                                          int32_t g, int32_t zp, int32_t lo, int32_t hi, const int32_t *s,
                                          int oc0, int nb, int8_t *out, int right) {
  bias += oc0;
  mult += oc0;
  shift += oc0;
  out += oc0;
#ifdef S2_MVE
  (void)right;
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
  if (right) {
    for (int o = 0; o < nb; o++) out[o] = s2_clamp8(s2_mbqm_right(bias[o] + g * s[o], mult[o], -shift[o]) + zp, lo, hi);
    return;
  }
  for (int o = 0; o < nb; o++) out[o] = (int8_t)s2_requant(bias[o] + g * s[o], mult[o], shift[o], zp, lo, hi);
#endif
}

/* Spikes s[o] >= thr[o] of nb channels from oc0, as codes or appended to a stream. */
static void s2_finish_spikes(const int32_t *thr, int8_t off, int8_t on, int stream, const int32_t *s, int oc0,
                             int nb, s2_dst_t *d) {
  thr += oc0;
  for (int o0 = 0; o0 < nb; o0 += 32) {
    const int n = S2_MIN(32, nb - o0);
    uint32_t bits = 0;
    for (int o = 0; o < n; o++) bits |= (uint32_t)(s[o0 + o] >= thr[o0 + o]) << o;
    if (stream) {
      d->ep = s2_emit(d->ep, bits, (uint32_t)(oc0 + o0));
    } else {
      for (int o = 0; o < n; o++) d->out[oc0 + o0 + o] = (bits >> o) & 1u ? on : off;
    }
  }
}

/* One block of nb (<= 64) output channels from their int32 sums S: requantized, or spikes. */
static void s2_finish_block(const s2_conv_t *p, const int32_t *s, int oc0, int nb, s2_dst_t *d) {
  if (p->flags & (S2_OUT_CODES | S2_OUT_STREAM))
    s2_finish_spikes(p->thr, p->out_off, p->out_on, (p->flags & S2_OUT_STREAM) != 0, s, oc0, nb, d);
  else
    s2_finish_sums(p->bias, p->mult, p->shift, p->spike_gain, p->out_zp, p->act_min, p->act_max, s, oc0, nb,
                   d->out, (p->flags & S2_RQ_RIGHT) != 0);
}

/* ---------------------------------------------------------------------
 * spike_mask: per input pixel a bit mask of the channels that fired; the
 * gather walks the set bits. Weights HWIO.
 * ------------------------------------------------------------------- */

size_t s2_conv_spike_mask_scratch(const s2_conv_t *p) {
  size_t words = ((size_t)p->in_c + 31u) / 32u;
  return (size_t)p->in_h * p->in_w * words * 4u + 64u;
}

/* The taps of one output pixel inside the input: input pixel and weights (HWIO, tap * in_c * out_c). */
typedef struct {
  int n;
  int32_t pix[S2_MAX_TAPS];
  int32_t woff[S2_MAX_TAPS];
} s2_rf_t;

static void s2_conv_rf(const s2_conv_t *p, int oy, int ox, s2_rf_t *rf) {
  rf->n = s2_valid_taps(p->k_h, p->k_w, p->d_h, p->d_w, p->in_h, p->in_w, oy * p->s_h - p->pad_t,
                        ox * p->s_w - p->pad_l, rf->pix, rf->woff);
  for (int t = 0; t < rf->n; t++) rf->woff[t] *= p->in_c * p->out_c;
}

/* Channels [oc0, oc0 + nb) of one output pixel from the bit masks. */
static void s2_gather_mask_block(const s2_conv_t *p, const uint32_t *mask, int words, const s2_rf_t *rf, int oc0,
                                 int nb, int32_t *sums) {
  const int OC = p->out_c;
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
    const uint32_t *m = mask + (size_t)rf->pix[t] * words;
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

uint32_t s2_conv_spike_mask(const s2_conv_t *p, const int8_t *in, int8_t *out, void *scratch) {
  const int C = p->in_c, HW = p->in_h * p->in_w, OC = p->out_c;
  const int words = (C + 31) / 32;
  const int OB = (p->flags & S2_ACC16) ? 32 : 16;
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
  s2_dst_t d = {out, 0};
  int32_t sums[32];
  s2_rf_t rf;
  for (int oy = 0; oy < p->out_h; oy++)
    for (int ox = 0; ox < p->out_w; ox++) {
      s2_conv_rf(p, oy, ox, &rf);
      for (int oc0 = 0; oc0 < OC; oc0 += OB) {
        const int nb = S2_MIN(OB, OC - oc0);
        s2_gather_mask_block(p, mask, words, &rf, oc0, nb, sums);
        s2_finish_block(p, sums, oc0, nb, &d);
      }
      d.out += OC;
    }
  return total;
}

/* ---------------------------------------------------------------------
 * spike_list: the input as a spike stream (s2mcu.h), written by its
 * producer (S2_IN_STREAM) or encoded here from the codes into the scratch.
 * Per output pixel and kernel row, the taps inside the input are adjacent
 * pixels of the stream (dilation 1): one walk over their entries, each
 * fired channel c adding the weight row of (tap, c).
 *
 * Weights, per block of blk output channels (the last block may be
 * narrower): [taps][in_c][blk], a row per (tap, input channel); inside a
 * full block the channels are in the lane order of the kernel path:
 *   Helium, int16 sums, blk 32: row byte j (8 per widening load, 4 loads)
 *     feeds lane j % 8 of vector j / 8; vectors 0 and 1 hold the even and
 *     odd channels 0..15, vectors 2 and 3 those of 16..31, so that
 *     narrowing 0 and 1 (2 and 3) into the even and odd bytes of one vector
 *     gives channels 0..15 (16..31) in order:
 *     byte j <-> channel 2 (j % 8) + (j / 8) % 2 + 16 (j / 16);
 *   Helium, int32 sums, blk 16: natural order;
 *   DSP (Cortex-M4), int16 sums, blk 16: SXTAB16 adds bytes 0 and 2 (1 and 3,
 *     rotated by 8) of a word to the two halves of a register; register k
 *     (k = 2 w + r for word w, r = 0 unrotated, 1 rotated) holds channels
 *     k (low half) and k + 8 (high half): byte 4 w + 2 h + r <-> channel
 *     2 w + r + 8 h;
 *   portable C: natural order.
 * thr16 holds -thr in the same lane order (Helium: 32 per block; DSP: per
 * register k the pair (-thr[k], -thr[k + 8])), so the accumulators start at
 * -thr and a spike is a sign bit.
 * ------------------------------------------------------------------- */

size_t s2_conv_spike_list_scratch(const s2_conv_t *p) {
  if (p->flags & S2_IN_STREAM) return 0;
  return (size_t)p->in_h * p->in_w * ((size_t)p->in_c + 1u);
}

/* The codes of the input as a spike stream at ep; returns the inputs that
 * fired. A 1x1 strided kernel reads every s-th row and column only: the
 * others are written empty. */
static S2_COLD uint32_t s2_stream_encode(const s2_conv_t *p, const int8_t *in, uint8_t *ep) {
  const int C = p->in_c;
  const int8_t zp = (int8_t)p->in_zp;
  uint32_t total = 0;
  for (int y = 0; y < p->in_h; y++) {
    const int skip_row = p->k_h == 1 && (y + p->pad_t) % p->s_h != 0;
    for (int x = 0; x < p->in_w; x++) {
      const int8_t *v = in + ((size_t)y * p->in_w + x) * C;
      uint8_t *cp = ep++;
      if (!skip_row && !(p->k_w == 1 && (x + p->pad_l) % p->s_w != 0)) {
#ifdef S2_MVE
        for (int c = 0; c < C; c += 16) {
          mve_pred16_t pr = vctp8q(C - c);
          ep = s2_emit(ep, (uint32_t)vcmpneq_m_n_s8(vldrbq_z_s8(v + c, pr), zp, pr), (uint32_t)c);
        }
#else
        for (int c = 0; c < C; c++) {
          S2_CHECK_CODE(p, v[c]);
          if (v[c] != zp) *ep++ = (uint8_t)c;
        }
#endif
      }
      *cp = (uint8_t)(ep - cp - 1);
      total += *cp;
    }
  }
  return total;
}

/* The first byte of each row of a stream; returns its end. */
static const uint8_t *s2_stream_rows(const uint8_t *s, int h, int w, const uint8_t **rows) {
  for (int y = 0; y < h; y++) {
    rows[y] = s;
    for (int x = 0; x < w; x++) s += 1u + *s;
  }
  return s;
}

/* The receptive field of one output pixel in the stream: per kernel row
 * inside the input, the stream at its first tap inside the input, and that
 * tap's index (ky k_w + kx); the same number of taps in every row. */
typedef struct {
  int rows, taps;
  const uint8_t **e;
  const int32_t *tap;
} s2_field_t;

/* Every fired input of a field, any dilation: wp its weight row in a block
 * of nb channels (rows of nb bytes per input channel and tap), then BODY. */
#define S2_FOR_FIRED(p, f, wblk, nb, wp, BODY)                                                      \
  for (int r_ = 0; r_ < (f)->rows; r_++) {                                                        \
    const uint8_t *e_ = (f)->e[r_];                                                               \
    for (int t_ = 0; t_ < (f)->taps; t_++) {                                                      \
      const int8_t *wb_ = (wblk) + (size_t)((f)->tap[r_] + t_) * (p)->in_c * (nb);                \
      for (int n_ = *e_++; n_ > 0; n_--) {                                                        \
        const int8_t *wp = wb_ + (size_t)(*e_++) * (nb);                                          \
        BODY                                                                                      \
      }                                                                                           \
      for (int j_ = 1; j_ < (p)->d_w && t_ + 1 < (f)->taps; j_++) e_ += 1u + *e_;                 \
    }                                                                                             \
  }

/* Generic C (portable path, tail blocks): int32 sums of nb channels. */
static S2_COLD void s2_block_c(const s2_conv_t *p, const s2_field_t *f, const int8_t *wblk, int nb, int32_t *sums) {
  for (int o = 0; o < nb; o++) sums[o] = 0;
  S2_FOR_FIRED(p, f, wblk, nb, wp, for (int o = 0; o < nb; o++) sums[o] += wp[o];)
}

#ifdef S2_MVE
/* The AC loops of a whole receptive field (dilation 1), 32 channels in
 * int16 lanes: per kernel row its pixel table and weight offset, per tap its
 * count, per fired input: index, row address, 4 widening loads, 4 adds,
 * loop end (11 instructions per 32 additions; 5 per tap, 7 per row).
 * rt[r][ix]: the stream at pixel ix of row r; ko[r]: that row's first tap's
 * weights relative to wk. */
/* 8 weights widened to int16 lanes from byte OFF of the row, added to accumulator A */
#define S2_LOAD_ADD16(T, OFF, A) "vldrb.s16 %q[" #T "], [%[wp], #" #OFF "]\n vadd.i16 %q[" #A "], %q[" #A "], %q[" #T "]\n"
#define S2_FIELD_MVE16(NV, a0, a1, a2, a3, RT, KO, ROWS, IX, TAPS, WK, STEP)                        \
  do {                                                                                            \
    int16x8_t t0_, t1_;                                                                           \
    const uint8_t *const *const *rt_ = (RT);                                                      \
    const int32_t *ko_ = (KO);                                                                    \
    const uint8_t *e_;                                                                            \
    const int8_t *wb_, *wp_;                                                                      \
    uint32_t r_ = (uint32_t)(ROWS), k_, n_;                                                       \
    __asm__ volatile(/* per kernel row: its pixel table at ix, its weights, the taps */            \
                     "0: ldr %[e], [%[rt]], #4\n ldr %[e], [%[e], %[ix], lsl #2]\n"                 \
                     "ldr %[wb], [%[ko]], #4\n add %[wb], %[wb], %[wk]\n mov %[k], %[taps]\n"       \
                     /* per tap: its count; per fired input: index, row, 8 NV channels */         \
                     "1: ldrb %[n], [%[e]], #1\n wls lr, %[n], 3f\n"                                \
                     "2: ldrb %[n], [%[e]], #1\n add %[wp], %[wb], %[n], lsl %[sh]\n"               \
                     S2_LOAD_ADD16(t0, 0, a0) ".if %c[nv] > 1\n" S2_LOAD_ADD16(t1, 8, a1) ".endif\n" \
                     ".if %c[nv] > 2\n" S2_LOAD_ADD16(t0, 16, a2) S2_LOAD_ADD16(t1, 24, a3) ".endif\n" \
                     "le lr, 2b\n"                                                                \
                     /* next tap (the weights one step on), next row */                           \
                     "3: add %[wb], %[wb], %[st]\n subs %[k], %[k], #1\n bne 1b\n"                \
                     "subs %[r], %[r], #1\n bne 0b\n"                                              \
                     : [a0] "+w"(a0), [a1] "+w"(a1), [a2] "+w"(a2), [a3] "+w"(a3), [t0] "=&w"(t0_),   \
                       [t1] "=&w"(t1_), [rt] "+r"(rt_), [ko] "+r"(ko_), [r] "+r"(r_), [e] "=&r"(e_),  \
                       [wb] "=&r"(wb_), [k] "=&r"(k_), [n] "=&r"(n_), [wp] "=&l"(wp_)               \
                     : [ix] "r"(IX), [taps] "r"(TAPS), [wk] "r"(WK), [st] "r"(STEP), [nv] "i"(NV),     \
                       [sh] "i"((NV) == 4 ? 5 : (NV) == 2 ? 4 : 3)                                 \
                     : "lr", "memory", "cc");                                                     \
  } while (0)

/* Requantizes 8 channels of int16 sums (lanes: channels in the block's
 * order) into the int16 lanes of the narrowed result: the even lanes then
 * the odd lanes widened to int32, acc = bias + g S, TFLite's
 * MultiplyByQuantizedMultiplier, + zp, narrowed back saturating. */
S2_INL int16x8_t s2_requant8_mve(int16x8_t s, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                                 int32_t g, int32_t zp, int right) {
  int32x4_t lo = vmlaq_n_s32(vldrwq_s32(bias), vmovlbq_s16(s), g);
  int32x4_t hi = vmlaq_n_s32(vldrwq_s32(bias + 4), vmovltq_s16(s), g);
  if (right) {
    lo = s2_mbqm_right_v(lo, vldrwq_s32(mult), vldrbq_s32(shift));
    hi = s2_mbqm_right_v(hi, vldrwq_s32(mult + 4), vldrbq_s32(shift + 4));
  } else {
    lo = s2_mbqm_v(lo, vldrwq_s32(mult), vldrbq_s32(shift));
    hi = s2_mbqm_v(hi, vldrwq_s32(mult + 4), vldrbq_s32(shift + 4));
  }
  return vqmovntq_s32(vqmovnbq_s32(vdupq_n_s16(0), vaddq_n_s32(lo, zp)), vaddq_n_s32(hi, zp));
}

/* Requantizes a block of 8 nv int16 sums (nv vectors: 1, 2 or 4): bias,
 * mult and shift stored in the widening's order; the narrowing back to int8
 * saturates to [-128, 127], the clamp of a fused activation follows. (Out
 * of line: it needs every vector register.) */
static S2_NOINLINE void s2_requant32_mve(const s2_conv_t *p, int16x8_t a0, int16x8_t a1, int16x8_t a2,
                                         int16x8_t a3, int oc0, int8_t *out, int nv) {
  const int32_t *bias = p->bias + oc0, *mult = p->mult + oc0;
  const int8_t *shift = p->shift + oc0;
  const int32_t g = p->spike_gain, zp = p->out_zp;
  const int right = (p->flags & S2_RQ_RIGHT) != 0;
  const int8x16_t z8 = vdupq_n_s8(0);
  const int16x8_t n0 = s2_requant8_mve(a0, bias, mult, shift, g, zp, right);
  if (nv == 1) {   /* 8 channels: the int16 lanes in order, stored as bytes */
    const int16x8_t v = vminq_s16(vmaxq_s16(n0, vdupq_n_s16(p->act_min)), vdupq_n_s16(p->act_max));
    vstrbq_s16(out + oc0, v);
    return;
  }
  const int16x8_t n1 = s2_requant8_mve(a1, bias + 8, mult + 8, shift + 8, g, zp, right);
  int8x16_t v = vqmovntq_s16(vqmovnbq_s16(z8, n0), n1);
  if (p->act_min > -128 || p->act_max < 127)
    v = vminq_s8(vmaxq_s8(v, vdupq_n_s8((int8_t)p->act_min)), vdupq_n_s8((int8_t)p->act_max));
  vst1q_s8(out + oc0, v);
  if (nv == 2) return;
  const int16x8_t n2 = s2_requant8_mve(a2, bias + 16, mult + 16, shift + 16, g, zp, right);
  const int16x8_t n3 = s2_requant8_mve(a3, bias + 24, mult + 24, shift + 24, g, zp, right);
  v = vqmovntq_s16(vqmovnbq_s16(z8, n2), n3);
  if (p->act_min > -128 || p->act_max < 127)
    v = vminq_s8(vmaxq_s8(v, vdupq_n_s8((int8_t)p->act_min)), vdupq_n_s8((int8_t)p->act_max));
  vst1q_s8(out + oc0 + 16, v);
}

/* The spikes of a block of 8 nv channels from S - thr, as bits: saturated to
 * int8 (the sign survives) and narrowed into channel order; one vector of 8:
 * its int16 compare (2 predicate bits per lane) squeezed to 8 bits. */
S2_INL uint32_t s2_spike_bits_mve(int16x8_t a0, int16x8_t a1, int16x8_t a2, int16x8_t a3, const int nv) {
  if (nv == 1) {
    uint32_t b = (uint32_t)vcmpgeq_n_s16(a0, 0) & 0x5555u;
    b = (b | (b >> 1)) & 0x3333u;
    b = (b | (b >> 2)) & 0x0F0Fu;
    return (b | (b >> 4)) & 0xFFu;
  }
  const int8x16_t z8 = vdupq_n_s8(0);
  uint32_t bits = (uint32_t)vcmpgeq_n_s8(vqmovntq_s16(vqmovnbq_s16(z8, a0), a1), 0);
  if (nv == 4) bits |= (uint32_t)vcmpgeq_n_s8(vqmovntq_s16(vqmovnbq_s16(z8, a2), a3), 0) << 16;
  return bits;
}

/* The same walk with int32 lanes, 16 channels, natural order (sums beyond int16). */
static S2_COLD void s2_block_mve32(const s2_conv_t *p, const s2_field_t *f, const int8_t *wblk, int oc0, s2_dst_t *d) {
  int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
  S2_FOR_FIRED(p, f, wblk, 16, wp, {
    a0 = vaddq_s32(a0, vldrbq_s32(wp));
    a1 = vaddq_s32(a1, vldrbq_s32(wp + 4));
    a2 = vaddq_s32(a2, vldrbq_s32(wp + 8));
    a3 = vaddq_s32(a3, vldrbq_s32(wp + 12));
  })
  int32_t sums[16];
  vst1q_s32(sums, a0); vst1q_s32(sums + 4, a1); vst1q_s32(sums + 8, a2); vst1q_s32(sums + 12, a3);
  s2_finish_block(p, sums, oc0, 16, d);
}
#endif

#ifdef S2_DSP
/* The loop state of the Cortex-M4's field walk that does not fit the
 * registers (the 13 free ones hold the operands; lr counts). */
typedef struct {
  const uint8_t *const *const *rt;   /* next kernel row's pixel table */
  const int32_t *ko;                  /* next kernel row's weight offset */
  uint32_t rows, ix, taps, step, k;
  const int8_t *wk;
} s2_walk_dsp_t;

/* The AC loops of a whole receptive field on the Cortex-M4, 16 channels in
 * the halves of 8 registers: per fired input index, row address, 2 LDRD, 8
 * SXTAB16 (each adds 2 sign-extended bytes), loop end (14 instructions per
 * 16 additions); per tap 9, per kernel row 16 (its state on the stack). */
/* the bytes 0 and 2 of word V added to the halves of E, bytes 1 and 3 to those of O (SXTAB16) */
#define S2_SXTAB_PAIR(E, O, V) "sxtab16 %[" #E "], %[" #E "], %[" #V "]\n sxtab16 %[" #O "], %[" #O "], %[" #V "], ror #8\n"
#define S2_FIELD_DSP16(W)                                                                          \
  do {                                                                                            \
    uint32_t v0_, v1_, wp_;                                                                       \
    const uint8_t *e_;                                                                            \
    const int8_t *wb_;                                                                            \
    __asm__ volatile(/* per kernel row (its state on the stack): pixel table at ix, weights, taps */ \
                     "0: ldr %[wp], %[rt]\n ldr %[e], [%[wp]], #4\n str %[wp], %[rt]\n"             \
                     "ldr %[wp], %[ix]\n ldr %[e], [%[e], %[wp], lsl #2]\n"                          \
                     "ldr %[wp], %[ko]\n ldr %[wb], [%[wp]], #4\n str %[wp], %[ko]\n"               \
                     "ldr %[wp], %[wk]\n add %[wb], %[wb], %[wp]\n ldr %[wp], %[taps]\n str %[wp], %[k]\n" \
                     /* per tap: its count in lr */                                               \
                     "1: ldrb lr, [%[e]], #1\n cmp lr, #0\n beq 3f\n"                              \
                     /* per fired input: index, row, 2 x 8 bytes added as int16 pairs */          \
                     "2: ldrb %[wp], [%[e]], #1\n add %[wp], %[wb], %[wp], lsl #4\n"                \
                     "ldrd %[v0], %[v1], [%[wp]]\n" S2_SXTAB_PAIR(a0, a1, v0) S2_SXTAB_PAIR(a2, a3, v1) \
                     "ldrd %[v0], %[wp], [%[wp], #8]\n" S2_SXTAB_PAIR(a4, a5, v0) S2_SXTAB_PAIR(a6, a7, wp) \
                     "subs lr, lr, #1\n bne 2b\n"                                                  \
                     /* next tap: the weights one step on; taps and rows counted on the stack */    \
                     "3: ldr %[wp], %[st]\n add %[wb], %[wb], %[wp]\n"                             \
                     "ldr %[wp], %[k]\n subs %[wp], %[wp], #1\n str %[wp], %[k]\n bne 1b\n"        \
                     "ldr %[wp], %[rows]\n subs %[wp], %[wp], #1\n str %[wp], %[rows]\n bne 0b\n"  \
                     : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [a4] "+r"(a4),   \
                       [a5] "+r"(a5), [a6] "+r"(a6), [a7] "+r"(a7), [e] "=&r"(e_), [wb] "=&r"(wb_),  \
                       [wp] "=&r"(wp_), [v0] "=&r"(v0_), [v1] "=&r"(v1_)                            \
                     : [rt] "m"((W).rt), [ko] "m"((W).ko), [rows] "m"((W).rows), [k] "m"((W).k),        \
                       [ix] "m"((W).ix), [taps] "m"((W).taps), [st] "m"((W).step), [wk] "m"((W).wk)   \
                     : "lr", "memory", "cc"); /* writes rt, ko, rows, k: "memory" */               \
  } while (0)

/* The sign bits of 16 sums S - thr (register k's halves: channels k and
 * k + 8) as the bits of the channels that fired. */
static inline uint32_t s2_fired_dsp16(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4,
                                      uint32_t a5, uint32_t a6, uint32_t a7) {
  uint32_t m = (a0 & 0x80008000u) >> 15;
  m |= (a1 & 0x80008000u) >> 14;
  m |= (a2 & 0x80008000u) >> 13;
  m |= (a3 & 0x80008000u) >> 12;
  m |= (a4 & 0x80008000u) >> 11;
  m |= (a5 & 0x80008000u) >> 10;
  m |= (a6 & 0x80008000u) >> 9;
  m |= (a7 & 0x80008000u) >> 8;
  return ~((m & 0xFFu) | ((m >> 8) & 0xFF00u)) & 0xFFFFu;
}

/* One block of 16 channels of one output pixel (its own frame: the walk
 * needs every free register). */
static S2_NOINLINE void s2_pixel_dsp16(const s2_conv_t *p, s2_walk_dsp_t *w, int oc0, s2_dst_t *d) {
  uint32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  const int spikes = (p->flags & (S2_OUT_CODES | S2_OUT_STREAM)) != 0;
  if (spikes) {
    const uint32_t *t = (const uint32_t *)(const void *)(p->thr16 + oc0);
    a0 = t[0], a1 = t[1], a2 = t[2], a3 = t[3], a4 = t[4], a5 = t[5], a6 = t[6], a7 = t[7];
  }
  if (w->rows > 0 && w->taps > 0) {
    s2_walk_dsp_t ws = *w;   /* on the stack: the walk addresses it from sp */
    S2_FIELD_DSP16(ws);
  }
  if (spikes) {
    const uint32_t fired = s2_fired_dsp16(a0, a1, a2, a3, a4, a5, a6, a7);
    if (p->flags & S2_OUT_STREAM) {
      d->ep = s2_emit(d->ep, fired, (uint32_t)oc0);
    } else {
      for (int o = 0; o < 16; o++) d->out[oc0 + o] = (fired >> o) & 1u ? p->out_on : p->out_off;
    }
    return;
  }
  const uint32_t a[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
  if (p->flags & S2_RQ_RIGHT) {   /* requantize: register k's halves are channels k and k + 8 */
    const int32_t *bias = p->bias + oc0, *mult = p->mult + oc0;
    const int8_t *shift = p->shift + oc0;
    const int32_t g = p->spike_gain, zp = p->out_zp, lo = p->act_min, hi = p->act_max;
    int8_t *out = d->out + oc0;
    for (int k = 0; k < 8; k++) {
      const int32_t s0 = (int16_t)(a[k] & 0xFFFFu), s1 = (int32_t)a[k] >> 16;
      out[k] = s2_clamp8(s2_mbqm_right(bias[k] + g * s0, mult[k], -shift[k]) + zp, lo, hi);
      out[k + 8] = s2_clamp8(s2_mbqm_right(bias[k + 8] + g * s1, mult[k + 8], -shift[k + 8]) + zp, lo, hi);
    }
    return;
  }
  int32_t sums[16];
  for (int k = 0; k < 8; k++) {
    sums[k] = (int16_t)(a[k] & 0xFFFFu);
    sums[k + 8] = (int32_t)a[k] >> 16;
  }
  s2_finish_block(p, sums, oc0, 16, d);
}

/* The channel of byte b of a row of the block (DSP16's lane order above). */
#define DSP16_CHANNEL(b) (2 * ((b) / 4) + (b) % 2 + 8 * (((b) / 2) % 2))

/* The same for a field of any dilation (s2_conv_row): per tap. */
static S2_NOINLINE void s2_block_dsp16(const s2_conv_t *p, const s2_field_t *f, const int8_t *wblk, int oc0,
                                       s2_dst_t *d) {
  int32_t sums[16] = {0};
  const int spikes = (p->flags & (S2_OUT_CODES | S2_OUT_STREAM)) != 0;
  S2_FOR_FIRED(p, f, wblk, 16, wp, for (int b = 0; b < 16; b++) sums[DSP16_CHANNEL(b)] += wp[b];)
  if (spikes) {
    for (int k = 0; k < 8; k++) {   /* thr16: per register k the pair (-thr[k], -thr[k + 8]) */
      sums[k] += p->thr16[oc0 + 2 * k];
      sums[k + 8] += p->thr16[oc0 + 2 * k + 1];
    }
    uint32_t fired = 0;
    for (int o = 0; o < 16; o++) fired |= (uint32_t)(sums[o] >= 0) << o;
    if (p->flags & S2_OUT_STREAM) {
      d->ep = s2_emit(d->ep, fired, (uint32_t)oc0);
    } else {
      for (int o = 0; o < 16; o++) d->out[oc0 + o] = (fired >> o) & 1u ? p->out_on : p->out_off;
    }
    return;
  }
  s2_finish_block(p, sums, oc0, 16, d);
}
#endif

/* The window of output column ox in kernel taps inside the input
 * [kx_lo, kx_hi) (dilation d) and its first input column. */
static inline int s2_window(const s2_conv_t *p, int ox, int *kx_lo, int *kx_hi) {
  const int KW = p->k_w, W = p->in_w, dw = p->d_w;
  const int ix0 = ox * p->s_w - p->pad_l;
  int lo = 0, hi = KW;
  if (dw == 1) {
    if (ix0 < 0) lo = -ix0;
    if (ix0 + KW > W) hi = W - ix0;
  } else {
    if (ix0 < 0) lo = (-ix0 + dw - 1) / dw;
    if (ix0 > W - 1) hi = 0;
    else if (ix0 + (KW - 1) * dw > W - 1) hi = (W - 1 - ix0) / dw + 1;
  }
  *kx_lo = lo;
  *kx_hi = hi;
  return ix0 + lo * dw;
}

/* The kernel rows of one output row: per row inside the input, its pixel
 * table (the stream position of each pixel of that input row), its first
 * tap (ky k_w) and that tap's weights in a block of 32 (Helium). */
typedef struct {
  int rows;
  const uint8_t *const **tab;
  int32_t *ky_tap;
  int32_t *ko;
} s2_rows_t;

#ifdef S2_MVE
/* The hot case on Helium, one output row: dilation 1, int16 sums, every
 * block of 8 nv channels full (nv vectors: 1, 2, 4); per pixel and block one
 * walk of the receptive field (S2_FIELD_MVE16), then the spikes (a stream
 * or codes) or the requantization. */
S2_INL void s2_row_mve16(const s2_conv_t *p, const s2_rows_t *kr, s2_dst_t *d, const int nv, const int how) {
  const int mode = how >= 0 ? how : (p->flags & S2_OUT_STREAM) ? 2 : (p->flags & S2_OUT_CODES) ? 1 : 0;
  const int OC = p->out_c, KW = p->k_w, W = p->in_w, s_w = p->s_w, pad_l = p->pad_l, rows = kr->rows;
  const int B = 8 * nv;
  const uint32_t step = (uint32_t)p->in_c * (uint32_t)B;
  const size_t blk_bytes = (size_t)p->k_h * KW * step;
  const int16_t *thr16 = p->thr16;
  const uint8_t *const *const *tab = kr->tab;
  const int32_t *ko = kr->ko;
  uint8_t *ep = d->ep;
  int8_t *out = d->out;
  for (int ox = 0; ox < p->out_w; ox++) {
    const int ix0 = ox * s_w - pad_l;
    const int lo = ix0 < 0 ? -ix0 : 0, hi = ix0 + KW > W ? W - ix0 : KW;
    const int taps = hi - lo;
    const uint32_t ix1 = (uint32_t)(ix0 + lo);
    uint8_t *cp = ep++;
    const int8_t *wk = p->w + (size_t)lo * step;
    for (int oc0 = 0; oc0 < OC; oc0 += B, wk += blk_bytes) {
      int16x8_t a0, a1, a2, a3;
      a0 = a1 = a2 = a3 = vdupq_n_s16(0);
      if (mode) {
        a0 = vld1q_s16(thr16 + oc0);
        if (nv > 1) a1 = vld1q_s16(thr16 + oc0 + 8);
        if (nv > 2) a2 = vld1q_s16(thr16 + oc0 + 16), a3 = vld1q_s16(thr16 + oc0 + 24);
      }
      if (taps > 0) S2_FIELD_MVE16(nv, a0, a1, a2, a3, tab, ko, rows, ix1, taps, wk, step);
      if (mode == 2) {
        ep = s2_emit(ep, s2_spike_bits_mve(a0, a1, a2, a3, nv), (uint32_t)oc0);
      } else if (mode == 1) {
        const uint32_t bits = s2_spike_bits_mve(a0, a1, a2, a3, nv);
        for (int o = 0; o < B; o++) out[oc0 + o] = (bits >> o) & 1u ? p->out_on : p->out_off;
      } else {
        s2_requant32_mve(p, a0, a1, a2, a3, oc0, out, nv);
      }
    }
    if (mode == 2) *cp = (uint8_t)(ep - cp - 1);
    else out += OC, ep--;
  }
  d->ep = ep;
  d->out = out;
}

/* (blocks of 32, the usual case, specialised per output: 2 a stream, 1
 * codes, 0 requantized; narrower blocks read the flags per block) */
static S2_NOINLINE void s2_conv_row_fast(const s2_conv_t *p, const s2_rows_t *kr, s2_dst_t *d) {
  if (p->blk == 32) {
    if (p->flags & S2_OUT_STREAM) s2_row_mve16(p, kr, d, 4, 2);
    else if (p->flags & S2_OUT_CODES) s2_row_mve16(p, kr, d, 4, 1);
    else s2_row_mve16(p, kr, d, 4, 0);
  } else if (p->blk == 16) {
    s2_row_mve16(p, kr, d, 2, -1);
  } else {
    s2_row_mve16(p, kr, d, 1, -1);
  }
}
#elif defined(S2_DSP)
/* The hot case on the Cortex-M4, one output row: dilation 1, int16 sums,
 * every block of 16 full; per pixel and block one walk (S2_FIELD_DSP16). */
static S2_NOINLINE void s2_conv_row_fast(const s2_conv_t *p, const s2_rows_t *kr, s2_dst_t *d) {
  const int OC = p->out_c, KW = p->k_w, W = p->in_w, stream = (p->flags & S2_OUT_STREAM) != 0;
  const uint32_t step = (uint32_t)p->in_c * 16u;
  const size_t blk_bytes = (size_t)p->k_h * KW * step;
  s2_walk_dsp_t w;
  w.step = step;
  for (int ox = 0; ox < p->out_w; ox++) {
    const int ix0 = ox * p->s_w - p->pad_l;
    const int lo = ix0 < 0 ? -ix0 : 0, hi = ix0 + KW > W ? W - ix0 : KW;
    uint8_t *cp = stream ? d->ep++ : 0;
    const int8_t *wk = p->w + (size_t)lo * step;
    for (int oc0 = 0; oc0 < OC; oc0 += 16, wk += blk_bytes) {
      w.rt = kr->tab, w.ko = kr->ko, w.rows = (uint32_t)kr->rows, w.ix = (uint32_t)(ix0 + lo);
      w.taps = (uint32_t)(hi - lo), w.wk = wk;
      s2_pixel_dsp16(p, &w, oc0, d);
    }
    if (cp) *cp = (uint8_t)(d->ep - cp - 1);
    else d->out += OC;
  }
}
#endif

/* Any other case, one output row: per pixel its receptive field, per block
 * the int16 kernel when it applies (Cortex-M4, any dilation on Helium),
 * else int32 sums (Helium) or plain C. */
static S2_COLD S2_NOINLINE void s2_conv_row(const s2_conv_t *p, const s2_rows_t *kr, s2_dst_t *d) {
  const int OC = p->out_c, B = p->blk;
  const size_t per_channel = (size_t)p->k_h * p->k_w * p->in_c;
  const int stream = (p->flags & S2_OUT_STREAM) != 0;
  const uint8_t *e[kr->rows + 1];
  int32_t tap[kr->rows + 1];
  s2_field_t f = {kr->rows, 0, e, tap};
  for (int ox = 0; ox < p->out_w; ox++) {
    int kx_lo, kx_hi;
    const int ix1 = s2_window(p, ox, &kx_lo, &kx_hi);
    f.taps = kx_hi - kx_lo;
    for (int r = 0; r < kr->rows; r++) {
      e[r] = f.taps > 0 ? kr->tab[r][ix1] : 0;
      tap[r] = kr->ky_tap[r] + kx_lo;
    }
    uint8_t *cp = stream ? d->ep++ : 0;
    for (int oc0 = 0; oc0 < OC; oc0 += B) {
      const int nb = S2_MIN(B, OC - oc0);
      const int8_t *wblk = p->w + (size_t)oc0 * per_channel;
#if defined(S2_MVE)
      if (nb == 16 && !(p->flags & S2_ACC16)) {
        s2_block_mve32(p, &f, wblk, oc0, d);
        continue;
      }
#elif defined(S2_DSP)
      if (nb == 16 && (p->flags & S2_ACC16)) {
        s2_block_dsp16(p, &f, wblk, oc0, d);
        continue;
      }
#endif
      int32_t sums[64];
      s2_block_c(p, &f, wblk, nb, sums);
      s2_finish_block(p, sums, oc0, nb, d);
    }
    if (cp) *cp = (uint8_t)(d->ep - cp - 1);
    else d->out += OC;
  }
}

/* The stream position of each pixel of input row y (rows: each row's start). */
static void s2_row_table(const uint8_t *row, int w, const uint8_t **tab) {
  for (int x = 0; x < w; x++) {
    tab[x] = row;
    row += 1u + *row;
  }
}

uint32_t s2_conv_spike_list(const s2_conv_t *p, const int8_t *in, void *out, void *scratch) {
  const int H = p->in_h, W = p->in_w, KH = p->k_h, KW = p->k_w;
  const uint8_t *s = (const uint8_t *)in;
  const uint8_t *rows[H];
  uint32_t total;
  if (p->flags & S2_IN_STREAM) {
    total = (uint32_t)(s2_stream_rows(s, H, W, rows) - s) - (uint32_t)(H * W);
  } else {
    total = s2_stream_encode(p, in, (uint8_t *)scratch);
    s = (const uint8_t *)scratch;
    s2_stream_rows(s, H, W, rows);
  }
  s2_dst_t d = {(int8_t *)out, (uint8_t *)out};
  /* pixel tables of the input rows in use: with dilation 1 a rolling set of
   * k_h (row y in slot y % k_h, built once), else one per kernel row */
  const uint8_t *tabs[KH][W];
  const uint8_t *const *tabp[KH];
  int held[KH];
  int32_t ky_tap[KH], ko[KH];
  for (int k = 0; k < KH; k++) held[k] = -1;
  s2_rows_t kr = {0, tabp, ky_tap, ko};
#if defined(S2_MVE)
  const int fast = p->d_w == 1 && (p->flags & S2_ACC16) && (p->blk == 32 || p->blk == 16 || p->blk == 8) &&
                   p->out_c % p->blk == 0;
#elif defined(S2_DSP)
  const int fast = p->d_w == 1 && (p->flags & S2_ACC16) && p->blk == 16 && p->out_c % 16 == 0;
#endif
  const int kstep = p->in_c * p->blk;
  for (int oy = 0; oy < p->out_h; oy++) {
    const int iy0 = oy * p->s_h - p->pad_t;
    kr.rows = 0;
    for (int ky = 0; ky < KH; ky++) {
      const int iy = iy0 + ky * p->d_h;
      if (iy < 0 || iy >= H) continue;
      const int slot = p->d_h == 1 ? iy % KH : ky;
      if (held[slot] != iy) {
        s2_row_table(rows[iy], W, tabs[slot]);
        held[slot] = iy;
      }
      tabp[kr.rows] = tabs[slot];
      ky_tap[kr.rows] = ky * KW;
      ko[kr.rows] = ky * KW * kstep;
      kr.rows++;
    }
#if defined(S2_MVE) || defined(S2_DSP)
    if (fast) {
      s2_conv_row_fast(p, &kr, &d);
      continue;
    }
#endif
    s2_conv_row(p, &kr, &d);
  }
  return total;
}

/* Depthwise conv reading a spike tensor: per output pixel, each fired
 * input (tap, c) adds w[tap][c * depth_mult + m] to the accumulators of its
 * depth_mult output channels; acc = bias + (on - zp) S, requantized (or
 * a spike output: S >= thr, the codes). */
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
      if (p->flags & S2_OUT_CODES) {
        for (int c = 0; c < C; c++) out[c] = acc[c] >= p->thr[c] ? p->out_on : p->out_off;
      } else {
        s2_finish_sums(p->bias, p->mult, p->shift, p->spike_gain, p->out_zp, p->act_min, p->act_max, acc, 0, C,
                       out, 0);
      }
      out += C;
    }
  }
  return total;
}

/* ======================================================================
 * ADD followed by its neuron (a 1x1 depthwise with a clamp), fused. TFLite's
 * ADD puts both inputs on a 2^20 grid and sums them, s = r(a) + R(b), then
 * requantizes; the neuron requantizes that again and clamps. Both output
 * stages are monotone, so channel c fires iff (s >= thr[c]) != neg[c]
 * (export/mcu/spike_out.py finds thr with TFLite's arithmetic and checks it
 * on all 65,536 pairs of int8 inputs); the ADD's int8 output is never
 * written. r(a) = (a - a_zp) 2^19 exactly (multiplier 1/2: the input of the
 * larger scale), so the kernel tests d = R(b) + 2^19 a + k[c] >= 0 with
 * k[c] = -2^19 a_zp - thr[c]; a falling channel (neg) compares ~d.
 * Helium: 16 channels per pass, d narrowed (saturating) to int8, one
 * compare; the stream then lists the channels in the narrowing's lane
 * order (byte j <-> channel 4 (2 (j & 1) + (j >> 1 & 1)) + (j >> 2) of the
 * 16): its readers' weights are stored in that order (the generator).
 * ==================================================================== */
#ifdef S2_MVE
/* d for 4 channels from c: R(b) (the rounding shift only when sh < 0), + k, + 2^19 a, ^ neg */
S2_INL int32x4_t s2_add_d4(const s2_add_spike_t *p, const int8_t *a, const int8_t *b, int c, int32x4_t bz,
                           int round, mve_pred16_t pr, int full) {
  int32x4_t r = vqrdmulhq_n_s32(vmlaq_n_s32(bz, s2_ld32(b + c, pr, full), 1 << 20), p->m);
  if (round) r = vrshlq_n_s32(vaddq_s32(r, vshrq_n_s32(r, 31)), p->sh);
  r = vmlaq_n_s32(vaddq_s32(r, s2_ldw(p->k + c, pr, full)), s2_ld32(a + c, pr, full), 1 << 19);
  if (p->neg) r = veorq_s32(r, s2_ld32(p->neg + c, pr, full));
  return r;
}

/* Helium: 16 channels per pass; a stream lists them in the narrowing's lane order (C % 16 == 0). */
S2_INL void s2_add_spike_mve(const s2_add_spike_t *p, const int8_t *a, const int8_t *b, void *out, int round,
                             int stream) {
  const int C = p->c;
  const int32x4_t bz = vdupq_n_s32(-(int32_t)p->b_zp * (1 << 20));
  const int32x4_t on = vdupq_n_s32(p->out_on), off = vdupq_n_s32(p->out_off);
  uint8_t *ep = (uint8_t *)out;
  int8_t *o8 = (int8_t *)out;
  for (int pix = 0; pix < p->pixels; pix++, a += C, b += C) {
    if (stream) {
      uint8_t *cp = ep++;
      for (int c0 = 0; c0 < C; c0 += 16) {
        const int32x4_t d0 = s2_add_d4(p, a, b, c0, bz, round, 0, 1), d1 = s2_add_d4(p, a, b, c0 + 4, bz, round, 0, 1);
        const int32x4_t d2 = s2_add_d4(p, a, b, c0 + 8, bz, round, 0, 1);
        const int32x4_t d3 = s2_add_d4(p, a, b, c0 + 12, bz, round, 0, 1);
        const int16x8_t n01 = vqmovntq_s32(vqmovnbq_s32(vdupq_n_s16(0), d0), d1);
        const int16x8_t n23 = vqmovntq_s32(vqmovnbq_s32(vdupq_n_s16(0), d2), d3);
        const int8x16_t v = vqmovntq_s16(vqmovnbq_s16(vdupq_n_s8(0), n01), n23);
        ep = s2_emit(ep, (uint32_t)vcmpgeq_n_s8(v, 0), (uint32_t)c0);
      }
      *cp = (uint8_t)(ep - cp - 1);
      continue;
    }
    for (int c = 0; c < C; c += 4) {
      const mve_pred16_t pr = vctp32q(C - c);
      const int32x4_t d = s2_add_d4(p, a, b, c, bz, round, pr, 0);
      vstrbq_p_s32(o8 + c, vpselq_s32(on, off, vcmpgeq_n_s32(d, 0)), pr);
    }
    o8 += C;
  }
}
#endif

void s2_add_spike(const s2_add_spike_t *p, const int8_t *a, const int8_t *b, void *out) {
  const int stream = (p->flags & S2_OUT_STREAM) != 0;
#ifdef S2_MVE
  if (p->sh) {
    if (stream) s2_add_spike_mve(p, a, b, out, 1, 1);
    else s2_add_spike_mve(p, a, b, out, 1, 0);
  } else {
    if (stream) s2_add_spike_mve(p, a, b, out, 0, 1);
    else s2_add_spike_mve(p, a, b, out, 0, 0);
  }
#else
  const int C = p->c, e = -p->sh;
  const int32_t m = p->m, bz = -(int32_t)p->b_zp * (1 << 20);
  const int32_t *k = p->k;
  const int8_t *neg = p->neg;
  uint8_t *ep = (uint8_t *)out;
  int8_t *o8 = (int8_t *)out;
  for (int pix = 0; pix < p->pixels; pix++, a += C, b += C) {
    uint8_t *cp = stream ? ep++ : 0;
    for (int c0 = 0; c0 < C; c0 += 32) {
      const int n = S2_MIN(32, C - c0);
      uint32_t miss = 0;   /* bit 31 of each d >= 0 test, shifted down: the channels that do not fire */
      if (e > 0 && !neg) {  /* the usual case, S2_RQ_RIGHT's arithmetic (|x| < 2^28) */
        const int32_t rnd = 1 << (e - 1);
        for (int c = c0; c < c0 + n; c++) {
          int32_t r = s2_mbqm_right((int32_t)b[c] * (1 << 20) + bz, m, 0 + e);
          (void)rnd;
          miss = (miss >> 1) | ((uint32_t)(r + k[c] + (int32_t)a[c] * (1 << 19)) & 0x80000000u);
        }
      } else {
        for (int c = c0; c < c0 + n; c++) {
          const int32_t x = (int32_t)b[c] * (1 << 20) + bz;
          const int32_t r = e ? s2_mbqm_right(x, m, e) : s2_srdhm(x, m);
          int32_t dd = r + k[c] + (int32_t)a[c] * (1 << 19);
          if (neg) dd ^= neg[c];
          miss = (miss >> 1) | ((uint32_t)dd & 0x80000000u);
        }
      }
      const uint32_t bits = ~(miss >> (32 - n)) & (n == 32 ? 0xFFFFFFFFu : ((1u << n) - 1u));
      if (stream) {
        ep = s2_emit(ep, bits, (uint32_t)c0);
      } else {
        for (int o = 0; o < n; o++) o8[c0 + o] = (bits >> o) & 1u ? p->out_on : p->out_off;
      }
    }
    if (cp) *cp = (uint8_t)(ep - cp - 1);
    else o8 += C;
  }
#endif
}
