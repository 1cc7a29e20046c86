// One world switch into a VMX guest and back (Intel SDM Vol. 3C, 27 "VM Entries" and 28.5
// "Loading Host State"). A VM exit loads the host's RSP and RIP from the VMCS (HOST_RSP,
// HOST_RIP) and nothing else of the general-purpose registers: this stub keeps the guest's in
// a structure indexed by register number (RAX 0, RCX 1, ..., R15 15; slot 4 unused: the guest's
// RSP is in the VMCS) and the host's callee-saved ones on the stack, and writes HOST_RSP with
// the stack pointer of this very call before each entry.
//
//   int hv_vmx_enter(uint64_t *guest_registers, int launched);
//   0: a VM exit came back; 1: VMLAUNCH/VMRESUME failed with VMfailInvalid; 2: VMfailValid.

#include "guest-registers.inc"

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
    load_guest_registers %rdi
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
    store_guest_registers %rax
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
