/*
 * station_progress — the arithmetic and the drawing behind `nusec production
 * status` and `production start --wait`: devices per minute over a sliding
 * window, time left, a text progress bar. Pure functions (no I/O), so the
 * unit tests pin them.
 */
#ifndef STATION_PROGRESS_H
#define STATION_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

/* Default rate window: devices counted over the last minute. */
#define STATION_RATE_WINDOW_MS 60000u

/*
 * Devices per minute: `recent` devices were counted since
 * max(now - window, first); the rate is recent over that span, the span
 * being at least one second (so the first device does not read as a huge
 * rate). 0 when nothing was counted, first_ms is 0, or now < first.
 */
double station_rate_per_min(uint32_t recent, uint64_t first_ms, uint64_t now_ms,
                            uint64_t window_ms);

/*
 * Seconds until `limit` at `per_min`: 0 when done >= limit, -1 when unknown
 * (no rate), else ceil((limit - done) * 60 / per_min).
 */
int64_t station_eta_s(uint32_t done, uint32_t limit, double per_min);

/* Percent done, 0..100, rounded down; 0 when limit is 0. */
unsigned station_percent(uint32_t done, uint32_t limit);

/*
 * "[#####-----]" with `width` cells (2 <= width <= 200) into out[cap] (at
 * least width + 3): filled cells = floor(done * width / limit), capped to
 * width. A limit of 0 draws an empty bar. Too small a buffer yields "".
 */
void station_bar(uint32_t done, uint32_t limit, unsigned width, char *out, size_t cap);

/* "1h02m", "3m05s", "12s", "--" for a negative (unknown) duration. */
void station_duration(int64_t seconds, char *out, size_t cap);

/*
 * How a job (or one programmer's share of it) ended, in the words every view
 * uses: the station's log and production.done event, `nusec production
 * status` (text and --json "outcome"), `production start --wait` (its last
 * line and exit code) and the OEM's `nusec report`.
 */
enum station_outcome {
    STATION_OUTCOME_RUNNING = 0, /* not over yet (or never started) */
    STATION_OUTCOME_LIMIT,       /* every programmer used its whole limit */
    STATION_OUTCOME_TRAY_EMPTY,  /* no blank chip left before the limit */
    STATION_OUTCOME_STOPPED,     /* `nusec production stop` (or the OEM paused it) */
    STATION_OUTCOME_REFUSED,     /* the cloud said no for good: quota, job not active... */
    STATION_OUTCOME_FAILED,      /* cannot go on: package refused or expired, station error */
};

/* "running", "limit reached", "tray empty", "stopped", "cloud refused", "failed" (static). */
const char *station_outcome_name(enum station_outcome o);

/*
 * The exit code of `nusec production start --wait` for an outcome (README
 * "production start exit status"): limit reached 0, failed 1, tray empty 4,
 * stopped 5, cloud refused 6, running (--timeout) 7.
 */
int station_outcome_exit(enum station_outcome o);

/*
 * The one line an operator reads, into out[cap], e.g.
 *   "limit reached: 16 of 16 done"
 *   "tray empty: 12 of 16 done, load blanks and start again"
 *   "stopped by operator: 3 of 16 done"
 *   "cloud refused: quota exhausted: 14 of 16 done"
 *   "failed: EXPIRED: the package expired: 0 of 16 done"
 * with ", N chips failed" when failed > 0. `reason` (may be NULL or "") is
 * what refused or failed: an error name (QUOTA_EXHAUSTED becomes "quota
 * exhausted") or a sentence, kept as it is.
 */
void station_outcome_line(enum station_outcome o, uint32_t done, uint32_t limit, uint32_t failed,
                          const char *reason, char *out, size_t cap);

#endif
