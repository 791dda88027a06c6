/*
 * station_metrics — Prometheus /metrics of nusec-station: the production
 * picture of station.db (what `nusec production status` shows), read at each
 * scrape on the listener's thread with a connection of its own.
 *
 *   nusec_station_devices_provisioned{job,programmer}  gauge
 *   nusec_station_devices_limit{job,programmer}        gauge
 *   nusec_station_devices_failed{job,programmer}       gauge
 *   nusec_station_devices_per_minute{job,programmer}   gauge
 *   nusec_station_programmer_online{programmer}        gauge 1/0
 *   nusec_station_programmer_last_event_age_seconds{programmer}  gauge
 *   nusec_station_chips_failed{programmer,reason}      gauge (reason: error name)
 *   nusec_build_info{program,version,revision}         gauge 1
 */
#ifndef STATION_METRICS_H
#define STATION_METRICS_H

#include <stddef.h>

struct station_metrics;

/*
 * Serve /metrics on `listen` ("HOST:PORT", port 0 = a free one) for the
 * station of `dir` (kept, not copied) and write its URL to
 * DIR/run/station.metrics. *out is stopped with station_metrics_stop.
 * Errors: INVALID_ARG (listen), IO (bind, URL file), NOMEM.
 */
int station_metrics_start(const char *dir, const char *listen, struct station_metrics **out);

/* Stop serving, remove DIR/run/station.metrics, free. NULL-safe. */
void station_metrics_stop(struct station_metrics *sm);

#endif
