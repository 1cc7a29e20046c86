// The exit vocabulary: one enum for every backend (KVM hosted, VMX/SVM bare metal).
// A `VMExit` is a plain value with no references: decoding one never allocates.

/// Why the guest stopped running and handed control to the monitor.
///
/// Payloads that point at backend memory (the data of a port access) are valid until the
/// vCPU runs again, the way `kvm_run` is (Documentation/virt/kvm/api.rst, "KVM_RUN").
public enum VMExit: Sendable {
    /// An `IN`/`INS` instruction (SDM Vol. 3C, 28.1.3 "I/O instruction").
    case portIn(PortIO)
    /// An `OUT`/`OUTS` instruction.
    case portOut(PortIO)
    /// A read of guest-physical memory that no RAM backs (memory-mapped I/O).
    case mmioRead(MMIOAccess)
    /// A write to guest-physical memory that no RAM backs.
    case mmioWrite(MMIOAccess)
    /// `HLT` with no interrupt controller to wait on (SDM Vol. 3C, 26.1.3).
    case halt
    /// Shutdown: the processor triple-faulted (SDM Vol. 3A, 6.15 "Double fault").
    case shutdown
    /// VM entry failed; `hardwareReason` is the architecture's own code
    /// (VMX: the exit reason with bit 31 set, SDM 27.8; KVM: `hardware_entry_failure_reason`).
    case entryFailure(hardwareReason: UInt64)
    /// The backend could not continue the guest (KVM: `KVM_EXIT_INTERNAL_ERROR`, e.g. an
    /// instruction the in-kernel emulator cannot handle).
    case internalError(InternalError)
    /// The platform asked to reset, power off or report a crash.
    case systemEvent(SystemEvent)
    /// A debug exception or breakpoint the monitor asked to intercept.
    case debug(DebugException)
    /// `RDMSR` of an MSR the monitor intercepts (SDM Vol. 3C, 26.1.3).
    case msrRead(index: UInt32)
    /// `WRMSR` of an MSR the monitor intercepts.
    case msrWrite(index: UInt32, value: UInt64)
    /// The guest can now take an interrupt (SDM Vol. 3C, 25.6.6 "interrupt-window exiting").
    case interruptWindow
    /// The guest signalled end-of-interrupt for `vector`, a level-triggered interrupt from an
    /// I/O APIC the monitor emulates (KVM split irqchip: `KVM_EXIT_IOAPIC_EOI`; SDM Vol. 3A,
    /// 11.8.5 "Signaling interrupt servicing completion").
    case ioapicEOI(vector: UInt8)
    /// The guest changed its Hyper-V synthetic interrupt controller: wrote SCONTROL, SIEFP or
    /// SIMP (Hyper-V TLFS 6.0, 11.8 "SynIC MSRs"). The backend emulates the SynIC; the monitor
    /// learns where the guest put its message and event-flag pages (KVM: `KVM_EXIT_HYPERV_SYNIC`).
    case hyperVSynIC(HyperVSynICUpdate)
    /// A Hyper-V hypercall the backend leaves to the monitor (TLFS 3 "Hypercall interface"; KVM:
    /// `KVM_EXIT_HYPERV_HCALL` for HvPostMessage and HvSignalEvent without an in-kernel eventfd).
    /// Complete it with `.resumeWith(status)`, a `HyperVStatus` value.
    case hyperVHypercall(HyperVHypercall)
    /// The VMX-preemption timer expired (SDM Vol. 3C, 26.5.1, exit reason 52). Hosted backends
    /// emulate it with a host timer that kicks the vCPU out of the guest.
    case preemptionTimer
    /// The run was interrupted by the host (a signal or `immediate_exit`) before the guest
    /// exited by itself; nothing needs completing.
    case interrupted
    /// An exit this vocabulary does not name; `reason` is the backend's raw number.
    case unknown(reason: UInt32)

    /// The exit's kind, without its payload.
    @inlinable public var kind: ExitKind {
        switch self {
        case .portIn: .portIn
        case .portOut: .portOut
        case .mmioRead: .mmioRead
        case .mmioWrite: .mmioWrite
        case .halt: .halt
        case .shutdown: .shutdown
        case .entryFailure: .entryFailure
        case .internalError: .internalError
        case .systemEvent: .systemEvent
        case .debug: .debug
        case .msrRead: .msrRead
        case .msrWrite: .msrWrite
        case .interruptWindow: .interruptWindow
        case .ioapicEOI: .ioapicEOI
        case .hyperVSynIC: .hyperVSynIC
        case .hyperVHypercall: .hyperVHypercall
        case .preemptionTimer: .preemptionTimer
        case .interrupted: .interrupted
        case .unknown: .unknown
        }
    }
}

/// The kinds of `VMExit`, usable as a dense index (statistics keep one slot per kind).
public enum ExitKind: UInt8, CaseIterable, Sendable {
    case portIn, portOut, mmioRead, mmioWrite, halt, shutdown, entryFailure, internalError,
        systemEvent, debug, msrRead, msrWrite, interruptWindow, ioapicEOI, hyperVSynIC, hyperVHypercall,
        preemptionTimer, interrupted, unknown

    /// A short name for tables and logs ("io-out", "mmio-read", ...).
    public var name: StaticString {
        switch self {
        case .portIn: "io-in"
        case .portOut: "io-out"
        case .mmioRead: "mmio-read"
        case .mmioWrite: "mmio-write"
        case .halt: "hlt"
        case .shutdown: "shutdown"
        case .entryFailure: "entry-failure"
        case .internalError: "internal-error"
        case .systemEvent: "system-event"
        case .debug: "debug"
        case .msrRead: "msr-read"
        case .msrWrite: "msr-write"
        case .interruptWindow: "irq-window"
        case .ioapicEOI: "ioapic-eoi"
        case .hyperVSynIC: "hyperv-synic"
        case .hyperVHypercall: "hyperv-hcall"
        case .preemptionTimer: "preemption-timer"
        case .interrupted: "interrupted"
        case .unknown: "unknown"
        }
    }
}

/// A port access: `count` elements of `size` bytes (count > 1 for `REP INS`/`REP OUTS`).
public struct PortIO: Sendable {
    public var port: IOPort
    /// Bytes per element: 1, 2 or 4.
    public var size: UInt8
    /// Elements transferred; 1 unless the instruction was a string instruction with `REP`.
    public var count: UInt32
    /// The elements: written by the guest for `OUT`, to be filled by the monitor for `IN`.
    public var data: PortIOData

    @inlinable public init(port: IOPort, size: UInt8, count: UInt32, data: PortIOData) {
        self.port = port
        self.size = size
        self.count = count
        self.data = data
    }

    /// The first (for a plain `OUT`, the only) element.
    @inlinable public var value: UInt32 { data[0] }
}

/// A view of the bytes of a port access, owned by the backend (for KVM, inside `kvm_run`).
/// Every element access is bounds-checked against the count the view was built with.
///
/// Valid only while the handler that received the exit runs: the backend reuses the bytes for
/// the vCPU's next exit. Copy the values out (`data[i]`) to keep them.
public struct PortIOData: @unchecked Sendable {
    // @unchecked: a pointer into the backend's per-vCPU buffer, read and written only on the vCPU
    // thread while its handler runs (the lifetime rule above; the compiler does not check it yet).
    @usableFromInline let base: UnsafeMutableRawPointer
    /// Bytes per element.
    public let size: Int
    /// Number of elements.
    public let count: Int

    /// A view of `count` elements of `size` bytes at `base`, or nil when the size is not 1, 2
    /// or 4, or when `count * size` would not fit in `capacity` bytes.
    @inlinable
    public init?(base: UnsafeMutableRawPointer, size: Int, count: Int, capacity: Int) {
        guard size == 1 || size == 2 || size == 4, count >= 1 else { return nil }
        let (total, overflow) = size.multipliedReportingOverflow(by: count)
        guard !overflow, total <= capacity else { return nil }
        self.base = base
        self.size = size
        self.count = count
    }

    /// Element `index`, zero-extended to 32 bits.
    @inlinable public subscript(index: Int) -> UInt32 {
        get {
            precondition(index >= 0 && index < count, "port I/O element out of range")
            let offset = index &* size
            switch size {
            case 1: return UInt32(base.load(fromByteOffset: offset, as: UInt8.self))
            case 2: return UInt32(base.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            default: return base.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
            }
        }
        nonmutating set {
            precondition(index >= 0 && index < count, "port I/O element out of range")
            let offset = index &* size
            switch size {
            case 1: base.storeBytes(of: UInt8(truncatingIfNeeded: newValue), toByteOffset: offset, as: UInt8.self)
            case 2: base.storeBytes(of: UInt16(truncatingIfNeeded: newValue), toByteOffset: offset, as: UInt16.self)
            default: base.storeBytes(of: newValue, toByteOffset: offset, as: UInt32.self)
            }
        }
    }
}

/// A memory-mapped I/O access of 1, 2, 4 or 8 bytes.
public struct MMIOAccess: Sendable, Equatable {
    public var address: GuestPhysicalAddress
    /// Width in bytes: 1, 2, 4 or 8.
    public var width: UInt8
    /// The value written (zero for a read).
    public var value: UInt64

    @inlinable public init(address: GuestPhysicalAddress, width: UInt8, value: UInt64 = 0) {
        self.address = address
        self.width = width
        self.value = value
    }
}

/// Why the backend gave up on the guest.
public struct InternalError: Sendable, Equatable {
    /// The backend's sub-error (KVM: `KVM_INTERNAL_ERROR_EMULATION` = 1, ...).
    public var suberror: UInt32
    /// Up to four words of backend detail (KVM: `internal.data`).
    public var data: (UInt64, UInt64, UInt64, UInt64)
    /// How many of `data` are meaningful.
    public var dataCount: UInt8

    @inlinable
    public init(suberror: UInt32, data: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0), dataCount: UInt8 = 0) {
        self.suberror = suberror
        self.data = data
        self.dataCount = dataCount
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.suberror == b.suberror && a.dataCount == b.dataCount && a.data.0 == b.data.0
            && a.data.1 == b.data.1 && a.data.2 == b.data.2 && a.data.3 == b.data.3
    }
}

/// A platform event reported by the backend.
public enum SystemEvent: Sendable, Equatable {
    /// The guest powered off (ACPI S5, PSCI SYSTEM_OFF).
    case shutdown
    /// The guest asked for a reset.
    case reset
    /// The guest reported a crash (e.g. Hyper-V crash MSRs).
    case crash
    /// The guest put the machine to sleep (ACPI S3) where nothing can wake it.
    case sleep
    /// A backend event with no name here.
    case other(UInt32)
}

/// A debug exception the monitor intercepted (SDM Vol. 3B, 18.2 debug registers).
public struct DebugException: Sendable, Equatable {
    /// Exception vector: 1 for #DB, 3 for #BP.
    public var vector: UInt32
    /// The guest's instruction pointer at the exception.
    public var pc: UInt64
    public var dr6: UInt64
    public var dr7: UInt64

    @inlinable public init(vector: UInt32, pc: UInt64, dr6: UInt64, dr7: UInt64) {
        self.vector = vector
        self.pc = pc
        self.dr6 = dr6
        self.dr7 = dr7
    }
}
