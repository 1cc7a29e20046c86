// A whole VM: configuration, memory, devices, vCPU threads and their run loops, on any backend.
// Documentation/Architecture.md, "The way an exit travels": run -> decode -> handler chain -> action -> run.
import Foundation
#if os(Linux)
import CKVM
import CSeccomp
#endif
import Logging
import Synchronization

/// How a run ended.
public struct RunResult: Sendable {
    /// Why the VM stopped: the first vCPU to stop decides for the whole VM.
    public var reason: StopReason
    /// Which vCPU stopped first.
    public var vcpuID: Int
    /// A backend failure, when `reason` is `.backendFailure`.
    public var error: String?
    /// Exits of every vCPU.
    public var exits: UInt64
    /// Wall-clock seconds from start to the last vCPU thread's end.
    public var seconds: Double
    /// In-place resets the guest went through (`ResetPolicy.restart`).
    public var resets: Int = 0
}

/// A virtual machine on backend `B`: guest memory, a device bus and one thread per vCPU.
///
/// Lifecycle: `init` (created) → `load` → `start`/`run` (running) ⇄ `pause`/`resume` (paused)
/// → stopped. Management calls (`pause`, `resume`, `stop`) may come from any thread; the vCPU
/// threads notice them at their next exit, kicked out of the guest by `VCPU.requestExit()`.
///
/// A guest reset (`ExitAction.reset`) stops the VM, or with `ResetPolicy.restart` resets it in
/// place: every vCPU meets the others outside the guest, the last to arrive puts the machine
/// back to its state at `start` (see `resetInPlace()`), and all run on.
public final class Machine<B: Backend>: @unchecked Sendable {
    // Sendable: mutable state is guarded by `lock`; the vCPU hot path reads only `request`.

    public let configuration: VirtualMachineConfiguration
    public let backend: B
    public let vm: B.VM
    public let memory: GuestMemory
    public let devices = DeviceBus()
    public let vcpus: [B.VM.CPU]
    /// How devices raise interrupts; nil when `interruptController` is `none`.
    public let interrupts: (any InterruptController)?
    /// HV's user-space I/O APIC (split irqchip only), at 0xFEC00000 on the device bus.
    let ioapic: IOAPICDevice?
    /// Each GSI's sources, ORed: every `interruptLine(_:)` is one source.
    let sharedLines = SharedInterruptLines()
    /// The monitor's side of the vCPUs' Hyper-V SynICs; nil unless the CPU model has Hyper-V
    /// enlightenments (`CPUModel.hyperV`).
    public let hyperV: HyperVSynIC?

    private let log = LogCategory.vcpu.logger
    private let exitLog = LogCategory.exits.logger

    /// What management wants from the vCPU threads; read by the run loop at every exit.
    private let request = Atomic<UInt8>(Request.none.rawValue)
    /// Exits across all vCPUs, counted only when an exit limit is set.
    private let exitCount = Atomic<UInt64>(0)
    /// Bit n: vCPU n's emulated preemption timer has expired and its kick is not yet handled.
    private let expiredTimers = Atomic<UInt64>(0)
    /// Raised by `sampleStatistics`: a kicked vCPU whose last publication is older publishes its
    /// statistics (read only on a kick, never on the hot path).
    private let statisticsRequest = Atomic<UInt64>(0)

    let lock = NSCondition()
    /// The running vCPU threads (under `lock`), so calls that wait for every vCPU can refuse
    /// to be made from one of them.
    private var vcpuThreads: [(thread: pthread_t, id: Int)] = []
    var _state: MachineState = .created
    private var stopResult: (reason: StopReason, vcpuID: Int, error: String?)?
    private var parked = 0
    private var finished = 0
    private var perVCPUStatistics: [ExitStatistics]
    private var perVCPUExits: [UInt64]
    /// Per vCPU: the `statisticsRequest` its published statistics answer; `.max` while it is
    /// parked or has ended (what it published then stays current).
    private var publishedGeneration: [UInt64]
    private var startTime: UInt64 = 0
    private var endTime: UInt64 = 0
    private var startCycles: UInt64 = 0
    private var endCycles: UInt64 = 0

    /// What `load` wrote, written again on every reset.
    var loadedChunks: [GuestImage.Chunk] = []
    /// Set-up that a reset repeats (platform tables), in the order added.
    private var resetHooks: [(Machine<B>) throws(HVError) -> Void] = []
    /// The backend's VM and vCPU state at `start`, put back on a reset (restart policy only).
    var powerOnState: (vm: B.VM.SavedState, vcpus: [B.VM.CPU.SavedState])?
    /// vCPUs that reached the reset rendezvous of the current generation.
    private var resetArrivals = 0
    private var resetGeneration = 0
    /// A reset the guest asked for while the VM was paused: it happens on `resume()`.
    private var resetPending = false
    private var resetCount = 0
    /// Set-up that runs when the machine wakes from sleep (the platform's waking vector).
    private var wakeHooks: [(Machine<B>) throws(HVError) -> Void] = []
    /// A vCPU asked for sleep (ExitAction.suspend); the reset rendezvous turns it into one.
    private var suspending = false
    /// A wake event arrived while suspending or asleep.
    private var wakeRequested = false
    /// Platform wake sources asked before sleeping: did one fire since the guest asked to sleep?
    private var wakeSources: [@Sendable () -> Bool] = []
    private var sleepCount = 0

    enum Request: UInt8 { case none = 0, pause = 1, stop = 2, reset = 3 }

    /// Validates `configuration`, creates the VM, maps its RAM (PC layout: up to 3 GiB at 0,
    /// the rest above 4 GiB) and creates its vCPUs. `memory`, when given, is that RAM already
    /// made (a snapshot's memory file mapped copy-on-write: `GuestMemory.pcLayout(size:mapping:)`);
    /// its layout must be the PC layout of `memorySize`.
    public init(configuration: VirtualMachineConfiguration, backend: B, memory: GuestMemory? = nil) throws(HVError) {
        do { try configuration.validate() } catch { throw .configuration(error) }
        self.configuration = configuration
        self.backend = backend
        vm = try backend.createVirtualMachine(configuration: configuration)
        if let memory {
            let expected = GuestMemory.pcRegions(size: configuration.memorySize)
            guard memory.regions.map({ ($0.guestAddress.rawValue, $0.size) }).elementsEqual(expected, by: { $0 == $1 }) else {
                throw .configuration(ConfigurationError(field: "memory", value: "\(memory.size) bytes in \(memory.regions.count) region(s)",
                                                        expected: "the PC layout of memorySize \(configuration.memorySize)"))
            }
            self.memory = memory
        } else {
            do { self.memory = try GuestMemory.pcLayout(size: configuration.memorySize, hugePages: configuration.hugePages) } catch { throw .memory(error) }
        }
        for (slot, region) in self.memory.regions.enumerated() { try vm.map(region, slot: slot) }
        var cpus: [B.VM.CPU] = []
        for id in 0..<configuration.cpuCount { cpus.append(try vm.createVCPU(id: id)) }
        vcpus = cpus
        if configuration.interruptController == .split {
            let vm = self.vm
            let device = IOAPICDevice(
                deliver: { address, data throws(HVError) in try vm.signalMSI(address: address, data: data) },
                tableChanged: { routes in
                    // The kernel's LAPICs exit on EOI only for vectors it sees in these routes.
                    do { try vm.setMSIRoutes(routes.enumerated().map { (UInt32($0.offset), $0.element.address, $0.element.data) }) } catch {
                        LogCategory.devices.logger.warning("I/O APIC routes not set: \(error)")
                    }
                })
            do { try devices.register(device, address: IOAPICDevice.baseAddress, length: IOAPICDevice.windowSize) } catch {
                throw .device(error)
            }
            ioapic = device
        } else {
            ioapic = nil
        }
        interrupts = configuration.interruptController == .none
            ? nil : InterruptRouter(vm: vm, mode: configuration.interruptController, ioapic: ioapic)
        hyperV = configuration.cpuModel?.hyperV == true
            ? try HyperVSynIC(vm: vm, memory: self.memory, processorCount: configuration.cpuCount) : nil
        perVCPUStatistics = []
        perVCPUExits = Array(repeating: 0, count: configuration.cpuCount)
        publishedGeneration = Array(repeating: 0, count: configuration.cpuCount)
    }

    /// The VM's current state.
    public var state: MachineState {
        lock.lock()
        defer { lock.unlock() }
        return _state
    }

    // MARK: Loading

    /// Writes `image`'s chunks into guest memory and gives the listed vCPUs its initial
    /// registers. By default that is every vCPU without interrupt controllers, and only the
    /// bootstrap processor (vCPU 0) with them: application processors then wait for
    /// INIT-SIPI-SIPI as on real hardware (SDM Vol. 3A, 9.4 "Multiple-processor initialization").
    public func load(_ image: GuestImage, vcpus ids: [Int]? = nil) throws(HVError) {
        // Under the lock: a `start` on another thread cannot slip in between the state check
        // and the register writes.
        lock.lock()
        defer { lock.unlock() }
        guard _state == .created else { throw .invalidState(operation: "load an image into", state: _state) }
        try write(image.chunks)
        if configuration.resetPolicy == .restart { loadedChunks += image.chunks }
        let defaultIDs = configuration.interruptController == .none ? Array(vcpus.indices) : [0]
        for id in ids ?? defaultIDs {
            guard vcpus.indices.contains(id) else {
                throw .configuration(ConfigurationError(field: "vcpus", value: "\(id)", expected: "0..<\(vcpus.count)"))
            }
            try vcpus[id].setSpecialRegisters(image.specialRegisters)
            try vcpus[id].setRegisters(image.registers)
        }
    }

    /// Copies `chunks` into guest memory and zeroes their zero fill (at `load`, and again at
    /// every reset, when the guest may have written there).
    private func write(_ chunks: [GuestImage.Chunk]) throws(HVError) {
        let loader = LogCategory.loader.logger
        for chunk in chunks {
            do throws(GuestMemoryError) {
                try memory.write(bytes: chunk.bytes, at: chunk.address)
                guard let zeroes = chunk.address.advanced(by: UInt64(chunk.bytes.count)) else {
                    throw GuestMemoryError.outOfBounds(address: chunk.address, length: UInt64(chunk.bytes.count))
                }
                try memory.zero(count: chunk.zeroFill, at: zeroes)
            } catch { throw .memory(error) }
            loader.debug("loaded \(chunk.name): \(chunk.bytes.count) bytes and \(chunk.zeroFill) zeros at 0x\(String(chunk.address.rawValue, radix: 16))")
        }
    }

    // MARK: Running

    /// Starts one thread per vCPU running `handler` first, then the device bus, then the
    /// defaults. Returns at once; `wait()` returns when the VM stops.
    public func start<H: ExitHandler & Sendable>(handler: H) throws(HVError) {
        lock.lock()
        guard _state.canTransition(to: .running), _state == .created else {
            let current = _state
            lock.unlock()
            throw .invalidState(operation: "start", state: current)
        }
        // vCPU threads read the device tables without a lock: they stop changing here.
        devices.freeze()
        if configuration.resetPolicy == .restart || !wakeHooks.isEmpty, powerOnState == nil {
            // The state a reset or a wake returns to: registers as loaded, APs waiting for SIPI.
            // Saved under the lock, so a second start() cannot save it again while the vCPUs run.
            do throws(HVError) {
                powerOnState = (try vm.saveState(), try vcpus.map { (vcpu) throws(HVError) in try vcpu.saveState() })
            } catch {
                lock.unlock()
                throw error
            }
        }
        #if os(Linux)
        // Set-up is over: from here on every thread may make only the VMM's calls (and the
        // threads started below inherit the filter).
        if let confinement = configuration.confinement {
            do throws(ConfinementError) {
                try confinement.process.install(mode: confinement.mode, allThreads: true)
            } catch {
                lock.unlock()
                throw .confinement(error.description)
            }
            log.debug("confined: the \(confinement.process.name) allow-list (\(confinement.process.rules.count) rules, \(confinement.mode)) on every thread")
        }
        #endif
        _state = .running
        perVCPUStatistics = vcpus.map { _ in ExitStatistics() }
        publishedGeneration = vcpus.map { _ in statisticsRequest.load(ordering: .relaxed) }
        startTime = monotonicNanoseconds()
        startCycles = cycleCounter()
        lock.unlock()
        // Devices restored from a snapshot were held; they serve what waited now.
        for device in activityHoldingDevices { device.releaseActivity() }
        log.debug("starting \(vcpus.count) vCPU(s)")
        if let interval = configuration.preemptionTimerInterval { startPreemptionTimer(every: interval) }
        for vcpu in vcpus {
            let thread = Thread { [self] in vcpuThread(vcpu, handler: handler) }
            thread.name = "vcpu\(vcpu.id)"
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// Blocks until every vCPU thread has ended, enforcing the configured time limit.
    public func wait() -> RunResult {
        let deadline = configuration.timeLimit.map { Date(timeIntervalSinceNow: $0) }
        lock.lock()
        while finished < vcpus.count {
            if let deadline {
                if !lock.wait(until: deadline), finished < vcpus.count {
                    lock.unlock()
                    requestStop(.timeout, vcpuID: 0, error: nil)
                    lock.lock()
                    while finished < vcpus.count { lock.wait() }
                    break
                }
            } else {
                lock.wait()
            }
        }
        let result = stopResult ?? (.requested, 0, nil)
        let total = perVCPUExits.reduce(0, +)
        let seconds = Double(endTime &- startTime) / 1e9
        let resets = resetCount
        lock.unlock()
        return RunResult(reason: result.reason, vcpuID: result.vcpuID, error: result.error, exits: total, seconds: seconds,
                         resets: resets)
    }

    /// `start(handler:)` then `wait()`.
    public func run<H: ExitHandler & Sendable>(handler: H) throws(HVError) -> RunResult {
        try start(handler: handler)
        return wait()
    }

    /// Runs with only the device bus and the defaults.
    public func run() throws(HVError) -> RunResult { try run(handler: NoExitHandler()) }

    // MARK: Management

    /// Parks every vCPU at its next exit and returns once all are parked.
    public func pause() throws(HVError) {
        lock.lock()
        let me = pthread_self()
        if let caller = vcpuThreads.first(where: { pthread_equal($0.thread, me) != 0 }) {
            lock.unlock()
            throw .calledFromVCPUThread(operation: "pause()", vcpuID: caller.id)
        }
        // A reset in progress finishes first (its vCPUs are between runs, not parkable).
        while request.load(ordering: .acquiring) == Request.reset.rawValue { lock.wait() }
        guard _state == .running, request.load(ordering: .acquiring) == Request.none.rawValue else {
            let current = _state
            lock.unlock()
            throw .invalidState(operation: "pause", state: current)
        }
        request.store(Request.pause.rawValue, ordering: .sequentiallyConsistent)
        lock.unlock()
        for vcpu in vcpus { vcpu.requestExit() }
        lock.lock()
        while parked + finished < vcpus.count { lock.wait() }
        // A stop that came in meanwhile wins: the VM is on its way to stopped, not paused.
        let paused = _state == .running && request.load(ordering: .acquiring) == Request.pause.rawValue
        if paused { _state = .paused }
        lock.unlock()
        // Device threads (queues served on eventfds, host input, timers) stop too, so that
        // neither device state nor guest memory changes while the VM is paused.
        if paused { for device in activityHoldingDevices { device.holdActivity() } }
        log.debug("paused")
    }

    /// Lets paused vCPUs run again (and the devices' own work, held by `pause`).
    public func resume() throws(HVError) {
        lock.lock()
        defer { lock.unlock() }
        guard _state == .paused else { throw .invalidState(operation: "resume", state: _state) }
        for device in activityHoldingDevices { device.releaseActivity() }
        _state = .running
        // A stop requested while paused stands: the parked vCPUs wake to it and end.
        guard request.load(ordering: .acquiring) != Request.stop.rawValue else { return }
        request.store((resetPending ? Request.reset : Request.none).rawValue, ordering: .sequentiallyConsistent)
        resetPending = false
        lock.broadcast()
        log.debug("resumed")
    }

    /// Asks every vCPU to stop; the reason becomes `.requested` unless the VM already stopped.
    /// Returns at once; `wait()` joins.
    public func stop() {
        requestStop(.requested, vcpuID: 0, error: nil)
    }

    /// Resets the VM in place from the host, as the guest's own reset would (QEMU's monitor
    /// command `system_reset`): every vCPU is kicked out of the guest and the machine goes back
    /// to its state at `start` (see "Resetting in place" in Documentation/ExitHandling.md). Needs
    /// `resetPolicy` `.restart`. Returns at once; `resets` counts the reset once it is done. On a
    /// paused VM the reset happens at `resume()`; a stop already under way wins.
    public func reset() throws(HVError) {
        guard configuration.resetPolicy == .restart else {
            throw .configuration(ConfigurationError(field: "resetPolicy", value: "stop",
                                                    expected: "restart, so that start saves the state a reset returns to"))
        }
        lock.lock()
        guard _state == .running || _state == .paused else {
            let current = _state
            lock.unlock()
            throw .invalidState(operation: "reset", state: current)
        }
        var kick = false
        switch Request(rawValue: request.load(ordering: .acquiring)) {
        case .none?:
            request.store(Request.reset.rawValue, ordering: .sequentiallyConsistent)
            kick = true
        case .pause?:
            resetPending = true
        default:
            break  // a reset is already on its way, or a stop wins
        }
        lock.unlock()
        if kick { for vcpu in vcpus { vcpu.requestExit() } }
    }

    /// Adds set-up that a reset repeats after the loaded images are written again, such as
    /// firmware tables a platform placed in RAM (`attachPCPlatform` puts its ACPI tables back).
    /// Runs on a vCPU thread while every other vCPU waits: it may use `memory`, `vcpus` and
    /// `devices`, but not `pause`, `resume` or `wait`, which would wait for the reset itself.
    public func onReset(_ body: @escaping (Machine<B>) throws(HVError) -> Void) throws(HVError) {
        lock.lock()
        defer { lock.unlock() }
        guard _state == .created else { throw .invalidState(operation: "add a reset step to", state: _state) }
        resetHooks.append(body)
    }

    /// Adds set-up that runs when the machine wakes from sleep (`ExitAction.suspend`, ACPI S3),
    /// after every vCPU and the interrupt controllers are back at their power-on state and the
    /// devices reset; RAM is untouched. A platform puts the bootstrap processor at its firmware
    /// waking vector here. Without one, a guest's request to sleep stops the VM.
    public func onWake(_ body: @escaping (Machine<B>) throws(HVError) -> Void) throws(HVError) {
        lock.lock()
        defer { lock.unlock() }
        guard _state == .created else { throw .invalidState(operation: "add a wake step to", state: _state) }
        wakeHooks.append(body)
    }

    /// Adds a wake source the machine asks before it sleeps: `pending` says whether the source
    /// fired since the guest asked to sleep. A wake event can come between the guest's request
    /// (the PM device sees it first) and every vCPU having left the guest, before `wake()` would
    /// find the machine suspending; the platform keeps it and the machine finds it here.
    public func addWakeSource(pending: @escaping @Sendable () -> Bool) throws(HVError) {
        lock.lock()
        defer { lock.unlock() }
        guard _state == .created else { throw .invalidState(operation: "add a wake source to", state: _state) }
        wakeSources.append(pending)
    }

    /// A wake event (the power button, an RTC alarm the guest armed): a machine asleep, or on
    /// its way to sleep, wakes; otherwise nothing happens. Any thread.
    public func wake() {
        lock.lock()
        if suspending {
            wakeRequested = true
            lock.broadcast()
        }
        lock.unlock()
    }

    /// Whether the guest has put the machine to sleep and no wake event has come yet.
    public var isAsleep: Bool {
        lock.lock()
        defer { lock.unlock() }
        return suspending
    }

    /// Times the guest slept and woke (ACPI S3).
    public var sleeps: Int {
        lock.lock()
        defer { lock.unlock() }
        return sleepCount
    }

    /// In-place resets so far.
    public var resets: Int {
        lock.lock()
        defer { lock.unlock() }
        return resetCount
    }

    /// The statistics of all vCPUs merged, as they last published them: complete while the VM
    /// is paused or stopped; while it runs, `sampleStatistics` asks the vCPUs for fresh ones.
    public var statistics: ExitStatistics {
        lock.lock()
        defer { lock.unlock() }
        return mergedStatisticsLocked()
    }

    /// The statistics of all vCPUs merged, fresh while the VM runs: every vCPU is kicked out of
    /// the guest once and publishes its figures (copied in place, nothing allocated on its
    /// thread) before it goes back in. A vCPU that does not answer within `timeout` seconds (its
    /// thread busy in a device, or the machine asleep) counts with what it published last.
    /// Any thread but a vCPU's. For monitoring: one sample costs every vCPU one exit.
    public func sampleStatistics(timeout: Double = 1) -> ExitStatistics {
        lock.lock()
        defer { lock.unlock() }
        collectPublicationsLocked(timeout: timeout)
        return mergedStatisticsLocked()
    }

    /// Exits of every vCPU so far, fresh while the VM runs (as `sampleStatistics`, without
    /// merging the latency histograms).
    public func sampleExits(timeout: Double = 1) -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        collectPublicationsLocked(timeout: timeout)
        return perVCPUExits.reduce(0, +)
    }

    /// Exits of every vCPU, as last published: complete while the VM is paused or stopped.
    public var exits: UInt64 {
        lock.lock()
        defer { lock.unlock() }
        return perVCPUExits.reduce(0, +)
    }

    /// While running: kicks every vCPU and waits (under `lock`) until each has published, has
    /// parked or ended, or `timeout` seconds pass.
    private func collectPublicationsLocked(timeout: Double) {
        guard _state == .running else { return }
        let generation = statisticsRequest.add(1, ordering: .sequentiallyConsistent).newValue
        lock.unlock()
        for vcpu in vcpus { vcpu.requestExit() }
        lock.lock()
        let deadline = Date(timeIntervalSinceNow: timeout)
        while publishedGeneration.contains(where: { $0 < generation }), lock.wait(until: deadline) {}
    }

    /// Seconds since `start`, to the end of the run once the VM has stopped; 0 before `start`.
    public var uptime: Double {
        lock.lock()
        defer { lock.unlock() }
        guard startTime != 0 else { return 0 }
        return Double((endTime != 0 ? endTime : monotonicNanoseconds()) &- startTime) / 1e9
    }

    private func mergedStatisticsLocked() -> ExitStatistics {
        var merged = ExitStatistics()
        for stats in perVCPUStatistics { merged.merge(stats) }
        // TSC rate over the run so far (to now while running or paused).
        let (nanoseconds, cycles) = endTime != 0
            ? (endTime &- startTime, endCycles &- startCycles)
            : (monotonicNanoseconds() &- startTime, cycleCounter() &- startCycles)
        if startTime != 0, cycles > 0, nanoseconds > 0 { merged.nanosecondsPerCycle = Double(nanoseconds) / Double(cycles) }
        return merged
    }

    /// A vCPU's answer to `sampleStatistics`: its figures copied into its published slot.
    private func publish(_ id: Int, statistics: ExitStatistics, exits: UInt64, generation: UInt64) {
        lock.lock()
        perVCPUStatistics[id].overwrite(with: statistics)
        perVCPUExits[id] = exits
        if publishedGeneration[id] != .max { publishedGeneration[id] = generation }
        lock.broadcast()
        lock.unlock()
    }

    private func requestStop(_ reason: StopReason, vcpuID: Int, error: String?) {
        lock.lock()
        if stopResult == nil { stopResult = (reason, vcpuID, error) }
        request.store(Request.stop.rawValue, ordering: .sequentiallyConsistent)
        lock.broadcast()
        lock.unlock()
        for vcpu in vcpus { vcpu.requestExit() }
    }

    // MARK: The vCPU thread

    private func vcpuThread<H: ExitHandler>(_ vcpu: B.VM.CPU, handler: H) {
        var statistics = ExitStatistics()
        var exits: UInt64 = 0
        var failure: String?
        let reason: StopReason
        lock.lock()
        vcpuThreads.append((pthread_self(), vcpu.id))
        lock.unlock()
        do throws(HVError) {
            #if os(Linux)
            // Pinned before the vCPU list goes on (it does not allow sched_setaffinity).
            if let cpus = configuration.vcpuAffinity[vcpu.id] { try Self.pinCallingThread(to: cpus, vcpu: vcpu.id) }
            if let confinement = configuration.confinement {
                // Named before the filter goes on, for its reports ("thread 'vcpu0' made ...").
                _ = hv_seccomp_name_thread("vcpu\(vcpu.id)")
                do throws(ConfinementError) {
                    try confinement.vcpu.install(mode: confinement.mode, allThreads: false)
                } catch { throw HVError.confinement(error.description) }
            }
            #endif
            try vcpu.prepareThread()
            var stopped: StopReason
            repeat {
                stopped = try runLoop(vcpu, handler: handler, statistics: &statistics, exits: &exits)
                guard case .reset = stopped, configuration.resetPolicy == .restart || isAsleep else { break }
                // KVM finishes the OUT that asked for the reset on the next entry: settle it now,
                // or it would land on top of the state the reset puts back.
                try vcpu.completePendingExit()
                if !(try resetTogether(vcpu, statistics: statistics, exits: exits)) { stopped = .requested }
            } while stopped == .reset
            reason = stopped
        } catch {
            failure = error.description
            reason = .backendFailure
        }
        vcpu.finishThread()
        if case .backendFailure = reason { log.error("vCPU \(vcpu.id) failed: \(failure ?? "unknown")") }
        requestStop(reason, vcpuID: vcpu.id, error: failure)
        lock.lock()
        vcpuThreads.removeAll { $0.id == vcpu.id }
        perVCPUStatistics[vcpu.id] = statistics
        perVCPUExits[vcpu.id] = exits
        publishedGeneration[vcpu.id] = .max
        if case .backendFailure = reason, _state != .error { _state = .error }
        finished += 1
        if finished == vcpus.count {
            endTime = monotonicNanoseconds()
            endCycles = cycleCounter()
            if _state != .error { _state = .stopped }
        }
        lock.broadcast()
        lock.unlock()
        log.debug("vCPU \(vcpu.id) ended: \(reason)")
    }

    #if os(Linux)
    /// `sched_setaffinity(0, ...)`: the calling thread may run only on `cpus` (the kernel's CPU
    /// mask is a bit array, CPU n at bit n, 1024 bits as glibc's cpu_set_t).
    static func pinCallingThread(to cpus: [Int], vcpu: Int) throws(HVError) {
        var mask = [UInt8](repeating: 0, count: VirtualMachineConfiguration.maximumHostCPU / 8)
        for cpu in cpus where cpu / 8 < mask.count { mask[cpu / 8] |= UInt8(1 << (cpu % 8)) }
        guard hv_pin_calling_thread(mask, UInt(mask.count)) == 0 else {
            let reason = errno == EINVAL ? "none of them is a CPU this process may use" : String(cString: strerror(errno))
            throw .configuration(ConfigurationError(field: "vcpuAffinity", value: "vCPU \(vcpu): \(cpus)", expected: "host CPUs this process may run on (\(reason))"))
        }
    }
    #endif

    /// The hot path: no allocation, no lock (except when parking on request), no existential.
    private func runLoop<H: ExitHandler>(_ vcpu: B.VM.CPU, handler: H, statistics: inout ExitStatistics,
                                         exits: inout UInt64) throws(HVError) -> StopReason
    {
        let context = ExitContext(vcpuID: vcpu.id)
        // The shared run loop's steps (HVModel's `ExitLoop`): the embedder's handler, the device
        // bus and the machine's interrupt models, then the default policy.
        let machineHandlers = MachineExitHandlers(devices: devices, ioapic: ioapic, hyperV: hyperV)
        let policy = exitPolicy
        let collect = configuration.collectExitStatistics
        let limit = configuration.exitLimit
        let traceExits = exitLog.logLevel <= .trace
        var published = statisticsRequest.load(ordering: .acquiring)
        // Two TSC reads per exit: each round trip starts where the previous exit's handling ended.
        var entered = collect ? cycleCounter() : 0
        // True once a run came back `.interrupted` while a pause was asked for: the instruction
        // behind the last exit is finished (KVM completes an IN, a string I/O step, an MMIO
        // read at the next KVM_RUN, before it looks at immediate_exit), so the paused state is
        // whole: what a snapshot saves and the register API shows.
        var settled = false
        while true {
            switch Request(rawValue: request.load(ordering: .acquiring)) {
            case .stop?:
                vcpu.clearExitRequest()
                return .requested
            case .pause?:
                guard settled else {
                    // One more run that ends before guest code: this thread sets the kick itself,
                    // since a statistics kick's clear may have taken the pause's. An exit the
                    // completion causes (the next element of a REP OUTS) is handled as usual.
                    vcpu.requestExit()
                    break
                }
                settled = false
                vcpu.clearExitRequest()
                switch park(vcpu.id, statistics: statistics, exits: exits) {
                case .stop: return .requested
                case .reset: return .reset
                default: break
                }
                if collect { entered = cycleCounter() }
                continue
            case .reset?:
                vcpu.clearExitRequest()
                return .reset
            default:
                break
            }
            var exit = try vcpu.run()
            if case .interrupted = exit {
                // A kick: clear it and look at the request again at the top. Requesters store the
                // request before setting immediate_exit, so clearing here cannot lose one.
                vcpu.clearExitRequest()
                if request.load(ordering: .acquiring) == Request.pause.rawValue { settled = true }
                let wanted = statisticsRequest.load(ordering: .acquiring)
                if wanted != published {
                    publish(vcpu.id, statistics: statistics, exits: exits, generation: wanted)
                    published = wanted
                }
                let bit: UInt64 = 1 << UInt64(vcpu.id & 63)
                if expiredTimers.bitwiseAnd(~bit, ordering: .acquiringAndReleasing).oldValue & bit == 0 {
                    if collect { entered = cycleCounter() }
                    continue
                }
                exit = .preemptionTimer
            }
            let exited = collect ? cycleCounter() : 0
            let action = ExitLoop.dispatch(exit, on: vcpu, handler: handler, then: machineHandlers, policy: policy, context: context)
            exits &+= 1
            if collect {
                let done = cycleCounter()
                statistics.record(exit.kind, roundTrip: done &- entered, handling: done &- exited)
                entered = done
            }
            if traceExits {
                // One KVM_GET_REGS per exit, paid only while tracing.
                exitLog.trace("\(exitTraceLine(vcpu: vcpu.id, rip: try? vcpu.registers().rip, exit: exit, action: action))")
            }
            switch action {
            case .stop(let reason): return reason
            case .reset: return .reset
            case .suspend:
                // Sleep goes through the reset rendezvous: every vCPU out of the guest first.
                guard !wakeHooks.isEmpty else { return .systemEvent(.sleep) }
                lock.lock()
                suspending = true
                lock.unlock()
                return .reset
            default: break
            }
            if let limit, exitCount.add(1, ordering: .relaxed).newValue >= limit { return .exitLimit }
        }
    }

    /// Emulates the VMX-preemption timer with a host thread: every `interval` seconds it marks
    /// every vCPU's timer expired and kicks it out of the guest, until the VM stops.
    private func startPreemptionTimer(every interval: Double) {
        let thread = Thread { [self] in
            let all: UInt64 = vcpus.count >= 64 ? .max : (1 << UInt64(vcpus.count)) - 1
            while true {
                Thread.sleep(forTimeInterval: interval)
                if request.load(ordering: .acquiring) == Request.stop.rawValue || state == .stopped { return }
                expiredTimers.bitwiseOr(all, ordering: .acquiringAndReleasing)
                for vcpu in vcpus { vcpu.requestExit() }
            }
        }
        thread.name = "preemption-timer"
        thread.start()
    }

    /// Waits while paused, publishing this vCPU's statistics so far. Returns the request that
    /// ended the pause: none (resume), stop, or reset (one the guest asked for while paused).
    private func park(_ id: Int, statistics: ExitStatistics, exits: UInt64) -> Request {
        lock.lock()
        defer { lock.unlock() }
        return parkLocked(id, statistics: statistics, exits: exits)
    }

    private func parkLocked(_ id: Int, statistics: ExitStatistics, exits: UInt64) -> Request {
        perVCPUStatistics[id].overwrite(with: statistics)
        perVCPUExits[id] = exits
        publishedGeneration[id] = .max
        parked += 1
        lock.broadcast()
        while request.load(ordering: .acquiring) == Request.pause.rawValue { lock.wait() }
        parked -= 1
        // Nothing ran since the figures above: they answer every request made until now.
        publishedGeneration[id] = statisticsRequest.load(ordering: .acquiring)
        return Request(rawValue: request.load(ordering: .acquiring)) ?? .none
    }

    // MARK: Reset in place

    /// The reset rendezvous. The vCPU that asked for the reset kicks the others; each arrives
    /// here outside the guest; the last to arrive runs `resetInPlace()` and lets all go on.
    /// Returns false when the VM is stopping instead (a stop always wins over a reset).
    private func resetTogether(_ vcpu: B.VM.CPU, statistics: ExitStatistics, exits: UInt64) throws(HVError) -> Bool {
        lock.lock()
        var kick = false
        asking: while true {
            switch Request(rawValue: request.load(ordering: .acquiring)) {
            case .stop?:
                lock.unlock()
                return false
            case .pause?:
                // Paused while this vCPU asked: the reset waits for `resume()`.
                resetPending = true
                _ = parkLocked(vcpu.id, statistics: statistics, exits: exits)
            case .reset?:
                break asking
            default:
                request.store(Request.reset.rawValue, ordering: .sequentiallyConsistent)
                kick = true
                break asking
            }
        }
        resetArrivals += 1
        let generation = resetGeneration
        if resetArrivals < vcpus.count {
            lock.unlock()
            if kick { for other in vcpus where other.id != vcpu.id { other.requestExit() } }
            lock.lock()
            while resetGeneration == generation, request.load(ordering: .acquiring) != Request.stop.rawValue { lock.wait() }
            let stopping = request.load(ordering: .acquiring) == Request.stop.rawValue
            lock.unlock()
            return !stopping
        }
        // The last to arrive: every other vCPU waits above, none is in the guest.
        let sleeping = suspending
        lock.unlock()
        var failure: HVError?
        do { if sleeping { try sleepUntilWoken() } else { try resetInPlace() } } catch { failure = error }
        lock.lock()
        resetArrivals = 0
        resetGeneration += 1
        if let failure {
            // Half-restored: the waiters must wake to a stop, never to the guest.
            if stopResult == nil { stopResult = (.backendFailure, vcpu.id, "reset failed: \(failure)") }
            request.store(Request.stop.rawValue, ordering: .sequentiallyConsistent)
        } else {
            if sleeping { sleepCount += 1 } else { resetCount += 1 }
            if request.load(ordering: .acquiring) == Request.reset.rawValue {
                request.store(Request.none.rawValue, ordering: .sequentiallyConsistent)
            }
        }
        let count = resetCount
        lock.broadcast()
        lock.unlock()
        if let failure {
            for other in vcpus where other.id != vcpu.id { other.requestExit() }
            throw failure
        }
        if sleeping {
            log.info("guest woke from sleep (ACPI S3)")
        } else {
            log.info("guest reset #\(count): \(vcpus.count) vCPU(s) back to their state at start")
        }
        return true
    }

    /// ACPI S3 (16.1.3 "S3 Sleeping State"): with every vCPU out of the guest, waits for `wake()`
    /// or a stop; then puts the vCPUs and interrupt controllers back to power-on state (RAM
    /// keeps its contents), resets the devices and runs the wake steps (the platform's waking
    /// vector). A stop while asleep ends the wait and leaves the machine as it is.
    private func sleepUntilWoken() throws(HVError) {
        guard let powerOnState else {
            throw .invalidState(operation: "sleep (no state saved at start)", state: state)
        }
        log.info("guest is asleep (ACPI S3): RAM kept, every vCPU stopped until a wake event")
        lock.lock()
        while !wakeRequested, !wakeSources.contains(where: { $0() }),
              request.load(ordering: .acquiring) != Request.stop.rawValue { lock.wait() }
        let stopping = request.load(ordering: .acquiring) == Request.stop.rawValue
        suspending = false
        wakeRequested = false
        lock.unlock()
        if stopping { return }
        try restorePowerOnState(powerOnState)
        for hook in wakeHooks { try hook(self) }
    }

    /// Puts the machine back to its state at `start`: first the loaded images and the reset
    /// steps (a vCPU's restore may read guest memory, e.g. PAE page-directory pointers), then the
    /// backend's interrupt controllers and every vCPU (registers, MSRs, FPU, local APIC,
    /// multiprocessing state: application processors wait for INIT-SIPI-SIPI again, SDM Vol. 3A
    /// 9.1 "Initialization overview"), and last the devices, whose reset lowers their interrupt
    /// lines on the restored controllers (a line raised meanwhile by a host thread is not lost).
    /// RAM outside the images keeps its contents, as on a PC.
    private func resetInPlace() throws(HVError) {
        guard let powerOnState else {
            throw .invalidState(operation: "reset (no state saved at start)", state: state)
        }
        try write(loadedChunks)
        for hook in resetHooks { try hook(self) }
        try restorePowerOnState(powerOnState)
    }

    /// The part of a reset and of a wake from sleep that is the same: the backend's interrupt
    /// controllers and every vCPU back to `state`, then the monitor's own interrupt state and
    /// the devices. The controllers are back at power-on, every line low; the devices' resets
    /// re-drive what is still high.
    private func restorePowerOnState(_ state: (vm: B.VM.SavedState, vcpus: [B.VM.CPU.SavedState])) throws(HVError) {
        try vm.restoreState(state.vm)
        for index in vcpus.indices { try vcpus[index].restoreState(state.vcpus[index]) }
        sharedLines.forgetLevels()
        hyperV?.reset()
        devices.resetDevices()
        expiredTimers.store(0, ordering: .sequentiallyConsistent)
    }

    /// The configuration's default exit policy (HVModel's `ExitPolicy`, shared with every backend).
    var exitPolicy: ExitPolicy {
        ExitPolicy(halt: configuration.haltPolicy, reset: configuration.resetPolicy, unmappedMMIO: configuration.unmappedMMIO,
                   unmappedPorts: configuration.unmappedPorts)
    }
}

/// What a machine's own parts take after the embedder's handler and before the default policy:
/// the device bus, then an EOI for the user-space I/O APIC, the Hyper-V SynIC's MSR changes and
/// hypercalls (Documentation/Architecture.md: "then defaults").
struct MachineExitHandlers: ExitHandler {
    let devices: DeviceBus
    let ioapic: IOAPICDevice?
    let hyperV: HyperVSynIC?

    @inline(__always)
    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        if let action = devices.handle(exit, context: context) { return action }
        switch exit {
        case .ioapicEOI(let vector):
            ioapic?.endOfInterrupt(vector: vector)
            return .resume
        case .hyperVSynIC(let update):
            hyperV?.synicChanged(update, vp: context.vcpuID)
            return .resume
        case .hyperVHypercall(let call):
            guard let hyperV else { return nil }
            return .resumeWith(UInt64(hyperV.hypercall(call)))
        default:
            return nil
        }
    }
}

/// The time-stamp counter (RDTSC, SDM Vol. 2B): ~20 cycles, no system call, no allocation.
@inline(__always)
func cycleCounter() -> UInt64 {
    #if arch(x86_64) && os(Linux)
    hv_rdtsc()
    #else
    monotonicNanoseconds()
    #endif
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call, no allocation).
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

extension Machine {
    /// The line for `gsi` (ISA IRQ n is GSI n), or an error when the VM has no interrupt
    /// controllers.
    public func interruptLine(_ gsi: UInt32) throws(HVError) -> InterruptLine {
        guard let interrupts else {
            throw .unsupported(knob: "interrupt line \(gsi)", backend: backend.name,
                               reason: "the VM's interruptController is none; choose kernel or split")
        }
        return InterruptLine(controller: interrupts, gsi: gsi, wiring: sharedLines, source: try sharedLines.newSource(gsi: gsi))
    }

    /// The user-space I/O APIC of a split-irqchip VM (for tests and tools).
    public var ioapicForTesting: IOAPICDevice? { ioapic }

    /// Wires `uart`'s interrupt output to `irq` (COM1 is IRQ 4).
    public func connect(_ uart: UART16550, irq: UInt32 = 4) throws(HVError) {
        let line = try interruptLine(irq)
        uart.onInterruptChange = { pending in line.set(pending) }
    }

    /// Builds `program`'s image for this VM's memory size and loads it.
    public func load(_ program: GuestProgram, vcpus ids: [Int]? = nil) throws(HVError) {
        let image: GuestImage
        do { image = try program.image(memorySize: configuration.memorySize) } catch { throw .image(error) }
        try load(image, vcpus: ids)
    }
}
