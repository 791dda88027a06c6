/*
 * dash_http — the web server of the live line view (libmicrohttpd).
 *
 * Routes (GET and HEAD only; anything else 405):
 *   /?token=T            the page (HTML)
 *   /app.js, /style.css  its assets (no secret in them, so no token)
 *   /state.json?token=T  one snapshot of the dash_model
 *   /events?token=T      Server-Sent Events: a snapshot whenever the model
 *                        changes, at least every 2 s, as `data: JSON`
 * A missing or wrong token answers 403 and shows nothing of the line; the
 * comparison takes the same time whatever the guess. Every answer carries a
 * strict Content-Security-Policy (assets from this server only), no-store
 * and no-referrer, so the token does not leak through a Referer header.
 * With TLS set, the server speaks HTTPS only.
 */
#ifndef DASH_HTTP_H
#define DASH_HTTP_H

#include "dash_model.h"

#include <stdint.h>

struct dash_http;

struct dash_http_opts {
    const char *host;     /* IPv4 address to listen on, e.g. "127.0.0.1" */
    uint16_t port;        /* 0 = any free port (see dash_http_port) */
    const char *token;    /* access token, required, >= 16 characters */
    const char *tls_cert; /* PEM certificate (chain) text, or NULL for plain HTTP */
    const char *tls_key;  /* PEM private key text, with tls_cert */
};

/*
 * Start serving `model` (borrowed: it must outlive the server).
 * Errors: INVALID_ARG (bad address, short token, cert without key), IO (cannot
 * listen: port taken, no permission), NO_MEMORY.
 */
int dash_http_start(const struct dash_http_opts *opts, struct dash_model *model,
                    struct dash_http **out_http);

/* The port actually listened on. */
uint16_t dash_http_port(const struct dash_http *http);

/* Stop serving (open event streams end) and free. NULL is fine. */
void dash_http_stop(struct dash_http *http);

#endif
