/*
 * nu_brokerlist: the broker's list files (DIR/broker/revoked, owners) as
 * their writers and the plugin's parser see them. An edit keeps what a
 * person wrote (comments, blanks), adds a line once, moves an owner; what the
 * writer writes the tokenizer reads back as the same tokens; two processes
 * editing at once lose no line (the lock); an oversized file is refused
 * unchanged.
 */
#include "nu_brokerlist.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmp[256];
static char path[300];

static int setup(void)
{
    int rc = nu_test_tmpdir("brokerlist", tmp, sizeof(tmp));
    snprintf(path, sizeof(path), "%s/owners", tmp);
    return rc;
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

/* The file's text (NUL-terminated, caller frees); "" when missing. */
static char *slurp(void)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (nu_file_read(path, 4u * 1024u * 1024u, &buf, &len) != NU_OK)
        return strdup("");
    char *s = malloc(len + 1);
    memcpy(s, buf, len);
    s[len] = '\0';
    free(buf);
    return s;
}

static void put(const char *text)
{
    CU_ASSERT_EQUAL(nu_file_write_atomic(path, text, strlen(text), 0644), NU_OK);
}

static int add1(const char *line, const char *drop)
{
    const char *add[] = {line};
    struct nu_brokerlist_edit e = {.drop_owner_of = drop, .add = add, .n_add = 1};
    return nu_brokerlist_edit(path, &e);
}

static void test_add_once_keeps_hand_lines(void)
{
    unlink(path);
    CU_ASSERT_EQUAL(nu_brokerlist_file_has(path, "st-1 prog-1"), 0);
    CU_ASSERT_EQUAL(add1("st-1 prog-1", NULL), NU_OK);
    char *s = slurp();
    CU_ASSERT_STRING_EQUAL(s, "st-1 prog-1\n");
    free(s);
    /* Hand-written: a comment, other blanks, no final newline. */
    put("# owners, by hand\n  st-1\t prog-2  # the second\nst-2 prog-3");
    CU_ASSERT_EQUAL(add1("st-1 prog-2", NULL), NU_OK);
    CU_ASSERT_EQUAL(add1("st-2 prog-4", NULL), NU_OK);
    s = slurp();
    CU_ASSERT_STRING_EQUAL(
        s, "# owners, by hand\n  st-1\t prog-2  # the second\nst-2 prog-3\nst-2 prog-4\n");
    free(s);
    CU_ASSERT_EQUAL(nu_brokerlist_file_has(path, "st-1 prog-2"), 1);
    CU_ASSERT_EQUAL(nu_brokerlist_file_has(path, "st-1 prog-3"), 0);
    /* A second copy of a line that is added goes. */
    put("st-1 prog-1\nst-1  prog-1\nst-9 prog-9\n");
    CU_ASSERT_EQUAL(add1("st-1 prog-1", NULL), NU_OK);
    s = slurp();
    CU_ASSERT_STRING_EQUAL(s, "st-1 prog-1\nst-9 prog-9\n");
    free(s);
}

/* Many lines added to many (the broker adopting a large revocation list):
 * each wanted line once, the old lines in place and order, the new ones
 * appended in the caller's order, a repeat in the added set written once. */
static void test_many_added_to_many(void)
{
    enum { OLD = 6000, ADD = 6000 };
    char *old = malloc(OLD * 16 + 32), *want = malloc((OLD + ADD) * 16 + 32);
    char(*names)[16] = malloc((ADD + 1) * sizeof(*names));
    const char **add = malloc((ADD + 1) * sizeof(*add));
    CU_ASSERT_FATAL(old && want && names && add);
    size_t n = (size_t)sprintf(old, "# kept\n"), w = 0;
    for (int i = 0; i < OLD; i++)
        n += (size_t)sprintf(old + n, "id-%d\n", 2 * i); /* the even ones */
    memcpy(want, old, n + 1);
    w = n;
    for (int i = 0; i < ADD; i++) { /* the first half of the odd ones, then evens */
        int v = i < ADD / 2 ? 2 * i + 1 : 2 * (i - ADD / 2);
        snprintf(names[i], sizeof(names[i]), "id-%d", v);
        add[i] = names[i];
        if (v % 2)
            w += (size_t)sprintf(want + w, "%s\n", names[i]);
    }
    add[ADD] = add[0]; /* a repeat */
    put(old);
    struct nu_brokerlist_edit e = {.add = add, .n_add = ADD + 1};
    CU_ASSERT_EQUAL(nu_brokerlist_edit(path, &e), NU_OK);
    char *got = slurp();
    CU_ASSERT_STRING_EQUAL(got, want);
    free(got);
    free(old);
    free(want);
    free(names);
    free(add);
}

static void test_move_owner(void)
{
    put("# keep me\nst-a prog-1\nst-a prog-2\nst-c prog-1\n");
    CU_ASSERT_EQUAL(add1("st-b prog-1", "prog-1"), NU_OK);
    char *s = slurp();
    CU_ASSERT_STRING_EQUAL(s, "# keep me\nst-a prog-2\nst-b prog-1\n");
    free(s);
}

/* Whatever the writer writes, the plugin's tokenizer reads as the same tokens. */
static void test_written_lines_parse_back(void)
{
    unlink(path);
    static const char *const lines[] = {"cloud-1", "st.1 prog_2", "a b"};
    struct nu_brokerlist_edit e = {.add = lines, .n_add = 3};
    CU_ASSERT_EQUAL(nu_brokerlist_edit(path, &e), NU_OK);
    char *s = slurp(), *line = s;
    for (size_t i = 0; i < 3; i++) {
        char *nl = strchr(line, '\n');
        CU_ASSERT_PTR_NOT_NULL_FATAL(nl);
        struct nu_brokerlist_tok tok[NU_BROKERLIST_TOKENS_MAX];
        size_t n = 0;
        char norm[128];
        nu_brokerlist_tokenize(line, (size_t)(nl - line), tok, &n);
        CU_ASSERT_EQUAL(n, i == 0 ? 1u : 2u);
        CU_ASSERT_EQUAL(nu_brokerlist_norm(line, (size_t)(nl - line), norm, sizeof(norm)),
                        strlen(lines[i]));
        CU_ASSERT_STRING_EQUAL(norm, lines[i]);
        line = nl + 1;
    }
    free(s);
}

static void test_tokenize_comment_and_count(void)
{
    struct nu_brokerlist_tok tok[NU_BROKERLIST_TOKENS_MAX];
    size_t n = 0;
    const char *l = "st-1#x prog-1";
    nu_brokerlist_tokenize(l, strlen(l), tok, &n);
    CU_ASSERT_EQUAL(n, 1u); /* '#' ends the line, inside a token too */
    CU_ASSERT_EQUAL(tok[0].len, 4u);
    l = " a b c d e f";
    nu_brokerlist_tokenize(l, strlen(l), tok, &n);
    CU_ASSERT_EQUAL(n, NU_BROKERLIST_TOKENS_MAX + 1u);
    l = "\t\r # only a comment";
    nu_brokerlist_tokenize(l, strlen(l), tok, &n);
    CU_ASSERT_EQUAL(n, 0u);
}

/* Two processes adding 40 lines each at once: all 80 are there (the lock). */
static void test_concurrent_writers_lose_nothing(void)
{
    unlink(path);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        CU_ASSERT_FATAL(kids[k] >= 0);
        if (kids[k] == 0) {
            int bad = 0;
            for (int i = 0; i < 40; i++) {
                char line[64];
                snprintf(line, sizeof(line), "st-%d prog-%d", k, i);
                bad |= add1(line, NULL) != NU_OK;
            }
            _exit(bad);
        }
    }
    for (int k = 0; k < 2; k++) {
        int status = 0;
        CU_ASSERT_EQUAL(waitpid(kids[k], &status, 0), kids[k]);
        CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 40; i++) {
            char line[64];
            snprintf(line, sizeof(line), "st-%d prog-%d", k, i);
            CU_ASSERT_EQUAL(nu_brokerlist_file_has(path, line), 1);
        }
    }
}

static void test_oversized_refused_unchanged(void)
{
    size_t big = NU_BROKERLIST_FILE_MAX + 10;
    char *text = malloc(big + 1);
    memset(text, '#', big);
    text[big] = '\0';
    put(text);
    CU_ASSERT_EQUAL(add1("st-1 prog-1", NULL), NU_ERR_TOO_LARGE);
    char *s = slurp();
    CU_ASSERT_EQUAL(strlen(s), big);
    free(s);
    free(text);
    CU_ASSERT_EQUAL(nu_brokerlist_edit(NULL, NULL), NU_ERR_INVALID_ARG);
}

/* A whole list adopted from the bus: replaced under the lock; a writer
 * holding the lock holds the replace back (it waits, then wins or loses
 * whole, never half); the same bytes are not rewritten. */
static void test_replace_under_lock(void)
{
    int changed = -1, fd = -1;
    put("st-1 prog-1\n");
    CU_ASSERT_EQUAL(nu_brokerlist_replace(path, "st-2 prog-2\n", 12, &changed), NU_OK);
    CU_ASSERT_EQUAL(changed, 1);
    CU_ASSERT_EQUAL(nu_brokerlist_file_has(path, "st-1 prog-1"), 0);
    CU_ASSERT_EQUAL(nu_brokerlist_file_has(path, "st-2 prog-2"), 1);
    CU_ASSERT_EQUAL(nu_brokerlist_replace(path, "st-2 prog-2\n", 12, &changed), NU_OK);
    CU_ASSERT_EQUAL(changed, 0);
    CU_ASSERT_EQUAL_FATAL(nu_brokerlist_lock(path, &fd), NU_OK);
    pid_t kid = fork();
    CU_ASSERT_FATAL(kid >= 0);
    if (kid == 0) { /* the lock belongs to the parent's open file, not to this copy */
        close(fd);
        _exit(nu_brokerlist_replace(path, "st-3 prog-3\n", 12, NULL) == NU_OK ? 0 : 1);
    }
    usleep(200 * 1000); /* the child waits on the lock meanwhile */
    CU_ASSERT_EQUAL(nu_brokerlist_file_has(path, "st-2 prog-2"), 1);
    close(fd);
    int status = 0;
    CU_ASSERT_EQUAL(waitpid(kid, &status, 0), kid);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CU_ASSERT_EQUAL(nu_brokerlist_file_has(path, "st-3 prog-3"), 1);
    CU_ASSERT_EQUAL(nu_brokerlist_replace(NULL, "x", 1, NULL), NU_ERR_INVALID_ARG);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"add once, hand-written lines kept", test_add_once_keeps_hand_lines},
        {"many added to many: each once, in order", test_many_added_to_many},
        {"an owner moves: the other lines stay", test_move_owner},
        {"written lines parse back as their tokens", test_written_lines_parse_back},
        {"tokenizer: comments, too many tokens", test_tokenize_comment_and_count},
        {"two writers at once lose no line", test_concurrent_writers_lose_nothing},
        {"oversized file refused, unchanged", test_oversized_refused_unchanged},
        {"replace: whole, under the lock, unchanged bytes kept", test_replace_under_lock},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_brokerlist", setup, teardown, cases},
                                                  {NULL}};
    return nu_test_run("test_brokerlist", suites);
}
