// The bare-metal image's entry: a Multiboot 1 header (QEMU's -kernel, GRUB's multiboot) and a
// Multiboot 2 header (GRUB's multiboot2), then the 32-bit protected-mode code either loader
// enters (paging off, EAX = the magic, EBX = the information structure: Multiboot Specification
// 0.6.96, 3.2 "Machine state"; Multiboot2 Specification 2.0, 3.3 "I386 machine state") that takes
// the CPU to 64-bit long mode (Intel SDM Vol. 3A, 10.8.5 "Initializing IA-32e Mode"; AMD APM
// Vol. 2, 14.6 "Enabling and Activating Long Mode") and calls the Embedded Swift kernel,
// hv_baremetal_main(magic, info). Everything after this file is Swift.

    .set MULTIBOOT_MAGIC, 0x1BADB002
    .set MULTIBOOT_FLAGS, 0x00000003              // page-align modules, give memory information
    .set STACK_SIZE, 65536

    .set MULTIBOOT2_MAGIC, 0xE85250D6
    .set MULTIBOOT2_I386, 0

    .section .multiboot, "a"
    .align 4
    .long MULTIBOOT_MAGIC
    .long MULTIBOOT_FLAGS
    .long -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)
    // Multiboot 2 (Multiboot2 Specification 2.0, 3.1.1): 8-byte aligned in the first 32 KiB;
    // magic, architecture, length, checksum, then tags ending with the end tag (type 0, size 8).
    // An ELF image needs no address tag: the loader follows the program headers.
    .align 8
hv_multiboot2_header:
    .long MULTIBOOT2_MAGIC
    .long MULTIBOOT2_I386
    .long hv_multiboot2_header_end - hv_multiboot2_header
    .long -(MULTIBOOT2_MAGIC + MULTIBOOT2_I386 + (hv_multiboot2_header_end - hv_multiboot2_header))
    .short 0, 0
    .long 8
hv_multiboot2_header_end:

    .section .bss
    .align 4096
    .global hv_boot_pml4
hv_boot_pml4:   .skip 4096
hv_boot_pdpt:   .skip 4096
hv_boot_pd:     .skip 4096 * 4                   // four page directories: 4 GiB in 2 MiB pages
    .align 16
hv_boot_stack:  .skip STACK_SIZE
hv_boot_stack_top:

    // The task-state segment (SDM Vol. 3A, 9.7 "Task Management in 64-bit Mode"): nothing in it
    // is used yet, but VMX needs a TR selector that is not null for the host (SDM 27.2.3).
    .align 16
    .global hv_boot_tss
hv_boot_tss:    .skip 104

    // Writable: LTR marks the TSS descriptor busy.
    .section .data
    .align 16
    .global hv_boot_gdt
hv_boot_gdt:
    .quad 0                                      // null
    .quad 0x00AF9A000000FFFF                     // 0x08: 64-bit code, DPL 0
    .quad 0x00CF92000000FFFF                     // 0x10: data, DPL 0
    .quad 0x0000890000000067, 0                  // 0x18: 64-bit TSS, limit 103; base filled in below
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
    mov $hv_boot_tss, %rax                       // the TSS's base into its descriptor's four pieces
    mov %ax, hv_boot_gdt + 0x18 + 2
    shr $16, %rax
    mov %al, hv_boot_gdt + 0x18 + 4
    mov %ah, hv_boot_gdt + 0x18 + 7
    shr $16, %rax
    mov %eax, hv_boot_gdt + 0x18 + 8
    mov $0x18, %ax
    ltr %ax
    mov %edi, %edi                               // zero-extended: the arguments are 32-bit
    mov %esi, %esi
    call hv_baremetal_main
3:  cli
    hlt
    jmp 3b
    .section .note.GNU-stack, "", @progbits
