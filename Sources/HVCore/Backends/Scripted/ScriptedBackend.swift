// A backend that replays scripted exits instead of running a guest (Documentation/Architecture.md,
// Conventions: after NIO's EmbeddedChannel): exit handling, devices and the run loop are tested without /dev/kvm, and
// hv-bench measures the user-space dispatch cost on it.
import Synchronization

/// One exit a scripted vCPU reports.
public enum ScriptedExit: Sendable, Equatable {
    /// `OUT`/`OUTS` of `values` (one element each) of `size` bytes.
    case portOut(port: IOPort, size: UInt8, values: [UInt32])
    /// `IN`/`INS` of `count` elements of `size` bytes.
    case portIn(port: IOPort, size: UInt8, count: UInt32)
    case mmioRead(address: GuestPhysicalAddress, width: UInt8)
    case mmioWrite(address: GuestPhysicalAddress, width: UInt8, value: UInt64)
    case halt
    case shutdown
    case entryFailure(hardwareReason: UInt64)
    case internalError(suberror: UInt32)
    case systemEvent(SystemEvent)
    case debug(DebugException)
    case msrRead(index: UInt32)
    case msrWrite(index: UInt32, value: UInt64)
    case interruptWindow
    case ioapicEOI(vector: UInt8)
    case hyperVSynIC(HyperVSynICUpdate)
    case hyperVHypercall(HyperVHypercall)
    case unknown(reason: UInt32)
}

/// What the run loop wrote back for one scripted exit.
public struct ScriptedCompletion: Sendable, Equatable {
    public var exit: ScriptedExit
    public var action: ExitAction
    /// For `portIn`: the elements the monitor supplied.
    public var inData: [UInt32]
}

/// A backend whose vCPUs replay scripts.
public struct ScriptedBackend: Backend {
    public typealias VM = ScriptedVirtualMachine

    /// One script per vCPU id; a vCPU without a script halts at once.
    public let scripts: [[ScriptedExit]]
    /// When true, a finished script starts again (for benchmarks); otherwise the vCPU reports
    /// `.systemEvent(.shutdown)` after its last exit.
    public let repeats: Bool
    /// When true, every completion is recorded for inspection (this allocates; off in benchmarks).
    public let records: Bool
    public let name = "scripted"
    public let capabilities = BackendCapabilities(maxVCPUs: 64, maxMemorySlots: 32, msrTrapping: true,
                                                  immediateExit: true, hardwareVirtualization: false)

    public init(scripts: [[ScriptedExit]], repeats: Bool = false, records: Bool = true) {
        self.scripts = scripts
        self.repeats = repeats
        self.records = records
    }

    /// A backend with one vCPU script.
    public init(script: [ScriptedExit], repeats: Bool = false, records: Bool = true) {
        self.init(scripts: [script], repeats: repeats, records: records)
    }

    public func createVirtualMachine(configuration: VirtualMachineConfiguration) throws(HVError) -> ScriptedVirtualMachine {
        do { try configuration.validate() } catch { throw .configuration(error) }
        guard configuration.cpuCount <= capabilities.maxVCPUs else {
            throw .configuration(ConfigurationError(field: "cpuCount", value: "\(configuration.cpuCount)",
                                                    expected: "at most \(capabilities.maxVCPUs)"))
        }
        return ScriptedVirtualMachine(backend: self)
    }
}

/// A scripted VM: remembers its memory map.
public final class ScriptedVirtualMachine: VirtualMachine, Sendable {
    public typealias CPU = ScriptedVCPU
    let backend: ScriptedBackend
    private let slots = Mutex<[Int: MemoryRegion]>([:])

    init(backend: ScriptedBackend) { self.backend = backend }

    public func map(_ region: MemoryRegion, slot: Int) throws(HVError) {
        slots.withLock { $0[slot] = region }
    }

    /// The regions mapped so far, by slot.
    public var mappedRegions: [Int: MemoryRegion] { slots.withLock { $0 } }

    /// Interrupt lines and MSIs the VM was asked to raise, in order.
    public enum InterruptEvent: Sendable, Equatable {
        case line(gsi: UInt32, high: Bool)
        case msi(address: UInt64, data: UInt32)
    }

    private let interruptLog = Mutex<[InterruptEvent]>([])

    /// Every interrupt line change and MSI so far.
    public var interruptEvents: [InterruptEvent] { interruptLog.withLock { $0 } }

    public func setInterruptLine(_ gsi: UInt32, high: Bool) throws(HVError) {
        interruptLog.withLock { $0.append(.line(gsi: gsi, high: high)) }
    }

    public func signalMSI(address: UInt64, data: UInt32) throws(HVError) {
        interruptLog.withLock { $0.append(.msi(address: address, data: data)) }
    }

    private let routeTable = Mutex<[UInt32: (address: UInt64, data: UInt32)]>([:])

    /// The MSI routes last set, by GSI.
    public var msiRoutes: [UInt32: (address: UInt64, data: UInt32)] { routeTable.withLock { $0 } }

    public func setMSIRoutes(_ routes: [(gsi: UInt32, address: UInt64, data: UInt32)]) throws(HVError) {
        routeTable.withLock { table in
            table = [:]
            for route in routes { table[route.gsi] = (route.address, route.data) }
        }
    }

    /// A scripted VM keeps no interrupt-controller state of its own beyond its MSI routes.
    public struct SavedState: Sendable {
        var routes: [UInt32: (address: UInt64, data: UInt32)]
    }

    public func saveState() throws(HVError) -> SavedState { SavedState(routes: msiRoutes) }

    public func restoreState(_ state: SavedState) throws(HVError) {
        routeTable.withLock { $0 = state.routes }
    }

    /// A synthetic interrupt notifier as a scripted VM keeps it: where its eventfd leads and the
    /// resampler the test writes to play the guest's EOM (the kernel's part on KVM).
    public struct SyntheticInterruptNotifier: Sendable, Equatable {
        public var vpIndex: UInt32, sint: UInt8, eventFD: Int32, ackFD: Int32?
    }
    private let syntheticNotifiers = Mutex<[UInt32: SyntheticInterruptNotifier]>([:])
    private let hyperVEventFDs = Mutex<[UInt32: Int32]>([:])

    /// The synthetic interrupt notifiers attached now, by id.
    public var syntheticInterruptNotifiers: [UInt32: SyntheticInterruptNotifier] { syntheticNotifiers.withLock { $0 } }
    /// The in-kernel HvSignalEvent descriptors set now, by connection id.
    public var hyperVEventNotifiers: [UInt32: Int32] { hyperVEventFDs.withLock { $0 } }

    public func addSyntheticInterruptNotifier(vpIndex: UInt32, sint: UInt8, eventFD: Int32, ackFD: Int32?) throws(HVError) -> UInt32 {
        syntheticNotifiers.withLock { notifiers in
            let id = (1000...).first { notifiers[$0] == nil }!
            notifiers[id] = SyntheticInterruptNotifier(vpIndex: vpIndex, sint: sint, eventFD: eventFD, ackFD: ackFD)
            return UInt32(id)
        }
    }

    public func removeNotifier(_ id: UInt32, eventFD: Int32) throws(HVError) {
        let removed = syntheticNotifiers.withLock { $0.removeValue(forKey: id) }
        guard removed?.eventFD == eventFD else {
            throw .configuration(ConfigurationError(field: "notifier", value: "\(id)", expected: "an id a notifier call returned"))
        }
    }

    public func setHyperVEventNotifier(connection: UInt32, eventFD: Int32?) throws(HVError) {
        hyperVEventFDs.withLock { $0[connection] = eventFD }
    }

    public func createVCPU(id: Int) throws(HVError) -> ScriptedVCPU {
        let script = id < backend.scripts.count ? backend.scripts[id] : [.halt]
        return ScriptedVCPU(id: id, script: script, repeats: backend.repeats, records: backend.records)
    }
}

/// A vCPU that returns its script's exits one by one.
public final class ScriptedVCPU: VCPU, @unchecked Sendable {
    // Sendable: used from its vCPU thread; tests read `completions` after the VM stopped.

    public let id: Int
    let script: [ScriptedExit]
    let repeats: Bool
    let records: Bool
    private var position = 0
    private let buffer = PortIOBuffer(capacity: 4096)
    private let exitRequested = Atomic<Bool>(false)

    public private(set) var completions: [ScriptedCompletion] = []
    public private(set) var state = (registers: Registers(), special: SpecialRegisters())
    private var msrValues: [UInt32: UInt64] = [:]
    private var fpuState = FPUState()
    private var xsaveArea = [UInt8](repeating: 0, count: 4096)

    init(id: Int, script: [ScriptedExit], repeats: Bool, records: Bool) {
        self.id = id
        self.script = script
        self.repeats = repeats
        self.records = records
        if records { completions.reserveCapacity(script.count) }
    }

    /// The next scripted exit. Allocates nothing.
    public func run() throws(HVError) -> VMExit {
        if exitRequested.load(ordering: .acquiring) { return .interrupted }
        buffer.beginRun()
        if position == script.count {
            if repeats && !script.isEmpty { position = 0 } else { return .systemEvent(.shutdown) }
        }
        let step = script[position]
        position += 1
        return exit(for: step)
    }

    @inline(__always)
    private func exit(for step: ScriptedExit) -> VMExit {
        switch step {
        case let .portOut(port, size, values):
            let count = max(values.count, 1)
            guard let data = PortIOData(buffer: buffer, size: Int(size), count: count) else {
                return .unknown(reason: 0xBAD)
            }
            // Indexed loop: unspecialised generic iterators allocate in debug builds.
            for index in 0..<values.count { data[index] = values[index] }
            return .portOut(PortIO(port: port, size: size, count: UInt32(count), data: data))
        case let .portIn(port, size, count):
            guard let data = PortIOData(buffer: buffer, size: Int(size), count: Int(count)) else {
                return .unknown(reason: 0xBAD)
            }
            for index in 0..<data.count { data[index] = 0 }
            return .portIn(PortIO(port: port, size: size, count: count, data: data))
        case let .mmioRead(address, width): return .mmioRead(MMIOAccess(address: address, width: width))
        case let .mmioWrite(address, width, value): return .mmioWrite(MMIOAccess(address: address, width: width, value: value))
        case .halt: return .halt
        case .shutdown: return .shutdown
        case .entryFailure(let reason): return .entryFailure(hardwareReason: reason)
        case .internalError(let suberror): return .internalError(InternalError(suberror: suberror))
        case .systemEvent(let event): return .systemEvent(event)
        case .debug(let exception): return .debug(exception)
        case .msrRead(let index): return .msrRead(index: index)
        case let .msrWrite(index, value): return .msrWrite(index: index, value: value)
        case .interruptWindow: return .interruptWindow
        case .ioapicEOI(let vector): return .ioapicEOI(vector: vector)
        case .hyperVSynIC(let update): return .hyperVSynIC(update)
        case .hyperVHypercall(let call): return .hyperVHypercall(call)
        case .unknown(let reason): return .unknown(reason: reason)
        }
    }

    public func complete(_ exit: VMExit, with action: ExitAction) {
        var inData: [UInt32] = []
        if case .portIn(let io) = exit {
            if case .resumeWith(let value) = action {
                for index in 0..<io.data.count { io.data[index] = UInt32(truncatingIfNeeded: value) }
            }
            if records { inData = (0..<io.data.count).map { io.data[$0] } }
        }
        guard records, position > 0 else { return }
        completions.append(ScriptedCompletion(exit: script[position - 1], action: action, inData: inData))
    }

    public func requestExit() { exitRequested.store(true, ordering: .releasing) }
    public func clearExitRequest() { exitRequested.store(false, ordering: .releasing) }
    public func prepareThread() throws(HVError) {}
    public func finishThread() {}

    public func registers() throws(HVError) -> Registers { state.registers }
    public func setRegisters(_ registers: Registers) throws(HVError) { state.registers = registers }
    public func specialRegisters() throws(HVError) -> SpecialRegisters { state.special }
    public func setSpecialRegisters(_ registers: SpecialRegisters) throws(HVError) { state.special = registers }
    public func msrs(_ indices: [UInt32]) throws(HVError) -> [UInt32: UInt64] {
        msrValues.filter { indices.contains($0.key) }
    }
    public func setMSRs(_ values: [UInt32: UInt64]) throws(HVError) { msrValues.merge(values) { $1 } }
    public func fpu() throws(HVError) -> FPUState { fpuState }
    public func setFPU(_ state: FPUState) throws(HVError) { fpuState = state }
    public func xsave() throws(HVError) -> [UInt8] { xsaveArea }
    public func setXSAVE(_ area: [UInt8]) throws(HVError) {
        guard area.count == 4096 else {
            throw .configuration(ConfigurationError(field: "xsave", value: "\(area.count) bytes", expected: "4096 bytes"))
        }
        xsaveArea = area
    }

    /// The scripted vCPU's registers, MSRs, FPU and XSAVE area. Its script position is the
    /// "guest" and is not part of the state: after a reset the script goes on.
    public struct SavedState: Sendable {
        var registers: Registers
        var special: SpecialRegisters
        var msrs: [UInt32: UInt64]
        var fpu: FPUState
        var xsave: [UInt8]
    }

    /// How often the run loop asked to finish a pending exit (for tests).
    public private(set) var pendingExitCompletions = 0

    /// Completions happen in `complete(_:with:)`; nothing is pending afterwards.
    public func completePendingExit() throws(HVError) { pendingExitCompletions += 1 }

    public func saveState() throws(HVError) -> SavedState {
        SavedState(registers: state.registers, special: state.special, msrs: msrValues, fpu: fpuState, xsave: xsaveArea)
    }

    public func restoreState(_ saved: SavedState) throws(HVError) {
        state = (saved.registers, saved.special)
        msrValues = saved.msrs
        fpuState = saved.fpu
        xsaveArea = saved.xsave
    }
}
