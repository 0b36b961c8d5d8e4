/*
 * The qcheck command as a function, so that a test build can run the very
 * same command with its own hooks (tests/support/crash_main.c).
 */
#ifndef QCHECK_CLI_H
#define QCHECK_CLI_H

#include "qcheck.h"

typedef struct qcheck_cli_hooks {
    /* Put an io of the test's between a repair and the image: fill
     * *wrapper around image and return 0, or return non-zero to leave the
     * image as it is. The command closes the wrapper after the repair. */
    int (*wrap_repair_io)(qc_io *wrapper, qc_io *image);
} qcheck_cli_hooks;

/* Run the command; returns its exit status. hooks may be NULL. */
int qcheck_cli_main(int argc, char **argv, const qcheck_cli_hooks *hooks);

#endif
