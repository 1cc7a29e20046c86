// The exit vocabulary: one enum for every backend (KVM hosted, VMX/SVM bare metal).
// A `VMExit` is a plain value; its one reference (a port access's buffer) is made once per vCPU,
// so decoding an exit never allocates.
import Synchronization

/// Why the guest stopped running and handed control to the monitor.
///
/// The data of a port access lives in the backend's buffer, reused at the vCPU's next run the
/// way `kvm_run` is (Documentation/virt/kvm/api.rst, "KVM_RUN"): `PortIOData` checks at each
/// access that its exit is still the current one.
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

/// The bytes a vCPU's port exits are handed over in (for KVM, the data area of its `kvm_run`
/// mapping), with a count of the vCPU's runs. Every `PortIOData` keeps its buffer alive, so a
/// view kept past its exit never reaches freed or unmapped memory, and remembers the run it
/// came from, so once the vCPU has run again it reads zeros and drops writes instead of
/// another exit's bytes. One per vCPU, made before the first run: exits allocate nothing.
open class PortIOBuffer: @unchecked Sendable {
    // @unchecked: `base` and `capacity` never change; the run count is atomic; the bytes are
    // touched only through views of the current run (checked at each access) on the vCPU's
    // thread, or by the backend between runs.
    public let base: UnsafeMutableRawPointer
    public let capacity: Int
    @usableFromInline let runs = Atomic<UInt64>(0)
    private let owned: Bool

    /// A buffer of `capacity` bytes of its own (a scripted backend, tests, benchmarks).
    public init(capacity: Int) {
        base = .allocate(byteCount: max(capacity, 1), alignment: 8)
        self.capacity = max(capacity, 0)
        owned = true
    }

    /// `capacity` bytes at `base` that a subclass owns and releases in its own deinit (a
    /// backend's mapping, which thereby lives as long as any view of it).
    public init(borrowing base: UnsafeMutableRawPointer, capacity: Int) {
        self.base = base
        self.capacity = max(capacity, 0)
        owned = false
    }

    deinit { if owned { base.deallocate() } }

    /// The vCPU is about to run: views of earlier exits go stale. Called by the backend on the
    /// vCPU's thread, the only writer (a load and a store, no read-modify-write).
    @inlinable public final func beginRun() {
        runs.store(runs.load(ordering: .relaxed) &+ 1, ordering: .releasing)
    }
}

/// A view of the bytes of a port access in the backend's `PortIOBuffer`. Every element access
/// is bounds-checked against the count the view was built with, and checked to belong to the
/// current run: valid while the handler that received the exit runs; kept longer, it reads
/// zeros and drops writes (copy the values out, `data[i]`, to keep them).
public struct PortIOData: Sendable {
    @usableFromInline let buffer: PortIOBuffer
    @usableFromInline let offset: Int
    @usableFromInline let run: UInt64
    /// Bytes per element.
    public let size: Int
    /// Number of elements.
    public let count: Int

    /// A view of `count` elements of `size` bytes at `offset` in `buffer`, for the buffer's
    /// current run, or nil when the size is not 1, 2 or 4, or when the elements would not fit
    /// in the buffer.
    @inlinable
    public init?(buffer: PortIOBuffer, offset: Int = 0, size: Int, count: Int) {
        guard size == 1 || size == 2 || size == 4, count >= 1, offset >= 0, offset <= buffer.capacity else { return nil }
        let (total, overflow) = size.multipliedReportingOverflow(by: count)
        guard !overflow, total <= buffer.capacity - offset else { return nil }
        self.buffer = buffer
        self.offset = offset
        self.run = buffer.runs.load(ordering: .relaxed)
        self.size = size
        self.count = count
    }

    /// Whether the view belongs to the vCPU's current run (false once it has run again).
    @inlinable public var isCurrent: Bool { buffer.runs.load(ordering: .acquiring) == run }

    /// Element `index`, zero-extended to 32 bits; 0 from a stale view.
    @inlinable public subscript(index: Int) -> UInt32 {
        get {
            precondition(index >= 0 && index < count, "port I/O element out of range")
            guard isCurrent else { return 0 }
            let base = buffer.base + offset, position = index &* size
            switch size {
            case 1: return UInt32(base.load(fromByteOffset: position, as: UInt8.self))
            case 2: return UInt32(base.loadUnaligned(fromByteOffset: position, as: UInt16.self))
            default: return base.loadUnaligned(fromByteOffset: position, as: UInt32.self)
            }
        }
        nonmutating set {
            precondition(index >= 0 && index < count, "port I/O element out of range")
            guard isCurrent else { return }
            let base = buffer.base + offset, position = index &* size
            switch size {
            case 1: base.storeBytes(of: UInt8(truncatingIfNeeded: newValue), toByteOffset: position, as: UInt8.self)
            case 2: base.storeBytes(of: UInt16(truncatingIfNeeded: newValue), toByteOffset: position, as: UInt16.self)
            default: base.storeBytes(of: newValue, toByteOffset: position, as: UInt32.self)
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
