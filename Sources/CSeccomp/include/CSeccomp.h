// libseccomp (Debian libseccomp-dev) as Swift sees it, and the SIGSYS handler that reports a
// system call the allow-list refused. libseccomp builds and loads the BPF program; this shim
// adds only what Swift cannot express: function-like macros as functions, and a signal handler
// that must not allocate, lock or call into the Swift runtime.
#ifndef CSECCOMP_H
#define CSECCOMP_H

#include <seccomp.h>
#include <stdint.h>
#include <linux/prctl.h>
#include <linux/sched.h>

// SCMP_ACT_ERRNO(x) and SCMP_ACT_TRACE(x) are function-like macros: Swift cannot import them.
static inline uint32_t hv_scmp_act_errno(uint16_t code) { return SCMP_ACT_ERRNO(code); }
static const uint32_t HV_SCMP_ACT_ALLOW = SCMP_ACT_ALLOW;
static const uint32_t HV_SCMP_ACT_TRAP = SCMP_ACT_TRAP;
static const uint32_t HV_SCMP_ACT_KILL_PROCESS = SCMP_ACT_KILL_PROCESS;
// What the allow-lists compare arguments with (headers Swift's Glibc module does not bring in).
static const uint64_t HV_CLONE_THREAD = CLONE_THREAD;
static const uint64_t HV_PR_SET_NAME = PR_SET_NAME;
static const uint64_t HV_PR_GET_NAME = PR_GET_NAME;
static const uint64_t HV_PR_SET_NO_NEW_PRIVS = PR_SET_NO_NEW_PRIVS;

/// The exit status of a process stopped for a refused system call: 128 + SIGSYS, what a shell
/// shows for a process the signal killed.
#define HV_SECCOMP_EXIT_STATUS 159

/// Installs the SIGSYS handler that reports each refused call on standard error with its name
/// and the calling thread's name ("vcpu0"). `refuse` 0: then ends the process (status 159) after
/// `before_exit` (may be NULL; must be async-signal-safe); 1: the call fails with EPERM and
/// the thread goes on. Resolves every system call's name up front, so the handler only writes.
/// Returns 0, or -errno.
int hv_seccomp_prepare_reports(int refuse, void (*before_exit)(void));

/// Names the calling thread (prctl PR_SET_NAME; at most 15 bytes), as the reports show it.
int hv_seccomp_name_thread(const char *name);

/// How many calls the handler has refused (refuse mode), process-wide.
uint64_t hv_seccomp_refusal_count(void);

#endif
