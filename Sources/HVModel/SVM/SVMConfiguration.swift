// An SVM guest's control area as a configuration (AMD APM Vol. 2, Appendix B, Table B-1): which
// instructions and events intercept, the guest's ASID and TLB control, nested paging, and the
// I/O and MSR permission maps built from the same `IOBitmaps` and `MSRBitmap` types a VMX plan
// uses, so one description of "which ports and MSRs the guest owns" serves both vendors.
// Embedded-safe: the bare-metal SVM engine builds its VMCB from it.

/// The intercepts of VMCB offsets 0x00C and 0x010 (APM Vol. 2, 15.9-15.14, Table B-1).
public struct SVMIntercepts: OptionSet, Sendable, Hashable {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    // Offset 0x00C (bits 0-31 here).
    public static let intr = Self(rawValue: 1 << 0)
    public static let nmi = Self(rawValue: 1 << 1)
    public static let smi = Self(rawValue: 1 << 2)
    public static let initSignal = Self(rawValue: 1 << 3)
    public static let virtualInterrupt = Self(rawValue: 1 << 4)
    public static let cpuid = Self(rawValue: 1 << 18)
    public static let hlt = Self(rawValue: 1 << 24)
    public static let ioio = Self(rawValue: 1 << 27)
    public static let msr = Self(rawValue: 1 << 28)
    public static let shutdown = Self(rawValue: 1 << 31)
    // Offset 0x010 (bits 32-63 here).
    public static let vmrun = Self(rawValue: 1 << 32)
    public static let vmmcall = Self(rawValue: 1 << 33)
    public static let vmload = Self(rawValue: 1 << 34)
    public static let vmsave = Self(rawValue: 1 << 35)
    public static let stgi = Self(rawValue: 1 << 36)
    public static let clgi = Self(rawValue: 1 << 37)

    /// The word at VMCB offset 0x00C.
    @inlinable public var misc1: UInt32 { UInt32(truncatingIfNeeded: rawValue) }
    /// The word at VMCB offset 0x010.
    @inlinable public var misc2: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }
}

/// The MSR permission map (APM Vol. 2, 15.11): 8 KiB, two bits per MSR (read, then write) in
/// three 2-KiB vectors: MSRs 0-1FFFh at offset 0, C000_0000h-C000_1FFFh at 800h,
/// C001_0000h-C001_1FFFh at 1000h; 1800h-1FFFh is reserved. An access to an MSR outside the
/// three ranges always intercepts.
public struct SVMMSRPermissionMap: Sendable, Hashable {
    public static let size = 8192
    /// The map, ready to copy to the page(s) MSRPM_BASE_PA names.
    public private(set) var bytes: [UInt8]

    /// The map that intercepts exactly the accesses `bitmap` (VMX's layout, SDM 25.6.9) makes
    /// exit; the third vector (C001_xxxxh, which VMX's bitmap does not cover) intercepts all.
    public init(_ bitmap: MSRBitmap) {
        bytes = Array(repeating: 0xFF, count: Self.size)
        for base: UInt32 in [0, 0xC000_0000] {
            for msr in base..<(base + 0x2000) {
                for access in MSRAccess.allCases where !bitmap.exits(msr, access) {
                    guard let (byte, bit) = Self.position(of: msr, access) else { continue }
                    bytes[byte] &= ~(1 << UInt8(bit))
                }
            }
        }
    }

    /// The byte and bit of `msr`'s `access` permission, nil outside the three ranges.
    public static func position(of msr: UInt32, _ access: MSRAccess) -> (byte: Int, bit: Int)? {
        let vector: Int, index: Int
        switch msr {
        case 0...0x1FFF: (vector, index) = (0, Int(msr))
        case 0xC000_0000...0xC000_1FFF: (vector, index) = (0x800, Int(msr - 0xC000_0000))
        case 0xC001_0000...0xC001_1FFF: (vector, index) = (0x1000, Int(msr - 0xC001_0000))
        default: return nil
        }
        let bitIndex = index * 2 + (access == .write ? 1 : 0)
        return (vector + bitIndex / 8, bitIndex % 8)
    }

    /// Whether `access` to `msr` intercepts.
    public func intercepts(_ msr: UInt32, _ access: MSRAccess) -> Bool {
        guard let (byte, bit) = Self.position(of: msr, access) else { return true }
        return bytes[byte] & (1 << UInt8(bit)) != 0
    }
}

/// The I/O permission map (APM Vol. 2, 15.10.1): 12 KiB, one bit per port from 0 to FFFFh,
/// then bits a multi-byte access that starts near FFFFh reaches; a set bit intercepts.
public struct SVMIOPermissionMap: Sendable, Hashable {
    public static let size = 12288
    public private(set) var bytes: [UInt8]

    /// The map that intercepts the ports `bitmaps` (VMX's bitmaps A and B, SDM 25.6.4) trap;
    /// the bits past FFFFh intercept.
    public init(_ bitmaps: IOBitmaps) {
        bytes = bitmaps.a + bitmaps.b + Array(repeating: 0xFF, count: Self.size - 8192)
    }

    /// Whether a one-byte access at `port` intercepts.
    public func intercepts(_ port: IOPort) -> Bool {
        bytes[Int(port.rawValue) / 8] & (1 << UInt8(port.rawValue % 8)) != 0
    }
}

/// What a bare-metal SVM engine puts in a VMCB's control area.
public struct SVMConfiguration: Sendable, Hashable {
    public var intercepts: SVMIntercepts = [.intr, .nmi, .smi, .cpuid, .hlt, .ioio, .msr, .shutdown, .vmrun, .vmmcall]
    /// The guest's address-space identifier (0 is the host's; APM Vol. 2, 15.16).
    public var asid: UInt32 = 1
    /// TLB_CONTROL for the first VMRUN (APM Vol. 2, 15.16.2): 1 flushes the whole TLB (always
    /// supported), 3 this guest's entries (with FlushByAsid, CPUID 8000_000Ah EDX bit 6); later
    /// VMRUNs use 0, as the ASID keeps the guest's entries apart.
    public var firstTLBControl: UInt8 = 1
    public var nestedPaging = true
    /// V_INTR_MASKING (VMCB offset 0x060 bit 24, APM Vol. 2, 15.21.1): the guest's RFLAGS.IF
    /// masks only virtual interrupts; physical ones follow the host's IF and, intercepted, end
    /// the guest's run.
    public var virtualInterruptMasking = true
    /// What stands in for VMX's preemption timer on SVM, which has none: the host's local APIC
    /// timer armed for this many ticks of its clock (divided by 1) before the guest runs; its
    /// interrupt ends the slice with an INTR intercept. nil: no slices.
    public var hostTimerSlice: UInt32? = nil
    /// Bytes of host stack the VMM runs the guest on (the seed's host-stack-size knob, as
    /// `VMXConfiguration.hostStackSize`).
    public var hostStackSize: UInt64 = 16 * 1024
    /// Which MSR accesses exit (VMX's layout, converted): FS, GS and KERNEL_GS base pass
    /// through (VMLOAD and VMSAVE carry the guest's values in its VMCB, APM Vol. 2, 15.5.2).
    public var msrBitmap: MSRBitmap
    /// Which ports exit.
    public var ioBitmaps: IOBitmaps

    /// Every port and every MSR intercepted, but the three segment-base MSRs.
    public init() {
        var msrs = MSRBitmap(trapAll: true)
        for msr: UInt32 in [0xC000_0100, 0xC000_0101, 0xC000_0102] { msrs.passThrough(msr) }
        msrBitmap = msrs
        ioBitmaps = IOBitmaps(trapAll: true)
    }

    /// The MSR permission map for `msrBitmap`.
    public var msrPermissionMap: SVMMSRPermissionMap { SVMMSRPermissionMap(msrBitmap) }
    /// The I/O permission map for `ioBitmaps`.
    public var ioPermissionMap: SVMIOPermissionMap { SVMIOPermissionMap(ioBitmaps) }

    /// The control-area fields VMRUN's checks read (`VMRUNChecks`), with the maps at
    /// `iopmBase` and `msrpmBase`, on top of `state`'s guest part.
    public func applied(to state: SVMGuestState, iopmBase: UInt64, msrpmBase: UInt64) -> SVMGuestState {
        var state = state
        state.interceptMisc2 = intercepts.misc2
        state.asid = asid
        state.iopmBase = iopmBase
        state.msrpmBase = msrpmBase
        return state
    }
}
