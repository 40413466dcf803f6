/* Firmware harness of the generated model on the QEMU boards (every core
 * of export.mcu.firmware.BOARDS; plain Armv6-M code where no FPU or MVE).
 *
 * Files over semihosting, in QEMU's working directory:
 *   inputs.bin   S2_MODEL_INPUT_BYTES per image, read until the end;
 *   outputs.bin  the output bytes of every image;
 *   counts.bin   per image, uint32: SysTick ticks of the whole inference,
 *                ticks of each layer, then each layer's fired inputs;
 *   summary.bin  uint32: magic 'S2MC', version, images, calibration
 *                instructions and ticks, stack bytes used and reserved,
 *                MVFR1 (the MVE field), MVE self-test result.
 * Under -icount shift=0 SysTick counts retired instructions (one tick per
 * SYSCLK period of instructions); the calibration loop measures how many.
 * Exit code: 0, 2 (a file), 5 (MVE self-test failed), 6 (a kernel's scratch
 * larger than the plan: s2_model_check()). */
#include <stdint.h>
#include "semihost.h"
#include "s2mcu.h"
#include "model.h"

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#include <arm_mve.h>
#endif

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#if defined(__ARM_FP)
#define MVFR1 (*(volatile uint32_t *)0xE000EF44u)
#else
#define MVFR1 0u /* no FPU: no media and VFP feature registers */
#endif
#define S2_CALIBRATION_LOOPS 1000000u

uint32_t s2_stack_used(void);
uint32_t s2_stack_size(void);

volatile uint32_t s2_profile_ticks[S2_MODEL_LAYERS + 1];
static uint32_t s2_record[1 + 2 * S2_MODEL_LAYERS];

/* ticks of a loop of exactly 2 * S2_CALIBRATION_LOOPS instructions */
static uint32_t s2_calibrate(void) {
  uint32_t n = S2_CALIBRATION_LOOPS;
  const uint32_t t0 = SYST_CVR;
  /* unified syntax and a low register: the same two instructions on Armv6-M (16-bit subs) */
  __asm__ volatile(".syntax unified\n1: subs %0, %0, #1\n bne 1b\n" : "+l"(n) : : "cc");
  const uint32_t t1 = SYST_CVR;
  return (t0 - t1) & 0xFFFFFFu;
}

/* 1: the MVE dot product agrees with the scalar one (MVE instructions run); 0: it does not; 2: no MVE */
static uint32_t s2_mve_self_test(void) {
#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
  int8_t a[16], b[16];
  int32_t ref = 0;
  for (int i = 0; i < 16; i++) {
    a[i] = (int8_t)(3 * i - 20);
    b[i] = (int8_t)(100 - 11 * i);
    ref += a[i] * b[i];
  }
  volatile int32_t dot = vmladavq_s8(vld1q_s8(a), vld1q_s8(b));
  int32x4_t q = vqrdmulhq_s32(vdupq_n_s32(-1073741824), vdupq_n_s32(1073741824)); /* SRDHM(-2^30, 2^30) = -2^29 */
  return (dot == ref && ref != 0 && vgetq_lane_s32(q, 0) == -536870912) ? 1u : 0u;
#else
  return 2u;
#endif
}

int main(void) {
  SYST_RVR = 0xFFFFFFu;
  SYST_CVR = 0u;
  SYST_CSR = 5u; /* enable, processor clock, no interrupt */
  const uint32_t calib = s2_calibrate();
  const uint32_t mve = s2_mve_self_test();
  if (mve == 0u) {
    s2_sh_puts("s2mcu: MVE self-test failed\n");
    return 5;
  }
  /* every kernel's scratch within the liveness plan, as built for this core (else a silent overrun) */
  if (s2_model_check() != 0) {
    s2_sh_puts("s2mcu: a kernel's scratch is larger than planned for this core\n");
    return 6;
  }
  const int fi = s2_sh_open("inputs.bin", 1);
  const int fo = s2_sh_open("outputs.bin", 5);
  const int fc = s2_sh_open("counts.bin", 5);
  if (fi < 0 || fo < 0 || fc < 0) {
    s2_sh_puts("s2mcu: cannot open inputs.bin/outputs.bin/counts.bin\n");
    return 2;
  }
  uint32_t images = 0;
  while (s2_sh_read(fi, s2_model_input(), S2_MODEL_INPUT_BYTES) == S2_MODEL_INPUT_BYTES) {
    const uint32_t t0 = SYST_CVR;
    s2_model_invoke();
    const uint32_t t1 = SYST_CVR;
    s2_record[0] = (t0 - t1) & 0xFFFFFFu;
    for (int i = 0; i < S2_MODEL_LAYERS; i++) {
      s2_record[1 + i] = (s2_profile_ticks[i] - s2_profile_ticks[i + 1]) & 0xFFFFFFu;
      s2_record[1 + S2_MODEL_LAYERS + i] = s2_model_fired[i];
    }
    if (s2_sh_write(fo, s2_model_output(), S2_MODEL_OUTPUT_BYTES) != 0 ||
        s2_sh_write(fc, s2_record, sizeof(s2_record)) != 0)
      return 2;
    images++;
  }
  const uint32_t summary[9] = {0x434D3253u, 1u, images, 2u * S2_CALIBRATION_LOOPS, calib, s2_stack_used(),
                               s2_stack_size(), MVFR1, mve};
  const int fs = s2_sh_open("summary.bin", 5);
  if (fs < 0 || s2_sh_write(fs, summary, sizeof(summary)) != 0) return 2;
  s2_sh_close(fs);
  s2_sh_close(fi);
  s2_sh_close(fo);
  s2_sh_close(fc);
  return 0;
}
