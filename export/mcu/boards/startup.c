/* Start-up code of the QEMU boards (mps2-an385: Cortex-M3; mps2-an386:
 * Cortex-M4; mps2-an500: Cortex-M7; mps2-an505: Cortex-M33, secure state;
 * mps3-an547: Cortex-M55): vector table, reset handler (.data copy, .bss
 * clear, FPU and MVE access where the core has them, stack paint), fault
 * handler. Plain Armv6-M code: it also builds for a Cortex-M0+. Written
 * for s2nn_keras. */
#include <stdint.h>
#include "semihost.h"

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__;
extern uint32_t __stack_limit__, __stack_top__;
int main(void);

#define S2_STACK_PAINT 0xA5A5A5A5u

void Reset_Handler(void) __attribute__((noreturn, naked));
void s2_reset(void) __attribute__((noreturn, used));
void Fault_Handler(void);

__attribute__((section(".vectors"), used)) void (*const s2_vectors[16])(void) = {
    (void (*)(void))&__stack_top__, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, Fault_Handler};

void Reset_Handler(void) {
  __asm__ volatile("ldr r0, =__stack_top__\n mov sp, r0\n b s2_reset\n");
}

void s2_reset(void) {
  uint32_t *src = &__data_load__, *dst = &__data_start__;
  while (dst < &__data_end__) *dst++ = *src++;
  for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
  /* CPACR: full access to CP10/CP11 (FPU, and MVE on the M55); a core
   * without an FPU has no CPACR (Armv6-M: a fault) */
  *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
  __asm__ volatile("dsb\n isb" ::: "memory");
#endif
  /* paint the stack below the current frame; s2_stack_used() finds the high-water mark */
  uint32_t sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  for (volatile uint32_t *p = &__stack_limit__; (uint32_t)(uintptr_t)p < sp - 64u; p++) *p = S2_STACK_PAINT;
  s2_sh_exit(main());
}

uint32_t s2_stack_used(void) {
  const uint32_t *p = &__stack_limit__;
  while (p < &__stack_top__ && *p == S2_STACK_PAINT) p++;
  return (uint32_t)((uintptr_t)&__stack_top__ - (uintptr_t)p);
}

uint32_t s2_stack_size(void) { return (uint32_t)((uintptr_t)&__stack_top__ - (uintptr_t)&__stack_limit__); }

void Fault_Handler(void) {
  s2_sh_puts("s2mcu: fault\n");
  s2_sh_exit(99);
}
