// The architectural register state of one x86-64 logical processor (SDM Vol. 1, 3.4 and
// Vol. 3A, 2.5 / 3.4). Backends translate these to and from their own layouts.

/// The general-purpose registers, RIP and RFLAGS.
public struct Registers: Sendable, Equatable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is reserved and always 1 (SDM Vol. 1, 3.4.3).
    public var rflags: UInt64 = 0x2
    @inlinable public init() {}
}

/// A segment register with its hidden descriptor cache (SDM Vol. 3A, 3.4.3).
public struct Segment: Sendable, Equatable {
    public var base: UInt64 = 0
    public var limit: UInt32 = 0xFFFF
    public var selector: UInt16 = 0
    /// Descriptor type (SDM Vol. 3A, 3.4.5.1): 0x3 read/write data accessed, 0xB execute/read code accessed.
    public var type: UInt8 = 0x3
    public var present: Bool = true
    /// Descriptor privilege level.
    public var dpl: UInt8 = 0
    /// D/B: default operation size 32 bits.
    public var defaultSize32: Bool = false
    /// S: code or data (true) versus system descriptor (false).
    public var codeOrData: Bool = true
    /// L: 64-bit code segment.
    public var long: Bool = false
    /// G: limit counted in 4 KiB units.
    public var granularity: Bool = false
    public var available: Bool = false
    /// True for a null (unusable) segment.
    public var unusable: Bool = false

    @inlinable public init() {}

    @inlinable
    public init(base: UInt64, limit: UInt32, selector: UInt16, type: UInt8, dpl: UInt8 = 0,
                defaultSize32: Bool = false, long: Bool = false, granularity: Bool = false,
                codeOrData: Bool = true, present: Bool = true)
    {
        self.base = base
        self.limit = limit
        self.selector = selector
        self.type = type
        self.dpl = dpl
        self.defaultSize32 = defaultSize32
        self.long = long
        self.granularity = granularity
        self.codeOrData = codeOrData
        self.present = present
    }
}

/// GDTR or IDTR (SDM Vol. 3A, 2.4.1).
public struct DescriptorTable: Sendable, Equatable {
    public var base: UInt64 = 0
    public var limit: UInt16 = 0xFFFF
    @inlinable public init() {}
    @inlinable public init(base: UInt64, limit: UInt16) {
        self.base = base
        self.limit = limit
    }
}

/// Segment, descriptor-table, control registers and EFER.
public struct SpecialRegisters: Sendable, Equatable {
    public var cs = Segment(), ds = Segment(), es = Segment(), fs = Segment(), gs = Segment(), ss = Segment()
    public var tr = Segment(), ldt = Segment()
    public var gdt = DescriptorTable(), idt = DescriptorTable()
    public var cr0: UInt64 = 0, cr2: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, cr8: UInt64 = 0
    public var efer: UInt64 = 0
    public var apicBase: UInt64 = 0
    @inlinable public init() {}
}

extension SpecialRegisters {
    /// Real mode as after RESET (SDM Vol. 3A, 10.1.1, Table 10-1) but with CS base 0: segments
    /// with base 0 and a 64-KiB limit, the IDT at 0 with 256 vectors, CR0.ET only, and a busy
    /// 16-bit TSS and an LDT descriptor present, as VMX's guest-state checks with unrestricted
    /// guest (SDM 27.3.1.2) and SVM's VMRUN want them.
    public static var realMode: SpecialRegisters {
        var special = SpecialRegisters()
        special.cs = Segment(selector: 0, base: 0, limit: 0xFFFF, svmAttributes: 0x9B)
        let data = Segment(selector: 0, base: 0, limit: 0xFFFF, svmAttributes: 0x93)
        special.ds = data
        special.es = data
        special.ss = data
        special.fs = data
        special.gs = data
        special.tr = Segment(selector: 0, base: 0, limit: 0xFFFF, svmAttributes: 0x8B)
        special.ldt = Segment(selector: 0, base: 0, limit: 0xFFFF, svmAttributes: 0x82)
        special.gdt = DescriptorTable(base: 0, limit: 0xFFFF)
        special.idt = DescriptorTable(base: 0, limit: 0x3FF)
        special.cr0 = ControlBits.cr0ET
        return special
    }
}

/// Bits of CR0, CR4 and EFER that guest set-up code names (SDM Vol. 3A, 2.5; Vol. 4, IA32_EFER).
public enum ControlBits {
    public static let cr0PE: UInt64 = 1 << 0
    public static let cr0MP: UInt64 = 1 << 1
    public static let cr0ET: UInt64 = 1 << 4
    public static let cr0NE: UInt64 = 1 << 5
    public static let cr0WP: UInt64 = 1 << 16
    public static let cr0PG: UInt64 = 1 << 31
    public static let cr4PAE: UInt64 = 1 << 5
    public static let cr4OSFXSR: UInt64 = 1 << 9
    public static let cr4OSXMMEXCPT: UInt64 = 1 << 10
    public static let eferSCE: UInt64 = 1 << 0
    public static let eferLME: UInt64 = 1 << 8
    public static let eferLMA: UInt64 = 1 << 10
    public static let eferNXE: UInt64 = 1 << 11
}

/// The legacy x87/SSE state (the FXSAVE image, SDM Vol. 1, 10.5.1).
public struct FPUState: Sendable, Equatable {
    /// x87 control word.
    public var fcw: UInt16 = 0x37F
    /// x87 status word.
    public var fsw: UInt16 = 0
    /// Abridged x87 tag word.
    public var ftwx: UInt8 = 0
    public var lastOpcode: UInt16 = 0
    public var lastIP: UInt64 = 0
    public var lastDP: UInt64 = 0
    /// ST0-ST7 / MM0-MM7, 16 bytes each (80 bits used).
    public var x87: [UInt8] = [UInt8](repeating: 0, count: 8 * 16)
    /// XMM0-XMM15, 16 bytes each.
    public var xmm: [UInt8] = [UInt8](repeating: 0, count: 16 * 16)
    public var mxcsr: UInt32 = 0x1F80
    @inlinable public init() {}
}

extension Segment {
    /// The segment's attributes as an SVM VMCB keeps them (AMD APM Vol. 2, 15.5.1 and Appendix B:
    /// descriptor bits 40-47 in bits 0-7, bits 52-55 in bits 8-11): type, S, DPL, P, then AVL,
    /// L, D/B, G.
    @inlinable public var svmAttributes: UInt16 {
        UInt16(type & 0xF) | (codeOrData ? 1 << 4 : 0) | UInt16(dpl & 3) << 5 | (present ? 1 << 7 : 0)
            | (available ? 1 << 8 : 0) | (long ? 1 << 9 : 0) | (defaultSize32 ? 1 << 10 : 0) | (granularity ? 1 << 11 : 0)
    }

    /// A segment from its selector, base, limit and `svmAttributes`.
    @inlinable public init(selector: UInt16, base: UInt64, limit: UInt32, svmAttributes attributes: UInt16) {
        self.init(base: base, limit: limit, selector: selector, type: UInt8(attributes & 0xF), dpl: UInt8((attributes >> 5) & 3),
                  defaultSize32: attributes & 1 << 10 != 0, long: attributes & 1 << 9 != 0, granularity: attributes & 1 << 11 != 0,
                  codeOrData: attributes & 1 << 4 != 0, present: attributes & 1 << 7 != 0)
        available = attributes & 1 << 8 != 0
    }

    /// A segment from its selector, base, limit and `vmxAccessRights`.
    @inlinable public init(selector: UInt16, base: UInt64, limit: UInt32, vmxAccessRights rights: UInt32) {
        self.init(selector: selector, base: base, limit: limit, svmAttributes: UInt16(rights & 0xFF | (rights >> 12 & 0xF) << 8))
        unusable = rights & 1 << 16 != 0
    }

    /// The VMCS's access-rights form (SDM Vol. 3C, 25.4.1, Table 25-2): descriptor bits 40-47 in
    /// bits 0-7, bits 52-55 (AVL, L, D/B, G) in bits 12-15, bit 16 "unusable".
    @inlinable public var vmxAccessRights: UInt32 {
        if unusable { return 1 << 16 }
        let attributes = UInt32(svmAttributes)
        return attributes & 0xFF | (attributes >> 8) << 12
    }
}
