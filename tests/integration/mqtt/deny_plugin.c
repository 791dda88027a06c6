/*
 * Test-only Mosquitto plugin: gives the broker of test_mqtt.c a way to refuse
 * things, so that the client's mapping of refusals can be asserted.
 *   - BASIC_AUTH: refuses every client. Mosquitto does not ask plugins for
 *     basic auth on a listener with use_identity_as_username, so only the
 *     test's second listener (without it) ends in CONNACK 0x87.
 *   - ACL_CHECK: denies every topic under "denied/" (subscribe, publish,
 *     delivery), allows the rest.
 * Built without sanitizers: it runs inside the (uninstrumented) broker.
 */
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <string.h>

static mosquitto_plugin_id_t *deny__id;

static int deny__basic_auth(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)event_data;
    (void)userdata;
    return MOSQ_ERR_AUTH;
}

static int deny__acl(int event, void *event_data, void *userdata)
{
    const struct mosquitto_evt_acl_check *ed = event_data;
    (void)event;
    (void)userdata;
    return strncmp(ed->topic, "denied/", 7) == 0 ? MOSQ_ERR_ACL_DENIED : MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
    (void)supported_version_count;
    (void)supported_versions;
    return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                          struct mosquitto_opt *options, int option_count)
{
    (void)userdata;
    (void)options;
    (void)option_count;
    deny__id = identifier;
    int rc =
        mosquitto_callback_register(deny__id, MOSQ_EVT_BASIC_AUTH, deny__basic_auth, NULL, NULL);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_callback_register(deny__id, MOSQ_EVT_ACL_CHECK, deny__acl, NULL, NULL);
    return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
    (void)userdata;
    (void)options;
    (void)option_count;
    mosquitto_callback_unregister(deny__id, MOSQ_EVT_BASIC_AUTH, deny__basic_auth, NULL);
    mosquitto_callback_unregister(deny__id, MOSQ_EVT_ACL_CHECK, deny__acl, NULL);
    return MOSQ_ERR_SUCCESS;
}
