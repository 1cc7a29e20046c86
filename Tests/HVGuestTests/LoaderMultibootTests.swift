// The Multiboot 1 loader (Multiboot 0.6.96, 3.1-3.3) on kernels built by the tests: the ELF and
// a.out-kludge paths, the info structure read back from the image, and each malformed header.

import HVGuest
import HVModel
import Testing

private let memory: UInt64 = 16 << 20

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

/// An ELF32 kernel at 4 MiB whose first bytes are a Multiboot header (flags 0x3), then `hlt`.
private func elfKernel(bss: UInt64 = 0) -> [UInt8] {
    let text = multibootHeader(flags: 0x3) + [0xF4]
    return TestELF(is64: false, entry: 0x40_000C, segments: [
        TestSegment(physicalAddress: 0x40_0000, data: text, memorySize: UInt64(text.count) + bss),
    ]).bytes
}

@Suite("Multiboot loader")
struct LoaderMultibootTests {
    @Test("an ELF kernel: 3.2 machine state and the 3.3 info structure with cmdline, modules, mmap, name")
    func elfKernelInfo() throws {
        let modules = [MultibootModule(name: "env", bytes: Array("A=1\nB=2\n".utf8)),
                       MultibootModule(name: "second", bytes: [1, 2, 3])]
        let image = try GuestImage.multiboot(elfKernel(bss: 0x2000), name: "kernel.elf", arguments: "a b",
                                             modules: modules, memorySize: memory)
        #expect(image.mode == .protected)
        #expect(image.registers.rax == 0x2BAD_B002 && image.registers.rbx == 0x9000 && image.registers.rip == 0x40_000C)
        #expect(image.registers.rflags & (1 << 9 | 1 << 17) == 0)
        #expect(image.specialRegisters.cr0 & ControlBits.cr0PG == 0 && image.specialRegisters.cr0 & ControlBits.cr0PE != 0)
        let info: UInt64 = 0x9000
        #expect(read32(image, info) == 0x24D)
        #expect(read32(image, info + 4) == 640 && read32(image, info + 8) == (16 << 10) - 1024)
        #expect(readString(image, UInt64(read32(image, info + 16) ?? 0)) == "kernel.elf a b")
        #expect(readString(image, UInt64(read32(image, info + 64) ?? 0)) == "HV")
        #expect(read32(image, info + 20) == 2)
        let mods = UInt64(try #require(read32(image, info + 24)))
        let start0 = try #require(read32(image, mods)), end0 = try #require(read32(image, mods + 4))
        // After the kernel's 0x200D bytes (text + .bss), page-aligned.
        #expect(start0 == 0x40_3000 && end0 == 0x40_3008)
        #expect(readString(image, UInt64(start0))?.hasPrefix("A=1\nB=2\n") == true)
        #expect(readString(image, UInt64(read32(image, mods + 8) ?? 0)) == "env")
        #expect(read32(image, mods + 16) == 0x40_4000 && read32(image, mods + 20) == 0x40_4003)
        #expect(readString(image, UInt64(read32(image, mods + 24) ?? 0)) == "second")
        // mmap: size 20 then base, length, type; three entries.
        #expect(read32(image, info + 44) == 72)
        let mmap = UInt64(try #require(read32(image, info + 48)))
        let entries = (0..<3).map { index in
            (read32(image, mmap + UInt64(index) * 24), read32(image, mmap + UInt64(index) * 24 + 4),
             read32(image, mmap + UInt64(index) * 24 + 12), read32(image, mmap + UInt64(index) * 24 + 20))
        }
        #expect(entries[0] == (20, 0, 0xA_0000, 1))
        #expect(entries[1] == (20, 0xA_0000, 0x6_0000, 2))
        #expect(entries[2] == (20, 0x10_0000, 0xF0_0000, 1))
        let bss = try #require(image.chunk(named: "segment 0"))
        #expect(bss.bytes.count == 13 && bss.size == 0x200D)
    }

    @Test("without arguments the command line is the image name alone")
    func nameOnly() throws {
        let image = try GuestImage.multiboot(elfKernel(), name: "k", memorySize: memory)
        #expect(readString(image, UInt64(read32(image, 0x9010) ?? 0)) == "k")
        #expect(read32(image, 0x9014) == 0)
    }

    @Test("a.out kludge (flag 16): text from the file, .bss to bss_end_addr, entry_addr")
    func aoutKludge() throws {
        // The header sits 0x10 bytes into the file, the text starts at offset 0 = load_addr.
        var file = [UInt8](repeating: 0x90, count: 0x10)
        file += multibootHeader(flags: 1 << 16 | 0x2, addresses: [0x20_0010, 0x20_0000, 0, 0x20_1000, 0x20_0030])
        file += [UInt8](repeating: 0xF4, count: 0x20)
        let image = try GuestImage.multiboot(file, name: "raw", memorySize: memory)
        let kernel = try #require(image.chunk(named: "kernel"))
        #expect(kernel.address.rawValue == 0x20_0000 && kernel.size == 0x1000)
        #expect(kernel.bytes == file && kernel.zeroFill == UInt64(0x1000 - file.count))
        #expect(image.registers.rip == 0x20_0030 && image.registers.rax == 0x2BAD_B002)

        // load_end_addr: only the first 0x40 bytes come from the file (the checksum covers no address).
        var short = file
        put(&short, 0x10 + 20, 0x20_0040, 4)
        let shortImage = try GuestImage.multiboot(short, name: "raw", memorySize: memory)
        let shortKernel = try #require(shortImage.chunk(named: "kernel"))
        #expect(shortKernel.bytes.count == 0x40 && shortKernel.bytes[0x3F] == 0xF4 && shortKernel.size == 0x1000)
    }

    @Test("header search: none, beyond 8 KiB, bad checksum, video mode, undefined required flags")
    func headers() {
        expectError(.multibootHeaderNotFound(searched: 64), field: "magic") {
            () throws(LoaderError) in try GuestImage.multiboot([UInt8](repeating: 0, count: 64), name: "k", memorySize: memory)
        }
        let late = [UInt8](repeating: 0, count: 8192) + multibootHeader(flags: 0)
        expectError(.multibootHeaderNotFound(searched: 8192), field: "magic") {
            () throws(LoaderError) in try GuestImage.multiboot(late, name: "k", memorySize: memory)
        }
        let badSum = multibootHeader(flags: 3, checksum: 0x1234)
        expectError(.multibootBadChecksum(offset: 0, flags: 3, checksum: 0x1234), field: "checksum") {
            () throws(LoaderError) in try GuestImage.multiboot(badSum, name: "k", memorySize: memory)
        }
        expectError(.unsupported(field: "flags", value: 4, expected: "bit 2 (video mode) clear: HV has no framebuffer"), field: "flags") {
            () throws(LoaderError) in try GuestImage.multiboot(multibootHeader(flags: 4), name: "k", memorySize: memory)
        }
        expectError(.unsupported(field: "flags", value: 0x100, expected: "required bits 3-15 clear (3.1.2)"), field: "flags") {
            () throws(LoaderError) in try GuestImage.multiboot(multibootHeader(flags: 0x100), name: "k", memorySize: memory)
        }
        let cut = multibootHeader(flags: 1 << 16)
        expectError(.truncated(field: "header_addr..entry_addr", offset: 12, needed: 20, fileSize: 12), field: "header_addr") {
            () throws(LoaderError) in try GuestImage.multiboot(cut, name: "k", memorySize: memory)
        }
        // No flag 16 and not ELF: the ELF checks explain why.
        expectError(.unsupported(field: "e_ident[EI_MAG0..3]", value: 0x1BAD_B002, expected: "0x464C457F (\"\\x7FELF\")"),
                    field: "e_ident") {
            () throws(LoaderError) in try GuestImage.multiboot(multibootHeader(flags: 0) + [0, 0, 0, 0], name: "k", memorySize: memory)
        }
    }

    @Test("a.out-kludge address fields that contradict each other or the file")
    func badAddresses() {
        func kernel(_ addresses: [UInt32]) -> [UInt8] { multibootHeader(flags: 1 << 16, addresses: addresses) + [0xF4] }
        expectError(.multibootBadAddress(field: "header_addr", value: 0x10_0000,
                                         reason: "is below load_addr 0x200000; the header must be in the loaded text"),
                    field: "header_addr") {
            () throws(LoaderError) in try GuestImage.multiboot(kernel([0x10_0000, 0x20_0000, 0, 0, 0x20_0000]), name: "k", memorySize: memory)
        }
        expectError(.multibootBadAddress(field: "load_addr", value: 0x1F_F000,
                                         reason: "puts the start of the text before the start of the file (header at file offset 0x0)"),
                    field: "load_addr") {
            () throws(LoaderError) in try GuestImage.multiboot(kernel([0x20_0000, 0x1F_F000, 0, 0, 0x20_0000]), name: "k", memorySize: memory)
        }
        expectError(.truncated(field: "load_end_addr", offset: 0, needed: 0x1000, fileSize: 33), field: "load_end_addr") {
            () throws(LoaderError) in try GuestImage.multiboot(kernel([0x20_0000, 0x20_0000, 0x20_1000, 0, 0x20_0000]), name: "k", memorySize: memory)
        }
        expectError(.multibootBadAddress(field: "bss_end_addr", value: 0x20_0010, reason: "is below the end of the loaded text 0x200021"),
                    field: "bss_end_addr") {
            () throws(LoaderError) in try GuestImage.multiboot(kernel([0x20_0000, 0x20_0000, 0, 0x20_0010, 0x20_0000]), name: "k", memorySize: memory)
        }
        expectError(.outsideMemory(field: "load_addr/bss_end_addr", what: "the kernel", start: 0x20_0000, size: 0xFFDF_FFFF,
                                   memorySize: memory), field: "load_addr/bss_end_addr") {
            () throws(LoaderError) in try GuestImage.multiboot(kernel([0x20_0000, 0x20_0000, 0, 0xFFFF_FFFF, 0x20_0000]), name: "k", memorySize: memory)
        }
        expectError(.entryOutsideLoadedMemory(field: "entry_addr", entry: 0x30_0000), field: "entry_addr") {
            () throws(LoaderError) in try GuestImage.multiboot(kernel([0x20_0000, 0x20_0000, 0, 0, 0x30_0000]), name: "k", memorySize: memory)
        }
        expectError(.overlapsSetUpStructure(field: "load_addr", what: "the kernel", start: 0x7_8000, end: 0x7_8021,
                                            structure: "stack", structureStart: 0x7_0000, structureEnd: 0x8_0000),
                    field: "load_addr") {
            () throws(LoaderError) in try GuestImage.multiboot(kernel([0x7_8000, 0x7_8000, 0, 0, 0x7_8000]), name: "k", memorySize: memory)
        }
    }

    @Test("modules and command lines that do not fit")
    func tooLarge() {
        let big = MultibootModule(name: "big", bytes: [UInt8](repeating: 1, count: Int(memory)))
        expectError(.outsideMemory(field: "module 0", what: "module \"big\"", start: 0x40_1000, size: memory, memorySize: memory),
                    field: "module 0") {
            () throws(LoaderError) in try GuestImage.multiboot(elfKernel(), name: "k", modules: [big], memorySize: memory)
        }
        // 16 MiB leaves no 17 MiB anywhere for the information.
        let arguments = String(repeating: "x", count: 17 << 20)
        expectError(.noRoomForBootStructure(structure: "multiboot info", size: 0x11000A6, ramBelowHole: memory),
                    field: "multiboot info") {
            () throws(LoaderError) in try GuestImage.multiboot(elfKernel(), name: "k", arguments: arguments, memorySize: memory)
        }
    }

    /// Where the image's chunk `name` lies.
    private func range(of name: String, in image: GuestImage) throws -> Range<UInt64> {
        let chunk = try #require(image.chunks.first { $0.name == name })
        return chunk.address.rawValue..<chunk.address.rawValue + chunk.size
    }

    @Test("the information moves out of a kernel linked over 0x9000 (kvm-unit-tests' realmode: 0x8000-0xDA30)")
    func informationAroundTheKernel() throws {
        let text = multibootHeader(flags: 0x3) + [0xF4]
        let kernel = TestELF(is64: false, entry: 0x800C, segments: [
            TestSegment(physicalAddress: 0x8000, data: text, memorySize: 0x5A30),
        ]).bytes
        let image = try GuestImage.multiboot(kernel, name: "realmode.flat", arguments: "-x", memorySize: memory)
        let info = try range(of: "multiboot info", in: image), loaded = try range(of: "segment 0", in: image)
        #expect(!info.overlaps(loaded) && !info.overlaps(0x500..<0x518) && !info.overlaps(0x7_0000..<0x8_0000))
        #expect(info.lowerBound == 0x1000, "the lowest free 8-byte aligned address above the BIOS data area")
        #expect(image.registers.rbx == info.lowerBound)
        #expect(readString(image, UInt64(read32(image, info.lowerBound + 16) ?? 0)) == "realmode.flat -x")
        // A kernel over all of conventional memory's free part pushes it above 1 MiB, past the modules.
        let wide = TestELF(is64: false, entry: 0x100C, segments: [
            TestSegment(physicalAddress: 0x1000, data: text, memorySize: 0x6_F000),
            TestSegment(physicalAddress: 0x8_0000, data: [0], memorySize: 0x2_0000),
        ]).bytes
        let module = MultibootModule(name: "env", bytes: Array("A=1\n".utf8))
        let pushed = try GuestImage.multiboot(wide, name: "k", modules: [module], memorySize: memory)
        let moved = try range(of: "multiboot info", in: pushed), placed = try range(of: "module 0", in: pushed)
        #expect(moved.lowerBound >= placed.upperBound && moved.lowerBound < 0x10_2000)
        #expect(pushed.registers.rbx == moved.lowerBound)
        // A command line too long for low memory goes above 1 MiB too.
        let long = try GuestImage.multiboot(elfKernel(), name: "k", arguments: String(repeating: "x", count: 0x7_0000), memorySize: memory)
        #expect(try range(of: "multiboot info", in: long).lowerBound == 0x10_0000)
    }
}
