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
#define S2_IN_STREAM 8u      /* spike_list: the input is a spike stream (below), written by its producer */
#define S2_OUT_CODES 16u     /* spike output by thresholds (no requantization), written as the two int8 codes */
#define S2_OUT_STREAM 32u    /* spike output by thresholds, written as a spike stream */
#define S2_RQ_RIGHT 64u      /* every shift <= -1 and |acc| < 2^30: the short requantization (s2mcu_internal.h) */
#define S2_DENSE_PAIRS 128u  /* dense, Helium / DSP: weights of channel pairs interleaved (s2mcu_conv.c) */

/* A spike stream of an [H, W, C] spike tensor (C <= 255): per pixel, in
 * raster order, one byte n (how many channels fired) followed by those n
 * channel indices (one byte each); at most H W (C + 1) bytes. Producers
 * with thresholds write it directly (S2_OUT_STREAM), spike_list convs read
 * it (S2_IN_STREAM): no encoding pass and no requantization in between. */

typedef struct {
  int16_t in_h, in_w, in_c, out_h, out_w, out_c;
  uint8_t k_h, k_w, s_h, s_w, d_h, d_w;
  int16_t pad_t, pad_l;
  int16_t in_zp, out_zp, act_min, act_max;
  int16_t spike_gain;      /* spike layouts: on code - zero point */
  uint16_t flags;
  const int8_t *w;         /* dense: OHWI (HWIO with S2_DENSE_HWIO, pairs with S2_DENSE_PAIRS); spike_mask: HWIO;
                            * spike_list: per block of
                            * blk output channels [taps][in_c][blk] (the kernel path's lane order, s2mcu_spike.c) */
  const int32_t *bias;     /* dense: bias - in_zp * sum(w) per channel; spike: bias */
  const int32_t *mult;
  const int8_t *shift;
  int16_t blk;             /* spike_list: output channels per weight block */
  int8_t out_off, out_on;  /* S2_OUT_CODES / S2_OUT_STREAM: the two codes */
  const int32_t *thr;      /* spike output: fires iff S >= thr (spike input: S the fired weights' sum) or acc >= thr */
  const int16_t *thr16;    /* spike_list fast blocks: -thr in the block's lane order (int16 sums) */
} s2_conv_t;

typedef struct {
  int16_t in_h, in_w, in_c, out_h, out_w, out_c;
  uint8_t k_h, k_w, s_h, s_w, d_h, d_w, depth_mult, pointwise;  /* pointwise: 1x1, stride 1, no padding */
  int16_t pad_t, pad_l;
  int16_t in_zp, out_zp, act_min, act_max;
  int16_t spike_gain;      /* spike layout: on code - zero point */
  uint16_t flags;          /* S2_LIST_IN_PLACE, S2_OUT_CODES, S2_OUT_STREAM */
  const int8_t *w;         /* HWC (C = out channels) */
  const int32_t *bias;     /* bias (pointwise: bias - in_zp * w) */
  const int32_t *mult;
  const int8_t *shift;
  int8_t out_off, out_on;  /* spike output codes */
  /* spike output of a pointwise neuron: channel c fires iff (x ^ neg8[c]) >= t8[c] and not never8[c] (x its
   * int8 input); of the spike_list layout: iff S >= thr[c] */
  const int8_t *t8, *neg8, *never8;
  const int32_t *thr;
} s2_dwconv_t;

/* ADD followed by a 1x1 depthwise neuron, fused (s2mcu_spike.c): TFLite's
 * ADD up to its sum on the 2^20 grid, s = r(a) + R(b) with r(a) = (a - a_zp)
 * 2^19 exactly (the input of the larger scale: multiplier 1/2) and R(b) =
 * MBQM((b - b_zp) 2^20, m, sh); channel c fires iff (s >= thr[c]) != neg[c].
 * The kernel compares d = R(b) + 2^19 a + k[c] >= 0, k[c] = -2^19 a_zp - thr[c]
 * (S2_OUT_STREAM on Helium needs c % 16 == 0). */
typedef struct {
  int32_t pixels;
  int16_t c;               /* channels */
  int16_t b_zp;
  int32_t m;
  int8_t sh;               /* <= 0 */
  int8_t out_off, out_on;
  uint8_t flags;           /* S2_OUT_CODES or S2_OUT_STREAM */
  const int32_t *k;        /* per channel */
  const int8_t *neg;       /* per channel -1 (a falling channel: fires iff s < thr) or 0; NULL: none falls */
} s2_add_spike_t;

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
uint32_t s2_conv_spike_list(const s2_conv_t *p, const int8_t *in, void *out, void *scratch);
uint32_t s2_conv_spike_mask(const s2_conv_t *p, const int8_t *in, int8_t *out, void *scratch);
void s2_dwconv(const s2_dwconv_t *p, const int8_t *in, void *out);
/* a 1x1 depthwise neuron writing spikes (t8, neg8, never8; S2_OUT_CODES or S2_OUT_STREAM) */
void s2_dwconv_neuron(const s2_dwconv_t *p, const int8_t *in, void *out);
size_t s2_dwconv_spike_list_scratch(const s2_dwconv_t *p);
uint32_t s2_dwconv_spike_list(const s2_dwconv_t *p, const int8_t *in, int8_t *out, void *scratch);
/* ADD + 1x1 depthwise neuron: a and b the ADD's inputs (a: the one of multiplier 1/2), out codes or a stream */
void s2_add_spike(const s2_add_spike_t *p, const int8_t *a, const int8_t *b, void *out);
void s2_add(const s2_add_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void s2_avgpool(const s2_pool_t *p, const int8_t *in, int8_t *out);
void s2_maxpool(const s2_pool_t *p, const int8_t *in, int8_t *out);
void s2_mean(const s2_mean_t *p, const int8_t *in, int8_t *out, int32_t *scratch);
void s2_quantize(const s2_quant_t *p, const float *in, int8_t *out);
void s2_requantize(const s2_quant_t *p, const int8_t *in, int8_t *out);
void s2_dequantize(const s2_quant_t *p, const int8_t *in, float *out);

/* ---- more ops: CONCATENATION, RESIZE_NEAREST_NEIGHBOR (s2mcu_shape.c),
 * TRANSPOSE_CONV (s2mcu_tconv.c), REDUCE_MAX (s2mcu_pool.c), broadcast
 * ADD / MUL / GREATER_EQUAL and SELECT_V2 (s2mcu_elementwise.c) ---------- */

/* CONCATENATION on [outer, axis, inner]: per outer index, each input's run of
 * sizes[i] = its axis extent x inner bytes (TFLite Micro: equal grids, a copy). */
typedef struct {
  int32_t outer, count;
  const int32_t *sizes;
  const int8_t *const *inputs;   /* activations or constants */
} s2_concat_t;

/* RESIZE_NEAREST_NEIGHBOR: output row y reads input row ys[y], column x input
 * column xs[x] (the generator computes TFLite's float index rule). */
typedef struct {
  int32_t batch, in_h, in_w, c, out_h, out_w;
  const int32_t *ys, *xs;
} s2_resize_t;

/* TRANSPOSE_CONV: weights HWIO, per output pixel the inputs whose scattered
 * taps reach it (TFLite's reference scatter, gathered); flags S2_TCONV_SPIKE:
 * the input is a spike tensor, acc = bias + spike_gain * (sum of the weights
 * of the inputs that fired) */
#define S2_TCONV_SPIKE 1u
typedef struct {
  int16_t in_h, in_w, in_c, out_h, out_w, out_c;
  uint8_t k_h, k_w, s_h, s_w;
  int16_t pad_t, pad_l;
  int16_t in_zp, out_zp, act_min, act_max;
  int16_t spike_gain;
  uint16_t flags;
  const int8_t *w;
  const int32_t *bias;
  const int32_t *mult;
  const int8_t *shift;
} s2_tconv_t;

/* REDUCE_MAX over [outer, reduce, inner] (TFLite Micro: equal grids, no requantization). */
typedef struct {
  int32_t outer, reduce, inner;
} s2_reduce_t;

/* Broadcast ADD / MUL: output index (i0, i1, i2, i3) of shape[] reads
 * a[sum i_k a_stride[k]] and b[sum i_k b_stride[k]] (stride 0: broadcast).
 * ADD: TFLite's 2^left_shift grid (as s2_add_t); MUL: the product of the
 * offset inputs times (mo, so); GREATER_EQUAL: both inputs on TFLite's
 * comparison grid ((x - zp) << left_shift times (m, s)), the output 1 or 0. */
#define S2_BIN_ADD 0u
#define S2_BIN_MUL 1u
#define S2_BIN_GE 2u
typedef struct {
  int32_t shape[4], a_stride[4], b_stride[4];
  int16_t a_zp, b_zp, out_zp, act_min, act_max;
  uint8_t op;
  int8_t left_shift, s1, s2, so;
  int32_t m1, m2, mo;
} s2_binary_t;

/* SELECT_V2(cond, x, y): cond (0/1 bytes, GREATER_EQUAL's output) has the
 * output's shape; x and y are either too (step 1) or one value (step 0).
 * TFLite copies the codes, no requantization. */
typedef struct {
  int32_t size;
  int8_t x_step, y_step;
} s2_select_t;

void s2_concat(const s2_concat_t *p, int8_t *out);
void s2_resize_nearest(const s2_resize_t *p, const int8_t *in, int8_t *out);
size_t s2_tconv_scratch(const s2_tconv_t *p);
/* returns the number of input values that fired (spike layout), else 0 */
uint32_t s2_tconv(const s2_tconv_t *p, const int8_t *in, int8_t *out, void *scratch);
void s2_reduce_max(const s2_reduce_t *p, const int8_t *in, int8_t *out);
void s2_binary(const s2_binary_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void s2_select(const s2_select_t *p, const int8_t *cond, const int8_t *x, const int8_t *y, int8_t *out);

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
