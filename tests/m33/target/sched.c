/*
 * Cooperative round-robin scheduler for the socket workers (no RTOS): each
 * task has its own stack, painted once at boot so the high-water mark of a
 * whole test run can be read back. Context switch = callee-saved registers
 * on the stack (soft-float ABI: no FP state). Test-only, but it is the
 * execution model the README states for a port without threads.
 */
#include "m33_target.h"

struct sched_task {
    uint32_t *sp;
    int done;
};

static uint32_t sched__stack[SCHED_MAX][SCHED_STACK / 4] __attribute__((aligned(8)));
static struct sched_task sched__task[SCHED_MAX];
static uint32_t *sched__main_sp;
static int sched__cur = -1;
static unsigned sched__n;
static void (*sched__fn)(unsigned);
static unsigned long sched__switches;
static int sched__painted;

void m33_switch(uint32_t **save_sp, uint32_t *new_sp, uint32_t new_limit);

/* Save r4-r11, lr on this stack; load the other one's; ARMv8-M MSPLIM set
 * to the new stack's bottom (0 first, so the switch itself cannot fault). */
__asm__(".text\n.thumb\n.syntax unified\n.global m33_switch\n.type m33_switch, %function\n"
        "m33_switch:\n"
        "  push {r4-r11, lr}\n"
        "  mov r3, sp\n"
        "  str r3, [r0]\n"
        "  movs r3, #0\n"
        "  msr msplim, r3\n"
        "  mov sp, r1\n"
        "  msr msplim, r2\n"
        "  pop {r4-r11, pc}\n");

extern uint32_t __stack_bottom[];

static void sched__entry(void)
{
    sched__fn((unsigned)sched__cur);
    sched__task[sched__cur].done = 1;
    for (;;)
        m33_switch(&sched__task[sched__cur].sp, sched__main_sp, (uint32_t)(uintptr_t)__stack_bottom);
}

void sched_run(unsigned n, void (*fn)(unsigned))
{
    if (!sched__painted) {
        for (unsigned i = 0; i < SCHED_MAX; i++)
            for (unsigned w = 0; w < SCHED_STACK / 4; w++)
                sched__stack[i][w] = M33_PAINT;
        sched__painted = 1;
    }
    sched__n = n > SCHED_MAX ? SCHED_MAX : n;
    sched__fn = fn;
    for (unsigned i = 0; i < sched__n; i++) {
        uint32_t *sp = &sched__stack[i][SCHED_STACK / 4];
        *--sp = (uint32_t)(uintptr_t)sched__entry | 1u; /* lr -> pc */
        for (int r = 0; r < 8; r++)
            *--sp = 0; /* r4-r11 */
        sched__task[i] = (struct sched_task){.sp = sp, .done = 0};
    }
    for (unsigned live = sched__n; live;) {
        live = 0;
        for (unsigned i = 0; i < sched__n; i++) {
            if (sched__task[i].done)
                continue;
            sched__cur = (int)i;
            sched__switches++;
            m33_switch(&sched__main_sp, sched__task[i].sp,
                       (uint32_t)(uintptr_t)&sched__stack[i][0]);
            sched__cur = -1;
            live += !sched__task[i].done;
        }
    }
}

void sched_yield(void)
{
    if (sched__cur < 0)
        return;
    m33_switch(&sched__task[sched__cur].sp, sched__main_sp, (uint32_t)(uintptr_t)__stack_bottom);
}

int sched_in_task(void)
{
    return sched__cur >= 0;
}

size_t sched_peak(unsigned i)
{
    if (i >= SCHED_MAX || !sched__painted)
        return 0;
    unsigned w = 0;
    while (w < SCHED_STACK / 4 && sched__stack[i][w] == M33_PAINT)
        w++;
    return SCHED_STACK - 4u * w;
}

unsigned long sched_switches(void)
{
    return sched__switches;
}
