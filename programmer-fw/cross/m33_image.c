/*
 * The core as it sits in a NuLink3 (Cortex-M33) image, for the cross build
 * check (programmer-fw/cross/check.sh): every entry point is referenced so
 * nothing is garbage-collected, and the HAL is `nulink3_hal`, a link-time
 * symbol the board port provides (left undefined here). struct pg_core is
 * static, as on the MCU, so the image's .bss shows the core's RAM.
 */
#include "pg_core.h"

extern const struct pg_hal nulink3_hal;

static struct pg_core core;

int main(void);

int main(void)
{
    struct pg_config cfg = {.programmer_id = "nulink3", .n_sockets = PG_MAX_SOCKETS};
    struct pg_result r;
    int action = 0;
    if (pg_core_init(&core, &nulink3_hal, &cfg) != NU_OK)
        return 1;
    pg_core_subscribe(&core);
    if (!pg_core_enrolled(&core))
        pg_core_enroll(&core, NULL, "token", NULL, NULL, 0);
    pg_core_poll(&core, &action);
    pg_core_firmware_fetch(&core);
    if (pg_core_production_begin(&core) == NU_OK) {
        for (unsigned s = 0; s < PG_MAX_SOCKETS; s++)
            while (pg_socket_run(&core, s, &r) == NU_OK) {
            }
        pg_core_production_end(&core);
    }
    pg_core_status_publish(&core, 0);
    pg_core_deinit(&core);
    return 0;
}
