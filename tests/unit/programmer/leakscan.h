/*
 * leakscan — look for private key material in every file of a state
 * directory, except where keys are allowed to be (the sealed keystore.bin
 * and the chips' secret/ folders).
 *
 * Needles per key: the 32-byte private scalar raw, in lower- and upper-case
 * hex, and every base64 line (>= 40 chars) of its PEM. Programmer keys come
 * from opening keystore.bin by its documented format with the HUK, as an
 * auditor would; device keys from DIR/targets/UID/secret/key.pem.
 */
#ifndef PG_TEST_LEAKSCAN_H
#define PG_TEST_LEAKSCAN_H

#include <stddef.h>

void ls_reset(void);
/* Add the needles of one SEC1 PEM private key. 0 or -1. */
int ls_add_key_pem(const char *pem, size_t len);
/* Open DIR/programmers/NAME/keystore.bin with its huk; add its keys. Returns the
 * number of keys found, or -1. */
int ls_add_keystore(const char *pdir, const char *name);
/* Add every secret/key.pem under root. Returns how many, or -1. */
int ls_add_device_keys(const char *root);
size_t ls_needles(void);
/* Scan every regular file under root except keystore.bin and secret/.
 * Returns the number of (file, needle) hits; *out_scanned files looked at. */
unsigned ls_scan(const char *root, unsigned *out_scanned);

#endif
