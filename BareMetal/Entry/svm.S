// One world switch into an SVM guest and back (AMD APM Vol. 2, 15.5 "VMRUN Instruction" and
// 15.6 "#VMEXIT"). VMRUN saves and restores only the host's RAX, RSP and RIP (through the host
// save area) and the guest's RAX and RSP (through the VMCB); every other general-purpose
// register is the caller's to carry across. So this keeps the guest's in a structure
// 
// and the host's callee-saved ones on the stack. The structure is indexed by register number
// (SDM Vol. 2, 2.1.5: RAX 0, RCX 1, RDX 2, RBX 3, RSP 4, RBP 5, RSI 6, RDI 7, R8-R15 8-15),
// as instruction operands name them; slots 0 and 4 are unused (the VMCB has RAX and RSP).
//
// VMRUN loads and #VMEXIT saves only part of the guest's state; FS, GS, TR, LDTR with their
// hidden parts, KernelGsBase and the SYSCALL/SYSENTER MSRs travel with VMLOAD and VMSAVE
// (15.5.2): the host's are saved in its own area first and loaded back after the exit, the
// guest's loaded from and saved to its VMCB around VMRUN, as KVM does. And as KVM does, the
// host clears GIF (no interrupt reaches it from here) and sets IF before VMRUN: with the VMCB's
// V_INTR_MASKING the host's IF then lets physical interrupts end the guest's run with an INTR
// intercept (15.21.1), and after the exit they wait (IF clear) until the host takes them.
//
//   void hv_svm_vmrun(uint64_t vmcb_physical, uint64_t *guest_registers, uint64_t host_vmcb_physical);

#include "guest-registers.inc"

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
    push %rdx                    // the host's VMSAVE area, for after the exit
    push %rsi                    // the guest registers' address, for after the exit
    clgi
    mov %rdx, %rax
    vmsave %rax                  // the host's FS, GS, TR, LDTR, KernelGsBase, ...
    mov %rdi, %rax               // VMRUN, VMLOAD and VMSAVE take the VMCB's physical address in RAX
    vmload %rax                  // the guest's
    load_guest_registers %rsi
    sti                          // GIF still blocks interrupts; VMRUN sets GIF
    vmrun %rax
    // #VMEXIT: RAX (the VMCB's address), RSP and RIP are the host's again; the rest are the guest's.
    vmsave %rax
    cli
    mov (%rsp), %rax
    store_guest_registers %rax
    add $8, %rsp
    pop %rax
    vmload %rax                  // the host's segment state back
    stgi
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

    .section .note.GNU-stack, "", @progbits
