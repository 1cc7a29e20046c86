// fw_cfg's register model (QEMU docs/specs/fw_cfg.rst) without a VM: selector, data, file
// directory and the DMA interface against a small guest memory.
import CAllocationCounter
import HVCore
import Testing

@Suite("fw_cfg device")
struct FWCfgDeviceTests {
    /// Selects `key` and reads `count` bytes through the data port, as a polling guest does.
    func read(_ device: FWCfgDevice, key: UInt16, count: Int) -> [UInt8] {
        _ = device.portWrite(offset: 0, size: 2, value: UInt32(key))
        return (0..<count).map { _ in UInt8(device.portRead(offset: 1, size: 1)) }
    }

    func littleEndian(_ bytes: [UInt8]) -> UInt64 { bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) } }
    func bigEndian(_ bytes: ArraySlice<UInt8>) -> UInt64 { bytes.reduce(0) { $0 << 8 | UInt64($1) } }

    @Test("the signature, ID, RAM size and CPU count read back through the data port")
    func wellKnownItems() {
        let device = FWCfgDevice(memory: nil, ramSize: 256 << 20, cpuCount: 3)
        #expect(read(device, key: FWCfgDevice.Key.signature, count: 4) == Array("QEMU".utf8))
        #expect(littleEndian(read(device, key: FWCfgDevice.Key.id, count: 4)) == 1)  // no DMA without memory
        #expect(littleEndian(read(device, key: FWCfgDevice.Key.ramSize, count: 8)) == 256 << 20)
        #expect(littleEndian(read(device, key: FWCfgDevice.Key.cpuCount, count: 2)) == 3)
        #expect(littleEndian(read(device, key: FWCfgDevice.Key.maxCPUs, count: 2)) == 3)
    }

    @Test("reads past the end of an item, or of an absent item, return zeros")
    func pastTheEnd() {
        let device = FWCfgDevice(memory: nil, ramSize: 1 << 20, cpuCount: 1)
        #expect(read(device, key: FWCfgDevice.Key.signature, count: 6) == Array("QEMU".utf8) + [0, 0])
        #expect(read(device, key: 0x1234, count: 3) == [0, 0, 0])
    }

    @Test("selecting again rewinds the offset; data writes and the write bit change nothing")
    func reselect() {
        let device = FWCfgDevice(memory: nil, ramSize: 1 << 20, cpuCount: 1)
        _ = device.portWrite(offset: 0, size: 2, value: 0)
        #expect(device.portRead(offset: 1, size: 1) == UInt32(UInt8(ascii: "Q")))
        _ = device.portWrite(offset: 1, size: 1, value: 0x41)
        #expect(device.portRead(offset: 1, size: 1) == UInt32(UInt8(ascii: "E")))
        #expect(read(device, key: 0x4000, count: 1) == [UInt8(ascii: "Q")])
        #expect(device.portRead(offset: 0, size: 2) == 0xFFFF_FFFF)
    }

    @Test("the file directory lists files big-endian, sorted by name, with their keys")
    func fileDirectory() throws {
        let device = FWCfgDevice(memory: nil, ramSize: 1 << 20, cpuCount: 1)
        let first = try device.addFile(named: "opt/zeta", contents: [1, 2, 3])
        let second = try device.addFile(named: "etc/alpha", contents: Array(repeating: 7, count: 300))
        #expect(first == 0x20)
        #expect(second == 0x21)
        let directory = read(device, key: FWCfgDevice.Key.fileDirectory, count: 4 + 2 * 64)
        #expect(bigEndian(directory[0..<4]) == 2)
        #expect(bigEndian(directory[4..<8]) == 300)
        #expect(bigEndian(directory[8..<10]) == 0x21)
        #expect(String(decoding: directory[12..<21], as: UTF8.self) == "etc/alpha")
        #expect(directory[21..<68].allSatisfy { $0 == 0 })
        #expect(bigEndian(directory[68..<72]) == 3)
        #expect(bigEndian(directory[72..<74]) == 0x20)
        #expect(String(decoding: directory[76..<84], as: UTF8.self) == "opt/zeta")
        #expect(read(device, key: first, count: 3) == [1, 2, 3])
    }

    @Test("bad file names and duplicates are refused")
    func fileErrors() throws {
        let device = FWCfgDevice(memory: nil, ramSize: 1 << 20, cpuCount: 1)
        #expect(throws: FWCfgError.invalidFileName("")) { try device.addFile(named: "", contents: []) }
        let long = String(repeating: "x", count: 56)
        #expect(throws: FWCfgError.invalidFileName(long)) { try device.addFile(named: long, contents: []) }
        try device.addFile(named: String(repeating: "x", count: 55), contents: [])
        try device.addFile(named: "etc/a", contents: [])
        #expect(throws: FWCfgError.duplicateFile("etc/a")) { try device.addFile(named: "etc/a", contents: [9]) }
    }

    @Test("the DMA register reads as \"QEMU CFG\" in memory order and the ID has the DMA bit")
    func dmaSignature() throws {
        let memory = try GuestMemory.pcLayout(size: 64 << 10)
        let device = FWCfgDevice(memory: memory, cpuCount: 2)
        #expect(littleEndian(read(device, key: FWCfgDevice.Key.id, count: 4)) == 3)
        let high = device.portRead(offset: 4, size: 4)
        let low = device.portRead(offset: 8, size: 4)
        let bytes = [high, low].flatMap { value in (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
        #expect(String(decoding: bytes, as: UTF8.self) == "QEMU CFG")
        #expect(littleEndian(read(device, key: FWCfgDevice.Key.ramSize, count: 8)) == 64 << 10)
    }

    /// Writes an FWCfgDmaAccess at `at` and starts it the way a guest does: big-endian halves
    /// of the address to 0x514 and 0x518. Returns the control word written back.
    func dma(_ device: FWCfgDevice, _ memory: GuestMemory, at descriptor: UInt64,
             control: UInt32, length: UInt32, address: UInt64) throws -> UInt32 {
        try memory.write(control.byteSwapped, at: GuestPhysicalAddress(descriptor))
        try memory.write(length.byteSwapped, at: GuestPhysicalAddress(descriptor + 4))
        try memory.write(address.byteSwapped, at: GuestPhysicalAddress(descriptor + 8))
        _ = device.portWrite(offset: 4, size: 4, value: UInt32(descriptor >> 32).byteSwapped)
        _ = device.portWrite(offset: 8, size: 4, value: UInt32(truncatingIfNeeded: descriptor).byteSwapped)
        return try memory.read(UInt32.self, at: GuestPhysicalAddress(descriptor)).byteSwapped
    }

    @Test("DMA select+read copies the item, pads with zeros and clears control")
    func dmaRead() throws {
        let memory = try GuestMemory.pcLayout(size: 64 << 10)
        let device = FWCfgDevice(memory: memory, cpuCount: 4)
        let control = FWCfgDevice.DMAControl.select | FWCfgDevice.DMAControl.read | UInt32(FWCfgDevice.Key.signature) << 16
        try memory.write(bytes: [UInt8](repeating: 0xAA, count: 8), at: 0x2000)
        #expect(try dma(device, memory, at: 0x1000, control: control, length: 6, address: 0x2000) == 0)
        #expect(try memory.readBytes(at: 0x2000, count: 8) == Array("QEMU".utf8) + [0, 0, 0xAA, 0xAA])
        // Skip then read continues from the offset; the port and DMA share it.
        let select = FWCfgDevice.DMAControl.select | FWCfgDevice.DMAControl.skip | UInt32(FWCfgDevice.Key.cpuCount) << 16
        #expect(try dma(device, memory, at: 0x1000, control: select, length: 1, address: 0) == 0)
        #expect(device.portRead(offset: 1, size: 1) == 0)
        _ = device.portWrite(offset: 0, size: 2, value: UInt32(FWCfgDevice.Key.cpuCount))
        #expect(try dma(device, memory, at: 0x1000, control: FWCfgDevice.DMAControl.read, length: 2, address: 0x3000) == 0)
        #expect(try memory.read(UInt16.self, at: 0x3000) == 4)
    }

    @Test("a 16 MiB DMA read goes straight into guest memory (no host buffer of the guest's length); skips stop at the item's end")
    func dmaBoundedHostWork() throws {
        let memory = try GuestMemory.pcLayout(size: 32 << 20)
        let device = FWCfgDevice(memory: memory, cpuCount: 2)
        try memory.fill(0xAA, count: 16 << 20, at: GuestPhysicalAddress(0x10_0000))
        let selectAndRead = FWCfgDevice.DMAControl.select | FWCfgDevice.DMAControl.read | UInt32(FWCfgDevice.Key.signature) << 16
        hv_thread_largest_allocation_reset()
        #expect(try dma(device, memory, at: 0x1000, control: selectAndRead, length: 16 << 20, address: 0x10_0000) == 0)
        #expect(hv_thread_largest_allocation() < 64 << 10, "largest host allocation: \(hv_thread_largest_allocation()) bytes")
        #expect(try memory.readBytes(at: GuestPhysicalAddress(0x10_0000), count: 5) == Array("QEMU".utf8) + [0])
        #expect(try memory.read(UInt64.self, at: GuestPhysicalAddress(0x10_0000 + (16 << 20) - 8)) == 0)
        // Skips of ~4 GiB, again and again, leave the offset at the item's end (QEMU clamps too):
        // the next port read finds nothing, and a fresh select starts over.
        let skip = FWCfgDevice.DMAControl.select | FWCfgDevice.DMAControl.skip | UInt32(FWCfgDevice.Key.signature) << 16
        #expect(try dma(device, memory, at: 0x1000, control: skip, length: 0xFFFF_FFFF, address: 0) == 0)
        for _ in 0..<1000 {
            #expect(try dma(device, memory, at: 0x1000, control: FWCfgDevice.DMAControl.skip, length: 0xFFFF_FFFF, address: 0) == 0)
        }
        #expect(device.portRead(offset: 1, size: 1) == 0)
        #expect(read(device, key: FWCfgDevice.Key.signature, count: 4) == Array("QEMU".utf8))
    }

    @Test("DMA targets outside guest RAM, huge lengths and writes report the error bit")
    func dmaBounds() throws {
        let memory = try GuestMemory.pcLayout(size: 64 << 10)
        let device = FWCfgDevice(memory: memory, cpuCount: 1)
        let read = FWCfgDevice.DMAControl.select | FWCfgDevice.DMAControl.read
        #expect(try dma(device, memory, at: 0x1000, control: read, length: 4, address: 0xFFFE) == FWCfgDevice.DMAControl.error)
        #expect(try dma(device, memory, at: 0x1000, control: read, length: 0xFFFF_FFFF, address: 0) == FWCfgDevice.DMAControl.error)
        #expect(try dma(device, memory, at: 0x1000, control: read, length: 4, address: UInt64.max - 1) == FWCfgDevice.DMAControl.error)
        #expect(try dma(device, memory, at: 0x1000, control: FWCfgDevice.DMAControl.write, length: 4, address: 0x2000) == FWCfgDevice.DMAControl.error)
        // A descriptor outside RAM is dropped without touching memory.
        _ = device.portWrite(offset: 4, size: 4, value: 0)
        _ = device.portWrite(offset: 8, size: 4, value: UInt32(0xFFFF_FFF8).byteSwapped)
        #expect(try memory.read(UInt32.self, at: 0x1000).byteSwapped == FWCfgDevice.DMAControl.error)
    }
}

@Suite("fw_cfg under KVM", .requiresKVM, .serialized)
struct FWCfgKVMTests {
    @Test("a long-mode guest reads the signature, RAM size and CPU count through the ports")
    func guestReadsItems() throws {
        // With interrupt controllers only the bootstrap vCPU runs the program; the other waits for SIPI.
        let vm = try KVMHost.machine(memory: 8 << 20, cpus: 2) { $0.interruptController = .kernel }
        _ = try attachConsole(vm)
        let fwcfg = FWCfgDevice(memory: vm.memory, cpuCount: vm.configuration.cpuCount)
        try vm.devices.register(fwcfg, port: FWCfgDevice.basePort, count: FWCfgDevice.portCount)
        try vm.load(GuestProgram.longMode { a in
            // Each item: select it, then read its bytes one by one and report each on port 0x77.
            for (key, count) in [(UInt16(0x00), 4), (0x03, 8), (0x05, 2)] {
                a.mov(Register16.dx, 0x510)
                a.mov(Register16.ax, Immediate(key))
                a.out(Register16.dx, Register16.ax)
                a.mov(Register16.dx, 0x511)
                for _ in 0..<count {
                    a.in(Register8.al, Register16.dx)
                    a.out(0x77, Register8.al)
                }
            }
            a.debugExit(code: 0)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 0))
        let bytes = recorder.accesses.map { UInt8($0.values[0]) }
        #expect(bytes.count == 14)
        #expect(Array(bytes.prefix(4)) == Array("QEMU".utf8))
        #expect(bytes[4..<12].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) } == 8 << 20)
        #expect(UInt16(bytes[12]) | UInt16(bytes[13]) << 8 == 2)
    }

    @Test("a long-mode guest reads the CPU count by DMA")
    func guestReadsByDMA() throws {
        let vm = try KVMHost.machine(memory: 8 << 20, cpus: 3) { $0.interruptController = .kernel }
        _ = try attachConsole(vm)
        try vm.devices.register(FWCfgDevice(memory: vm.memory, cpuCount: 3), port: FWCfgDevice.basePort, count: FWCfgDevice.portCount)
        try vm.load(GuestProgram.longMode { a in
            // FWCfgDmaAccess at 0x9000, big-endian: control = key 0x05 << 16 | select | read,
            // length 2, address 0x9100.
            for (offset, value) in [(UInt64(0), UInt32(0x0005_000A)), (4, 2), (8, 0), (12, 0x9100)] {
                a.mov(Register32.eax, Immediate(value.byteSwapped))
                a.mov(.absolute(0x9000 + offset), Register32.eax)
            }
            a.mov(Register16.dx, 0x514)
            a.mov(Register32.eax, 0)
            a.out(Register16.dx, Register32.eax)
            a.mov(Register16.dx, 0x518)
            a.mov(Register32.eax, Immediate(UInt32(0x9000).byteSwapped))
            a.out(Register16.dx, Register32.eax)
            a.mov(Register32.eax, .absolute(0x9100))
            a.out(0x77, Register32.eax)
            a.mov(Register32.eax, .absolute(0x9000))
            a.out(0x77, Register32.eax)
            a.debugExit(code: 0)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 0))
        #expect(recorder.accesses.map { $0.values[0] } == [3, 0])  // the count, then control cleared
    }
}
