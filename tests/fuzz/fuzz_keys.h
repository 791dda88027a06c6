/*
 * fuzz_keys — fixed private scalars for the fuzz targets and their seed
 * generator (gen_fuzz_seeds.c), so that committed seeds carry valid
 * signatures the targets can check. TEST VECTORS ONLY: these keys are
 * public, they sign nothing outside tests/fuzz.
 */
#ifndef FUZZ_KEYS_H
#define FUZZ_KEYS_H

/* Secure-boot (ROTPK) key of the MCUboot seeds. */
#define FUZZ_TEST_SECURE_BOOT_PRIV "5f1b7c2a9d3e4f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"

#endif
