/* Arm semihosting calls (Arm's "Semihosting for AArch32 and AArch64",
 * operation numbers SYS_OPEN 0x01 ... SYS_EXIT_EXTENDED 0x20). */
#include "semihost.h"

static inline int s2_sh_call(int op, const void *arg) {
  register int r0 __asm__("r0") = op;
  register const void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

static uint32_t s2_strlen(const char *s) {
  uint32_t n = 0;
  while (s[n]) n++;
  return n;
}

int s2_sh_open(const char *path, int mode) {
  uint32_t args[3] = {(uint32_t)(uintptr_t)path, (uint32_t)mode, s2_strlen(path)};
  return s2_sh_call(0x01, args);
}

int s2_sh_read(int fd, void *buf, uint32_t len) {
  uint32_t args[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, len};
  return (int)len - s2_sh_call(0x06, args);
}

int s2_sh_write(int fd, const void *buf, uint32_t len) {
  uint32_t args[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, len};
  return s2_sh_call(0x05, args);
}

int s2_sh_close(int fd) {
  uint32_t args[1] = {(uint32_t)fd};
  return s2_sh_call(0x02, args);
}

void s2_sh_puts(const char *s) { s2_sh_call(0x04, s); }

void s2_sh_exit(int code) {
  uint32_t args[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, (uint32_t)code};
  s2_sh_call(0x20, args);
  for (;;) {
  }
}
