import CAllocationCounter
import Foundation
import Glibc
import HVCore
import HVKVM
import Synchronization
import Testing

/// Counts port 0x70 writes; lets a test wait for progress without sleeping for a fixed time.
final class ProgressCounter: ExitHandler, Sendable {
    let count = Atomic<Int>(0)
    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        guard case .portOut(let io) = exit, io.port == 0x70 else { return nil }
        count.add(1, ordering: .relaxed)
        return .resume
    }

    /// Spins (yielding the CPU) until the guest has made `target` exits, or fails after
    /// `seconds` (a guest that stopped early fails the test in seconds, not after millions of
    /// yields, which take minutes inside the test bed).
    func wait(for target: Int, seconds: Double = 30) -> Bool {
        let deadline = Date(timeIntervalSinceNow: seconds)
        while count.load(ordering: .relaxed) < target, Date() < deadline { sched_yield() }
        return count.load(ordering: .relaxed) >= target
    }
}

/// A long-mode guest that writes port 0x70 in an endless loop.
func portLoop() throws -> GuestProgram {
    try GuestProgram.longMode { a in
        let again = a.label()
        a.bind(again)
        a.out(0x70, Register8.al)
        a.jmp(again)
    }
}

@Suite("KVM control", .requiresKVM, .serialized)
struct KVMControlTests {
    @Test("a memory mapping KVM refuses is reported with its slot, guest range and size")
    func refusedMappingNamesTheMapping() throws {
        let vm = try KVMBackend().createVirtualMachine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20))
        let region = try MemoryRegion(guestAddress: GuestPhysicalAddress(0x10_0000), size: 0x10_0000)
        try vm.map(region, slot: 0)
        do {
            try vm.map(region, slot: 1)  // the same guest range in a second slot: KVM says EEXIST
            Issue.record("KVM accepted an overlapping slot")
        } catch {
            let text = "\(error)"
            #expect(text.contains("KVM_SET_USER_MEMORY_REGION(slot 1, guest 0x100000-0x1fffff, 1048576 bytes)"), "\(text)")
        }
    }

    @Test("stop() kicks a vCPU out of a guest that never exits by itself")
    func stopSpinningGuest() throws {
        let vm = try KVMHost.machine()
        try vm.load(GuestProgram.longMode { a in
            let spin = a.label()
            a.bind(spin)
            a.jmp(spin)
        })
        try vm.start(handler: NoExitHandler())
        #expect(vm.state == .running)
        vm.stop()
        let result = vm.wait()
        #expect(result.reason == .requested)
        #expect(vm.state == .stopped)
    }

    @Test("pause parks a running guest with its registers readable; resume continues it")
    func pauseAndResume() throws {
        let vm = try KVMHost.machine()
        try vm.load(try portLoop())
        let progress = ProgressCounter()
        try vm.start(handler: progress)
        #expect(progress.wait(for: 50))
        try vm.pause()
        #expect(vm.state == .paused)
        let parked = progress.count.load(ordering: .relaxed)
        let registers = try vm.vcpus[0].registers()
        // RIP is inside the two-instruction loop at the load address.
        #expect((GuestImage.longModeLoadAddress..<GuestImage.longModeLoadAddress + 8).contains(registers.rip))
        #expect(progress.count.load(ordering: .relaxed) == parked)
        #expect(vm.statistics.count(.portOut) == UInt64(parked))
        try vm.resume()
        #expect(progress.wait(for: parked + 50))
        vm.stop()
        #expect(vm.wait().reason == .requested)
    }

    @Test("sampleStatistics answers while the guest runs: counts grow with no pause, and publishing allocates nothing on the vCPU thread")
    func statisticsWhileRunning() throws {
        let vm = try KVMHost.machine()
        try vm.load(try portLoop())
        let meter = SampleAllocationMeter()
        try vm.start(handler: meter)
        #expect(meter.progress.wait(for: 1_000))
        let first = vm.sampleStatistics()
        #expect(vm.state == .running)
        #expect(first.count(.portOut) >= 1_000)
        #expect(meter.begin())
        var counts: [UInt64] = []
        for _ in 0..<20 {
            #expect(meter.progress.wait(for: meter.progress.count.load(ordering: .relaxed) + 100))
            counts.append(vm.sampleStatistics().count(.portOut))
        }
        let allocations = meter.end()
        vm.stop()
        _ = vm.wait()
        #expect(counts == counts.sorted() && Set(counts).count == counts.count, "every sample is fresher than the last: \(counts)")
        #expect(counts.first! > first.count(.portOut))
        #expect(allocations == 0, "the vCPU thread allocated \(allocations ?? 0) times while publishing 20 samples")
        // What the run published last agrees with the handler's own count.
        #expect(vm.statistics.count(.portOut) == UInt64(meter.progress.count.load(ordering: .relaxed)))
    }

    @Test("a sample reaches a vCPU halted inside KVM (in-kernel irqchip) at once, by the kick")
    func statisticsOfAHaltedVCPU() throws {
        let vm = try KVMHost.machine { $0.interruptController = .kernel }
        try vm.load(GuestProgram.longMode { a in
            a.out(0x70, Register8.al)
            a.cli()
            a.hlt()  // halted in the kernel for good: interrupts off, nothing to wake it
        })
        let progress = ProgressCounter()
        try vm.start(handler: progress)
        #expect(progress.wait(for: 1))
        for _ in 0..<5 {
            let started = Date()
            let sample = vm.sampleStatistics(timeout: 5)
            #expect(Date().timeIntervalSince(started) < 1, "the kick must bring the vCPU out of HLT, not the timeout")
            #expect(sample.count(.portOut) == 1)
        }
        #expect(vm.exits == 1)
        vm.stop()
        #expect(vm.wait().reason == .requested)
    }

    @Test("registers, special registers, MSRs, FPU and XSAVE round-trip through KVM")
    func registerState() throws {
        let vm = try KVMHost.machine()
        let vcpu = vm.vcpus[0]
        var registers = try vcpu.registers()
        registers.rax = 0x1122_3344_5566_7788
        registers.r15 = 0xFEED
        registers.rip = 0x1234
        try vcpu.setRegisters(registers)
        #expect(try vcpu.registers() == registers)

        var special = try vcpu.specialRegisters()
        special.cr2 = 0xDEAD_0000
        special.ds.base = 0x5000
        try vcpu.setSpecialRegisters(special)
        let readBack = try vcpu.specialRegisters()
        #expect(readBack.cr2 == 0xDEAD_0000)
        #expect(readBack.ds.base == 0x5000)

        // IA32_TSC_AUX (0xC0000103) is writable; 0x12345678 is no MSR and is left out.
        try vcpu.setMSRs([0xC000_0103: 42])
        let msrs = try vcpu.msrs([0xC000_0103, 0x1234_5678])
        #expect(msrs[0xC000_0103] == 42)
        #expect(msrs[0x1234_5678] == nil)

        var fpu = try vcpu.fpu()
        fpu.xmm[0] = 0xAA
        fpu.mxcsr = 0x1F80
        try vcpu.setFPU(fpu)
        #expect(try vcpu.fpu().xmm[0] == 0xAA)

        var xsave = try vcpu.xsave()
        #expect(xsave.count == 4096)
        xsave[160] = 0x55  // XMM0's first byte in the legacy region (SDM Vol. 1, 10.5.1)
        xsave[512] |= 0x2  // XSTATE_BV bit 1: SSE state is not in its init state (SDM Vol. 1, 13.4.2)
        try vcpu.setXSAVE(xsave)
        #expect(try vcpu.fpu().xmm[0] == 0x55)
    }

    @Test("a guest RDMSR of an unknown MSR reaches the handler; unhandled ones raise #GP")
    func msrExits() throws {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        try vm.load(GuestProgram.longMode { a in
            a.mov(Register32.ecx, 0x4B56_0001)  // no such MSR: KVM sends it to user space
            a.rdmsr()
            a.out(0x70, Register32.eax)
            a.mov(Register32.ecx, 0x4B56_0002)
            a.mov(Register32.eax, 5)
            a.mov(Register32.edx, 0)
            a.wrmsr()
            a.debugExit(code: 0)
        })
        let recorder = TrafficRecorder(ports: 0x70...0x70)
        let handler = ClosureExitHandler { exit, context in
            switch exit {
            case .msrRead(let index) where index == 0x4B56_0001: return .resumeWith(0x600D)
            default: return recorder.handle(exit, context: context)
            }
        }
        let result = try vm.run(handler: handler)
        #expect(recorder.accesses.first?.values == [0x600D])
        // WRMSR of 0x4B560002 is unhandled: #GP with an empty IDT escalates to shutdown.
        #expect(result.reason == .shutdown)
        #expect(vm.statistics.count(.msrRead) == 1)
        #expect(vm.statistics.count(.msrWrite) == 1)
    }

    @Test("10,000 port-I/O exits allocate nothing on the vCPU thread")
    func runLoopAllocatesNothing() throws {
        let vm = try KVMHost.machine { $0.collectExitStatistics = true }
        _ = try attachConsole(vm)
        try vm.load(GuestProgram.longMode { a in
            let again = a.label()
            a.mov(Register32.ecx, 10_200)
            a.bind(again)
            a.out(0x70, Register8.al)
            a.dec(Register32.ecx)
            a.jnz(again)
            a.debugExit(code: 0)
        })
        let meter = AllocationMeter(warmUp: 100, measured: 10_000)
        let result = try vm.run(handler: meter)
        #expect(result.reason == .debugExit(code: 0))
        #expect(meter.measuredExits == 10_000)
        #expect(meter.allocations == 0, "the run loop allocated \(meter.allocations) times in 10,000 exits")
    }
}

/// Reads the vCPU thread's allocation count after `warmUp` exits and again `measured` exits later.
final class AllocationMeter: ExitHandler, @unchecked Sendable {
    // Sendable: touched only by the single vCPU thread while running, read after wait().
    let warmUp: Int
    let measured: Int
    private var seen = 0
    private var start: UInt64 = 0
    private(set) var allocations: UInt64 = 0
    private(set) var measuredExits = 0

    init(warmUp: Int, measured: Int) {
        self.warmUp = warmUp
        self.measured = measured
    }

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        guard case .portOut(let io) = exit, io.port == 0x70 else { return nil }
        seen += 1
        if seen == warmUp { start = hv_thread_allocation_count() }
        if seen == warmUp + measured {
            allocations = hv_thread_allocation_count() &- start
            measuredExits = measured
        }
        return .resume
    }
}

/// Counts port 0x70 exits and, between `begin()` and `end()`, the vCPU thread's allocations.
final class SampleAllocationMeter: ExitHandler, @unchecked Sendable {
    // Sendable: `phase` hands the measurement between the threads; `start`/`allocations` are
    // written by the vCPU thread before it moves the phase on, read by the test after.
    let progress = ProgressCounter()
    private let phase = Atomic<Int>(0)  // 0 idle, 1 begin asked, 2 measuring, 3 end asked, 4 done
    private var start: UInt64 = 0
    private var allocations: UInt64 = 0

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch phase.load(ordering: .acquiring) {
        case 1:
            start = hv_thread_allocation_count()
            phase.store(2, ordering: .releasing)
        case 3:
            allocations = hv_thread_allocation_count() &- start
            phase.store(4, ordering: .releasing)
        default: break
        }
        return progress.handle(exit, context: context)
    }

    /// Starts counting at the vCPU's next exit; false if it never came.
    func begin() -> Bool { handOver(from: 1, to: 2) }

    /// The vCPU thread's allocations since `begin()`, read at its next exit.
    func end() -> UInt64? { handOver(from: 3, to: 4) ? allocations : nil }

    private func handOver(from asked: Int, to done: Int) -> Bool {
        phase.store(asked, ordering: .releasing)
        let deadline = Date(timeIntervalSinceNow: 10)
        while phase.load(ordering: .acquiring) != done, Date() < deadline { sched_yield() }
        return phase.load(ordering: .acquiring) == done
    }
}
