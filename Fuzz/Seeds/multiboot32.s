# Seed for the loader fuzz targets: a Multiboot 1 ELF32 kernel (the one Tests/hvTests/HVRunLoaderTests.swift runs).
.code32
.text
.globl _start
.align 4
multiboot_header:                  # Multiboot 0.6.96, 3.1.1
    .long 0x1BADB002
    .long 0x00000003               # page-align modules, memory information
    .long -(0x1BADB002 + 0x00000003)
_start:
    mov $stack_top, %esp
    cmp $0x2BADB002, %eax
    jne fail
    mov (%ebx), %eax               # flags: mem, cmdline, mods, mmap, boot_loader_name
    and $0x24D, %eax
    cmp $0x24D, %eax
    jne fail
    mov 16(%ebx), %esi             # cmdline
    call puts
    mov $10, %al
    call putc
    mov 64(%ebx), %esi             # boot_loader_name
    call puts
    mov $10, %al
    call putc
    mov 20(%ebx), %ecx             # mods_count
    test %ecx, %ecx
    jz done
    mov 24(%ebx), %edi             # mods_addr
    mov (%edi), %esi               # mod_start
    mov 4(%edi), %ecx              # mod_end
    call putrange
done:
    cmpl $0, bss_word
    jne fail
    mov $0x15, %eax
    mov $0xF4, %dx
    out %eax, %dx
    hlt
.include "kernel32.inc"
