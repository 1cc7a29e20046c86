// The image's exception entry points (Intel SDM Vol. 3A, 6.12 "Exception and Interrupt
// Handling"; AMD APM Vol. 2, 8.9 "Long-Mode Interrupt Control Transfers"): one stub per vector
// 0-31 that pushes a zero where the CPU pushes no error code, then the vector, then every
// general-purpose register, and calls hv_exception(frame) in Swift, which reports the fault
// and stops. hv_exception_stubs is the table of the 32 stubs' addresses for the IDT.

    .section .text
    .code64

    .macro stub vector, has_error
hv_exception_\vector:
    .if \has_error == 0
    push $0
    .endif
    push $\vector
    jmp hv_exception_common
    .endm

    // Vectors with an error code: #DF 8, #TS 10, #NP 11, #SS 12, #GP 13, #PF 14, #AC 17, #CP 21,
    // #VC 29, #SX 30.
    stub 0, 0
    stub 1, 0
    stub 2, 0
    stub 3, 0
    stub 4, 0
    stub 5, 0
    stub 6, 0
    stub 7, 0
    stub 8, 1
    stub 9, 0
    stub 10, 1
    stub 11, 1
    stub 12, 1
    stub 13, 1
    stub 14, 1
    stub 15, 0
    stub 16, 0
    stub 17, 1
    stub 18, 0
    stub 19, 0
    stub 20, 0
    stub 21, 1
    stub 22, 0
    stub 23, 0
    stub 24, 0
    stub 25, 0
    stub 26, 0
    stub 27, 0
    stub 28, 0
    stub 29, 1
    stub 30, 1
    stub 31, 0

hv_exception_common:
    // Frame, from the stack pointer up: RAX ... R15 by register number (16 words; RSP's slot
    // holds the handler's own, the guest's is the one the CPU pushed), the vector, the error
    // code, then what the CPU pushed: RIP, CS, RFLAGS, RSP, SS.
    push %r15
    push %r14
    push %r13
    push %r12
    push %r11
    push %r10
    push %r9
    push %r8
    push %rdi
    push %rsi
    push %rbp
    push %rsp
    push %rbx
    push %rdx
    push %rcx
    push %rax
    mov %rsp, %rdi
    and $-16, %rsp
    call hv_exception
1:  cli
    hlt
    jmp 1b

    // Two interrupt vectors of the host's own (Kernel/HostTimer.swift): the local APIC timer
    // (EOI through the xAPIC page, a count, IRETQ) and the APIC's spurious vector (IRETQ, no EOI:
    // SDM Vol. 3A, 11.9).
    .global hv_host_timer_interrupt, hv_spurious_interrupt
hv_host_timer_interrupt:
    push %rax
    incq hv_host_timer_ticks(%rip)
    movabs $0xFEE000B0, %rax
    movl $0, (%rax)
    pop %rax
    iretq
hv_spurious_interrupt:
    iretq

    .section .bss
    .balign 8
    .global hv_host_timer_ticks
hv_host_timer_ticks:
    .quad 0

    .section .rodata
    .balign 8
    .global hv_exception_stubs
hv_exception_stubs:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad hv_exception_\vector
    .endr

    .section .note.GNU-stack, "", @progbits
