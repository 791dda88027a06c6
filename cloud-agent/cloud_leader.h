/*
 * cloud_leader — which cloud agent does the duties of exactly one agent
 * (issue 13): the signed audit checkpoints, the device CRL, the broker's
 * revoked / serials lists rewritten from the ledger.
 *
 * On PostgreSQL, leadership is a session advisory lock held on a connection
 * of its own: the agent whose session holds it is the leader; when that
 * process dies its session ends, the server frees the lock, and the next
 * agent to poll takes it (within one poll interval, about a second, when the
 * socket closes; after TCP keepalive gives up when a host vanishes). A
 * leader whose connection is lost steps down at its next poll (a reconnect
 * does not bring the lock back: the poll asks the server, never a flag).
 *
 * On SQLite (one file on one host: a single agent by design) the agent is
 * always the leader and no connection is opened.
 *
 * Duties are idempotent (a checkpoint is skipped when the chain head is
 * already one, lists are rewritten whole from the ledger), so the short
 * overlap a partition can cause (an old leader that has not polled yet)
 * repeats work but never corrupts it.
 *
 * THREADS: one thread (the agent's main loop) uses a cloud_leader.
 */
#ifndef CLOUD_LEADER_H
#define CLOUD_LEADER_H

#include <stddef.h>
#include <stdint.h>

struct cloud_leader; /* opaque */

/* The advisory lock key of the cloud's leadership ("NUSEC" in ASCII). */
#define CLOUD_LEADER_LOCK_ID 0x4e55534543ll

/*
 * Prepare leadership for the ledger at `target` (a libpq URI, or anything
 * else for SQLite: always leader), with the ledger's password file (may be
 * NULL). Opening connects at the first poll, so an unreachable database is
 * not an error here. Errors: INVALID_ARG, NOMEM.
 * *out is released with cloud_leader_close() (which ends the session, so
 * the lock passes on at once).
 */
int cloud_leader_open(const char *target, const char *password_file, int64_t lock_id,
                      struct cloud_leader **out);

/* Close (NULL: no-op). */
void cloud_leader_close(struct cloud_leader *l);

/*
 * Ask whether this agent is the leader now, taking the lock when it is free:
 * *out_leader = 1 when this agent leads, *out_changed = 1 when that differs
 * from the previous poll (the first poll counts as a change when it leads).
 * Both may be NULL. A database that cannot be reached answers "not leader"
 * (and CONNECTION), so two agents never both believe they lead for longer
 * than a poll. Errors: CONNECTION, PERMISSION, DB, NOMEM.
 */
int cloud_leader_poll(struct cloud_leader *l, int *out_leader, int *out_changed);

/* The result of the last poll (no database access). */
int cloud_leader_is_leader(const struct cloud_leader *l);

/*
 * The lists the leader publishes on the bus (cloud_lists_publish in
 * cloud_enroll.c): the leader republishes one only when its text differs
 * from what it last published as leader. Every change of leadership (taken
 * or lost, cloud_leader_poll) forgets them all, so a new leader republishes
 * everything at its first publish.
 */
enum cloud_leader_list { CLOUD_LEADER_LIST_REVOKED, CLOUD_LEADER_LIST_SERIALS, CLOUD_LEADER_LISTS };

/*
 * 1 when text[len] differs from what was noted for list `which` (or nothing
 * was since the last change of leadership): the caller publishes it, then
 * notes it with cloud_leader_list_note(). 0 when the same; 0 for a bad
 * argument.
 */
int cloud_leader_list_due(const struct cloud_leader *l, enum cloud_leader_list which,
                          const char *text, size_t len);

/* Remember text[len] as published for `which`. Errors: INVALID_ARG, NOMEM. */
int cloud_leader_list_note(struct cloud_leader *l, enum cloud_leader_list which, const char *text,
                           size_t len);

#endif
