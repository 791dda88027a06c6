#include "station_progress.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

double station_rate_per_min(uint32_t recent, uint64_t first_ms, uint64_t now_ms, uint64_t window_ms)
{
    if (recent == 0 || first_ms == 0 || now_ms < first_ms)
        return 0.0;
    uint64_t span = now_ms - first_ms;
    if (span > window_ms)
        span = window_ms;
    if (span < 1000u)
        span = 1000u;
    return (double)recent * 60000.0 / (double)span;
}

int64_t station_eta_s(uint32_t done, uint32_t limit, double per_min)
{
    if (done >= limit)
        return 0;
    if (!(per_min > 0.0))
        return -1;
    double s = ceil((double)(limit - done) * 60.0 / per_min);
    return s > 1e12 ? -1 : (int64_t)s;
}

unsigned station_percent(uint32_t done, uint32_t limit)
{
    if (limit == 0)
        return 0;
    if (done >= limit)
        return 100;
    return (unsigned)((uint64_t)done * 100u / limit);
}

void station_bar(uint32_t done, uint32_t limit, unsigned width, char *out, size_t cap)
{
    if (!out || cap == 0)
        return;
    out[0] = '\0';
    if (width < 2 || width > 200 || cap < (size_t)width + 3)
        return;
    uint64_t filled = limit ? (uint64_t)done * width / limit : 0;
    if (filled > width)
        filled = width;
    out[0] = '[';
    memset(out + 1, '#', (size_t)filled);
    memset(out + 1 + filled, '-', width - (size_t)filled);
    out[width + 1] = ']';
    out[width + 2] = '\0';
}

void station_duration(int64_t seconds, char *out, size_t cap)
{
    if (seconds < 0)
        snprintf(out, cap, "--");
    else if (seconds >= 3600)
        snprintf(out, cap, "%lldh%02lldm", (long long)(seconds / 3600),
                 (long long)(seconds % 3600 / 60));
    else if (seconds >= 60)
        snprintf(out, cap, "%lldm%02llds", (long long)(seconds / 60), (long long)(seconds % 60));
    else
        snprintf(out, cap, "%llds", (long long)seconds);
}

static const char *const progress__outcomes[] = {
    "running", "limit reached", "tray empty", "stopped", "cloud refused", "failed",
};

const char *station_outcome_name(enum station_outcome o)
{
    return (unsigned)o < sizeof(progress__outcomes) / sizeof(progress__outcomes[0])
               ? progress__outcomes[o]
               : "unknown";
}

int station_outcome_exit(enum station_outcome o)
{
    switch (o) {
    case STATION_OUTCOME_LIMIT:
        return 0;
    case STATION_OUTCOME_TRAY_EMPTY:
        return 4;
    case STATION_OUTCOME_STOPPED:
        return 5;
    case STATION_OUTCOME_REFUSED:
        return 6;
    case STATION_OUTCOME_RUNNING:
        return 7;
    case STATION_OUTCOME_FAILED:
    default:
        return 1;
    }
}

/* QUOTA_EXHAUSTED -> "quota exhausted"; anything that is not an upper-case
 * error name is kept as it is. */
static void progress__reason(const char *reason, char *out, size_t cap)
{
    size_t n = 0;
    int name = reason[0] != '\0';
    for (const char *p = reason; *p && name; p++)
        name = isupper((unsigned char)*p) || *p == '_' || isdigit((unsigned char)*p);
    for (const char *p = reason; *p && n + 1 < cap; p++)
        out[n++] = !name ? *p : *p == '_' ? ' ' : (char)tolower((unsigned char)*p);
    out[n] = '\0';
}

void station_outcome_line(enum station_outcome o, uint32_t done, uint32_t limit, uint32_t failed,
                          const char *reason, char *out, size_t cap)
{
    char why[160] = "", fails[48] = "";
    if (!out || cap == 0)
        return;
    if (reason && *reason) {
        progress__reason(reason, why + 2, sizeof(why) - 2);
        memcpy(why, ": ", 2);
    }
    if (failed)
        snprintf(fails, sizeof(fails), ", %u chip%s failed", (unsigned)failed,
                 failed == 1 ? "" : "s");
    const char *head =
        o == STATION_OUTCOME_STOPPED ? "stopped by operator" : station_outcome_name(o);
    int with_reason = o == STATION_OUTCOME_REFUSED || o == STATION_OUTCOME_FAILED;
    snprintf(out, cap, "%s%s: %u of %u done%s%s", head, with_reason ? why : "", (unsigned)done,
             (unsigned)limit, fails,
             o == STATION_OUTCOME_TRAY_EMPTY ? ", load blanks and start again" : "");
}
