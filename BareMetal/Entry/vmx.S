// One world switch into a VMX guest and back (Intel SDM Vol. 3C, 27 "VM Entries" and 28.5
// "Loading Host State"). A VM exit loads the host's RSP and RIP from the VMCS (HOST_RSP,
// HOST_RIP) and nothing else of the general-purpose registers: this stub keeps the guest's in
// a structure indexed by register number (RAX 0, RCX 1, ..., R15 15; slot 4 unused: the guest's
// RSP is in the VMCS) and the host's callee-saved ones on the stack, and writes HOST_RSP with
// the stack pointer of this very call before each entry.
//
//   int hv_vmx_enter(uint64_t *guest_registers, int launched);
//   0: a VM exit came back; 1: VMLAUNCH/VMRESUME failed with VMfailInvalid; 2: VMfailValid.

    .set HOST_RSP, 0x6C14

    .section .text
    .code64
    .global hv_vmx_enter, hv_vmx_exit
hv_vmx_enter:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    push %rdi                    // the guest registers' address: at HOST_RSP after an exit
    mov $HOST_RSP, %eax
    vmwrite %rsp, %rax
    mov %esi, %eax
    test %eax, %eax              // launched? (flags kept across the loads below: MOV leaves them)
    mov (%rdi), %rax
    mov 8(%rdi), %rcx
    mov 16(%rdi), %rdx
    mov 24(%rdi), %rbx
    mov 40(%rdi), %rbp
    mov 48(%rdi), %rsi
    mov 64(%rdi), %r8
    mov 72(%rdi), %r9
    mov 80(%rdi), %r10
    mov 88(%rdi), %r11
    mov 96(%rdi), %r12
    mov 104(%rdi), %r13
    mov 112(%rdi), %r14
    mov 120(%rdi), %r15
    mov 56(%rdi), %rdi
    jnz 1f
    vmlaunch
    jmp 2f
1:  vmresume
2:  // Here only when the instruction failed: CF = VMfailInvalid, ZF = VMfailValid.
    mov $1, %eax
    mov $2, %ecx
    cmovz %ecx, %eax
    add $8, %rsp
    jmp 3f

hv_vmx_exit:
    // A VM exit: RSP is HOST_RSP (the saved address on top), RIP this label; the rest are the guest's.
    xchg %rax, (%rsp)            // RAX = the structure, the guest's RAX on the stack
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
    pop %rcx
    mov %rcx, (%rax)
    xor %eax, %eax
3:  pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .section .note.GNU-stack, "", @progbits
