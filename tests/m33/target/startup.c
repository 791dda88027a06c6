/*
 * Bare-metal start of the test image on qemu mps2-an505: vector table,
 * .data/.bss, the control stack painted for the high-water mark, faults
 * reported through semihosting. Test-only.
 */
#include "m33_target.h"

#include <stdint.h>
#include <string.h>

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_bottom[], __stack_top[];

int main(void);
void m33_reset(void);
void m33_fault(void);

__attribute__((section(".vectors"), used)) static const void *const m33_vectors[16] = {
    __stack_top, (void *)m33_reset, (void *)m33_fault, (void *)m33_fault, (void *)m33_fault,
    (void *)m33_fault, (void *)m33_fault, (void *)m33_fault,
};

void m33_fault(void)
{
    volatile uint32_t *cfsr = (volatile uint32_t *)0xE000ED28;
    sh_printf("m33: FAULT (CFSR %08lx): stack overflow or bad access\n", (unsigned long)*cfsr);
    sh_exit(3);
}

/* Paint the control stack below the current frame; startup is shallow. */
__attribute__((noinline)) static void m33__paint_control(void)
{
    uint32_t here;
    uint32_t *lim = (uint32_t *)((uintptr_t)&here - 256);
    for (uint32_t *p = __stack_bottom; p < lim; p++)
        *p = M33_PAINT;
}

void m33_reset(void)
{
    memcpy(__data_start, __data_load, (size_t)((char *)__data_end - (char *)__data_start));
    memset(__bss_start, 0, (size_t)((char *)__bss_end - (char *)__bss_start));
    /* ARMv8-M stack limit: running past the control stack faults instead of
     * silently corrupting .bss (qemu implements MSPLIM). */
    __asm volatile("msr msplim, %0" ::"r"(__stack_bottom));
    m33__paint_control();
    sh_exit(main());
}

size_t m33_control_peak(void)
{
    const uint32_t *p = __stack_bottom;
    while (p < __stack_top && *p == M33_PAINT)
        p++;
    return (size_t)((const char *)__stack_top - (const char *)p);
}

size_t m33_control_size(void)
{
    return (size_t)((const char *)__stack_top - (const char *)__stack_bottom);
}
