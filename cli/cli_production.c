/* nusec production start|stop|status */
#include "cli.h"
#include "cli_opts.h"

#include "station_lock.h"
#include "station_db.h"
#include "station_report.h"

#include "nu_err.h"
#include "nu_util.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* 128 + SIGINT: Ctrl-C left production running. */
#define CLI__EXIT_INTERRUPTED 130

static const char cli__start_usage[] =
    "usage: nusec production start --job JOB [--wait] [--interval S] [--timeout S]\n"
    "                              [--dir DIR]\n"
    "\n"
    "Start production of an imported job: nusec-station delivers each of its\n"
    "packages to its programmer and tells it to start (within its poll interval).\n"
    "A stopped job resumes where its programmers are.\n"
    "\n"
    "  --job JOB     the job (see `nusec package list`)\n"
    "  --wait        follow the production until the job is done: on a terminal a\n"
    "                live progress bar per job and per programmer, otherwise plain\n"
    "                lines every --interval seconds. Ctrl-C stops following, not\n"
    "                the production.\n"
    "  --interval S  seconds between plain lines off a terminal (default 5)\n"
    "  --timeout S   with --wait: give up following after S seconds (exit 1)\n"
    "  --dir DIR     state directory (default: $NUSEC_HOME)\n"
    "  -h, --help    this text\n"
    "\n"
    "With --wait the last line says how the job ended, e.g.\n"
    "  JOB: limit reached: 16 of 16 done\n"
    "  JOB: tray empty: 12 of 16 done, load blanks and start again\n"
    "  JOB: stopped by operator: 3 of 16 done\n"
    "  JOB: cloud refused: quota exhausted: 14 of 16 done\n"
    "  JOB: failed: REASON: 0 of 16 done\n"
    "(\", N chips failed\" when chips failed on the way).\n"
    "\n"
    "Exit status: 0 started (with --wait: limit reached), 1 failed (no such job;\n"
    "with --wait: a package could not be delivered, started or used on any\n"
    "programmer still at work), 2 usage error, 4 tray empty (no blank chip left\n"
    "before the limit), 5 stopped by operator, 6 cloud refused (quota exhausted,\n"
    "job not active, expired, revoked), 7 still running after --timeout (it goes\n"
    "on), 130 interrupted by Ctrl-C (production goes on).\n";

static const char cli__stop_usage[] =
    "usage: nusec production stop --job JOB [--dir DIR]\n"
    "\n"
    "Stop production of a job: nusec-station sends STOP to its programmers that\n"
    "are producing it. `production start` resumes it.\n"
    "\n"
    "  --job JOB   the job\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 stopped (or already stopped or done), 1 failed (no such job),\n"
    "2 usage error.\n";

static const char cli__status_usage[] =
    "usage: nusec production status [--job JOB] [--json] [--once | --watch]\n"
    "                               [--interval S] [--dir DIR]\n"
    "\n"
    "Production progress from the station's journal and the programmers' last\n"
    "status: per job and per programmer done / limit, devices per minute,\n"
    "failures, time left, and the last delivery problem.\n"
    "\n"
    "  --job JOB     only this job\n"
    "  --json        one JSON object (a snapshot); each job has \"outcome\" (running,\n"
    "                limit reached, tray empty, stopped, cloud refused, failed) and\n"
    "                \"summary\" (the line `production start --wait` ends with)\n"
    "  --once        on a terminal, print once instead of the live view\n"
    "  --watch       off a terminal, print plain lines every --interval seconds\n"
    "                until no job is running\n"
    "  --interval S  seconds between plain lines (default 5)\n"
    "  --dir DIR     state directory (default: $NUSEC_HOME)\n"
    "  -h, --help    this text\n"
    "\n"
    "On a terminal the view is live (redrawn in place) until no job is running;\n"
    "Ctrl-C leaves it.\n"
    "Exit status: 0 shown, 1 failed (no such job, no station.db), 2 usage error,\n"
    "130 interrupted.\n";

struct cli__prod_opts {
    const char *dir;
    const char *job;
    int wait, json, once, watch;
    unsigned interval_s, timeout_s;
};

static volatile sig_atomic_t cli__interrupted;

static void cli__on_sigint(int sig)
{
    (void)sig;
    cli__interrupted = 1;
}

static int cli__prod_parse(int argc, char **argv, const char *usage, struct cli__prod_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->interval_s = 5;
    const struct cli_opt opts[] = {
        CLI_OPT_STR("dir", &o->dir),
        CLI_OPT_STR("job", &o->job),
        CLI_OPT_BOOL("wait", &o->wait),
        CLI_OPT_BOOL("json", &o->json),
        CLI_OPT_BOOL("once", &o->once),
        CLI_OPT_BOOL("watch", &o->watch),
        CLI_OPT_NUM("interval", &o->interval_s, 1, 86400),
        CLI_OPT_NUM("timeout", &o->timeout_s, 1, 86400),
    };
    int rc = cli_opts_parse(argc, argv, usage, opts, CLI_OPTS_N(opts));
    if (rc)
        return rc;
    if (optind < argc) {
        cli_errorf("production: unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    if (!(o->dir = cli_state_dir(o->dir)))
        return CLI_EXIT_USAGE;
    return CLI_EXIT_OK;
}

/* Options a subcommand does not take. */
static int cli__prod_only(const struct cli__prod_opts *o, int wait, int json, int views,
                          int job_required, const char *usage)
{
    if ((!wait && (o->wait || o->timeout_s)) || (!json && o->json) ||
        (!views && (o->once || o->watch)) || (job_required && !o->job)) {
        if (job_required && !o->job)
            cli_errorf("production: --job JOB is required");
        fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    return CLI_EXIT_OK;
}

static void cli__sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    nanosleep(&ts, NULL); /* Ctrl-C cuts it short, which is what we want */
}

/*
 * The report cut to the terminal's width, so that every line takes exactly
 * one row and moving the cursor up by the line count lands on the first.
 */
static int cli__draw(const struct station_report *r)
{
    struct winsize ws;
    char *text = NULL;
    size_t len = 0;
    int cols = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 ? ws.ws_col - 1 : 200;
    FILE *mem = open_memstream(&text, &len);
    if (!mem)
        return station_report_text(r, (unsigned)cols, stdout);
    int lines = station_report_text(r, (unsigned)cols, mem);
    fclose(mem);
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        int n = nl ? (int)(nl - line) : (int)strlen(line);
        printf("%.*s\n", n < cols ? n : cols, line);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return lines;
}

/*
 * The end of following: one clear line per final state and its exit code
 * (station_outcome_exit). `production status --watch` keeps its own codes:
 * 0 shown, 1 when something failed.
 */
static int cli__verdict(const struct cli__prod_opts *o, const struct station_report *r, int rc,
                        int settled, int timed_out, int stuck)
{
    char line[2 * STATION_DB_ERROR_MAX];
    if (rc != NU_OK)
        return cli_fail("production status", rc);
    if (cli__interrupted) {
        fprintf(stderr,
                "\nnusec: production goes on; stop it with: nusec production stop "
                "--job %s --dir %s\n",
                o->job ? o->job : "JOB", o->dir);
        return CLI__EXIT_INTERRUPTED;
    }
    if (!o->wait)
        return r && station_report_failed(r) ? CLI_EXIT_FAIL : CLI_EXIT_OK;
    const struct station_report_job *j = r && r->n_jobs ? &r->jobs[0] : NULL;
    if (!j)
        return CLI_EXIT_FAIL;
    if (timed_out && !settled) {
        station_report_job_line(j, line, sizeof(line));
        printf("%s: %s\n", j->job.job_id, line);
        cli_errorf("production: still running after %u s (it goes on)", o->timeout_s);
        return station_outcome_exit(STATION_OUTCOME_RUNNING);
    }
    if (stuck) {
        const char *why = "";
        for (size_t k = 0; k < j->n_progs && !why[0]; k++)
            why = j->progs[k].finished ? "" : j->progs[k].error;
        station_outcome_line(STATION_OUTCOME_FAILED, j->done, j->limit, j->failed, why, line,
                             sizeof(line));
        printf("%s: %s\n", j->job.job_id, line);
        cli_errorf("production: no programmer of the job can go on (see the errors above); "
                   "nusec-station keeps retrying");
        return station_outcome_exit(STATION_OUTCOME_FAILED);
    }
    station_report_job_line(j, line, sizeof(line));
    printf("%s: %s\n", j->job.job_id, line);
    return station_outcome_exit(j->outcome);
}

/*
 * Show progress until no job shown is running (or interrupted / timed out).
 * tty: redraw in place; else plain lines every interval. Returns the exit code.
 */
static int cli__follow(const struct cli__prod_opts *o, struct station_db *db, int tty,
                       unsigned timeout_s)
{
    struct sigaction sa = {.sa_handler = cli__on_sigint}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    uint64_t start = nu_mono_ms(), last_plain = 0;
    int lines = 0, rc = NU_OK, settled = 0, timed_out = 0, stuck = 0;
    struct station_report *r = NULL;
    while (!cli__interrupted) {
        station_report_free(r);
        r = NULL;
        if ((rc = station_report_build(o->dir, db, o->job, nu_time_ms(), &r)) != NU_OK)
            break;
        settled = station_report_settled(r);
        stuck = !settled && o->wait && station_report_stuck(r);
        uint64_t now = nu_mono_ms();
        timed_out = timeout_s && now - start >= (uint64_t)timeout_s * 1000u;
        if (tty) {
            if (lines)
                printf("\033[%dA\033[J", lines); /* back to our first line, clear below */
            lines = cli__draw(r);
        } else if (settled || timed_out || stuck || !last_plain ||
                   now - last_plain >= (uint64_t)o->interval_s * 1000u) {
            last_plain = now ? now : 1;
            station_report_text(r, 0, stdout);
        }
        fflush(stdout);
        if (settled || timed_out || stuck)
            break;
        cli__sleep_ms(tty ? 250 : 200);
    }
    sigaction(SIGINT, &old, NULL);
    int code = cli__verdict(o, r, rc, settled, timed_out, stuck);
    station_report_free(r);
    return code;
}

/* station.db of dir, which must exist (a typo in --dir must not create state). */
static int cli__open_db(const char *dir, struct station_db **db)
{
    int rc = station_db_open_dir_existing(dir, db);
    if (rc == NU_ERR_NOT_FOUND)
        cli_errorf("production: no station in %s yet (import packages first: nusec package "
                   "import FILE... --dir %s)",
                   dir, dir);
    return rc;
}

static void cli__warn_no_daemon(const char *dir)
{
    if (!station_daemon_running(dir, NULL))
        cli_errorf("warning: nusec-station is not running on %s: it acts on this when it "
                   "starts (nusec stack up, or nusec-station --dir %s)",
                   dir, dir);
}

static int cli__command(const struct cli__prod_opts *o, struct station_db *db,
                        enum station_job_state to)
{
    int changed = 0;
    int rc = station_db_job_command(db, o->job, to, nu_time_ms(), &changed);
    const char *verb = to == STATION_JOB_STARTED ? "start" : "stop";
    if (rc == NU_ERR_NOT_FOUND) {
        cli_errorf("production %s: no job '%s' in the station (import its packages first)", verb,
                   o->job);
        return CLI_EXIT_FAIL;
    }
    if (rc == NU_ERR_STATE) {
        printf("job %s is done; nothing to %s\n", o->job, verb);
        return CLI_EXIT_OK;
    }
    if (rc != NU_OK)
        return cli_fail(to == STATION_JOB_STARTED ? "production start" : "production stop", rc);
    printf("production of %s %s%s\n", o->job, changed ? "" : "already ",
           to == STATION_JOB_STARTED ? "started" : "stopped");
    cli__warn_no_daemon(o->dir);
    return CLI_EXIT_OK;
}

static int cli__start(int argc, char **argv)
{
    struct cli__prod_opts o;
    struct station_db *db = NULL;
    int rc = cli__prod_parse(argc, argv, cli__start_usage, &o);
    if (!rc)
        rc = cli__prod_only(&o, 1, 0, 0, 1, cli__start_usage);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = cli__open_db(o.dir, &db)) != NU_OK)
        return rc == NU_ERR_NOT_FOUND ? CLI_EXIT_FAIL
                                      : cli_fail("production start: station.db", rc);
    rc = cli__command(&o, db, STATION_JOB_STARTED);
    if (rc == CLI_EXIT_OK && o.wait)
        rc = cli__follow(&o, db, isatty(STDOUT_FILENO), o.timeout_s);
    station_db_close(db);
    return rc;
}

static int cli__stop(int argc, char **argv)
{
    struct cli__prod_opts o;
    struct station_db *db = NULL;
    int rc = cli__prod_parse(argc, argv, cli__stop_usage, &o);
    if (!rc)
        rc = cli__prod_only(&o, 0, 0, 0, 1, cli__stop_usage);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = cli__open_db(o.dir, &db)) != NU_OK)
        return rc == NU_ERR_NOT_FOUND ? CLI_EXIT_FAIL : cli_fail("production stop: station.db", rc);
    rc = cli__command(&o, db, STATION_JOB_STOPPED);
    station_db_close(db);
    return rc;
}

static int cli__status(int argc, char **argv)
{
    struct cli__prod_opts o;
    struct station_db *db = NULL;
    struct station_report *r = NULL;
    int rc = cli__prod_parse(argc, argv, cli__status_usage, &o);
    if (!rc)
        rc = cli__prod_only(&o, 0, 1, 1, 0, cli__status_usage);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = cli__open_db(o.dir, &db)) != NU_OK)
        return rc == NU_ERR_NOT_FOUND ? CLI_EXIT_FAIL
                                      : cli_fail("production status: station.db", rc);
    int tty = isatty(STDOUT_FILENO);
    if (!o.json && ((tty && !o.once) || (!tty && o.watch))) {
        rc = cli__follow(&o, db, tty, 0);
        station_db_close(db);
        return rc;
    }
    rc = station_report_build(o.dir, db, o.job, nu_time_ms(), &r);
    if (rc == NU_OK) {
        if (o.json)
            station_report_json(r, stdout);
        else
            station_report_text(r, 0, stdout);
    }
    station_report_free(r);
    station_db_close(db);
    if (rc == NU_ERR_NOT_FOUND) {
        cli_errorf("production status: no job '%s' in the station", o.job);
        return CLI_EXIT_FAIL;
    }
    return rc ? cli_fail("production status", rc) : CLI_EXIT_OK;
}

const struct cli_command cli_production_commands[] = {
    {"production", "start", "start (or resume) a job on its programmers; --wait follows it",
     cli__start},
    {"production", "stop", "stop a job on its programmers", cli__stop},
    {"production", "status", "progress per job and programmer (live on a terminal)", cli__status},
    {NULL, NULL, NULL, NULL},
};
