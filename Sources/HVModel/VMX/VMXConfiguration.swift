// The seed's VMX knobs as one value. `VMXPlanner` turns it into control values and VMCS writes
// for a given processor, with a reason for every decision.

/// How the guest starts: the initial guest state the plan writes (SDM 27.3.1 checks it).
public enum VMXGuestMode: String, Sendable, CaseIterable {
    /// 64-bit long mode with identity paging (IA-32e mode guest).
    case longMode = "long"
    /// 32-bit protected mode, paging off.
    case protectedMode = "protected"
    /// Real mode at reset-like state; needs 'unrestricted guest' (SDM 27.3.1.1 exemptions).
    case realMode = "real"
}

/// EPT page sizes the plan may use (IA32_VMX_EPT_VPID_CAP bits 16-17).
public enum EPTHugePages: String, Sendable, CaseIterable {
    case none, pages2MiB = "2m", pages1GiB = "1g"
}

/// How guest port I/O is intercepted (SDM 25.6.4).
public enum VMXIOInterception: Sendable, Hashable {
    /// Every IN/OUT exits ('unconditional I/O exiting').
    case unconditional
    /// I/O bitmaps: only the listed ports exit; the rest go straight to hardware.
    case bitmap(trappedPorts: [ClosedRange<UInt16>])
    /// No I/O exiting at all (the guest owns every port: only for trusted guests).
    case none
}

/// APIC virtualisation knobs (SDM 30, "APIC Virtualization and Virtual Interrupts").
public struct VMXAPICVirtualization: Sendable, Hashable {
    public var tprShadow = false
    public var apicAccessPage = false
    public var x2APICMode = false
    public var registerVirtualization = false
    public var virtualInterruptDelivery = false
    public var postedInterrupts = false
    /// The posted-interrupt notification vector (0-255).
    public var postedInterruptVector: UInt8 = 0xF2
    public init() {}
}

/// Every knob of a VMX virtual machine, as a plain value (validated by `VMXPlanner`).
public struct VMXConfiguration: Sendable, Hashable {
    // Timer
    /// Preemption-timer interval in TSC ticks; nil leaves the timer off. The VMCS value is this
    /// shifted right by the IA32_VMX_MISC rate (SDM 26.5.1).
    public var preemptionTimerTSC: UInt64? = nil
    // Memory virtualisation and TLBs
    public var ept = true
    public var unrestrictedGuest = false
    public var hugePages: EPTHugePages = .pages2MiB
    public var eptAccessedDirty = false
    /// EPT paging-structure memory type: 6 (WB) or 0 (UC) (SDM 25.6.11).
    public var eptMemoryType: UInt8 = 6
    /// Tag TLB entries with a VPID so VM exits need not flush (SDM 29.1).
    public var vpid = true
    public var vpidValue: UInt16 = 1
    // Stacks (bytes; the VMM allocates them; the plan only checks and reports)
    public var hostStackSize: UInt64 = 16 * 1024
    public var guestStackSize: UInt64 = 16 * 1024
    // Caching
    public var loadSavePAT = true
    public var loadSaveEFER = true
    // MSRs
    public var msrBitmap = true
    public var passThroughMSRs: [UInt32] = [0xC000_0100, 0xC000_0101, 0xC000_0102]  // FS/GS/KERNEL_GS base
    public var trappedMSRs: [UInt32] = []
    /// Trap every MSR the bitmap does not pass through (including ones the CPU lacks).
    public var trapInvalidMSRs = true
    // Debug
    public var exceptionBitmap: UInt32 = 1 << 18  // #MC, as KVM does
    public var movDRExiting = false
    public var monitorTrapFlag = false
    // Control registers
    public var cr0GuestHostMask: UInt64 = 0
    public var cr4GuestHostMask: UInt64 = 0
    public var cr3LoadExiting = false
    public var cr3StoreExiting = false
    public var cr8Exiting = false
    // Pinned security bits
    public var enforceNX = false
    public var enforceSMEP = false
    public var enforceSMAP = false
    // I/O
    public var io: VMXIOInterception = .bitmap(trappedPorts: [0x3F8...0x3FF, 0xF4...0xF4])
    // APIC
    public var apic = VMXAPICVirtualization()
    // Nesting
    public var vmcsShadowing = false
    // Guest start and where the VMM put its structures (host-physical)
    public var guestMode: VMXGuestMode = .longMode
    public var guestEntry: UInt64 = 0x10_0000
    public var structureBase: UInt64 = 0x20_0000
    public var hostEntry: UInt64 = 0xFFFF_FFFF_8100_0000

    public init() {}

    /// The knob names `enable`/`disable` accept.
    public static let knobNames = [
        "ept", "vpid", "unrestricted-guest", "preemption-timer", "huge-pages-1g", "ept-ad",
        "pat", "efer", "msr-bitmap", "trap-invalid-msrs", "mov-dr-exiting", "monitor-trap-flag",
        "cr3-exiting", "cr8-exiting", "nx", "smep", "smap", "io-bitmap", "unconditional-io",
        "tpr-shadow", "apic-access", "x2apic", "apic-register-virtualization",
        "virtual-interrupt-delivery", "posted-interrupts", "vmcs-shadowing",
    ]

    /// Turns the knob `name` on or off; false for an unknown name.
    public mutating func set(_ name: String, _ on: Bool) -> Bool {
        switch name {
        case "ept": ept = on
        case "vpid": vpid = on
        case "unrestricted-guest": unrestrictedGuest = on
        case "preemption-timer": preemptionTimerTSC = on ? (preemptionTimerTSC ?? 10_000_000) : nil
        case "huge-pages-1g": hugePages = on ? .pages1GiB : .pages2MiB
        case "ept-ad": eptAccessedDirty = on
        case "pat": loadSavePAT = on
        case "efer": loadSaveEFER = on
        case "msr-bitmap": msrBitmap = on
        case "trap-invalid-msrs": trapInvalidMSRs = on
        case "mov-dr-exiting": movDRExiting = on
        case "monitor-trap-flag": monitorTrapFlag = on
        case "cr3-exiting": cr3LoadExiting = on; cr3StoreExiting = on
        case "cr8-exiting": cr8Exiting = on
        case "nx": enforceNX = on
        case "smep": enforceSMEP = on
        case "smap": enforceSMAP = on
        case "io-bitmap": io = on ? .bitmap(trappedPorts: [0x3F8...0x3FF, 0xF4...0xF4]) : .unconditional
        case "unconditional-io": io = on ? .unconditional : .bitmap(trappedPorts: [])
        case "tpr-shadow": apic.tprShadow = on
        case "apic-access": apic.apicAccessPage = on
        case "x2apic": apic.x2APICMode = on
        case "apic-register-virtualization": apic.registerVirtualization = on
        case "virtual-interrupt-delivery": apic.virtualInterruptDelivery = on
        case "posted-interrupts": apic.postedInterrupts = on
        case "vmcs-shadowing": vmcsShadowing = on
        default: return false
        }
        return true
    }
}

/// Something in a configuration that cannot work, with the knob that asked for it.
public enum VMXPlanProblem: Error, Hashable, Sendable {
    /// A control bit the knob needs is not available (names bit and capability MSR).
    case control(knob: String, VMXControlProblem)
    /// A knob needs a capability outside the control MSRs (EPT/VPID, MISC...).
    case capability(knob: String, reason: String)
    /// Two knobs, or a knob and its value, contradict each other.
    case invalid(knob: String, reason: String)

    public var message: String {
        switch self {
        case .control(let knob, let problem): "\(knob): \(problem.message)"
        case .capability(let knob, let reason): "\(knob): \(reason)"
        case .invalid(let knob, let reason): "\(knob): \(reason)"
        }
    }
}

/// Every problem of a configuration.
public struct VMXPlanError: Error, Hashable, Sendable {
    public var problems: [VMXPlanProblem]
    public init(problems: [VMXPlanProblem]) { self.problems = problems }
}

/// One decision the planner made, for the report.
public struct VMXPlanDecision: Hashable, Sendable {
    public var knob: String
    public var text: String
    public init(knob: String, text: String) {
        self.knob = knob
        self.text = text
    }
}

/// A configuration made concrete for one processor.
public struct VMXPlan: Sendable {
    /// The seven control fields, reconciled, with per-bit reasons.
    public var controls: [ReconciledControl]
    /// Every VMCS field the VMM should VMWRITE, with its value.
    public var vmcs: VMCSImage
    /// The MSR bitmap page to place at the plan's MSR-bitmap address (nil when unused).
    public var msrBitmap: MSRBitmap?
    /// The I/O bitmaps (nil when unused).
    public var ioBitmaps: IOBitmaps?
    /// Why each knob became what it is.
    public var decisions: [VMXPlanDecision]
    /// The VM-entry checks that would fail (empty: VMLAUNCH would succeed as far as the VMCS shows).
    public var entryFailures: [VMEntryFailure]
}
