/* s2mcu_internal.h: what the kernel sources share -- the code path of the
 * target (S2_MVE: Helium, S2_DSP: the DSP extension, neither: portable C),
 * TFLite's requantization on 4 lanes, the spike-code check of the host
 * tests, and the taps of an output pixel inside the input. Not part of the
 * API (s2mcu.h is); every s2mcu_*.c includes it first.
 *
 * The kernels, one source per op family:
 *   s2mcu_conv.c         CONV_2D / FULLY_CONNECTED, dense
 *   s2mcu_spike.c        the spike-driven CONV_2D / FULLY_CONNECTED and
 *                        DEPTHWISE_CONV_2D (they share the fired-input lists
 *                        and the requantization of the sums)
 *   s2mcu_dwconv.c       DEPTHWISE_CONV_2D, dense
 *   s2mcu_pool.c         AVERAGE_POOL_2D, MAX_POOL_2D, MEAN, REDUCE_MAX
 *   s2mcu_elementwise.c  ADD, broadcast ADD/MUL, SELECT_V2, QUANTIZE, REQUANTIZE, DEQUANTIZE
 *   s2mcu_shape.c        CONCATENATION, RESIZE_NEAREST_NEIGHBOR
 *   s2mcu_tconv.c        TRANSPOSE_CONV (dense and spike-driven)
 *
 * Inlining. The firmware's figures are retired instructions, so the kernels
 * keep the instructions they had as one file (arm-none-eabi-gcc 12, -O2).
 * GCC's inliner weighs a call against the whole translation unit, so the
 * decisions the split would have changed are written down instead:
 * S2_NOINLINE (s2_valid_taps: one copy per source, never inlined) and
 * S2_SUMS_INLINE (s2mcu_spike.c's requantization of the sums: out of line
 * on Helium, inlined on the others). Every kernel compiles to the same
 * instructions as before on both cores, but for s2_dwconv_spike_list on the
 * DSP path: its registers are allocated differently (4 instructions fewer
 * in the code, about 520 fewer per spike-driven depthwise layer of DS-CNN). */
#ifndef S2MCU_INTERNAL_H
#define S2MCU_INTERNAL_H

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
/* host tests: count the values of a spike tensor that are neither of its two codes */
#define S2_CHECK_CODE(p, v) \
  do { if ((v) != (int8_t)(p)->in_zp && (v) != (int8_t)((p)->in_zp + (p)->spike_gain)) s2_spike_violations++; } while (0)
#else
#define S2_CHECK_CODE(p, v) ((void)0)
#endif

#define S2_NOINLINE __attribute__((noinline))
/* the general fallbacks next to a specialised hot path (Helium, DSP):
 * compiled for size; on the portable path they are the hot path */
#if defined(S2_MVE) || defined(S2_DSP)
#define S2_COLD __attribute__((cold))
#else
#define S2_COLD
#endif
#ifdef S2_MVE
#define S2_SUMS_INLINE __attribute__((noinline))
#else
#define S2_SUMS_INLINE inline
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

/* S2_RQ_RIGHT: TFLite's MultiplyByQuantizedMultiplier when the shift is
 * -e <= -1 and |acc| < 2^30 (the generator checks both). SRDHM(a, m) =
 * floor((a m + 2^30) / 2^31) = SMMULR(2a, m) = (2 a m + 2^31) >> 32 exactly;
 * RDBP(x, e) = x / 2^e rounded half away from zero = (x + (x >> 31) +
 * 2^(e-1)) >> e (a negative x one less before the rounding shift). */
static inline int32_t s2_mbqm_right(int32_t acc, int32_t m, int e) {
#ifdef S2_DSP
  int32_t x;
  __asm__("smmulr %0, %1, %2" : "=r"(x) : "r"((int32_t)((uint32_t)acc << 1)), "r"(m));
#else
  int32_t x = (int32_t)(((int64_t)acc * m + (1ll << 30)) >> 31);
#endif
  x += x >> 31;
  return (x + (1 << (e - 1))) >> e;
}

#ifdef S2_MVE
/* the same on 4 lanes: VQRDMULH is SRDHM, VRSHL by -e rounds half up */
static inline int32x4_t s2_mbqm_right_v(int32x4_t x, int32x4_t m, int32x4_t neg_e) {
  x = vqrdmulhq_s32(x, m);
  x = vaddq_s32(x, vshrq_n_s32(x, 31));
  return vrshlq_s32(x, neg_e);
}
#endif

/* Spike streams (s2mcu.h): appends the channels c0 + i of the set bits i
 * of `bits` at ep, returns the next free byte. */
static inline uint8_t *s2_emit(uint8_t *ep, uint32_t bits, uint32_t c0) {
#if defined(S2_MVE) || defined(S2_DSP)
  uint32_t r;
  __asm__("rbit %0, %1" : "=r"(r) : "r"(bits));   /* then CLZ finds the lowest set bit */
  while (r) {
    const uint32_t b = (uint32_t)__builtin_clz(r);
    *ep++ = (uint8_t)(c0 + b);
    r &= ~(0x80000000u >> b);
  }
#else
  while (bits) {
    *ep++ = (uint8_t)(c0 + (uint32_t)__builtin_ctz(bits));
    bits &= bits - 1u;
  }
#endif
  return ep;
}

/* The taps (ky, kx) of an output pixel whose input position (iy0 + ky d_h,
 * ix0 + kx d_w) lies inside the input: input pixel index and tap index
 * (ky k_w + kx). At most S2_MAX_TAPS (the generator keeps larger kernels
 * on the paths that do not need the list). Returns how many. */
#define S2_MAX_TAPS 64
static S2_NOINLINE int s2_valid_taps(int k_h, int k_w, int d_h, int d_w, int in_h, int in_w, int iy0, int ix0,
                                     int32_t *pix, int32_t *tap) {
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

#endif /* S2MCU_INTERNAL_H */
