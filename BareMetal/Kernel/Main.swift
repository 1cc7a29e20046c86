// The bare-metal image's kernel, in Embedded Swift: what a Multiboot loader's entry stub
// (Entry/entry.S) calls once the CPU is in 64-bit mode with the first 4 GiB identity-mapped.
// It says what it found, finds out whether the CPU can run guests (AMD-V or VT-x), and leaves
// through QEMU's isa-debug-exit port (or halts on a machine without one).
import BareMetalSupport
import HVModel

/// The Multiboot 1 loader's magic in EAX (Multiboot Specification 0.6.96, 3.2).
let multibootLoaderMagic: UInt32 = 0x2BAD_B002

@_cdecl("hv_baremetal_main")
public func baremetalMain(_ info: UInt32, _ magic: UInt32) {
    Console.initialise()
    print("HV bare-metal image: Embedded Swift on the bare CPU")
    if magic == multibootLoaderMagic {
        let boot = MultibootInformation(address: UInt(info))
        print("loader: \(boot.loaderName ?? "a Multiboot loader"); \(boot.upperMemoryKiB / 1024) MiB above 1 MiB")
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
        guard SVMEngine.runHelloGuest() else { DebugExit.leave(code: 1) }
    case .vmx:
        print("vmx: available (IA32_FEATURE_CONTROL allows VMXON outside SMX)")
    case .refused(let reason):
        print("virtualization: \(reason)")
    }
    DebugExit.leave(code: 0)
}

/// Formats `value` as 0x-prefixed hexadecimal.
func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
