// The bare-metal image's kernel, in Embedded Swift: what a Multiboot loader's entry stub
// (Entry/entry.S) calls once the CPU is in 64-bit mode with the first 4 GiB identity-mapped.
// It says what it found, finds out whether the CPU can run guests (AMD-V or VT-x), runs two
// guests on its SVM engine (a real-mode one, then `hv demo`'s own guest with `hv demo`'s own
// exit handler), and leaves through QEMU's isa-debug-exit port (or halts without one).
import BareMetalSupport
import HVModel

@_cdecl("hv_baremetal_main")
public func baremetalMain(_ info: UInt32, _ magic: UInt32) {
    Console.initialise()
    Exceptions.install()
    // Both 8259 PICs masked (OCW1 to ports 21h and A1h): the image takes no device interrupts,
    // and none reaches a guest as an unasked-for INTR exit. The firmware leaves the PIT's IRQ 0 on.
    hv_outb(0x21, 0xFF)
    hv_outb(0xA1, 0xFF)
    print("HV bare-metal image: Embedded Swift on the bare CPU")
    if let boot = BootInformation(magic: magic, address: UInt(info)) {
        print("loader: \(boot.loaderName ?? "a Multiboot loader") (Multiboot \(boot.protocolVersion)); \(boot.upperMemoryKiB / 1024) MiB above 1 MiB")
        if !boot.availableMemory.isEmpty {
            PageAllocator.start(available: boot.availableMemory)
            print("memory: \(boot.availableMemory.count) available regions in the loader's map; \(PageAllocator.freeBytes >> 20) MiB outside the image and its heap for guests and their tables")
        }
        // fault=pf or fault=ud on the command line: the image faults on purpose, to show (and
        // test) its exception report.
        let words = boot.commandLine.split(separator: " ")
        if words.contains("fault=pf") {
            print("faulting on purpose: a read above the 4 GiB the image maps")
            _ = hv_read_volatile(0x2_0000_0000)
        }
        if words.contains("fault=ud") {
            print("faulting on purpose: UD2")
            hv_ud2()
        }
    } else {
        print("loader: not Multiboot (EAX was \(hex(magic)))")
    }
    let cpu = CPUFeatures.read()
    print("cpu: \(cpu.vendor), family \(cpu.family) model \(cpu.model), svm=\(cpu.svm ? 1 : 0) vmx=\(cpu.vmx ? 1 : 0)")
    switch cpu.virtualization {
    case .svm(let svm):
        print("svm: revision \(svm.revision), \(svm.asids) ASIDs, nested paging \(svm.nestedPaging ? "yes" : "no"), next-RIP save \(svm.nextRIPSave ? "yes" : "no")")
        guard svm.nestedPaging else {
            print("svm: this engine needs nested paging")
            DebugExit.leave(code: 2)
        }
        DebugExit.leave(code: runGuests(SVMEngine()) ? 0 : 1)
    case .vmx:
        guard let capabilities = VMXOperation.enter() else { DebugExit.leave(code: 2) }
        print("vmx: VMCS revision \(hex(capabilities.vmcsRevisionID)), EPT \(capabilities.eptVPID.contains(.pageWalkLength4) ? "yes" : "no"), "
              + "preemption timer rate 2^\(capabilities.preemptionTimerRate), physical addresses \(capabilities.physicalAddressWidth) bits; in VMX root operation")
        DebugExit.leave(code: runGuests(VMXEngine(capabilities: capabilities)) ? 0 : 1)
    case .refused(let reason):
        print("virtualization: \(reason)")
        DebugExit.leave(code: 2)
    }
}

/// What `runGuests` needs of an engine: its two kinds of VM.
protocol Engine {
    associatedtype CPU: GuestCPU
    /// A VM of `memorySize` bytes whose guest starts in real mode at 0000:`entry` with `code` there.
    func realModeGuest(_ code: UnsafeRawBufferPointer, at entry: UInt64, memorySize: UInt64, readOnlyPages: [UInt64], mmioPages: [UInt64]) -> CPU?
    /// A VM holding `image`, its registers as the image says.
    func imageGuest(_ image: GuestImageFile) -> CPU?
}

/// The real-mode guest, then the demo guest; true when both ended as they should.
func runGuests<E: Engine>(_ engine: E) -> Bool {
    print("")
    print("1. The real-mode test guest:")
    let code = embedded(hv_guest_test_start_pointer(), hv_guest_test_end_pointer())
    guard let test = engine.realModeGuest(code, at: 0x1000, memorySize: 2 << 20, readOnlyPages: [0x5000], mmioPages: [0x6000]) else { return false }
    test.interrupts = LocalAPICDevice()
    let testStop = run(test, ConsolePassthrough().then(DebugExitPort()).then(PostCodePort()).then(ScratchRegister(address: 0x6000))
                           .then(StoredMSRs([0xC000_0103])),
                       policy: ExitPolicy(halt: .stop, unmappedMMIO: .stop, unmappedPorts: .stop))
    let vendor = vendorString(ebx: test.register(3), edx: test.register(2), ecx: test.register(1))
    print("It stopped: \(describe(testStop)); CPUID gave it \(vendor); the read-only page still holds \(hex(test.ram.load(fromByteOffset: 0x5000, as: UInt16.self)))")
    test.statistics.report()
    guard testStop == .halted else { return false }

    print("")
    print("2. Exit latency as the guest measures it:")
    let latencyCode = embedded(hv_guest_latency_start_pointer(), hv_guest_latency_end_pointer())
    guard let latency = engine.realModeGuest(latencyCode, at: 0x1000, memorySize: 2 << 20, readOnlyPages: [], mmioPages: [0x6000]) else { return false }
    let latencyStop = run(latency, PostCodePort().then(ScratchRegister(address: 0x6000)).then(StoredMSRs([0xC000_0103])),
                          policy: ExitPolicy(halt: .stop, unmappedMMIO: .stop, unmappedPorts: .stop))
    guard latencyStop == .halted else {
        print("It stopped: \(describe(latencyStop))")
        return false
    }
    reportGuestLatency(latency)

    print("")
    print("3. hv demo's guest, with hv demo's exit handler:")
    let demoBytes = embedded(hv_guest_demo_start_pointer(), hv_guest_demo_end_pointer())
    let image: GuestImageFile
    switch GuestImageFile.read(demoBytes) {
    case .success(let read): image = read
    case .failure(let error):
        print("the embedded demo guest: \(error.description)")
        return false
    }
    guard let demo = engine.imageGuest(image) else { return false }
    let handler = DemoExitHandler()
    // As hv demo runs it: HLT resumes (nothing could wake it), unmapped ports and MMIO stop.
    let stop = run(demo, handler.then(ConsolePassthrough()).then(ScratchRegister()).then(DebugExitPort()),
                   policy: ExitPolicy(halt: .resume, unmappedMMIO: .stop, unmappedPorts: .stop))
    print("")
    print("The guest stopped: \(describe(stop)).")
    var codes = ""
    for code in handler.postCodes { codes += (codes.isEmpty ? "" : ", ") + hex(code) }
    print("It wrote POST codes \(codes) and read port 0x60 \(handler.counterReads) times.")
    demo.statistics.report()
    return stop == .debugExit(code: 0)
}

/// The bytes the build embedded between `start` and `end` (a guest's code or image).
func embedded(_ start: UnsafePointer<UInt8>?, _ end: UnsafePointer<UInt8>?) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: start!, count: end! - start!)
}

/// The latency guest's arrays (512 round trips per kind from 0x9000, 2 KiB apart), as the
/// guest measured them with RDTSC around one exiting instruction, next to the engine's own
/// measure of the same exits (world switch in to exit back).
func reportGuestLatency<CPU: GuestCPU>(_ cpu: CPU) {
    let kinds: [(StaticString, ExitKind?)] = [("io-out", .portOut), ("io-in", .portIn), ("cpuid", nil), ("msr-read", .msrRead),
                                              ("mmio-write", .mmioWrite), ("mmio-read", .mmioRead)]
    print("exit         guest median  guest p99  engine median")
    print("----------------------------------------------------")
    for (index, (name, kind)) in kinds.enumerated() {
        var samples: [UInt64] = []
        for sample in 0..<512 { samples.append(UInt64(cpu.ram.load(fromByteOffset: 0x9000 + index * 0x800 + 4 * sample, as: UInt32.self))) }
        samples.sort()
        var engine = "-"
        if let kind {
            let own = cpu.statistics.samples[Int(kind.rawValue)].sorted()
            if !own.isEmpty { engine = "\(own[own.count / 2])" }
        }
        print(column("\(name)", 13) + column("\(samples[256])", 12, right: true) + column("\(samples[506])", 11, right: true)
              + column(engine, 15, right: true))
    }
    print("(TSC cycles; RDTSC itself and the loop are in the guest's numbers)")
}

/// HVModel's run loop (`ExitLoop.run`, the steps `Machine` takes on KVM) on a bare-metal vCPU,
/// counting each exit with its round trip.
func run<CPU: GuestCPU, H: ExitHandler>(_ cpu: CPU, _ handler: H, policy: ExitPolicy) -> StopReason {
    defer { cpu.finish() }
    // On a host stack of the configuration's size, not the boot stack.
    let stack = HostStack(size: cpu.hostStackSize)
    var result = StopReason.backendFailure
    stack.run {
        do throws(BackendFailure) {
            result = try ExitLoop.run(cpu, handler: handler, policy: policy) { exit, _ in cpu.statistics.add(exit.kind, cycles: cpu.lastRoundTrip) }
        } catch {
            print("\(cpu.engineName): \(error.operation) failed (\(hex(error.code)))")
        }
    }
    print("host stack: \(stack.size) bytes (the configuration's host-stack size), \(stack.used) used")
    return result
}

struct SVMEngine: Engine {
    func realModeGuest(_ code: UnsafeRawBufferPointer, at entry: UInt64, memorySize: UInt64, readOnlyPages: [UInt64], mmioPages: [UInt64]) -> SVMVirtualMachine? {
        // SVM has no preemption timer: the host's APIC timer cuts the guest into slices of
        // 500,000 ticks of its clock instead.
        var configuration = SVMConfiguration()
        configuration.hostTimerSlice = 500_000
        guard let machine = SVMVirtualMachine(memorySize: memorySize, readOnlyPages: readOnlyPages, mmioPages: mmioPages,
                                              configuration: configuration) else { return nil }
        machine.loadRealMode(code, at: entry)
        return machine
    }

    func imageGuest(_ image: GuestImageFile) -> SVMVirtualMachine? {
        guard let machine = SVMVirtualMachine(memorySize: image.memorySize) else { return nil }
        return machine.load(image) ? machine : nil
    }
}

struct VMXEngine: Engine {
    let capabilities: VMXCapabilities

    func realModeGuest(_ code: UnsafeRawBufferPointer, at entry: UInt64, memorySize: UInt64, readOnlyPages: [UInt64], mmioPages: [UInt64]) -> VMXVirtualMachine? {
        // The preemption timer cuts the guest into slices of 20,000 TSC cycles.
        let configuration = VMXConfiguration.bareMetal(guestMode: .realMode, structureBase: 0, preemptionTimerTSC: 20_000)
        let start = VMXGuestStart(special: .realMode, rip: entry, rsp: 0x8000)
        guard let machine = VMXVirtualMachine(memorySize: memorySize, readOnlyPages: readOnlyPages, mmioPages: mmioPages, configuration: configuration, guest: start,
                                              capabilities: capabilities) else { return nil }
        machine.load(code, at: entry)
        return machine
    }

    func imageGuest(_ image: GuestImageFile) -> VMXVirtualMachine? {
        let configuration = VMXConfiguration.bareMetal(guestMode: .longMode, structureBase: 0, preemptionTimerTSC: nil)
        let start = VMXGuestStart(special: image.special, rip: image.registers.rip, rsp: image.registers.rsp, rflags: image.registers.rflags)
        guard let machine = VMXVirtualMachine(memorySize: image.memorySize, configuration: configuration, guest: start,
                                              capabilities: capabilities) else { return nil }
        image.load(into: machine.ram)
        return machine
    }
}

func describe(_ reason: StopReason) -> String {
    switch reason {
    case .debugExit(let code): "the guest wrote \(code) to the debug-exit port"
    case .halted: "HLT"
    case .shutdown: "shutdown (a triple fault)"
    case .unmappedPort(let port, let write): "\(write ? "a write to" : "a read from") port \(hex(port.rawValue)), which nothing handles"
    case .unmappedMMIO(let address, let write): "\(write ? "a write to" : "a read from") \(hex(address.rawValue)), which nothing handles"
    case .unhandledExit(let kind): "an exit nothing handles (\(kind.name))"
    case .entryFailure(let reason): "the CPU refused to enter the guest (\(hex(reason)))"
    case .internalError(let error): "an exit the engine cannot emulate (\(error.suberror))"
    default: "another reason"
    }
}

/// Formats `value` as 0x-prefixed hexadecimal.
func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
