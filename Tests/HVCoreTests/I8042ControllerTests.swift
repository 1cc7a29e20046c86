// The 8042's probe answers and reset line, and the 0xCF9 reset control register, without a VM.
import HVCore
import Testing

@Suite("i8042 and reset control")
struct I8042ControllerTests {
    func command(_ controller: I8042Controller, _ byte: UInt8) -> ExitAction {
        controller.commandPort.portWrite(offset: 0, size: 1, value: UInt32(byte))
    }

    func status(_ controller: I8042Controller) -> UInt8 { UInt8(controller.commandPort.portRead(offset: 0, size: 1)) }
    func data(_ controller: I8042Controller) -> UInt8 { UInt8(controller.dataPort.portRead(offset: 0, size: 1)) }

    @Test("a guest that writes keyboard commands and never reads fills a 16-byte queue, no more; reads drain it in order")
    func outputQueueIsBounded() {
        let controller = I8042Controller()
        for _ in 0..<100_000 { _ = controller.dataPort.portWrite(offset: 0, size: 1, value: 0xEE) }  // echo: answers 0xEE
        _ = command(controller, 0xD3)  // aux loopback: the newest byte is dropped while full
        _ = controller.dataPort.portWrite(offset: 0, size: 1, value: 0x42)
        var drained: [UInt8] = []
        while status(controller) & 0x01 != 0, drained.count < 1000 { drained.append(data(controller)) }
        #expect(drained == [UInt8](repeating: 0xEE, count: 16))
        // Room again: the next answer is queued and reads back, with the aux bit for aux data.
        _ = command(controller, 0xD3)
        _ = controller.dataPort.portWrite(offset: 0, size: 1, value: 0x42)
        #expect(status(controller) & 0x21 == 0x21)
        #expect(data(controller) == 0x42)
        #expect(status(controller) & 0x01 == 0)
    }

    @Test("command 0xFE pulses the reset line; other pulse commands reset only with bit 0 clear")
    func resetPulse() {
        let controller = I8042Controller()
        #expect(command(controller, 0xFE) == .reset)
        #expect(command(controller, 0xF0) == .reset)
        #expect(command(controller, 0xFF) == .resume)
        #expect(command(controller, 0xFD) == .resume)
    }

    @Test("writing the output port with bit 0 clear resets; A20 commands change bit 1")
    func outputPort() {
        let controller = I8042Controller()
        #expect(controller.outputPort == 0x03)
        #expect(command(controller, 0xDD) == .resume)
        #expect(controller.outputPort == 0x01)
        #expect(command(controller, 0xD0) == .resume)
        #expect(data(controller) == 0x01)
        #expect(command(controller, 0xD1) == .resume)
        #expect(controller.dataPort.portWrite(offset: 0, size: 1, value: 0x03) == .resume)
        #expect(controller.outputPort == 0x03)
        #expect(command(controller, 0xD1) == .resume)
        #expect(controller.dataPort.portWrite(offset: 0, size: 1, value: 0x02) == .reset)
    }

    @Test("status shows an empty output buffer until a command answers, then the answer reads from 0x60")
    func probe() {
        let controller = I8042Controller()
        #expect(status(controller) & I8042Controller.Status.outputFull == 0)
        #expect(status(controller) & I8042Controller.Status.inputFull == 0)
        #expect(status(controller) & I8042Controller.Status.systemFlag == 0)
        _ = command(controller, 0xAA)
        #expect(status(controller) & (I8042Controller.Status.outputFull | I8042Controller.Status.systemFlag | I8042Controller.Status.command) == 0x0D)
        #expect(data(controller) == 0x55)
        #expect(status(controller) & I8042Controller.Status.outputFull == 0)
        #expect(data(controller) == 0x55)  // an empty buffer repeats the last byte
        _ = command(controller, 0xAB)
        #expect(data(controller) == 0x00)
    }

    @Test("the command byte reads and writes through 0x20 and 0x60, and 0xAD/0xA7 set its disable bits")
    func commandByte() {
        let controller = I8042Controller()
        _ = command(controller, 0x20)
        #expect(data(controller) == 0x03)
        _ = command(controller, 0x60)
        _ = controller.dataPort.portWrite(offset: 0, size: 1, value: 0x44)
        #expect(status(controller) & I8042Controller.Status.systemFlag != 0)
        #expect(status(controller) & I8042Controller.Status.command == 0)
        _ = command(controller, 0xAD)
        _ = command(controller, 0xA7)
        _ = command(controller, 0x20)
        #expect(data(controller) == 0x74)
    }

    @Test("keyboard bytes are acknowledged; 0xD3 echoes aux data with the aux status bit")
    func keyboardAndAux() {
        let controller = I8042Controller()
        _ = controller.dataPort.portWrite(offset: 0, size: 1, value: 0xFF)
        #expect(data(controller) == 0xFA)
        #expect(data(controller) == 0xAA)
        _ = controller.dataPort.portWrite(offset: 0, size: 1, value: 0xF2)
        #expect([data(controller), data(controller), data(controller)] == [0xFA, 0xAB, 0x83])
        _ = command(controller, 0xD3)
        _ = controller.dataPort.portWrite(offset: 0, size: 1, value: 0x5A)
        #expect(status(controller) & I8042Controller.Status.auxData != 0)
        #expect(data(controller) == 0x5A)
        _ = command(controller, 0xD4)
        _ = controller.dataPort.portWrite(offset: 0, size: 1, value: 0xF4)
        #expect(status(controller) & I8042Controller.Status.outputFull == 0)
    }

    @Test("the controller takes ports 0x60 and 0x64 only, leaving 0x61 free")
    func registration() throws {
        let bus = DeviceBus()
        try I8042Controller().register(on: bus)
        try bus.register(ResetControlDevice(), port: 0x61, count: 1)
        #expect(throws: DeviceBusError.self) { try bus.register(ResetControlDevice(), port: 0x64, count: 1) }
    }

    @Test("0xCF9: 0x06 and 0x0E reset, 0x02 only stores, reads return the stored bits")
    func resetControl() {
        let register = ResetControlDevice()
        #expect(register.portWrite(offset: 0, size: 1, value: 0x02) == .resume)
        #expect(register.portRead(offset: 0, size: 1) == 0x02)
        #expect(register.portWrite(offset: 0, size: 1, value: 0x06) == .reset)
        #expect(register.portWrite(offset: 0, size: 1, value: 0x0E) == .reset)
        #expect(register.value == 0x0A)
    }

    @Test("port 0x92: bit 0 going from 0 to 1 resets, A20 (bit 1) is stored and read back, a reset clears only bit 0")
    func systemControlPortA() {
        let port = SystemControlPortA()
        #expect(port.portWrite(offset: 0, size: 1, value: 0x02) == .resume)
        #expect(port.portRead(offset: 0, size: 1) == 0x02)
        #expect(port.portWrite(offset: 0, size: 1, value: 0x03) == .reset)
        #expect(port.portWrite(offset: 0, size: 1, value: 0x03) == .resume, "no new rising edge")
        port.reset()
        #expect(port.value == 0x02)
        #expect(port.portWrite(offset: 0, size: 1, value: 0x03) == .reset)
    }
}

@Suite("i8042 under KVM", .requiresKVM, .serialized)
struct I8042KVMTests {
    @Test("a guest that reads the status and writes 0xFE to port 0x64 stops the VM with StopReason.reset")
    func resetThroughTheKeyboardController() throws {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        try I8042Controller().register(on: vm.devices)
        try vm.load(GuestProgram.longMode { a in
            a.in(Register8.al, 0x64)
            a.out(0x77, Register8.al)
            a.mov(Register8.al, 0xFE)
            a.out(0x64, Register8.al)
            a.debugExit(code: 1)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .reset)
        #expect(recorder.accesses.map { $0.values[0] } == [0x10])  // unlocked, output buffer empty
    }

    @Test("on the PC platform, a guest's write of bit 0 to port 0x92 resets the VM (kvm-unit-tests' init test does this)")
    func resetThroughPort92() throws {
        let vm = try KVMHost.machine { $0.resetPolicy = .stop }
        _ = try attachConsole(vm)
        try vm.attachPCPlatform(acpiTables: false)
        try vm.load(GuestProgram.longMode { a in
            a.in(Register8.al, 0x92)
            a.or(Register8.al, 0x01)
            a.out(0x92, Register8.al)
            a.debugExit(code: 1)
        })
        #expect(try vm.run().reason == .reset)
    }
}
