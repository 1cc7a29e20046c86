// The bare-metal engines' test guest: 16-bit real mode at guest-physical 0x1000 (CS base 0),
// stack below 0x8000. Each step uses something a hypervisor must do right, and a wrong answer
// ends the guest with debug-exit code 1 instead of its final HLT:
//
//   1. COM1: a line printed the way a driver does (LSR bit 5 polled before each byte): I/O exits.
//   2. MSRs: RDMSR of the TSC (trapped, answered by the engine); WRMSR/RDMSR of FS base (passed
//      through by the MSR bitmap/permission map: no exit, the value kept by the CPU); WRMSR/RDMSR
//      of IA32_TSC_AUX (trapped, kept by the host's `StoredMSRs`); RDMSR of an MSR nobody
//      models: the default policy's #GP, injected, caught by IVT entry 13, which steps over it.
//   3. MMIO at 0x6000, a page the second-level tables leave out: MOV stores and loads, ADD to
//      memory, CMP, AND from a register, TEST with an immediate, ADD into a register; each is
//      decoded and emulated by the engine (reads and writes of the scratch register there, and
//      RFLAGS' status flags the guest branches on).
//      Then REP STOSW, LODSW and MOVSW (RAM to MMIO, MMIO to RAM) against it, REP OUTSB of a
//      line to COM1 and REP INSB from port 0x80: string instructions emulated element by element
//      (MMIO) or in a batch (port I/O).
//   4. A write to 0x5000, a page mapped read-only: a nested page fault / EPT violation the
//      engine reports and drops.
//   5. The local APIC's timer through the x2APIC MSRs (SDM 11.12): one-shot, vector 0x40, then
//      STI; HLT. The engine waits for the deadline, injects vector 0x40, and the handler (IVT
//      entry 0x40) counts it and writes EOI.
//   6. A busy loop of a few million instructions: the VMX preemption timer's slices end in it.
//   7. CPUID leaf 0 (the vendor left in EBX, EDX, ECX for the host), then HLT with interrupts
//      off: the guest stops.

#define AT(label) (0x1000 + ((label) - hv_guest_test_start))

    .section .rodata.guest, "a"
    .global hv_guest_test_start, hv_guest_test_end
    .code16
hv_guest_test_start:
    mov $AT(greeting), %si
    call puts

    // 2. MSRs.
    mov $0x10, %ecx                 // IA32_TIME_STAMP_COUNTER: trapped
    rdmsr
    mov $0xC0000100, %ecx           // IA32_FS_BASE: passed through
    mov $0x89ABCDEF, %eax
    mov $0x1234, %edx
    wrmsr
    xor %eax, %eax
    xor %edx, %edx
    rdmsr
    cmp $0x89ABCDEF, %eax
    jne fail
    cmp $0x1234, %edx
    jne fail
    mov $0xC0000103, %ecx           // IA32_TSC_AUX: trapped, kept by the host
    mov $0x2A, %eax
    xor %edx, %edx
    wrmsr
    xor %eax, %eax
    rdmsr
    cmp $0x2A, %eax
    jne fail
    movw $AT(general_protection), 13 * 4    // IVT entry 13 (#GP): offset, segment 0
    movw $0, 13 * 4 + 2
    mov $0x4B564D99, %ecx           // an MSR nobody models: #GP
    rdmsr
    cmpb $1, AT(faults)
    jne fail
    mov $AT(msrs), %si
    call puts

    // 3. MMIO through the instruction emulator.
    movl $0x11223344, 0x6000        // store an immediate
    movl 0x6000, %ebx               // load
    cmp $0x11223344, %ebx
    jne fail
    addl $0x10, 0x6000              // read, add, write back: 0x11223354
    cmpl $0x11223354, 0x6000        // read, compare: ZF
    jne fail
    mov $0xFF00, %ax
    andw %ax, 0x6000                // 0x3354 & 0xFF00 = 0x3300, written back
    testw $0x0054, 0x6000           // 0x3300 & 0x54 = 0: ZF
    jnz fail
    addw 0x6000, %bx                // BX = 0x3344 + 0x3300
    cmp $0x6644, %bx
    jne fail
    mov $AT(mmio), %si
    call puts

    // 3b. String instructions with MMIO on one side or the other, and string port I/O.
    cld
    mov $0xBEEF, %ax
    mov $0x6000, %di
    mov $3, %cx
    rep stosw                       // three writes to the scratch register: DI + 6, CX 0
    cmp $0x6006, %di
    jne fail
    test %cx, %cx
    jnz fail
    mov $0x6000, %si
    xor %ax, %ax
    lodsw                           // AX from the register
    cmp $0xBEEF, %ax
    jne fail
    mov $AT(word), %si
    mov $0x6000, %di
    movsw                           // RAM to MMIO
    mov $0x6000, %si
    mov $AT(copy), %di
    movsw                           // MMIO to RAM
    cmpw $0x1357, AT(copy)
    jne fail
    mov $AT(rep_outs), %si
    mov $0x3F8, %dx
    mov $(rep_outs_end - rep_outs), %cx
    rep outsb                       // the next line in one batch of string I/O
    mov $0x80, %dx
    mov $AT(inputs), %di
    mov $4, %cx
    rep insb                        // four reads of port 0x80 (0 each) over 0xAA bytes
    cmpl $0, AT(inputs)
    jne fail
    mov $AT(strings), %si
    call puts

    // 4. A write to the read-only page.
    movw $0x1234, 0x5000

    // 5. The APIC timer wakes a HLT.
    movw $AT(timer), 0x40 * 4       // IVT entry 0x40: offset, segment 0
    movw $0, 0x40 * 4 + 2
    mov $0x1B, %ecx                 // IA32_APIC_BASE: xAPIC -> x2APIC (EXTD, bit 10)
    rdmsr
    or $0x400, %eax
    wrmsr
    xor %edx, %edx
    mov $0x80F, %ecx                // spurious-interrupt vector register: APIC on, vector 0xFF
    mov $0x1FF, %eax
    wrmsr
    mov $0x83E, %ecx                // divide configuration: by 1
    mov $0xB, %eax
    wrmsr
    mov $0x832, %ecx                // LVT timer: one-shot, vector 0x40, not masked
    mov $0x40, %eax
    wrmsr
    mov $0x838, %ecx                // initial count: 200,000 ticks (the TSC's, undivided)
    mov $200000, %eax
    wrmsr
    sti
    hlt
    cli
    cmpb $1, AT(ticks)
    jne fail
    mov $AT(woken), %si
    call puts

    // 6. A busy loop the preemption timer cuts into slices.
    mov $3000000, %ecx
1:  dec %ecx
    jnz 1b

    // 7. CPUID leaf 0, then stop.
    xor %eax, %eax
    cpuid
    hlt

fail:
    mov $AT(failed), %si
    call puts
    mov $1, %eax
    mov $0xF4, %dx
    out %eax, %dx
    hlt

// Prints the NUL-terminated string at DS:SI on COM1.
puts:
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
3:  ret

// IVT entry 0x40: count the tick, EOI (x2APIC MSR 0x80B), return.
timer:
    pushal
    incb AT(ticks)
    mov $0x80B, %ecx
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    popal
    iret

// IVT entry 13: count the #GP and return past the 2-byte RDMSR that raised it (a fault pushes
// the faulting instruction's IP: SDM Vol. 3A, 6.5).
general_protection:
    push %bp
    mov %sp, %bp
    addw $2, 2(%bp)
    incb AT(faults)
    pop %bp
    iret

word:
    .word 0x1357
copy:
    .word 0
inputs:
    .long 0xAAAAAAAA
rep_outs:
    .ascii "REP OUTSB wrote this line\n"
rep_outs_end:
ticks:
    .byte 0
faults:
    .byte 0
greeting:
    .asciz "Hello from a real-mode guest under HV's bare-metal engine\n"
msrs:
    .asciz "MSRs: TSC trapped, FS base passed through, TSC_AUX kept by the host, an unknown MSR a #GP\n"
mmio:
    .asciz "MMIO at 0x6000: MOV, ADD, CMP, AND, TEST emulated\n"
strings:
    .asciz "MOVS, STOS, LODS at 0x6000 and REP INSB emulated\n"
woken:
    .asciz "HLT woken by the APIC timer's interrupt\n"
failed:
    .asciz "test guest: a check failed\n"
hv_guest_test_end:
    .code64

    .section .note.GNU-stack, "", @progbits
