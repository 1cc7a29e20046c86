import HVCore
import Synchronization
import Testing

@Suite("Emulated preemption timer", .requiresKVM, .serialized)
struct PreemptionTimerTests {
    @Test("a guest that never exits by itself is preempted by the host timer, again and again")
    func preemptsSpinningGuest() throws {
        let vm = try KVMHost.machine { $0.preemptionTimerInterval = 0.005 }
        try vm.load(GuestProgram.longMode { a in
            let spin = a.label()
            a.bind(spin)
            a.jmp(spin)
        })
        let expiries = Mutex(0)
        let handler = ClosureExitHandler { exit, context in
            guard case .preemptionTimer = exit else { return nil }
            let count = expiries.withLock { count in count += 1; return count }
            return count == 3 ? .stop(.debugExit(code: 0x52)) : .resume   // 52: the VMX exit reason
        }
        let result = try vm.run(handler: handler)
        #expect(result.reason == .debugExit(code: 0x52))
        #expect(expiries.withLock { $0 } == 3)
        #expect(vm.statistics.count(.preemptionTimer) == 3)
    }

    @Test("the VMX preemption-timer knob applies on KVM only with the host timer configured")
    func knobNeedsInterval() throws {
        var vmx = VMXConfiguration()
        _ = vmx.set("preemption-timer", true)
        let without = try KVMHost.machine()
        #expect { try without.vm.apply(vmx, vcpus: without.vcpus) } throws: { error in
            guard case .unsupported(let knob, let backend, let reason) = error as? HVError else { return false }
            return knob == "preemption-timer" && backend == "kvm" && reason.contains("preemptionTimerInterval")
        }
        let with = try KVMHost.machine { $0.preemptionTimerInterval = 0.01 }
        try with.vm.apply(vmx, vcpus: with.vcpus)
    }

    @Test("a non-positive interval is rejected, naming the field")
    func invalidInterval() {
        var configuration = VirtualMachineConfiguration()
        configuration.preemptionTimerInterval = 0
        #expect(throws: ConfigurationError.self) { try configuration.validate() }
    }
}
