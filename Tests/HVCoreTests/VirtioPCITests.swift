// The modern virtio-pci transport as Linux's virtio_pci_modern driver sees it: the
// configuration space and its capabilities, the common configuration in BAR 0, doorbells, and
// MSI-X delivery with masking, with the entropy device behind it.
import Foundation
import HVCore
import Synchronization
import Testing

/// An interrupt controller that records the MSIs it is asked to send.
/// An interrupt controller that records the MSIs and line levels it is asked for.
final class RecordingController: InterruptController {
    let messages = Mutex<[(UInt64, UInt32)]>([])
    let levels = Mutex<[(gsi: UInt32, high: Bool)]>([])
    func setLevel(_ gsi: UInt32, high: Bool) throws(HVError) { levels.withLock { $0.append((gsi, high)) } }
    func signalMSI(address: UInt64, data: UInt32) throws(HVError) { messages.withLock { $0.append((address, data)) } }
    var sent: [UInt32] { messages.withLock { $0.map(\.1) } }
}

final class PCIBench {
    static let base: UInt64 = 0xC000_0000
    let memory: GuestMemory
    let controller = RecordingController()
    let transport: VirtioPCITransport<VirtioEntropy>
    let window = PCIWindow()

    /// A function on fresh memory, or on `memory` (a restored guest's).
    init(memory: GuestMemory? = nil) throws {
        self.memory = try memory ?? GuestMemory(regions: [MemoryRegion(guestAddress: 0, size: 16 << 20)])
        transport = try VirtioPCITransport(device: VirtioEntropy(), memory: self.memory, controller: controller)
        window.add(transport)
        transport.assign(address: Self.base)
    }

    func config(_ offset: UInt8, _ size: Int = 4) -> UInt32 { transport.configurationRead(offset: offset, size: size) }
    func setConfig(_ offset: UInt8, _ size: Int, _ value: UInt32) { transport.configurationWrite(offset: offset, size: size, value: value) }
    /// BAR 0 through the window, as the guest's accesses arrive.
    func read(_ offset: UInt64, _ width: Int) -> UInt64 { window.mmioRead(offset: Self.base - window.range.lowerBound + offset, width: width) }
    func write(_ offset: UInt64, _ width: Int, _ value: UInt64) { _ = window.mmioWrite(offset: Self.base - window.range.lowerBound + offset, width: width, value: value) }

    /// The capabilities: (offset, id, bytes after id and next).
    func capabilities() -> [(UInt8, UInt8, [UInt8])] {
        var result: [(UInt8, UInt8, [UInt8])] = []
        var pointer = UInt8(config(0x34, 1))
        while pointer != 0 && result.count < 16 {
            let id = UInt8(config(pointer, 1))
            result.append((pointer, id, (2..<24).map { UInt8(config(pointer + $0, 1)) }))
            pointer = UInt8(config(pointer + 1, 1))
        }
        return result
    }

    /// 3.1.1 through the common configuration, queue 0 at 0x10000/0x20000/0x30000, MSI-X on
    /// with vector 1 (address 0xFEE00000, data 0x41) for queue 0 and vector 0 for configuration.
    func initialise() {
        write(0x14, 1, 0)
        write(0x14, 1, 1); write(0x14, 1, 3)
        write(0x08, 4, 1); write(0x0C, 4, 1)  // VERSION_1
        write(0x14, 1, 11)
        setConfig(msixCapability + 2, 2, 0x8000)
        write(0x4000 + 16, 4, 0xFEE0_0000); write(0x4000 + 20, 4, 0); write(0x4000 + 24, 4, 0x41); write(0x4000 + 28, 4, 0)
        write(0x4000, 4, 0xFEE0_0000); write(0x4000 + 8, 4, 0x42); write(0x4000 + 12, 4, 0)
        write(0x10, 2, 0)
        write(0x16, 2, 0)
        write(0x18, 2, 16)
        write(0x1A, 2, 1)
        write(0x20, 4, 0x1_0000); write(0x24, 4, 0)
        write(0x28, 4, 0x2_0000); write(0x2C, 4, 0)
        write(0x30, 4, 0x3_0000); write(0x34, 4, 0)
        write(0x1C, 2, 1)
        write(0x14, 1, 15)
    }

    var msixCapability: UInt8 { capabilities().first { $0.1 == 0x11 }!.0 }

    /// Posts a 16-byte writable buffer as chain `index` and rings queue 0's doorbell.
    func request(_ index: UInt16) throws {
        let table = GuestPhysicalAddress(0x1_0000 + 16 * UInt64(index))
        try memory.write(UInt64(0x4_0000 + 0x100 * UInt64(index)), at: table)
        try memory.write(UInt32(16), at: GuestPhysicalAddress(table.rawValue + 8))
        try memory.write(UInt16(2), at: GuestPhysicalAddress(table.rawValue + 12))
        try memory.write(index, at: GuestPhysicalAddress(0x2_0004 + 2 * UInt64(index)))
        try memory.write(index + 1, at: GuestPhysicalAddress(0x2_0002))
        write(0x3000, 2, 0)
    }

    var usedIndex: UInt16 { (try? memory.read(UInt16.self, at: GuestPhysicalAddress(0x3_0002))) ?? 0 }
}

@Suite("virtio-pci transport")
struct VirtioPCITests {
    @Test("configuration space: 1AF4:1044 revision 1, the five virtio capabilities into BAR 0 and MSI-X with a vector per queue plus one; BAR 0 sizes as 32 KiB")
    func configurationSpace() throws {
        let bench = try PCIBench()
        #expect(bench.config(0x00) == 0x1044_1AF4)
        #expect(bench.config(0x08, 1) == 1 && bench.config(0x3D, 1) == 0, "revision 1, no INTx pin")
        #expect(bench.config(0x06, 2) & 0x10 != 0, "capability list")
        let capabilities = bench.capabilities()
        let virtio = capabilities.filter { $0.1 == 0x09 }
        // cfg_type, bar, offset of each virtio_pci_cap.
        #expect(virtio.map { [$0.2[1], $0.2[2]] } == [[1, 0], [2, 0], [3, 0], [4, 0], [5, 0]])
        let offsets = virtio.map { UInt32($0.2[6]) | UInt32($0.2[7]) << 8 | UInt32($0.2[8]) << 16 }
        #expect(Array(offsets.prefix(4)) == [0, 0x3000, 0x1000, 0x2000])
        #expect(virtio[1].2[14] == 4, "notify_off_multiplier")
        let msix = try #require(capabilities.first { $0.1 == 0x11 })
        #expect(msix.2[0] == 1, "table size 2 - 1: one queue and the configuration")
        #expect(msix.2[2] == 0x00 && msix.2[3] == 0x40, "table at BAR 0 + 0x4000")
        // BAR sizing as Linux does it: decoding off, all-ones, read back, restore.
        bench.setConfig(0x04, 2, 0)
        bench.setConfig(0x10, 4, 0xFFFF_FFFF)
        #expect(bench.config(0x10) == 0xFFFF_8000)
        bench.setConfig(0x10, 4, UInt32(PCIBench.base))
        #expect(bench.read(0x12, 2) == 0xFFFF, "no decoding while the command register says so")
        bench.setConfig(0x04, 2, 0x6)
        #expect(bench.read(0x12, 2) == 1, "num_queues")
    }

    @Test("the driver's initialisation through the common configuration; a doorbell serves the queue and MSI-X vector 1 fires; a masked vector sets its pending bit and fires when unmasked")
    func msix() throws {
        let bench = try PCIBench()
        bench.initialise()
        #expect(bench.transport.negotiatedFeatures == VirtioFeature.version1)
        #expect(bench.read(0x1A, 2) == 1, "the vector took")
        #expect(bench.transport.msixEnabled)
        try bench.request(0)
        #expect(bench.usedIndex == 1)
        #expect(bench.controller.sent == [0x41])
        // Mask vector 1: the next interrupt waits in the PBA.
        bench.write(0x4000 + 28, 4, 1)
        try bench.request(1)
        #expect(bench.usedIndex == 2 && bench.controller.sent == [0x41])
        #expect(bench.read(0x5000, 8) == 0b10)
        bench.write(0x4000 + 28, 4, 0)
        #expect(bench.controller.sent == [0x41, 0x41] && bench.read(0x5000, 8) == 0)
        // The function mask holds every vector; clearing it delivers.
        bench.setConfig(bench.msixCapability + 2, 2, 0xC000)
        try bench.request(2)
        #expect(bench.controller.sent.count == 2)
        bench.setConfig(bench.msixCapability + 2, 2, 0x8000)
        #expect(bench.controller.sent.count == 3)
        // A vector beyond the table is refused: the driver reads back NO_VECTOR.
        bench.write(0x16, 2, 0)
        bench.write(0x1A, 2, 7)
        #expect(bench.read(0x1A, 2) == 0xFFFF)
        // The ISR says what happened and clears on read.
        #expect(bench.read(0x1000, 1) & 1 == 1)
        #expect(bench.read(0x1000, 1) == 0)
    }

    @Test("with eventfd notifiers (irqfd), each vector's message is routed as the driver writes it and an interrupt is one eventfd write, not a signalMSI call")
    func eventFDNotifiers() throws {
        let bench = try PCIBench()
        let added = Mutex<[Int32]>([]), routes = Mutex<[UInt32: (UInt64, UInt32)]>([:])
        let took = bench.transport.interruptThroughEventFDs(
            add: { (descriptor: Int32, address: UInt64, data: UInt32) throws(HVError) -> UInt32 in
                let id = added.withLock { added -> UInt32 in
                    added.append(descriptor)
                    return UInt32(100 + added.count)
                }
                routes.withLock { $0[id] = (address, data) }
                return id
            },
            update: { (id: UInt32, address: UInt64, data: UInt32) throws(HVError) in routes.withLock { $0[id] = (address, data) } })
        #expect(took)
        #expect(bench.transport.msixThroughEventFDs)
        #expect(added.withLock { $0.count } == 2, "one per vector")
        bench.initialise()
        #expect(routes.withLock { $0[102]?.0 == 0xFEE0_0000 && $0[102]?.1 == 0x41 }, "vector 1's route follows its table entry")
        try bench.request(0)
        #expect(bench.usedIndex == 1)
        var count: UInt64 = 0
        #expect(read(added.withLock { $0[1] }, &count, 8) == 8 && count == 1, "vector 1's eventfd was written once")
        #expect(bench.controller.sent.isEmpty, "no signalMSI call")
    }

    @Test("the PCI_CFG capability reaches BAR 0 through configuration space; a moved BAR decodes at its new address and tells the doorbells' owner")
    func accessWindowAndMoves() throws {
        let bench = try PCIBench()
        let access = try #require(bench.capabilities().first { $0.1 == 0x09 && $0.2[1] == 5 }).0
        bench.setConfig(access + 4, 1, 0)  // bar 0
        bench.setConfig(access + 8, 4, 0x12)  // num_queues
        bench.setConfig(access + 12, 4, 2)  // 2 bytes
        #expect(bench.config(access + 16, 4) == 1)
        let moves = Mutex<[(UInt64?, UInt64?)]>([])
        bench.transport.whenBARMoves { old, new in moves.withLock { $0.append((old, new)) } }
        bench.setConfig(0x10, 4, UInt32(PCIBench.base + 0x10_0000))
        #expect(bench.transport.barAddress == PCIBench.base + 0x10_0000)
        #expect(bench.window.mmioRead(offset: 0x10_0012, width: 2) == 1)
        #expect(bench.read(0x12, 2) == 0xFFFF, "nothing at the old address")
        #expect(moves.withLock { $0.map { [$0.0, $0.1] } } == [[PCIBench.base, PCIBench.base + 0x10_0000]])
        // A platform reset puts the BAR back where firmware assigned it.
        bench.transport.reset()
        #expect(bench.transport.barAddress == PCIBench.base)
    }
}
