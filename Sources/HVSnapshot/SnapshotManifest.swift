// A snapshot directory's `state` file: magic, manifest (JSON) and its checksum, then the
// sections the manifest lists, each with its own SHA-256 (Documentation/Snapshots.md, "Format").
import Crypto
import Foundation
import HVCore

/// What is in a snapshot and where: readable without the key, authenticated with it.
public struct SnapshotManifest: Codable, Sendable, Equatable {
    /// The layout of the `state` and `memory` files and of the sections' encodings; a reader
    /// refuses any other. 2: PCI functions carry their own state (virtio-pci's queues, MSI-X).
    public static let currentFormat = 2
    /// The HV release that writes snapshots; a snapshot from another is refused, as the
    /// devices' and backends' encodings may differ.
    public static let currentHV = "0.1"

    public struct Section: Codable, Sendable, Equatable {
        public var name: String
        /// From the start of the sections (right after the manifest's checksum).
        public var offset: UInt64
        public var length: UInt64
        /// SHA-256 of the bytes as stored (sealed, when encrypted).
        public var sha256: String
    }

    public struct Region: Codable, Sendable, Equatable {
        public var guestAddress: UInt64
        public var size: UInt64
        /// Where the region starts in the memory image (plain file: the file offset).
        public var offset: UInt64
    }

    public struct Chunk: Codable, Sendable, Equatable {
        /// Chunk n covers bytes n * chunkSize ..< (n + 1) * chunkSize of the memory image.
        public var index: UInt64
        /// Plain: SHA-256 of the chunk. Encrypted: where its sealed record starts in the file.
        public var sha256: String?
        public var fileOffset: UInt64?
    }

    public struct Memory: Codable, Sendable, Equatable {
        public var size: UInt64
        public var regions: [Region]
        public var chunkSize: UInt64
        /// The chunks holding anything but zeros; every other chunk is zeros.
        public var chunks: [Chunk]
        /// The memory file's exact size; a shorter one is truncated.
        public var fileSize: UInt64
        /// Pages written (not zero) out of `size / 4096`.
        public var dataPages: UInt64
    }

    public var format: Int
    public var hv: String
    /// 16 random bytes, hexadecimal: binds sealed pieces to this snapshot.
    public var id: String
    public var created: String
    /// nil for a plain snapshot; else "AES-256-GCM".
    public var encryption: String?
    /// HMAC of the id under the key (encrypted snapshots): "wrong key" rather than "tampered".
    public var keyCheck: String?
    public var cpuCount: Int
    public var memory: Memory
    public var sections: [Section]
}

/// The `state` file's fixed parts.
enum StateFile {
    static let magic = Array("HVSNAP\r\n".utf8)
    /// magic, UInt32 format, UInt32 manifest length.
    static let headerSize = 16
    static let checksumSize = 32
}

extension SnapshotManifest {
    /// The 32 bytes after the manifest: SHA-256 of it, or with a key an HMAC-SHA256 under the
    /// manifest key, so that a changed section digest or chunk list is caught too.
    static func checksum(of manifest: [UInt8], key: SnapshotKey?, id: [UInt8]) -> [UInt8] {
        if let key { return Array(HMAC<SHA256>.authenticationCode(for: manifest, using: key.derived("manifest", salt: id))) }
        return Array(SHA256.hash(data: manifest))
    }
}

/// The bytes of `SavedMachine`'s parts as named sections: "machine" (counts and settings),
/// "vm", "vcpu.N", "device.KEY", "power-on.vm", "power-on.vcpu.N", and "arguments" (what
/// `hv run` was given, to build the same machine again).
enum SnapshotSections {
    static func sections(of saved: SavedMachine, arguments: [String]) -> [(name: String, bytes: [UInt8])] {
        var result: [(String, [UInt8])] = []
        var machine = StateEncoder()
        machine.write(UInt32(saved.cpuCount))
        machine.write(saved.memorySize)
        machine.write(saved.interruptController)
        machine.write(UInt32(saved.devices.count))
        for device in saved.devices { machine.write(device.key) }
        machine.write(saved.powerOnVM != nil)
        result.append(("machine", machine.bytes))
        var args = StateEncoder()
        args.write(UInt32(arguments.count))
        for argument in arguments { args.write(argument) }
        result.append(("arguments", args.bytes))
        result.append(("vm", saved.vm))
        for (index, vcpu) in saved.vcpus.enumerated() { result.append(("vcpu.\(index)", vcpu)) }
        for device in saved.devices { result.append(("device.\(device.key)", device.state)) }
        if let vm = saved.powerOnVM, let vcpus = saved.powerOnVCPUs {
            result.append(("power-on.vm", vm))
            for (index, vcpu) in vcpus.enumerated() { result.append(("power-on.vcpu.\(index)", vcpu)) }
        }
        return result
    }

    /// The sections as one migration record: a count, then each name and its bytes (a snapshot
    /// file lists them in its manifest instead).
    static func record(_ sections: [(name: String, bytes: [UInt8])]) -> [UInt8] {
        var encoder = StateEncoder()
        encoder.write(UInt32(sections.count))
        for section in sections {
            encoder.write(section.name)
            encoder.write(bytes: section.bytes)
        }
        return encoder.bytes
    }

    /// What `record` wrote, by name.
    static func sections(inRecord bytes: [UInt8]) throws(StateDecodingError) -> [String: [UInt8]] {
        var decoder = StateDecoder(bytes)
        var sections: [String: [UInt8]] = [:]
        let count = try decoder.read(UInt32.self, "section count", below: 4096)
        for _ in 0..<count {
            let name = try decoder.readString("section name")
            sections[name] = try decoder.readBytes("section \(name)")
        }
        try decoder.finish("state record")
        return sections
    }

    static func machine(from sections: [String: [UInt8]]) throws(SnapshotError) -> (saved: SavedMachine, arguments: [String]) {
        func section(_ name: String) throws(StateDecodingError) -> [UInt8] {
            guard let bytes = sections[name] else { throw StateDecodingError(field: name, problem: "the section is missing") }
            return bytes
        }
        do throws(StateDecodingError) {
            var machine = StateDecoder(try section("machine"))
            let cpus = Int(try machine.read(UInt32.self, "vCPU count", below: 1025))
            let memorySize = try machine.read(UInt64.self, "memory size")
            let irqchip = try machine.readString("interrupt controllers")
            let deviceCount = try machine.read(UInt32.self, "device count", below: 4096)
            var keys: [String] = []
            for _ in 0..<deviceCount { keys.append(try machine.readString("device key")) }
            let hasPowerOn = try machine.read(Bool.self, "power-on state")
            try machine.finish("machine")
            var args = StateDecoder(try section("arguments"))
            let count = try args.read(UInt32.self, "argument count", below: 4096)
            var arguments: [String] = []
            for _ in 0..<count { arguments.append(try args.readString("argument")) }
            try args.finish("arguments")
            var vcpus: [[UInt8]] = [], powerOnVCPUs: [[UInt8]] = []
            for index in 0..<cpus {
                vcpus.append(try section("vcpu.\(index)"))
                if hasPowerOn { powerOnVCPUs.append(try section("power-on.vcpu.\(index)")) }
            }
            var devices: [SavedMachine.Part] = []
            for key in keys { devices.append(SavedMachine.Part(key: key, state: try section("device.\(key)"))) }
            let saved = SavedMachine(cpuCount: cpus, memorySize: memorySize, interruptController: irqchip, vm: try section("vm"),
                                     vcpus: vcpus, devices: devices, powerOnVM: hasPowerOn ? try section("power-on.vm") : nil,
                                     powerOnVCPUs: hasPowerOn ? powerOnVCPUs : nil)
            return (saved, arguments)
        } catch {
            throw SnapshotError("section \(error.field.split(separator: " ").first.map(String.init) ?? "machine")", error.description)
        }
    }
}
