/* The qcheck program: the command, with no test hooks. */
#include "cli.h"

int main(int argc, char **argv)
{
    return qcheck_cli_main(argc, argv, NULL);
}
