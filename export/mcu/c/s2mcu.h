/* s2mcu: the int8 kernels of s2nn_keras' microcontroller C (export.mcu).
 *
 * Plain C99 with one code path per target, chosen by the compiler's feature
 * macros: Helium (__ARM_FEATURE_MVE, Cortex-M55), the DSP extension
 * (__ARM_FEATURE_DSP, Cortex-M4) and portable C (any other compiler: the
 * host build of the tests). Every path computes TFLite's int8 arithmetic
 * exactly (export/quant.py restates it; docs/MCU.md derives the vector
 * forms), so all of them give byte-identical outputs. The kernels are
 * s2mcu_*.c, one source per op family (s2mcu_internal.h lists them);
 * a build compiles all of them with the generated model.c.
 *
 * Data: NHWC int8 activations; conv weights OHWI ("dense") or HWIO
 * ("spike" layouts), depthwise weights HWC; int32 bias, per output
 * channel a quantized multiplier (int32) and shift (int8).
 */
#ifndef S2MCU_H
#define S2MCU_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Flags of s2_conv_t.flags. */
#define S2_ACC16 1u      /* spike layouts: the weight sums fit int16 (bound checked by the generator) */
#define S2_LIST_IN_PLACE 2u  /* spike_list: the index lists overwrite the input (this layer reads it last) */
#define S2_DENSE_HWIO 4u     /* dense with few taps (K <= 32, e.g. an image stem): HWIO weights, per tap x * w[tap][:] */

typedef struct {
  int16_t in_h, in_w, in_c, out_h, out_w, out_c;
  uint8_t k_h, k_w, s_h, s_w, d_h, d_w;
  int16_t pad_t, pad_l;
  int16_t in_zp, out_zp, act_min, act_max;
  int16_t spike_gain;      /* spike layouts: on code - zero point */
  uint16_t flags;
  const int8_t *w;         /* dense: OHWI (HWIO with S2_DENSE_HWIO); spike layouts: HWIO */
  const int32_t *bias;     /* dense: bias - in_zp * sum(w) per channel; spike: bias */
  const int32_t *mult;
  const int8_t *shift;
} s2_conv_t;

typedef struct {
  int16_t in_h, in_w, in_c, out_h, out_w, out_c;
  uint8_t k_h, k_w, s_h, s_w, d_h, d_w, depth_mult, pointwise;  /* pointwise: 1x1, stride 1, no padding */
  int16_t pad_t, pad_l;
  int16_t in_zp, out_zp, act_min, act_max;
  int16_t spike_gain;      /* spike layout: on code - zero point */
  uint16_t flags;          /* S2_LIST_IN_PLACE */
  const int8_t *w;         /* HWC (C = out channels) */
  const int32_t *bias;     /* bias (pointwise: bias - in_zp * w) */
  const int32_t *mult;
  const int8_t *shift;
} s2_dwconv_t;

typedef struct {
  int32_t size;
  int16_t in1_zp, in2_zp, out_zp, act_min, act_max;
  int8_t left_shift, s1, s2, so;
  int32_t m1, m2, mo;
} s2_add_t;

typedef struct {
  int16_t in_h, in_w, c, out_h, out_w;
  uint8_t k_h, k_w, s_h, s_w;
  int16_t pad_t, pad_l, act_min, act_max;
  /* average pool, full windows: u / (k_h k_w) = (u * div_m) >> (32 + div_s) for
   * 0 <= u <= 128 k_h k_w + k_h k_w / 2 (checked by the generator); div_m 0: none */
  uint32_t div_m;
  uint8_t div_s;
} s2_pool_t;

typedef struct {
  int32_t outer, reduce, inner;
  int16_t in_zp, out_zp;
  int32_t mult;
  int32_t shift;
} s2_mean_t;

typedef struct {
  int32_t size;
  int16_t in_zp, out_zp;
  int32_t mult;
  int32_t shift;
  float scale;
} s2_quant_t;

/* ---- TFLite's requantization (double rounding), scalar ---------------- */

static inline int32_t s2_srdhm(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  int64_t ab = (int64_t)a * (int64_t)b;
  return (int32_t)((ab + (1ll << 30)) >> 31);
}

static inline int32_t s2_rdbp(int32_t x, int e) {
  if (e == 0) return x;
  int32_t mask = (int32_t)((1u << e) - 1u);
  int32_t rem = x & mask;
  int32_t thr = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (rem > thr ? 1 : 0);
}

#ifndef S2_SINGLE_ROUNDING
static inline int32_t s2_mbqm(int32_t x, int32_t m, int shift) {
  int ls = shift > 0 ? shift : 0;
  int rs = shift > 0 ? 0 : -shift;
  return s2_rdbp(s2_srdhm((int32_t)((uint32_t)x << ls), m), rs);
}
#else
/* TFLITE_SINGLE_ROUNDING's variant, only for the rounding experiment of the
 * tests (the tflite-micro interpreter uses the one above); scalar paths only. */
static inline int32_t s2_mbqm(int32_t x, int32_t m, int shift) {
  const int total = 31 - shift;
  return (int32_t)(((int64_t)x * m + (1ll << (total - 1))) >> total);
}
#endif

static inline int8_t s2_clamp8(int32_t v, int32_t lo, int32_t hi) {
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  return (int8_t)v;
}

/* ---- real numbers at the model's boundary (model.h's helpers) ---------- */

/* The int8 code of x in a tensor of this scale and zero point, as
 * export.tflite.runtimes.quantize computes it (the export's verification
 * feeds TFLite Micro those codes): x / scale in double precision, rounded
 * half to even, plus the zero point, saturated to [-128, 127]. */
static inline int8_t s2_quantize_real(float x, float scale, int32_t zp) {
  double v = (double)x / (double)scale;
  if (!(v == v)) v = 0.0;                                  /* NaN */
  v = v > 1048576.0 ? 1048576.0 : (v < -1048576.0 ? -1048576.0 : v);
  int32_t t = (int32_t)v;                                  /* truncates */
  const double frac = v - (double)t;                       /* exact */
  if (frac > 0.5 || (frac == 0.5 && (t & 1))) t++;
  else if (frac < -0.5 || (frac == -0.5 && (t & 1))) t--;
  return s2_clamp8(t + zp, -128, 127);
}

/* The real value of an int8 code, as export.tflite.runtimes.dequantize
 * computes it: (q - zp) * scale in double precision, then float. */
static inline float s2_dequantize_real(int8_t q, float scale, int32_t zp) {
  return (float)(((double)q - (double)zp) * (double)scale);
}

/* ---- kernels (s2mcu_*.c) ------------------------------------------------ */

/* Scratch each kernel needs (bytes), for the generator's planner. */
size_t s2_conv_dense_scratch(const s2_conv_t *p);
size_t s2_conv_spike_list_scratch(const s2_conv_t *p);
size_t s2_conv_spike_mask_scratch(const s2_conv_t *p);

void s2_conv_dense(const s2_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
/* Spike-driven: return the number of input values that fired. */
uint32_t s2_conv_spike_list(const s2_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
uint32_t s2_conv_spike_mask(const s2_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
void s2_dwconv(const s2_dwconv_t *p, const int8_t *in, int8_t *out);
size_t s2_dwconv_spike_list_scratch(const s2_dwconv_t *p);
uint32_t s2_dwconv_spike_list(const s2_dwconv_t *p, const int8_t *in, int8_t *out, void *scratch);
void s2_add(const s2_add_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void s2_avgpool(const s2_pool_t *p, const int8_t *in, int8_t *out);
void s2_maxpool(const s2_pool_t *p, const int8_t *in, int8_t *out);
void s2_mean(const s2_mean_t *p, const int8_t *in, int8_t *out, int32_t *scratch);
void s2_quantize(const s2_quant_t *p, const float *in, int8_t *out);
void s2_requantize(const s2_quant_t *p, const int8_t *in, int8_t *out);
void s2_dequantize(const s2_quant_t *p, const int8_t *in, float *out);

#ifdef S2_CHECK_SPIKES
extern volatile uint32_t s2_spike_violations;
#endif

/* ---- per-layer hooks (the board harness defines S2_PROFILE) ----------- */
/* S2_LAYER_MARK(i) stores the SysTick count (a core register, the same
 * address on every Cortex-M) before layer i: under QEMU -icount it counts
 * retired instructions (docs/MCU.md). */
#ifdef S2_PROFILE
extern volatile uint32_t s2_profile_ticks[];
#define S2_LAYER_MARK(i) (s2_profile_ticks[(i)] = *(volatile uint32_t *)0xE000E018u)
#else
#define S2_LAYER_MARK(i) ((void)0)
#endif

#ifdef __cplusplus
}
#endif
#endif /* S2MCU_H */
