# The shared PostgreSQL fixture's folder and nusec_pg_test(); included by
# every CMakeLists.txt that adds tests needing a real PostgreSQL (issue 13).
include_guard(GLOBAL)
string(MD5 pg_tag "${PROJECT_BINARY_DIR}")
string(SUBSTRING "${pg_tag}" 0 12 pg_tag)
set(NUSEC_PG_FIXTURE_DIR "/tmp/nusec-pg-${pg_tag}")

# nusec_pg_test(NAME): a test that runs on the fixture's cluster.
function(nusec_pg_test name)
  set_tests_properties(${name} PROPERTIES FIXTURES_REQUIRED pg ENVIRONMENT
    "NUSEC_BINARY_DIR=${PROJECT_BINARY_DIR};NUSEC_PG_HOST=${NUSEC_PG_FIXTURE_DIR}/run;NUSEC_PG_PORT_FILE=${NUSEC_PG_FIXTURE_DIR}/port")
endfunction()
