// The raw C baseline (see CKVMBaseline.h for why this is C with logic, under Benchmarks/).
// Documentation/virt/kvm/api.rst: 4.2 KVM_CREATE_VM, 4.7 KVM_CREATE_VCPU, 4.10 KVM_RUN,
// 4.35 KVM_SET_USER_MEMORY_REGION, 7.21 KVM_CAP_X86_USER_SPACE_MSR.
#define _GNU_SOURCE
#include "CKVMBaseline.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct hvb_vm {
    int kvm, vm, vcpu;
    struct kvm_run *run;
    size_t run_size;
    void *memory;
    uint64_t memory_size;
};

// The same addresses HVCore's KVM backend gives KVM for real mode on Intel (KVMVirtualMachine).
static const uint64_t identity_map_address = 0xFFFBC000;
static const unsigned long tss_address = 0xFFFBD000;

static int fail(const char *call, char *error, size_t error_size) {
    int code = errno ? errno : EINVAL;
    if (error && error_size) snprintf(error, error_size, "%s: %s", call, strerror(code));
    return code;
}

static struct kvm_segment segment(hvb_segment s) {
    struct kvm_segment k;
    memset(&k, 0, sizeof k);
    k.base = s.base; k.limit = s.limit; k.selector = s.selector; k.type = s.type;
    k.present = s.present; k.dpl = s.dpl; k.db = s.db; k.s = s.s; k.l = s.l; k.g = s.g;
    k.avl = s.avl; k.unusable = s.unusable;
    return k;
}

// KVM_GET_SUPPORTED_CPUID then KVM_SET_CPUID2, with the APIC id of vCPU 0 as HVCore patches it.
static int set_cpuid(hvb_vm *vm, char *error, size_t error_size) {
    for (int capacity = 128; capacity <= 4096; capacity *= 2) {
        size_t bytes = sizeof(struct kvm_cpuid2) + (size_t)capacity * sizeof(struct kvm_cpuid_entry2);
        struct kvm_cpuid2 *table = calloc(1, bytes);
        if (!table) return fail("calloc(kvm_cpuid2)", error, error_size);
        table->nent = (uint32_t)capacity;
        if (ioctl(vm->kvm, KVM_GET_SUPPORTED_CPUID, table) < 0) {
            int code = errno;
            free(table);
            if (code == E2BIG) continue;
            errno = code;
            return fail("KVM_GET_SUPPORTED_CPUID", error, error_size);
        }
        for (uint32_t i = 0; i < table->nent; i++) {
            struct kvm_cpuid_entry2 *e = &table->entries[i];
            if (e->function == 1) e->ebx &= 0x00FFFFFF;
            if (e->function == 0xB || e->function == 0x1F) e->edx = 0;
        }
        int rc = ioctl(vm->vcpu, KVM_SET_CPUID2, table);
        int code = errno;
        free(table);
        errno = code;
        return rc < 0 ? fail("KVM_SET_CPUID2", error, error_size) : 0;
    }
    errno = E2BIG;
    return fail("KVM_GET_SUPPORTED_CPUID", error, error_size);
}

int hvb_vm_create(const hvb_chunk *chunks, int chunk_count, uint64_t memory_size, const hvb_cpu_state *state,
                  hvb_vm **out, char *error, size_t error_size) {
    hvb_vm *vm = calloc(1, sizeof *vm);
    if (!vm) return fail("calloc", error, error_size);
    vm->kvm = vm->vm = vm->vcpu = -1;
    int code = 0;
#define CHECK(expression, name) do { if ((expression) < 0) { code = fail(name, error, error_size); goto failed; } } while (0)
    CHECK(vm->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), "open(/dev/kvm)");
    CHECK(vm->vm = ioctl(vm->kvm, KVM_CREATE_VM, 0), "KVM_CREATE_VM");
    if (ioctl(vm->kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0) {
        uint64_t identity = identity_map_address;
        CHECK(ioctl(vm->vm, KVM_SET_IDENTITY_MAP_ADDR, &identity), "KVM_SET_IDENTITY_MAP_ADDR");
        CHECK(ioctl(vm->vm, KVM_SET_TSS_ADDR, tss_address), "KVM_SET_TSS_ADDR");
    }
    struct kvm_enable_cap cap;
    memset(&cap, 0, sizeof cap);
    cap.cap = KVM_CAP_X86_USER_SPACE_MSR;
    cap.args[0] = KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_FILTER;
    CHECK(ioctl(vm->vm, KVM_ENABLE_CAP, &cap), "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)");

    vm->memory_size = memory_size;
    vm->memory = mmap(NULL, memory_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (vm->memory == MAP_FAILED) { vm->memory = NULL; code = fail("mmap(guest memory)", error, error_size); goto failed; }
    for (int i = 0; i < chunk_count; i++) {
        if (chunks[i].guest_address > memory_size || chunks[i].size > memory_size - chunks[i].guest_address) {
            errno = ERANGE;
            code = fail("chunk outside guest memory", error, error_size);
            goto failed;
        }
        memcpy((uint8_t *)vm->memory + chunks[i].guest_address, chunks[i].bytes, chunks[i].size);
    }
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = memory_size,
        .userspace_addr = (uint64_t)(uintptr_t)vm->memory,
    };
    CHECK(ioctl(vm->vm, KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");

    CHECK(vm->vcpu = ioctl(vm->vm, KVM_CREATE_VCPU, 0), "KVM_CREATE_VCPU");
    int size;
    CHECK(size = ioctl(vm->kvm, KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
    vm->run_size = (size_t)size;
    vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu, 0);
    if (vm->run == MAP_FAILED) { vm->run = NULL; code = fail("mmap(kvm_run)", error, error_size); goto failed; }
    if ((code = set_cpuid(vm, error, error_size)) != 0) goto failed;

    struct kvm_sregs sregs;
    CHECK(ioctl(vm->vcpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
    sregs.cs = segment(state->cs); sregs.ds = segment(state->ds); sregs.es = segment(state->es);
    sregs.fs = segment(state->fs); sregs.gs = segment(state->gs); sregs.ss = segment(state->ss);
    sregs.tr = segment(state->tr); sregs.ldt = segment(state->ldt);
    sregs.gdt.base = state->gdt_base; sregs.gdt.limit = state->gdt_limit;
    sregs.idt.base = state->idt_base; sregs.idt.limit = state->idt_limit;
    sregs.cr0 = state->cr0; sregs.cr2 = state->cr2; sregs.cr3 = state->cr3; sregs.cr4 = state->cr4;
    sregs.cr8 = state->cr8; sregs.efer = state->efer;
    if (state->apic_base) sregs.apic_base = state->apic_base;
    CHECK(ioctl(vm->vcpu, KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = state->rip; regs.rsp = state->rsp; regs.rflags = state->rflags;
    CHECK(ioctl(vm->vcpu, KVM_SET_REGS, &regs), "KVM_SET_REGS");
#undef CHECK
    *out = vm;
    return 0;
failed:
    hvb_vm_destroy(vm);
    return code;
}

void hvb_vm_destroy(hvb_vm *vm) {
    if (!vm) return;
    if (vm->run) munmap(vm->run, vm->run_size);
    if (vm->vcpu >= 0) close(vm->vcpu);
    if (vm->vm >= 0) close(vm->vm);
    if (vm->memory) munmap(vm->memory, vm->memory_size);
    if (vm->kvm >= 0) close(vm->kvm);
    free(vm);
}

// Whether the exit in `run` is the one `kind` expects (the decode step).
static inline int expected(hvb_exit_kind kind, const struct kvm_run *run) {
    switch (kind) {
    case HVB_IO_OUT: return run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT;
    case HVB_IO_IN: return run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_IN;
    case HVB_MMIO_WRITE: return run->exit_reason == KVM_EXIT_MMIO && run->mmio.is_write;
    case HVB_MMIO_READ: return run->exit_reason == KVM_EXIT_MMIO && !run->mmio.is_write;
    case HVB_HLT: return run->exit_reason == KVM_EXIT_HLT;
    case HVB_MSR_READ: return run->exit_reason == KVM_EXIT_X86_RDMSR;
    case HVB_MSR_WRITE: return run->exit_reason == KVM_EXIT_X86_WRMSR;
    case HVB_RUN_FLOOR: return 0;
    }
    return 0;
}

// The write-back step: what the guest reads, as HVCore's KVMVCPU.complete writes it.
static inline void complete(hvb_exit_kind kind, struct kvm_run *run, uint64_t answer) {
    switch (kind) {
    case HVB_IO_IN: {
        uint8_t *data = (uint8_t *)run + run->io.data_offset;
        for (uint32_t i = 0; i < run->io.count; i++) memcpy(data + i * run->io.size, &answer, run->io.size);
        break;
    }
    case HVB_MMIO_READ:
        memcpy(run->mmio.data, &answer, run->mmio.len < 8 ? run->mmio.len : 8);
        break;
    case HVB_MSR_READ:
        run->msr.data = answer;
        run->msr.error = 0;
        break;
    case HVB_MSR_WRITE:
        run->msr.error = 0;
        break;
    default:
        break;
    }
}

int hvb_run_round(hvb_vm *vm, hvb_exit_kind kind, const hvb_round *round, hvb_round_result *result) {
    struct kvm_run *run = vm->run;
    const int fd = vm->vcpu;
    uint64_t *const samples = round->samples;
    const uint64_t capacity = round->capacity, warm_up = round->warm_up, duration = round->duration_tsc;
    uint64_t previous = 0, exits = 0, recorded = 0, deadline = UINT64_MAX;
    memset(result, 0, sizeof *result);
    __atomic_store_n(&run->immediate_exit, kind == HVB_RUN_FLOOR ? 1 : 0, __ATOMIC_SEQ_CST);
    int status = 0;
    for (;;) {
        if (ioctl(fd, KVM_RUN, 0) < 0) {
            if (kind != HVB_RUN_FLOOR || (errno != EINTR && errno != EAGAIN)) {
                result->error = errno;
                status = -1;
                break;
            }
        } else if (!expected(kind, run)) {
            result->unexpected = run->exit_reason ? run->exit_reason : 0xFFFFFFFF;
            status = -1;
            break;
        }
        // The same bookkeeping, in the same order, as hv-bench's ExitClock handler.
        const uint64_t now = hvb_rdtsc();
        if (exits > warm_up) {
            samples[recorded++] = now - previous;
        } else if (exits == warm_up) {
            deadline = duration > UINT64_MAX - now ? UINT64_MAX : now + duration;
        }
        previous = now;
        exits++;
        if (recorded == capacity || (recorded > 0 && now >= deadline)) break;
        complete(kind, run, round->answer);
    }
    __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
    result->recorded = recorded;
    result->exits = exits;
    result->cpu = sched_getcpu();
    return status;
}

int hvb_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : errno;
}

int hvb_current_cpu(void) { return sched_getcpu(); }

uint64_t hvb_monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}
