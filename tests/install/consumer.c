/*
 * A program built against the installed library only (pkg-config qcheck):
 * checks FILE and prints the version it was compiled with and the exit
 * status qemu-img check would give. Exits 0 when the check ran.
 */
#include <qcheck.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: consumer FILE\n");
        return 1;
    }
    qc_io io;
    int err = qc_io_open_file(&io, argv[1]);
    if (err < 0) {
        fprintf(stderr, "consumer: cannot open %s (errno %d)\n", argv[1], -err);
        return 1;
    }
    qc_options opts = QC_OPTIONS_INIT;
    qc_result *result = qc_result_new();
    err = result ? qc_check(&io, &opts, result) : -12;
    qc_io_close(&io);
    if (err < 0) {
        fprintf(stderr, "consumer: qc_check failed (errno %d)\n", -err);
        qc_result_free(result);
        return 1;
    }
    printf("qcheck %s: exit status %d, %llu leaked clusters\n", QC_VERSION_STRING,
           qc_exit_status(result),
           (unsigned long long)qc_result_count(result, QC_COUNT_LEAKS));
    qc_result_free(result);
    return 0;
}
