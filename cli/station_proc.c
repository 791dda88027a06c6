#include "station_proc.h"

#include "nu_err.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROC__TAIL_MAX (64u * 1024u)

extern char **environ;

static void proc__sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    nanosleep(&ts, NULL);
}

/* In the child, between fork and exec: async-signal-safe calls only. */
static void proc__child(char *const argv[], char *const envp[], int null_fd, int log_fd)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    setsid();
    if (dup2(null_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0)
        _exit(127);
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
#endif
    {
        for (int fd = 3; fd < 4096; fd++)
            close(fd);
    }
    execve(argv[0], argv, envp);
    static const char msg[] = "station_proc: cannot execute ";
    ssize_t ignored = write(2, msg, sizeof(msg) - 1);
    ignored = write(2, argv[0], strlen(argv[0]));
    ignored = write(2, "\n", 1);
    (void)ignored;
    _exit(127);
}

int station_proc_spawn(char *const argv[], const char *log_path, pid_t *out_pid)
{
    return station_proc_spawn_env(argv, NULL, log_path, out_pid);
}

#define PROC__HSM_PIN "NUSEC_HSM_PIN="

/* environ (without the HSM PIN) + add, built before fork (the child may only exec). */
static char **proc__envp(char *const add[])
{
    size_t n = 0, k = 0, m = 0;
    while (environ[n])
        n++;
    while (add && add[k])
        k++;
    char **envp = calloc(n + k + 1, sizeof(*envp));
    if (!envp)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(environ[i], PROC__HSM_PIN, strlen(PROC__HSM_PIN)) != 0)
            envp[m++] = environ[i];
    }
    if (k)
        memcpy(envp + m, add, k * sizeof(*envp));
    return envp;
}

int station_proc_spawn_env(char *const argv[], char *const env_add[], const char *log_path,
                           pid_t *out_pid)
{
    if (!argv || !argv[0] || !log_path || !out_pid)
        return NU_ERR_INVALID_ARG;
    char **envp = proc__envp(env_add);
    if (!envp)
        return NU_ERR_NOMEM;
    /* Owner only: a log names identities, jobs and devices. */
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int rc = log_fd >= 0 && null_fd >= 0 ? NU_OK : NU_ERR_IO;
    pid_t pid = rc == NU_OK ? fork() : -1;
    if (pid == 0)
        proc__child(argv, envp, null_fd, log_fd);
    free(envp); /* the strings are environ's and the caller's */
    if (rc == NU_OK && pid < 0)
        rc = NU_ERR_IO;
    if (log_fd >= 0)
        close(log_fd);
    if (null_fd >= 0)
        close(null_fd);
    if (rc == NU_OK)
        *out_pid = pid;
    return rc;
}

/* State letter from /proc/PID/stat ("pid (comm) S ..."), or 0. */
static char proc__state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    return paren && paren[1] == ' ' ? paren[2] : 0;
}

int station_proc_alive(pid_t pid)
{
    int status;
    if (pid <= 0)
        return 0;
    if (waitpid(pid, &status, WNOHANG) == pid)
        return 0;
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 0;
    char s = proc__state(pid);
    return s != 0 && s != 'Z' && s != 'X';
}

static const char *proc__base(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

int station_proc_is(pid_t pid, const char *name)
{
    char path[64], buf[PATH_MAX];
    if (pid <= 0 || !name)
        return 0;
    snprintf(path, sizeof(path), "/proc/%ld/cmdline", (long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n > 0) {
            buf[n] = '\0'; /* argv[0] ends at the first NUL */
            return strcmp(proc__base(buf), name) == 0;
        }
    }
    snprintf(path, sizeof(path), "/proc/%ld/exe", (long)pid);
    ssize_t n = readlink(path, buf, sizeof(buf) - 1);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return strcmp(proc__base(buf), name) == 0;
}

static int proc__wait_gone(pid_t pid, unsigned ms)
{
    for (unsigned waited = 0; station_proc_alive(pid); waited += 50) {
        if (waited >= ms)
            return 0;
        proc__sleep_ms(50);
    }
    return 1;
}

int station_proc_stop(pid_t pid, unsigned grace_ms)
{
    if (!station_proc_alive(pid))
        return 0;
    kill(pid, SIGTERM);
    if (proc__wait_gone(pid, grace_ms))
        return 0;
    kill(pid, SIGKILL);
    return proc__wait_gone(pid, 2000) ? 1 : -1;
}

int station_proc_wait_child(pid_t pid, unsigned ms, int *out_status)
{
    int status = 0;
    if (pid <= 0 || !out_status)
        return NU_ERR_INVALID_ARG;
    for (unsigned waited = 0;; waited += 20) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            *out_status = WIFEXITED(status) ? WEXITSTATUS(status)
                                            : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
            return NU_OK;
        }
        if (r < 0)
            return NU_ERR_INVALID_ARG;
        if (waited >= ms)
            return NU_ERR_TIMEOUT;
        proc__sleep_ms(20);
    }
}

int station_pidfile_write(const char *path, pid_t pid)
{
    char text[32];
    int n = snprintf(text, sizeof(text), "%ld\n", (long)pid);
    return nu_file_write_atomic(path, text, (size_t)n, 0644);
}

int station_pidfile_read(const char *path, pid_t *out_pid)
{
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = nu_file_read(path, 64, &text, &len);
    if (rc != NU_OK)
        return rc;
    char *end = NULL;
    long v = strtol((char *)text, &end, 10);
    while (end && (*end == '\n' || *end == ' ' || *end == '\r'))
        end++;
    rc = (len && end && *end == '\0' && v > 0 && v < INT_MAX) ? NU_OK : NU_ERR_DECODE;
    if (rc == NU_OK)
        *out_pid = (pid_t)v;
    free(text);
    return rc;
}

int station_bin_dir(char *out, size_t cap)
{
    const char *env = getenv("NUSEC_BIN_DIR");
    if (env && *env)
        return nu_path_fmt(out, cap, "%s", env);
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return NU_ERR_IO;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NU_ERR_IO;
    *slash = '\0';
    return nu_path_fmt(out, cap, "%s", exe[0] ? exe : "/");
}

int station_tcp_probe(const char *host, int port, unsigned timeout_ms)
{
    char service[16];
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    snprintf(service, sizeof(service), "%d", port);
    if (getaddrinfo(host, service, &hints, &res) != 0)
        return 0;
    int ok = 0;
    for (struct addrinfo *a = res; a && !ok; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            ok = 1;
        } else if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t len = sizeof(err);
            if (poll(&p, 1, (int)timeout_ms) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
                ok = 1;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return ok;
}

/* The last PROC__TAIL_MAX bytes of a file (NUL-terminated, caller frees). */
static char *proc__tail(const char *path, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    off_t size = lseek(fd, 0, SEEK_END);
    off_t from = size > (off_t)PROC__TAIL_MAX ? size - (off_t)PROC__TAIL_MAX : 0;
    char *buf = size >= 0 ? malloc((size_t)(size - from) + 1) : NULL;
    ssize_t n = buf ? pread(fd, buf, (size_t)(size - from), from) : -1;
    close(fd);
    if (n < 0) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *out_len = (size_t)n;
    return buf;
}

void station_log_tail(const char *path, unsigned lines)
{
    size_t len = 0;
    char *buf = proc__tail(path, &len);
    if (!buf) {
        fprintf(stderr, "    (no log at %s)\n", path);
        return;
    }
    size_t start = len;
    while (start > 0 && buf[start - 1] == '\n')
        start--;
    for (unsigned seen = 0; start > 0; start--) {
        if (buf[start - 1] == '\n' && ++seen == lines)
            break;
    }
    fprintf(stderr, "    last lines of %s:\n", path);
    for (char *line = buf + start; *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        fprintf(stderr, "    | %s\n", line);
        if (!nl)
            break;
        line = nl + 1;
    }
    free(buf);
}

int station_log_contains(const char *path, const char *needle)
{
    size_t len = 0;
    char *buf = proc__tail(path, &len);
    int found = buf && strstr(buf, needle) != NULL;
    free(buf);
    return found;
}
