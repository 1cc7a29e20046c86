// The bare-metal engines' latency guest: 16-bit real mode at guest-physical 0x1000, stack below
// 0x8000. It measures exit round trips itself, as a guest sees them: RDTSC, one instruction that
// exits, RDTSC, the difference stored; 512 times per kind, each kind's samples (32-bit) in its
// own 2-KiB array from 0x9000 up, in this order:
//
//   0 OUT to port 0x80      (io-out, a handler's)       3 RDMSR of IA32_TSC_AUX (msr-read, a handler's)
//   1 IN from port 0x80     (io-in, a handler's)        4 MOV to the scratch register at 0x6000 (mmio-write)
//   2 CPUID leaf 0          (the engine's own)          5 MOV from it (mmio-read)
//
// then HLT: the host reads the arrays and reports median and 99th percentile per kind.

#define SAMPLES 512

    // One kind: SI counts, DI walks the array, EBP holds the first RDTSC (CPUID clobbers
    // EAX-EDX).
    .macro measure array, instruction:vararg
    mov $\array, %di
    mov $SAMPLES, %si
1:  rdtsc
    mov %eax, %ebp
    \instruction
    rdtsc
    sub %ebp, %eax
    mov %eax, (%di)
    add $4, %di
    dec %si
    jnz 1b
    .endm

    .macro do_cpuid
    xor %eax, %eax
    cpuid
    .endm

    .macro do_rdmsr
    mov $0xC0000103, %ecx
    rdmsr
    .endm

    .section .rodata.guest, "a"
    .global hv_guest_latency_start, hv_guest_latency_end
    .code16
hv_guest_latency_start:
    measure 0x9000, out %al, $0x80
    measure 0x9800, in $0x80, %al
    measure 0xA000, do_cpuid
    measure 0xA800, do_rdmsr
    measure 0xB000, movl %eax, 0x6000
    measure 0xB800, movl 0x6000, %eax
    hlt
hv_guest_latency_end:
    .code64

    .section .note.GNU-stack, "", @progbits
