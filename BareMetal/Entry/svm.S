// One world switch into an SVM guest and back (AMD APM Vol. 2, 15.5 "VMRUN Instruction" and
// 15.6 "#VMEXIT"). VMRUN saves and restores only the host's RAX, RSP and RIP (through the host
// save area) and the guest's RAX and RSP (through the VMCB); every other general-purpose
// register is the caller's to carry across. So this keeps the guest's in a structure
// (hv_svm_guest_registers: RAX (unused: the VMCB has it), RBX, RCX, RDX, RSI, RDI, RBP, R8-R15)
// and the host's callee-saved ones on the stack.
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
    mov 8(%rsi), %rbx
    mov 16(%rsi), %rcx
    mov 24(%rsi), %rdx
    mov 40(%rsi), %rdi
    mov 48(%rsi), %rbp
    mov 56(%rsi), %r8
    mov 64(%rsi), %r9
    mov 72(%rsi), %r10
    mov 80(%rsi), %r11
    mov 88(%rsi), %r12
    mov 96(%rsi), %r13
    mov 104(%rsi), %r14
    mov 112(%rsi), %r15
    mov 32(%rsi), %rsi
    vmrun
    // #VMEXIT: RAX, RSP and RIP are the host's again; the rest are the guest's.
    mov (%rsp), %rax
    mov %rbx, 8(%rax)
    mov %rcx, 16(%rax)
    mov %rdx, 24(%rax)
    mov %rsi, 32(%rax)
    mov %rdi, 40(%rax)
    mov %rbp, 48(%rax)
    mov %r8, 56(%rax)
    mov %r9, 64(%rax)
    mov %r10, 72(%rax)
    mov %r11, 80(%rax)
    mov %r12, 88(%rax)
    mov %r13, 96(%rax)
    mov %r14, 104(%rax)
    mov %r15, 112(%rax)
    add $8, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .section .note.GNU-stack, "", @progbits
