import HVModel
import Testing

@Suite("Exit vocabulary")
struct ExitVocabularyTests {
    @Test("PortIOData reads and writes elements of 1, 2 and 4 bytes in place")
    func portDataElements() {
        var storage = [UInt8](repeating: 0, count: 16)
        storage.withUnsafeMutableBytes { raw in
            let bytes = PortIOData(base: raw.baseAddress!, size: 1, count: 4, capacity: 16)!
            bytes[0] = 0x41
            bytes[3] = 0x1FF  // truncated to the element size
            #expect(bytes[0] == 0x41)
            #expect(bytes[3] == 0xFF)
            let words = PortIOData(base: raw.baseAddress!, size: 2, count: 2, capacity: 16)!
            words[1] = 0xBEEF
            #expect(raw[2] == 0xEF && raw[3] == 0xBE)
            let dwords = PortIOData(base: raw.baseAddress!, size: 4, count: 4, capacity: 16)!
            dwords[3] = 0xDEAD_BEEF
            #expect(dwords[3] == 0xDEAD_BEEF)
        }
    }

    @Test("PortIOData refuses views that do not fit their buffer or have a bad element size")
    func portDataBounds() {
        var storage = [UInt8](repeating: 0, count: 8)
        storage.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress!
            #expect(PortIOData(base: base, size: 4, count: 3, capacity: 8) == nil)
            #expect(PortIOData(base: base, size: 3, count: 1, capacity: 8) == nil)
            #expect(PortIOData(base: base, size: 1, count: 0, capacity: 8) == nil)
            #expect(PortIOData(base: base, size: 4, count: Int.max, capacity: 8) == nil)
            #expect(PortIOData(base: base, size: 4, count: 2, capacity: 8) != nil)
        }
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
        var byte: UInt8 = 0
        withUnsafeMutableBytes(of: &byte) { raw in
            let io = PortIO(port: 0x60, size: 1, count: 1, data: PortIOData(base: raw.baseAddress!, size: 1, count: 1, capacity: 1)!)
            #expect(chain.handle(.portIn(io), context: context) == .resumeWith(7))
        }
        #expect(NoExitHandler().handle(.halt, context: context) == nil)
    }

    @Test("guest-physical addresses refuse to wrap around the address space")
    func addressOverflow() {
        #expect(GuestPhysicalAddress(0x1000).advanced(by: 0x10) == GuestPhysicalAddress(0x1010))
        #expect(GuestPhysicalAddress(UInt64.max).advanced(by: 1) == nil)
    }
}
