/*
 * cloud_lease — nusec-cloud's offline-lease operations (issue 15 part 2):
 *   lease.grant   programmer: a line-CA certificate for its KeyStore key and
 *                 N units reserved out of the job's quota (ledger_lease.c)
 *   lease.upload  programmer: the certificates it issued offline, recorded
 *                 once each and reconciled against the lease; `final`
 *                 returns the lease (unused units back to the quota)
 * Errors a caller sees (Error.code): NOT_AUTHORIZED (job allows no lease or
 * programmer not allocated), BAD_CSR, LEASE_OVERCOMMIT, STATE (a lease is
 * out already), JOB_NOT_ACTIVE, EXPIRED, LEASE_UNKNOWN, TOO_LARGE; an
 * uploaded certificate the lease does not cover is counted as refused in the
 * answer and audited as lease.incident (LEASE_NOT_COVERED).
 */
#ifndef CLOUD_LEASE_H
#define CLOUD_LEASE_H

#include "cloud.h"

#define CLOUD_LEASE_UPLOAD_MAX 64 /* certificates per lease.upload */

extern const struct cloud_op cloud_lease_ops[];

#endif
