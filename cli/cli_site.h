/*
 * cli_site — a CM site as its own machine (issue 14): per-site identities
 * crossing between the OEM and the CM by file copy, and the site broker's
 * configuration with its bridge to the cloud broker.
 *
 * The flow, one file crossing each way twice (docs/sites.md):
 *
 *   OEM  site_add()    DIR/sites/NAME/token.sha256; NAME.enrol -> CM  (token, cloud address)
 *   CM   site_join()   keys made here (station, bridge, site broker server);
 *                      NAME.join -> OEM (token + three CSRs)
 *   OEM  site_sign()   token checked once, CSRs signed by the Fleet CA in the HSM
 *                      (OU station / OU site / OU broker, CN = NAME); then site_export()
 *   OEM  site_assign() "NAME programmer" in the cloud broker's ownership table
 *   OEM  site_export() NAME.bundle -> CM (public OEM material, the three
 *                      certificates, the site's ownership table, boot manifest)
 *   CM   site_init()   installs the bundle, writes DIR/broker/mosquitto.conf:
 *                      nusec_auth for the local identities + the bridge
 *
 * No private key, PIN, ledger or token object of the OEM ever enters a file
 * that crosses; the CM's keys never leave the CM's state directory.
 * Every function prints what went wrong ("nusec: site ...") and returns an
 * NU_ERR_* code; EXISTS means "refused, nothing changed".
 */
#ifndef CLI_SITE_H
#define CLI_SITE_H

#include <stddef.h>

/* Files the OEM keeps per site, under DIR/sites/NAME/. */
#define SITE_OEM_FOLDER "sites"

/* Where a CM state directory keeps its site facts (DIR/site/). */
#define SITE_CM_FOLDER "site"

/*
 * Bridge queue sizing (per client queue in Mosquitto 2.0, so the bridge's
 * own): a site of 16 programmers x 8 sockets at ~1 device/s per socket sends
 * ~5 messages per device (request, report, 3 events): ~640 msg/s at full
 * speed. During a WAN outage certificates cannot be issued, so the line stops
 * within seconds and what queues is reports, events and status: a few per
 * minute per programmer. 500k messages / 1 GiB hold the full-speed burst of
 * ~13 min and the idle trickle of days; see docs/sites.md.
 */
#define SITE_QUEUE_MESSAGES 500000u
#define SITE_QUEUE_BYTES (1024ull * 1024ull * 1024ull)

/* OEM: mint the enrolment of site `name` into enrol_path (0600). cloud =
 * "host:port" the site dials (NULL: DIR/broker/endpoint). EXISTS: known. */
int site_add(const char *dir, const char *name, const char *cloud, const char *enrol_path);

/* CM: make the keys and the join request from an enrolment. host/port: the
 * site broker's listener (port 0 = a free one). EXISTS: DIR already joined. */
int site_join(const char *dir, const char *enrol_path, const char *host, int port,
              const char *request_path);

/* OEM: check a join request (token once, names), sign its CSRs in the HSM,
 * register the site's station for the cloud (DIR/pki/clients/NAME.crt,
 * cloud.conf station_ids) and export the bundle to bundle_path. */
int site_sign(const char *dir, const char *request_path, const char *bundle_path);

/* OEM: site `name` owns `programmer` (refused if another site owns it). */
int site_assign(const char *dir, const char *name, const char *programmer);

/* OEM: write the current bundle of a signed site. */
int site_export(const char *dir, const char *name, const char *bundle_path);

/* CM: install a bundle and write the site broker's configuration. */
int site_init(const char *dir, const char *bundle_path);

/* CM: write DIR/broker/mosquitto.conf again (template + bridge) from what
 * site_join and site_init left in DIR (site/site.conf, broker/owners), e.g.
 * after changing bridge settings; restart the site broker afterwards. */
int site_broker_conf(const char *dir);

/* CM: the site name recorded by site_join (into out[cap]). NOT_FOUND. */
int site_name(const char *dir, char *out, size_t cap);

#endif
