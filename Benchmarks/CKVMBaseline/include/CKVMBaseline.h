// CKVMBaseline: the raw C baseline hv-bench measures HVCore against, in the same process and run.
//
// Unlike the shims under Sources/ (headers only, no logic: Documentation/Architecture.md, layer 4), this target
// is by design a small C program: it creates a VM and a vCPU with raw KVM ioctls, loads the guest
// image HV built (passed in as plain structs and bytes, so both sides run the same code), and runs
// a KVM_RUN loop that handles each exit the trivial way HV's benchmark handler does, timing every
// exit. It lives under Benchmarks/, is linked only by hv-bench, and is not part of the SDK.
#ifndef CKVM_BASELINE_H
#define CKVM_BASELINE_H

#include <stddef.h>
#include <stdint.h>

/// A segment register with its descriptor cache (the fields of `struct kvm_segment`).
typedef struct {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type, present, dpl, db, s, l, g, avl, unusable;
} hvb_segment;

/// The initial vCPU state of a guest image: special registers plus RIP, RSP and RFLAGS.
typedef struct {
    hvb_segment cs, ds, es, fs, gs, ss, tr, ldt;
    uint64_t gdt_base, idt_base;
    uint16_t gdt_limit, idt_limit;
    uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    uint64_t rip, rsp, rflags;
} hvb_cpu_state;

/// Bytes to copy into guest memory at a guest-physical address.
typedef struct {
    uint64_t guest_address;
    const uint8_t *bytes;
    uint64_t size;
} hvb_chunk;

/// What one round expects from the guest and how the loop answers it (HV's handler does the same).
typedef enum {
    HVB_IO_OUT = 1,   ///< KVM_EXIT_IO, out: nothing to complete.
    HVB_IO_IN,        ///< KVM_EXIT_IO, in: store the answer into the data area.
    HVB_MMIO_WRITE,   ///< KVM_EXIT_MMIO, write: nothing to complete.
    HVB_MMIO_READ,    ///< KVM_EXIT_MMIO, read: store the answer into mmio.data.
    HVB_HLT,          ///< KVM_EXIT_HLT: resume at the next instruction.
    HVB_MSR_READ,     ///< KVM_EXIT_X86_RDMSR: msr.data = answer, msr.error = 0.
    HVB_MSR_WRITE,    ///< KVM_EXIT_X86_WRMSR: msr.error = 0.
    HVB_RUN_FLOOR,    ///< immediate_exit = 1: every KVM_RUN returns EINTR without entering the guest.
} hvb_exit_kind;

/// One measured round: exit-to-exit intervals in TSC cycles go to `samples`.
typedef struct {
    uint64_t *samples;
    uint64_t capacity;      ///< stop after this many samples
    uint64_t warm_up;       ///< exits at the start of the round that are not recorded
    uint64_t duration_tsc;  ///< after the warm-up, stop at the first exit this many TSC cycles later
    uint64_t answer;        ///< the value reads (IN, MMIO read, RDMSR) get
} hvb_round;

/// How a round went.
typedef struct {
    uint64_t recorded;       ///< samples written
    uint64_t exits;          ///< exits seen, warm-up included
    int error;               ///< errno of a failed KVM_RUN, or 0
    uint32_t unexpected;     ///< the exit_reason of an exit the kind does not expect, or 0
    int cpu;                 ///< the CPU the loop ended on (sched_getcpu)
} hvb_round_result;

typedef struct hvb_vm hvb_vm;

/// Creates a VM with `memory_size` bytes of RAM at guest-physical 0 holding `chunks`, one vCPU in
/// `state`, the supported CPUID table and user-space MSR exits, as HVCore's KVM backend sets one
/// up. Returns 0 or an errno; `error` (may be NULL) gets the failing call's name.
int hvb_vm_create(const hvb_chunk *chunks, int chunk_count, uint64_t memory_size, const hvb_cpu_state *state,
                  hvb_vm **vm, char *error, size_t error_size);

/// Closes the vCPU and the VM and unmaps their memory.
void hvb_vm_destroy(hvb_vm *vm);

/// Runs `vm`'s vCPU until the round ends, timing every exit. Returns 0, or -1 when the guest made
/// an exit `kind` does not expect or KVM_RUN failed (see `result`).
int hvb_run_round(hvb_vm *vm, hvb_exit_kind kind, const hvb_round *round, hvb_round_result *result);

/// Pins the calling thread to `cpu` (sched_setaffinity). Returns 0 or an errno.
int hvb_pin_current_thread(int cpu);

/// The CPU the calling thread runs on now (sched_getcpu), or -1.
int hvb_current_cpu(void);

/// The time-stamp counter, read after LFENCE so it does not run ahead of earlier instructions
/// (SDM Vol. 2B, RDTSC: "If software requires RDTSC to be executed only after all previous
/// instructions have executed ... it can execute LFENCE immediately before RDTSC").
static inline uint64_t hvb_rdtsc(void) {
    uint32_t low, high;
    __asm__ __volatile__("lfence\n\trdtsc" : "=a"(low), "=d"(high) : : "memory");
    return ((uint64_t)high << 32) | low;
}

/// CLOCK_MONOTONIC in nanoseconds.
uint64_t hvb_monotonic_ns(void);

#endif
