// One measured round per call: HVCore through its real run loop (Machine + ExitClock), the raw C
// loop, the KVM_RUN floor through HVCore's vCPU call, and user-space dispatch on the scripted
// backend. Each round builds a fresh VM, so every round starts from the same state.
import CAllocationCounter
import CKVMBaseline
import Foundation
import Glibc
import HVCore
import HVKVM

enum BenchError: Error, CustomStringConvertible {
    case unexpectedExit(kind: BenchKind, side: String, got: String)
    case stopped(kind: BenchKind, reason: String)
    case baseline(kind: BenchKind, detail: String)
    case pin(cpu: Int32, errno: Int32)

    var description: String {
        switch self {
        case let .unexpectedExit(kind, side, got):
            "\(kind.rawValue) (\(side)): the guest made a \(got) exit, expected \(kind.expectedExit.name)"
        case let .stopped(kind, reason): "\(kind.rawValue) (HVCore): the VM stopped early: \(reason)"
        case let .baseline(kind, detail): "\(kind.rawValue) (C baseline): \(detail)"
        case let .pin(cpu, code): "--cpu \(cpu): sched_setaffinity failed: \(String(cString: strerror(code)))"
        }
    }
}

/// Runs rounds of one kind on both sides.
struct RoundRunner {
    /// Guest RAM for the KVM kinds: the smallest long-mode image.
    static let memorySize: UInt64 = GuestImage.longModeMinimumMemorySize

    let kind: BenchKind
    let program: GuestProgram
    let image: GuestImage
    let kvm: KVMBackend?
    let buffer: SampleBuffer
    let pinCPU: Int32?
    let exitStatistics: Bool

    init(kind: BenchKind, kvm: KVMBackend?, buffer: SampleBuffer, pinCPU: Int32?, exitStatistics: Bool) throws {
        self.exitStatistics = exitStatistics
        self.kind = kind
        self.kvm = kvm
        self.buffer = buffer
        self.pinCPU = pinCPU
        program = try kind.program()
        image = try program.image(memorySize: Self.memorySize)
    }

    /// HVCore's side: the dispatch kind on the scripted backend, the KVM_RUN floor through
    /// `KVMVCPU.run()`, every other kind through `Machine.run(handler:)`.
    func hvcoreRound(_ plan: RoundPlan) throws -> RoundOutcome {
        switch kind {
        case .dispatch:
            let backend = ScriptedBackend(script: [.portOut(port: 0x70, size: 1, values: [0x41])], repeats: true, records: false)
            let machine = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, collectExitStatistics: exitStatistics),
                                      backend: backend)
            try machine.devices.register(BenchPort(), port: 0x70, count: 1)
            return try run(machine, plan)
        case .kvmRun:
            return try floorRound(plan)
        default:
            let machine = try Machine(configuration: configuration, backend: kvm!)
            try machine.load(image)
            return try run(machine, plan)
        }
    }

    /// The configuration both sides mirror: defaults (statistics on, unknown MSRs trapped),
    /// with HLT resumed so the hlt loop keeps running.
    var configuration: VirtualMachineConfiguration {
        VirtualMachineConfiguration(memorySize: Self.memorySize, haltPolicy: .resume, collectExitStatistics: exitStatistics)
    }

    private func run<B: Backend>(_ machine: Machine<B>, _ plan: RoundPlan) throws -> RoundOutcome {
        let clock = ExitClock(kind: kind, plan: plan, buffer: buffer, pinCPU: pinCPU)
        let result = try machine.run(handler: clock)
        if let unexpected = clock.unexpected {
            throw BenchError.unexpectedExit(kind: kind, side: "HVCore", got: "\(unexpected.name)")
        }
        if clock.pinError != 0, let pinCPU { throw BenchError.pin(cpu: pinCPU, errno: clock.pinError) }
        guard result.reason == .requested else { throw BenchError.stopped(kind: kind, reason: "\(result.reason) \(result.error ?? "")") }
        return RoundOutcome(recorded: clock.recorded, exits: clock.exits, allocations: clock.allocations, cpu: clock.cpu)
    }

    /// The floor: a kicked `run()` never reaches a handler (the run loop swallows `.interrupted`
    /// by design), so this loop calls the backend's `run()` itself, on this (pinned) thread, with
    /// the same bookkeeping as `ExitClock`.
    private func floorRound(_ plan: RoundPlan) throws -> RoundOutcome {
        let machine = try Machine(configuration: configuration, backend: kvm!)
        try machine.load(image)
        let vcpu = machine.vcpus[0]
        // No thread is registered (prepareThread was not called), so this only sets immediate_exit.
        vcpu.requestExit()
        defer { vcpu.clearExitRequest() }
        let samples = buffer.base
        let capacity = min(plan.capacity, buffer.capacity)
        var previous: UInt64 = 0, exits: UInt64 = 0, recorded = 0
        var deadline = UInt64.max, allocationsAtStart: UInt64 = 0
        while true {
            let exit = try vcpu.run()
            let now = hvb_rdtsc()
            guard case .interrupted = exit else {
                throw BenchError.unexpectedExit(kind: kind, side: "HVCore", got: "\(exit.kind.name)")
            }
            if exits > plan.warmUp {
                samples[recorded] = now &- previous
                recorded &+= 1
            } else if exits == plan.warmUp {
                deadline = plan.cycles > UInt64.max &- now ? UInt64.max : now &+ plan.cycles
                allocationsAtStart = hv_thread_allocation_count()
            }
            previous = now
            exits &+= 1
            if recorded == capacity || (recorded > 0 && now >= deadline) { break }
        }
        let allocations = hv_thread_allocation_count() &- allocationsAtStart
        return RoundOutcome(recorded: recorded, exits: exits, allocations: allocations, cpu: hvb_current_cpu())
    }

    /// The C side: a fresh raw-ioctl VM with the same image, run on this (pinned) thread.
    func baselineRound(_ plan: RoundPlan) throws -> RoundOutcome {
        var vm: OpaquePointer?
        let status = withBaselineImage { chunks, state in
            var error = [CChar](repeating: 0, count: 256)
            let code = hvb_vm_create(chunks.baseAddress, Int32(chunks.count), Self.memorySize, state, &vm, &error, error.count)
            return code == 0 ? nil : String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        if let status { throw BenchError.baseline(kind: kind, detail: status) }
        defer { hvb_vm_destroy(vm) }
        // nonisolated(unsafe): the round's pointers are used by the one thread below while this waits.
        nonisolated(unsafe) let round = hvb_round(samples: buffer.base, capacity: UInt64(min(plan.capacity, buffer.capacity)),
                                                  warm_up: plan.warmUp, duration_tsc: plan.cycles, answer: BenchKind.answer)
        nonisolated(unsafe) let baselineVM = vm
        let baselineKind = kind.baselineKind
        // The C loop gets a thread of its own, as HVCore's vCPU does (a fresh thread's FPU and
        // cache state, not the main thread's), pinned the same way.
        let (result, allocations) = Self.onOwnThread(pinCPU: pinCPU) { () -> (hvb_round_result, UInt64) in
            var result = hvb_round_result()
            var round = round
            let before = hv_thread_allocation_count()
            _ = hvb_run_round(baselineVM, baselineKind, &round, &result)
            return (result, hv_thread_allocation_count() &- before)
        }
        let code: Int32 = result.error != 0 || result.unexpected != 0 ? -1 : 0
        if code != 0 {
            if result.error != 0 { throw BenchError.baseline(kind: kind, detail: "KVM_RUN: \(String(cString: strerror(result.error)))") }
            throw BenchError.unexpectedExit(kind: kind, side: "C", got: "KVM exit reason \(result.unexpected)")
        }
        return RoundOutcome(recorded: Int(result.recorded), exits: result.exits, allocations: allocations, cpu: result.cpu)
    }

    /// Runs `body` on a new thread pinned to `pinCPU` and waits for its result.
    static func onOwnThread(pinCPU: Int32?, _ body: @escaping @Sendable () -> (hvb_round_result, UInt64)) -> (hvb_round_result, UInt64) {
        let box = ResultBox()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            if let pinCPU { _ = hvb_pin_current_thread(pinCPU) }
            box.value = body()
            done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
        done.wait()
        return box.value!
    }

    /// The image's chunks and initial state as the C structs, valid inside `body`.
    private func withBaselineImage<T>(_ body: (UnsafeBufferPointer<hvb_chunk>, UnsafePointer<hvb_cpu_state>) throws -> T) rethrows -> T {
        let copies = image.chunks.map { chunk -> UnsafeMutableBufferPointer<UInt8> in
            let copy = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: chunk.bytes.count)
            _ = copy.initialize(from: chunk.bytes)
            return copy
        }
        defer { copies.forEach { $0.deallocate() } }
        let chunks = zip(image.chunks, copies).map { chunk, copy in
            hvb_chunk(guest_address: chunk.address.rawValue, bytes: UnsafePointer(copy.baseAddress), size: UInt64(copy.count))
        }
        var state = Self.cpuState(image)
        return try chunks.withUnsafeBufferPointer { buffer in try body(buffer, &state) }
    }

    static func cpuState(_ image: GuestImage) -> hvb_cpu_state {
        func segment(_ s: Segment) -> hvb_segment {
            hvb_segment(base: s.base, limit: s.limit, selector: s.selector, type: s.type, present: s.present ? 1 : 0,
                        dpl: s.dpl, db: s.defaultSize32 ? 1 : 0, s: s.codeOrData ? 1 : 0, l: s.long ? 1 : 0,
                        g: s.granularity ? 1 : 0, avl: s.available ? 1 : 0, unusable: s.unusable ? 1 : 0)
        }
        let s = image.specialRegisters, r = image.registers
        return hvb_cpu_state(
            cs: segment(s.cs), ds: segment(s.ds), es: segment(s.es), fs: segment(s.fs), gs: segment(s.gs),
            ss: segment(s.ss), tr: segment(s.tr), ldt: segment(s.ldt),
            gdt_base: s.gdt.base, idt_base: s.idt.base, gdt_limit: s.gdt.limit, idt_limit: s.idt.limit,
            cr0: s.cr0, cr2: s.cr2, cr3: s.cr3, cr4: s.cr4, cr8: s.cr8, efer: s.efer, apic_base: s.apicBase,
            rip: r.rip, rsp: r.rsp, rflags: r.rflags)
    }
}

/// Carries the C round's result from its thread.
private final class ResultBox: @unchecked Sendable {
    // Sendable: written by the round's thread before it signals, read after the wait.
    var value: (hvb_round_result, UInt64)?
}
