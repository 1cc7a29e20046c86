// QEMU's pci-testdev as kvm-unit-tests drives it (PCITestDevice): found through configuration
// mechanism #1, its BARs reached through the root bridge's memory and I/O windows, its eventfd
// tests absorbed by KVM (KVM_IOEVENTFD, MMIO and port I/O).

@testable import HVCore
import HVGuest
import HVModel
import Synchronization
import Testing

/// Notifier calls as the device makes them.
private final class NotifierLog: Sendable {
    let calls = Mutex<[String]>([])
    var notifiers: PCITestDevice.WriteNotifiers {
        PCITestDevice.WriteNotifiers(
            add: { space, address, length, value, _ in self.calls.withLock { $0.append("add \(space) 0x\(String(address, radix: 16)) \(length) \(value.map { "0x" + String($0, radix: 16) } ?? "any")") } },
            remove: { space, address, _, _, _ in self.calls.withLock { $0.append("remove \(space) 0x\(String(address, radix: 16))") } })
    }
    func take() -> [String] { calls.withLock { calls in defer { calls = [] }; return calls } }
}

@Suite("pci-testdev")
struct PCITestDeviceTests {
    let memoryWindow = PCIWindow(space: .memory)
    let ioWindow = PCIWindow(space: .io)

    private func device(_ notifiers: PCITestDevice.WriteNotifiers? = nil) -> PCITestDevice {
        let device = PCITestDevice(notifiers: notifiers)
        device.assign(memory: 0xC000_1000, io: 0xC100)
        memoryWindow.add(device)
        ioWindow.add(device)
        return device
    }

    private func write(_ space: PCIAddressSpace, _ offset: UInt64, _ value: UInt64, width: Int = 1) {
        if space == .memory {
            _ = memoryWindow.mmioWrite(offset: 0x1000 + offset, width: width, value: value)
        } else {
            _ = ioWindow.portWrite(offset: UInt16(0x100 + offset), size: width, value: UInt32(value))
        }
    }

    private func read(_ space: PCIAddressSpace, _ offset: UInt64, width: Int = 1) -> UInt64 {
        space == .memory ? memoryWindow.mmioRead(offset: 0x1000 + offset, width: width)
            : UInt64(ioWindow.portRead(offset: UInt16(0x100 + offset), size: width))
    }

    /// The selected test's name, read byte by byte from offset 16 as the guest does.
    private func name(_ space: PCIAddressSpace) -> String {
        var bytes: [UInt8] = []
        for offset in UInt64(16)..<64 {
            let byte = UInt8(read(space, offset))
            if byte == 0 { break }
            bytes.append(byte)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test("1b36:0005, class 0xFF, no interrupt pin; BAR 0 sizes as 4 KiB of memory, BAR 1 as 256 I/O ports")
    func identityAndBARs() {
        let device = PCITestDevice(notifiers: nil)
        #expect(device.configurationRead(offset: 0, size: 4) == 0x0005_1B36)
        #expect(device.configurationRead(offset: 0x08, size: 4) >> 8 == 0xFF_0000)
        #expect(device.configurationRead(offset: PCIConfigurationOffset.interruptPin, size: 1) == 0)
        device.configurationWrite(offset: 0x10, size: 4, value: 0xFFFF_FFFF)
        device.configurationWrite(offset: 0x14, size: 4, value: 0xFFFF_FFFF)
        #expect(device.configurationRead(offset: 0x10, size: 4) == 0xFFFF_F000)
        #expect(device.configurationRead(offset: 0x14, size: 4) == 0xFFFF_FF01)
    }

    @Test("each BAR's three tests: header, name, offset and data as QEMU gives them; writes at the offset count, only those of the data byte except in the wildcard test", arguments: [PCIAddressSpace.memory, .io])
    func testsCountWrites(_ space: PCIAddressSpace) {
        _ = device()
        let base: UInt64 = space == .memory ? 2048 : 128
        let prefix = space == .memory ? "mmio-" : "portio-"
        for (number, kind) in ["no-eventfd", "wildcard-eventfd", "datamatch-eventfd"].enumerated() {
            write(space, 0, UInt64(number))
            let index = UInt64(number) + (space == .memory ? 0 : 3)
            #expect(read(space, 0) == index)
            #expect(read(space, 1) == 1, "width")
            #expect(read(space, 4, width: 4) == base + index, "offset")
            let data = read(space, 8, width: 4)
            #expect(data == (kind == "wildcard-eventfd" ? 0xCE : 0xFA))
            #expect(name(space) == prefix + kind)
            for _ in 0..<10 { write(space, base + index, data) }
            for _ in 0..<6 { write(space, base + index, 0x11) }
            write(space, base + index + 1, data)  // beside the offset: not counted
            #expect(read(space, 12, width: 4) == (kind == "wildcard-eventfd" ? 16 : 10))
        }
        write(space, 0, 3)  // no such test: deselects
        #expect(read(space, 1) == 0 && read(space, 12, width: 4) == 0)
    }

    @Test("a wide access acts byte by byte (QEMU's 1-byte access size); reads past the header are 0")
    func bytewise() {
        _ = device()
        write(.memory, 0, 0x0000_0000, width: 4)  // selects test 0; bytes 1-3 go nowhere
        #expect(read(.memory, 0, width: 8) == 0x0000_0800_0000_0100)  // test 0, width 1, offset 2048
        write(.memory, 2047, 0x0000_FA00, width: 2)  // byte 0xFA lands on offset 2048: counted
        #expect(read(.memory, 12, width: 4) == 1)
        #expect(read(.memory, 16 + 15, width: 1) == 0, "the name's NUL")
        #expect(read(.memory, 200, width: 4) == 0)
    }

    @Test("the eventfd tests hand their offset to the backend (MMIO address or port, data match) and take it back on deselect, a BAR move and reset")
    func notifiersFollowTheTest() {
        let log = NotifierLog()
        let device = device(log.notifiers)
        write(.memory, 0, 0)
        #expect(log.take() == [] && !device.absorbsWrites, "no-eventfd stays in the VMM")
        write(.memory, 0, 1)
        #expect(log.take() == ["add memory 0xc0001801 1 any"])
        #expect(device.absorbsWrites)
        write(.io, 0, 2)
        #expect(log.take() == ["remove memory 0xc0001801", "add io 0xc185 1 0xfa"])
        device.configurationWrite(offset: 0x14, size: 4, value: 0xC200)  // the guest moves BAR 1
        #expect(log.take() == ["remove io 0xc185", "add io 0xc285 1 0xfa"])
        device.configurationWrite(offset: PCIConfigurationOffset.command, size: 2, value: 0x2)  // I/O decoding off
        #expect(log.take() == ["remove io 0xc285"])
        #expect(!device.absorbsWrites)
        device.configurationWrite(offset: PCIConfigurationOffset.command, size: 2, value: 0x3)
        #expect(log.take() == ["add io 0xc285 1 0xfa"])
        device.reset()
        #expect(log.take() == ["remove io 0xc285"])
        #expect(device.selectedTest == nil)
        #expect(device.configurationRead(offset: 0x14, size: 4) == 0xC101, "firmware's assignment again")
    }

    @Test("a function that does not decode a space is not reached through that window")
    func decodingOff() {
        let device = device()
        device.configurationWrite(offset: PCIConfigurationOffset.command, size: 2, value: 0x1)  // I/O only
        write(.memory, 0, 0)
        #expect(device.selectedTest == nil)
        #expect(read(.memory, 0, width: 4) == 0xFFFF_FFFF, "master abort")
        write(.io, 0, 0)
        #expect(device.selectedTest == PCITestDevice.Test(space: .io, kind: .noEventFD))
        #expect(read(.io, 0x100 - 1, width: 2) == 0xFFFF, "an access that leaves the BAR")
    }
}

@Suite("pci-testdev under KVM", .requiresKVM, .serialized)
struct PCITestDeviceKVMTests {
    @Test("a guest finds 1b36:0005 through 0xCF8/0xCFC as kvm-unit-tests does; KVM absorbs the eventfd tests' writes (MMIO and port I/O), the VMM counts the rest")
    func guestRunsTheTests() throws {
        let vm = try KVMHost.machine { $0.interruptController = .kernel }
        _ = try attachConsole(vm)
        let platform = try vm.attachPCPlatform(acpiTables: false)
        let device = try vm.attachPCITestDevice(platform: platform)
        let slot = try #require((1..<32).first { platform.bus.device(slot: $0) === device })
        let memoryBAR = UInt64(device.configurationRead(offset: 0x10, size: 4) & ~0xF)
        let ioBAR = UInt16(device.configurationRead(offset: 0x14, size: 4) & ~0x3)
        #expect(platform.window.range.contains(memoryBAR) && platform.ioWindow.range.contains(UInt64(ioBAR)))
        try vm.load(GuestProgram.longMode { a in
            // The device ID as kvm-unit-tests' pci_config_readw reads it: register 2, port 0xCFC.
            a.mov(Register32.eax, Immediate(0x8000_0002 | UInt64(slot) << 11)); a.mov(Register16.dx, 0xCF8); a.out(Register16.dx, Register32.eax)
            a.mov(Register16.dx, 0xCFC); a.in(Register16.ax, Register16.dx); a.out(0x77, Register16.ax)
            a.mov(Register64.rbx, Immediate(memoryBAR))
            for number: UInt8 in 0..<3 {
                let offset = 2048 + Int32(number)
                a.mov(Register8.al, Immediate(UInt64(number))); a.mov(.at(Register64.rbx), Register8.al)
                for value: UInt8 in [0xFA, 0xFA, 0xCE, 0x11] {
                    a.mov(Register8.al, Immediate(UInt64(value)))
                    for _ in 0..<4 { a.mov(.at(Register64.rbx, offset), Register8.al) }
                }
                a.mov(Register32.eax, .at(Register64.rbx, 12)); a.out(0x77, Register32.eax)
            }
            for number: UInt8 in 0..<3 {
                let port = ioBAR + 128 + 3 + UInt16(number)
                a.mov(Register16.dx, Immediate(UInt64(ioBAR))); a.mov(Register8.al, Immediate(UInt64(number))); a.out(Register16.dx, Register8.al)
                a.mov(Register16.dx, Immediate(UInt64(port)))
                for value: UInt8 in [0xFA, 0xFA, 0xCE, 0x11] {
                    a.mov(Register8.al, Immediate(UInt64(value)))
                    for _ in 0..<4 { a.out(Register16.dx, Register8.al) }
                }
                a.mov(Register16.dx, Immediate(UInt64(ioBAR + 12))); a.in(Register32.eax, Register16.dx); a.out(0x77, Register32.eax)
            }
            a.debugExit(code: 1)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 1))
        // Per space: the VMM sees all 16 writes of the no-eventfd test and counts the 8 of 0xFA; KVM
        // takes every write of the wildcard test and the 8 writes of 0xFA in the datamatch test,
        // whose other 8 reach the VMM and do not match.
        #expect(recorder.accesses.map { $0.values[0] } == [0x0005, 8, 0, 0, 8, 0, 0])
    }
}
