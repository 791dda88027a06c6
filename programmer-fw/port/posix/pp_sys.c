/* pp_sys: clock, RNG and log for the POSIX port. */
#include "pp_port.h"

#include "nu_log.h"
#include "nu_util.h"

#include <errno.h>
#include <time.h>

static uint64_t sys__now(void *ctx)
{
    (void)ctx;
    return nu_time_ms();
}

static uint64_t sys__mono(void *ctx)
{
    (void)ctx;
    return nu_mono_ms();
}

static void sys__sleep(void *ctx, uint32_t ms)
{
    (void)ctx;
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

const struct pg_clock_ops pp_clock_ops = {
    .version = PG_HAL_VERSION,
    .now_ms = sys__now,
    .mono_ms = sys__mono,
    .sleep_ms = sys__sleep,
};

static int sys__fill(void *ctx, void *buf, size_t len)
{
    (void)ctx;
    return nu_random(buf, len);
}

const struct pg_rng_ops pp_rng_ops = {.version = PG_HAL_VERSION, .fill = sys__fill};

static void sys__log(void *ctx, enum pg_log_level level, const char *line)
{
    (void)ctx;
    static const enum nu_log_level map[] = {NU_LOG_DEBUG, NU_LOG_INFO, NU_LOG_WARN, NU_LOG_ERROR};
    nu_log(map[(unsigned)level <= PG_LOG_ERROR ? level : PG_LOG_ERROR], "%s", line);
}

const struct pg_log_ops pp_log_ops = {.version = PG_HAL_VERSION, .write = sys__log};
