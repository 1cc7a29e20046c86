# Seed for the loader fuzz targets and the Multiboot2 test kernel Tests/hvTests/HVRunLoaderTests.swift
# runs: an ELF32 kernel with a Multiboot2 header (Multiboot2 3.1) that requires the command line,
# boot loader name, modules and memory map. It walks the tagged boot information in EBX (3.6),
# prints the command line, the loader name and every byte of each module to COM1, checks the
# memory map (24-byte entries, the first one RAM) and the new ACPI RSDP tag ("RSD PTR "), checks
# its .bss is zero and exits with 0x17 through port 0xF4 (7 on a failed check).
.code32
.text
.globl _start
.align 8
header:
    .long 0xE85250D6               # magic
    .long 0                        # architecture: i386
    .long header_end - header      # header_length
    .long -(0xE85250D6 + (header_end - header))
.align 8
    .short 1, 0                    # information request, required
    .long 24
    .long 1, 2, 3, 6               # command line, boot loader name, modules, memory map
.align 8
    .short 0, 0                    # end
    .long 8
header_end:
_start:
    mov $stack_top, %esp
    cmp $0x36D76289, %eax
    jne fail
    xor %edi, %edi                 # bit 0: memory map checked, bit 1: new RSDP found
    lea 8(%ebx), %ebx              # the first tag
next:
    mov (%ebx), %eax               # type
    test %eax, %eax
    jz done
    cmp $1, %eax
    je text
    cmp $2, %eax
    je text
    cmp $3, %eax
    je module
    cmp $6, %eax
    je mmap
    cmp $15, %eax
    je rsdp
advance:
    mov 4(%ebx), %eax              # size, rounded up to 8
    add $7, %eax
    and $~7, %eax
    add %eax, %ebx
    jmp next
text:                              # command line or boot loader name
    lea 8(%ebx), %esi
    call puts
    mov $10, %al
    call putc
    jmp advance
module:
    mov 8(%ebx), %esi              # mod_start
    mov 12(%ebx), %ecx             # mod_end
    call putrange
    jmp advance
mmap:
    cmpl $24, 8(%ebx)              # entry_size
    jne fail
    cmpl $1, 32(%ebx)              # first entry's type: RAM
    jne fail
    or $1, %edi
    jmp advance
rsdp:
    cmpl $0x20445352, 8(%ebx)      # "RSD PTR "
    jne fail
    cmpl $0x20525450, 12(%ebx)
    jne fail
    or $2, %edi
    jmp advance
done:
    cmp $3, %edi
    jne fail
    cmpl $0, bss_word
    jne fail
    mov $0x17, %eax
    mov $0xF4, %dx
    out %eax, %dx
    hlt
.include "kernel32.inc"
