// The TPM Interface Specification (TIS) FIFO register model: what a guest's TPM driver sees at
// 0xFED40000. Pure and synchronous: no I/O, no locks, no Foundation, so it is unit-tested
// without a VM and could move into HVModel. Register layout and bit names follow the TCG PC
// Client Platform TPM Profile (PTP) specification, section 6 ("FIFO interface", the
// TPM_ACCESS_x, TPM_STS_x, TPM_INT_* and TPM_INTF_CAPABILITY_x register tables); where the
// spec leaves a choice, the model does what QEMU's hw/tpm/tpm_tis_common.c does, which is what
// Linux's tpm_tis and EDK2 are tested against.

/// The guest-visible TIS state of one TPM: five localities, arbitration, the command state
/// machine (idle, ready, reception, execution, completion) and interrupts.
///
/// `read`/`write` take an offset into the 0x5000-byte window (0x1000 per locality). A write
/// that completes a command (`tpmGo`) returns `.execute`: the owner runs the command on its
/// engine and hands the response to `complete(response:)`.
public struct TISInterface: Sendable {
    /// Localities 0-4 (PTP 6.3.3).
    public static let localityCount = 5
    /// Bytes per locality window.
    public static let localityStride: UInt64 = 0x1000
    /// The whole window: five localities.
    public static let windowSize: UInt64 = 0x5000
    /// Where PC platforms place the window (PTP 6.3.2).
    public static let baseAddress: UInt64 = 0xFED4_0000

    /// Register offsets within a locality (PTP, FIFO interface register space).
    public enum Register {
        public static let access: UInt64 = 0x00
        public static let interruptEnable: UInt64 = 0x08
        public static let interruptVector: UInt64 = 0x0C
        public static let interruptStatus: UInt64 = 0x10
        public static let interfaceCapability: UInt64 = 0x14
        public static let status: UInt64 = 0x18
        public static let dataFIFO: UInt64 = 0x24
        public static let interfaceID: UInt64 = 0x30
        public static let extendedDataFIFO: UInt64 = 0x80
        public static let didVid: UInt64 = 0xF00
        public static let revisionID: UInt64 = 0xF04
    }

    /// TPM_ACCESS_x bits.
    public enum Access {
        public static let establishment: UInt8 = 1 << 0
        public static let requestUse: UInt8 = 1 << 1
        public static let pendingRequest: UInt8 = 1 << 2
        public static let seize: UInt8 = 1 << 3
        public static let beenSeized: UInt8 = 1 << 4
        public static let activeLocality: UInt8 = 1 << 5
        public static let registerValid: UInt8 = 1 << 7
    }

    /// TPM_STS_x bits.
    public enum Status {
        public static let responseRetry: UInt32 = 1 << 1
        public static let selfTestDone: UInt32 = 1 << 2
        public static let expect: UInt32 = 1 << 3
        public static let dataAvailable: UInt32 = 1 << 4
        public static let tpmGo: UInt32 = 1 << 5
        public static let commandReady: UInt32 = 1 << 6
        public static let valid: UInt32 = 1 << 7
        public static let commandCancel: UInt32 = 1 << 24
        public static let resetEstablishment: UInt32 = 1 << 25
        /// tpmFamily = 01b: TPM 2.0 (bits 27:26).
        public static let family20: UInt32 = 1 << 26
        public static let burstCountShift: UInt32 = 8
    }

    /// TPM_INT_ENABLE_x / TPM_INT_STATUS_x bits.
    public enum Interrupt {
        public static let dataAvailable: UInt32 = 1 << 0
        public static let statusValid: UInt32 = 1 << 1
        public static let localityChange: UInt32 = 1 << 2
        public static let commandReady: UInt32 = 1 << 7
        public static let all: UInt32 = dataAvailable | statusValid | localityChange | commandReady
        /// typePolarity = 01b: low level (QEMU's and Linux's default).
        public static let lowLevel: UInt32 = 1 << 3
        public static let globalEnable: UInt32 = 1 << 31
    }

    /// TPM_INTF_CAPABILITY: all four interrupt sources, low-level interrupts, dynamic burst
    /// count, 64-byte transfers, interface version 1.3 for TPM 2.0 (QEMU's value).
    public static let interfaceCapability: UInt32 = Interrupt.all | 1 << 4 | 3 << 9 | 3 << 28
    /// TPM_INTERFACE_ID: FIFO interface, version 0, five localities (bit 8), TIS supported
    /// (bit 13), interface selector locked (bit 19).
    public static let interfaceID: UInt32 = 1 << 8 | 1 << 13 | 1 << 19
    /// TPM_DID_VID: device 0x0001, vendor 0x1014 (IBM, the libtpms vendor; QEMU's value).
    public static let didVid: UInt32 = 0x0001_1014
    public static let revision: UInt8 = 0x01

    /// The command state machine (PTP 5.6.12, "TPM State Transitions").
    public enum State: Sendable, Equatable { case idle, ready, reception, execution, completion }

    /// What the owner must do after a write.
    public enum Action: Sendable, Equatable {
        case none
        /// Run `command` at `locality`, then call `complete(response:)`.
        case execute(command: [UInt8], locality: UInt8)
        /// Ask the engine to cancel the executing command (commandCancel).
        case cancel
    }

    /// The largest command or response, in bytes (TPM2 MAX_COMMAND_SIZE in libtpms: 4096).
    public let bufferSize: Int
    public internal(set) var state: State = .idle
    /// The locality that owns the interface, if any.
    public internal(set) var activeLocality: UInt8?
    /// The locality the executing command came from.
    public internal(set) var executingLocality: UInt8?
    /// FIFO bytes written while the TPM did not expect any (dropped, as QEMU does).
    public internal(set) var droppedBytes = 0

    // Internal, not private: TISDevice's snapshot code (which needs HVCore's encoder, kept out
    // of this pure model) reads and puts back every field.
    var requestPending = [Bool](repeating: false, count: localityCount)
    var beenSeized = [Bool](repeating: false, count: localityCount)
    var interruptEnable = [UInt32](repeating: Interrupt.lowLevel, count: localityCount)
    var interruptVector = [UInt8](repeating: 0, count: localityCount)
    var interruptStatus = [UInt32](repeating: 0, count: localityCount)
    var command: [UInt8] = []
    var response: [UInt8] = []
    var readOffset = 0
    /// commandReady or a locality change arrived during execution: drop the response.
    var abortPending: State?

    public init(bufferSize: Int = 4096) {
        self.bufferSize = bufferSize
        command.reserveCapacity(bufferSize)
    }

    /// Whether the interrupt line is asserted: an enabled, pending source in the active
    /// locality with globalIntEnable set.
    public var interruptAsserted: Bool {
        guard let locality = activeLocality.map(Int.init) else { return false }
        let enable = interruptEnable[locality]
        return enable & Interrupt.globalEnable != 0 && interruptStatus[locality] & enable & Interrupt.all != 0
    }

    /// The interrupt vector (SIRQ number) the active locality programmed.
    public var interruptLine: UInt8 { interruptVector[Int(activeLocality ?? 0)] }

    // MARK: Reads

    /// A read of `width` bytes (1, 2, 4 or 8) at `offset` in the window.
    public mutating func read(offset: UInt64, width: Int) -> UInt64 {
        guard offset < Self.windowSize, [1, 2, 4, 8].contains(width) else { return allOnes(width) }
        let locality = Int(offset / Self.localityStride)
        let register = offset % Self.localityStride
        if isFIFO(register) {
            var value: UInt64 = 0
            for index in 0..<width { value |= UInt64(readFIFOByte(locality)) << (8 * UInt64(index)) }
            return value
        }
        if width == 8 {
            return read(offset: offset, width: 4) | read(offset: offset + 4, width: 4) << 32
        }
        let aligned = register & ~3
        let shift = 8 * (register - aligned)
        let word = UInt64(registerValue(locality, aligned))
        return (word >> shift) & ((1 << (8 * UInt64(width))) - 1)
    }

    private func allOnes(_ width: Int) -> UInt64 { width >= 8 ? .max : (1 << (8 * UInt64(width))) - 1 }

    private func isFIFO(_ register: UInt64) -> Bool {
        (Register.dataFIFO..<Register.dataFIFO + 4).contains(register)
            || (Register.extendedDataFIFO..<Register.extendedDataFIFO + 4).contains(register)
    }

    /// The 32-bit register at an aligned offset, as locality `locality` sees it.
    private func registerValue(_ locality: Int, _ register: UInt64) -> UInt32 {
        let active = activeLocality == UInt8(locality)
        switch register {
        case Register.access: return UInt32(accessValue(locality))
        case Register.interruptEnable: return interruptEnable[locality]
        case Register.interruptVector: return UInt32(interruptVector[locality])
        case Register.interruptStatus: return interruptStatus[locality]
        case Register.interfaceCapability: return Self.interfaceCapability
        // PTP: STS of a locality that is not active reads all-ones (QEMU does the same).
        case Register.status: return active ? statusValue : 0xFFFF_FFFF
        case Register.interfaceID: return Self.interfaceID
        case Register.didVid: return Self.didVid
        case Register.revisionID: return UInt32(Self.revision)
        default: return 0xFFFF_FFFF
        }
    }

    private func accessValue(_ locality: Int) -> UInt8 {
        var value = Access.registerValid | Access.establishment
        if activeLocality == UInt8(locality) { value |= Access.activeLocality }
        if beenSeized[locality] { value |= Access.beenSeized }
        if requestPending[locality] { value |= Access.requestUse }
        if requestPending.indices.contains(where: { $0 != locality && requestPending[$0] }) { value |= Access.pendingRequest }
        return value
    }

    /// TPM_STS of the active locality.
    public var statusValue: UInt32 {
        var value = Status.family20 | Status.valid | Status.selfTestDone
        var burst = 0
        switch state {
        case .idle, .execution:
            break
        case .ready:
            value |= Status.commandReady
            burst = bufferSize
        case .reception:
            if expectsMore { value |= Status.expect }
            burst = bufferSize - command.count
        case .completion:
            if readOffset < response.count { value |= Status.dataAvailable }
            burst = response.count - readOffset
        }
        return value | UInt32(min(burst, 0xFFFF)) << Status.burstCountShift
    }

    /// How many bytes the command needs in all: its announced size, at least a header, at
    /// most the buffer (a larger command is received up to the buffer and then refused).
    private var expectedLength: Int {
        guard let announced = TPMHeader.announcedSize(command) else { return TPMHeader.size }
        return min(max(Int(announced), TPMHeader.size), bufferSize)
    }

    private var expectsMore: Bool { command.count < expectedLength }

    private mutating func readFIFOByte(_ locality: Int) -> UInt8 {
        // Reads in any other state, or from another locality, float high (QEMU: 0xFF).
        guard activeLocality == UInt8(locality), state == .completion, readOffset < response.count else { return 0xFF }
        let byte = response[readOffset]
        readOffset += 1
        return byte
    }

    // MARK: Writes

    /// A write of `width` bytes at `offset` in the window.
    public mutating func write(offset: UInt64, width: Int, value: UInt64) -> Action {
        guard offset < Self.windowSize, [1, 2, 4, 8].contains(width) else { return .none }
        let locality = Int(offset / Self.localityStride)
        let register = offset % Self.localityStride
        if register == Register.access {
            writeAccess(locality, UInt8(truncatingIfNeeded: value))
            return .none
        }
        // Everything else belongs to the active locality; others' writes are ignored (PTP 6.5.2).
        guard activeLocality == UInt8(locality) else { return .none }
        if isFIFO(register) {
            for index in 0..<width { writeFIFOByte(UInt8(truncatingIfNeeded: value >> (8 * UInt64(index)))) }
            return .none
        }
        let aligned = register & ~3
        let shifted = UInt32(truncatingIfNeeded: value << (8 * (register - aligned)))
        switch aligned {
        case Register.status: return writeStatus(shifted)
        case Register.interruptEnable:
            interruptEnable[locality] = shifted & (Interrupt.all | Interrupt.globalEnable | 3 << 3)
        case Register.interruptVector:
            interruptVector[locality] = UInt8(shifted & 0xF)
        case Register.interruptStatus:
            interruptStatus[locality] &= ~(shifted & Interrupt.all)  // write 1 to clear
        default:
            break  // read-only or reserved
        }
        return .none
    }

    private mutating func writeAccess(_ locality: Int, _ value: UInt8) {
        let me = UInt8(locality)
        if value & Access.activeLocality != 0 {
            // Relinquish (or withdraw a pending request); the highest waiting locality takes over.
            requestPending[locality] = false
            if activeLocality == me { changeActiveLocality(to: highestPendingLocality()) }
        } else if value & Access.seize != 0 {
            // Only a higher locality may seize (PTP: "Seize"); the loser learns of it through beenSeized.
            if let active = activeLocality {
                guard me > active else { return }
                beenSeized[Int(active)] = true
            }
            requestPending[locality] = false
            changeActiveLocality(to: me)
        } else if value & Access.requestUse != 0 {
            if activeLocality == nil {
                changeActiveLocality(to: me)
            } else if activeLocality != me {
                requestPending[locality] = true
            }
        } else if value & Access.beenSeized != 0 {
            beenSeized[locality] = false
        }
    }

    private func highestPendingLocality() -> UInt8? {
        requestPending.lastIndex(of: true).map { UInt8($0) }
    }

    private mutating func changeActiveLocality(to new: UInt8?) {
        guard new != activeLocality else { return }
        if let new { requestPending[Int(new)] = false }
        activeLocality = new
        // A new owner starts from idle; a command in flight is dropped when it completes.
        if state == .execution { abortPending = .idle } else { resetBuffers(to: .idle) }
        if let new { raise(Interrupt.localityChange, in: Int(new)) }
    }

    private mutating func resetBuffers(to newState: State) {
        state = newState
        command.removeAll(keepingCapacity: true)
        response = []
        readOffset = 0
    }

    private mutating func writeStatus(_ value: UInt32) -> Action {
        if value & Status.commandReady != 0 {
            switch state {
            case .idle, .ready, .reception, .completion:
                resetBuffers(to: .ready)
                raise(Interrupt.commandReady, in: Int(activeLocality!))
            case .execution:
                abortPending = .ready
            }
            return .none
        }
        if value & Status.tpmGo != 0 {
            // tpmGo is honoured only with a whole command received (Expect = 0).
            guard state == .reception, !expectsMore else { return .none }
            let announced = Int(TPMHeader.announcedSize(command) ?? 0)
            if announced < TPMHeader.size || announced > bufferSize {
                // Garbage header or a command larger than the buffer: refused without the engine.
                finish(with: TPMResponse.error(.commandSize))
                return .none
            }
            state = .execution
            executingLocality = activeLocality
            return .execute(command: command, locality: activeLocality!)
        }
        if value & Status.responseRetry != 0 {
            if state == .completion { readOffset = 0 }
            return .none
        }
        if value & Status.commandCancel != 0 {
            return state == .execution ? .cancel : .none
        }
        return .none
    }

    private mutating func writeFIFOByte(_ byte: UInt8) {
        switch state {
        case .ready:
            state = .reception
            command.append(byte)
        case .reception where expectsMore:
            command.append(byte)
        default:
            droppedBytes += 1
        }
    }

    /// Hands back the response of the command `.execute` asked for.
    public mutating func complete(response: [UInt8]) {
        guard state == .execution else { return }
        executingLocality = nil
        if let abort = abortPending {
            abortPending = nil
            resetBuffers(to: abort)
            if abort == .ready, let active = activeLocality { raise(Interrupt.commandReady, in: Int(active)) }
            return
        }
        finish(with: response)
    }

    private mutating func finish(with response: [UInt8]) {
        command.removeAll(keepingCapacity: true)
        self.response = Array(response.prefix(bufferSize))
        readOffset = 0
        state = .completion
        if let active = activeLocality { raise(Interrupt.dataAvailable | Interrupt.statusValid, in: Int(active)) }
    }

    private mutating func raise(_ sources: UInt32, in locality: Int) {
        interruptStatus[locality] |= sources & interruptEnable[locality]
    }
}

