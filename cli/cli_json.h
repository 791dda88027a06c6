/*
 * cli_json — the one `--json` convention of every nusec command
 * (docs/cli.md is the user's side of this contract):
 *
 *   - stdout holds JSON only, one JSON text per line (newline-delimited);
 *     messages for people stay on stderr, prefixed "nusec: ";
 *   - one thing (job show, report, audit verify, ...) = one object on one
 *     line; a list (job list, device list, package list, stack status, ...)
 *     = one array of objects on one line, `[]` when empty; a stream
 *     (monitor, device export) = one object per line, as it comes;
 *   - a failure (exit status other than 0) ends stdout with one line
 *     {"error":{"code":N,"name":"NAME","message":"text"}}: code and name
 *     from libnusec/nu_err.h (the proto ErrorCode), message the text of the
 *     stderr line without "nusec: ". No data object has a top-level key
 *     "error", so that line can never be mistaken for data.
 *
 * Why one process-wide switch (the one static of nusec): errors are
 * reported through cli_errorf()/cli_fail() from ~200 call sites in every
 * group; main() knows --json from argv, and those two functions record the
 * failure here, so no call site needs to carry the flag.
 */
#ifndef CLI_JSON_H
#define CLI_JSON_H

#include <stdio.h>

/* Scan argv (up to a "--") for --json and remember it. Called by main(). */
void cli_json_init(int argc, char **argv);

/* 1 when the command runs with --json. */
int cli_json_on(void);

/*
 * Record a failure message (without the "nusec: " prefix). nu_code is a
 * libnusec error code, or -1 when unknown (then the message's trailing
 * "(NAME)" names it, if it has one). A later message replaces an earlier
 * one unless the earlier one had a code and the later one has none.
 */
void cli_json_note(int nu_code, const char *message);

/*
 * At exit: with --json and exit_code != 0, print the error line on stdout
 * (code from the last note, else INVALID_ARG for a usage error (2), EXISTS
 * for a refusal (3), INTERNAL otherwise). Flushes stdout.
 */
void cli_json_finish(int exit_code);

/* Write s as one JSON string literal ("..." with every byte escaped as
 * nu_json does: control characters, quotes, invalid UTF-8). s NULL = "". */
void cli_json_fstr(FILE *f, const char *s);

/* `,"key":"escaped value"` (no comma when first is set). */
void cli_json_fkv(FILE *f, const char *key, const char *value, int first);

#endif
