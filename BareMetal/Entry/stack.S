// Runs a function on another stack: what gives each engine's run its own host stack, sized by
// the configuration's host-stack knob, instead of the boot stack it was called on.
//
//   void hv_call_on_stack(void (*function)(void *), void *context, void *stack_top);

    .section .text
    .code64
    .global hv_call_on_stack
hv_call_on_stack:
    push %rbp
    mov %rsp, %rbp               // the caller's stack, to come back to
    mov %rdx, %rsp               // the new stack's top (16-byte aligned: the call pushes 8)
    mov %rdi, %rax
    mov %rsi, %rdi
    call *%rax
    mov %rbp, %rsp
    pop %rbp
    ret

    .section .note.GNU-stack, "", @progbits
