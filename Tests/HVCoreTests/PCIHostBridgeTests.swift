// PCI configuration mechanism #1 and the configuration-space model (PCI Local Bus 3.0: 3.2.2.3.2,
// 6.2.5 BARs, 6.7 capabilities) without a VM.
import HVCore
import Testing

@Suite("PCI host bridge")
struct PCIHostBridgeTests {
    /// CONFIG_ADDRESS for bus 0, `slot`, `function`, `register`, enabled.
    func address(slot: Int, function: Int = 0, register: UInt8 = 0, bus: UInt32 = 0) -> UInt32 {
        0x8000_0000 | bus << 16 | UInt32(slot) << 11 | UInt32(function) << 8 | UInt32(register & 0xFC)
    }

    func read(_ bridge: PCIHostBridge, slot: Int, function: Int = 0, register: UInt8, size: Int = 4) -> UInt32 {
        _ = bridge.portWrite(offset: 0, size: 4, value: address(slot: slot, function: function, register: register))
        return bridge.portRead(offset: 4 + UInt16(register & 3), size: size)
    }

    func write(_ bridge: PCIHostBridge, slot: Int, register: UInt8, size: Int = 4, value: UInt32) {
        _ = bridge.portWrite(offset: 0, size: 4, value: address(slot: slot, register: register))
        _ = bridge.portWrite(offset: 4 + UInt16(register & 3), size: size, value: value)
    }

    @Test("window allocation: naturally aligned BARs; a zero or non-power-of-two size, or no room left (past the window or 2^64), is an error")
    func windowAllocation() throws {
        let window = PCIWindow(space: .memory, range: 0xC000_0000..<0xC001_0000)
        #expect(try window.allocate(size: 0x100) == 0xC000_0000)
        #expect(try window.allocate(size: 0x4000) == 0xC000_4000)  // aligned up past the first
        #expect(throws: PCIError.invalidBARSize(0)) { try window.allocate(size: 0) }
        #expect(throws: PCIError.invalidBARSize(0x3000)) { try window.allocate(size: 0x3000) }
        #expect(throws: PCIError.windowFull(name: "pci-window", range: window.range, size: 1 << 63)) { try window.allocate(size: 1 << 63) }
        #expect(throws: PCIError.windowFull(name: "pci-window", range: window.range, size: 0x10000)) { try window.allocate(size: 0x10000) }
        #expect(try window.allocate(size: 0x8000) == 0xC000_8000)  // the refusals took nothing
        do { _ = try window.allocate(size: 0x10) } catch {
            #expect(error.description == "pci-window [0xc0000000, 0xc0010000) has no room left for a BAR of 16 bytes")
        }
        // A window at the top of the address space: rounding up would wrap past 2^64.
        let top = PCIWindow(space: .memory, range: 0xFFFF_FFFF_FFFF_F000..<UInt64.max)
        #expect(try top.allocate(size: 0x800) == 0xFFFF_FFFF_FFFF_F000)
        #expect(throws: PCIError.self) { try top.allocate(size: 1 << 63) }
        #expect(throws: PCIError.self) { try top.allocate(size: 0x1000) }
    }

    @Test("00:00.0 is an i440FX host bridge; every other slot reads all-ones")
    func hostBridgeAndEmptySlots() {
        let bridge = PCIHostBridge()
        #expect(read(bridge, slot: 0, register: 0) == 0x1237_8086)
        #expect(read(bridge, slot: 0, register: 0x08) == 0x0600_0002)  // class 060000, revision 2
        #expect(read(bridge, slot: 0, register: 0x0E, size: 1) == 0x00)
        #expect(read(bridge, slot: 0, register: 0x02, size: 2) == 0x1237)
        #expect(read(bridge, slot: 0, register: 0x01, size: 1) == 0x80)
        let found = (0..<32).filter { read(bridge, slot: $0, register: 0, size: 2) != 0xFFFF }
        #expect(found == [0])
        #expect(read(bridge, slot: 0, function: 1, register: 0) == 0xFFFF_FFFF)
        #expect(read(bridge, slot: 5, register: 0, size: 1) == 0xFF)
    }

    @Test("CONFIG_ADDRESS keeps bit 31 and bits 23-0; without the enable bit or off bus 0 data reads all-ones")
    func configAddress() {
        let bridge = PCIHostBridge()
        _ = bridge.portWrite(offset: 0, size: 4, value: 0xFFFF_FFFF)
        #expect(bridge.portRead(offset: 0, size: 4) == 0x80FF_FFFF)
        _ = bridge.portWrite(offset: 0, size: 4, value: 0x0000_0000)
        #expect(bridge.portRead(offset: 4, size: 4) == 0xFFFF_FFFF)
        _ = bridge.portWrite(offset: 0, size: 4, value: address(slot: 0, register: 0, bus: 1))
        #expect(bridge.portRead(offset: 4, size: 2) == 0xFFFF)
        // Byte and word accesses to 0xCF8 do not change CONFIG_ADDRESS.
        _ = bridge.portWrite(offset: 0, size: 1, value: 0)
        #expect(bridge.configAddress == address(slot: 0, register: 0, bus: 1))
    }

    @Test("bits 1-0 of CONFIG_ADDRESS are ORed into the register, as QEMU does: register 2 read at 0xCFC is the device ID")
    func lowAddressBitsSelectBytes() {
        let bridge = PCIHostBridge()
        _ = bridge.portWrite(offset: 0, size: 4, value: address(slot: 0, register: 0) | 2)
        #expect(bridge.portRead(offset: 4, size: 2) == 0x1237)
        #expect(bridge.portRead(offset: 6, size: 2) == 0x1237)  // 2 | 2: the same register
        _ = bridge.portWrite(offset: 0, size: 4, value: address(slot: 0, register: 0xFC) | 3)
        #expect(bridge.portRead(offset: 4, size: 4) == 0)  // byte 0xFF alone (0): nothing past 255 is read
    }

    @Test("a byte write of 0x06 at 0xCF9 reaches the reset control register")
    func resetControlSharesThePort() {
        let bridge = PCIHostBridge(resetControl: ResetControlDevice())
        #expect(bridge.portWrite(offset: 1, size: 1, value: 0x02) == .resume)
        #expect(bridge.portRead(offset: 1, size: 1) == 0x02)
        #expect(bridge.portWrite(offset: 1, size: 1, value: 0x06) == .reset)
        #expect(PCIHostBridge().portWrite(offset: 1, size: 1, value: 0x06) == .resume)
    }

    @Test("writable header fields take writes; identity fields ignore them")
    func writeMasks() {
        let bridge = PCIHostBridge()
        write(bridge, slot: 0, register: 0, value: 0)
        #expect(read(bridge, slot: 0, register: 0) == 0x1237_8086)
        write(bridge, slot: 0, register: 0x04, size: 2, value: 0xFFFF)
        #expect(read(bridge, slot: 0, register: 0x04, size: 2) == 0x0547)
        write(bridge, slot: 0, register: 0x3C, size: 1, value: 11)
        #expect(read(bridge, slot: 0, register: 0x3C, size: 1) == 11)
    }

    @Test("BAR size probing: all-ones reads back the size mask with the type bits")
    func barProbing() throws {
        var space = PCIConfigurationSpace(vendorID: 0x1AF4, deviceID: 0x1000, classCode: 0x02_0000)
        try space.setBAR(0, size: 32, kind: .io)
        try space.setBAR(1, size: 4096, kind: .memory32(prefetchable: false))
        try space.setBAR(2, size: 1 << 33, kind: .memory64(prefetchable: true))
        let bridge = PCIHostBridge()
        try bridge.attach(PCIFunction(name: "test-nic", configuration: space), slot: 3)
        for register: UInt8 in [0x10, 0x14, 0x18, 0x1C, 0x20] { write(bridge, slot: 3, register: register, value: 0xFFFF_FFFF) }
        #expect(read(bridge, slot: 3, register: 0x10) == 0xFFFF_FFE1)
        #expect(read(bridge, slot: 3, register: 0x14) == 0xFFFF_F000)
        #expect(read(bridge, slot: 3, register: 0x18) == 0x0000_000C)
        #expect(read(bridge, slot: 3, register: 0x1C) == 0xFFFF_FFFE)
        #expect(read(bridge, slot: 3, register: 0x20) == 0)  // BAR 4 unused
        write(bridge, slot: 3, register: 0x18, value: 0x4000_0000)
        write(bridge, slot: 3, register: 0x1C, value: 0x0000_0004)
        write(bridge, slot: 3, register: 0x10, value: 0xC001)
        let function = try #require(bridge.device(slot: 3) as? PCIFunction)
        #expect(function.configuration.barAddress(2) == 0x4_0000_0000)
        #expect(function.configuration.barAddress(0) == 0xC000)
        #expect(function.configuration.barAddress(1) == 0xFFFF_F000)
    }

    @Test("invalid BARs and addresses are refused with a reason")
    func errors() throws {
        var space = PCIConfigurationSpace(vendorID: 1, deviceID: 2, classCode: 0)
        #expect(throws: PCIError.self) { try space.setBAR(5, size: 4096, kind: .memory64(prefetchable: false)) }
        #expect(throws: PCIError.self) { try space.setBAR(0, size: 3000, kind: .memory32(prefetchable: false)) }
        #expect(throws: PCIError.self) { try space.setBAR(0, size: 8, kind: .memory32(prefetchable: false)) }
        #expect(throws: PCIError.self) { try space.setBAR(0, size: 512, kind: .io) }
        let bridge = PCIHostBridge()
        #expect(throws: PCIError.slotTaken(slot: 0, function: 0)) { try bridge.attach(PCIFunction.i440FXHostBridge(), slot: 0) }
        #expect(throws: PCIError.invalidAddress(slot: 32, function: 0)) { try bridge.attach(PCIFunction.i440FXHostBridge(), slot: 32) }
    }

    @Test("capabilities link from 0x34 with status bit 4, dword-aligned from 0x40")
    func capabilityList() throws {
        var space = PCIConfigurationSpace(vendorID: 1, deviceID: 2, classCode: 0)
        #expect(space.read(offset: 0x06, size: 2) & 0x10 == 0)
        let msi = try space.addCapability(id: 0x05, body: Array(repeating: 0, count: 12))
        let vendor = try space.addCapability(id: 0x09, body: [3, 0xAB])
        #expect(msi == 0x40)
        #expect(vendor == 0x50)
        #expect(space.read(offset: 0x06, size: 2) & 0x10 != 0)
        #expect(space.read(offset: 0x34, size: 1) == 0x40)
        #expect(space.read(offset: 0x40, size: 2) == 0x5005)
        #expect(space.read(offset: 0x50, size: 4) == 0xAB03_0009)
        #expect(throws: PCIError.capabilitySpaceFull(id: 0x11)) { try space.addCapability(id: 0x11, body: Array(repeating: 0, count: 200)) }
    }
}

@Suite("PCI host bridge under KVM", .requiresKVM, .serialized)
struct PCIHostBridgeKVMTests {
    @Test("a long-mode guest scanning bus 0 finds only the host bridge, 8086:1237 at slot 0")
    func guestBusScan() throws {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        try vm.devices.register(PCIHostBridge(), port: PCIHostBridge.basePort, count: PCIHostBridge.portCount)
        try vm.load(GuestProgram.longMode { a in
            // for slot in 0..<32: CONFIG_ADDRESS = 0x80000000 | slot << 11; if vendor != 0xFFFF,
            // report slot then the vendor:device dword on port 0x77.
            let scan = a.label()
            let absent = a.label()
            a.mov(Register32.ebx, 0x8000_0000)
            a.mov(Register32.ecx, 0)
            a.bind(scan)
            a.mov(Register16.dx, 0xCF8)
            a.mov(Register32.eax, Register32.ebx)
            a.out(Register16.dx, Register32.eax)
            a.mov(Register16.dx, 0xCFC)
            a.in(Register16.ax, Register16.dx)
            a.cmp(Register16.ax, 0xFFFF)
            a.je(absent)
            a.mov(Register32.eax, Register32.ecx)
            a.out(0x77, Register32.eax)
            a.in(Register32.eax, Register16.dx)
            a.out(0x77, Register32.eax)
            a.bind(absent)
            a.add(Register32.ebx, 0x800)
            a.inc(Register32.ecx)
            a.cmp(Register32.ecx, 32)
            a.jne(scan)
            a.debugExit(code: 0)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 0))
        #expect(recorder.accesses.map { $0.values[0] } == [0, 0x1237_8086])
    }
}
