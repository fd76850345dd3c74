/*
 * rktlet-exec-reaper: the compiled twin of the Python reaper in exec.py
 * (_REAPER), same arguments and same one-line report on fd 3:
 *
 *   rktlet-exec-reaper PID_FILE RUNC ARGS...
 *
 * It makes itself a child subreaper, runs `runc exec --detach ...` (which
 * hands the command our stdio and exits), becomes the command's parent when
 * runc exits, and reports "exit N" (the command's status, 128+N for signal
 * N), "runc N" (runc failed) or "lost WHY". Starting a C program costs a
 * millisecond where an interpreter costs ten or more: this is ExecSync's
 * hot path. The package build (setup.py, build_reaper) compiles it into the
 * package as rktlet/oci/exec/rktlet-exec-reaper; built without a C
 * compiler, rktlet uses the Python reaper and says so in its log.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define MAX_REAPED 4096

static void report(const char *line) {
    char buf[512];
    int n = snprintf(buf, sizeof buf, "%s\n", line);
    if (n > 0)
        (void)!write(3, buf, (size_t)n);
    _exit(0);
}

static int code(int status) {
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 255;
}

static pid_t pids[MAX_REAPED];
static int statuses[MAX_REAPED];
static int nreaped;

static int reaped(pid_t pid, int *status) {
    for (int i = 0; i < nreaped; i++)
        if (pids[i] == pid) {
            *status = statuses[i];
            return 1;
        }
    return 0;
}

static int reap_one(void) {
    int status;
    pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0)
        return -1;
    if (nreaped < MAX_REAPED) {
        pids[nreaped] = pid;
        statuses[nreaped++] = status;
    }
    return 0;
}

int main(int argc, char **argv) {
    char line[300];
    int status;
    if (argc < 3)
        report("lost usage: rktlet-exec-reaper PID_FILE RUNC ARGS...");
    fcntl(3, F_SETFD, FD_CLOEXEC);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        report("lost prctl(PR_SET_CHILD_SUBREAPER) failed");
    pid_t runc;
    int err = posix_spawn(&runc, argv[2], NULL, NULL, &argv[2], environ);
    if (err != 0) {
        snprintf(line, sizeof line, "lost cannot run %s: %s", argv[2], strerror(err));
        report(line);
    }
    for (int fd = 0; fd < 3; fd++)
        close(fd);
    /* A quick command may be handed over, and reaped, before runc. */
    while (!reaped(runc, &status))
        if (reap_one() < 0)
            report("lost runc vanished");
    if (code(status) != 0) {
        snprintf(line, sizeof line, "runc %d", code(status));
        report(line);
    }
    FILE *f = fopen(argv[1], "r");
    long target = 0;
    if (f == NULL || fscanf(f, "%ld", &target) != 1 || target <= 0) {
        snprintf(line, sizeof line, "lost no pid from runc: %s", f == NULL ? strerror(errno) : "unreadable");
        report(line);
    }
    fclose(f);
    while (!reaped((pid_t)target, &status))
        if (reap_one() < 0)
            report("lost the command was not handed to the reaper");
    snprintf(line, sizeof line, "exit %d", code(status));
    report(line);
    return 0;
}
