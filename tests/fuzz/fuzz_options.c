/*
 * fuzz_options — the sanitizer run-time defaults every fuzz target is linked
 * with (ASAN_OPTIONS set in the environment still wins, flag by flag).
 *
 * Why: the ECC- and allocation-heavy targets spent most of their time in the
 * allocator, not in our code. wolfSSL and protobuf-c allocate large bignum
 * points and messages per input; with ASan's defaults every allocation's
 * first 4 KiB was filled with 0xbe, and the 256 MiB quarantine cycled through
 * fresh pages (one page fault each) that were handed back to the kernel every
 * 5 s. Measured with `-runs=N -seed=1` (user+sys CPU s): fuzz_ratelimit
 * 15000 runs 4.81 -> 2.63, fuzz_seal 3000 runs 2.94 -> 1.71, fuzz_pg_target
 * 400 runs 7.03 -> 3.81.
 *
 * What is kept: every ASan and UBSan check. A use after free is still caught
 * while the block is among the last 16 MiB freed, which spans many inputs of
 * every target (each input is independent of the ones before it).
 */
const char *__asan_default_options(void);

const char *__asan_default_options(void)
{
    return "quarantine_size_mb=16:max_malloc_fill_size=0:allocator_release_to_os_interval_ms=-1";
}
