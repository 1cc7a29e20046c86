// The backend surface (Documentation/Architecture.md, Conventions: after rust-vmm kvm-ioctls): three owning handles, system (the
// `Backend`), VM and vCPU, and a small set of operations. Everything else is built on these.

/// What a backend can honour, so a configuration it cannot is refused up front.
public struct BackendCapabilities: Sendable, Equatable {
    /// Most vCPUs one VM may have.
    public var maxVCPUs: Int
    /// Most memory slots one VM may have.
    public var maxMemorySlots: Int
    /// Whether RDMSR/WRMSR of unknown MSRs can be sent to handlers.
    public var msrTrapping: Bool
    /// Whether a running vCPU can be kicked out of the guest (stop/pause).
    public var immediateExit: Bool
    /// Whether the hardware runs guest code natively (false: software emulation, slow).
    public var hardwareVirtualization: Bool

    public init(maxVCPUs: Int, maxMemorySlots: Int, msrTrapping: Bool, immediateExit: Bool,
                hardwareVirtualization: Bool)
    {
        self.maxVCPUs = maxVCPUs
        self.maxMemorySlots = maxMemorySlots
        self.msrTrapping = msrTrapping
        self.immediateExit = immediateExit
        self.hardwareVirtualization = hardwareVirtualization
    }
}

/// A way to run VMs: Linux KVM, a scripted fake for tests, later bare metal.
public protocol Backend: Sendable {
    associatedtype VM: VirtualMachine
    /// A short name for errors and reports ("kvm").
    var name: String { get }
    var capabilities: BackendCapabilities { get }
    /// Creates an empty VM (no memory, no vCPUs) for `configuration`, or refuses, naming the
    /// knob it cannot honour.
    func createVirtualMachine(configuration: VirtualMachineConfiguration) throws(HVError) -> VM
}

/// One VM of a backend: its memory map and vCPUs. Owns what it creates.
public protocol VirtualMachine: AnyObject, Sendable {
    associatedtype CPU: VCPU
    /// The VM-wide state a backend keeps outside its vCPUs (KVM: the in-kernel PIC and I/O
    /// APIC), opaque to HV.
    associatedtype SavedState: Sendable
    /// Makes `region` guest RAM in memory slot `slot`.
    func map(_ region: MemoryRegion, slot: Int) throws(HVError)
    /// Creates vCPU `id` (0 is the bootstrap processor).
    func createVCPU(id: Int) throws(HVError) -> CPU
    /// Drives an interrupt line of the backend's own interrupt controllers (KVM in-kernel
    /// irqchip), or fails naming why the configuration has none.
    func setInterruptLine(_ gsi: UInt32, high: Bool) throws(HVError)
    /// Delivers a message-signalled interrupt to the backend's local APICs.
    func signalMSI(address: UInt64, data: UInt32) throws(HVError)
    /// Tells the backend which MSI each GSI sends (a user-space I/O APIC's redirection table),
    /// so its local APICs report EOIs of level-triggered vectors.
    func setMSIRoutes(_ routes: [(gsi: UInt32, address: UInt64, data: UInt32)]) throws(HVError)
    /// A copy of the VM-wide state, for reset and snapshots. Call while no vCPU runs.
    func saveState() throws(HVError) -> SavedState
    /// Puts back state from `saveState()`. Call while no vCPU runs.
    func restoreState(_ state: SavedState) throws(HVError)
    /// `state` as bytes (a snapshot keeps the power-on state a reset returns to).
    func encodeState(_ state: SavedState) throws(HVError) -> [UInt8]
    /// Reads what `encodeState` wrote, refusing a state this VM cannot take.
    func decodeState(_ bytes: [UInt8]) throws(HVError) -> SavedState
    /// The VM-wide state a snapshot keeps, as bytes: `saveState()` plus what a reset leaves
    /// alone (KVM: the clock). Call while no vCPU runs. Backends without snapshots throw
    /// `.unsupported`.
    func snapshotState() throws(HVError) -> [UInt8]
    /// Puts back `snapshotState()`'s bytes, saved by this process or another, before any vCPU
    /// runs; a state this host cannot take is an error naming the difference.
    func restoreSnapshotState(_ bytes: [UInt8]) throws(HVError)
    /// Starts or stops recording which pages of the memory regions the guest writes
    /// (migration's pre-copy). Backends without a dirty log throw `.unsupported`.
    func setDirtyLogging(_ enabled: Bool) throws(HVError)
    /// The pages of region `slot` written since the last call (or since logging started), one
    /// bit per 4 KiB page, and clears them.
    func fetchDirtyPages(slot: Int) throws(HVError) -> [UInt64]
    /// Signals the eventfd `eventFD` instead of exiting when the guest writes `value` (any value
    /// when nil) as `length` bytes to guest-physical `address`, so a device's doorbell costs
    /// no return to user space (KVM: `KVM_IOEVENTFD`). Backends without such a path throw
    /// `.unsupported` and the write exits as usual.
    func addWriteNotifier(address: UInt64, length: Int, value: UInt64?, eventFD: Int32) throws(HVError)
    /// Takes back a notifier `addWriteNotifier` added with the same arguments (a device moved).
    func removeWriteNotifier(address: UInt64, length: Int, value: UInt64?, eventFD: Int32) throws(HVError)
    /// The same for a guest `OUT` of `length` bytes to I/O `port` (KVM: `KVM_IOEVENTFD` with
    /// `KVM_IOEVENTFD_FLAG_PIO`).
    func addPortWriteNotifier(port: UInt16, length: Int, value: UInt64?, eventFD: Int32) throws(HVError)
    /// Takes back a notifier `addPortWriteNotifier` added with the same arguments.
    func removePortWriteNotifier(port: UInt16, length: Int, value: UInt64?, eventFD: Int32) throws(HVError)
    /// Has the backend deliver the MSI (`address`, `data`) itself whenever `eventFD` is written,
    /// so a device thread raises it with one `write(2)` (KVM: an irqfd on a GSI of its own routed
    /// to the message). Returns the notifier's id for `updateMSINotifier`. Backends without such
    /// a path throw `.unsupported` and devices call `signalMSI`.
    func addMSINotifier(eventFD: Int32, address: UInt64, data: UInt32) throws(HVError) -> UInt32
    /// Points notifier `id` at another message (the guest rewrote an MSI-X table entry).
    func updateMSINotifier(_ id: UInt32, address: UInt64, data: UInt32) throws(HVError)
    /// Has the backend raise Hyper-V synthetic interrupt source `sint` (0-15) of virtual
    /// processor `vpIndex` whenever `eventFD` is written, and signal `ackFD` (when given) when
    /// the guest acknowledges it: an EOI or a write to the EOM MSR (Hyper-V TLFS 11.8). Returns
    /// the notifier's id for `removeNotifier`. Needs a CPU model with Hyper-V enlightenments.
    func addSyntheticInterruptNotifier(vpIndex: UInt32, sint: UInt8, eventFD: Int32, ackFD: Int32?) throws(HVError) -> UInt32
    /// Takes back a notifier (MSI or synthetic interrupt) that `eventFD` was attached with.
    func removeNotifier(_ id: UInt32, eventFD: Int32) throws(HVError)
    /// Has the guest's HvSignalEvent hypercall on `connection` signal `eventFD` without an exit
    /// (nil: stop; the hypercall then exits as `.hyperVHypercall`). Backends without such a
    /// path throw `.unsupported`, and the hypercall exits.
    func setHyperVEventNotifier(connection: UInt32, eventFD: Int32?) throws(HVError)
    /// Leaves the backend's 8259A pair as a PC BIOS does before it boots a kernel: initialised
    /// (ICW1-ICW4: edge-triggered, cascaded on IRQ 2, 8086 mode), IRQ 0-7 on vectors
    /// `masterBase`..+7 and IRQ 8-15 on `slaveBase`..+7, `mask` in the two IMRs (bit n: IRQ n).
    /// Backends without an emulated PIC throw `.unsupported`.
    func initializeLegacyPIC(masterBase: UInt8, slaveBase: UInt8, mask: UInt16) throws(HVError)
}

extension VirtualMachine {
    public func encodeState(_ state: SavedState) throws(HVError) -> [UInt8] {
        throw .unsupported(knob: "snapshots", backend: "\(Self.self)", reason: "the backend cannot save its VM state as bytes")
    }
    public func decodeState(_ bytes: [UInt8]) throws(HVError) -> SavedState {
        throw .unsupported(knob: "snapshots", backend: "\(Self.self)", reason: "the backend cannot restore VM state from bytes")
    }
    public func snapshotState() throws(HVError) -> [UInt8] {
        throw .unsupported(knob: "snapshots", backend: "\(Self.self)", reason: "the backend cannot save its VM state as bytes")
    }
    public func restoreSnapshotState(_ bytes: [UInt8]) throws(HVError) {
        throw .unsupported(knob: "snapshots", backend: "\(Self.self)", reason: "the backend cannot restore VM state from bytes")
    }
    public func setDirtyLogging(_ enabled: Bool) throws(HVError) {
        throw .unsupported(knob: "dirty page logging", backend: "\(Self.self)", reason: "the backend records no written pages")
    }
    public func fetchDirtyPages(slot: Int) throws(HVError) -> [UInt64] {
        throw .unsupported(knob: "dirty page logging", backend: "\(Self.self)", reason: "the backend records no written pages")
    }
    public func addWriteNotifier(address: UInt64, length: Int, value: UInt64?, eventFD: Int32) throws(HVError) {
        throw .unsupported(knob: "write notifiers", backend: "\(Self.self)", reason: "the backend has no eventfd path for guest writes")
    }
    public func removeWriteNotifier(address: UInt64, length: Int, value: UInt64?, eventFD: Int32) throws(HVError) {
        throw .unsupported(knob: "write notifiers", backend: "\(Self.self)", reason: "the backend has no eventfd path for guest writes")
    }
    public func addPortWriteNotifier(port: UInt16, length: Int, value: UInt64?, eventFD: Int32) throws(HVError) {
        throw .unsupported(knob: "write notifiers", backend: "\(Self.self)", reason: "the backend has no eventfd path for guest writes")
    }
    public func removePortWriteNotifier(port: UInt16, length: Int, value: UInt64?, eventFD: Int32) throws(HVError) {
        throw .unsupported(knob: "write notifiers", backend: "\(Self.self)", reason: "the backend has no eventfd path for guest writes")
    }
    public func addMSINotifier(eventFD: Int32, address: UInt64, data: UInt32) throws(HVError) -> UInt32 {
        throw .unsupported(knob: "MSI notifiers", backend: "\(Self.self)", reason: "the backend has no eventfd path for interrupts")
    }
    public func updateMSINotifier(_ id: UInt32, address: UInt64, data: UInt32) throws(HVError) {
        throw .unsupported(knob: "MSI notifiers", backend: "\(Self.self)", reason: "the backend has no eventfd path for interrupts")
    }
    public func addSyntheticInterruptNotifier(vpIndex: UInt32, sint: UInt8, eventFD: Int32, ackFD: Int32?) throws(HVError) -> UInt32 {
        throw .unsupported(knob: "synthetic interrupt notifiers", backend: "\(Self.self)", reason: "the backend emulates no Hyper-V SynIC")
    }
    public func removeNotifier(_ id: UInt32, eventFD: Int32) throws(HVError) {
        throw .unsupported(knob: "notifiers", backend: "\(Self.self)", reason: "the backend has no eventfd path for interrupts")
    }
    public func setHyperVEventNotifier(connection: UInt32, eventFD: Int32?) throws(HVError) {
        throw .unsupported(knob: "Hyper-V event notifiers", backend: "\(Self.self)", reason: "the backend emulates no Hyper-V SynIC")
    }
    public func initializeLegacyPIC(masterBase: UInt8, slaveBase: UInt8, mask: UInt16) throws(HVError) {
        throw .unsupported(knob: "legacy PIC", backend: "\(Self.self)", reason: "the backend emulates no 8259A")
    }
}

/// One virtual processor of a hosted backend: HVModel's `VirtualCPU` (`id`, `run()`,
/// `complete(_:with:)`: what the shared run loop needs, and all a bare-metal engine has) plus
/// the thread, register and state calls a hosted VMM uses. `run()` and the register calls
/// belong to the vCPU's own thread; `requestExit()` may be called from any thread, and makes a
/// run return `.interrupted`.
public protocol VCPU: VirtualCPU, Sendable where RunError == HVError {
    /// Everything the backend keeps for one vCPU (registers, FPU, MSRs, local APIC,
    /// multiprocessing state, pending events), opaque to HV.
    associatedtype SavedState: Sendable

    /// Makes the current or next `run()` return `.interrupted` soon. Thread-safe.
    func requestExit()
    /// Clears a previous `requestExit()` once the run loop has seen it.
    func clearExitRequest()
    /// Called once on the thread that will call `run()`, before the first run.
    func prepareThread() throws(HVError)
    /// Called on the vCPU's thread after its last run.
    func finishThread()

    func registers() throws(HVError) -> Registers
    func setRegisters(_ registers: Registers) throws(HVError)
    func specialRegisters() throws(HVError) -> SpecialRegisters
    func setSpecialRegisters(_ registers: SpecialRegisters) throws(HVError)
    /// Reads the MSRs in `indices`; an MSR the backend cannot read is left out of the result.
    func msrs(_ indices: [UInt32]) throws(HVError) -> [UInt32: UInt64]
    /// Writes MSRs; an MSR the backend refuses is an error naming it.
    func setMSRs(_ values: [UInt32: UInt64]) throws(HVError)
    func fpu() throws(HVError) -> FPUState
    func setFPU(_ state: FPUState) throws(HVError)
    /// The XSAVE area (SDM Vol. 1, 13.4), as the backend stores it.
    func xsave() throws(HVError) -> [UInt8]
    func setXSAVE(_ area: [UInt8]) throws(HVError)

    /// Finishes the instruction behind the last exit without running guest code (an `OUT`
    /// completes, RIP moves past it), so saved or restored state is not overwritten by it
    /// later. Call on the vCPU's thread, outside `run()`.
    func completePendingExit() throws(HVError)
    /// A copy of the vCPU's whole state. It changes nothing the guest can see (KVM's first save
    /// probes which MSRs it can restore by writing back the values it read). Call while the vCPU
    /// is not running.
    func saveState() throws(HVError) -> SavedState
    /// Puts back state from `saveState()`. Call while the vCPU is not running; unlike `run()`
    /// and the register calls, from any thread (a reset restores every vCPU from one thread
    /// while their own threads wait).
    func restoreState(_ state: SavedState) throws(HVError)
    /// `state` as bytes for a snapshot, readable by another process of the same backend.
    /// Backends without snapshots throw `.unsupported`.
    func encodeState(_ state: SavedState) throws(HVError) -> [UInt8]
    /// Reads what `encodeState` wrote; a state this host cannot take is an error naming the
    /// difference (a structure of another size, an MSR this host's KVM refuses).
    func decodeState(_ bytes: [UInt8]) throws(HVError) -> SavedState
}

extension VCPU {
    public func encodeState(_ state: SavedState) throws(HVError) -> [UInt8] {
        throw .unsupported(knob: "snapshots", backend: "\(Self.self)", reason: "the backend cannot save vCPU state as bytes")
    }
    public func decodeState(_ bytes: [UInt8]) throws(HVError) -> SavedState {
        throw .unsupported(knob: "snapshots", backend: "\(Self.self)", reason: "the backend cannot read vCPU state from bytes")
    }
}
