// The key that encrypts and authenticates snapshots at rest and migration streams in transit
// (Documentation/Snapshots.md, "Encryption"). AES-256-GCM through swift-crypto; the key comes
// from a file or the environment and is never written beside the data.
import Crypto
import Foundation

/// Why a snapshot could not be written, read or moved: `subject` (the file, a section, the
/// key, the peer) and what is wrong with it.
public struct SnapshotError: Error, CustomStringConvertible, Sendable, Equatable {
    public var subject: String
    public var problem: String

    public init(_ subject: String, _ problem: String) {
        self.subject = subject
        self.problem = problem
    }

    public var description: String { "\(subject): \(problem)" }
}

/// A 256-bit key. Sections, memory chunks and stream records are sealed with AES-GCM under a
/// key derived from it for that use (HKDF-SHA256), and the manifest carries an HMAC under
/// another, so one key never serves two purposes.
public struct SnapshotKey: Sendable {
    let material: SymmetricKey

    /// The environment variable `fromEnvironment()` reads.
    public static let environmentVariable = "HV_SNAPSHOT_KEY"

    public init(bytes: some Collection<UInt8>) throws(SnapshotError) {
        guard bytes.count == 32 else { throw SnapshotError("key", "is \(bytes.count) bytes; an AES-256 key is 32 bytes (or 64 hexadecimal digits)") }
        material = SymmetricKey(data: Array(bytes))
    }

    /// A new random key (`hv snapshot keygen`).
    public static func generate() -> SnapshotKey {
        // 32 bytes from the system's generator (swift-crypto's SymmetricKey(size:)).
        SnapshotKey(material: SymmetricKey(size: .bits256))
    }

    private init(material: SymmetricKey) { self.material = material }

    /// The key as 64 hexadecimal digits, the form key files and the environment hold.
    public var hex: String { material.withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() } }

    /// 64 hexadecimal digits (surrounding white space ignored) or 32 raw bytes.
    public static func parse(_ data: [UInt8], source: String) throws(SnapshotError) -> SnapshotKey {
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if text.count == 64, let bytes = Self.hexBytes(text) { return try SnapshotKey(bytes: bytes) }
        if data.count == 32 { return try SnapshotKey(bytes: data) }
        throw SnapshotError(source, "holds no key: give 64 hexadecimal digits (hv snapshot keygen writes one) or 32 raw bytes")
    }

    /// Reads a key file, which must not be readable by others (as ssh refuses a private key).
    public static func load(file path: String) throws(SnapshotError) -> SnapshotKey {
        var status = stat()
        guard stat(path, &status) == 0 else { throw SnapshotError(path, "cannot read the key file: \(String(cString: strerror(errno)))") }
        guard status.st_mode & 0o077 == 0 else {
            throw SnapshotError(path, "the key file is readable or writable by others (mode \(String(status.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        guard let data = FileManager.default.contents(atPath: path) else { throw SnapshotError(path, "cannot read the key file") }
        return try parse([UInt8](data), source: path)
    }

    /// `HV_SNAPSHOT_KEY`, when set.
    public static func fromEnvironment() throws(SnapshotError) -> SnapshotKey? {
        guard let value = ProcessInfo.processInfo.environment[environmentVariable], !value.isEmpty else { return nil }
        return try parse(Array(value.utf8), source: "$\(environmentVariable)")
    }

    static func hexBytes(_ text: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        var high: UInt8?
        for character in text.utf8 {
            let nibble: UInt8
            switch character {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = character - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = character - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = character - UInt8(ascii: "A") + 10
            default: return nil
            }
            if let first = high { bytes.append(first << 4 | nibble); high = nil } else { high = nibble }
        }
        return high == nil ? bytes : nil
    }

    /// The key for one purpose ("section", "memory", "manifest", "stream"), bound to one
    /// snapshot or stream by `salt` (its random id).
    func derived(_ purpose: String, salt: [UInt8]) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: material, salt: salt, info: Array("hv-snapshot \(purpose)".utf8), outputByteCount: 32)
    }

    /// What a snapshot records to tell "wrong key" from "tampered": an HMAC of its id.
    func check(salt: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Array("hv-snapshot key check".utf8), using: derived("key check", salt: salt)))
    }
}

/// AES-256-GCM with a random 96-bit nonce; `context` is authenticated, not encrypted (which
/// section or chunk of which snapshot, so a sealed piece cannot be moved to another place).
enum Sealing {
    /// What sealing adds to a plaintext: the 12-byte nonce and the 16-byte tag.
    static let overhead = 28

    /// The authenticated context of the `number`th piece of the snapshot or stream `id` (a
    /// memory chunk, a record), with `tail` after it: writer and reader build it here alike.
    static func context(_ id: [UInt8], _ number: UInt64, _ tail: [UInt8] = []) -> [UInt8] {
        var context = id
        withUnsafeBytes(of: number.littleEndian) { context += $0 }
        return context + tail
    }

    static func seal(_ plaintext: some DataProtocol, key: SymmetricKey, context: [UInt8]) throws(SnapshotError) -> [UInt8] {
        do {
            let box = try AES.GCM.seal(plaintext, using: key, nonce: AES.GCM.Nonce(), authenticating: context)
            guard let combined = box.combined else { throw SnapshotError("encryption", "AES-GCM gave no combined box") }
            return Array(combined)
        } catch let error as SnapshotError {
            throw error
        } catch {
            throw SnapshotError("encryption", "AES-GCM failed: \(error)")
        }
    }

    static func open(_ sealed: some DataProtocol, key: SymmetricKey, context: [UInt8], what: String) throws(SnapshotError) -> [UInt8] {
        do {
            return Array(try AES.GCM.open(AES.GCM.SealedBox(combined: sealed), using: key, authenticating: context))
        } catch {
            throw SnapshotError(what, "does not authenticate under this key: it was altered, or belongs to another snapshot")
        }
    }
}

func hexString(_ bytes: some Sequence<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
