// The Linux boot protocol loader (boot.rst, "64-bit boot protocol") on synthetic bzImages: the
// zero page, command line, initrd placement, entry state, and each refused header.

import HVGuest
import HVModel
import Testing

private let memory: UInt64 = 32 << 20

/// A bzImage with one setup sector (plus the boot sector) and `payload` as the kernel.
private func bzImage(version: UInt16 = 0x020F, loadflags: UInt8 = 1, xloadflags: UInt16 = 1,
                     payload: [UInt8] = [UInt8](repeating: 0x90, count: 0x400)) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: 1024)
    bytes[0x1F1] = 1                                  // setup_sects
    put(&bytes, 0x1FE, 0xAA55, 2)                     // boot_flag
    bytes[0x201] = 0x66                               // header ends at 0x268
    put(&bytes, 0x202, 0x5372_6448, 4)                // "HdrS"
    put(&bytes, 0x206, UInt64(version), 2)
    bytes[0x211] = loadflags
    put(&bytes, 0x22C, 0x7FFF_FFFF, 4)                // initrd_addr_max
    put(&bytes, 0x236, UInt64(xloadflags), 2)
    put(&bytes, 0x238, 2047, 4)                       // cmdline_size
    put(&bytes, 0x258, 0x100_0000, 8)                 // pref_address 16 MiB
    put(&bytes, 0x260, 0x2000, 4)                     // init_size
    return bytes + payload
}

private func expectError(_ expected: LoaderError, field: String, sourceLocation: SourceLocation = #_sourceLocation,
                         _ body: () throws(LoaderError) -> GuestImage) {
    do {
        _ = try body()
        Issue.record("expected \(expected)", sourceLocation: sourceLocation)
    } catch {
        #expect(error == expected, sourceLocation: sourceLocation)
        #expect(error.description.hasPrefix(field), "message: \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("Linux boot protocol loader")
struct LoaderLinuxTests {
    @Test("a bzImage: kernel at pref_address, zero page, command line, initrd, e820, 64-bit entry")
    func boots() throws {
        let initrd = [UInt8](repeating: 7, count: 0x1800)
        let image = try GuestImage.linux(bzImage(), commandLine: "console=ttyS0 earlyprintk=serial", initrd: initrd,
                                         memorySize: memory)
        #expect(image.mode == .long)
        #expect(image.registers.rip == 0x100_0200 && image.registers.rsi == 0x9000)
        #expect(image.specialRegisters.cs.selector == 0x10 && image.specialRegisters.ds.selector == 0x18)
        #expect(image.specialRegisters.gdt.limit == 31 && image.chunk(named: "gdt")?.bytes.count == 32)
        #expect(image.chunk(named: "kernel")?.address.rawValue == 0x100_0000)
        #expect(image.chunk(named: "kernel")?.bytes.count == 0x400)
        let zero: UInt64 = 0x9000
        #expect(read32(image, zero + 0x202) == 0x5372_6448)                     // header copied
        #expect(read32(image, zero + 0x210).map { $0 & 0xFF } == 0xFF)          // type_of_loader
        #expect(readString(image, UInt64(read32(image, zero + 0x228) ?? 0)) == "console=ttyS0 earlyprintk=serial")
        // initrd: page-aligned at the top of memory.
        #expect(read32(image, zero + 0x218) == UInt32(memory - 0x2000) && read32(image, zero + 0x21C) == 0x1800)
        #expect(image.chunk(named: "initrd")?.address.rawValue == memory - 0x2000)
        #expect(read32(image, zero + 0x1E8).map { $0 & 0xFF } == 3)
        #expect(read32(image, zero + 0x2D0 + 40 + 8) == UInt32(memory - 0x10_0000))   // third entry's size
        #expect(read32(image, zero + 0x2D0 + 40 + 16) == 1)
    }

    @Test("refused headers: not a bzImage, old protocol, no 64-bit entry, truncated, too long a command line")
    func refused() {
        var noFlag = bzImage()
        noFlag[0x1FE] = 0
        expectError(.unsupported(field: "boot_flag", value: 0xAA00, expected: "0xAA55 (not a bzImage)"), field: "boot_flag") {
            () throws(LoaderError) in try GuestImage.linux(noFlag, memorySize: memory)
        }
        expectError(.unsupported(field: "version", value: 0x0204, expected: "boot protocol 2.12 (0x20C) or later"), field: "version") {
            () throws(LoaderError) in try GuestImage.linux(bzImage(version: 0x0204), memorySize: memory)
        }
        expectError(.unsupported(field: "loadflags", value: 0, expected: "LOADED_HIGH (bit 0) set: a bzImage"), field: "loadflags") {
            () throws(LoaderError) in try GuestImage.linux(bzImage(loadflags: 0), memorySize: memory)
        }
        expectError(.unsupported(field: "xloadflags", value: 0, expected: "XLF_KERNEL_64 (bit 0) set"), field: "xloadflags") {
            () throws(LoaderError) in try GuestImage.linux(bzImage(xloadflags: 0), memorySize: memory)
        }
        expectError(.truncated(field: "setup header", offset: 0, needed: 0x268, fileSize: 0x200), field: "setup header") {
            () throws(LoaderError) in try GuestImage.linux(Array(bzImage().prefix(0x200)), memorySize: memory)
        }
        expectError(.truncated(field: "setup_sects", offset: 0, needed: 1025, fileSize: 1024), field: "setup_sects") {
            () throws(LoaderError) in try GuestImage.linux(bzImage(payload: []), memorySize: memory)
        }
        expectError(.unsupportedSize(field: "cmdline_size", bytes: 3000, expected: "a command line of at most 2047 bytes"),
                    field: "cmdline_size") {
            () throws(LoaderError) in try GuestImage.linux(bzImage(), commandLine: String(repeating: "x", count: 3000), memorySize: memory)
        }
        expectError(.outsideMemory(field: "pref_address/init_size", what: "the kernel", start: 0x100_0000, size: 0x2000,
                                   memorySize: 16 << 20), field: "pref_address/init_size") {
            () throws(LoaderError) in try GuestImage.linux(bzImage(), memorySize: 16 << 20)
        }
        expectError(.outsideMemory(field: "initrd_addr_max", what: "the initrd", start: 0x100_2000, size: memory,
                                   memorySize: memory), field: "initrd_addr_max") {
            () throws(LoaderError) in try GuestImage.linux(bzImage(), initrd: [UInt8](repeating: 0, count: Int(memory)), memorySize: memory)
        }
    }
}
