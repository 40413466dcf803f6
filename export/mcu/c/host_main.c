/* Host harness of the generated model (export.mcu's fast tests):
 *   host_main IMAGES OUT [FIRED]
 * reads S2_MODEL_INPUT_BYTES per image from IMAGES until the end, runs the
 * model on each and appends its output bytes to OUT (and the per-layer
 * fired counts, uint32, to FIRED). Exit 0, or 2 on an I/O error, 3 when a
 * kernel's scratch exceeds its plan, 4 when a spike tensor held a value
 * that is neither of its two codes (built with -DS2_CHECK_SPIKES). */
#include <stdio.h>
#include "s2mcu.h"
#include "model.h"

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s IMAGES OUT [FIRED]\n", argv[0]);
    return 2;
  }
  int bad = s2_model_check();
  if (bad) {
    fprintf(stderr, "error: layer %d: kernel scratch larger than planned\n", bad - 1);
    return 3;
  }
  FILE *fi = fopen(argv[1], "rb"), *fo = fopen(argv[2], "wb");
  FILE *ff = argc > 3 ? fopen(argv[3], "wb") : NULL;
  if (!fi || !fo || (argc > 3 && !ff)) {
    fprintf(stderr, "error: cannot open the image or output files\n");
    return 2;
  }
  long n = 0;
  while (fread(s2_model_input(), 1, S2_MODEL_INPUT_BYTES, fi) == S2_MODEL_INPUT_BYTES) {
    s2_model_invoke();
    if (fwrite(s2_model_output(), 1, S2_MODEL_OUTPUT_BYTES, fo) != S2_MODEL_OUTPUT_BYTES) return 2;
    if (ff) {
      uint32_t fired[S2_MODEL_LAYERS];
      for (int i = 0; i < S2_MODEL_LAYERS; i++) fired[i] = s2_model_fired[i];
      if (fwrite(fired, 4, S2_MODEL_LAYERS, ff) != S2_MODEL_LAYERS) return 2;
    }
    n++;
  }
  fclose(fi);
  if (fclose(fo) != 0 || (ff && fclose(ff) != 0)) return 2;
#ifdef S2_CHECK_SPIKES
  if (s2_spike_violations) {
    fprintf(stderr, "error: %lu values of spike tensors are neither of their two codes\n",
            (unsigned long)s2_spike_violations);
    return 4;
  }
#endif
  fprintf(stderr, "%ld images\n", n);
  return 0;
}
