/* s2mcu kernels: CONCATENATION, RESIZE_NEAREST_NEIGHBOR (copies of int8 codes).
 * See s2mcu.h and s2mcu_internal.h. Written for s2nn_keras (export.mcu). */
#include <string.h>

#include "s2mcu_internal.h"

/* ======================================================================
 * CONCATENATION (TFLite Micro: all inputs on the output's grid, so the
 * output is the inputs' bytes, interleaved per index before the axis)
 * ==================================================================== */

void s2_concat(const s2_concat_t *p, int8_t *out) {
  for (int32_t k = 0; k < p->outer; k++) {
    for (int32_t i = 0; i < p->count; i++) {
      const int32_t n = p->sizes[i];
      memcpy(out, p->inputs[i] + (size_t)k * n, (size_t)n);
      out += n;
    }
  }
}

/* ======================================================================
 * RESIZE_NEAREST_NEIGHBOR (the source row and column of every output
 * pixel come precomputed: TFLite's float rule, evaluated by the generator)
 * ==================================================================== */

void s2_resize_nearest(const s2_resize_t *p, const int8_t *in, int8_t *out) {
  const size_t C = (size_t)p->c, row = (size_t)p->in_w * C;
  for (int32_t b = 0; b < p->batch; b++) {
    for (int32_t y = 0; y < p->out_h; y++) {
      const int8_t *src = in + (size_t)p->ys[y] * row;
      if (y > 0 && p->ys[y] == p->ys[y - 1]) {
        /* the same source row: the output row just written, again */
        memcpy(out, out - (size_t)p->out_w * C, (size_t)p->out_w * C);
        out += (size_t)p->out_w * C;
        continue;
      }
      for (int32_t x = 0; x < p->out_w; x++) {
        memcpy(out, src + (size_t)p->xs[x] * C, C);
        out += C;
      }
    }
    in += (size_t)p->in_h * row;
  }
}
