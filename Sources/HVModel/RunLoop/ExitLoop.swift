// The run loop every backend shares (Documentation/Architecture.md, "The run loop"): a vCPU runs
// until an exit, the exit goes through the handler chain, what no handler takes gets the default
// policy, and the action is written back into the vCPU before it runs again. KVM's `Machine`
// (HVCore) runs it on a thread per vCPU with pause, stop and statistics around it; the
// bare-metal image runs it on the CPU itself. Embedded-safe: no Foundation, no existentials,
// typed errors.

/// One virtual processor as the run loop sees it, on any backend: KVM's `KVMVCPU`, and the
/// bare-metal image's SVM and VMX engines.
public protocol VirtualCPU: AnyObject {
    /// What `run()` throws when the backend itself fails (not the guest: a guest's failure is
    /// an exit, such as `.entryFailure` or `.internalError`).
    associatedtype RunError: Error
    /// The vCPU's index (0 is the bootstrap processor).
    var id: Int { get }
    /// Enters the guest until an exit a handler must see; the exit's data (a `PortIO`'s
    /// buffer) is valid until the next `run()`. A run cut short from outside returns
    /// `.interrupted`.
    func run() throws(RunError) -> VMExit
    /// Writes a handler's result back where the guest will see it (the value of an `IN`, an
    /// MMIO read or an `RDMSR`; a `#GP` for `.fault`) and moves the guest past the instruction.
    func complete(_ exit: VMExit, with action: ExitAction)
}

/// The small error type of backends that have neither errno nor Foundation (the bare-metal
/// engines): which operation failed and the hardware's code for it.
public struct BackendFailure: Error, Sendable, Equatable {
    /// The instruction or step that failed ("VMLAUNCH", "VMPTRLD").
    public var operation: StaticString
    /// The hardware's code (a VM-instruction error number, an SVM exit code), 0 when none.
    public var code: UInt64

    @inlinable public init(operation: StaticString, code: UInt64 = 0) {
        self.operation = operation
        self.code = code
    }

    public static func == (a: Self, b: Self) -> Bool { "\(a.operation)" == "\(b.operation)" && a.code == b.code }
}

/// What happens when the guest executes `HLT` and nothing can wake it.
public enum HaltPolicy: String, Sendable, CaseIterable {
    /// Stop the VM with `StopReason.halted` (the natural end of a simple guest).
    case stop
    /// Continue at the next instruction, as if an interrupt had arrived at once.
    case resume
}

/// What happens when the guest resets the platform (the i8042 pulse, the 0xCF9 register, or a
/// handler returning `ExitAction.reset`).
public enum ResetPolicy: String, Sendable, CaseIterable {
    /// Stop the VM with `StopReason.reset` (QEMU's `-no-reboot`).
    case stop
    /// Reset in place and run again, as a PC does: every vCPU back to its state at `start`
    /// (application processors back to wait-for-SIPI), the interrupt controllers and devices
    /// reset, the loaded images written again. RAM outside them keeps its contents.
    case restart
}

/// What happens on an access to an address with neither RAM nor a device.
public enum UnmappedAccessPolicy: String, Sendable, CaseIterable {
    /// Stop the VM and report the address.
    case stop
    /// Behave like a PC's open bus: reads return all-ones, writes are dropped.
    case ignore
}

/// What the monitor does with an exit no handler took: the same defaults on every backend.
public struct ExitPolicy: Sendable, Equatable {
    public var halt: HaltPolicy
    public var reset: ResetPolicy
    public var unmappedMMIO: UnmappedAccessPolicy
    public var unmappedPorts: UnmappedAccessPolicy

    @inlinable public init(halt: HaltPolicy = .stop, reset: ResetPolicy = .stop, unmappedMMIO: UnmappedAccessPolicy = .stop,
                           unmappedPorts: UnmappedAccessPolicy = .ignore) {
        self.halt = halt
        self.reset = reset
        self.unmappedMMIO = unmappedMMIO
        self.unmappedPorts = unmappedPorts
    }

    /// The default for `exit`: an open bus for unmapped ports and MMIO under `.ignore` (reads
    /// all-ones, writes dropped), a stop that names the address under `.stop`; HLT per `halt`;
    /// a `#GP` for an MSR nobody models, as on hardware that lacks it; a stop for shutdown,
    /// entry failures, internal errors and system events (a reset per `reset`); exits that
    /// only report (a kick, a debug trap, a timer) resume.
    @inlinable public func action(for exit: VMExit) -> ExitAction {
        switch exit {
        case .portIn(let io):
            if unmappedPorts == .stop { return .stop(.unmappedPort(port: io.port, write: false)) }
            // An ISA bus with nothing driving it reads all-ones.
            for index in 0..<io.data.count { io.data[index] = UInt32.max }
            return .resume
        case .portOut(let io):
            if unmappedPorts == .stop { return .stop(.unmappedPort(port: io.port, write: true)) }
            return .resume
        case .mmioRead(let access):
            if unmappedMMIO == .stop { return .stop(.unmappedMMIO(address: access.address, write: false)) }
            return .resumeWith(UInt64.max)
        case .mmioWrite(let access):
            if unmappedMMIO == .stop { return .stop(.unmappedMMIO(address: access.address, write: true)) }
            return .resume
        case .halt:
            return halt == .stop ? .stop(.halted) : .resume
        case .shutdown:
            return .stop(.shutdown)
        case .entryFailure(let reason):
            return .stop(.entryFailure(hardwareReason: reason))
        case .internalError(let error):
            return .stop(.internalError(error))
        case .systemEvent(let event):
            // A reset the backend reports itself follows the reset policy like a device's.
            if case .reset = event, reset == .restart { return .reset }
            return .stop(.systemEvent(event))
        case .msrRead, .msrWrite:
            return .fault
        case .ioapicEOI, .hyperVSynIC, .debug, .interruptWindow, .interrupted, .preemptionTimer:
            return .resume
        case .hyperVHypercall:
            // HV_STATUS_INVALID_HYPERCALL_CODE (Hyper-V TLFS 3.9) when no SynIC model answers.
            return .resumeWith(UInt64(HyperVStatus.invalidHypercallCode))
        case .unknown:
            return .stop(.unhandledExit(.unknown))
        }
    }
}

/// The run loop's steps, shared by every backend.
public enum ExitLoop {
    /// One exit through `handler`, then `policy` for what it declines, completed on `cpu`:
    /// the action taken.
    @inlinable @inline(__always)
    public static func dispatch<CPU: VirtualCPU, H: ExitHandler>(_ exit: VMExit, on cpu: CPU, handler: H, policy: ExitPolicy,
                                                                 context: ExitContext) -> ExitAction {
        dispatch(exit, on: cpu, handler: handler, then: NoExitHandler(), policy: policy, context: context)
    }

    /// The same with a second handler for what `handler` declines (a hosted machine's device
    /// bus and interrupt models). Two parameters rather than one `ChainedExitHandler`: called
    /// from code that is generic over the backend, a chain type built there would be
    /// instantiated at run time on every exit (measured: 40 ns of hv-bench's 110 ns dispatch).
    @inlinable @inline(__always)
    public static func dispatch<CPU: VirtualCPU, H: ExitHandler, Next: ExitHandler>(_ exit: VMExit, on cpu: CPU, handler: H, then next: Next,
                                                                                    policy: ExitPolicy, context: ExitContext) -> ExitAction {
        let action = handler.handle(exit, context: context) ?? next.handle(exit, context: context) ?? policy.action(for: exit)
        cpu.complete(exit, with: action)
        return action
    }

    /// Why the loop ends after `action`, or nil when the guest goes on.
    @inlinable @inline(__always)
    public static func stopReason(after action: ExitAction) -> StopReason? {
        switch action {
        case .stop(let reason): return reason
        case .reset: return .reset
        case .suspend: return .systemEvent(.sleep)
        default: return nil
        }
    }

    /// Runs `cpu` until an action stops it, for a backend that needs no control from outside
    /// (the bare-metal image): run, dispatch, and `afterExit` with the exit and its action
    /// (the image counts exits there).
    @inlinable
    public static func run<CPU: VirtualCPU, H: ExitHandler>(_ cpu: CPU, handler: H, policy: ExitPolicy,
                                                            afterExit: (VMExit, ExitAction) -> Void) throws(CPU.RunError) -> StopReason {
        let context = ExitContext(vcpuID: cpu.id)
        while true {
            let exit = try cpu.run()
            let action = dispatch(exit, on: cpu, handler: handler, policy: policy, context: context)
            afterExit(exit, action)
            if let reason = stopReason(after: action) { return reason }
        }
    }
}
