/* Test image runtime on the emulated Cortex-M33: semihosting, scheduler, stacks. */
#ifndef M33_TARGET_H
#define M33_TARGET_H

#include <stddef.h>
#include <stdint.h>

#define M33_PAINT 0xC5C5C5C5u /* unused stack words */

/* ARM semihosting (bkpt 0xab), served by qemu -semihosting-config target=native. */
int sh_open(const char *path, int mode); /* mode: 0 "r", 4 "w" (binary: +1) */
int sh_write(int fd, const void *p, size_t len); /* 0 or -1 */
int sh_read(int fd, void *p, size_t len);        /* bytes read, 0 at EOF */
void sh_puts(const char *s);
void sh_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__attribute__((noreturn)) void sh_exit(int status);

/* Control stack (the reset stack): peak bytes used so far, and its size. */
size_t m33_control_peak(void);
size_t m33_control_size(void);

/*
 * Cooperative scheduler, no RTOS: sched_run() runs fn(i) for i < n, one
 * task per socket on its own painted stack, round robin, until all have
 * returned. A task gives the CPU up only in sched_yield(), which the HAL
 * calls before every op that would block on a real board (link commands,
 * transport, flash, KeyStore, sleep).
 */
#define SCHED_MAX 8
#ifndef SCHED_STACK
#define SCHED_STACK 8192
#endif
void sched_run(unsigned n, void (*fn)(unsigned));
void sched_yield(void);
int sched_in_task(void);
/* Peak bytes ever used on task i's stack (painted once, at boot). */
size_t sched_peak(unsigned i);
/* Task switches done so far. */
unsigned long sched_switches(void);

#endif
