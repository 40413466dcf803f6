/* Arm semihosting (BKPT 0xAB) for the QEMU boards: files on the host, exit code. */
#ifndef S2_SEMIHOST_H
#define S2_SEMIHOST_H
#include <stdint.h>

int s2_sh_open(const char *path, int mode);           /* mode: 1 "rb", 5 "wb"; -1 on error */
int s2_sh_read(int fd, void *buf, uint32_t len);      /* bytes read */
int s2_sh_write(int fd, const void *buf, uint32_t len); /* 0 on success */
int s2_sh_close(int fd);
void s2_sh_puts(const char *s);                       /* to QEMU's stdout */
void s2_sh_exit(int code) __attribute__((noreturn));
#endif
