// What the loader handed over and what the CPU can do: the Multiboot 1 and 2 boot information
// and CPUID / MSR probes for
// AMD-V (AMD APM Vol. 2, 15.4 "Enabling SVM") and VT-x (Intel SDM Vol. 3C, 24.7 "Enabling and
// Entering VMX Operation").
import BareMetalSupport

/// The Multiboot loaders' magic in EAX (Multiboot Specification 0.6.96, 3.2; Multiboot2
/// Specification 2.0, 3.3).
let multibootLoaderMagic: UInt32 = 0x2BAD_B002, multiboot2LoaderMagic: UInt32 = 0x36D7_6289

/// What a Multiboot loader handed over, read from the Multiboot 1 information structure (3.3
/// "Boot information format") or the Multiboot 2 tags (Multiboot2 Specification 2.0, 3.6 "Boot
/// information"), both identity-mapped below 4 GiB.
struct BootInformation {
    /// Which protocol the loader spoke: 1 or 2.
    var protocolVersion = 1
    var loaderName: String?
    /// KiB of memory from 1 MiB up to the first hole (mem_upper).
    var upperMemoryKiB: UInt32 = 0
    /// The image's command line (QEMU's -append, GRUB's multiboot/multiboot2 line).
    var commandLine = ""
    /// The memory map's available regions (type 1), as the loader reported them.
    var availableMemory: [(base: UInt64, length: UInt64)] = []

    /// nil when EAX held neither loader's magic.
    init?(magic: UInt32, address: UInt) {
        switch magic {
        case multibootLoaderMagic:
            let flags = Self.word(address)
            if flags & 1 != 0 { upperMemoryKiB = Self.word(address + 8) }
            if flags & (1 << 2) != 0 { commandLine = Self.string(at: UInt(Self.word(address + 16))) }
            if flags & (1 << 9) != 0 { loaderName = Self.string(at: UInt(Self.word(address + 64))) }
            if flags & (1 << 6) != 0 {
                // mmap_length, mmap_addr; each entry: size (not counting itself), base, length, type.
                let length = UInt(Self.word(address + 44)), map = UInt(Self.word(address + 48))
                var offset: UInt = 0
                while offset + 24 <= length {
                    let size = UInt(Self.word(map + offset))
                    if Self.word(map + offset + 20) == 1 {
                        availableMemory.append((Self.quad(map + offset + 4), Self.quad(map + offset + 12)))
                    }
                    offset += size + 4
                }
            }
        case multiboot2LoaderMagic:
            protocolVersion = 2
            // total_size, reserved, then tags (type, size, data), each 8-byte aligned, up to
            // the end tag (type 0). The loop stops at total_size whatever the tags say.
            let total = UInt(Self.word(address))
            var offset: UInt = 8
            while offset + 8 <= total {
                let type = Self.word(address + offset), size = UInt(Self.word(address + offset + 4))
                if type == 0 || size < 8 { break }
                switch type {
                case 1: commandLine = Self.string(at: address + offset + 8)
                case 2: loaderName = Self.string(at: address + offset + 8)
                case 4: upperMemoryKiB = Self.word(address + offset + 12)
                case 6:
                    // entry_size, entry_version, then entries: base, length, type, reserved.
                    let entrySize = UInt(Self.word(address + offset + 8))
                    var entry = offset + 16
                    while entrySize >= 24, entry + entrySize <= offset + size {
                        if Self.word(address + entry + 16) == 1 {
                            availableMemory.append((Self.quad(address + entry), Self.quad(address + entry + 8)))
                        }
                        entry += entrySize
                    }
                default: break
                }
                offset += (size + 7) & ~7
            }
        default:
            return nil
        }
    }

    private static func word(_ address: UInt) -> UInt32 {
        UnsafeRawPointer(bitPattern: address)!.loadUnaligned(as: UInt32.self)
    }

    private static func quad(_ address: UInt) -> UInt64 {
        UnsafeRawPointer(bitPattern: address)!.loadUnaligned(as: UInt64.self)
    }

    /// A NUL-terminated string, at most 256 bytes of it.
    private static func string(at address: UInt) -> String {
        guard let text = UnsafePointer<UInt8>(bitPattern: address) else { return "" }
        var bytes: [UInt8] = []
        var index = 0
        while text[index] != 0 && index < 256 {
            bytes.append(text[index])
            index += 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// What CPUID and the virtualization MSRs say.
struct CPUFeatures {
    struct SVM {
        var revision: UInt32
        var asids: UInt32
        var nestedPaging: Bool
        var nextRIPSave: Bool
    }

    enum Virtualization {
        case svm(SVM)
        case vmx
        /// Neither can be used, and why (in the words a user needs).
        case refused(String)
    }

    var vendor: String
    var family: UInt32
    var model: UInt32
    var svm: Bool
    var vmx: Bool
    var virtualization: Virtualization

    static func cpuid(_ leaf: UInt32, _ subleaf: UInt32 = 0) -> (eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        var registers: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
        withUnsafeMutablePointer(to: &registers) {
            $0.withMemoryRebound(to: UInt32.self, capacity: 4) { hv_cpuid(leaf, subleaf, $0) }
        }
        return registers
    }

    static func read() -> CPUFeatures {
        let zero = cpuid(0)
        let one = cpuid(1)
        let baseFamily = (one.eax >> 8) & 0xF
        let family = baseFamily == 0xF ? baseFamily + ((one.eax >> 20) & 0xFF) : baseFamily
        let model = (baseFamily == 0x6 || baseFamily == 0xF) ? ((one.eax >> 4) & 0xF) | ((one.eax >> 12) & 0xF0) : (one.eax >> 4) & 0xF
        let vmx = one.ecx & (1 << 5) != 0
        let extended = cpuid(0x8000_0000).eax
        let svm = extended >= 0x8000_0001 && cpuid(0x8000_0001).ecx & (1 << 2) != 0
        var features = CPUFeatures(vendor: vendorString(ebx: UInt64(zero.ebx), edx: UInt64(zero.edx), ecx: UInt64(zero.ecx)), family: family, model: model,
                                   svm: svm, vmx: vmx, virtualization: .refused("neither AMD-V (SVM) nor VT-x (VMX) on this CPU"))
        if svm {
            // VM_CR (MSR C001_0114h): SVMDIS (bit 4) set by firmware, LOCK (bit 3).
            let vmCR = hv_rdmsr(0xC001_0114)
            if vmCR & (1 << 4) != 0 {
                features.virtualization = .refused(vmCR & (1 << 3) != 0 ? "SVM disabled by firmware (VM_CR.SVMDIS, locked)" : "SVM disabled (VM_CR.SVMDIS)")
            } else if extended >= 0x8000_000A {
                let leaf = cpuid(0x8000_000A)
                features.virtualization = .svm(SVM(revision: leaf.eax & 0xFF, asids: leaf.ebx, nestedPaging: leaf.edx & 1 != 0,
                                                   nextRIPSave: leaf.edx & (1 << 3) != 0))
            }
        } else if vmx {
            // IA32_FEATURE_CONTROL (3Ah): locked (bit 0) without VMX outside SMX (bit 2) is off.
            let control = hv_rdmsr(0x3A)
            features.virtualization = control & 1 != 0 && control & (1 << 2) == 0
                ? .refused("VMX locked off by firmware (IA32_FEATURE_CONTROL)") : .vmx
        }
        return features
    }
}

/// The vendor string CPUID leaf 0 returns in EBX, EDX, ECX, four bytes each, in that order
/// ("AuthenticAMD", "GenuineIntel").
func vendorString(ebx: UInt64, edx: UInt64, ecx: UInt64) -> String {
    var bytes: [UInt8] = []
    for register in [ebx, edx, ecx] {
        for shift in stride(from: UInt64(0), to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: register >> shift)) }
    }
    return String(decoding: bytes, as: UTF8.self)
}
