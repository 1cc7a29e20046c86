# Seed for the loader fuzz targets and the PVH test kernel Tests/hvTests/HVRunLoaderTests.swift
# runs: an ELF32 kernel whose 32-bit entry is announced by a "Xen" note of type 18
# (XEN_ELFNOTE_PHYS32_ENTRY; Xen's docs/misc/pvh.pandoc). It checks struct hvm_start_info in EBX
# (magic, version, the memory map, the RSDP), prints the command line and every byte of module
# 0 to COM1, checks its .bss is zero and exits with 0x16 through port 0xF4 (7 on a failed check).
.code32
.section .note.Xen, "a", @note
    .align 4
    .long 4                        # n_namesz: "Xen\0"
    .long 4                        # n_descsz
    .long 18                       # n_type: XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long _start
.text
.globl _start
_start:
    mov $stack_top, %esp
    cmpl $0x336EC578, (%ebx)       # magic
    jne fail
    cmpl $1, 4(%ebx)               # version 1: the memory map fields are valid
    jb fail
    mov 24(%ebx), %esi             # cmdline_paddr
    call puts
    mov $10, %al
    call putc
    cmpl $3, 48(%ebx)              # memmap_entries
    jne fail
    mov 40(%ebx), %edi             # memmap_paddr: 24-byte entries (addr, size, type)
    cmpl $1, 16(%edi)              # entry 0: RAM
    jne fail
    cmpl $2, 40(%edi)              # entry 1: reserved
    jne fail
    mov 32(%ebx), %edi             # rsdp_paddr
    cmpl $0x20445352, (%edi)       # "RSD PTR "
    jne fail
    cmpl $0x20525450, 4(%edi)
    jne fail
    mov 12(%ebx), %ecx             # nr_modules
    test %ecx, %ecx
    jz done
    mov 16(%ebx), %edi             # modlist_paddr: paddr, size, cmdline_paddr, reserved
    mov (%edi), %esi
    mov 8(%edi), %ecx
    add %esi, %ecx
    call putrange
done:
    cmpl $0, bss_word
    jne fail
    mov $0x16, %eax
    mov $0xF4, %dx
    out %eax, %dx
    hlt
.include "kernel32.inc"
