/*
 * bounded_run: run a command under an address-space and CPU limit and a
 * wall-clock timeout, and report what it used.
 *
 *   bounded_run AS_BYTES SECONDS -- COMMAND [ARG...]
 *
 * The command's stdout and stderr pass through. On exit, one line goes to
 * the file descriptor given by BOUNDED_RUN_FD (default 2):
 *   "bounded_run: status=S signal=N seconds=T maxrss_kib=K"
 * where status is the exit status (-1 if killed), signal the signal that
 * ended it (0 if none; SIGKILL after the timeout). The peak RSS comes from
 * wait4() on the command itself; measuring from a small C launcher keeps
 * the launcher's own memory (a Python interpreter's, say) out of it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 5 || strcmp(argv[3], "--") != 0) {
        fprintf(stderr, "usage: %s AS_BYTES SECONDS -- COMMAND [ARG...]\n", argv[0]);
        return 2;
    }
    rlim_t as = strtoull(argv[1], NULL, 10);
    unsigned seconds = (unsigned)strtoul(argv[2], NULL, 10);
    const char *fd_env = getenv("BOUNDED_RUN_FD");
    int report_fd = fd_env ? atoi(fd_env) : 2;

    double start = now();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        struct rlimit mem = {as, as}, cpu = {seconds, seconds}, core = {0, 0};
        if (setrlimit(RLIMIT_AS, &mem) || setrlimit(RLIMIT_CPU, &cpu) ||
            setrlimit(RLIMIT_CORE, &core)) {
            perror("setrlimit");
            _exit(126);
        }
        execvp(argv[4], argv + 4);
        perror(argv[4]);
        _exit(127);
    }
    /* Wall-clock limit: twice the CPU limit, then SIGKILL. */
    int status = 0;
    struct rusage ru;
    pid_t got;
    for (;;) {
        got = wait4(pid, &status, WNOHANG, &ru);
        if (got == pid || (got < 0 && errno != EINTR))
            break;
        if (now() - start > 2.0 * seconds)
            kill(pid, SIGKILL);
        usleep(1000);
    }
    double took = now() - start;
    if (got != pid) {
        perror("wait4");
        return 2;
    }
    dprintf(report_fd, "bounded_run: status=%d signal=%d seconds=%.4f maxrss_kib=%ld\n",
            WIFEXITED(status) ? WEXITSTATUS(status) : -1,
            WIFSIGNALED(status) ? WTERMSIG(status) : 0, took, ru.ru_maxrss);
    return 0;
}
