// The per-VM API's documents (Documentation/Management.md; the schema of each is in
// Resources/vm-api.yaml, the OpenAPI document the server serves at /openapi.yaml).
// Plain Codable values: the server encodes them, `VMAPIClient` decodes them.
import HVCore

/// `GET /v1/vm`: what the VM is and where it stands.
public struct VMInfo: Codable, Sendable, Equatable {
    /// created, running, paused, stopped or error (`MachineState`).
    public var state: String
    /// The backend that runs it ("kvm").
    public var backend: String
    public var vcpus: Int
    public var memoryBytes: UInt64
    /// none, kernel or split.
    public var interruptController: String
    /// Seconds since the VM started.
    public var uptimeSeconds: Double
    /// Exits of every vCPU, as last published (fresh after a pause or a statistics sample).
    public var exits: UInt64
    /// In-place resets (the guest's or `POST /v1/vm/reset`).
    public var resets: Int
    /// Times the guest slept (ACPI S3) and woke.
    public var sleeps: Int
    /// Whether the guest is asleep now.
    public var asleep: Bool
    /// The process serving this API.
    public var pid: Int32
}

/// One exit kind's figures in `GET /v1/vm/statistics`.
public struct ExitKindStatistics: Codable, Sendable, Equatable {
    /// The kind's short name, as in `hv run --stats` ("io-out", "mmio-read", ...).
    public var kind: String
    public var count: UInt64
    /// Round trip (guest to monitor and back), from the TSC.
    public var medianNanoseconds: UInt64
    public var p99Nanoseconds: UInt64
    public var meanNanoseconds: Double
    /// Time in the monitor's handlers, mean per exit.
    public var meanHandlingNanoseconds: Double
    /// Cumulative round-trip counts at `StatisticsReport.bucketBoundaries` (the count of exits
    /// that took at most each boundary): a Prometheus histogram's buckets, `count` is its +Inf.
    public var buckets: [UInt64]
}

/// `GET /v1/vm/statistics`: the exit table of `hv run --stats`, while the VM runs.
public struct StatisticsReport: Codable, Sendable, Equatable {
    /// The latency histogram's bucket boundaries in nanoseconds: 250 ns to 100 ms.
    public static let bucketBoundaries: [UInt64] = [250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
                                                    1_000_000, 10_000_000, 100_000_000]
    public var state: String
    public var uptimeSeconds: Double
    public var exits: UInt64
    /// The kinds that occurred, in HV's exit-kind order.
    public var kinds: [ExitKindStatistics]
}

/// One segment register in `VCPURegisters`.
public struct SegmentState: Codable, Sendable, Equatable {
    public var selector: UInt16
    public var base: UInt64
    public var limit: UInt32
    /// The access rights' type field (SDM Vol. 3A, 3.4.5.1).
    public var type: UInt8
    public var dpl: UInt8
    public var present: Bool
    /// L: a 64-bit code segment.
    public var long: Bool
    /// D/B: a 32-bit segment.
    public var defaultSize32: Bool
}

/// `GET /v1/vcpus/{id}/registers` of a paused or stopped VM.
public struct VCPURegisters: Codable, Sendable, Equatable {
    public var vcpu: Int
    /// The general-purpose registers, rip and rflags by name ("rax", ..., "r15", "rip", "rflags").
    public var general: [String: UInt64]
    /// cr0, cr2, cr3, cr4, cr8, efer, apicBase.
    public var control: [String: UInt64]
    /// cs, ds, es, fs, gs, ss, tr, ldt.
    public var segments: [String: SegmentState]
    /// gdt and idt.
    public var descriptorTables: [String: DescriptorTableState]
}

/// The GDT or IDT register.
public struct DescriptorTableState: Codable, Sendable, Equatable {
    public var base: UInt64
    public var limit: UInt16
}

/// One device range in `GET /v1/devices`.
public struct DeviceEntry: Codable, Sendable, Equatable {
    public var name: String
    /// port (I/O ports) or mmio (guest-physical addresses).
    public var space: String
    public var base: UInt64
    /// Ports or bytes.
    public var length: UInt64

    public init(name: String, space: String, base: UInt64, length: UInt64) {
        self.name = name
        self.space = space
        self.base = base
        self.length = length
    }
}

/// A refused or failed request: Hummingbird's error body, `{"error": {"message": ...}}`.
public struct APIErrorBody: Codable, Sendable, Equatable {
    public struct Detail: Codable, Sendable, Equatable { public var message: String }
    public var error: Detail
}

extension VCPURegisters {
    init(vcpu: Int, registers r: Registers, special s: SpecialRegisters) {
        self.vcpu = vcpu
        general = ["rax": r.rax, "rbx": r.rbx, "rcx": r.rcx, "rdx": r.rdx, "rsi": r.rsi, "rdi": r.rdi, "rsp": r.rsp, "rbp": r.rbp,
                   "r8": r.r8, "r9": r.r9, "r10": r.r10, "r11": r.r11, "r12": r.r12, "r13": r.r13, "r14": r.r14, "r15": r.r15,
                   "rip": r.rip, "rflags": r.rflags]
        control = ["cr0": s.cr0, "cr2": s.cr2, "cr3": s.cr3, "cr4": s.cr4, "cr8": s.cr8, "efer": s.efer, "apicBase": s.apicBase]
        let segment = { (g: Segment) in
            SegmentState(selector: g.selector, base: g.base, limit: g.limit, type: g.type, dpl: g.dpl, present: g.present,
                         long: g.long, defaultSize32: g.defaultSize32)
        }
        segments = ["cs": segment(s.cs), "ds": segment(s.ds), "es": segment(s.es), "fs": segment(s.fs), "gs": segment(s.gs),
                    "ss": segment(s.ss), "tr": segment(s.tr), "ldt": segment(s.ldt)]
        descriptorTables = ["gdt": DescriptorTableState(base: s.gdt.base, limit: s.gdt.limit),
                            "idt": DescriptorTableState(base: s.idt.base, limit: s.idt.limit)]
    }
}

extension StatisticsReport {
    /// The report of `statistics` (kinds that occurred only, in `ExitKind` order).
    public init(state: MachineState, uptime: Double, statistics: ExitStatistics) {
        self.state = state.rawValue
        uptimeSeconds = uptime
        exits = statistics.totalExits
        kinds = statistics.recordedKinds.map { kind in
            ExitKindStatistics(kind: "\(kind.name)", count: statistics.count(kind),
                               medianNanoseconds: statistics.medianRoundTrip(kind) ?? 0,
                               p99Nanoseconds: statistics.roundTrip(kind, percentile: 99) ?? 0,
                               meanNanoseconds: statistics.meanRoundTrip(kind) ?? 0,
                               meanHandlingNanoseconds: statistics.meanHandling(kind) ?? 0,
                               buckets: Self.bucketBoundaries.map { statistics.roundTripCount(kind, atMostNanoseconds: $0) })
        }
    }
}

/// `POST /v1/vm/snapshot`'s body: where to write the snapshot.
public struct SnapshotRequest: Codable, Sendable, Equatable {
    /// An absolute path: a new directory, or an older snapshot's, which the new one replaces
    /// atomically.
    public var path: String

    public init(path: String) { self.path = path }
}

/// `POST /v1/vm/snapshot`'s answer.
public struct SnapshotResult: Codable, Sendable, Equatable {
    public var path: String
    public var memoryBytes: UInt64
    /// 4 KiB pages that held data (zero pages are not written).
    public var dataPages: UInt64
    public var stateBytes: UInt64
    public var encrypted: Bool
    /// How long the guest was paused for it.
    public var seconds: Double

    public init(path: String, memoryBytes: UInt64, dataPages: UInt64, stateBytes: UInt64, encrypted: Bool, seconds: Double) {
        self.path = path
        self.memoryBytes = memoryBytes
        self.dataPages = dataPages
        self.stateBytes = stateBytes
        self.encrypted = encrypted
        self.seconds = seconds
    }
}

/// Why a snapshot was not taken: the VM's state (409) or anything else (400), with the message.
public struct SnapshotRefusal: Error, Sendable {
    public var conflict: Bool
    public var message: String

    public init(conflict: Bool, message: String) {
        self.conflict = conflict
        self.message = message
    }
}

/// `POST /v1/vm/migrate`'s body.
public struct MigrateRequest: Codable, Sendable, Equatable {
    /// A Unix socket (absolute path) where the migration stream goes: `hv ctl SOCKET migrate
    /// HOST:PORT` listens there and carries the stream to the destination over TCP.
    public var via: String
    /// The longest pause the stop-and-copy should take, in milliseconds (default 10).
    public var maxDowntimeMs: Double?

    public init(via: String, maxDowntimeMs: Double? = nil) {
        self.via = via
        self.maxDowntimeMs = maxDowntimeMs
    }
}

/// `POST /v1/vm/migrate`'s answer, once the destination runs the guest (the source then stops).
public struct MigrateResult: Codable, Sendable, Equatable {
    public var rounds: Int
    public var pagesSent: UInt64
    public var bytesSent: UInt64
    public var finalPages: UInt64
    /// From the source's pause to the destination's guest running.
    public var downtimeMs: Double
    public var totalSeconds: Double

    public init(rounds: Int, pagesSent: UInt64, bytesSent: UInt64, finalPages: UInt64, downtimeMs: Double, totalSeconds: Double) {
        self.rounds = rounds
        self.pagesSent = pagesSent
        self.bytesSent = bytesSent
        self.finalPages = finalPages
        self.downtimeMs = downtimeMs
        self.totalSeconds = totalSeconds
    }
}

/// `GET /v1/vm/migration`: where a migration under way stands.
public struct MigrationStatus: Codable, Sendable, Equatable {
    /// idle, pre-copy, stop-and-copy, waiting for the destination, done, failed.
    public var phase: String
    public var round: Int
    public var pagesSent: UInt64
    public var bytesSent: UInt64
    public var remainingPages: UInt64
    public var bytesPerSecond: Double
    public var message: String?

    public init(phase: String, round: Int, pagesSent: UInt64, bytesSent: UInt64, remainingPages: UInt64, bytesPerSecond: Double, message: String?) {
        self.phase = phase
        self.round = round
        self.pagesSent = pagesSent
        self.bytesSent = bytesSent
        self.remainingPages = remainingPages
        self.bytesPerSecond = bytesPerSecond
        self.message = message
    }
}
