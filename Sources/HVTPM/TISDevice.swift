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
