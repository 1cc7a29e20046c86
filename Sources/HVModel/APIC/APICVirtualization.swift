// VMX APIC virtualisation: the virtual-APIC page, TPR virtualisation and the TPR threshold,
// virtual-interrupt delivery (RVI, SVI, PPR and EOI virtualisation, the EOI-exit bitmap) and
// posted-interrupt processing (SDM Vol. 3C chapter 30 "APIC Virtualization and Virtual
// Interrupts": 30.1 virtual APIC state, 30.2 evaluation and delivery of virtual interrupts,
// 30.3 CR8, 30.4/30.5 memory-mapped and MSR accesses, 30.6 posted-interrupt processing).
//
// This is what the processor does in VMX non-root operation; the bare-metal backend uses it to
// predict and check hardware, and a software VMM can run it to emulate the same behaviour.

/// The 4 KiB virtual-APIC page: xAPIC register offsets hold the virtual registers (SDM 30.1.1).
public struct VirtualAPICPage: Hashable, Sendable {
    /// The page as 1024 little-endian dwords; dword `offset / 4` holds the register at `offset`.
    public var dwords: [UInt32]

    /// A zeroed page.
    public init() { dwords = [UInt32](repeating: 0, count: 1024) }

    /// A page from its 4096 bytes (little-endian); nil for another length.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 4096 else { return nil }
        self.init()
        var index = 0
        var shift: UInt32 = 0
        for byte in bytes {
            dwords[index >> 2] |= UInt32(byte) << shift
            index += 1
            shift = (shift + 8) & 31
        }
    }

    /// The 4096 bytes of the page.
    public var bytes: [UInt8] {
        var result = [UInt8](repeating: 0, count: 4096)
        for index in 0..<4096 { result[index] = UInt8(truncatingIfNeeded: dwords[index >> 2] >> UInt32((index & 3) * 8)) }
        return result
    }

    /// The 32-bit field at `offset` (4-byte aligned, below 0x1000).
    public subscript(offset offset: UInt32) -> UInt32 {
        get { dwords[Int((offset & 0xFFC) >> 2)] }
        set { dwords[Int((offset & 0xFFC) >> 2)] = newValue }
    }

    /// VTPR, offset 0x080.
    public var vtpr: UInt32 {
        get { self[offset: 0x080] }
        set { self[offset: 0x080] = newValue }
    }
    /// VPPR, offset 0x0A0.
    public var vppr: UInt32 {
        get { self[offset: 0x0A0] }
        set { self[offset: 0x0A0] = newValue }
    }
    /// VEOI, offset 0x0B0.
    public var veoi: UInt32 {
        get { self[offset: 0x0B0] }
        set { self[offset: 0x0B0] = newValue }
    }
    /// VISR: eight dwords at 0x100-0x170.
    public var visr: APICVectorSet {
        get { vectorSet(at: 0x100) }
        set { setVectorSet(newValue, at: 0x100) }
    }
    /// VIRR: eight dwords at 0x200-0x270.
    public var virr: APICVectorSet {
        get { vectorSet(at: 0x200) }
        set { setVectorSet(newValue, at: 0x200) }
    }
    /// VICR_LO (0x300) and VICR_HI (0x310) as one value.
    public var vicr: UInt64 {
        get { UInt64(self[offset: 0x300]) | UInt64(self[offset: 0x310]) << 32 }
        set {
            self[offset: 0x300] = UInt32(truncatingIfNeeded: newValue)
            self[offset: 0x310] = UInt32(truncatingIfNeeded: newValue >> 32)
        }
    }

    func vectorSet(at base: UInt32) -> APICVectorSet {
        var set = APICVectorSet()
        for index in 0..<8 { set.setRegister(index, self[offset: base + UInt32(index) * 0x10]) }
        return set
    }

    mutating func setVectorSet(_ set: APICVectorSet, at base: UInt32) {
        for index in 0..<8 { self[offset: base + UInt32(index) * 0x10] = set.register(index) }
    }
}

/// The guest interrupt status VMCS field (encoding 0x0810, SDM 25.4.2): RVI in bits 7:0, SVI in
/// bits 15:8.
public struct GuestInterruptStatus: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(rvi: UInt8, svi: UInt8) { rawValue = UInt16(rvi) | UInt16(svi) << 8 }

    /// The VMCS field encoding.
    public static let vmcsEncoding: UInt32 = 0x0810

    /// Requesting virtual interrupt: the highest-priority vector in VIRR.
    public var rvi: UInt8 {
        get { UInt8(truncatingIfNeeded: rawValue) }
        set { rawValue = rawValue & 0xFF00 | UInt16(newValue) }
    }
    /// Servicing virtual interrupt: the highest-priority vector in VISR.
    public var svi: UInt8 {
        get { UInt8(truncatingIfNeeded: rawValue >> 8) }
        set { rawValue = rawValue & 0x00FF | UInt16(newValue) << 8 }
    }
}

/// A VM exit APIC virtualisation causes (basic exit reasons from SDM Appendix C).
public enum VirtualAPICExit: Hashable, Sendable {
    /// Exit reason 43, trap-like: VTPR[7:4] fell below TPR threshold[3:0] (SDM 30.1.2).
    case tprBelowThreshold
    /// Exit reason 45, trap-like: EOI virtualisation of a vector whose EOI-exit bit is set; the
    /// exit qualification is the vector (SDM 30.1.4).
    case eoiInduced(vector: UInt8)

    /// The basic exit reason.
    public var basicExitReason: UInt16 {
        switch self {
        case .tprBelowThreshold: 43
        case .eoiInduced: 45
        }
    }
}

/// The virtual APIC of one vCPU as VMX non-root operation sees it: the page plus the VMCS fields
/// and controls that steer it.
public struct APICVirtualization: Hashable, Sendable {
    public var page = VirtualAPICPage()
    /// Guest interrupt status (RVI, SVI); used only with virtual-interrupt delivery.
    public var guestInterruptStatus = GuestInterruptStatus(rawValue: 0)
    /// The TPR threshold VMCS field (encoding 0x401C); bits 3:0 matter.
    public var tprThreshold: UInt32 = 0
    /// The four EOI-exit bitmap fields (encodings 0x201C-0x2022): one bit per vector.
    public var eoiExitBitmap = APICVectorSet()
    /// The "virtualize APIC accesses" secondary control.
    public var virtualizeAPICAccesses = false
    /// The "virtual-interrupt delivery" secondary control.
    public var virtualInterruptDelivery = false
    /// The "interrupt-window exiting" primary control: while set, no virtual interrupt is recognised.
    public var interruptWindowExiting = false
    /// The vector of the virtual interrupt the last evaluation recognised, nil when none (SDM 30.2.1).
    public private(set) var recognizedVirtualInterrupt: UInt8?

    public init(virtualInterruptDelivery: Bool = false, virtualizeAPICAccesses: Bool = false) {
        self.virtualInterruptDelivery = virtualInterruptDelivery
        self.virtualizeAPICAccesses = virtualizeAPICAccesses
    }

    /// The VM-entry checks on the TPR threshold for "use TPR shadow" = 1 (SDM 27.2.1.1): nil when they
    /// pass, else the rule that fails.
    public func tprThresholdEntryCheckFailure() -> String? {
        guard !virtualInterruptDelivery else { return nil }
        if tprThreshold & ~0xF != 0 {
            return "27.2.1.1: TPR threshold bits 31:4 must be 0 without 'virtual-interrupt delivery'"
        }
        if !virtualizeAPICAccesses && tprThreshold & 0xF > (page.vtpr >> 4) & 0xF {
            return "27.2.1.1: TPR threshold bits 3:0 must not exceed VTPR bits 7:4"
        }
        return nil
    }

    /// What VM entry does with the virtual APIC: with virtual-interrupt delivery, PPR virtualisation
    /// and evaluation of pending virtual interrupts (SDM 27.3.2.5); with "virtualize APIC accesses"
    /// and without it, a TPR-below-threshold exit right after entry when threshold[3:0] > VTPR[7:4]
    /// (SDM 27.7.7 "VM Exits Induced by the TPR Threshold").
    public mutating func vmEntry() -> VirtualAPICExit? {
        if virtualInterruptDelivery {
            virtualizePPR()
            evaluatePendingVirtualInterrupts()
            return nil
        }
        return tprThreshold & 0xF > (page.vtpr >> 4) & 0xF ? .tprBelowThreshold : nil
    }

    // MARK: - TPR (SDM 30.1.2, 30.3, 30.4.3.2, 30.5)

    /// MOV to CR8: VTPR[7:4] = source[3:0], the rest of VTPR cleared, then TPR virtualisation.
    /// #GP when source bits 63:4 are not 0 (SDM 30.3).
    public mutating func moveToCR8(_ source: UInt64) throws(APICFault) -> VirtualAPICExit? {
        guard source & ~0xF == 0 else { throw .generalProtection }
        return writeVTPR(UInt8(source) << 4)
    }

    /// MOV from CR8: VTPR[7:4] in bits 3:0 (SDM 30.3).
    public var cr8: UInt64 { UInt64((page.vtpr >> 4) & 0xF) }

    /// A virtualised TPR write (MMIO to offset 0x080 by APIC-write emulation, or WRMSR 0x808 with
    /// bits 63:8 clear): VTPR = value with bytes 1-3 cleared, then TPR virtualisation.
    public mutating func writeVTPR(_ value: UInt8) -> VirtualAPICExit? {
        page.vtpr = UInt32(value)
        return virtualizeTPR()
    }

    /// TPR virtualisation (SDM 30.1.2): without virtual-interrupt delivery, a TPR-below-threshold
    /// exit when VTPR[7:4] < threshold[3:0]; with it, PPR virtualisation and evaluation.
    public mutating func virtualizeTPR() -> VirtualAPICExit? {
        if !virtualInterruptDelivery {
            return (page.vtpr >> 4) & 0xF < tprThreshold & 0xF ? .tprBelowThreshold : nil
        }
        virtualizePPR()
        evaluatePendingVirtualInterrupts()
        return nil
    }

    // MARK: - Virtual-interrupt delivery (SDM 30.1.3-30.1.5, 30.2)

    /// PPR virtualisation (SDM 30.1.3): VPPR = VTPR & 0xFF if VTPR[7:4] >= SVI[7:4], else SVI & 0xF0.
    public mutating func virtualizePPR() {
        let vtpr = UInt8(truncatingIfNeeded: page.vtpr)
        page.vppr = UInt32(APICPriority.processorPriority(tpr: vtpr, isrv: guestInterruptStatus.svi))
    }

    /// Evaluation of pending virtual interrupts (SDM 30.2.1): recognised when interrupt-window
    /// exiting is 0 and RVI[7:4] > VPPR[7:4]. Returns the recognised vector.
    @discardableResult
    public mutating func evaluatePendingVirtualInterrupts() -> UInt8? {
        let rvi = guestInterruptStatus.rvi
        let vppr = UInt8(truncatingIfNeeded: page.vppr)
        recognizedVirtualInterrupt = !interruptWindowExiting && rvi >> 4 > vppr >> 4 ? rvi : nil
        return recognizedVirtualInterrupt
    }

    /// Virtual-interrupt delivery (SDM 30.2.2), when the guest can take an interrupt (RFLAGS.IF = 1,
    /// no STI/MOV SS blocking, active state): RVI moves from VIRR to VISR and becomes SVI; VPPR =
    /// vector & 0xF0; RVI becomes the next-highest VIRR vector. Returns the vector to deliver through
    /// the guest IDT, nil when none is recognised.
    public mutating func deliverVirtualInterrupt() -> UInt8? {
        guard let vector = recognizedVirtualInterrupt else { return nil }
        var visr = page.visr
        visr.insert(vector)
        page.visr = visr
        guestInterruptStatus.svi = vector
        page.vppr = UInt32(vector & 0xF0)
        var virr = page.virr
        virr.remove(vector)
        page.virr = virr
        guestInterruptStatus.rvi = virr.highest ?? 0
        recognizedVirtualInterrupt = nil
        return vector
    }

    /// EOI virtualisation (SDM 30.1.4), on a guest EOI write (MMIO 0x0B0, or WRMSR 0x80B of 0) with
    /// virtual-interrupt delivery: VISR[SVI] cleared, SVI = next-highest VISR vector, PPR
    /// virtualisation, then an EOI-induced exit if the vector's EOI-exit bit is set, else evaluation.
    public mutating func virtualizeEOI() -> VirtualAPICExit? {
        let vector = guestInterruptStatus.svi
        var visr = page.visr
        visr.remove(vector)
        page.visr = visr
        guestInterruptStatus.svi = visr.highest ?? 0
        virtualizePPR()
        if eoiExitBitmap.contains(vector) { return .eoiInduced(vector: vector) }
        evaluatePendingVirtualInterrupts()
        return nil
    }

    /// Self-IPI virtualisation (SDM 30.1.5): VIRR[vector] set, RVI = max(RVI, vector), evaluation.
    public mutating func virtualizeSelfIPI(vector: UInt8) {
        var virr = page.virr
        virr.insert(vector)
        page.virr = virr
        guestInterruptStatus.rvi = max(guestInterruptStatus.rvi, vector)
        evaluatePendingVirtualInterrupts()
    }

    /// Posted-interrupt processing (SDM 30.6), after the processor recognised the notification
    /// vector (and wrote the physical APIC's EOI): clears ON, ORs PIR into VIRR and clears PIR,
    /// RVI = max(RVI, highest PIR vector), then evaluation.
    public mutating func processPostedInterrupts(_ descriptor: inout PostedInterruptDescriptor) {
        descriptor.outstandingNotification = false
        let pir = descriptor.pir
        descriptor.pir = APICVectorSet()
        page.virr = page.virr.union(pir)
        if let highest = pir.highest { guestInterruptStatus.rvi = max(guestInterruptStatus.rvi, highest) }
        evaluatePendingVirtualInterrupts()
    }
}
