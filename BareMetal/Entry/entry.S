// The bare-metal image's entry: a Multiboot 1 header (so QEMU's -kernel and GRUB load it), then
// the 32-bit protected-mode code a Multiboot loader enters (paging off, EAX = the magic, EBX =
// the information structure: Multiboot Specification 0.6.96, 3.2 "Machine state") that takes
// the CPU to 64-bit long mode (Intel SDM Vol. 3A, 10.8.5 "Initializing IA-32e Mode"; AMD APM
// Vol. 2, 14.6 "Enabling and Activating Long Mode") and calls the Embedded Swift kernel,
// hv_baremetal_main(magic, info). Everything after this file is Swift.

    .set MULTIBOOT_MAGIC, 0x1BADB002
    .set MULTIBOOT_FLAGS, 0x00000003              // page-align modules, give memory information
    .set STACK_SIZE, 65536

    .section .multiboot, "a"
    .align 4
    .long MULTIBOOT_MAGIC
    .long MULTIBOOT_FLAGS
    .long -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

    .section .bss
    .align 4096
    .global hv_boot_pml4
hv_boot_pml4:   .skip 4096
hv_boot_pdpt:   .skip 4096
hv_boot_pd:     .skip 4096 * 4                   // four page directories: 4 GiB in 2 MiB pages
    .align 16
hv_boot_stack:  .skip STACK_SIZE
hv_boot_stack_top:

    .section .rodata
    .align 16
hv_boot_gdt:
    .quad 0                                      // null
    .quad 0x00AF9A000000FFFF                     // 0x08: 64-bit code, DPL 0
    .quad 0x00CF92000000FFFF                     // 0x10: data, DPL 0
hv_boot_gdt_end:
hv_boot_gdt_pointer:
    .word hv_boot_gdt_end - hv_boot_gdt - 1
    .quad hv_boot_gdt

    .section .text
    .code32
    .global _start
_start:
    cli
    mov $hv_boot_stack_top, %esp
    mov %eax, %esi                               // the loader's magic: the second argument
    mov %ebx, %edi                               // the information structure: the first

    // Identity map of the first 4 GiB (RAM, then the local APIC and I/O APIC windows) with 2 MiB
    // pages: PML4[0] -> PDPT, PDPT[0..3] -> four PDs, PD entries present | writable | 2 MiB.
    mov $hv_boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, hv_boot_pml4
    mov $0, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $hv_boot_pd, %eax
    or $0x3, %eax
    mov %eax, hv_boot_pdpt(, %ecx, 8)
    inc %ecx
    cmp $4, %ecx
    jne 1b
    mov $0, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, hv_boot_pd(, %ecx, 8)
    mov %ecx, %eax
    shr $11, %eax                                // bits 32 and up of the page's address
    mov %eax, hv_boot_pd + 4(, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b

    // CR4: PAE, OSFXSR and OSXMMEXCPT (Swift's code may use SSE); CR3; EFER.LME; then paging.
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov $hv_boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    and $0xFFFFFFFB, %eax                        // EM off
    or $0x80000003, %eax                         // PG, MP, PE
    mov %eax, %cr0
    lgdt hv_boot_gdt_pointer
    ljmp $0x08, $hv_boot_long_mode

    .code64
hv_boot_long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov $hv_boot_stack_top, %rsp
    mov %edi, %edi                               // zero-extended: the arguments are 32-bit
    mov %esi, %esi
    call hv_baremetal_main
3:  cli
    hlt
    jmp 3b
    .section .note.GNU-stack, "", @progbits
