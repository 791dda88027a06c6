/* cloud_leader — the single-agent duties' holder (cloud_leader.h). */
#include "cloud_leader.h"

#include "ledger_store.h"
#include "nu_err.h"
#include "nu_log.h"

#include <stdlib.h>
#include <string.h>

struct cloud_leader {
    char *target;        /* libpq URI; NULL on SQLite (always leader) */
    char *password_file; /* NULL: PGPASSFILE / none */
    int64_t lock_id;
    struct ledger_store *store;     /* the session that holds (or asks for) the lock */
    int leader;                     /* the last poll's answer */
    int polled;                     /* a poll has run */
    char *list[CLOUD_LEADER_LISTS]; /* the lists published as leader (NULL: none yet) */
    size_t list_len[CLOUD_LEADER_LISTS];
};

/* A change of leadership: the next publish of every list goes out. */
static void cloud_leader__forget_lists(struct cloud_leader *l)
{
    for (size_t i = 0; i < CLOUD_LEADER_LISTS; i++) {
        free(l->list[i]);
        l->list[i] = NULL;
        l->list_len[i] = 0;
    }
}

static char *cloud_leader__dup(const char *s)
{
    if (!s || !*s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int cloud_leader_open(const char *target, const char *password_file, int64_t lock_id,
                      struct cloud_leader **out)
{
    if (!target || !out)
        return NU_ERR_INVALID_ARG;
    *out = NULL;
    struct cloud_leader *l = calloc(1, sizeof(*l));
    if (!l)
        return NU_ERR_NOMEM;
    l->lock_id = lock_id;
    if (ledger_store_target_is_pg(target)) {
        l->target = cloud_leader__dup(target);
        l->password_file = cloud_leader__dup(password_file);
        if (!l->target || (password_file && *password_file && !l->password_file)) {
            cloud_leader_close(l);
            return NU_ERR_NOMEM;
        }
    }
    *out = l;
    return NU_OK;
}

void cloud_leader_close(struct cloud_leader *l)
{
    if (!l)
        return;
    ledger_store_close(l->store);
    cloud_leader__forget_lists(l);
    free(l->target);
    free(l->password_file);
    free(l);
}

int cloud_leader_is_leader(const struct cloud_leader *l)
{
    return l && l->leader;
}

/* One question to the server on our own session: is the lock ours (take it
 * when free)? The connection is opened on first use and reopened by the
 * store after a loss; the answer is the server's, so a reconnected session
 * that lost the lock says so. */
static int cloud_leader__ask(struct cloud_leader *l, int *out_held)
{
    int rc = NU_OK;
    *out_held = 0;
    if (!l->store)
        rc = ledger_store_open(l->target, l->password_file, &l->store);
    if (rc == NU_OK)
        rc = ledger_store_session_lock(l->store, l->lock_id, out_held);
    if (rc != NU_OK)
        *out_held = 0;
    /* A store that failed to open is NULL; one that lost its connection
     * reconnects at the next call (ledger_store_session_lock). */
    return rc;
}

int cloud_leader_poll(struct cloud_leader *l, int *out_leader, int *out_changed)
{
    if (!l)
        return NU_ERR_INVALID_ARG;
    int held = 1, rc = NU_OK;
    if (l->target)
        rc = cloud_leader__ask(l, &held);
    int changed = l->polled ? held != l->leader : held;
    if (changed && l->target)
        nu_info("leader: %s the single-agent duties (checkpoints, device CRL, broker lists)",
                held ? "taking" : "lost");
    else if (!l->polled && l->target)
        nu_info("leader: another agent holds the single-agent duties; standing by");
    if (rc != NU_OK && l->leader)
        nu_warn("leader: the ledger session is lost (%s): stepping down", nu_err_str(rc));
    if (changed)
        cloud_leader__forget_lists(l);
    l->leader = held;
    l->polled = 1;
    if (out_leader)
        *out_leader = held;
    if (out_changed)
        *out_changed = changed;
    return rc;
}

int cloud_leader_list_due(const struct cloud_leader *l, enum cloud_leader_list which,
                          const char *text, size_t len)
{
    if (!l || (unsigned)which >= CLOUD_LEADER_LISTS || (!text && len))
        return 0;
    return !l->list[which] || l->list_len[which] != len ||
           (len && memcmp(l->list[which], text, len) != 0);
}

int cloud_leader_list_note(struct cloud_leader *l, enum cloud_leader_list which, const char *text,
                           size_t len)
{
    if (!l || (unsigned)which >= CLOUD_LEADER_LISTS || (!text && len))
        return NU_ERR_INVALID_ARG;
    char *copy = malloc(len + 1);
    if (!copy)
        return NU_ERR_NOMEM;
    if (len)
        memcpy(copy, text, len);
    copy[len] = '\0';
    free(l->list[which]);
    l->list[which] = copy;
    l->list_len[which] = len;
    return NU_OK;
}
