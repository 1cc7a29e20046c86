// KVM's dirty log (api.rst 4.8 KVM_GET_DIRTY_LOG, 4.35 KVM_MEM_LOG_DIRTY_PAGES): the pages a
// guest writes, which live migration's pre-copy sends again (Documentation/Snapshots.md).
import HVCore
import Testing

@Suite("KVM dirty page log", .requiresKVM)
struct KVMDirtyLogTests {
    @Test("with logging on, the page the guest writes is set in the slot's bitmap, once: reading it clears it; a page it does not write stays clear")
    func writtenPagesAreLogged() throws {
        // The counting guest keeps its count at 0x300000; 60 exits are three counts printed.
        let vm = try KVMHost.machine(memory: 8 << 20) { $0.exitLimit = 60 }
        _ = try attachConsole(vm)
        try vm.load(GuestProgram.counter(delay: 10))
        try vm.vm.setDirtyLogging(true)
        _ = try vm.vm.fetchDirtyPages(slot: 0)  // what loading wrote before logging began
        let result = try vm.run()
        #expect(result.reason == .exitLimit)
        #expect(try vm.memory.read(UInt64.self, at: 0x30_0000) >= 3)
        let bitmap = try vm.vm.fetchDirtyPages(slot: 0)
        func dirty(_ address: UInt64) -> Bool { bitmap[Int(address / 4096 / 64)] & (1 << ((address / 4096) % 64)) != 0 }
        #expect(bitmap.count == (8 << 20) / 4096 / 64)
        #expect(dirty(0x30_0000))
        #expect(!dirty(0x60_0000))
        // Handed over and cleared: a second read, with nothing run since, is empty.
        #expect(try vm.vm.fetchDirtyPages(slot: 0).allSatisfy { $0 == 0 })
        try vm.vm.setDirtyLogging(false)
        #expect(throws: HVError.self) { try vm.vm.fetchDirtyPages(slot: 7) }
    }
}
