// Seccomp confinement: once a VM is set up, the VMM process may make only the system calls
// running it needs (seccomp(2), "SECCOMP_SET_MODE_FILTER"; the kernel's
// Documentation/userspace-api/seccomp_filter.rst). libseccomp compiles the allow-lists below
// into BPF and loads them; Documentation/Confinement.md explains the lists call by call.
#if os(Linux)
import Glibc
import CKVM
import CSeccomp

/// What happens to a system call outside the allow-list.
public enum SeccompMode: String, CaseIterable, Sendable {
    /// Reported on standard error (call and thread), then the process stops with status 159
    /// (128 + SIGSYS): what a compromised device model gets.
    case kill
    /// Reported, and the call fails with EPERM; the VM goes on. For finding what an embedder's
    /// own device needs, not for production.
    case refuse
}

/// One alternative of an allow-list: `syscall`, when every condition on its arguments holds,
/// gets `result`. Several rules for one call are alternatives (any may match).
public struct SeccompRule: Sendable, Hashable {
    /// A condition on argument `argument` (0-5): `(value & mask) == expected`.
    public struct Condition: Sendable, Hashable {
        public var argument: UInt32
        public var mask: UInt64
        public var expected: UInt64

        public init(argument: UInt32, mask: UInt64 = .max, equals expected: UInt64) {
            self.argument = argument
            self.mask = mask
            self.expected = expected
        }
    }

    /// What a matching call gets.
    public enum Result: Sendable, Hashable {
        case allow
        /// The call fails with this errno without running (clone3 gets ENOSYS, so that glibc
        /// falls back to clone, whose flags a filter can read).
        case fail(errno: Int32)
    }

    public var syscall: String
    public var conditions: [Condition]
    public var result: Result

    public init(_ syscall: String, _ conditions: [Condition] = [], result: Result = .allow) {
        self.syscall = syscall
        self.conditions = conditions
        self.result = result
    }
}

/// An error while building or loading a filter.
public struct ConfinementError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// An allow-list: the system calls (and arguments) a thread may make; everything else gets the
/// mode's treatment.
public struct SeccompFilter: Sendable, Hashable {
    /// For messages: "VMM", "vCPU".
    public var name: String
    public var rules: [SeccompRule]

    public init(name: String, rules: [SeccompRule]) {
        self.name = name
        self.rules = rules
    }

    /// Allows `syscalls` with any arguments (an embedder's own device: what it calls at run time).
    public mutating func allow(_ syscalls: [String]) {
        rules += syscalls.map { SeccompRule($0) }
    }

    /// Compiles the filter and loads it: on the calling thread (and the threads it creates
    /// later), or with `allThreads` on every thread of the process (SECCOMP_FILTER_FLAG_TSYNC).
    /// Filters stack: a thread that has one keeps it, and a call must pass both.
    public func install(mode: SeccompMode, allThreads: Bool) throws(ConfinementError) {
        let status = hv_seccomp_prepare_reports(mode == .refuse ? 1 : 0, { TerminalRawMode.restore() })
        guard status == 0 else { throw ConfinementError(description: "SIGSYS handler: \(errnoText(-status))") }
        guard let context = seccomp_init(HV_SCMP_ACT_TRAP) else {
            throw ConfinementError(description: "seccomp_init failed (out of memory)")
        }
        defer { seccomp_release(context) }
        // A call made through another ABI (int 0x80, x32) would be read with the wrong table:
        // the process ends at once instead.
        _ = seccomp_attr_set(context, SCMP_FLTATR_ACT_BADARCH, HV_SCMP_ACT_KILL_PROCESS)
        if allThreads { _ = seccomp_attr_set(context, SCMP_FLTATR_CTL_TSYNC, 1) }
        // A binary tree over the call numbers instead of a linear scan: every KVM_RUN pays it.
        _ = seccomp_attr_set(context, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        for rule in rules {
            let number = seccomp_syscall_resolve_name(rule.syscall)
            guard number != __NR_SCMP_ERROR else {
                throw ConfinementError(description: "\(name) allow-list: \(rule.syscall) is not a system call this host's libseccomp knows")
            }
            let action = switch rule.result {
            case .allow: HV_SCMP_ACT_ALLOW
            case .fail(let code): hv_scmp_act_errno(UInt16(truncatingIfNeeded: code))
            }
            let comparisons = rule.conditions.map { condition in
                scmp_arg_cmp(arg: condition.argument, op: SCMP_CMP_MASKED_EQ, datum_a: condition.mask, datum_b: condition.expected)
            }
            let added = comparisons.withUnsafeBufferPointer { buffer in
                seccomp_rule_add_array(context, action, number, UInt32(buffer.count), buffer.baseAddress)
            }
            guard added == 0 else {
                throw ConfinementError(description: "\(name) allow-list: the rule for \(rule.syscall) was refused: \(errnoText(-added))")
            }
        }
        let loaded = seccomp_load(context)
        guard loaded == 0 else {
            let hint = allThreads && loaded == -ESRCH ? " (a thread of this process already has a filter of its own)" : ""
            throw ConfinementError(description: "loading the \(name) allow-list (seccomp_load) failed: \(errnoText(-loaded))\(hint)")
        }
    }
}

extension SeccompFilter {
    /// What every thread of a running VMM calls: memory for the Swift runtime and guest memory
    /// (the balloon's madvise), threads (created late by Dispatch and some devices), locks and
    /// sleeps, the devices' file and socket I/O (virtio-blk preadv/fdatasync/fallocate, the
    /// TAP's reads and writes, vsock's Unix sockets, libtpms' state files written by
    /// temporary name and rename), polling, and the KVM ioctls. No exec, no fork, no new
    /// network (Unix sockets only), no ptrace, mounts, modules, namespaces or credentials.
    public static let vmm = SeccompFilter(name: "VMM", rules: common + [kvmIoctls] + serverThreads + snapshots + [pinning])

    /// What a vCPU thread calls: the common list, without the calls that only the VMM's own
    /// threads make (accepting and binding sockets, waiting for signals). Device models run on
    /// vCPU threads when the guest touches them, so their runtime calls are here too.
    public static let vcpu = SeccompFilter(name: "vCPU", rules: common + [kvmIoctls])

    /// What `hv tpm serve` calls once it listens: the VMM list without KVM's ioctls (it has no VM).
    public static let tpmServer = SeccompFilter(name: "TPM server", rules: common + serverThreads)

    /// What writing a snapshot calls on the management API's thread (Documentation/Snapshots.md):
    /// its temporary directory made, the memory file sized, the new snapshot swapped in for the
    /// old one (renameat2 RENAME_EXCHANGE), the old one removed.
    private static let snapshots = ["mkdir", "mkdirat", "renameat2", "ftruncate", "rmdir", "getdents64", "readlink", "readlinkat", "getcwd"].map { SeccompRule($0) }

    /// A vCPU thread pins itself (`vcpuAffinity`) before its own list goes on: only the calling
    /// thread (pid 0), and not in the vCPU list.
    private static let pinning = SeccompRule("sched_setaffinity", [.init(argument: 0, equals: 0)])

    /// KVM's ioctls (type 0xAE): the run loop, register access, interrupts.
    private static let kvmIoctls = SeccompRule("ioctl", [.init(argument: 1, mask: 0xFF00, equals: 0xAE00)])

    /// What only a VMM's own threads call: sockets accepted and bound (vsock's host side, a TPM
    /// server, the management API; SwiftNIO asks for an accepted connection's peer), and signals
    /// taken with sigwait(3) by a thread of their own (hv's Ctrl-C).
    private static let serverThreads = ["accept4", "accept", "listen", "bind", "getsockname", "getpeername", "rt_sigtimedwait"]
        .map { SeccompRule($0) }

    private static let common: [SeccompRule] = {
        let anyArguments: [String] = [
            // Memory: the Swift runtime's allocator, thread stacks, the balloon.
            "brk", "mmap", "munmap", "mprotect", "mremap", "madvise",
            // Threads and time.
            "futex", "sched_yield", "nanosleep", "clock_nanosleep", "clock_gettime", "gettimeofday",
            "set_robust_list", "rseq", "sched_getaffinity", "getpid", "gettid", "exit", "exit_group",
            "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
            // Files and descriptors already open, and the few the devices open or rename.
            "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
            "lseek", "close", "fstat", "newfstatat", "statx", "fsync", "fdatasync", "fallocate", "fcntl", "flock",
            "openat", "renameat", "rename", "unlink", "unlinkat", "getrandom", "eventfd2", "pipe2", "dup",
            "poll", "ppoll", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
            // Dispatch's timers (the rate limiters' asyncAfter), created when first needed.
            "timerfd_create", "timerfd_settime", "timerfd_gettime",
            // Unix-domain sockets already set up, or connected to by vsock (below, AF_UNIX only).
            "connect", "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown", "getsockopt", "setsockopt",
        ]
        var rules = anyArguments.map { SeccompRule($0) }
        rules += [
            SeccompRule("socket", [.init(argument: 0, equals: UInt64(AF_UNIX))]),
            // Threads, never processes: clone must carry CLONE_THREAD; clone3 hides its flags in
            // memory a filter cannot read, so it fails with ENOSYS and glibc falls back to clone.
            SeccompRule("clone", [.init(argument: 0, mask: HV_CLONE_THREAD, equals: HV_CLONE_THREAD)]),
            SeccompRule("clone3", result: .fail(errno: ENOSYS)),
            // Signals to this process's own threads only (the vCPU kick).
            SeccompRule("tgkill", [.init(argument: 0, equals: UInt64(getpid()))]),
            // glibc's own signals, SIGCANCEL (32) and SIGSETXID (33), whose handlers it installs
            // at the process's first pthread_create (which may come after confinement).
            SeccompRule("rt_sigaction", [.init(argument: 0, equals: 32)]),
            SeccompRule("rt_sigaction", [.init(argument: 0, equals: 33)]),
            // A thread's own nice value: Dispatch's worker threads set theirs for their QoS.
            SeccompRule("setpriority", [.init(argument: 0, equals: UInt64(PRIO_PROCESS.rawValue))]),
            SeccompRule("getpriority", [.init(argument: 0, equals: UInt64(PRIO_PROCESS.rawValue))]),
            // Thread names, read by the SIGSYS report and set by new threads.
            SeccompRule("prctl", [.init(argument: 0, equals: HV_PR_SET_NAME)]),
            SeccompRule("prctl", [.init(argument: 0, equals: HV_PR_GET_NAME)]),
            // A filter of its own on top (a vCPU thread's): this can only take calls away.
            SeccompRule("prctl", [.init(argument: 0, equals: HV_PR_SET_NO_NEW_PRIVS)]),
            SeccompRule("seccomp"),
        ]
        // ioctl (KVM's are `kvmIoctls`): a terminal's attributes and size (the console's raw
        // mode), non-blocking and close-on-exec, and the TAP's offloads (set when the guest's
        // driver negotiates them). Compared on the low 32 bits, where the request lives.
        let requests: [UInt64] = [TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ, FIONREAD, FIONBIO, FIOCLEX].map { UInt64($0) }
        for request in requests + [UInt64(HV_TUNSETOFFLOAD)] {
            rules.append(SeccompRule("ioctl", [.init(argument: 1, mask: 0xFFFF_FFFF, equals: request)]))
        }
        return rules
    }()
}

/// Seccomp confinement for a VM: the VMM list on every thread when the VM starts, and the vCPU
/// list on each vCPU thread as it begins (`VirtualMachineConfiguration.confinement`).
public struct Confinement: Sendable, Hashable {
    public var mode: SeccompMode
    public var process: SeccompFilter
    public var vcpu: SeccompFilter

    public init(mode: SeccompMode = .kill, process: SeccompFilter = .vmm, vcpu: SeccompFilter = .vcpu) {
        self.mode = mode
        self.process = process
        self.vcpu = vcpu
    }

    /// Allows `syscalls` on every thread (an embedder's device that needs more than HV's).
    public mutating func allow(_ syscalls: [String]) {
        process.allow(syscalls)
        vcpu.allow(syscalls)
    }

    /// How many calls `.refuse` has refused in this process so far.
    public static var refusals: UInt64 { hv_seccomp_refusal_count() }
}
#endif
