// The PC keyboard controller (Intel 8042) as far as a guest's probe and its reset path need it:
// status and command at port 0x64, data at port 0x60, command 0xFE pulses the CPU reset line.
// Commands and bits follow the IBM PC AT Technical Reference ("Keyboard Controller") and the
// OSDev "8042 PS/2 Controller" summary; where they leave a choice, QEMU's hw/input/pckbd.c.
import Synchronization

/// An 8042 keyboard controller with no keyboard input and no mouse; its job is to answer a
/// probing driver (Linux i8042, SeaBIOS) and to reset the machine.
///
/// Attach with `register(on:)`, which places `dataPort` at 0x60 and `commandPort` at 0x64.
///
/// Status (read 0x64): bit 0 output buffer full, bit 1 input buffer full (always 0: commands
/// complete at once), bit 2 system flag (set by the self-test 0xAA or the command byte),
/// bit 3 last write was a command, bit 4 keyboard not inhibited, bit 5 aux data.
///
/// Commands (write 0x64): 0x20 read / 0x60 write the command byte; 0xA7/0xA8 disable/enable
/// aux; 0xA9 aux test (0x00); 0xAA self-test (0x55); 0xAB keyboard test (0x00); 0xAD/0xAE
/// disable/enable keyboard; 0xC0 input port (0x00); 0xD0/0xD1 read/write output port (a write
/// with bit 0 clear resets); 0xD2/0xD3 echo the next data byte as keyboard/aux data; 0xD4
/// send to the aux device (absent: dropped); 0xDD/0xDF A20 off/on; 0xF0-0xFF pulse output
/// lines, bit 0 clear pulses reset (0xFE). A reset returns `ExitAction.reset`.
///
/// Data written to 0x60 with no command pending goes to the keyboard, which answers 0xFA
/// (ACK); 0xFF (reset) adds 0xAA (self-test passed), 0xF2 (identify) adds 0xAB 0x83, 0xEE
/// (echo) answers 0xEE. Reading 0x60 takes the next byte (the last one again when empty).
/// No interrupts are raised. Safe to use from several threads.
public final class I8042Controller: Sendable {
    public static let dataPortAddress: IOPort = 0x60
    public static let commandPortAddress: IOPort = 0x64

    /// Status register bits.
    public enum Status {
        public static let outputFull: UInt8 = 1 << 0
        public static let inputFull: UInt8 = 1 << 1
        public static let systemFlag: UInt8 = 1 << 2
        public static let command: UInt8 = 1 << 3
        public static let unlocked: UInt8 = 1 << 4
        public static let auxData: UInt8 = 1 << 5
    }

    /// Port 0x60: data.
    public let dataPort: Port
    /// Port 0x64: status (read) and command (write).
    public let commandPort: Port
    private let core = Core()

    public init(name: String = "i8042") {
        dataPort = Port(name: "\(name)-data", role: .data, core: core)
        commandPort = Port(name: "\(name)-command", role: .command, core: core)
    }

    /// Places the data port at 0x60 and the command port at 0x64.
    public func register(on bus: DeviceBus) throws(DeviceBusError) {
        try bus.register(dataPort, port: Self.dataPortAddress, count: 1)
        try bus.register(commandPort, port: Self.commandPortAddress, count: 1)
    }

    /// The output port (command 0xD0): bit 0 reset line (1 = not asserted), bit 1 A20 gate.
    public var outputPort: UInt8 { core.state.withLock { $0.outputPort } }

    /// One of the controller's two ports.
    public final class Port: PortIODevice, ResettableDevice, Sendable {
        enum Role { case data, command }
        public let name: String
        let role: Role
        fileprivate let core: Core

        fileprivate init(name: String, role: Role, core: Core) {
            self.name = name
            self.role = role
            self.core = core
        }

        public func portRead(offset: UInt16, size: Int) -> UInt32 {
            UInt32(core.state.withLock { role == .data ? $0.readData() : $0.status })
        }

        public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
            let byte = UInt8(truncatingIfNeeded: value)
            let reset = core.state.withLock { role == .data ? $0.writeData(byte) : $0.writeCommand(byte) }
            return reset ? .reset : .resume
        }

        /// Both ports share one controller: resetting either puts the command byte, output
        /// port and queue back to power-on values.
        public func reset() {
            core.state.withLock { $0 = State() }
        }
    }
}

/// The state both ports share.
private final class Core: Sendable {
    let state = Mutex(State())
}

private struct State {
    /// QEMU's reset state: keyboard and aux interrupts enabled in the command byte.
    var commandByte: UInt8 = 0x03
    var statusFlags: UInt8 = I8042Controller.Status.unlocked
    var outputPort: UInt8 = 0x03
    /// Bytes waiting for the guest: a fixed ring, as QEMU's PS/2 queue (16 entries, newest
    /// dropped when full), so a guest that writes commands and never reads holds a bounded
    /// amount of host memory. Each entry is the byte, with bit 8 set for aux data.
    var queue = OutputQueue()
    var lastRead: UInt8 = 0
    /// The command waiting for its data byte (0x60, 0xD1, 0xD2, 0xD3, 0xD4).
    var pending: UInt8?

    var status: UInt8 {
        var status = statusFlags
        if let first = queue.first {
            status |= I8042Controller.Status.outputFull
            if first.aux { status |= I8042Controller.Status.auxData }
        }
        return status
    }

    mutating func readData() -> UInt8 {
        guard let first = queue.removeFirst() else { return lastRead }
        lastRead = first.byte
        return lastRead
    }

    mutating func output(_ byte: UInt8, aux: Bool = false) { queue.append(byte, aux: aux) }

    /// Returns true when the command resets the machine.
    mutating func writeCommand(_ command: UInt8) -> Bool {
        statusFlags |= I8042Controller.Status.command
        pending = nil
        switch command {
        case 0x20: output(commandByte)
        case 0x60, 0xD1, 0xD2, 0xD3, 0xD4: pending = command
        case 0xA7: commandByte |= 0x20
        case 0xA8: commandByte &= ~0x20
        case 0xA9, 0xAB: output(0x00)
        case 0xAA:
            statusFlags |= I8042Controller.Status.systemFlag
            output(0x55)
        case 0xAD: commandByte |= 0x10
        case 0xAE: commandByte &= ~0x10
        case 0xC0: output(0x00)
        case 0xD0: output(outputPort)
        case 0xDD: outputPort &= ~0x02
        case 0xDF: outputPort |= 0x02
        case 0xF0...0xFF: return command & 0x01 == 0  // bits 0-3 low pulse their lines; bit 0 is reset
        default: break
        }
        return false
    }

    /// Returns true when the byte (an output-port write with bit 0 clear) resets the machine.
    mutating func writeData(_ byte: UInt8) -> Bool {
        statusFlags &= ~I8042Controller.Status.command
        let command = pending
        pending = nil
        switch command {
        case 0x60:
            commandByte = byte
            // Command byte bit 2 is the system flag the status register reports.
            statusFlags = statusFlags & ~I8042Controller.Status.systemFlag | (byte & I8042Controller.Status.systemFlag)
        case 0xD1:
            outputPort = byte
            return byte & 0x01 == 0
        case 0xD2: output(byte)
        case 0xD3: output(byte, aux: true)
        case 0xD4: break  // no aux device
        default: keyboard(byte)
        }
        return false
    }

    /// A keyboard's answers to host commands (IBM PS/2 keyboard command set).
    private mutating func keyboard(_ byte: UInt8) {
        switch byte {
        case 0xEE: output(0xEE)
        case 0xF2:
            output(0xFA)
            output(0xAB)
            output(0x83)
        case 0xFF:
            output(0xFA)
            output(0xAA)
        default: output(0xFA)
        }
    }
}

/// A ring of at most `capacity` output bytes; appending to a full ring drops the new byte.
struct OutputQueue {
    static let capacity = 16
    private var entries: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)  // 16 x UInt16, no heap
    private var head = 0
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }
    var first: (byte: UInt8, aux: Bool)? { isEmpty ? nil : entry(head) }

    mutating func append(_ byte: UInt8, aux: Bool) {
        guard count < Self.capacity else { return }
        let index = (head + count) % Self.capacity
        withUnsafeMutableBytes(of: &entries) { $0.storeBytes(of: UInt16(byte) | (aux ? 0x100 : 0), toByteOffset: 2 * index, as: UInt16.self) }
        count += 1
    }

    mutating func removeFirst() -> (byte: UInt8, aux: Bool)? {
        guard let value = first else { return nil }
        head = (head + 1) % Self.capacity
        count -= 1
        return value
    }

    private func entry(_ index: Int) -> (byte: UInt8, aux: Bool) {
        let raw = withUnsafeBytes(of: entries) { $0.load(fromByteOffset: 2 * index, as: UInt16.self) }
        return (UInt8(truncatingIfNeeded: raw), raw & 0x100 != 0)
    }
}

// MARK: Snapshot

extension I8042Controller.Port: SnapshotDevice {
    /// The controller's state, saved once: the data port carries it and the command port, which
    /// shares it, saves nothing (both are on the bus, each asked for its state).
    public func saveState(to encoder: inout StateEncoder) {
        guard role == .data else { return }
        core.state.withLock { $0 }.save(to: &encoder)
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        guard role == .data else { return }
        let restored = try State(from: &decoder)
        core.state.withLock { $0 = restored }
    }
}

extension State {
    /// The command byte, status flags, output port (A20 and reset lines), the pending command,
    /// the last byte read and the queued output bytes in order (QEMU's `vmstate_kbd` and the
    /// PS/2 queue it carries).
    func save(to encoder: inout StateEncoder) {
        encoder.write(commandByte)
        encoder.write(statusFlags)
        encoder.write(outputPort)
        encoder.write(pending != nil)
        encoder.write(pending ?? 0)
        encoder.write(lastRead)
        var queue = self.queue
        encoder.write(UInt8(queue.count))
        while let entry = queue.removeFirst() {
            encoder.write(entry.byte)
            encoder.write(entry.aux)
        }
    }

    init(from decoder: inout StateDecoder) throws(StateDecodingError) {
        self.init()
        commandByte = try decoder.read(UInt8.self, "i8042 command byte")
        statusFlags = try decoder.read(UInt8.self, "i8042 status")
        outputPort = try decoder.read(UInt8.self, "i8042 output port")
        let hasPending = try decoder.read(Bool.self, "i8042 pending command present")
        let pendingCommand = try decoder.read(UInt8.self, "i8042 pending command")
        pending = hasPending ? pendingCommand : nil
        lastRead = try decoder.read(UInt8.self, "i8042 last read")
        let count = try decoder.read(UInt8.self, "i8042 queue count", below: UInt8(OutputQueue.capacity + 1))
        for _ in 0..<count {
            let byte = try decoder.read(UInt8.self, "i8042 queue byte")
            queue.append(byte, aux: try decoder.read(Bool.self, "i8042 queue aux"))
        }
    }
}
