#include "nu_log.h"
#include "nu_err.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct {
    pthread_mutex_t lock;
    const char *program;
    int level; /* enum nu_log_level; read without the lock (atomic) */
    FILE *out;
    FILE *owned;     /* out, when nu_log_open opened it */
    char path[4096]; /* of owned, for nu_log_reopen */
} nu__log = {PTHREAD_MUTEX_INITIALIZER, "nusec", NU_LOG_INFO, NULL, NULL, ""};

static const char *const nu__level_names[] = {"debug", "info", "warn", "error", "off"};

void nu_log_init(const char *program, enum nu_log_level level, FILE *out)
{
    pthread_mutex_lock(&nu__log.lock);
    nu__log.program = program ? program : "nusec";
    __atomic_store_n(&nu__log.level, (int)level, __ATOMIC_RELAXED);
    nu__log.out = out ? out : nu__log.owned;
    pthread_mutex_unlock(&nu__log.lock);
}

int nu_log_level_parse(const char *text, enum nu_log_level *out_level)
{
    if (!text || !out_level)
        return NU_ERR_INVALID_ARG;
    for (int i = NU_LOG_DEBUG; i <= NU_LOG_OFF; i++) {
        if (strcmp(text, nu__level_names[i]) == 0) {
            *out_level = (enum nu_log_level)i;
            return NU_OK;
        }
    }
    return NU_ERR_INVALID_ARG;
}

enum nu_log_level nu_log_get_level(void)
{
    return (enum nu_log_level)__atomic_load_n(&nu__log.level, __ATOMIC_RELAXED);
}

void nu_log_set_level(enum nu_log_level level)
{
    __atomic_store_n(&nu__log.level, (int)level, __ATOMIC_RELAXED);
}

/* Swap the owned file for a new open of `path` (lock held). */
static int nu__log_swap(const char *path)
{
    FILE *f = fopen(path, "ae");
    if (!f)
        return NU_ERR_IO;
    setvbuf(f, NULL, _IOLBF, 0);
    if (nu__log.owned)
        fclose(nu__log.owned);
    nu__log.owned = nu__log.out = f;
    return NU_OK;
}

int nu_log_open(const char *path)
{
    if (!path || !*path)
        return NU_ERR_INVALID_ARG;
    if (strlen(path) >= sizeof(nu__log.path))
        return NU_ERR_TOO_LARGE;
    pthread_mutex_lock(&nu__log.lock);
    int rc = nu__log_swap(path);
    if (rc == NU_OK)
        strcpy(nu__log.path, path);
    pthread_mutex_unlock(&nu__log.lock);
    return rc;
}

int nu_log_reopen(void)
{
    pthread_mutex_lock(&nu__log.lock);
    int rc = nu__log.owned && nu__log.out == nu__log.owned ? nu__log_swap(nu__log.path) : NU_OK;
    pthread_mutex_unlock(&nu__log.lock);
    return rc;
}

void nu_log_close(void)
{
    pthread_mutex_lock(&nu__log.lock);
    if (nu__log.out == nu__log.owned)
        nu__log.out = NULL;
    if (nu__log.owned)
        fclose(nu__log.owned);
    nu__log.owned = NULL;
    nu__log.path[0] = '\0';
    pthread_mutex_unlock(&nu__log.lock);
}

void nu_log(enum nu_log_level level, const char *fmt, ...)
{
    if ((int)level < __atomic_load_n(&nu__log.level, __ATOMIC_RELAXED) || level >= NU_LOG_OFF)
        return;

    char stamp[32];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp + n, sizeof(stamp) - n, ".%03ldZ", (long)(tv.tv_usec / 1000));

    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);

    /* One fprintf per line so concurrent threads never interleave a line. */
    pthread_mutex_lock(&nu__log.lock);
    FILE *out = nu__log.out ? nu__log.out : stderr;
    fprintf(out, "%s %s[%ld] %s: %s\n", stamp, nu__log.program, (long)getpid(),
            nu__level_names[level], text);
    fflush(out);
    pthread_mutex_unlock(&nu__log.lock);
}
