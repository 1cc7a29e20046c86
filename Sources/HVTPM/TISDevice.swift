// The TIS register model on the device bus, backed by a TPMEngine. Register it at
// `TISInterface.baseAddress` with `TISInterface.windowSize` bytes.
import HVCore
import Synchronization

/// A TPM 2.0 reached through the TIS FIFO interface at 0xFED40000 (five localities).
///
/// ```swift
/// let tpm = try TISDevice(engine: try LibTPMSEngine.open(directory: TPMStateDirectory(path: "vm.tpm")))
/// try machine.devices.register(tpm, address: GuestPhysicalAddress(TISInterface.baseAddress),
///                              length: TISInterface.windowSize)
/// ```
///
/// A command runs synchronously on the vCPU thread whose `tpmGo` write started it, outside the
/// register lock: other vCPUs see `execution` (STS without dataAvail) meanwhile, and their
/// commandCancel reaches the engine. Safe to use from several vCPU threads.
public final class TISDevice: MMIODevice, ResettableDevice, Sendable {
    public let name: String
    public let engine: any TPMEngine
    private let registers: Mutex<Registers>

    struct Registers {
        var model: TISInterface
        var interruptLevel = false
        var onInterruptChange: (@Sendable (Bool) -> Void)?
        /// The SIRQ currently driven (asserted), nil when none.
        var routedLine: UInt8?
        var onRoutedInterruptChange: (@Sendable (_ line: UInt8, _ asserted: Bool) -> Void)?
    }

    /// What firmware leaves of the platform hierarchy at each power-on (`TPMFirmware`), as a
    /// PC's BIOS does at every boot: the initialiser plays firmware's part once, and a platform
    /// reset again after power-cycling the TPM. `.randomAuth` (the default, SeaBIOS's) and
    /// `.disable` (OVMF's) keep a guest from wiping the TPM with the platform's authority;
    /// `.guest` leaves the TPM unstarted and the hierarchy to a guest that plays firmware itself.
    public let platformPolicy: TPMPlatformPolicy

    /// A TIS in front of `engine`, with firmware's part done (`TPMFirmware.prepare`): with any
    /// policy but `.guest` the TPM is started and its platform hierarchy locked before the
    /// initialiser returns, so no guest instruction can ever see it open. Throws what the TPM
    /// answered when it refused.
    public init(name: String = "tpm-tis", engine: any TPMEngine, bufferSize: Int = 4096,
                platformPolicy: TPMPlatformPolicy = .randomAuth) throws(TPMError) {
        self.name = name
        self.engine = engine
        self.platformPolicy = platformPolicy
        registers = Mutex(Registers(model: TISInterface(bufferSize: bufferSize)))
        try TPMFirmware.prepare(engine, policy: platformPolicy)
    }

    /// Called with the new level whenever the TIS interrupt line changes (for an interrupt
    /// controller: the line is `interruptLine`, the SIRQ the guest programmed). Runs under the
    /// device lock; must not call back into the device.
    public var onInterruptChange: (@Sendable (Bool) -> Void)? {
        get { registers.withLock { $0.onInterruptChange } }
        set { registers.withLock { $0.onInterruptChange = newValue } }
    }

    /// Called with the SIRQ number the guest programmed in TPM_INT_VECTOR and the new level
    /// whenever the interrupt is asserted or released, or moves to another vector while asserted
    /// (the old one is released first). `Machine.connect(_:)` turns it into ISA IRQ lines. Runs
    /// under the device lock; must not call back into the device.
    public var onRoutedInterruptChange: (@Sendable (_ line: UInt8, _ asserted: Bool) -> Void)? {
        get { registers.withLock { $0.onRoutedInterruptChange } }
        set { registers.withLock { $0.onRoutedInterruptChange = newValue } }
    }

    /// The command state machine's state (for tests and diagnostics).
    public var state: TISInterface.State { registers.withLock { $0.model.state } }

    public func mmioRead(offset: UInt64, width: Int) -> UInt64 {
        withRegisters { $0.read(offset: offset, width: width) }
    }

    public func mmioWrite(offset: UInt64, width: Int, value: UInt64) -> ExitAction {
        let action = withRegisters { $0.write(offset: offset, width: width, value: value) }
        switch action {
        case .none:
            break
        case .cancel:
            engine.cancelCommand()
        case let .execute(command, locality):
            let response: [UInt8]
            do {
                response = try engine.execute(command, locality: locality)
            } catch {
                // The engine failed (closed, I/O, a full disk): the guest sees a TPM in failure
                // mode, and the host is told why, once per failed command.
                LogCategory.devices.logger.error("TPM command (locality \(locality), \(command.count) bytes) failed in the engine: \(error); the guest gets TPM_RC_FAILURE")
                response = TPMResponse.error(.failure)
            }
            withRegisters { $0.complete(response: response) }
        }
        return .resume
    }

    /// A platform reset: the TIS registers back to power-on (locality released, FIFO empty,
    /// interrupt line low) and the TPM power-cycled (`_TPM_Init`: PCRs and sessions are gone, the
    /// guest's next TPM2_Startup starts it; NVRAM stays). TCG PC Client Platform TPM Profile,
    /// "TPM Reset".
    public func reset() {
        withRegisters { $0 = TISInterface(bufferSize: $0.bufferSize) }
        do {
            try engine.powerCycle()
            try TPMFirmware.prepare(engine, policy: platformPolicy)
        } catch {
            LogCategory.devices.logger.error("TPM power cycle on reset failed: \(error)")
        }
    }

    /// Runs `body` on the locked model, then reports an interrupt level change.
    private func withRegisters<T>(_ body: (inout TISInterface) -> T) -> T {
        registers.withLock { registers in
            let result = body(&registers.model)
            let level = registers.model.interruptAsserted
            if level != registers.interruptLevel {
                registers.interruptLevel = level
                registers.onInterruptChange?(level)
            }
            let routed = level ? registers.model.interruptLine : nil
            if routed != registers.routedLine {
                if let old = registers.routedLine { registers.onRoutedInterruptChange?(old, false) }
                if let new = routed { registers.onRoutedInterruptChange?(new, true) }
                registers.routedLine = routed
            }
            return result
        }
    }
}

extension Machine {
    /// Wires `tpm`'s interrupt to the ISA IRQ the guest selects in TPM_INT_VECTOR (the SIRQ
    /// number, 1-15; 0 means none: TCG PC Client Platform TPM Profile, "TPM_INT_VECTOR"). Needs
    /// interrupt controllers (`interruptController` kernel or split).
    public func connect(_ tpm: TISDevice) throws(HVError) {
        var lines: [InterruptLine] = []
        for irq: UInt32 in 1...15 { lines.append(try interruptLine(irq)) }
        tpm.onRoutedInterruptChange = { [lines] line, asserted in
            guard (1...15).contains(line) else { return }
            lines[Int(line) - 1].set(asserted)
        }
    }
}

// MARK: Snapshots

extension TISInterface {
    /// The states as a snapshot numbers them.
    static let statesInOrder: [State] = [.idle, .ready, .reception, .execution, .completion]

    /// Every register and the FIFO: the state machine, the active and executing localities,
    /// each locality's request, seized flag and interrupt registers, the command being
    /// received and the response being read. A paused machine has no command executing
    /// (commands run inside the vCPU's MMIO write, which finished before the vCPU parked).
    func saveState(to encoder: inout StateEncoder) {
        let states = Self.statesInOrder
        encoder.write(UInt32(bufferSize))
        encoder.write(UInt8(states.firstIndex(of: state)!))
        encoder.write(activeLocality ?? 0xFF)
        encoder.write(executingLocality ?? 0xFF)
        encoder.write(UInt64(droppedBytes))
        for locality in 0..<Self.localityCount {
            encoder.write(requestPending[locality])
            encoder.write(beenSeized[locality])
            encoder.write(interruptEnable[locality])
            encoder.write(interruptVector[locality])
            encoder.write(interruptStatus[locality])
        }
        encoder.write(bytes: command)
        encoder.write(bytes: response)
        encoder.write(UInt32(readOffset))
        encoder.write(abortPending.map { UInt8(states.firstIndex(of: $0)!) } ?? 0xFF)
    }

    /// Reads what `saveState` wrote, checking every index and length against this interface.
    static func restored(from decoder: inout StateDecoder) throws(StateDecodingError) -> TISInterface {
        let states = Self.statesInOrder
        let size = Int(try decoder.read(UInt32.self, "tpm-tis buffer size", below: 1 << 20))
        var model = TISInterface(bufferSize: size)
        model.state = states[Int(try decoder.read(UInt8.self, "tpm-tis state", below: UInt8(states.count)))]
        guard model.state != .execution else {
            throw StateDecodingError(field: "tpm-tis state", problem: "a command is executing; a paused machine has none")
        }
        func locality(_ field: String) throws(StateDecodingError) -> UInt8? {
            let value = try decoder.read(UInt8.self, field)
            guard value == 0xFF || Int(value) < localityCount else { throw StateDecodingError(field: field, problem: "\(value) is not a locality (0-4)") }
            return value == 0xFF ? nil : value
        }
        model.activeLocality = try locality("tpm-tis active locality")
        model.executingLocality = try locality("tpm-tis executing locality")
        model.droppedBytes = Int(clamping: try decoder.read(UInt64.self, "tpm-tis dropped bytes"))
        for index in 0..<localityCount {
            model.requestPending[index] = try decoder.read(Bool.self, "tpm-tis locality \(index) request")
            model.beenSeized[index] = try decoder.read(Bool.self, "tpm-tis locality \(index) seized")
            model.interruptEnable[index] = try decoder.read(UInt32.self, "tpm-tis locality \(index) interrupt enable")
            model.interruptVector[index] = try decoder.read(UInt8.self, "tpm-tis locality \(index) interrupt vector")
            model.interruptStatus[index] = try decoder.read(UInt32.self, "tpm-tis locality \(index) interrupt status")
        }
        model.command = try decoder.readBytes("tpm-tis command", atMost: size)
        model.response = try decoder.readBytes("tpm-tis response", atMost: size)
        model.readOffset = Int(try decoder.read(UInt32.self, "tpm-tis response read offset", below: UInt32(model.response.count + 1)))
        let abort = try decoder.read(UInt8.self, "tpm-tis abort pending")
        guard abort == 0xFF || Int(abort) < states.count else { throw StateDecodingError(field: "tpm-tis abort pending", problem: "\(abort) is not a state") }
        model.abortPending = abort == 0xFF ? nil : states[Int(abort)]
        return model
    }
}

extension TISDevice: SnapshotDevice, HandOverDevice {
    /// The TIS registers and FIFO, then the TPM itself: libtpms' permanent state (NVRAM:
    /// seeds, NV indices, persistent objects) and volatile state (PCRs, loaded objects,
    /// sessions), as `TPMLIB_GetState` gives them. A restored TPM continues mid-session; its
    /// state directory gets the snapshot's NVRAM.
    public func saveState(to encoder: inout StateEncoder) throws(HVError) {
        let snapshot: TPMSnapshot
        do { snapshot = try engine.saveState() } catch {
            throw .snapshot(subject: name, problem: "the TPM's state could not be read: \(error)")
        }
        registers.withLock { $0.model.saveState(to: &encoder) }
        encoder.write(bytes: snapshot.permanent)
        encoder.write(bytes: snapshot.volatile)
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let model = try TISInterface.restored(from: &decoder)
        let permanent = try decoder.readBytes("tpm permanent state", atMost: 1 << 20)
        let volatile = try decoder.readBytes("tpm volatile state", atMost: 1 << 20)
        do { try engine.restoreState(TPMSnapshot(permanent: permanent, volatile: volatile)) } catch {
            throw StateDecodingError(field: "tpm state", problem: "libtpms refused it: \(error)")
        }
        // The interrupt line follows the restored registers.
        withRegisters { $0 = model }
    }

    public func releaseBacking() { engine.releaseStorage() }

    public func claimBacking() throws(HVError) {
        do { try engine.claimStorage() } catch { throw .snapshot(subject: name, problem: "the TPM's state directory: \(error)") }
    }
}
