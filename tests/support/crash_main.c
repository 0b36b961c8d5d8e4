/*
 * qcheck_crashtest: the qcheck command with a repair that crashes on
 * request, for the crash and salvage tests. QCHECK_TEST_CRASH_AFTER_WRITES=N
 * lets N writes reach the image and fails the rest;
 * QCHECK_TEST_CRASH_DROP_UNFLUSHED=1 also takes back the unflushed ones.
 * Without them it is the plain command.
 */
#include <stdlib.h>

#include "../../checker/cli/cli.h"
#include "crash_io.h"

static int wrap_for_crash(qc_io *wrapper, qc_io *image)
{
    const char *after = getenv("QCHECK_TEST_CRASH_AFTER_WRITES");
    if (!after || !*after)
        return -1;
    const char *drop = getenv("QCHECK_TEST_CRASH_DROP_UNFLUSHED");
    return qc_io_open_crash(wrapper, image, strtoull(after, NULL, 10), drop && *drop == '1');
}

int main(int argc, char **argv)
{
    static const qcheck_cli_hooks hooks = {.wrap_repair_io = wrap_for_crash};
    return qcheck_cli_main(argc, argv, &hooks);
}
