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

#endif
