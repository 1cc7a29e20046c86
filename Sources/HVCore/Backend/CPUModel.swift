// The CPU a guest is told it runs on: which CPUID feature bits it sees (SDM Vol. 2A, "CPUID";
// AMD APM Vol. 3, appendix E). A backend starts from what it can give (KVM:
// KVM_GET_SUPPORTED_CPUID) and a `CPUModel` narrows it, as QEMU's `-cpu qemu64,-x2apic,+pcid`
// does, so a test can run on a CPU without a feature the host has. Whether an MSR or an
// instruction exists follows from the CPUID the guest is given: KVM refuses IA32_ARCH_CAPABILITIES,
// IA32_TSC_ADJUST, the x2APIC MSRs, IA32_PKRS... when the matching bit is clear (#GP), and
// raises #UD for INVPCID, RDPID, XSAVE... likewise (Documentation/virt/kvm/x86/cpuid.rst).

/// A named CPUID feature bit: leaf (`function`), subleaf (`index`), register and bit.
public struct CPUFeature: Sendable, Equatable {
    public enum Register: Sendable, Equatable { case eax, ebx, ecx, edx }

    public let name: String
    public let function: UInt32
    public let index: UInt32
    public let register: Register
    public let bit: UInt32

    init(_ name: String, _ function: UInt32, _ register: Register, _ bit: UInt32) {
        self.init(name, function, 0, register, bit)
    }

    init(_ name: String, _ function: UInt32, _ index: UInt32, _ register: Register, _ bit: UInt32) {
        self.name = name
        self.function = function
        self.index = index
        self.register = register
        self.bit = bit
    }

    /// The features HV can name, with the names Linux's /proc/cpuinfo and QEMU's -cpu use
    /// (arch/x86/include/asm/cpufeatures.h; "-" and "_" are the same in a name).
    public static let all: [CPUFeature] = [
        // CPUID.01H:EDX
        .init("fpu", 1, .edx, 0), .init("vme", 1, .edx, 1), .init("de", 1, .edx, 2), .init("pse", 1, .edx, 3),
        .init("tsc", 1, .edx, 4), .init("msr", 1, .edx, 5), .init("pae", 1, .edx, 6), .init("mce", 1, .edx, 7),
        .init("cx8", 1, .edx, 8), .init("apic", 1, .edx, 9), .init("sep", 1, .edx, 11), .init("mtrr", 1, .edx, 12),
        .init("pge", 1, .edx, 13), .init("mca", 1, .edx, 14), .init("cmov", 1, .edx, 15), .init("pat", 1, .edx, 16),
        .init("pse36", 1, .edx, 17), .init("clflush", 1, .edx, 19), .init("mmx", 1, .edx, 23),
        .init("fxsr", 1, .edx, 24), .init("sse", 1, .edx, 25), .init("sse2", 1, .edx, 26), .init("ss", 1, .edx, 27),
        .init("ht", 1, .edx, 28),
        // CPUID.01H:ECX
        .init("pni", 1, .ecx, 0), .init("pclmulqdq", 1, .ecx, 1), .init("monitor", 1, .ecx, 3), .init("vmx", 1, .ecx, 5),
        .init("ssse3", 1, .ecx, 9), .init("fma", 1, .ecx, 12), .init("cx16", 1, .ecx, 13), .init("pdcm", 1, .ecx, 15),
        .init("pcid", 1, .ecx, 17), .init("sse4.1", 1, .ecx, 19), .init("sse4.2", 1, .ecx, 20),
        .init("x2apic", 1, .ecx, 21), .init("movbe", 1, .ecx, 22), .init("popcnt", 1, .ecx, 23),
        .init("tsc-deadline", 1, .ecx, 24), .init("aes", 1, .ecx, 25), .init("xsave", 1, .ecx, 26),
        .init("avx", 1, .ecx, 28), .init("f16c", 1, .ecx, 29), .init("rdrand", 1, .ecx, 30),
        .init("hypervisor", 1, .ecx, 31),
        // CPUID.(EAX=07H,ECX=0):EBX/ECX/EDX
        .init("fsgsbase", 7, .ebx, 0), .init("tsc-adjust", 7, .ebx, 1), .init("bmi1", 7, .ebx, 3), .init("hle", 7, .ebx, 4),
        .init("avx2", 7, .ebx, 5), .init("smep", 7, .ebx, 7), .init("bmi2", 7, .ebx, 8), .init("erms", 7, .ebx, 9),
        .init("invpcid", 7, .ebx, 10), .init("rtm", 7, .ebx, 11), .init("mpx", 7, .ebx, 14), .init("avx512f", 7, .ebx, 16),
        .init("rdseed", 7, .ebx, 18), .init("adx", 7, .ebx, 19), .init("smap", 7, .ebx, 20),
        .init("clflushopt", 7, .ebx, 23), .init("clwb", 7, .ebx, 24), .init("sha-ni", 7, .ebx, 29),
        .init("umip", 7, .ecx, 2), .init("pku", 7, .ecx, 3), .init("la57", 7, .ecx, 16), .init("rdpid", 7, .ecx, 22),
        .init("pks", 7, .ecx, 31),
        .init("md-clear", 7, .edx, 10), .init("tsx-ctrl-present", 7, .edx, 11), .init("spec-ctrl", 7, .edx, 26),
        .init("arch-capabilities", 7, .edx, 29), .init("ssbd", 7, .edx, 31),
        // CPUID.(EAX=0DH,ECX=1):EAX
        .init("xsaveopt", 0xD, 1, .eax, 0), .init("xsavec", 0xD, 1, .eax, 1), .init("xgetbv1", 0xD, 1, .eax, 2),
        .init("xsaves", 0xD, 1, .eax, 3),
        // CPUID.80000001H:ECX/EDX
        .init("lahf-lm", 0x8000_0001, .ecx, 0), .init("svm", 0x8000_0001, .ecx, 2), .init("cr8legacy", 0x8000_0001, .ecx, 4),
        .init("abm", 0x8000_0001, .ecx, 5), .init("sse4a", 0x8000_0001, .ecx, 6), .init("misalignsse", 0x8000_0001, .ecx, 7),
        .init("3dnowprefetch", 0x8000_0001, .ecx, 8), .init("xop", 0x8000_0001, .ecx, 11), .init("skinit", 0x8000_0001, .ecx, 12),
        .init("fma4", 0x8000_0001, .ecx, 16), .init("tbm", 0x8000_0001, .ecx, 21), .init("topoext", 0x8000_0001, .ecx, 22),
        .init("syscall", 0x8000_0001, .edx, 11), .init("nx", 0x8000_0001, .edx, 20), .init("mmxext", 0x8000_0001, .edx, 22),
        .init("fxsr-opt", 0x8000_0001, .edx, 25), .init("pdpe1gb", 0x8000_0001, .edx, 26), .init("rdtscp", 0x8000_0001, .edx, 27),
        .init("lm", 0x8000_0001, .edx, 29),
        // CPUID.8000000AH:EDX (SVM features)
        .init("npt", 0x8000_000A, .edx, 0), .init("nrip-save", 0x8000_000A, .edx, 3),
    ]

    /// Other spellings QEMU accepts.
    static let aliases: [String: String] = ["sse3": "pni", "sse4-1": "sse4.1", "sse4-2": "sse4.2", "lahf": "lahf-lm",
                                            "sha": "sha-ni", "tsc-deadline-timer": "tsc-deadline"]

    /// The feature called `name` ("_" and "-" alike, any case), if HV knows it.
    public static func named(_ name: String) -> CPUFeature? {
        var key = String(name.lowercased().map { $0 == "_" ? "-" : $0 })
        if let alias = aliases[key] { key = alias }
        return all.first { $0.name == key }
    }
}

/// A guest CPU: a base model, feature edits and an optional vendor.
///
/// Written as QEMU's `-cpu` value: `BASE[,+FEATURE|-FEATURE|FEATURE=on|off|vendor=ID|enforce=on|off|host-phys-bits]...`.
/// Bases: `host` and `max` (everything the backend can give), `qemu64` and `kvm64` (QEMU's
/// baseline x86-64: SSE2, SSE3, CX16, LAHF, NX, SYSCALL, long mode; no leaf 7 features),
/// `Opteron_G1` (the same without SSE3 and CX16, as the first K8 Opteron). A named model keeps the
/// host's vendor unless `vendor=` is given (QEMU's qemu64 says AuthenticAMD; the tests that care
/// name the vendor).
public struct CPUModel: Sendable, Equatable, CustomStringConvertible {
    public enum Base: String, Sendable, CaseIterable {
        case host, max, qemu64, kvm64
        case opteronG1 = "Opteron_G1"

        /// The features the base keeps (nil: all the backend gives).
        var features: [String]? {
            let x8664 = ["fpu", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge", "mca",
                         "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "syscall", "nx", "lm"]
            switch self {
            case .host, .max: return nil
            case .qemu64, .kvm64: return x8664 + ["pni", "cx16", "lahf-lm", "hypervisor"]
            case .opteronG1: return x8664 + ["hypervisor"]
            }
        }
    }

    public var base: Base
    /// Features forced on (`+name`) or off (`-name`), applied in order after the base.
    public var edits: [(feature: CPUFeature, enabled: Bool)]
    /// A 12-character vendor string (CPUID.0:EBX-EDX-ECX), e.g. GenuineIntel; nil keeps the host's.
    public var vendor: String?
    /// Refuse (`true`, the default) or leave out with a warning (`false`, QEMU's default) a `+feature`
    /// the host cannot give.
    public var enforce: Bool
    /// Hyper-V enlightenments (`hv-passthrough`, as QEMU's `hv_passthrough`): every Hyper-V
    /// feature the backend emulates is shown to the guest (CPUID 0x40000000-0x4000000A, TLFS
    /// 2.4 "Hypervisor discovery"), the backend's own paravirtual leaves move to 0x40000100, and
    /// each vCPU gets a synthetic interrupt controller whose messages and events the monitor
    /// serves (`HyperVSynIC`). KVM needs its in-kernel interrupt controllers for it.
    public var hyperV: Bool
    /// Whether the backend's own paravirtual CPUID leaves are shown (KVM's "KVMKVMKVM" signature
    /// and features: kvm-clock, PV EOI, ...). `kvm=off`, as QEMU's, hides them: a guest then
    /// finds no KVM, and with `hv-passthrough` only Hyper-V.
    public var exposesBackend: Bool

    public init(base: Base = .host, edits: [(feature: CPUFeature, enabled: Bool)] = [], vendor: String? = nil,
                enforce: Bool = true, hyperV: Bool = false, exposesBackend: Bool = true) {
        self.base = base
        self.edits = edits
        self.vendor = vendor
        self.enforce = enforce
        self.hyperV = hyperV
        self.exposesBackend = exposesBackend
    }

    public static func == (lhs: CPUModel, rhs: CPUModel) -> Bool {
        lhs.base == rhs.base && lhs.vendor == rhs.vendor && lhs.enforce == rhs.enforce && lhs.hyperV == rhs.hyperV
            && lhs.exposesBackend == rhs.exposesBackend
            && lhs.edits.count == rhs.edits.count
            && zip(lhs.edits, rhs.edits).allSatisfy { $0.feature == $1.feature && $0.enabled == $1.enabled }
    }

    /// Parses a QEMU-style `-cpu` value; the error names the part it cannot use and what would do.
    public init(parsing text: String) throws(ConfigurationError) {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let first = parts.first, let base = Base.allCases.first(where: { $0.rawValue.lowercased() == first.lowercased() }) else {
            throw ConfigurationError(field: "cpu", value: parts.first ?? text,
                                     expected: "a model: \(Base.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self.init(base: base)
        for part in parts.dropFirst() {
            func feature(_ name: String) throws(ConfigurationError) -> CPUFeature {
                guard let feature = CPUFeature.named(name) else {
                    throw ConfigurationError(field: "cpu", value: part,
                                             expected: "+FEATURE or -FEATURE with a feature HV knows (\(CPUFeature.all.map(\.name).joined(separator: " ")))")
                }
                return feature
            }
            let lowered = String(part.lowercased().map { $0 == "_" ? "-" : $0 })
            if lowered == "hv-passthrough" || lowered == "hv-passthrough=on" || lowered == "hv-passthrough=true" {
                hyperV = true
            } else if lowered == "hv-passthrough=off" || lowered == "hv-passthrough=false" {
                hyperV = false
            } else if lowered.hasPrefix("hv-") {
                throw ConfigurationError(field: "cpu", value: part,
                                         expected: "hv-passthrough (HV gives the guest the Hyper-V enlightenments its backend emulates all together, not one by one)")
            } else if part.hasPrefix("+") || part.hasPrefix("-") {
                edits.append((try feature(String(part.dropFirst())), part.hasPrefix("+")))
            } else if let equals = part.firstIndex(of: "=") {
                let key = part[..<equals].lowercased(), value = String(part[part.index(after: equals)...])
                switch key {
                case "vendor":
                    guard value.utf8.count == 12, value.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
                        throw ConfigurationError(field: "cpu", value: part, expected: "vendor=ID with a 12-character ID, e.g. GenuineIntel or AuthenticAMD")
                    }
                    vendor = value
                case "host-phys-bits" where ["on", "true", "yes"].contains(value.lowercased()):
                    break  // HV always gives the guest the host's physical address width
                case "kvm" where ["on", "off", "true", "false"].contains(value.lowercased()):
                    exposesBackend = ["on", "true"].contains(value.lowercased())
                case "enforce" where ["on", "off", "true", "false"].contains(value.lowercased()):
                    enforce = ["on", "true"].contains(value.lowercased())
                default:
                    guard ["on", "off", "true", "false"].contains(value.lowercased()) else {
                        throw ConfigurationError(field: "cpu", value: part, expected: "FEATURE=on|off, vendor=ID or host-phys-bits")
                    }
                    edits.append((try feature(String(key)), ["on", "true"].contains(value.lowercased())))
                }
            } else if part.lowercased() == "host-phys-bits" {
                continue
            } else if part.lowercased() == "enforce" {
                enforce = true
            } else {
                edits.append((try feature(part), true))
            }
        }
    }

    public var description: String {
        ([base.rawValue] + (vendor.map { ["vendor=\($0)"] } ?? []) + edits.map { ($0.enabled ? "+" : "-") + $0.feature.name }
            + (enforce ? [] : ["enforce=off"]) + (hyperV ? ["hv-passthrough"] : []) + (exposesBackend ? [] : ["kvm=off"]))
            .joined(separator: ",")
    }

    /// `supported` (what the backend can give, every leaf) narrowed to this model: the bits of
    /// every register HV names features in that the base does not keep are cleared, the edits
    /// applied in order, the vendor replaced. An edit asking for a feature `supported` lacks
    /// throws when `enforce` is on; else it is left out and returned in `dropped` (QEMU's
    /// default, which only warns).
    public func apply(to supported: [CPUIDEntry]) throws(ConfigurationError) -> (entries: [CPUIDEntry], dropped: [CPUFeature]) {
        var entries = supported, dropped: [CPUFeature] = []
        func matches(_ entry: CPUIDEntry, _ function: UInt32, _ index: UInt32) -> Bool {
            // KVM_CPUID_FLAG_SIGNIFCANT_INDEX (bit 0): the subleaf matters for this leaf.
            entry.function == function && (entry.index == index || entry.flags & 1 == 0)
        }
        func update(_ function: UInt32, _ index: UInt32, _ register: CPUFeature.Register, _ body: (UInt32) -> UInt32) {
            for position in entries.indices where matches(entries[position], function, index) {
                entries[position].setValue(body(entries[position].value(of: register)), of: register)
            }
        }
        if let kept = base.features {
            let keep = kept.compactMap(CPUFeature.named)
            var registers: [(function: UInt32, index: UInt32, register: CPUFeature.Register)] = []
            for feature in CPUFeature.all where !registers.contains(where: {
                $0.function == feature.function && $0.index == feature.index && $0.register == feature.register
            }) {
                registers.append((feature.function, feature.index, feature.register))
            }
            for (function, index, register) in registers {
                let mask = keep.filter { $0.function == function && $0.index == index && $0.register == register }
                    .reduce(UInt32(0)) { $0 | 1 << $1.bit }
                update(function, index, register) { $0 & mask }
            }
        }
        for (feature, enabled) in edits {
            let available = supported.contains { matches($0, feature.function, feature.index) && $0.value(of: feature.register) & (1 << feature.bit) != 0 }
            if enabled, !available {
                guard !enforce else {
                    throw ConfigurationError(field: "cpu", value: "+\(feature.name)",
                                             expected: "a feature this host's backend can give the guest (\(feature.name) is not in its CPUID; enforce=off leaves it out instead)")
                }
                dropped.append(feature)
                continue
            }
            update(feature.function, feature.index, feature.register) { enabled ? $0 | 1 << feature.bit : $0 & ~(1 << feature.bit) }
        }
        if let vendor {
            let bytes = Array(vendor.utf8)
            func word(_ offset: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << UInt32($1 * 8) } }
            update(0, 0, .ebx) { _ in word(0) }
            update(0, 0, .edx) { _ in word(4) }
            update(0, 0, .ecx) { _ in word(8) }
        }
        return (entries, dropped)
    }
}

/// One CPUID leaf/subleaf and its output registers (SDM Vol. 2A, CPUID). `flags` bit 0 says
/// the subleaf `index` matters (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
public struct CPUIDEntry: Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32

    public init(function: UInt32, index: UInt32, flags: UInt32, eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }
}

extension CPUIDEntry {
    func value(of register: CPUFeature.Register) -> UInt32 {
        switch register {
        case .eax: eax
        case .ebx: ebx
        case .ecx: ecx
        case .edx: edx
        }
    }

    mutating func setValue(_ value: UInt32, of register: CPUFeature.Register) {
        switch register {
        case .eax: eax = value
        case .ebx: ebx = value
        case .ecx: ecx = value
        case .edx: edx = value
        }
    }
}
