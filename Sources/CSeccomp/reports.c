// The SIGSYS handler behind HV's seccomp confinement (Documentation/Confinement.md).
// With SCMP_ACT_TRAP the kernel does not run a refused call: it sends SIGSYS with the call's
// number in si_syscall (seccomp(2), "SECCOMP_RET_TRAP"). The handler runs on the thread that
// made the call, inside whatever that thread was doing, so it may only use async-signal-safe
// calls that the allow-list itself permits: prctl(PR_GET_NAME), write(2), and exit_group(2).
#define _GNU_SOURCE
#include "CSeccomp.h"
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <ucontext.h>
#include <unistd.h>

enum { name_count = 512, name_length = 28 };

static char names[name_count][name_length];
static volatile sig_atomic_t refuse_mode;
static void (*volatile exit_hook)(void);
static _Atomic uint64_t refusals;

/// Appends `text` to `line` at `*used`, never past `capacity` (keeps room for the newline).
static void append(char *line, size_t capacity, size_t *used, const char *text) {
    while (*text && *used + 1 < capacity) line[(*used)++] = *text++;
}

static void append_number(char *line, size_t capacity, size_t *used, long value) {
    char digits[24];
    int count = 0;
    unsigned long magnitude = value < 0 ? (unsigned long)(-value) : (unsigned long)value;
    do { digits[count++] = (char)('0' + magnitude % 10); magnitude /= 10; } while (magnitude && count < 23);
    if (value < 0) append(line, capacity, used, "-");
    while (count > 0 && *used + 1 < capacity) line[(*used)++] = digits[--count];
}

static void on_sigsys(int signal, siginfo_t *info, void *context) {
    (void)signal;
    int saved_errno = errno;
    int number = info->si_syscall;
    char line[400];
    size_t used = 0;
    append(line, sizeof line, &used, "hv: seccomp: ");
    // The thread's name (prctl PR_GET_NAME, which the allow-lists permit): "vcpu0", "hv".
    char thread[17] = {0};
    append(line, sizeof line, &used, "thread '");
    append(line, sizeof line, &used, prctl(PR_GET_NAME, thread) == 0 ? thread : "?");
    append(line, sizeof line, &used, "' made system call ");
    if (number >= 0 && number < name_count && names[number][0]) {
        append(line, sizeof line, &used, names[number]);
        append(line, sizeof line, &used, " (");
        append_number(line, sizeof line, &used, number);
        append(line, sizeof line, &used, ")");
    } else {
        append_number(line, sizeof line, &used, number);
    }
    append(line, sizeof line, &used, ", which HV's allow-list does not permit; ");
    if (refuse_mode) {
        append(line, sizeof line, &used, "refused with EPERM (--seccomp refuse)");
    } else {
        append(line, sizeof line, &used, "stopping the process (exit status 159); --seccomp refuse reports and refuses "
                                         "such calls instead, --seccomp off turns confinement off");
    }
    line[used++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, line, used);
    (void)ignored;
    if (refuse_mode) {
        atomic_fetch_add_explicit(&refusals, 1, memory_order_relaxed);
        // The call did not run; its result is what RAX holds when the handler returns.
        ucontext_t *state = context;
        state->uc_mcontext.gregs[REG_RAX] = -EPERM;
        errno = saved_errno;
        return;
    }
    void (*hook)(void) = exit_hook;
    if (hook) hook();
    _exit(HV_SECCOMP_EXIT_STATUS);
}

int hv_seccomp_prepare_reports(int refuse, void (*before_exit)(void)) {
    static int prepared;
    refuse_mode = refuse;
    exit_hook = before_exit;
    // Once per process: a second filter (a vCPU thread's) may no longer call sigaction.
    if (prepared) return 0;
    for (int number = 0; number < name_count; number++) {
        if (names[number][0]) continue;
        char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, number);
        if (!name) continue;
        strncpy(names[number], name, name_length - 1);
        free(name);
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigsys;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSYS, &action, NULL) != 0) return -errno;
    // A thread that blocks SIGSYS would be killed by the kernel instead of reaching the handler.
    sigset_t sigsys;
    sigemptyset(&sigsys);
    sigaddset(&sigsys, SIGSYS);
    int status = pthread_sigmask(SIG_UNBLOCK, &sigsys, NULL);
    if (status == 0) prepared = 1;
    return -status;
}

uint64_t hv_seccomp_refusal_count(void) {
    return atomic_load_explicit(&refusals, memory_order_relaxed);
}

int hv_seccomp_name_thread(const char *name) {
    return prctl(PR_SET_NAME, name, 0, 0, 0) == 0 ? 0 : -errno;
}
