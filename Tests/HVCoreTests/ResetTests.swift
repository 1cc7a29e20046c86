import Foundation
import HVCore
import HVKVM
import Synchronization
import Testing

/// Answers `.reset` for a write to port 0xCF9 (as the PIIX reset register would).
private let resetPort = ClosureExitHandler { exit, _ in
    if case .portOut(let io) = exit, io.port == 0xCF9 { return .reset }
    return nil
}

private func scripted(_ scripts: [[ScriptedExit]], repeats: Bool = false, policy: ResetPolicy)
    throws -> Machine<ScriptedBackend>
{
    var configuration = VirtualMachineConfiguration(memorySize: 1 << 20, cpuCount: scripts.count, timeLimit: 30)
    configuration.resetPolicy = policy
    return try Machine(configuration: configuration, backend: ScriptedBackend(scripts: scripts, repeats: repeats))
}

@Suite("Reset in place on the scripted backend")
struct ScriptedResetTests {
    static let reset = ScriptedExit.portOut(port: 0xCF9, size: 1, values: [0x06])

    @Test("with ResetPolicy.stop a reset ends the run with StopReason.reset")
    func stopPolicy() throws {
        let vm = try scripted([[Self.reset, .halt]], policy: .stop)
        let result = try vm.run(handler: resetPort)
        #expect(result.reason == .reset)
        #expect(result.resets == 0)
        #expect(vm.vcpus[0].pendingExitCompletions == 0)
    }

    @Test("with ResetPolicy.restart the guest runs on; registers, devices and loaded bytes are put back")
    func restartPolicy() throws {
        let vm = try scripted([[
            .portOut(port: 0x3FF, size: 1, values: [0x5A]),  // UART scratch register
            Self.reset,
            .portIn(port: 0x3FF, size: 1, count: 1),         // reads 0 again after the reset
            .portOut(port: 0x3FF, size: 1, values: [0x77]),
            Self.reset,
            .halt,
        ]], policy: .restart)
        let uart = UART16550()
        try vm.devices.register(uart, port: 0x3F8, count: 8)
        var registers = Registers()
        registers.rip = 0x7C00
        try vm.load(GuestImage(chunks: [.init(address: GuestPhysicalAddress(0x7C00), bytes: [0xF4], name: "hlt")],
                               registers: registers, specialRegisters: SpecialRegisters(), mode: .real))
        // The "guest" scribbles over its registers and its image between resets.
        let loaded = registers
        let scribbler = ClosureExitHandler { exit, context in
            if case .portOut(let io) = exit, io.port == 0x3FF {
                var changed = loaded
                changed.rip = 0xDEAD
                try? vm.vcpus[context.vcpuID].setRegisters(changed)
                try? vm.memory.write(bytes: [0xCC], at: GuestPhysicalAddress(0x7C00))
            }
            return nil
        }
        let result = try vm.run(handler: ChainedExitHandler(resetPort, scribbler))
        #expect(result.reason == .halted)
        #expect(result.resets == 2)
        #expect(vm.resets == 2)
        #expect(vm.vcpus[0].pendingExitCompletions == 2)
        #expect(vm.vcpus[0].completions.map(\.inData)[2] == [0x00])
        #expect(try vm.vcpus[0].registers().rip == 0x7C00)
        #expect(try vm.memory.readBytes(at: GuestPhysicalAddress(0x7C00), count: 1) == [0xF4])
    }

    @Test("a reset the backend reports (KVM_SYSTEM_EVENT_RESET) restarts too; a triple fault still stops")
    func systemEventReset() throws {
        let vm = try scripted([[.systemEvent(.reset), .shutdown]], policy: .restart)
        let result = try vm.run()
        #expect(result.resets == 1)
        #expect(result.reason == .shutdown)
    }

    @Test("every vCPU meets the reset: a spinning vCPU is kicked and goes on after it")
    func otherVCPUsJoin() throws {
        // vCPU 1 spins on port 0x80 until vCPU 0, after two resets, halts and stops the VM.
        let vm = try scripted([[Self.reset, Self.reset, .halt], [.portOut(port: 0x80, size: 1, values: [1])]],
                              repeats: true, policy: .restart)
        let result = try vm.run(handler: resetPort)
        #expect(result.resets >= 2)
        #expect(result.reason == .halted)
        #expect(vm.vcpus[1].pendingExitCompletions == result.resets)
    }

    @Test("a stop wins over a reset in progress")
    func stopWins() throws {
        let vm = try scripted([[.portOut(port: 0x80, size: 1, values: [1])]], repeats: true, policy: .restart)
        let resets = Atomic<Int>(0)
        let handler = ClosureExitHandler { _, _ in
            resets.add(1, ordering: .relaxed)
            return .reset
        }
        try vm.start(handler: handler)
        while resets.load(ordering: .relaxed) < 50 {}
        vm.stop()
        let result = vm.wait()
        #expect(result.reason == .requested)
        #expect(result.resets > 0)
    }

    @Test("a stop while paused stands: resume() does not send the vCPUs back into the guest")
    func stopWhilePaused() throws {
        let vm = try scripted([[.portOut(port: 0x80, size: 1, values: [1])], [.portOut(port: 0x81, size: 1, values: [1])]],
                              repeats: true, policy: .restart)
        try vm.start(handler: NoExitHandler())
        try vm.pause()
        vm.stop()
        try? vm.resume()
        let started = ContinuousClock.now
        let result = vm.wait()
        #expect(result.reason == .requested)
        #expect(ContinuousClock.now - started < .seconds(5))        // not the 30 s time limit
    }

    @Test("a reset that fails stops the VM with the reason; no vCPU runs the guest afterwards")
    func failedReset() throws {
        let vm = try scripted([[Self.reset, .portOut(port: 0x90, size: 1, values: [1])],
                               [.portOut(port: 0x91, size: 1, values: [1])]],
                              repeats: true, policy: .restart)
        let afterFailure = Atomic<Int>(0)
        let failed = Atomic<Bool>(false)
        try vm.onReset { (_) throws(HVError) in
            failed.store(true, ordering: .sequentiallyConsistent)
            throw .invalidState(operation: "test reset step", state: .running)
        }
        let handler = ClosureExitHandler { exit, _ in
            if case .portOut(let io) = exit, io.port == 0xCF9 { return .reset }
            if failed.load(ordering: .sequentiallyConsistent) { afterFailure.add(1, ordering: .relaxed) }
            return nil
        }
        try vm.start(handler: handler)
        let result = vm.wait()
        let hookRan = failed.load(ordering: .relaxed)
        #expect(hookRan)
        #expect(result.reason == .backendFailure)
        #expect(result.error?.contains("reset failed") == true, "\(result.error ?? "")")
        #expect(result.resets == 0)
        #expect(afterFailure.load(ordering: .relaxed) == 0)
        #expect(vm.state == .error)
    }

    @Test("three vCPUs meet at the reset; a host reset of a paused VM happens on resume")
    func threeVCPUsAndPausedHostReset() throws {
        let spin = ScriptedExit.portOut(port: 0x80, size: 1, values: [1])
        let vm = try scripted([[spin], [spin], [spin]], repeats: true, policy: .restart)
        try vm.start(handler: NoExitHandler())
        try vm.pause()
        try vm.reset()
        #expect(vm.resets == 0)                                     // not while paused
        try vm.resume()
        let deadline = ContinuousClock.now + .seconds(10)
        while vm.resets < 1, ContinuousClock.now < deadline {}
        try vm.reset()
        while vm.resets < 2, ContinuousClock.now < deadline {}
        vm.stop()
        let result = vm.wait()
        #expect(result.resets == 2)
        #expect(result.reason == .requested)
        #expect(vm.vcpus.allSatisfy { $0.pendingExitCompletions == 2 })
    }

    @Test("Machine.reset() from the host needs the restart policy and a started VM")
    func hostResetPreconditions() throws {
        let stopping = try scripted([[.halt]], policy: .stop)
        #expect(throws: HVError.self) { try stopping.reset() }
        let restarting = try scripted([[.halt]], policy: .restart)
        do {
            try restarting.reset()
            Issue.record("a reset before start was accepted")
        } catch {
            #expect("\(error)".contains("reset"), "\(error)")
            guard case .invalidState(_, .created) = error else { Issue.record("unexpected \(error)"); return }
        }
    }

    @Test("a reset asked for while a pause is being requested happens on resume")
    func pauseThenReset() throws {
        let vm = try scripted([[.portOut(port: 0x80, size: 1, values: [1])], [.portOut(port: 0x81, size: 1, values: [1])]],
                              repeats: true, policy: .restart)
        let armed = Atomic<Bool>(false)
        let handler = ClosureExitHandler { exit, context in
            // Once armed, vCPU 0 asks for one reset.
            if context.vcpuID == 0, armed.compareExchange(expected: true, desired: false, ordering: .relaxed).exchanged {
                return .reset
            }
            return nil
        }
        try vm.start(handler: handler)
        for round in 1...20 {
            try vm.pause()
            armed.store(true, ordering: .relaxed)
            try vm.resume()
            while armed.load(ordering: .relaxed) {}
            try vm.pause()   // often lands between the guest's request and the reset
            try vm.resume()
            while vm.resets < round {}
        }
        vm.stop()
        let result = vm.wait()
        #expect(result.reason == .requested)
        #expect(result.resets == 20)
    }
}

@Suite("Reset in place under KVM", .requiresKVM, .serialized)
struct KVMResetTests {
    static let bootCounter: UInt64 = 0xB000     // RAM outside the image: survives a reset
    static let kernelGSBase: UInt32 = 0xC000_0102
    static let apCounter: UInt64 = 0xA010
    /// Where the AP's real-mode code goes (SIPI vector 0x08).
    static let trampoline: UInt64 = 0x8000

    /// Two vCPUs with `irqchip`, the restart policy, a console and the 0xCF9 reset register.
    static func twoVCPUMachine(_ irqchip: InterruptControllerMode) throws -> Machine<KVMBackend> {
        let vm = try KVMHost.machine(cpus: 2) {
            $0.interruptController = irqchip
            $0.resetPolicy = .restart
        }
        _ = try attachConsole(vm)
        try vm.devices.register(PCIHostBridge(resetControl: ResetControlDevice()),
                                port: PCIHostBridge.basePort, count: PCIHostBridge.portCount)
        return vm
    }

    @Test("a guest resets through the i8042 and then 0xCF9 and boots three times from fresh state")
    func threeBoots() throws {
        let vm = try KVMHost.machine { $0.resetPolicy = .restart }
        _ = try attachConsole(vm)
        try I8042Controller().register(on: vm.devices)
        try vm.devices.register(PCIHostBridge(resetControl: ResetControlDevice()),
                                port: PCIHostBridge.basePort, count: PCIHostBridge.portCount)
        try vm.load(GuestProgram.longMode { a in
            let marker = a.label(), dirty = a.label(), msrKept = a.label()
            let viaI8042 = a.label(), viaCF9 = a.label()
            // Count this boot in RAM the image does not cover, and report it on port 0x77.
            a.mov(Register64.rbx, Immediate(Self.bootCounter))
            a.mov(Register64.rax, .at(Register64.rbx))
            a.inc(Register64.rax)
            a.mov(.at(Register64.rbx), Register64.rax)
            a.out(0x77, Register8.al)
            // The image's own variable was written again...
            a.mov(Register64.rcx, .label(marker))
            a.cmp(Register64.rcx, 0)
            a.jne(dirty)
            a.mov(.qword, .label(marker), 1)
            // ... and the MSR the last boot set is back to its reset value.
            a.mov(Register32.ecx, Immediate(Self.kernelGSBase))
            a.rdmsr()
            a.or(Register32.eax, Register32.edx)
            a.jne(msrKept)
            a.writeMSR(Self.kernelGSBase, low: 0x1234_5000, high: 0xFFFF_8000)
            a.mov(Register64.rbx, Immediate(Self.bootCounter))
            a.mov(Register64.rax, .at(Register64.rbx))
            a.cmp(Register64.rax, 1)
            a.je(viaI8042)
            a.cmp(Register64.rax, 2)
            a.je(viaCF9)
            a.debugExit(code: 3)
            a.bind(viaI8042)
            a.mov(Register8.al, 0xFE)                    // pulse the reset line (i8042 command)
            a.out(0x64, Register8.al)
            a.debugExit(code: 0xE1)
            a.bind(viaCF9)
            a.mov(Register8.al, 0x06)                    // SYS_RST | RST_CPU
            a.mov(Register16.dx, 0xCF9)
            a.out(Register16.dx, Register8.al)
            a.debugExit(code: 0xE2)
            a.bind(dirty)
            a.debugExit(code: 0xEE)
            a.bind(msrKept)
            a.debugExit(code: 0xED)
            a.align(8)
            a.bind(marker)
            a.u64(0)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 3))
        #expect(result.resets == 2)
        #expect(recorder.accesses.map { $0.values[0] } == [1, 2, 3])
    }

    @Test("after a reset the AP waits for INIT-SIPI-SIPI again and the BSP's LAPIC is back to power-on",
          arguments: [InterruptControllerMode.kernel, .split])
    func applicationProcessorRestarts(irqchip: InterruptControllerMode) throws {
        let vm = try Self.twoVCPUMachine(irqchip)
        let trampoline = Self.trampoline
        try vm.load(GuestProgram.longMode { a in
            let apicWasReset = a.label(), wait = a.label(), second = a.label(), delay = a.label(), apStill = a.label()
            a.mov(Register64.rbx, Immediate(Self.bootCounter))
            a.mov(Register64.rax, .at(Register64.rbx))
            a.inc(Register64.rax)
            a.mov(.at(Register64.rbx), Register64.rax)
            a.out(0x77, Register8.al)
            // The AP spun on a counter when the reset came: it must stand still until its SIPI.
            a.mov(Register64.rbx, Immediate(Self.apCounter))
            a.mov(Register32.edx, .at(Register64.rbx))
            a.mov(Register32.ecx, 3000)
            a.bind(delay)
            a.pause()
            a.dec(Register32.ecx)
            a.jne(delay)
            a.mov(Register32.eax, .at(Register64.rbx))
            a.cmp(Register32.eax, Register32.edx)
            a.je(apStill)
            a.debugExit(code: 0xEB)
            a.bind(apStill)
            // SVR is 0xFF at power-on (SDM Vol. 3A, 11.9); the last boot left it at 0x1FF.
            a.mov(Register64.rbx, Immediate(InterruptGuest.lapic + 0xF0))
            a.mov(Register32.eax, .at(Register64.rbx))
            a.cmp(Register32.eax, 0xFF)
            a.je(apicWasReset)
            a.debugExit(code: 0xEA)
            a.bind(apicWasReset)
            a.maskPICs()
            a.enableLocalAPIC()
            a.mov(Register64.rbx, Immediate(InterruptGuest.flag))
            a.mov(.qword, .at(Register64.rbx), 0)
            a.sendIPI(0x4500, to: 1, mode: .xAPIC)                                 // INIT
            a.sendIPI(0x4600 | UInt32(trampoline >> 12), to: 1, mode: .xAPIC)      // SIPI
            a.sendIPI(0x4600 | UInt32(trampoline >> 12), to: 1, mode: .xAPIC)
            a.bind(wait)
            a.pause()
            a.mov(Register64.rbx, Immediate(InterruptGuest.flag))
            a.mov(Register64.rcx, .at(Register64.rbx))
            a.cmp(Register64.rcx, 1)
            a.jne(wait)
            a.mov(Register64.rbx, Immediate(Self.bootCounter))
            a.mov(Register64.rax, .at(Register64.rbx))
            a.cmp(Register64.rax, 2)
            a.je(second)
            a.mov(Register8.al, 0x06)
            a.mov(Register16.dx, 0xCF9)
            a.out(Register16.dx, Register8.al)
            a.debugExit(code: 0xE2)
            a.bind(second)
            a.debugExit(code: 2)
        })
        // The AP's real-mode code at 0x8000 (written once; RAM keeps it across the reset): it
        // reports, sets the flag, then spins incrementing a counter.
        let ap = try GuestProgram.realMode(loadAddress: trampoline) { a in
            let spin = a.label()
            a.cli()
            a.mov(Register8.al, 0xA9)
            a.out(0x78, Register8.al)
            a.mov(.byte, .absolute(InterruptGuest.flag), 1)
            a.mov(Register32.eax, 0)
            a.bind(spin)
            a.inc(Register32.eax)
            a.mov(.absolute(Self.apCounter), Register32.eax)
            a.jmp(spin)
        }
        for chunk in try ap.image(memorySize: 1 << 20).chunks where chunk.name == "program" {
            try vm.memory.write(bytes: chunk.bytes, at: chunk.address)
        }
        let recorder = TrafficRecorder(ports: 0x77...0x78)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 2))
        #expect(result.resets == 1)
        #expect(recorder.accesses.map { "\($0.vcpu):\($0.port):\($0.values[0])" }
            == ["0:119:1", "1:120:169", "0:119:2", "1:120:169"])
    }

    @Test("Machine.reset() from the host restarts a spinning guest in place")
    func hostReset() throws {
        let vm = try KVMHost.machine { $0.resetPolicy = .restart }
        _ = try attachConsole(vm)
        try vm.load(GuestProgram.longMode { a in
            let spin = a.label()
            a.mov(Register64.rbx, Immediate(Self.bootCounter))
            a.mov(Register64.rax, .at(Register64.rbx))
            a.inc(Register64.rax)
            a.mov(.at(Register64.rbx), Register64.rax)
            a.out(0x77, Register8.al)
            a.bind(spin)
            a.pause()
            a.jmp(spin)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        try vm.start(handler: recorder)
        func waitFor(_ condition: () -> Bool) {
            let deadline = ContinuousClock.now + .seconds(20)
            while !condition(), ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.005) }
        }
        waitFor { recorder.accesses.count == 1 }
        try vm.reset()
        waitFor { recorder.accesses.count == 2 }
        vm.stop()
        let result = vm.wait()
        #expect(result.reason == .requested)
        #expect(result.resets == 1)
        #expect(recorder.accesses.map { $0.values[0] } == [1, 2])
    }

    @Test("stress: a 2-vCPU split-irqchip guest resets over and over while the host pauses and resumes it")
    func resetStorm() throws {
        let vm = try Self.twoVCPUMachine(.split)
        let trampoline = Self.trampoline
        try vm.load(GuestProgram.longMode { a in
            let delay = a.label()
            a.enableLocalAPIC()
            a.sendIPI(0x4500, to: 1, mode: .xAPIC)
            a.sendIPI(0x4600 | UInt32(trampoline >> 12), to: 1, mode: .xAPIC)
            a.mov(Register32.ecx, 200)                     // let the AP run a little
            a.bind(delay)
            a.pause()
            a.dec(Register32.ecx)
            a.jne(delay)
            a.mov(Register8.al, 0x06)
            a.mov(Register16.dx, 0xCF9)
            a.out(Register16.dx, Register8.al)
            a.debugExit(code: 0xE2)
        })
        let ap = try GuestProgram.realMode(loadAddress: trampoline) { a in
            let spin = a.label()
            a.cli()
            a.bind(spin)
            a.out(0x78, Register8.al)                      // an exit on every lap
            a.jmp(spin)
        }
        for chunk in try ap.image(memorySize: 1 << 20).chunks where chunk.name == "program" {
            try vm.memory.write(bytes: chunk.bytes, at: chunk.address)
        }
        try vm.start(handler: NoExitHandler())
        let deadline = ContinuousClock.now + .seconds(25)
        var pauses = 0
        while vm.resets < 200 || pauses < 100, ContinuousClock.now < deadline, vm.state != .stopped {
            try vm.pause()
            pauses += 1
            try vm.resume()
            Thread.sleep(forTimeInterval: 0.001)
        }
        vm.stop()
        let result = vm.wait()
        #expect(result.reason == .requested, "\(result.reason) \(result.error ?? "")")
        #expect(result.resets >= 200)
        #expect(pauses >= 100)
    }
}
