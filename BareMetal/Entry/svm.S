// One world switch into an SVM guest and back (AMD APM Vol. 2, 15.5 "VMRUN Instruction" and
// 15.6 "#VMEXIT"). VMRUN saves and restores only the host's RAX, RSP and RIP (through the host
// save area) and the guest's RAX and RSP (through the VMCB); every other general-purpose
// register is the caller's to carry across. So this keeps the guest's in a structure
// 
// and the host's callee-saved ones on the stack. The structure is indexed by register number
// (SDM Vol. 2, 2.1.5: RAX 0, RCX 1, RDX 2, RBX 3, RSP 4, RBP 5, RSI 6, RDI 7, R8-R15 8-15),
// as instruction operands name them; slots 0 and 4 are unused (the VMCB has RAX and RSP).
//
//   void hv_svm_vmrun(uint64_t vmcb_physical, uint64_t *guest_registers);

    .section .text
    .code64
    .global hv_svm_vmrun
hv_svm_vmrun:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    push %rsi                    // the guest registers' address, for after the exit
    mov %rdi, %rax               // VMRUN takes the VMCB's physical address in RAX
    mov 8(%rsi), %rcx
    mov 16(%rsi), %rdx
    mov 24(%rsi), %rbx
    mov 40(%rsi), %rbp
    mov 56(%rsi), %rdi
    mov 64(%rsi), %r8
    mov 72(%rsi), %r9
    mov 80(%rsi), %r10
    mov 88(%rsi), %r11
    mov 96(%rsi), %r12
    mov 104(%rsi), %r13
    mov 112(%rsi), %r14
    mov 120(%rsi), %r15
    mov 48(%rsi), %rsi
    vmrun
    // #VMEXIT: RAX, RSP and RIP are the host's again; the rest are the guest's.
    mov (%rsp), %rax
    mov %rcx, 8(%rax)
    mov %rdx, 16(%rax)
    mov %rbx, 24(%rax)
    mov %rbp, 40(%rax)
    mov %rsi, 48(%rax)
    mov %rdi, 56(%rax)
    mov %r8, 64(%rax)
    mov %r9, 72(%rax)
    mov %r10, 80(%rax)
    mov %r11, 88(%rax)
    mov %r12, 96(%rax)
    mov %r13, 104(%rax)
    mov %r14, 112(%rax)
    mov %r15, 120(%rax)
    add $8, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .section .note.GNU-stack, "", @progbits
