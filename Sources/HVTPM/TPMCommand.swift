// Just enough TPM 2.0 marshalling for the commands HV sends itself (start-up, measured boot,
// tests, benchmarks). Layouts: TPM 2.0 Library, Part 3 (commands) and Part 2 (structures).
// Everything is big-endian.

/// The 10-byte header of every command and response (Part 1, 18.2): tag, size, code.
public enum TPMHeader {
    public static let size = 10
    /// TPM_ST_NO_SESSIONS.
    public static let noSessions: UInt16 = 0x8001
    /// TPM_ST_SESSIONS.
    public static let sessions: UInt16 = 0x8002

    /// The size field of a frame (bytes 2-5), or nil when fewer than 6 bytes are present.
    public static func announcedSize(_ frame: [UInt8]) -> UInt32? {
        frame.count >= 6 ? frame.bigEndianUInt32(at: 2) : nil
    }
}

/// TPM_RC values HV looks at (Part 2, 6.6).
public enum TPMResponseCode: UInt32, Sendable {
    case success = 0x000
    case initialize = 0x100
    case failure = 0x101
    case commandSize = 0x142
    case commandCode = 0x143
    case canceled = 0x909
}

/// Reading response frames.
public enum TPMResponse {
    /// The response code (bytes 6-9), or nil for a frame shorter than a header.
    public static func code(_ response: [UInt8]) -> UInt32? {
        response.count >= TPMHeader.size ? response.bigEndianUInt32(at: 6) : nil
    }

    /// A header-only response carrying `code`, what a TPM sends for a command it rejects
    /// before parsing it.
    public static func error(_ code: TPMResponseCode) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(TPMHeader.noSessions)
        bytes.appendBigEndian(UInt32(TPMHeader.size))
        bytes.appendBigEndian(code.rawValue)
        return bytes
    }
}

/// TPM_ALG_ID values of PCR banks (Part 2, 6.3) with their digest sizes.
public enum TPMHashAlgorithm: UInt16, Sendable, CaseIterable {
    case sha1 = 0x0004
    case sha256 = 0x000B
    case sha384 = 0x000C
    case sha512 = 0x000D

    public var digestSize: Int {
        switch self {
        case .sha1: 20
        case .sha256: 32
        case .sha384: 48
        case .sha512: 64
        }
    }
}

/// Builders for command frames.
public enum TPMCommand {
    /// TPM_SU (Part 2, 6.5).
    public enum StartupType: UInt16, Sendable { case clear = 0, state = 1 }

    static let passwordSession: UInt32 = 0x4000_0009  // TPM_RS_PW

    /// Header + body, with the size filled in.
    static func frame(tag: UInt16, code: UInt32, body: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(TPMHeader.size + body.count)
        bytes.appendBigEndian(tag)
        bytes.appendBigEndian(UInt32(TPMHeader.size + body.count))
        bytes.appendBigEndian(code)
        return bytes + body
    }

    /// An authorization area of `count` empty password sessions (Part 1, 19.8.4).
    static func passwordAuthorizations(_ count: Int) -> [UInt8] {
        var session: [UInt8] = []
        session.appendBigEndian(passwordSession)
        session.appendBigEndian(UInt16(0))  // nonce
        session.append(0)  // attributes
        session.appendBigEndian(UInt16(0))  // hmac (empty password)
        var area: [UInt8] = []
        area.appendBigEndian(UInt32(session.count * count))
        for _ in 0..<count { area += session }
        return area
    }

    /// A command on one handle, authorised by one empty password session, followed by
    /// `parameters` (Part 1, 18.2 "Command Header Validation" and 19.8 "Password Authorization").
    static func authorized(_ code: UInt32, handle: UInt32, parameters: [UInt8] = []) -> [UInt8] {
        var body: [UInt8] = []
        body.appendBigEndian(handle)
        body += passwordAuthorizations(1)
        return frame(tag: TPMHeader.sessions, code: code, body: body + parameters)
    }

    /// TPM2_Startup (Part 3, 9.3).
    public static func startup(_ type: StartupType) -> [UInt8] {
        var body: [UInt8] = []
        body.appendBigEndian(type.rawValue)
        return frame(tag: TPMHeader.noSessions, code: 0x144, body: body)
    }

    /// TPM_RH_PLATFORM (Part 2, 7.4): the hierarchy firmware owns.
    public static let platformHierarchy: UInt32 = 0x4000_000C

    /// TPM2_HierarchyControl (Part 3, 24.2) with the platform's (empty) password: enables or
    /// disables `hierarchy`; disabling TPM_RH_PLATFORM (phEnable) lasts until the next
    /// TPM2_Startup(CLEAR).
    public static func hierarchyControl(_ hierarchy: UInt32, enable: Bool) -> [UInt8] {
        var parameters: [UInt8] = []
        parameters.appendBigEndian(hierarchy)
        parameters.append(enable ? 1 : 0)
        return authorized(0x121, handle: platformHierarchy, parameters: parameters)
    }

    /// TPM2_HierarchyChangeAuth (Part 3, 24.8) of the platform hierarchy, from its empty
    /// password to `newAuth` (at most the name-algorithm digest size, 32 bytes for SHA-256).
    public static func platformChangeAuth(_ newAuth: [UInt8]) -> [UInt8] {
        var parameters: [UInt8] = []
        parameters.appendBigEndian(UInt16(newAuth.count))
        return authorized(0x129, handle: platformHierarchy, parameters: parameters + newAuth)
    }

    /// TPM2_Clear (Part 3, 24.6) authorised by `hierarchy` (TPM_RH_PLATFORM or TPM_RH_LOCKOUT)
    /// with an empty password: what a hostile guest would send to wipe the TPM.
    public static func clear(authorizedBy hierarchy: UInt32) -> [UInt8] {
        authorized(0x126, handle: hierarchy)
    }

    /// TPM2_ChangeEPS (Part 3, 24.5): a new endorsement primary seed, authorised by the platform.
    public static func changeEPS() -> [UInt8] {
        authorized(0x124, handle: platformHierarchy)
    }

    /// TPM2_Shutdown (Part 3, 9.4).
    public static func shutdown(_ type: StartupType) -> [UInt8] {
        var body: [UInt8] = []
        body.appendBigEndian(type.rawValue)
        return frame(tag: TPMHeader.noSessions, code: 0x145, body: body)
    }

    /// TPM2_GetRandom (Part 3, 16.1).
    public static func getRandom(_ count: UInt16) -> [UInt8] {
        var body: [UInt8] = []
        body.appendBigEndian(count)
        return frame(tag: TPMHeader.noSessions, code: 0x17B, body: body)
    }

    /// TPM2_PCR_Extend of PCR `index` with one digest per bank (Part 3, 22.2).
    public static func pcrExtend(_ index: UInt32, digests: [(TPMHashAlgorithm, [UInt8])]) -> [UInt8] {
        var parameters: [UInt8] = []
        parameters.appendBigEndian(UInt32(digests.count))
        for (algorithm, digest) in digests {
            parameters.appendBigEndian(algorithm.rawValue)
            parameters += digest
        }
        return authorized(0x182, handle: index, parameters: parameters)
    }

    /// TPM2_PCR_Read of one PCR in one bank (Part 3, 22.4).
    public static func pcrRead(_ index: UInt32, bank: TPMHashAlgorithm) -> [UInt8] {
        var body: [UInt8] = []
        body.appendBigEndian(UInt32(1))
        body.appendBigEndian(bank.rawValue)
        var select: [UInt8] = [3, 0, 0, 0]  // sizeofSelect 3: PCRs 0-23
        select[1 + Int(index / 8)] = 1 << (index % 8)
        body += select
        return frame(tag: TPMHeader.noSessions, code: 0x17E, body: body)
    }

    /// The digest from a TPM2_PCR_Read response of one PCR, or nil when absent.
    public static func pcrReadDigest(_ response: [UInt8]) -> [UInt8]? {
        guard TPMResponse.code(response) == 0 else { return nil }
        // header 10, updateCounter 4, TPML_PCR_SELECTION (count 4 + 6 per selection), TPML_DIGEST.
        var offset = TPMHeader.size + 4
        guard response.count >= offset + 4 else { return nil }
        let selections = Int(response.bigEndianUInt32(at: offset))
        offset += 4
        for _ in 0..<selections {
            guard response.count >= offset + 3 else { return nil }
            offset += 3 + Int(response[offset + 2])
        }
        guard response.count >= offset + 6, response.bigEndianUInt32(at: offset) == 1 else { return nil }
        let size = Int(response.bigEndianUInt16(at: offset + 4))
        guard response.count >= offset + 6 + size else { return nil }
        return Array(response[offset + 6 ..< offset + 6 + size])
    }

    /// TPM2_HashSequenceStart with TPM_ALG_NULL: an event sequence, which digests in every
    /// PCR bank (Part 3, 17.3).
    public static func eventSequenceStart() -> [UInt8] {
        var body: [UInt8] = []
        body.appendBigEndian(UInt16(0))  // auth: empty
        body.appendBigEndian(UInt16(0x0010))  // TPM_ALG_NULL
        return frame(tag: TPMHeader.noSessions, code: 0x186, body: body)
    }

    /// The most bytes one TPM2_SequenceUpdate takes (MAX_DIGEST_BUFFER in libtpms).
    public static let maxSequenceChunk = 1024

    /// TPM2_SequenceUpdate (Part 3, 17.4).
    public static func sequenceUpdate(_ handle: UInt32, _ chunk: ArraySlice<UInt8>) -> [UInt8] {
        var parameters: [UInt8] = []
        parameters.appendBigEndian(UInt16(chunk.count))
        return authorized(0x15C, handle: handle, parameters: parameters + chunk)
    }

    /// TPM2_EventSequenceComplete: extends PCR `index` in every bank (Part 3, 17.6).
    public static func eventSequenceComplete(pcr index: UInt32, handle: UInt32) -> [UInt8] {
        var body: [UInt8] = []
        body.appendBigEndian(index)
        body.appendBigEndian(handle)
        body += passwordAuthorizations(2)
        body.appendBigEndian(UInt16(0))  // no final bytes
        return frame(tag: TPMHeader.sessions, code: 0x185, body: body)
    }
}
