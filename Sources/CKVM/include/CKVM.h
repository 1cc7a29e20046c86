// The Linux KVM API as Swift sees it: <linux/kvm.h> plus the few things Swift cannot import
// on its own. Headers only: every function here is a one-line static inline forwarder.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <signal.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/syscall.h>
// For the virtio devices: getrandom(2) (virtio-rng) and fallocate(2)'s modes (virtio-blk
// discard and write-zeroes), which Swift's Glibc module does not bring in.
#include <sys/random.h>
#include <linux/falloc.h>
// For virtio-net: TAP interfaces (<linux/if_tun.h>), the receive thread's eventfd and poll.
#include <linux/if_tun.h>
#include <sys/eventfd.h>
#include <poll.h>

// _IO/_IOR/_IOW macros do not import into Swift: expose each request as a constant.
static const unsigned long HV_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long HV_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long HV_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long HV_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long HV_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long HV_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
static const unsigned long HV_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long HV_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long HV_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long HV_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long HV_KVM_ENABLE_CAP = KVM_ENABLE_CAP;
static const unsigned long HV_KVM_RUN = KVM_RUN;
static const unsigned long HV_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long HV_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long HV_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long HV_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long HV_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long HV_KVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long HV_KVM_GET_FPU = KVM_GET_FPU;
static const unsigned long HV_KVM_SET_FPU = KVM_SET_FPU;
static const unsigned long HV_KVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long HV_KVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long HV_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long HV_KVM_SET_GUEST_DEBUG = KVM_SET_GUEST_DEBUG;
static const unsigned long HV_KVM_X86_SET_MSR_FILTER = KVM_X86_SET_MSR_FILTER;
static const unsigned long HV_KVM_TRANSLATE = KVM_TRANSLATE;
static const unsigned long HV_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long HV_KVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long HV_KVM_SIGNAL_MSI = KVM_SIGNAL_MSI;
static const unsigned long HV_KVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long HV_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long HV_KVM_SET_GSI_ROUTING = KVM_SET_GSI_ROUTING;
static const unsigned long HV_KVM_IRQFD = KVM_IRQFD;
// Saving and restoring a vCPU and the in-kernel irqchip (reset, snapshots).
static const unsigned long HV_KVM_SET_LAPIC = KVM_SET_LAPIC;
// Snapshots and migration: the VM's clock and the dirty log of written pages.
static const unsigned long HV_KVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long HV_KVM_SET_CLOCK = KVM_SET_CLOCK;
static const unsigned long HV_KVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
static const unsigned long HV_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long HV_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long HV_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long HV_KVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long HV_KVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long HV_KVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long HV_KVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long HV_KVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long HV_KVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long HV_KVM_GET_NESTED_STATE = KVM_GET_NESTED_STATE;
static const unsigned long HV_KVM_SET_NESTED_STATE = KVM_SET_NESTED_STATE;
static const unsigned long HV_KVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long HV_KVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long HV_KVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long HV_KVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long HV_KVM_GET_SUPPORTED_HV_CPUID = KVM_GET_SUPPORTED_HV_CPUID;
static const unsigned long HV_KVM_HYPERV_EVENTFD = KVM_HYPERV_EVENTFD;
static const unsigned long HV_TUNSETIFF = TUNSETIFF;
static const unsigned long HV_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
static const unsigned long HV_TUNSETOFFLOAD = TUNSETOFFLOAD;

// ioctl(2) is variadic, which Swift cannot call: one forwarder per argument kind.
static inline int hv_ioctl_ptr(int fd, unsigned long request, void *argument) {
    return ioctl(fd, request, argument);
}
static inline int hv_ioctl_value(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}

// open(2) is variadic too.
static inline int hv_open(const char *path, int flags) { return open(path, flags); }

// accept4(2) and pipe2(2), which set close-on-exec (and non-blocking) atomically with the call;
// glibc declares them only under _GNU_SOURCE, so they go through syscall(2).
static inline int hv_accept4(int fd, int flags) { return (int)syscall(SYS_accept4, fd, (void *)0, (void *)0, flags); }
static inline int hv_pipe2(int fds[2], int flags) { return (int)syscall(SYS_pipe2, fds, flags); }
// renameat2(RENAME_EXCHANGE): swaps two paths atomically (a new snapshot for the old one).
static inline int hv_rename_exchange(const char *from, const char *to) { return (int)syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, 2 /* RENAME_EXCHANGE */); }
// sched_setaffinity(2) of the calling thread (pid 0), also _GNU_SOURCE only: `mask` is a CPU bit array.
static inline int hv_pin_calling_thread(const void *mask, unsigned long size) { return (int)syscall(SYS_sched_setaffinity, 0, size, mask); }

// SIGRTMIN is a function call in glibc, not a constant. The vCPU kick signal (as Firecracker's).
static inline int hv_kick_signal(void) { return SIGRTMIN + 1; }

// The time-stamp counter, for per-exit statistics (cheaper than clock_gettime after a VM exit).
static inline unsigned long long hv_rdtsc(void) { return __builtin_ia32_rdtsc(); }

// kvm_run.immediate_exit is read by the kernel with READ_ONCE; write it as an atomic byte.
static inline void hv_store_immediate_exit(struct kvm_run *run, unsigned char value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}

// Hyper-V SynIC message slots and event flags live in guest RAM, which the guest's vCPUs use
// concurrently with the host: the TLFS handshake (message type, msg_pending, EOM) needs atomic
// accesses with full ordering, as the hypervisor side of the protocol is written.
static inline unsigned int hv_atomic_load32(const void *address) {
    return __atomic_load_n((const unsigned int *)address, __ATOMIC_SEQ_CST);
}
static inline void hv_atomic_store32(void *address, unsigned int value) {
    __atomic_store_n((unsigned int *)address, value, __ATOMIC_SEQ_CST);
}
static inline unsigned char hv_atomic_or8(void *address, unsigned char bits) {
    return __atomic_fetch_or((unsigned char *)address, bits, __ATOMIC_SEQ_CST);
}
static inline unsigned long long hv_atomic_or64(void *address, unsigned long long bits) {
    return __atomic_fetch_or((unsigned long long *)address, bits, __ATOMIC_SEQ_CST);
}

// fallocate(2) is declared only under _GNU_SOURCE; glibc always has it.
int fallocate(int fd, int mode, off_t offset, off_t length);
static inline int hv_fallocate(int fd, int mode, off_t offset, off_t length) { return fallocate(fd, mode, offset, length); }

// O_DIRECT is defined only under _GNU_SOURCE (and <asm/fcntl.h> clashes with glibc's): the
// kernel's values, include/uapi/asm-generic/fcntl.h and arch/arm64/include/uapi/asm/fcntl.h.
#if defined(__aarch64__)
static const int HV_O_DIRECT = 0200000;
#else
static const int HV_O_DIRECT = 040000;
#endif

#endif
