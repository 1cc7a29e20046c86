// What Embedded Swift cannot say itself on a bare CPU: port I/O, CPUID, MSRs, the TSC, HLT
// (Intel SDM Vol. 2 for each instruction). Static inline, so Swift's Clang importer compiles
// them into the kernel's own object.
#ifndef HV_BAREMETAL_SUPPORT_H
#define HV_BAREMETAL_SUPPORT_H
#include <stdint.h>

static inline void hv_outb(uint16_t port, uint8_t value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }
static inline void hv_outl(uint16_t port, uint32_t value) { __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port)); }
static inline uint8_t hv_inb(uint16_t port) {
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

/// CPUID leaf `leaf`, subleaf `subleaf`: EAX, EBX, ECX, EDX into `out[0..3]`.
static inline void hv_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    __asm__ volatile("cpuid" : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3]) : "a"(leaf), "c"(subleaf));
}

static inline uint64_t hv_rdmsr(uint32_t msr) {
    uint32_t low, high;
    __asm__ volatile("rdmsr" : "=a"(low), "=d"(high) : "c"(msr));
    return (uint64_t)high << 32 | low;
}

static inline void hv_wrmsr(uint32_t msr, uint64_t value) {
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)));
}

static inline uint64_t hv_rdtsc(void) {
    uint32_t low, high;
    __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
    return (uint64_t)high << 32 | low;
}

static inline uint64_t hv_read_cr0(void) { uint64_t v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline uint64_t hv_read_cr3(void) { uint64_t v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline uint64_t hv_read_cr4(void) { uint64_t v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }

static inline uint64_t hv_read_cr2(void) { uint64_t v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }

static inline void hv_write_cr0(uint64_t v) { __asm__ volatile("mov %0, %%cr0" : : "r"(v) : "memory"); }
static inline void hv_write_cr4(uint64_t v) { __asm__ volatile("mov %0, %%cr4" : : "r"(v) : "memory"); }

/// The GDT and IDT registers' bases (SDM Vol. 2, SGDT and SIDT).
static inline uint64_t hv_gdt_base(void) {
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } pointer;
    __asm__ volatile("sgdt %0" : "=m"(pointer));
    return pointer.base;
}
static inline uint64_t hv_idt_base(void) {
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } pointer;
    __asm__ volatile("sidt %0" : "=m"(pointer));
    return pointer.base;
}

// VMX instructions (SDM Vol. 3C, 31.2 "Conventions"; Vol. 2, each instruction): each returns 0
// for VMsucceed, 1 for VMfailInvalid (CF, no current VMCS) and 2 for VMfailValid (ZF: the
// VM-instruction error field says why).
#define HV_VMX_STATUS(instruction, ...)                                                          \
    uint8_t invalid, valid;                                                                     \
    __asm__ volatile(instruction "; setc %0; setz %1" : "=qm"(invalid), "=qm"(valid) : __VA_ARGS__ : "cc", "memory"); \
    return invalid ? 1 : valid ? 2 : 0;
static inline int hv_vmxon(uint64_t physical) { HV_VMX_STATUS("vmxon %2", "m"(physical)) }
static inline int hv_vmclear(uint64_t physical) { HV_VMX_STATUS("vmclear %2", "m"(physical)) }
static inline int hv_vmptrld(uint64_t physical) { HV_VMX_STATUS("vmptrld %2", "m"(physical)) }
static inline int hv_vmwrite(uint64_t field, uint64_t value) { HV_VMX_STATUS("vmwrite %3, %2", "r"(field), "rm"(value)) }
/// INVEPT and INVVPID of `type` with the 128-bit descriptor (low, high) (SDM Vol. 2, INVEPT, INVVPID).
static inline int hv_invept(uint64_t type, uint64_t low, uint64_t high) {
    uint64_t descriptor[2] = { low, high };
    HV_VMX_STATUS("invept %2, %3", "m"(descriptor), "r"(type))
}
static inline int hv_invvpid(uint64_t type, uint64_t low, uint64_t high) {
    uint64_t descriptor[2] = { low, high };
    HV_VMX_STATUS("invvpid %2, %3", "m"(descriptor), "r"(type))
}
/// VMREAD of `field`; the field's value, or 0 when VMREAD fails (`*status` says how).
static inline uint64_t hv_vmread(uint64_t field, int *status) {
    uint64_t value = 0;
    uint8_t invalid, valid;
    __asm__ volatile("vmread %3, %0; setc %1; setz %2" : "=rm"(value), "=qm"(invalid), "=qm"(valid) : "r"(field) : "cc", "memory");
    *status = invalid ? 1 : valid ? 2 : 0;
    return value;
}
static inline void hv_vmxoff(void) { __asm__ volatile("vmxoff" : : : "cc", "memory"); }

/// Loads the IDT register with `limit` and `base` (SDM Vol. 2, LIDT).
static inline void hv_lidt(uint64_t base, uint16_t limit) {
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } pointer = { limit, base };
    __asm__ volatile("lidt %0" : : "m"(pointer));
}

/// The 32 exception stubs' addresses (Entry/exceptions.S), for the IDT.
extern const uint64_t hv_exception_stubs[32];
static inline const uint64_t *hv_exception_stub_table(void) { return hv_exception_stubs; }

/// The host timer's and the spurious vector's entry points, and the timer's count (Entry/exceptions.S).
extern const uint8_t hv_host_timer_interrupt[];
extern const uint8_t hv_spurious_interrupt[];
extern volatile uint64_t hv_host_timer_ticks;
static inline uint64_t hv_host_timer_interrupt_address(void) { return (uint64_t)hv_host_timer_interrupt; }
static inline uint64_t hv_spurious_interrupt_address(void) { return (uint64_t)hv_spurious_interrupt; }
static inline uint64_t hv_host_timer_count(void) { return hv_host_timer_ticks; }
/// Opens the host to an interrupt pending at the local APIC for one instruction (STI's shadow
/// covers the NOP), then closes it again.
static inline void hv_take_pending_interrupt(void) { __asm__ volatile("sti; nop; cli" : : : "memory"); }
/// A 32-bit device register at `address` (the xAPIC page: SDM Vol. 3A, 11.4.1).
static inline uint32_t hv_mmio_read32(uint64_t address) { return *(volatile uint32_t *)address; }
static inline void hv_mmio_write32(uint64_t address, uint32_t value) { *(volatile uint32_t *)address = value; }

/// A read the compiler may not drop (the image's fault=pf test reads where nothing is mapped).
static inline uint64_t hv_read_volatile(uint64_t address) { return *(volatile uint64_t *)address; }

/// An invalid opcode, on purpose (the image's fault=ud test).
static inline void hv_ud2(void) { __asm__ volatile("ud2"); }

/// A spin-wait hint (SDM Vol. 2, PAUSE).
static inline void hv_pause(void) { __asm__ volatile("pause"); }

static inline void hv_halt_forever(void) { for (;;) __asm__ volatile("cli; hlt"); }

#include <stddef.h>

/// COM1 (Support/runtime.c): what print() writes through.
int putchar(int character);

/// The heap's allocator (Support/runtime.c), for page-aligned structures.
int posix_memalign(void **result, size_t alignment, size_t size);

/// The end of the image (the linker script's symbol): the heap starts above it.
extern char hv_image_end[];

/// One VMRUN of the VMCB at `vmcb_physical` (Entry/svm.S), with VMLOAD/VMSAVE of the guest's
/// segment state around it and the host's kept at `host_vmcb_physical`; `guest_registers` holds
/// the guest's general-purpose registers by register number (RCX 1, RDX 2, RBX 3, RBP 5, RSI 6,
/// RDI 7, R8-R15 8-15; RAX and RSP are in the VMCB) across the switch.
void hv_svm_vmrun(uint64_t vmcb_physical, uint64_t *guest_registers, uint64_t host_vmcb_physical);

/// The task-state segment (Entry/entry.S), whose base VMX's host state names.
extern uint8_t hv_boot_tss[];
static inline uint64_t hv_task_base(void) { return (uint64_t)hv_boot_tss; }

/// One VMLAUNCH (`launched` 0) or VMRESUME of the current VMCS (Entry/vmx.S): the guest's
/// general-purpose registers by register number (RSP, slot 4, is in the VMCS) across the
/// switch. Returns 0 after a VM exit, 1 or 2 when the instruction failed (VMfailInvalid,
/// VMfailValid). The stub writes HOST_RSP itself; HOST_RIP must be hv_vmx_exit_address().
int hv_vmx_enter(uint64_t *guest_registers, int launched);
extern const uint8_t hv_vmx_exit[];
static inline uint64_t hv_vmx_exit_address(void) { return (uint64_t)hv_vmx_exit; }

/// The engines' real-mode test guest (Guest/test-guest.S).
extern const uint8_t hv_guest_test_start[];
extern const uint8_t hv_guest_test_end[];
static inline const uint8_t *hv_guest_test_start_pointer(void) { return hv_guest_test_start; }
static inline const uint8_t *hv_guest_test_end_pointer(void) { return hv_guest_test_end; }

/// Calls `function(context)` with RSP at `stack_top` (Entry/stack.S), and returns to this stack.
void hv_call_on_stack(void (*function)(void *), void *context, void *stack_top);

/// The engines' latency guest (Guest/latency-guest.S).
extern const uint8_t hv_guest_latency_start[];
extern const uint8_t hv_guest_latency_end[];
static inline const uint8_t *hv_guest_latency_start_pointer(void) { return hv_guest_latency_start; }
static inline const uint8_t *hv_guest_latency_end_pointer(void) { return hv_guest_latency_end; }

/// The demo guest of `hv demo`, as `hv demo --write-image` wrote it at build time.
extern const uint8_t hv_guest_demo_start[];
extern const uint8_t hv_guest_demo_end[];
static inline const uint8_t *hv_guest_demo_start_pointer(void) { return hv_guest_demo_start; }
static inline const uint8_t *hv_guest_demo_end_pointer(void) { return hv_guest_demo_end; }

#endif
