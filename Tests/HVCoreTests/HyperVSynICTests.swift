// Hyper-V enlightenments: the CPU model flag, the CPUID a guest with them sees, and the monitor's
// half of the SynIC (HyperVSynIC, HyperVSINTRoute, HyperVTestDevice) on the scripted backend,
// whose notifiers stand where KVM's irqfds and resamplers are. The guest's side of the message
// handshake is played by writing guest memory as a guest would; KVM's own SynIC runs in the test
// bed (kvm-unit-tests' hyperv_* tests, Documentation/KvmUnitTests.md).

@testable import HVCore
@testable import HVKVM
import Foundation
import Glibc
import HVModel
import Testing

private let messagePage: UInt64 = 0x10000
private let eventPage: UInt64 = 0x11000
private let inputBlock: UInt64 = 0x12000

private func hyperVMachine(cpus: Int = 2, script: [[ScriptedExit]] = []) throws -> Machine<ScriptedBackend> {
    var configuration = VirtualMachineConfiguration(memorySize: 1 << 20, cpuCount: cpus)
    configuration.cpuModel = CPUModel(hyperV: true)
    return try Machine(configuration: configuration, backend: ScriptedBackend(scripts: script))
}

/// SynIC enabled with its message and event pages, as the guest's three WRMSRs leave it.
private func enabled(messageAt message: UInt64 = messagePage, eventsAt events: UInt64 = eventPage) -> HyperVSynICUpdate {
    HyperVSynICUpdate(msr: HyperVMSR.scontrol, control: 1, eventPage: events | 1, messagePage: message | 1)
}

/// An HvPostMessage input block (TLFS 11.11.1) written where the guest would.
private func writePostMessage(_ memory: GuestMemory, connection: UInt32, type: UInt32, payload: [UInt8], size: UInt32? = nil) throws {
    var block = [UInt8](repeating: 0, count: 256)
    for (offset, word) in [(0, connection), (8, type), (12, size ?? UInt32(payload.count))] {
        for byte in 0..<4 { block[offset + byte] = UInt8(truncatingIfNeeded: word >> (byte * 8)) }
    }
    block.replaceSubrange(16..<(16 + payload.count), with: payload)
    try memory.write(bytes: block, at: GuestPhysicalAddress(inputBlock))
}

private func post(_ synic: HyperVSynIC, at address: UInt64 = inputBlock) -> UInt16 {
    synic.hypercall(HyperVHypercall(input: UInt64(HyperVHypercall.postMessage), firstParameter: address, secondParameter: 0))
}

/// How often `fd` (an eventfd) was written since the last call.
private func signals(_ fd: Int32) -> UInt64 {
    var count: UInt64 = 0
    return read(fd, &count, 8) == 8 ? count : 0
}

private func waitUntil(_ condition: () throws -> Bool) rethrows -> Bool {
    for _ in 0..<400 {
        if try condition() { return true }
        usleep(5000)
    }
    return try condition()
}

@Suite("Hyper-V enlightenments")
struct HyperVSynICTests {
    @Test("hv-passthrough parses as QEMU's hv_passthrough; single hv_* flags are refused naming what HV takes")
    func cpuModelFlag() throws {
        #expect(try CPUModel(parsing: "host,hv_passthrough").hyperV)
        #expect(try CPUModel(parsing: "kvm64,hv-passthrough=on,enforce=off").hyperV)
        #expect(try !CPUModel(parsing: "host,hv-passthrough=off").hyperV)
        #expect(try CPUModel(parsing: "host,hv_passthrough").description == "host,hv-passthrough")
        let hidden = try CPUModel(parsing: "host,hv-passthrough,kvm=off")
        #expect(hidden.hyperV && !hidden.exposesBackend && hidden.description == "host,hv-passthrough,kvm=off")
        #expect(throws: ConfigurationError.self) { try CPUModel(parsing: "host,kvm=maybe") }
        do {
            _ = try CPUModel(parsing: "host,hv_synic")
            Issue.record("hv_synic was accepted")
        } catch {
            #expect(error.field == "cpu" && error.value == "hv_synic" && error.expected.contains("hv-passthrough"))
        }
    }

    @Test("the guest sees Hyper-V's leaves at 0x40000000 and KVM's moved to 0x40000100; no synthetic debugger")
    func cpuidLayout() {
        let kvm = [
            CPUIDEntry(function: 1, index: 0, flags: 0, eax: 0x800F12, ebx: 0, ecx: 0, edx: 0),
            CPUIDEntry(function: 0x4000_0000, index: 0, flags: 0, eax: 0x4000_0001, ebx: 0x4B4D_564B, ecx: 0x564B_4D56, edx: 0x4D),
            CPUIDEntry(function: 0x4000_0001, index: 0, flags: 0, eax: 0x0100_7AFB, ebx: 0, ecx: 0, edx: 0),
        ]
        let hyperV = [
            CPUIDEntry(function: 0x4000_0000, index: 0, flags: 0, eax: 0x4000_000A, ebx: 0x7578_6E4C, ecx: 0x4D56_4B20, edx: 0x7648_2020),
            CPUIDEntry(function: 0x4000_0001, index: 0, flags: 0, eax: 0x3123_7648, ebx: 0, ecx: 0, edx: 0),
            CPUIDEntry(function: 0x4000_0003, index: 0, flags: 0, eax: 0x7FFF, ebx: 0, ecx: 0, edx: 0x000B_FFFF),
            CPUIDEntry(function: 0x4000_0080, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0),
        ]
        let entries = KVMVirtualMachine.withHyperV(kvm, hyperV: hyperV)
        func leaf(_ function: UInt32) -> CPUIDEntry? { entries.first { $0.function == function } }
        #expect(leaf(1) == kvm[0])
        let vendor = leaf(0x4000_0000).map { entry in [entry.ebx, entry.ecx, entry.edx].flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> ($0 * 8)) } } }
        #expect(vendor.map { String(decoding: $0, as: UTF8.self) } == "Microsoft Hv", "Hyper-V's vendor signature first, as Linux checks it")
        #expect(leaf(0x4000_0000)?.eax == 0x4000_000A)
        #expect(leaf(0x4000_0001)?.eax == 0x3123_7648, "interface 'Hv#1'")
        #expect(leaf(0x4000_0100)?.ebx == 0x4B4D_564B && leaf(0x4000_0100)?.eax == 0x4000_0101, "KVMKVMKVM one block up, its max leaf too")
        #expect(leaf(0x4000_0101)?.eax == 0x0100_7AFB)
        #expect(leaf(0x4000_0003)?.edx == 0x000B_F7FF, "debug MSRs (EDX bit 11) left out")
        #expect(leaf(0x4000_0080) == nil)
        #expect(entries.count == 6)
    }

    @Test("HvPostMessage's input block: connection id in 24 bits, payload size checked against 240")
    func postMessageInput() throws {
        var block = [UInt8](repeating: 0, count: 256)
        block[0] = 0x11; block[3] = 0xFF  // connection 0xFF000011: the top byte is not part of the id
        block[8] = 0x78; block[9] = 0x56; block[10] = 0x34; block[11] = 0x12
        block[12] = 3
        block[16] = 0xA; block[17] = 0xB; block[18] = 0xC
        let (connection, message) = try HyperVMessage.postMessageInput(block).get()
        #expect(connection == 0x11 && message.type == 0x1234_5678 && message.payload == [0xA, 0xB, 0xC])
        block[12] = 241
        #expect(throws: HyperVStatusError(HyperVStatus.invalidHypercallInput)) { try HyperVMessage.postMessageInput(block).get() }
        block[12] = 0xFF; block[15] = 0xFF  // a size near 2^32 does not wrap
        #expect(throws: HyperVStatusError(HyperVStatus.invalidHypercallInput)) { try HyperVMessage.postMessageInput(block).get() }
        #expect(throws: HyperVStatusError(HyperVStatus.insufficientMemory)) { try HyperVMessage.postMessageInput(Array(block[0..<100])).get() }
    }

    @Test("a message goes into its SINT's slot and raises the SINT; a busy slot gets msg_pending and the message follows the guest's EOM")
    func messageHandshake() throws {
        let vm = try hyperVMachine()
        let synic = try #require(vm.hyperV)
        synic.synicChanged(enabled(), vp: 1)
        let device = try vm.attachHyperVTestDevice()
        try device.perform(.connectMessages, processor: 1, sint: 8, connection: 0x11)
        let notifier = try #require(vm.vm.syntheticInterruptNotifiers.values.first { $0.vpIndex == 1 && $0.sint == 8 })
        let ack = try #require(notifier.ackFD)
        let slot = GuestPhysicalAddress(messagePage + 8 * 256)

        try writePostMessage(vm.memory, connection: 0x11, type: 0x1234_5678, payload: [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(post(synic) == HyperVStatus.success)
        #expect(try vm.memory.read(UInt32.self, at: slot) == 0x1234_5678)
        #expect(try vm.memory.readBytes(at: slot.advanced(by: 4)!, count: 2) == [8, 0], "payload size 8, no flags")
        #expect(try vm.memory.readBytes(at: slot.advanced(by: 16)!, count: 8) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(signals(notifier.eventFD) == 1)

        // The guest has not read it yet: the next one waits, flagged, and the call still succeeds.
        try writePostMessage(vm.memory, connection: 0x11, type: 0x1234_5678, payload: [9, 9, 9, 9, 9, 9, 9, 9])
        #expect(post(synic) == HyperVStatus.success)
        #expect(try vm.memory.readBytes(at: slot.advanced(by: 4)!, count: 2) == [8, 1], "msg_pending set")
        #expect(try vm.memory.readBytes(at: slot.advanced(by: 16)!, count: 1) == [1], "the first message stays")
        #expect(signals(notifier.eventFD) == 0)
        // A third while one waits: no buffer for it.
        #expect(post(synic) == HyperVStatus.insufficientBuffers)

        // The guest frees the slot and writes EOM; KVM's resampler signals the route.
        try vm.memory.write(UInt32(0), at: slot)
        var one: UInt64 = 1
        _ = write(ack, &one, 8)
        #expect(try waitUntil { try vm.memory.read(UInt32.self, at: slot) == 0x1234_5678 })
        #expect(try vm.memory.readBytes(at: slot.advanced(by: 4)!, count: 2) == [8, 0], "delivered, msg_pending clear")
        #expect(try vm.memory.readBytes(at: slot.advanced(by: 16)!, count: 8) == [9, 9, 9, 9, 9, 9, 9, 9])
        #expect(waitUntil { signals(notifier.eventFD) == 1 })
        // An acknowledgement with nothing waiting changes nothing.
        _ = write(ack, &one, 8)
        usleep(20000)
        #expect(try vm.memory.readBytes(at: slot.advanced(by: 16)!, count: 1) == [9])
    }

    @Test("HvPostMessage input the guest gets wrong is answered with the TLFS status, never a trap")
    func postMessageErrors() throws {
        let vm = try hyperVMachine()
        let synic = try #require(vm.hyperV)
        let device = try vm.attachHyperVTestDevice()
        try device.perform(.connectMessages, processor: 0, sint: 2, connection: 0x30)
        try writePostMessage(vm.memory, connection: 0x30, type: 1, payload: [1])
        #expect(post(synic) == HyperVStatus.invalidHypercallInput, "processor 0 has no message page")
        #expect(synic.hypercall(HyperVHypercall(input: 0x5C | 1 << 16, firstParameter: inputBlock, secondParameter: 0))
            == HyperVStatus.invalidHypercallCode, "no fast HvPostMessage")
        #expect(post(synic, at: inputBlock + 4) == HyperVStatus.invalidAlignment)
        #expect(post(synic, at: (1 << 20) - 8) == HyperVStatus.insufficientMemory, "the block runs past RAM")
        #expect(post(synic, at: UInt64.max & ~7) == HyperVStatus.insufficientMemory)
        try writePostMessage(vm.memory, connection: 0x31, type: 1, payload: [1])
        #expect(post(synic) == HyperVStatus.invalidConnectionID)
        try writePostMessage(vm.memory, connection: 0x30, type: 1, payload: [], size: 241)
        #expect(post(synic) == HyperVStatus.invalidHypercallInput)
        #expect(synic.hypercall(HyperVHypercall(input: 0x99, firstParameter: 0, secondParameter: 0)) == HyperVStatus.invalidHypercallCode)
        // A message page at the top of the address space is not RAM: nothing is written.
        synic.synicChanged(enabled(messageAt: 0xFFFF_FFFF_FFFF_F000), vp: 0)
        try writePostMessage(vm.memory, connection: 0x30, type: 1, payload: [1])
        #expect(post(synic) == HyperVStatus.invalidHypercallInput)
    }

    @Test("an event connection sets its flag in the SINT's event slot, from the in-kernel eventfd or from the hypercall")
    func eventFlags() throws {
        let vm = try hyperVMachine()
        let synic = try #require(vm.hyperV)
        synic.synicChanged(enabled(), vp: 0)
        let device = try vm.attachHyperVTestDevice()
        try device.perform(.connectEvents, processor: 0, sint: 9, connection: 0x21)
        let notifier = try #require(vm.vm.syntheticInterruptNotifiers.values.first { $0.sint == 9 })
        let flags = GuestPhysicalAddress(eventPage + 9 * 256)
        // KVM signals the eventfd it was given for connection 0x21 (KVM_HYPERV_EVENTFD).
        let kernelFD = try #require(vm.vm.hyperVEventNotifiers[0x21])
        var one: UInt64 = 1
        _ = write(kernelFD, &one, 8)
        #expect(try waitUntil { try vm.memory.read(UInt64.self, at: flags) == 1 << 0x21 })
        #expect(waitUntil { signals(notifier.eventFD) == 1 })
        // The same connection through the hypercall (a backend without the in-kernel path): the
        // flag is already set, so no second SINT.
        let fast = UInt64(HyperVHypercall.signalEvent) | 1 << 16
        #expect(synic.hypercall(HyperVHypercall(input: fast, firstParameter: 0x21, secondParameter: 0)) == HyperVStatus.success)
        #expect(signals(notifier.eventFD) == 0)
        try vm.memory.write(UInt64(0), at: flags)
        try vm.memory.write(UInt64(0x21), at: GuestPhysicalAddress(inputBlock))
        #expect(synic.hypercall(HyperVHypercall(input: UInt64(HyperVHypercall.signalEvent), firstParameter: inputBlock, secondParameter: 0))
            == HyperVStatus.success)
        #expect(try vm.memory.read(UInt64.self, at: flags) == 1 << 0x21)
        #expect(signals(notifier.eventFD) == 1)
        for (parameter, status) in [(UInt64(0x1234), HyperVStatus.invalidConnectionID), (1 << 32 | 0x21, HyperVStatus.invalidPortID),
                                    (1 << 60, HyperVStatus.invalidHypercallInput)] {
            #expect(synic.hypercall(HyperVHypercall(input: fast, firstParameter: parameter, secondParameter: 0)) == status)
        }
        try device.perform(.disconnectEvents, processor: 0, sint: 0, connection: 0x21)
        #expect(vm.vm.hyperVEventNotifiers[0x21] == nil)
        #expect(vm.vm.syntheticInterruptNotifiers.isEmpty)
        #expect(synic.hypercall(HyperVHypercall(input: fast, firstParameter: 0x21, secondParameter: 0)) == HyperVStatus.invalidConnectionID)
    }

    @Test("through the run loop: the guest's SynIC writes are recorded, the test device's routes raise SINTs, unknown hypercalls fail")
    func runLoop() throws {
        let update = enabled()
        let vm = try hyperVMachine(cpus: 1, script: [[
            .hyperVSynIC(update),
            .portOut(port: HyperVTestDevice.controlPort, size: 4, values: [1 << 16 | 0 << 8 | 5]),  // create route 0/5
            .portOut(port: HyperVTestDevice.controlPort, size: 4, values: [3 << 16 | 0 << 8 | 5]),  // raise it
            .portOut(port: HyperVTestDevice.controlPort, size: 4, values: [3 << 16 | 200 << 8 | 5]),  // no such route: ignored
            .portOut(port: HyperVTestDevice.controlPort, size: 2, values: [0x1234]),  // not a 32-bit write: ignored
            .hyperVHypercall(HyperVHypercall(input: 0x8001, firstParameter: 0, secondParameter: 0)),
            .halt,
        ]])
        let device = try vm.attachHyperVTestDevice()
        let result = try vm.run()
        #expect(result.reason == .halted)
        #expect(vm.hyperV?.registers(of: 0) == update)
        #expect(device.routeCount == 1)
        let notifier = try #require(vm.vm.syntheticInterruptNotifiers.values.first)
        #expect(notifier.vpIndex == 0 && notifier.sint == 5)
        #expect(signals(notifier.eventFD) == 1)
        #expect(vm.vcpus[0].completions[5].action == .resumeWith(UInt64(HyperVStatus.invalidHypercallCode)))
        // A reset forgets what the guest set up, and the device's routes.
        device.reset()
        vm.hyperV?.reset()
        #expect(device.routeCount == 0 && vm.vm.syntheticInterruptNotifiers.isEmpty)
        #expect(vm.hyperV?.registers(of: 0)?.isEnabled == false)
    }

    @Test("without hv-passthrough there is no SynIC: hypercalls fail as on hardware without Hyper-V, the test device is refused")
    func withoutEnlightenments() throws {
        let vm = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20),
                             backend: ScriptedBackend(script: [.hyperVHypercall(HyperVHypercall(input: 0x5C, firstParameter: 0, secondParameter: 0)), .halt]))
        #expect(vm.hyperV == nil)
        #expect(throws: HVError.self) { try vm.attachHyperVTestDevice() }
        _ = try vm.run()
        #expect(vm.vcpus[0].completions[0].action == .resumeWith(UInt64(HyperVStatus.invalidHypercallCode)))
    }

    @Test("routes are checked: processor and SINT in range")
    func routeBounds() throws {
        let vm = try hyperVMachine()
        let synic = try #require(vm.hyperV)
        #expect(throws: HVError.self) { _ = try synic.route(toProcessor: 2, sint: 0) }
        #expect(throws: HVError.self) { _ = try synic.route(toProcessor: 0, sint: 16) }
        #expect(throws: HVError.self) { _ = try synic.route(toProcessor: -1, sint: 0) }
        let route = try synic.route(toProcessor: 1, sint: 15)
        route.close()
        route.close()
        #expect(vm.vm.syntheticInterruptNotifiers.isEmpty)
    }

    @Test("on KVM: hv-passthrough needs a kernel that emulates Hyper-V and the in-kernel irqchip, and says which is missing",
          .requiresKVM)
    func kvmRequirements() throws {
        let backend = try KVMBackend()
        let capable = [KVMCapability.hyperVSynIC2, .hyperVCPUID, .irqfdResample].allSatisfy { backend.check($0) != 0 }
        do {
            let vm = try KVMHost.machine(cpus: 2) { $0.interruptController = .kernel; $0.cpuModel = CPUModel(hyperV: true) }
            #expect(capable, "a kernel without Hyper-V emulation was accepted")
            #expect(vm.hyperV?.processorCount == 2)
        } catch {
            #expect(!capable, "\(error)")
            #expect("\(error)".contains("KVM_CAP_"), "the error names the capability: \(error)")
        }
        // kvm=off: KVM's own leaves (signature, kvm-clock, PV features) are not in the guest's table.
        let plain = try KVMHost.machine { $0.interruptController = .kernel }
        let hidden = try KVMHost.machine { $0.interruptController = .kernel; $0.cpuModel = try? CPUModel(parsing: "host,kvm=off") }
        #expect(plain.vm.cpuid.contains { $0.function == 0x4000_0000 }, "KVM reports its signature leaf")
        #expect(!hidden.vm.cpuid.contains { $0.function >= 0x4000_0000 && $0.function < 0x4000_0100 })
        if capable {
            #expect(throws: HVError.self) {
                _ = try KVMHost.machine { $0.interruptController = .split; $0.cpuModel = CPUModel(hyperV: true) }
            }
        }
    }
}
