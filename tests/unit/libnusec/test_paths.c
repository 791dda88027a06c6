/* nu_paths: the state directory layout others rely on. */
#include "nu_err.h"
#include "nu_paths.h"
#include "nu_test.h"
#include "nu_util.h"

#include <string.h>
#include <sys/stat.h>

static void test_layout_names_match_the_architecture(void)
{
    char p[256];
    CU_ASSERT_EQUAL(nu_paths_get("/s", NU_PATH_LEDGER, p, sizeof(p)), NU_OK);
    CU_ASSERT_STRING_EQUAL(p, "/s/cloud/ledger.db");
    CU_ASSERT_EQUAL(nu_paths_get("/s", NU_PATH_HSM_PIN, p, sizeof(p)), NU_OK);
    CU_ASSERT_STRING_EQUAL(p, "/s/hsm/pin");
    CU_ASSERT_EQUAL(nu_paths_get("/s", NU_PATH_BROKER_ENDPOINT, p, sizeof(p)), NU_OK);
    CU_ASSERT_STRING_EQUAL(p, "/s/broker/endpoint");
    CU_ASSERT_EQUAL(nu_paths_get("/s", NU_PATH_ROTPK, p, sizeof(p)), NU_OK);
    CU_ASSERT_STRING_EQUAL(p, "/s/firmware/rotpk.pem");
    CU_ASSERT_EQUAL(nu_paths_client_cert("/s", "oem", p, sizeof(p)), NU_OK);
    CU_ASSERT_STRING_EQUAL(p, "/s/pki/clients/oem.crt");
    /* every kind has a path */
    for (int k = 0; k < NU_PATH__COUNT; k++)
        CU_ASSERT_EQUAL(nu_paths_get("/s", (enum nu_path_kind)k, p, sizeof(p)), NU_OK);
}

static void test_names_cannot_escape_the_folder(void)
{
    char p[256];
    CU_ASSERT_EQUAL(nu_paths_client_key("/s", "../hsm/pin", p, sizeof(p)), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_paths_client_key("/s", ".hidden", p, sizeof(p)), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_paths_client_key("/s", "", p, sizeof(p)), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_paths_client_key("/s", "a b", p, sizeof(p)), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_paths_get(NULL, NU_PATH_PKI, p, sizeof(p)), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_paths_get("/s", NU_PATH__COUNT, p, sizeof(p)), NU_ERR_INVALID_ARG);
    char tiny[8];
    CU_ASSERT_EQUAL(nu_paths_get("/state", NU_PATH_LEDGER, tiny, sizeof(tiny)), NU_ERR_TOO_LARGE);
}

static void test_create_layout_keeps_secrets_private(void)
{
    char dir[256], p[300];
    CU_ASSERT_EQUAL_FATAL(nu_test_tmpdir("paths", dir, sizeof(dir)), 0);
    CU_ASSERT_EQUAL(nu_paths_create_layout(dir), NU_OK);
    CU_ASSERT_EQUAL(nu_paths_create_layout(dir), NU_OK); /* idempotent */
    struct stat st;
    snprintf(p, sizeof(p), "%s/hsm", dir);
    CU_ASSERT_EQUAL(stat(p, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);
    snprintf(p, sizeof(p), "%s/pki/clients", dir);
    CU_ASSERT_EQUAL(stat(p, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);
    snprintf(p, sizeof(p), "%s/targets", dir);
    CU_ASSERT_TRUE(nu_path_exists(p));
    nu_test_rmtree(dir);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"layout names match the architecture", test_layout_names_match_the_architecture},
        {"names cannot escape the folder", test_names_cannot_escape_the_folder},
        {"create_layout keeps secrets private", test_create_layout_keeps_secrets_private},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_paths", NULL, NULL, cases},
                                                  {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_paths", suites);
}
