// Timing exits on the vCPU thread: the exit-to-exit interval, read with RDTSC when the handler
// sees each exit, so every interval is one full trip through HVCore's run loop (KVM_RUN, decode,
// handler chain, write-back) plus the guest's own loop. The C baseline does the same bookkeeping
// in the same order (Benchmarks/CKVMBaseline/baseline.c, hvb_run_round).
import CAllocationCounter
import CKVMBaseline
import HVCore

/// Where one round's samples go: a buffer allocated and touched once, before any round runs, so
/// recording a sample is a store (no allocation, no page fault).
final class SampleBuffer: @unchecked Sendable {
    // Sendable: written by one round's thread at a time, read between rounds.
    let base: UnsafeMutablePointer<UInt64>
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        base = .allocate(capacity: capacity)
        base.initialize(repeating: 0, count: capacity)
    }

    deinit { base.deallocate() }
}

/// How long a round lasts: `warmUp` unrecorded exits, then samples until `cycles` TSC cycles
/// have passed or `capacity` samples are recorded.
struct RoundPlan: Sendable {
    var warmUp: UInt64
    var capacity: Int
    var cycles: UInt64
}

/// What a round produced besides its samples.
struct RoundOutcome: Sendable {
    var recorded: Int
    var exits: UInt64
    /// Heap allocations on the measuring thread during the recorded exits.
    var allocations: UInt64
    /// The CPU the measuring thread ended on.
    var cpu: Int32
}

/// The benchmark's exit handler: timestamps every exit, answers it the trivial way and stops the
/// VM when the round is over. Allocates nothing.
final class ExitClock: ExitHandler, @unchecked Sendable {
    // Sendable: used by the single vCPU thread while the machine runs, read after `run` returns.
    let expected: ExitKind
    let action: ExitAction?
    let samples: UnsafeMutablePointer<UInt64>
    let capacity: Int
    let warmUp: UInt64
    let cycles: UInt64
    let pinCPU: Int32?

    private var previous: UInt64 = 0
    private var deadline: UInt64 = .max
    private var allocationsAtStart: UInt64 = 0
    private(set) var exits: UInt64 = 0
    private(set) var recorded = 0
    private(set) var allocations: UInt64 = 0
    private(set) var cpu: Int32 = -1
    private(set) var pinError: Int32 = 0
    /// The first exit that was not the one the kind expects.
    private(set) var unexpected: ExitKind?

    init(kind: BenchKind, plan: RoundPlan, buffer: SampleBuffer, pinCPU: Int32?) {
        expected = kind.expectedExit
        action = kind.handlerAction
        samples = buffer.base
        capacity = min(plan.capacity, buffer.capacity)
        warmUp = plan.warmUp
        cycles = plan.cycles
        self.pinCPU = pinCPU
    }

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        let now = hvb_rdtsc()
        guard Self.matches(exit, expected) else {
            unexpected = exit.kind
            return .stop(.unhandledExit(exit.kind))
        }
        if exits > warmUp {
            samples[recorded] = now &- previous
            recorded &+= 1
        } else if exits == warmUp {
            deadline = cycles > UInt64.max &- now ? UInt64.max : now &+ cycles
            allocationsAtStart = hv_thread_allocation_count()
        }
        if exits == 0, let pinCPU { pinError = hvb_pin_current_thread(pinCPU) }
        previous = now
        exits &+= 1
        if recorded == capacity || (recorded > 0 && now >= deadline) {
            allocations = hv_thread_allocation_count() &- allocationsAtStart
            cpu = hvb_current_cpu()
            return .stop(.requested)
        }
        return action
    }
}

extension ExitClock {
    /// Whether `exit` is of kind `expected`, decided inline (the C loop's check is inline too;
    /// `VMExit.kind` is a call into HVModel, a cold code page right after a KVM exit).
    @inline(__always)
    static func matches(_ exit: VMExit, _ expected: ExitKind) -> Bool {
        switch exit {
        case .portOut: expected == .portOut
        case .portIn: expected == .portIn
        case .mmioWrite: expected == .mmioWrite
        case .mmioRead: expected == .mmioRead
        case .halt: expected == .halt
        case .msrRead: expected == .msrRead
        case .msrWrite: expected == .msrWrite
        default: false
        }
    }
}

/// A port that accepts writes, for the dispatch kind's device-bus step.
final class BenchPort: PortIODevice, @unchecked Sendable {
    let name = "bench-port"
    func portRead(offset: UInt16, size: Int) -> UInt32 { UInt32(truncatingIfNeeded: BenchKind.answer) }
    func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction { .resume }
}
