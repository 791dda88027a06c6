/*
 * The unit tests' rig, unchanged, except that rig_produce() is the one of
 * m33_host.c (socket workers on the emulated M33's scheduler); the rig's own
 * thread-based version is kept under another name.
 */
#define rig_produce rig__produce_threads
#include "../../unit/programmer/rig.c"
