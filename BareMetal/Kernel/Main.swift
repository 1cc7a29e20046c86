// The bare-metal image's kernel, in Embedded Swift: what a Multiboot loader's entry stub
// (Entry/entry.S) calls once the CPU is in 64-bit mode with the first 4 GiB identity-mapped.
// It says what it found, finds out whether the CPU can run guests (AMD-V or VT-x), runs two
// guests on its SVM engine (a real-mode one, then `hv demo`'s own guest with `hv demo`'s own
// exit handler), and leaves through QEMU's isa-debug-exit port (or halts without one).
import BareMetalSupport
import HVModel

/// The Multiboot 1 loader's magic in EAX (Multiboot Specification 0.6.96, 3.2).
let multibootLoaderMagic: UInt32 = 0x2BAD_B002

@_cdecl("hv_baremetal_main")
public func baremetalMain(_ info: UInt32, _ magic: UInt32) {
    Console.initialise()
    Exceptions.install()
    print("HV bare-metal image: Embedded Swift on the bare CPU")
    if magic == multibootLoaderMagic {
        let boot = MultibootInformation(address: UInt(info))
        print("loader: \(boot.loaderName ?? "a Multiboot loader"); \(boot.upperMemoryKiB / 1024) MiB above 1 MiB")
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
        DebugExit.leave(code: runGuests() ? 0 : 1)
    case .vmx:
        print("vmx: available (IA32_FEATURE_CONTROL allows VMXON outside SMX); the VMX engine is not built yet")
        DebugExit.leave(code: 2)
    case .refused(let reason):
        print("virtualization: \(reason)")
        DebugExit.leave(code: 2)
    }
}

/// The real-mode guest, then the demo guest; true when both ended as they should.
func runGuests() -> Bool {
    print("")
    print("1. A real-mode guest:")
    let hello = SVMVirtualMachine(memorySize: 2 << 20, readOnlyPages: [0x5000])
    let helloStart = UnsafeRawPointer(hv_guest_hello_start_pointer()!)
    hello.loadRealMode(UnsafeRawBufferPointer(start: helloStart, count: UnsafeRawPointer(hv_guest_hello_end_pointer()!) - helloStart), at: 0x1000)
    let helloStop = hello.run(ConsolePassthrough().then(DebugExitPort()), haltResumes: false)
    print("It stopped: \(describe(helloStop)); CPUID gave it \(vendor(hello)); the read-only page still holds \(hex(hello.ram.load(fromByteOffset: 0x5000, as: UInt16.self)))")
    hello.statistics.report()
    guard helloStop == .halted else { return false }

    print("")
    print("2. hv demo's guest, with hv demo's exit handler:")
    let demoStart = UnsafeRawPointer(hv_guest_demo_start_pointer()!)
    let demoBytes = UnsafeRawBufferPointer(start: demoStart, count: UnsafeRawPointer(hv_guest_demo_end_pointer()!) - demoStart)
    let image: GuestImageFile
    switch GuestImageFile.read(demoBytes) {
    case .success(let read): image = read
    case .failure(let error):
        print("the embedded demo guest: \(error.description)")
        return false
    }
    let demo = SVMVirtualMachine(memorySize: image.memorySize)
    guard demo.load(image) else { return false }
    let handler = DemoExitHandler()
    let stop = demo.run(handler.then(ConsolePassthrough()).then(ScratchRegister()).then(DebugExitPort()), haltResumes: true)
    print("")
    print("The guest stopped: \(describe(stop)).")
    var codes = ""
    for code in handler.postCodes { codes += (codes.isEmpty ? "" : ", ") + hex(code) }
    print("It wrote POST codes \(codes) and read port 0x60 \(handler.counterReads) times.")
    demo.statistics.report()
    return stop == .debugExit(code: 0)
}

/// The vendor string CPUID leaf 0 left in the guest's EBX, EDX, ECX.
func vendor(_ machine: SVMVirtualMachine) -> String {
    vendorString(ebx: machine.register(3), edx: machine.register(2), ecx: machine.register(1))
}

func describe(_ reason: StopReason) -> String {
    switch reason {
    case .debugExit(let code): "the guest wrote \(code) to the debug-exit port"
    case .halted: "HLT"
    case .shutdown: "shutdown (a triple fault)"
    case .unmappedPort(let port, let write): "\(write ? "a write to" : "a read from") port \(hex(port.rawValue)), which nothing handles"
    case .unmappedMMIO(let address, let write): "\(write ? "a write to" : "a read from") \(hex(address.rawValue)), which nothing handles"
    case .unhandledExit(let kind): "an exit nothing handles (\(kind.name))"
    case .entryFailure(let reason): "VMRUN refused the guest (\(hex(reason)))"
    case .internalError(let error): "an exit the engine cannot emulate (\(error.suberror))"
    default: "another reason"
    }
}

/// Formats `value` as 0x-prefixed hexadecimal.
func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
