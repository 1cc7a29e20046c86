// Measured boot: before a guest runs, the VMM plays the firmware's part and measures what it
// loads (kernel, command line, initrd) into PCRs, keeping the TCG event log a verifier replays.
// The TPM digests each item itself with an event sequence (TPM2_HashSequenceStart with
// TPM_ALG_NULL ... TPM2_EventSequenceComplete, TPM 2.0 Part 3, 17.3-17.6), so every active
// PCR bank is extended and logged without a host hash library. Log format: TCG PC Client
// Platform Firmware Profile (PFP), 10.2 ("crypto agile" log: a Spec ID Event03 header, then
// TCG_PCR_EVENT2 records; little-endian).

/// One measurement as the event log records it.
public struct TPMEvent: Sendable, Equatable {
    /// The PCR extended.
    public var pcr: UInt32
    /// TCG event type (PFP 10.4.1); `TPMEvent.ipl` for what a boot loader loads.
    public var type: UInt32
    /// The digest of the measured bytes in every active bank, as the TPM computed it.
    public var digests: [TPMDigest]
    /// What the verifier reads about the event (a description, or the command line itself).
    public var data: [UInt8]

    /// EV_IPL: "the boot loader loaded this" (what GRUB logs for kernels and command lines).
    public static let ipl: UInt32 = 0x0D
    /// EV_NO_ACTION: informational, extends nothing (the log header).
    public static let noAction: UInt32 = 0x03
}

/// A digest in one bank.
public struct TPMDigest: Sendable, Equatable {
    public var algorithm: TPMHashAlgorithm
    public var bytes: [UInt8]
}

/// Measures boot components into a started TPM and keeps their event log.
///
/// ```swift
/// var boot = try MeasuredBoot(engine: tpm)          // sends TPM2_Startup(CLEAR)
/// try boot.measureLinuxBoot(kernel: bzImage, commandLine: "console=ttyS0", initrd: initrd)
/// try boot.eventLog().write(to: "boot.log")          // `tpm2_eventlog boot.log` replays it
/// ```
///
/// The guest then finds the TPM already started: its own TPM2_Startup gets TPM_RC_INITIALIZE,
/// which Linux and EDK2 accept.
public struct MeasuredBoot: Sendable {
    /// GRUB's PCR conventions: command lines in PCR 8, loaded files in PCR 9.
    public static let commandLinePCR: UInt32 = 8
    public static let filesPCR: UInt32 = 9

    public let engine: any TPMEngine
    /// The events measured so far, in order.
    public private(set) var events: [TPMEvent] = []

    /// Starts the TPM (TPM2_Startup(CLEAR); an already started TPM is fine).
    public init(engine: any TPMEngine) throws(TPMError) {
        self.engine = engine
        let code = try Self.run(engine, TPMCommand.startup(.clear), "TPM2_Startup").code
        guard code == 0 || code == TPMResponseCode.initialize.rawValue else { throw .command(name: "TPM2_Startup", responseCode: code) }
    }

    /// Measures a kernel, its command line and an optional initrd the way GRUB does: the kernel
    /// and initrd into PCR 9, the command line (NUL-terminated, as it is passed) into PCR 8.
    public mutating func measureLinuxBoot(kernel: [UInt8], commandLine: String, initrd: [UInt8]?) throws(TPMError) {
        try measure(kernel, pcr: Self.filesPCR, description: Array("hv: kernel".utf8))
        let line = Array(commandLine.utf8) + [0]
        try measure(line, pcr: Self.commandLinePCR, description: line)
        if let initrd { try measure(initrd, pcr: Self.filesPCR, description: Array("hv: initrd".utf8)) }
    }

    /// Extends `pcr` in every bank with the digest of `bytes` and logs it with `description`.
    @discardableResult
    public mutating func measure(_ bytes: [UInt8], pcr: UInt32, type: UInt32 = TPMEvent.ipl,
                                 description: [UInt8]) throws(TPMError) -> TPMEvent
    {
        let start = try Self.run(engine, TPMCommand.eventSequenceStart(), "TPM2_HashSequenceStart")
        guard start.code == 0, start.response.count >= 14 else { throw .command(name: "TPM2_HashSequenceStart", responseCode: start.code) }
        let handle = start.response.bigEndianUInt32(at: 10)
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + TPMCommand.maxSequenceChunk, bytes.count)
            let update = try Self.run(engine, TPMCommand.sequenceUpdate(handle, bytes[offset..<end]), "TPM2_SequenceUpdate")
            guard update.code == 0 else { throw .command(name: "TPM2_SequenceUpdate", responseCode: update.code) }
            offset = end
        }
        let complete = try Self.run(engine, TPMCommand.eventSequenceComplete(pcr: pcr, handle: handle), "TPM2_EventSequenceComplete")
        guard complete.code == 0 else { throw .command(name: "TPM2_EventSequenceComplete", responseCode: complete.code) }
        let event = TPMEvent(pcr: pcr, type: type, digests: try Self.digests(inEventSequenceResponse: complete.response), data: description)
        events.append(event)
        return event
    }

    private static func run(_ engine: any TPMEngine, _ command: [UInt8], _ name: String) throws(TPMError) -> (code: UInt32, response: [UInt8]) {
        let response = try engine.execute(command, locality: 0)
        guard let code = TPMResponse.code(response) else { throw .malformedFrame("\(name): response of \(response.count) bytes") }
        return (code, response)
    }

    /// TPML_DIGEST_VALUES after the parameterSize of a TPM2_EventSequenceComplete response.
    static func digests(inEventSequenceResponse response: [UInt8]) throws(TPMError) -> [TPMDigest] {
        var offset = TPMHeader.size + 4
        guard response.count >= offset + 4 else { throw .malformedFrame("TPM2_EventSequenceComplete: no digest list") }
        let count = Int(response.bigEndianUInt32(at: offset))
        offset += 4
        var digests: [TPMDigest] = []
        for _ in 0..<count {
            guard response.count >= offset + 2 else { throw .malformedFrame("TPM2_EventSequenceComplete: digest list cut short") }
            let id = response.bigEndianUInt16(at: offset)
            guard let algorithm = TPMHashAlgorithm(rawValue: id) else {
                throw .malformedFrame("TPM2_EventSequenceComplete: bank 0x\(String(id, radix: 16)) is not one HV logs")
            }
            offset += 2
            guard response.count >= offset + algorithm.digestSize else { throw .malformedFrame("TPM2_EventSequenceComplete: digest cut short") }
            digests.append(TPMDigest(algorithm: algorithm, bytes: Array(response[offset..<offset + algorithm.digestSize])))
            offset += algorithm.digestSize
        }
        return digests
    }

    /// The binary event log (PFP 10.2): the Spec ID Event03 header naming the banks, then one
    /// TCG_PCR_EVENT2 per measurement. Readable by `tpm2_eventlog` and Linux's IMA/TPM tools.
    public func eventLog() -> [UInt8] {
        let banks = events.first?.digests.map(\.algorithm) ?? []
        var specID: [UInt8] = Array("Spec ID Event03".utf8) + [0]
        specID.appendLittleEndian(UInt32(0))  // platformClass: client
        specID += [0, 2, 0, 2]  // specVersionMinor 0, specVersionMajor 2, specErrata 0, uintnSize 2 (UINT64)
        specID.appendLittleEndian(UInt32(banks.count))
        for bank in banks {
            specID.appendLittleEndian(bank.rawValue)
            specID.appendLittleEndian(UInt16(bank.digestSize))
        }
        specID.append(0)  // vendorInfoSize
        // The header is a TCG_PCR_EVENT (SHA-1 format): PCR 0, EV_NO_ACTION, 20 zero bytes.
        var log: [UInt8] = []
        log.appendLittleEndian(UInt32(0))
        log.appendLittleEndian(TPMEvent.noAction)
        log += [UInt8](repeating: 0, count: 20)
        log.appendLittleEndian(UInt32(specID.count))
        log += specID
        for event in events {
            log.appendLittleEndian(event.pcr)
            log.appendLittleEndian(event.type)
            log.appendLittleEndian(UInt32(event.digests.count))
            for digest in event.digests {
                log.appendLittleEndian(digest.algorithm.rawValue)
                log += digest.bytes
            }
            log.appendLittleEndian(UInt32(event.data.count))
            log += event.data
        }
        return log
    }
}

extension [UInt8] {
    mutating func appendLittleEndian(_ value: UInt32) {
        append(contentsOf: [UInt8(truncatingIfNeeded: value), UInt8(truncatingIfNeeded: value >> 8),
                            UInt8(truncatingIfNeeded: value >> 16), UInt8(value >> 24)])
    }

    mutating func appendLittleEndian(_ value: UInt16) {
        append(contentsOf: [UInt8(truncatingIfNeeded: value), UInt8(value >> 8)])
    }
}
