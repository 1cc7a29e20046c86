import HVModel
import Testing

@Suite("Exit vocabulary")
struct ExitVocabularyTests {
    @Test("PortIOData reads and writes elements of 1, 2 and 4 bytes in place")
    func portDataElements() {
        let buffer = PortIOBuffer(capacity: 16)
        let bytes = PortIOData(buffer: buffer, size: 1, count: 4)!
        bytes[0] = 0x41
        bytes[3] = 0x1FF  // truncated to the element size
        #expect(bytes[0] == 0x41)
        #expect(bytes[3] == 0xFF)
        let words = PortIOData(buffer: buffer, size: 2, count: 2)!
        words[1] = 0xBEEF
        #expect(buffer.base.load(fromByteOffset: 2, as: UInt8.self) == 0xEF && buffer.base.load(fromByteOffset: 3, as: UInt8.self) == 0xBE)
        let dwords = PortIOData(buffer: buffer, size: 4, count: 4)!
        dwords[3] = 0xDEAD_BEEF
        #expect(dwords[3] == 0xDEAD_BEEF)
        let shifted = PortIOData(buffer: buffer, offset: 12, size: 4, count: 1)!
        #expect(shifted[0] == 0xDEAD_BEEF)
    }

    @Test("PortIOData refuses views that do not fit their buffer or have a bad element size")
    func portDataBounds() {
        let buffer = PortIOBuffer(capacity: 8)
        #expect(PortIOData(buffer: buffer, size: 4, count: 3) == nil)
        #expect(PortIOData(buffer: buffer, size: 3, count: 1) == nil)
        #expect(PortIOData(buffer: buffer, size: 1, count: 0) == nil)
        #expect(PortIOData(buffer: buffer, size: 4, count: Int.max) == nil)
        #expect(PortIOData(buffer: buffer, offset: 6, size: 4, count: 1) == nil)
        #expect(PortIOData(buffer: buffer, offset: -1, size: 1, count: 1) == nil)
        #expect(PortIOData(buffer: buffer, offset: Int.max, size: 1, count: 1) == nil)
        #expect(PortIOData(buffer: buffer, size: 4, count: 2) != nil)
    }

    @Test("a PortIOData kept past its exit reads zeros and drops writes once the vCPU runs again, and keeps its buffer alive")
    func portDataLifetime() {
        var buffer: PortIOBuffer? = PortIOBuffer(capacity: 4)
        buffer!.beginRun()
        let kept = PortIOData(buffer: buffer!, size: 4, count: 1)!
        kept[0] = 0x1234_5678
        #expect(kept.isCurrent && kept[0] == 0x1234_5678)
        buffer!.beginRun()  // the next exit's bytes
        let next = PortIOData(buffer: buffer!, size: 4, count: 1)!
        next[0] = 0xCAFE
        #expect(!kept.isCurrent && kept[0] == 0, "a stale view does not read the next exit's bytes")
        kept[0] = 0xDEAD
        #expect(next[0] == 0xCAFE, "a stale view does not write over them")
        buffer = nil  // the backend is gone; the views still own the memory
        #expect(next[0] == 0xCAFE && kept[0] == 0)
    }

    @Test("every exit maps to its kind and every kind has a distinct name")
    func kinds() {
        #expect(VMExit.halt.kind == .halt)
        #expect(VMExit.msrWrite(index: 0x10, value: 1).kind == .msrWrite)
        #expect(VMExit.mmioRead(MMIOAccess(address: 0x1000, width: 4)).kind == .mmioRead)
        #expect(VMExit.unknown(reason: 99).kind == .unknown)
        let names = ExitKind.allCases.map { "\($0.name)" }
        #expect(Set(names).count == ExitKind.allCases.count)
    }

    @Test("a chain asks the second handler only for exits the first declines")
    func chaining() {
        let ports = ClosureExitHandler { exit, _ in
            if case .portIn = exit { return .resumeWith(7) }
            return nil
        }
        let halts = ClosureExitHandler { exit, _ in exit.kind == .halt ? .stop(.halted) : nil }
        let chain = ports.then(halts)
        let context = ExitContext(vcpuID: 0)
        #expect(chain.handle(.halt, context: context) == .stop(.halted))
        #expect(chain.handle(.shutdown, context: context) == nil)
        let io = PortIO(port: 0x60, size: 1, count: 1, data: PortIOData(buffer: PortIOBuffer(capacity: 1), size: 1, count: 1)!)
        #expect(chain.handle(.portIn(io), context: context) == .resumeWith(7))
        #expect(NoExitHandler().handle(.halt, context: context) == nil)
    }

    @Test("guest-physical addresses refuse to wrap around the address space")
    func addressOverflow() {
        #expect(GuestPhysicalAddress(0x1000).advanced(by: 0x10) == GuestPhysicalAddress(0x1010))
        #expect(GuestPhysicalAddress(UInt64.max).advanced(by: 1) == nil)
    }
}
