// QEMU's pc-testdev as kvm-unit-tests uses it (PCTestDevice), the PICs a kernel finds
// initialised on the BIOS's vectors, and CPU models narrowing the CPUID a guest sees.

@testable import HVCore
@testable import HVKVM
import HVGuest
import HVModel
import Synchronization
import Testing
import Foundation

/// Port and MMIO accesses through the bus, as a vCPU's exits reach it.
private extension DeviceBus {
    func portWrite(port: UInt16, size: Int, value: UInt32) {
        _ = withPortIO(IOPort(port), size: size, elements: [value]) { handle(.portOut($0), context: ExitContext(vcpuID: 0)) }
    }
    func portRead(port: UInt16, size: Int) -> UInt32? {
        let (action, values) = withPortIO(IOPort(port), size: size, elements: [0]) { handle(.portIn($0), context: ExitContext(vcpuID: 0)) }
        return action == .resume ? values[0] : nil
    }
    func mmioWrite(address: GuestPhysicalAddress, width: Int, value: UInt64) {
        _ = handle(.mmioWrite(MMIOAccess(address: address, width: UInt8(width), value: value)), context: ExitContext(vcpuID: 0))
    }
    func mmioRead(address: GuestPhysicalAddress, width: Int) -> UInt64? {
        guard case .resumeWith(let value)? = handle(.mmioRead(MMIOAccess(address: address, width: UInt8(width), value: 0)),
                                                   context: ExitContext(vcpuID: 0)) else { return nil }
        return value
    }
}

@Suite("pc-testdev registers")
struct PCTestDeviceRegisterTests {
    private func device(lines: [InterruptLine?] = []) throws -> (PCTestDevice, DeviceBus, GuestMemory) {
        let memory = try GuestMemory(regions: [MemoryRegion(guestAddress: 0, size: 1 << 20)])
        let device = PCTestDevice(memory: memory, lines: lines)
        let bus = DeviceBus()
        try device.register(on: bus)
        return (device, bus, memory)
    }

    @Test("the data register at 0xE0: each access replaces and returns its own bytes; 0xE8 reaches the same register")
    func dataRegister() throws {
        let (device, bus, _) = try device()
        bus.portWrite(port: 0xE0, size: 4, value: 0x1122_3344)
        #expect(bus.portRead(port: 0xE1, size: 1) == 0x33)
        bus.portWrite(port: 0xE2, size: 2, value: 0xAABB)
        #expect(device.dataValue == 0xAABB_3344)
        #expect(bus.portRead(port: 0xE0, size: 2) == 0x3344)
        #expect(bus.portRead(port: 0xE8, size: 4) == 0xAABB_3344)
        bus.portWrite(port: 0xEB, size: 1, value: 0x99)
        #expect(bus.portRead(port: 0xE0, size: 4) == 0x99BB_3344)
    }

    @Test("the scratch window at 0xFF000000 keeps what each width writes; an access past its end is not the device's")
    func scratchWindow() throws {
        let (device, bus, _) = try device()
        let base = GuestPhysicalAddress(PCTestDevice.scratchAddress)
        bus.mmioWrite(address: base, width: 8, value: 0x0807_0605_0403_0201)
        #expect(bus.mmioRead(address: GuestPhysicalAddress(base.rawValue + 2), width: 2) == 0x0403)
        #expect(device.scratchBytes(at: 0, count: 8) == [1, 2, 3, 4, 5, 6, 7, 8])
        let last = GuestPhysicalAddress(base.rawValue + UInt64(PCTestDevice.scratchSize) - 2)
        bus.mmioWrite(address: last, width: 2, value: 0xBBAA)
        #expect(device.scratchBytes(at: PCTestDevice.scratchSize - 2, count: 2) == [0xAA, 0xBB])
        #expect(bus.mmioRead(address: last, width: 4) == nil, "the bus declines an access that leaves the window")
        // Ranges partly or wholly outside the window give the part inside, never a trap.
        #expect(device.scratchBytes(at: -6, count: 8) == [1, 2])
        #expect(device.scratchBytes(at: PCTestDevice.scratchSize - 1, count: .max) == [0xBB])
        #expect(device.scratchBytes(at: .max, count: .max) == [] && device.scratchBytes(at: .min, count: -1) == [])
    }

    @Test("ports 0x2000+n drive ISA line n (0 low, anything else high); a line without a controller and the flush port of a page outside RAM do nothing")
    func interruptLinesAndFlush() throws {
        let controller = RecordingController()
        let lines = (0..<PCTestDevice.irqLineCount).map { $0 == 5 ? nil : InterruptLine(controller: controller, gsi: UInt32($0)) }
        let (_, bus, memory) = try device(lines: lines)
        bus.portWrite(port: 0x200B, size: 1, value: 1)
        bus.portWrite(port: 0x200B, size: 1, value: 0)
        bus.portWrite(port: 0x2000, size: 1, value: 0x80)
        bus.portWrite(port: 0x2005, size: 1, value: 1)
        #expect(controller.levels.withLock { $0.map { "\($0.gsi):\($0.high)" } } == ["11:true", "11:false", "0:true"])
        try memory.write(UInt32(0xCAFE), at: GuestPhysicalAddress(0x3000))
        bus.portWrite(port: 0xE4, size: 4, value: 0x3123)     // the page at 0x3000
        bus.portWrite(port: 0xE4, size: 4, value: 0xF000_0000) // no RAM there
        #expect(try memory.read(UInt32.self, at: GuestPhysicalAddress(0x3000)) == 0xCAFE, "the page keeps its contents")
    }
}

@Suite("PC platform under KVM: test devices, PICs, CPU models", .requiresKVM, .serialized)
struct PCFidelityKVMTests {
    @Test("a real-mode guest pulses IRQ 11 through pc-testdev and takes it on vector 0x73, where a BIOS's PIC puts it (kvm-unit-tests' realmode sti test)")
    func irqLineReachesTheBIOSVector() throws {
        let vm = try KVMHost.machine(memory: 2 << 20) { $0.interruptController = .kernel }
        _ = try attachConsole(vm)
        try vm.attachPCPlatform(acpiTables: false)
        try vm.attachTestDevices()
        try vm.load(GuestProgram.realMode { a in
            let handler = a.label()
            a.mov(Register16.ax, handler)
            a.mov(.absolute(0x73 * 4), Register16.ax)    // IVT[0x73] = 0000:handler
            a.mov(Register16.ax, 0)
            a.mov(.absolute(0x73 * 4 + 2), Register16.ax)
            a.mov(Register16.dx, 0x200B)
            a.mov(Register8.al, 1)
            a.out(Register16.dx, Register8.al)               // IRQ 11 high...
            a.mov(Register8.al, 0)
            a.out(Register16.dx, Register8.al)               // ...and low again: the edge is latched
            a.sti()
            a.hlt()                                          // woken by the interrupt
            a.debugExit(code: 1)
            a.bind(handler)
            a.mov(Register8.al, 0x73)
            a.out(0x77, Register8.al)
            a.iret()
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 1))
        #expect(recorder.accesses.map { $0.values[0] } == [0x73])
    }

    /// CPUID leaf `function` (subleaf 0) as a long-mode guest sees it: EAX, EBX, ECX, EDX.
    private func guestCPUID(_ function: UInt32, model: CPUModel?) throws -> [UInt32] {
        let vm = try KVMHost.machine { $0.interruptController = .kernel; $0.cpuModel = model }
        _ = try attachConsole(vm)
        try vm.load(GuestProgram.longMode { a in
            a.mov(Register32.eax, Immediate(function))
            a.mov(Register32.ecx, 0)
            a.cpuid()
            a.out(0x77, Register32.eax)
            a.mov(Register32.eax, Register32.ebx)
            a.out(0x77, Register32.eax)
            a.mov(Register32.eax, Register32.ecx)
            a.out(0x77, Register32.eax)
            a.mov(Register32.eax, Register32.edx)
            a.out(0x77, Register32.eax)
            a.debugExit(code: 1)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 1))
        return recorder.accesses.map { $0.values[0] }
    }

    @Test("a CPU model's edits are what the guest's CPUID says: -x2apic, +tsc-deadline, qemu64 without leaf 7 features, a vendor")
    func modelEditsReachTheGuest() throws {
        let host1 = try guestCPUID(1, model: nil)
        try #require(host1.count == 4)
        #expect(host1[2] & 1 << 21 != 0, "KVM gives x2APIC by default")
        let edited = try guestCPUID(1, model: try CPUModel(parsing: "host,-x2apic,+tsc-deadline"))
        #expect(edited[2] & 1 << 21 == 0 && edited[2] & 1 << 24 != 0)
        #expect(edited[3] == host1[3], "EDX untouched")
        // Leaf 7 reaches the guest from the table only where KVM runs guest code on VT-x/AMD-V:
        // this host's emulating KVM answers it from the CPU underneath (Documentation/HostFacts.md).
        let hostLeaf7 = try guestCPUID(7, model: nil)
        let table7 = try #require(try KVMBackend().supportedCPUID().first { $0.function == 7 && $0.index == 0 })
        if hostLeaf7[1] == table7.ebx {
            let leaf7 = try guestCPUID(7, model: try CPUModel(parsing: "qemu64,+umip"))
            #expect(leaf7[1] == 0, "qemu64 has no leaf 7 EBX features")
            #expect(leaf7[2] == table7.ecx & 1 << 2, "only UMIP (if the host has it) in ECX")
        }
        let vendor = try guestCPUID(0, model: try CPUModel(parsing: "host,vendor=GenuineIntel"))
        let bytes = [vendor[1], vendor[3], vendor[2]].flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> ($0 * 8)) } }
        #expect(String(decoding: bytes, as: UTF8.self) == "GenuineIntel")
    }

    @Test("a feature the host cannot give is refused by name, or left out with enforce=off")
    func missingFeatureRefused() throws {
        let supported = try KVMBackend().supportedCPUID()
        // VMX and SVM are never both there; LA57 and PKS are missing on most hosts.
        let missing = try #require(["vmx", "svm", "la57", "pks"].compactMap(CPUFeature.named).first { feature in
            !supported.contains { $0.function == feature.function && $0.index == feature.index
                && $0.value(of: feature.register) & 1 << feature.bit != 0 }
        })
        #expect(throws: HVError.self) {
            _ = try KVMHost.machine { $0.cpuModel = try? CPUModel(parsing: "host,+\(missing.name)") }
        }
        let relaxed = try CPUModel(parsing: "host,+\(missing.name),enforce=off")
        #expect(try relaxed.apply(to: supported).dropped == [missing])
    }
}

@Suite("CPU models")
struct CPUModelTests {
    private let supported = [
        CPUIDEntry(function: 0, index: 0, flags: 0, eax: 0xD, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65),
        CPUIDEntry(function: 1, index: 0, flags: 0, eax: 0x800F12, ebx: 0, ecx: 0xF6FA_3203, edx: 0x178B_FBFF),
        CPUIDEntry(function: 7, index: 0, flags: 1, eax: 0, ebx: 0x219C_07A9, ecx: 0x0040_068C, edx: 0x2000_0000),
        CPUIDEntry(function: 7, index: 1, flags: 1, eax: 0x10, ebx: 0, ecx: 0, edx: 0),
    ]

    @Test("QEMU's -cpu syntax: a base, +/- edits, FEATURE=on|off, vendor=, enforce=, host-phys-bits; '_' and '-' alike")
    func parsing() throws {
        let model = try CPUModel(parsing: "qemu64,+x2apic,-tsc_deadline,pcid=on,vendor=GenuineIntel,host-phys-bits,enforce=off")
        #expect(model.base == .qemu64 && model.vendor == "GenuineIntel" && !model.enforce)
        #expect(model.edits.map { "\($0.enabled ? "+" : "-")\($0.feature.name)" } == ["+x2apic", "-tsc-deadline", "+pcid"])
        #expect(model.description == "qemu64,vendor=GenuineIntel,+x2apic,-tsc-deadline,+pcid,enforce=off")
        #expect(try CPUModel(parsing: "Opteron_G1").base == .opteronG1)
        for (text, part) in [("pentium", "pentium"), ("host,+warp", "+warp"), ("host,vendor=Intel", "vendor=Intel"),
                             ("host,x2apic=maybe", "x2apic=maybe")] {
            #expect(throws: ConfigurationError.self) { try CPUModel(parsing: text) }
            do { _ = try CPUModel(parsing: text) } catch { #expect(error.field == "cpu" && error.value == part) }
        }
    }

    @Test("a base keeps only its features in the registers HV names; other leaves and subleaves are untouched")
    func baseNarrowing() throws {
        let (entries, dropped) = try CPUModel(parsing: "qemu64").apply(to: supported)
        #expect(dropped.isEmpty)
        let leaf1 = try #require(entries.first { $0.function == 1 })
        #expect(leaf1.ecx == supported[1].ecx & (1 << 0 | 1 << 13 | 1 << 31), "pni, cx16, hypervisor")
        #expect(leaf1.eax == supported[1].eax, "the signature stays")
        #expect(entries[2].ebx == 0 && entries[2].ecx == 0 && entries[2].edx == 0)
        #expect(entries[3] == supported[3], "subleaf 1 of leaf 7 has no named feature")
        #expect(try CPUModel(parsing: "host").apply(to: supported).entries == supported)
    }

    @Test("edits apply after the base; +FEATURE needs the host to have it; vendor= rewrites leaf 0")
    func edits() throws {
        let (entries, _) = try CPUModel(parsing: "host,-x2apic,+pcid,-umip,vendor=GenuineIntel").apply(to: supported)
        #expect(entries[1].ecx & 1 << 21 == 0)
        #expect(entries[2].ecx & 1 << 2 == 0)
        #expect(entries[0].ebx == 0x756E_6547 && entries[0].edx == 0x4965_6E69 && entries[0].ecx == 0x6C65_746E)
        #expect(throws: ConfigurationError.self) { try CPUModel(parsing: "host,+vmx").apply(to: supported) }
        #expect(try CPUModel(parsing: "host,+vmx,enforce=off").apply(to: supported).dropped.map(\.name) == ["vmx"])
    }
}

@Suite("ACPI S3 under KVM", .requiresKVM, .serialized)
struct SleepKVMTests {
    enum Wake: String, CaseIterable { case rtcAlarm = "an RTC alarm", powerButton = "the power button" }

    @Test("a guest that writes its waking vector into the FACS and sleeps (S3) wakes in real mode there with RAM kept", arguments: Wake.allCases)
    func suspendToRAMAndWake(_ wake: Wake) throws {
        let vm = try KVMHost.machine { $0.interruptController = .kernel; $0.resetPolicy = .stop }
        _ = try attachConsole(vm)
        let platform = try vm.attachPCPlatform()
        let facs = try #require(try ACPITables.pc(cpuCount: 1, tpm: false).facsAddress)
        // The resume code at 0x8000, entered as 0800:0000 with DS = 0: it reports what RAM holds at 0x600.
        var resume = X86Assembler(bits: .bits16)
        resume.mov(Register32.eax, .absolute(0x600))
        resume.out(0xF4, Register32.eax)
        resume.hlt()
        try vm.memory.write(bytes: try resume.assemble(), at: GuestPhysicalAddress(0x8000))
        try vm.load(GuestProgram.longMode { a in
            a.mov(.dword, .absolute(facs + ACPITables.firmwareWakingVectorOffset), 0x8000)
            a.mov(.dword, .absolute(0x600), 0x5A)
            if wake == .rtcAlarm {
                a.mov(Register16.dx, 0x602)                   // PM1 enable: RTC_EN
                a.mov(Register16.ax, 0x400)
                a.out(Register16.dx, Register16.ax)
                for index: UInt8 in [0x01, 0x03, 0x05] {      // alarm: any second, minute, hour
                    a.mov(Register8.al, Immediate(index))
                    a.out(0x70, Register8.al)
                    a.mov(Register8.al, 0xC0)
                    a.out(0x71, Register8.al)
                }
                a.mov(Register8.al, 0x0B)                     // register B: AIE | 24-hour
                a.out(0x70, Register8.al)
                a.mov(Register8.al, 0x22)
                a.out(0x71, Register8.al)
            }
            a.mov(Register16.dx, 0x604)                       // PM1 control: SLP_TYP 1 (\_S3) | SLP_EN
            a.mov(Register16.ax, 0x2400)
            a.out(Register16.dx, Register16.ax)
            a.mov(.dword, .absolute(0x600), 0x77)             // never runs: the CPU stopped at the write
            a.debugExit(code: 0x99)
        })
        try vm.start(handler: NoExitHandler())
        if wake == .powerButton {
            let deadline = ContinuousClock.now + .seconds(20)
            while !vm.isAsleep, ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.01) }
            #expect(vm.isAsleep)
            platform.powerManagement.pressPowerButton()
        }
        let result = vm.wait()
        #expect(result.reason == .debugExit(code: 0x5A))
        #expect(vm.sleeps == 1 && vm.resets == 0)
        let status = platform.powerManagement.portRead(offset: 0, size: 2)
        #expect(status == (wake == .rtcAlarm ? 0x8400 : 0x8100), "WAK_STS and the event that woke it")
    }

    /// Port 0x77: asks the PM block for S3 and presses the power button before the vCPU has
    /// returned from the exit, the race between a wake event and the machine reaching sleep.
    final class SleepThenWake: PortIODevice {
        let name = "sleep-then-wake"
        let pm: ACPIPMDevice
        init(pm: ACPIPMDevice) { self.pm = pm }
        func portRead(offset: UInt16, size: Int) -> UInt32 { 0 }
        func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
            let action = pm.portWrite(offset: 4, size: 2, value: 0x2400)
            pm.pressPowerButton()
            return action
        }
    }

    @Test("a wake event between the guest's request to sleep and the machine reaching sleep is not lost")
    func wakeDuringTheWayToSleep() throws {
        let vm = try KVMHost.machine { $0.interruptController = .kernel; $0.resetPolicy = .stop; $0.timeLimit = 20 }
        _ = try attachConsole(vm)
        let platform = try vm.attachPCPlatform()
        try vm.devices.register(SleepThenWake(pm: platform.powerManagement), port: 0x77, count: 1)
        let facs = try #require(try ACPITables.pc(cpuCount: 1, tpm: false).facsAddress)
        var resume = X86Assembler(bits: .bits16)
        resume.mov(Register32.eax, 0x42)
        resume.out(0xF4, Register32.eax)
        try vm.memory.write(bytes: try resume.assemble(), at: GuestPhysicalAddress(0x8000))
        try vm.load(GuestProgram.longMode { a in
            a.mov(.dword, .absolute(facs + ACPITables.firmwareWakingVectorOffset), 0x8000)
            a.out(0x77, Register8.al)
            a.debugExit(code: 0x99)
        })
        let result = try vm.run()
        #expect(result.reason == .debugExit(code: 0x42), "woke at the waking vector, not after the time limit")
        #expect(vm.sleeps == 1)
    }

    @Test("a machine without ACPI tables has no waking vector: a request to sleep stops it, saying so")
    func sleepWithoutWakeStops() throws {
        let vm = try KVMHost.machine { $0.interruptController = .kernel }
        _ = try attachConsole(vm)
        try vm.attachPCPlatform(acpiTables: false)
        try vm.load(GuestProgram.longMode { a in
            a.mov(Register16.dx, 0x604)
            a.mov(Register16.ax, 0x2400)
            a.out(Register16.dx, Register16.ax)
            a.debugExit(code: 1)
        })
        #expect(try vm.run().reason == .systemEvent(.sleep))
    }
}
