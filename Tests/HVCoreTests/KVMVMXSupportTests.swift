import HVCore
import HVKVM
import Testing

@Suite("KVM VMXSupport: the hosted meaning of VMXConfiguration")
struct KVMVMXSupportTests {
    @Test("the support table covers every VMX knob name")
    func tableCoversEveryKnob() {
        #expect(Set(KVMVMXSupport.table.keys) == Set(VMXConfiguration.knobNames))
    }

    @Test("isOn reads back what set wrote, for every knob")
    func isOnMatchesSet() {
        for name in VMXConfiguration.knobNames where name != "unconditional-io" && name != "io-bitmap" {
            var vmx = VMXConfiguration()
            let setOn = vmx.set(name, true)
            #expect(setOn)
            #expect(KVMVMXSupport.isOn(name, in: vmx), "\(name) on")
            let setOff = vmx.set(name, false)
            #expect(setOff)
            #expect(!KVMVMXSupport.isOn(name, in: vmx), "\(name) off")
        }
    }

    /// A guest that reads IA32_TSC (0x10, handled in-kernel by KVM) and writes the low half to port 0x70.
    func readTSCGuest() throws -> GuestProgram {
        try GuestProgram.longMode { a in
            a.mov(Register32.ecx, 0x10)
            a.rdmsr()
            a.out(0x70, Register32.eax)
            a.debugExit(code: 0)
        }
    }

    func runTSCGuest(trapped: [UInt32]) throws -> (values: [UInt32], reads: Int) {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        var vmx = VMXConfiguration()
        vmx.trappedMSRs = trapped
        try vm.vm.apply(vmx, vcpus: vm.vcpus)
        try vm.load(readTSCGuest())
        let recorder = TrafficRecorder(ports: 0x70...0x70)
        let handler = ClosureExitHandler { exit, context in
            switch exit {
            case .msrRead(let index) where index == 0x10: return .resumeWith(0x600D)
            default: return recorder.handle(exit, context: context)
            }
        }
        let result = try vm.run(handler: handler)
        #expect(result.reason == .debugExit(code: 0))
        return (recorder.accesses.first?.values ?? [], Int(vm.statistics.count(.msrRead)))
    }

    @Test("a trapped MSR reaches the handler only after apply puts it in the MSR filter", .requiresKVM)
    func trappedMSRReachesHandler() throws {
        let plain = try runTSCGuest(trapped: [])
        #expect(plain.reads == 0)
        #expect(plain.values.count == 1)
        #expect(plain.values != [0x600D])
        let trapped = try runTSCGuest(trapped: [0x10])
        #expect(trapped.reads == 1)
        #expect(trapped.values == [0x600D])
    }

    @Test("an unsupported knob that is on is an error naming knob and backend", .requiresKVM,
          arguments: ["cr3-exiting", "vmcs-shadowing", "smep"])
    func unsupportedKnobThrows(knob: String) throws {
        let vm = try KVMHost.machine()
        var vmx = VMXConfiguration()
        let known = vmx.set(knob, true)
        #expect(known)
        do {
            try vm.vm.apply(vmx, vcpus: vm.vcpus)
            Issue.record("apply accepted \(knob)")
        } catch {
            guard case .unsupported(let name, let backend, _) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(name == knob)
            #expect(backend == "kvm")
        }
    }

    @Test("the default VMX configuration applies cleanly", .requiresKVM)
    func defaultApplies() throws {
        let vm = try KVMHost.machine()
        try vm.vm.apply(VMXConfiguration(), vcpus: vm.vcpus)
    }

    @Test("debug knobs install KVM_SET_GUEST_DEBUG on every vCPU, and need the vCPUs", .requiresKVM)
    func guestDebugInstalls() throws {
        let vm = try KVMHost.machine(cpus: 2)
        var vmx = VMXConfiguration()
        vmx.exceptionBitmap |= 1 << 3
        vmx.monitorTrapFlag = true
        vmx.movDRExiting = true
        try vm.vm.apply(vmx, vcpus: vm.vcpus)  // the kernel accepted the guest-debug flags
        do {
            try vm.vm.apply(vmx)
            Issue.record("apply without vCPUs accepted guest-debug knobs")
        } catch {
            guard case .unsupported(let name, _, _) = error else { Issue.record("\(error)"); return }
            #expect(name == "monitor-trap-flag")
        }
    }

    @Test("an exception vector KVM cannot intercept for user space is an error naming it", .requiresKVM)
    func otherVectorThrows() throws {
        let vm = try KVMHost.machine()
        var vmx = VMXConfiguration()
        vmx.exceptionBitmap |= 1 << 14
        #expect(throws: HVError.self) { try vm.vm.apply(vmx, vcpus: vm.vcpus) }
    }
}
