import HVCore
import HVKVM
import Testing

/// Extra guest page tables the host writes before the guest runs: PML4[1] (VA 512 GiB) ->
/// PDPT at 3 MiB; PDPT[0] -> PD; PD[0] -> PT of scattered 4 KiB pages; PDPT[1] -> a 1 GiB
/// page at physical 0.
private enum Alias {
    static let base: UInt64 = 0x80_0000_0000
    static let pdpt: UInt64 = 0x30_0000, pd: UInt64 = 0x30_1000, pt: UInt64 = 0x30_2000
    /// Alias page i maps physical 0x20_0000 + i * 0x3000 (not contiguous).
    static func physical(_ i: UInt64) -> UInt64 { 0x20_0000 + i * 0x3000 }
    static let readOnlyPage: UInt64 = 8, notPresentPage: UInt64 = 9, userPage: UInt64 = 10

    static func install(in memory: GuestMemory) throws {
        let rwp: UInt64 = 3
        try memory.write(UInt64(pdpt | rwp), at: GuestPhysicalAddress(GuestImage.pml4Address + 8))
        try memory.write(UInt64(pd | rwp), at: GuestPhysicalAddress(pdpt))
        try memory.write(UInt64(0 | rwp | 1 << 7), at: GuestPhysicalAddress(pdpt + 8))
        try memory.write(UInt64(pt | rwp), at: GuestPhysicalAddress(pd))
        for i: UInt64 in 0..<11 where i != notPresentPage {
            var entry = physical(i) | 1
            if i != readOnlyPage { entry |= 2 }
            if i == userPage { entry |= 4 }
            try memory.write(entry, at: GuestPhysicalAddress(pt + i * 8))
        }
    }
}

@Suite("Guest virtual translation on KVM", .requiresKVM, .serialized)
struct KVMTranslateTests {
    @Test("translate agrees with KVM_TRANSLATE on identity, 4 KiB alias, 1 GiB and unmapped addresses")
    func agreesWithKernel() throws {
        let vm = try KVMHost.machine(memory: 8 << 20)
        _ = try attachConsole(vm)
        // The guest proves the alias mapping is live: it copies a word read through alias page 3
        // to physical 0x30_5000 through the identity map.
        try vm.load(GuestProgram.longMode { a in
            a.mov(Register64.rbx, Immediate(Int64(Alias.base + 3 * 4096 + 8)))
            a.mov(Register64.rax, Memory.at(Register64.rbx))
            a.mov(Register64.rbx, 0x30_5000)
            a.mov(Memory.at(Register64.rbx), Register64.rax)
            a.debugExit(code: 3)
        }.image(memorySize: 8 << 20))
        try Alias.install(in: vm.memory)
        try vm.memory.write(UInt64(0x1122_3344_5566_7788), at: GuestPhysicalAddress(Alias.physical(3) + 8))
        let result = try vm.run()
        #expect(result.reason == .debugExit(code: 3))
        #expect(try vm.memory.read(UInt64.self, at: 0x30_5000) == 0x1122_3344_5566_7788)

        var addresses: [UInt64] = [0, 0x1000, 0x10_0123, 0x7F_FFFF, 0x1234_5678, 0xFFFF_FFFF, 0x1_0000_0000,
                                   Alias.base + 0x4000_0000 + 0x123_4567, Alias.base + 0x8000_0000 /* PDPT[2]: not present */,
                                   0x100_0000_0000, 0xFFFF_8000_0000_0000, 0x0000_8000_0000_0000]
        for i: UInt64 in 0..<12 { addresses.append(Alias.base + i * 4096 + 0x10 * i) }
        let cpu = vm.vcpus[0]
        // Whether the guest's CPUID offers 1 GiB pages decides if PDPTE.PS is reserved; KVM's
        // answer for the one 1 GiB alias tells us, and every other address is compared as is.
        let gigabytePages = try cpu.kernelTranslate(GuestVirtualAddress(Alias.base + 0x4000_0000)).valid
        var compared = 0
        for address in addresses {
            let kernel = try cpu.kernelTranslate(GuestVirtualAddress(address))
            let ours = try? vm.translate(GuestVirtualAddress(address), supports1GiBPages: gigabytePages)
            #expect(kernel.valid == (ours != nil), "0x\(String(address, radix: 16))")
            if kernel.valid, let ours {
                #expect(ours.physicalAddress == kernel.physicalAddress, "0x\(String(address, radix: 16))")
                compared += 1
            }
        }
        #expect(compared >= (gigabytePages ? 17 : 16))
        // What KVM_TRANSLATE cannot say, our walker can: rights and page sizes.
        let readOnly = try vm.translate(GuestVirtualAddress(Alias.base + Alias.readOnlyPage * 4096))
        #expect(!readOnly.writable && readOnly.pageSize == .size4KiB)
        #expect(try vm.translate(GuestVirtualAddress(Alias.base + Alias.userPage * 4096)).userMode == false) // U/S=0 above
        #expect(try vm.translate(0x20_0000).pageSize == .size2MiB)
        #expect(try vm.translate(GuestVirtualAddress(Alias.base + 0x4000_0000)).pageSize == .size1GiB)
        #expect(throws: GuestTranslationError.self) {
            try vm.translate(GuestVirtualAddress(Alias.base + Alias.readOnlyPage * 4096), access: GuestAccess(.write))
        }
    }

    @Test("reading guest virtual memory crosses pages that map to scattered physical pages")
    func readVirtualMemory() throws {
        let vm = try KVMHost.machine(memory: 8 << 20)
        try vm.load(GuestProgram.longMode { a in a.hlt() }.image(memorySize: 8 << 20))
        try Alias.install(in: vm.memory)
        let text = Array("page-crossing text".utf8)
        // The last 7 bytes of alias page 4, then the start of alias page 5.
        try vm.memory.write(bytes: text[0..<7], at: GuestPhysicalAddress(Alias.physical(4) + 4096 - 7))
        try vm.memory.write(bytes: text[7...], at: GuestPhysicalAddress(Alias.physical(5)))
        let bytes = try vm.readVirtualMemory(at: GuestVirtualAddress(Alias.base + 5 * 4096 - 7), count: text.count)
        #expect(bytes == text)
        #expect(throws: GuestTranslationError.self) {
            try vm.readVirtualMemory(at: GuestVirtualAddress(Alias.base + Alias.notPresentPage * 4096 - 4), count: 8)
        }
    }
}
