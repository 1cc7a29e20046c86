# Seed for the loader fuzz targets: an ELF64 program (as in Tests/hvTests/HVRunLoaderTests.swift).
.code64
.text
.globl _start
_start:
    lea message(%rip), %rsi
1:  movb (%rsi), %al
    test %al, %al
    jz 2f
    mov $0x3F8, %dx
    out %al, %dx
    inc %rsi
    jmp 1b
2:  mov $0x2A, %eax
    mov $0xF4, %dx
    out %eax, %dx
    hlt
message: .asciz "elf64 long mode\n"
