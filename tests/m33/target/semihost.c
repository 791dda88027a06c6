/* ARM semihosting calls for the test image (bkpt 0xab). Test-only. */
#include "m33_target.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int sh__call(int op, void *arg)
{
    register int r0 __asm("r0") = op;
    register void *r1 __asm("r1") = arg;
    __asm volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

int sh_open(const char *path, int mode)
{
    uint32_t a[3] = {(uint32_t)(uintptr_t)path, (uint32_t)mode, (uint32_t)strlen(path)};
    return sh__call(0x01, a);
}

int sh_write(int fd, const void *p, size_t len)
{
    uint32_t a[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)p, (uint32_t)len};
    return sh__call(0x05, a) == 0 ? 0 : -1; /* returns bytes NOT written */
}

int sh_read(int fd, void *p, size_t len)
{
    uint32_t a[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)p, (uint32_t)len};
    int left = sh__call(0x06, a);
    return left < 0 ? -1 : (int)len - left;
}

void sh_puts(const char *s)
{
    sh__call(0x04, (void *)s);
}

void sh_printf(const char *fmt, ...)
{
    static char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    sh_puts(line);
}

void sh_exit(int status)
{
    /* SYS_EXIT_EXTENDED: reason ADP_Stopped_ApplicationExit, exit status. */
    uint32_t a[2] = {0x20026u, (uint32_t)status};
    sh__call(0x20, a);
    for (;;) {
    }
}
