// A 16550A UART (the PC's COM ports): enough of the register model for a polling driver, plus
// the interrupt identification logic an interrupt-driven driver needs once an interrupt
// controller is attached. Register semantics follow the TI PC16550D data sheet ("PC16550D
// Universal Asynchronous Receiver/Transmitter with FIFOs": its register summary and its
// interrupt control table). Where the data sheet leaves a choice, this model does what QEMU's
// hw/char/serial.c does, which is what Linux's drivers/tty/serial/8250/8250_port.c and other
// guests are tested against.
import Synchronization

/// A 16550A UART at 8 consecutive ports (register it at `IOPort.com1` with `portCount` ports).
///
/// Registers, by offset from the base port (DLAB is bit 7 of LCR):
///
/// | Offset | Read                         | Write                        |
/// |--------|------------------------------|------------------------------|
/// | 0      | RBR (DLAB=0) / DLL (DLAB=1)  | THR (DLAB=0) / DLL (DLAB=1)  |
/// | 1      | IER (DLAB=0) / DLM (DLAB=1)  | IER (DLAB=0) / DLM (DLAB=1)  |
/// | 2      | IIR                          | FCR                          |
/// | 3      | LCR                          | LCR                          |
/// | 4      | MCR                          | MCR                          |
/// | 5      | LSR (clears overrun)         | ignored                      |
/// | 6      | MSR (clears the delta bits)  | ignored                      |
/// | 7      | SCR                          | SCR                          |
///
/// Offsets past 7 read 0xFF and ignore writes. Accesses of 2 or 4 bytes act as a byte access
/// of their low byte: a write uses the low byte of the value, a read returns the register in
/// the low byte with the upper bytes zero (the model does not split a wide access across
/// neighbouring registers the way an ISA bus would).
///
/// Transmission is instantaneous: THR and the shift register are always empty (LSR THRE and
/// TEMT always set), so a polling driver never waits. Transmitted bytes go to `output`; in
/// loopback mode (MCR bit 4) they go to the receive FIFO instead and the modem status lines
/// follow MCR. There is no clock: received data below the FIFO trigger level is reported as a
/// character timeout (IIR 0x0C) at once, as if four character times had passed.
///
/// Safe to use from several threads: the register state sits behind a lock.
public final class UART16550: PortIODevice, Sendable {
    /// How many consecutive ports the UART occupies.
    public static let portCount = 8

    /// The baud rate at divisor 1: the PC's 1.8432 MHz crystal divided by 16 (data sheet,
    /// "Programmable Baud Generator").
    public static let baseBaudRate = 115_200

    public let name: String
    /// Where transmitted bytes go.
    public let output: SerialOutput
    private let state: Mutex<State>

    /// A UART in its power-on state (data sheet, "UART Reset Configuration") whose
    /// transmitted bytes go to `output`.
    public init(name: String = "uart16550", output: SerialOutput = .standardOutput) {
        self.name = name
        self.output = output
        self.state = Mutex(State())
    }

    deinit { flush() }

    // MARK: Guest side

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        guard offset < Self.portCount else { return 0xFF }
        return UInt32(withState { $0.read(UInt8(offset)) })
    }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        guard offset < Self.portCount else { return .resume }
        let transmitted = withState { $0.write(UInt8(offset), UInt8(truncatingIfNeeded: value)) }
        // Outside the lock, so an output callback may feed input back into this UART.
        if let byte = transmitted { output.write(byte) }
        return .resume
    }

    // MARK: Host side

    /// Feeds `bytes` to the receiver, as if they had arrived on the serial line. Bytes that
    /// find the receive FIFO full are lost and set the overrun error (LSR bit 1): with FIFOs
    /// enabled the new byte is dropped, without them it replaces the unread one (data sheet,
    /// LSR bit 1). In loopback mode the serial input is disconnected and `bytes` are dropped.
    public func receive(_ bytes: some Sequence<UInt8>) {
        let received: Void? = bytes.withContiguousStorageIfAvailable { receive(buffer: $0) }
        if received == nil { Array(bytes).withUnsafeBufferPointer { receive(buffer: $0) } }
    }

    private func receive(buffer: UnsafeBufferPointer<UInt8>) {
        withState { state in
            guard !state.loopback else { return }
            for byte in buffer { state.pushReceived(byte) }
        }
    }

    /// How many bytes `receive` can take now without an overrun; a host feeding interactive
    /// input waits for space, the way QEMU's `serial_can_receive` paces its character device.
    public var receiveSpace: Int {
        state.withLock { $0.loopback ? 0 : $0.receiveCapacity - $0.rxCount }
    }

    /// Writes any bytes `output` still buffers.
    public func flush() { output.flush() }

    /// Puts the registers back in their power-on state (a machine reset). The output, the
    /// interrupt callback and `transmittedByteCount` are kept.
    public func reset() {
        withState { state in
            let callback = state.onInterruptChange
            let level = state.interruptLevel
            let transmitted = state.transmittedByteCount
            state = State()
            state.onInterruptChange = callback
            state.interruptLevel = level
            state.transmittedByteCount = transmitted
        }
    }

    /// Bytes sent to `output` so far (bytes written in loopback mode are not counted).
    public var transmittedByteCount: Int { state.withLock { $0.transmittedByteCount } }

    /// The divisor latch (DLM:DLL). 12 (9600 baud) at power-on, as in QEMU.
    public var divisor: UInt16 { state.withLock { $0.divisor } }

    /// `baseBaudRate / divisor`, or nil while the divisor is 0 (no clock reaches the line).
    public var baudRate: Int? {
        let divisor = self.divisor
        return divisor == 0 ? nil : Self.baseBaudRate / Int(divisor)
    }

    // MARK: Interrupts

    /// Whether the UART requests an interrupt: IIR bit 0 is clear. MCR OUT2, which gates the
    /// IRQ line on a PC board, is not applied here (as in QEMU); an interrupt controller that
    /// wants the PC wiring masks the line itself.
    public var interruptPending: Bool { state.withLock { $0.identification != Identification.none } }

    /// Called with the new level each time `interruptPending` changes, for an interrupt
    /// controller to raise or lower the UART's IRQ line (IRQ 4 for COM1). It runs on the thread
    /// whose access changed the level, while the UART's lock is held, so levels arrive in order;
    /// it must not call back into this UART. Setting it does not report the current level: read
    /// `interruptPending` after attaching.
    public var onInterruptChange: (@Sendable (Bool) -> Void)? {
        get { state.withLock { $0.onInterruptChange } }
        set { state.withLock { $0.onInterruptChange = newValue } }
    }

    /// Runs `body` on the locked state, then reports an interrupt level change.
    private func withState<Result>(_ body: (inout State) -> Result) -> Result {
        state.withLock { state in
            let result = body(&state)
            let level = state.identification != Identification.none
            if level != state.interruptLevel {
                state.interruptLevel = level
                state.onInterruptChange?(level)
            }
            return result
        }
    }
}

// MARK: - Register model

/// Register bits (data sheet, register summary).
private enum IER {
    static let receivedDataAvailable: UInt8 = 1 << 0  // ERBFI
    static let transmitterEmpty: UInt8 = 1 << 1  // ETBEI
    static let receiverLineStatus: UInt8 = 1 << 2  // ELSI
    static let modemStatus: UInt8 = 1 << 3  // EDSSI
}

/// IIR bits 0-3 (data sheet, "Interrupt Control Functions" table), highest priority first.
private enum Identification {
    static let receiverLineStatus: UInt8 = 0x06
    static let receivedDataAvailable: UInt8 = 0x04
    static let characterTimeout: UInt8 = 0x0C
    static let transmitterEmpty: UInt8 = 0x02
    static let modemStatus: UInt8 = 0x00
    static let none: UInt8 = 0x01
    /// IIR bits 6-7: set while FCR bit 0 enables the FIFOs.
    static let fifosEnabled: UInt8 = 0xC0
}

private enum LSR {
    static let dataReady: UInt8 = 1 << 0
    static let overrunError: UInt8 = 1 << 1
    static let transmitterHoldingEmpty: UInt8 = 1 << 5  // THRE
    static let transmitterEmpty: UInt8 = 1 << 6  // TEMT
}

private enum MCR {
    static let writable: UInt8 = 0x1F
    static let loopback: UInt8 = 1 << 4
}

private enum MSR {
    static let deltaCTS: UInt8 = 1 << 0
    static let deltaDSR: UInt8 = 1 << 1
    static let trailingEdgeRI: UInt8 = 1 << 2
    static let deltaDCD: UInt8 = 1 << 3
    static let cts: UInt8 = 1 << 4
    static let dsr: UInt8 = 1 << 5
    static let ri: UInt8 = 1 << 6
    static let dcd: UInt8 = 1 << 7
    /// Lines seen outside loopback: a peer that is present and ready (QEMU `serial_reset`).
    static let connectedLines: UInt8 = dcd | dsr | cts
}

private struct State {
    static let fifoSize = 16

    var ier: UInt8 = 0
    var lcr: UInt8 = 0
    var mcr: UInt8 = 0
    var scr: UInt8 = 0
    var divisor: UInt16 = 12
    /// LSR error bits latched until LSR is read; only overrun occurs (no parity or framing).
    var lineErrors: UInt8 = 0
    var modemLines = MSR.connectedLines
    var modemDeltas: UInt8 = 0
    var fifosEnabled = false
    var triggerLevel = 1
    /// The THRE interrupt: raised when THR empties or ETBEI is enabled; cleared by reading IIR
    /// while it is the identified source and by writing THR ("Interrupt Control Functions").
    var transmitterInterrupt = false
    var rxBytes = [UInt8](repeating: 0, count: fifoSize)
    var rxHead = 0
    var rxCount = 0
    var transmittedByteCount = 0
    var interruptLevel = false
    var onInterruptChange: (@Sendable (Bool) -> Void)?

    var dlab: Bool { lcr & 0x80 != 0 }
    var loopback: Bool { mcr & MCR.loopback != 0 }
    /// Without FIFOs the receiver holds one character (RBR).
    var receiveCapacity: Int { fifosEnabled ? Self.fifoSize : 1 }

    /// IIR bits 0-3 for the highest-priority enabled condition.
    var identification: UInt8 {
        if ier & IER.receiverLineStatus != 0 && lineErrors != 0 { return Identification.receiverLineStatus }
        if ier & IER.receivedDataAvailable != 0 && rxCount > 0 {
            return fifosEnabled && rxCount < triggerLevel
                ? Identification.characterTimeout : Identification.receivedDataAvailable
        }
        if ier & IER.transmitterEmpty != 0 && transmitterInterrupt { return Identification.transmitterEmpty }
        if ier & IER.modemStatus != 0 && modemDeltas != 0 { return Identification.modemStatus }
        return Identification.none
    }

    mutating func read(_ offset: UInt8) -> UInt8 {
        switch offset {
        case 0: return dlab ? UInt8(truncatingIfNeeded: divisor) : popReceived()
        case 1: return dlab ? UInt8(truncatingIfNeeded: divisor >> 8) : ier
        case 2:
            let id = identification
            // Reading IIR while THRE is the source clears that interrupt (data sheet, "Interrupt Control Functions").
            if id == Identification.transmitterEmpty { transmitterInterrupt = false }
            return id | (fifosEnabled ? Identification.fifosEnabled : 0)
        case 3: return lcr
        case 4: return mcr
        case 5:
            let lsr = (rxCount > 0 ? LSR.dataReady : 0) | lineErrors
                | LSR.transmitterHoldingEmpty | LSR.transmitterEmpty
            lineErrors = 0
            return lsr
        case 6:
            let msr = modemLines | modemDeltas
            modemDeltas = 0
            return msr
        default: return scr
        }
    }

    /// Applies a register write; returns the byte to send to the host, if any.
    mutating func write(_ offset: UInt8, _ value: UInt8) -> UInt8? {
        switch offset {
        case 0:
            if dlab {
                divisor = divisor & 0xFF00 | UInt16(value)
            } else {
                return transmit(value)
            }
        case 1:
            if dlab {
                divisor = divisor & 0x00FF | UInt16(value) << 8
            } else {
                writeIER(value & 0x0F)
            }
        case 2: writeFCR(value)
        case 3: lcr = value
        case 4:
            mcr = value & MCR.writable
            updateModemLines()
        case 5, 6: break  // LSR and MSR are read-only here (LSR's factory-test writes are not modelled)
        default: scr = value
        }
        return nil
    }

    private mutating func transmit(_ byte: UInt8) -> UInt8? {
        // Writing THR clears the THRE interrupt; the instantaneous transmission empties THR
        // again at once, which raises it again (QEMU `serial_xmit` sets `thr_ipending`).
        transmitterInterrupt = true
        if loopback {
            pushReceived(byte)
            return nil
        }
        transmittedByteCount += 1
        return byte
    }

    private mutating func writeIER(_ value: UInt8) {
        let changed = ier ^ value
        ier = value
        // Enabling ETBEI while THR is empty (always, here) raises THRE even if an IIR read had
        // cleared it; disabling it drops it (QEMU serial_ioport_write, which Windows relies on).
        if changed & IER.transmitterEmpty != 0 {
            transmitterInterrupt = value & IER.transmitterEmpty != 0
        }
    }

    private mutating func writeFCR(_ value: UInt8) {
        let enable = value & 0x01 != 0
        // Changing FCR bit 0 resets both FIFOs (data sheet, FCR bit 0; QEMU does so on either edge).
        if enable != fifosEnabled {
            fifosEnabled = enable
            clearReceived()
        }
        // "FCR0 must be 1 when other FCR bits are written to or they will not be programmed."
        guard enable else { return }
        if value & 0x02 != 0 { clearReceived() }
        // Bit 2 clears the transmit FIFO, always empty here; bit 3 (DMA mode) has no effect.
        switch value >> 6 {
        case 0: triggerLevel = 1
        case 1: triggerLevel = 4
        case 2: triggerLevel = 8
        default: triggerLevel = 14
        }
    }

    /// Recomputes the modem status lines and latches their changes in the delta bits
    /// (data sheet, MSR). In loopback, CTS=RTS, DSR=DTR, RI=OUT1 and DCD=OUT2.
    private mutating func updateModemLines() {
        let lines: UInt8
        if loopback {
            lines = (mcr & 0x01) << 5 | (mcr & 0x02) << 3 | (mcr & 0x0C) << 4
        } else {
            lines = MSR.connectedLines
        }
        let changed = modemLines ^ lines
        if changed & MSR.cts != 0 { modemDeltas |= MSR.deltaCTS }
        if changed & MSR.dsr != 0 { modemDeltas |= MSR.deltaDSR }
        if changed & MSR.ri != 0 && lines & MSR.ri == 0 { modemDeltas |= MSR.trailingEdgeRI }
        if changed & MSR.dcd != 0 { modemDeltas |= MSR.deltaDCD }
        modemLines = lines
    }

    mutating func pushReceived(_ byte: UInt8) {
        guard rxCount < receiveCapacity else {
            lineErrors |= LSR.overrunError
            // Without FIFOs the new character overwrites RBR; with them it never enters the FIFO.
            if !fifosEnabled { rxBytes[rxHead] = byte }
            return
        }
        rxBytes[(rxHead + rxCount) % Self.fifoSize] = byte
        rxCount += 1
    }

    private mutating func popReceived() -> UInt8 {
        guard rxCount > 0 else { return 0 }
        let byte = rxBytes[rxHead]
        rxHead = (rxHead + 1) % Self.fifoSize
        rxCount -= 1
        return byte
    }

    private mutating func clearReceived() {
        rxHead = 0
        rxCount = 0
    }
}

extension UART16550: ResettableDevice {}

// MARK: Snapshot

extension UART16550: SnapshotDevice {
    /// Every register, the latched line errors and modem deltas, the receive FIFO with its
    /// indices and the pending THRE interrupt: what QEMU's `vmstate_serial` holds. The output
    /// and the interrupt callback belong to the process and are not saved; what the guest
    /// already sent is written out first (the output buffers up to a newline), so that a
    /// restored guest's console goes on exactly where this one's ends, even if this process is
    /// then killed.
    public func saveState(to encoder: inout StateEncoder) {
        output.flush()
        let saved = state.withLock { $0 }
        encoder.write(saved.ier)
        encoder.write(saved.lcr)
        encoder.write(saved.mcr)
        encoder.write(saved.scr)
        encoder.write(saved.divisor)
        encoder.write(saved.lineErrors)
        encoder.write(saved.modemLines)
        encoder.write(saved.modemDeltas)
        encoder.write(saved.fifosEnabled)
        encoder.write(UInt8(saved.triggerLevel))
        encoder.write(saved.transmitterInterrupt)
        encoder.write(bytes: saved.rxBytes)
        encoder.write(UInt8(saved.rxHead))
        encoder.write(UInt8(saved.rxCount))
        encoder.write(UInt64(saved.transmittedByteCount))
        encoder.write(saved.interruptLevel)
    }

    /// Puts the registers and FIFO back, then reports the restored interrupt level to
    /// `onInterruptChange` (under the lock, as a register access does), so the line this
    /// process wired up agrees with the device even when the level is what it already was.
    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        var restored = State()
        restored.ier = try decoder.read(UInt8.self, "uart16550 ier")
        restored.lcr = try decoder.read(UInt8.self, "uart16550 lcr")
        restored.mcr = try decoder.read(UInt8.self, "uart16550 mcr")
        restored.scr = try decoder.read(UInt8.self, "uart16550 scr")
        restored.divisor = try decoder.read(UInt16.self, "uart16550 divisor")
        restored.lineErrors = try decoder.read(UInt8.self, "uart16550 line errors")
        restored.modemLines = try decoder.read(UInt8.self, "uart16550 modem lines")
        restored.modemDeltas = try decoder.read(UInt8.self, "uart16550 modem deltas")
        restored.fifosEnabled = try decoder.read(Bool.self, "uart16550 fifos enabled")
        let trigger = try decoder.read(UInt8.self, "uart16550 trigger level")
        // FCR bits 7-6 select one of four levels (data sheet, FCR); anything else is not a 16550's.
        guard [1, 4, 8, 14].contains(trigger) else {
            throw StateDecodingError(field: "uart16550 trigger level", problem: "\(trigger) is not 1, 4, 8 or 14")
        }
        restored.triggerLevel = Int(trigger)
        restored.transmitterInterrupt = try decoder.read(Bool.self, "uart16550 transmitter interrupt")
        let bytes = try decoder.readBytes("uart16550 rx bytes", atMost: State.fifoSize)
        guard bytes.count == State.fifoSize else {
            throw StateDecodingError(field: "uart16550 rx bytes", problem: "\(bytes.count) bytes; the FIFO holds \(State.fifoSize)")
        }
        restored.rxBytes = bytes
        restored.rxHead = Int(try decoder.read(UInt8.self, "uart16550 rx head", below: UInt8(State.fifoSize)))
        restored.rxCount = Int(try decoder.read(UInt8.self, "uart16550 rx count", below: UInt8(State.fifoSize + 1)))
        restored.transmittedByteCount = Int(try decoder.read(UInt64.self, "uart16550 transmitted byte count", below: UInt64(Int.max)))
        restored.interruptLevel = try decoder.read(Bool.self, "uart16550 interrupt level")
        state.withLock { state in
            restored.onInterruptChange = state.onInterruptChange
            state = restored
            state.onInterruptChange?(state.interruptLevel)
        }
    }
}
