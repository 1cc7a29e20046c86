// The first guest of HV's SVM engine: 16-bit real mode at guest-physical 0x1000 (CS base 0).
// It prints a line on COM1 the way a driver does (waiting for the transmit holding register,
// LSR bit 5, before each byte), reads an MSR, writes to a page the host maps read-only, asks
// CPUID leaf 0 for the vendor, and halts. Every OUT, IN, RDMSR, CPUID and HLT is an intercept
// the host handles, and the write a nested page fault.

    .section .rodata.guest, "a"
    .global hv_guest_hello_start, hv_guest_hello_end
    .code16
hv_guest_hello_start:
    mov $0x1000 + (message - hv_guest_hello_start), %si
1:  mov $0x3FD, %dx                 // LSR
2:  in %dx, %al
    test $0x20, %al
    jz 2b
    mov $0x3F8, %dx                 // THR
    lodsb
    test %al, %al
    jz 3f
    out %al, %dx
    jmp 1b
3:  mov $0x10, %ecx                 // IA32_TIME_STAMP_COUNTER
    rdmsr
    movw $0x1234, 0x5000            // a page the host maps read-only: a nested page fault
    xor %eax, %eax
    cpuid                           // leaf 0: the vendor in EBX, EDX, ECX, left for the host to read at the HLT
    hlt
message:
    .asciz "Hello from a real-mode guest under HV's bare-metal engine\n"
hv_guest_hello_end:
    .code64

    .section .note.GNU-stack, "", @progbits
