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

/// Loads the IDT register with `limit` and `base` (SDM Vol. 2, LIDT).
static inline void hv_lidt(uint64_t base, uint16_t limit) {
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } pointer = { limit, base };
    __asm__ volatile("lidt %0" : : "m"(pointer));
}

/// The 32 exception stubs' addresses (Entry/exceptions.S), for the IDT.
extern const uint64_t hv_exception_stubs[32];
static inline const uint64_t *hv_exception_stub_table(void) { return hv_exception_stubs; }

/// A read the compiler may not drop (the image's fault=pf test reads where nothing is mapped).
static inline uint64_t hv_read_volatile(uint64_t address) { return *(volatile uint64_t *)address; }

/// An invalid opcode, on purpose (the image's fault=ud test).
static inline void hv_ud2(void) { __asm__ volatile("ud2"); }

static inline void hv_halt_forever(void) { for (;;) __asm__ volatile("cli; hlt"); }

#include <stddef.h>

/// COM1 (Support/runtime.c): what print() writes through.
int putchar(int character);

/// The heap's allocator (Support/runtime.c), for page-aligned structures.
int posix_memalign(void **result, size_t alignment, size_t size);

/// The end of the image (the linker script's symbol): the heap starts above it.
extern char hv_image_end[];

/// One VMRUN of the VMCB at `vmcb_physical` (Entry/svm.S); `guest_registers` holds the guest's
/// general-purpose registers by register number (RCX 1, RDX 2, RBX 3, RBP 5, RSI 6, RDI 7,
/// R8-R15 8-15; RAX and RSP are in the VMCB) across the switch.
void hv_svm_vmrun(uint64_t vmcb_physical, uint64_t *guest_registers);

/// The first SVM guest's code (Guest/hello.S).
extern const uint8_t hv_guest_hello_start[];
extern const uint8_t hv_guest_hello_end[];
static inline const uint8_t *hv_guest_hello_start_pointer(void) { return hv_guest_hello_start; }
static inline const uint8_t *hv_guest_hello_end_pointer(void) { return hv_guest_hello_end; }

/// The demo guest of `hv demo`, as `hv demo --write-image` wrote it at build time.
extern const uint8_t hv_guest_demo_start[];
extern const uint8_t hv_guest_demo_end[];
static inline const uint8_t *hv_guest_demo_start_pointer(void) { return hv_guest_demo_start; }
static inline const uint8_t *hv_guest_demo_end_pointer(void) { return hv_guest_demo_end; }

#endif
