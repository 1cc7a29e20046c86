// Opening a snapshot: every check before anything is built (Documentation/Snapshots.md,
// "What a restore refuses"), then guest memory mapped or decrypted.
import Crypto
import Foundation
import HVCore

/// A snapshot directory whose state file was read, checked and (when encrypted) opened.
public final class SnapshotReader: Sendable {
    public let directory: String
    public let manifest: SnapshotManifest
    public let saved: SavedMachine
    /// What `hv run` was given when the snapshot's VM was started.
    public let arguments: [String]
    private let key: SnapshotKey?
    private let id: [UInt8]

    /// Reads `directory/state`: the magic, the format and HV versions, the manifest's checksum
    /// (its HMAC under `key` when encrypted: a wrong key and an altered manifest are told
    /// apart), each section's SHA-256, then the sections' contents; and checks the memory
    /// file's size. Throws at the first problem, naming it.
    public init(directory: String, key: SnapshotKey?) throws(SnapshotError) {
        self.directory = directory
        let path = directory + "/state"
        guard let data = FileManager.default.contents(atPath: path) else {
            var isDirectory: ObjCBool = false
            if !FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) { throw SnapshotError(directory, "no such snapshot directory") }
            throw SnapshotError(path, "cannot be read (not a complete snapshot: the state file is written last)")
        }
        let bytes = [UInt8](data)
        guard bytes.count >= StateFile.headerSize + StateFile.checksumSize, Array(bytes.prefix(8)) == StateFile.magic else {
            throw SnapshotError(path, "is not an HV snapshot state file (no HVSNAP magic)")
        }
        var header = StateDecoder(Array(bytes[8..<16]))
        let format: UInt32, manifestLength: UInt32
        do throws(StateDecodingError) {
            format = try header.read(UInt32.self, "format")
            manifestLength = try header.read(UInt32.self, "manifest length")
        } catch { throw SnapshotError(path, error.description) }
        guard format == SnapshotManifest.currentFormat else {
            throw SnapshotError(path, "is snapshot format \(format); this HV (\(SnapshotManifest.currentHV)) reads format \(SnapshotManifest.currentFormat) only")
        }
        let manifestEnd = StateFile.headerSize + Int(manifestLength)
        guard manifestEnd + StateFile.checksumSize <= bytes.count else { throw SnapshotError(path, "is truncated inside its manifest") }
        let json = Array(bytes[StateFile.headerSize..<manifestEnd])
        let stored = Array(bytes[manifestEnd..<(manifestEnd + StateFile.checksumSize)])
        let manifest: SnapshotManifest
        do { manifest = try JSONDecoder().decode(SnapshotManifest.self, from: Data(json)) } catch {
            throw SnapshotError("\(path) manifest", "is not a valid manifest (corrupted?): \(error)")
        }
        guard let id = SnapshotKey.hexBytes(manifest.id), id.count == 16 else { throw SnapshotError("\(path) manifest", "has no valid id") }
        if manifest.encryption != nil {
            guard let key else {
                throw SnapshotError(directory, "is encrypted (\(manifest.encryption ?? "")); give its key (--key-file FILE or $\(SnapshotKey.environmentVariable))")
            }
            guard manifest.keyCheck == hexString(key.check(salt: id)) else {
                throw SnapshotError("key", "is not the key this snapshot was written with")
            }
        } else if key != nil {
            throw SnapshotError(directory, "is not encrypted, but a key was given; leave the key out to restore a plain snapshot")
        }
        guard SnapshotManifest.checksum(of: json, key: key, id: id) == stored else {
            throw SnapshotError("\(path) manifest", key == nil ? "does not match its SHA-256 (corrupted)" : "does not match its HMAC (altered)")
        }
        guard manifest.hv == SnapshotManifest.currentHV else {
            throw SnapshotError(directory, "was written by HV \(manifest.hv); this is HV \(SnapshotManifest.currentHV), whose device and vCPU encodings may differ")
        }
        let bodyStart = manifestEnd + StateFile.checksumSize
        var sections: [String: [UInt8]] = [:]
        for section in manifest.sections {
            let (end, overflow) = section.offset.addingReportingOverflow(section.length)
            guard !overflow, UInt64(bodyStart) + end <= UInt64(bytes.count) else {
                throw SnapshotError("section \(section.name)", "lies past the end of the state file (truncated)")
            }
            let start = bodyStart + Int(section.offset)
            let content = Array(bytes[start..<(start + Int(section.length))])
            guard hexString(SHA256.hash(data: content)) == section.sha256 else {
                throw SnapshotError("section \(section.name)", "does not match its SHA-256 (corrupted or altered)")
            }
            sections[section.name] = try key.map { (key) throws(SnapshotError) in
                try Sealing.open(content, key: key.derived("section", salt: id), context: id + Array(section.name.utf8), what: "section \(section.name)")
            } ?? content
        }
        let (saved, arguments) = try SnapshotSections.machine(from: sections)
        // The memory file must be whole before anything maps it.
        var status = stat()
        guard stat(directory + "/memory", &status) == 0 else { throw SnapshotError(directory + "/memory", "is missing") }
        guard UInt64(status.st_size) == manifest.memory.fileSize else {
            throw SnapshotError(directory + "/memory", "is \(status.st_size) bytes; the snapshot wrote \(manifest.memory.fileSize) (truncated or replaced)")
        }
        let regions = GuestMemory.pcRegions(size: saved.memorySize)
        guard manifest.memory.size == saved.memorySize,
              manifest.memory.regions.map({ ($0.guestAddress, $0.size) }).elementsEqual(regions, by: { $0 == $1 }) else {
            throw SnapshotError("\(path) manifest", "its memory layout does not match the machine's \(saved.memorySize) bytes")
        }
        self.manifest = manifest
        self.saved = saved
        self.arguments = arguments
        self.key = key
        self.id = id
    }

    /// Guest RAM for `Machine(configuration:backend:memory:)`. A plain snapshot's memory file
    /// is mapped copy-on-write (`MAP_PRIVATE`): nothing is read until the guest touches it,
    /// unless `verify`, which hashes every chunk that holds data against the manifest first.
    /// An encrypted one is read and decrypted, chunk by chunk, into fresh memory.
    public func memory(verify: Bool = true, hugePages: Bool = false) throws(SnapshotError) -> GuestMemory {
        let path = directory + "/memory"
        let chunkSize = manifest.memory.chunkSize
        guard chunkSize > 0, chunkSize % Snapshot.pageSize == 0 else { throw SnapshotError("\(directory)/state manifest", "chunk size \(chunkSize) is not a page multiple") }
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw SnapshotError(path, "cannot be opened: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        let memory: GuestMemory
        do throws(GuestMemoryError) {
            if manifest.encryption == nil {
                memory = try GuestMemory(regions: manifest.memory.regions.map { (region) throws(GuestMemoryError) in
                    try MemoryRegion(guestAddress: GuestPhysicalAddress(region.guestAddress), size: region.size, file: descriptor, offset: region.offset)
                })
            } else {
                memory = try GuestMemory.pcLayout(size: manifest.memory.size, hugePages: hugePages)
            }
        } catch { throw SnapshotError(path, "cannot be mapped: \(error)") }
        let image = MemoryImage(memory)
        var seen = Set<UInt64>()
        if let key {
            let memoryKey = key.derived("memory", salt: id)
            var header = [UInt8](repeating: 0, count: Snapshot.chunkRecordHeader)
            for chunk in manifest.memory.chunks {
                let what = "memory chunk \(chunk.index)"
                guard chunk.index < image.chunkCount(chunkSize), seen.insert(chunk.index).inserted, let offset = chunk.fileOffset else {
                    throw SnapshotError("\(directory)/state manifest", "\(what) is listed twice, out of range or without its place")
                }
                try readAll(descriptor, &header, at: offset, path: path)
                var decoder = StateDecoder(header)
                let index: UInt64, length: UInt32
                do throws(StateDecodingError) {
                    index = try decoder.read(UInt64.self, "index")
                    length = try decoder.read(UInt32.self, "length")
                } catch { throw SnapshotError(what, error.description) }
                let expected = min(chunkSize, image.size - chunk.index * chunkSize)
                guard index == chunk.index, UInt64(length) == expected + UInt64(Sealing.overhead) else {
                    throw SnapshotError(what, "its record header does not match the manifest (altered)")
                }
                var sealed = [UInt8](repeating: 0, count: Int(length))
                try readAll(descriptor, &sealed, at: offset + UInt64(Snapshot.chunkRecordHeader), path: path)
                let plain = try Sealing.open(sealed, key: memoryKey, context: Sealing.context(id, index), what: what)
                plain.withUnsafeBytes { image.store($0, at: index * chunkSize) }
            }
        } else if verify {
            var buffer = [UInt8](repeating: 0, count: Int(chunkSize))
            for chunk in manifest.memory.chunks {
                guard chunk.index < image.chunkCount(chunkSize), seen.insert(chunk.index).inserted, let digest = chunk.sha256 else {
                    throw SnapshotError("\(directory)/state manifest", "memory chunk \(chunk.index) is listed twice, out of range or without its digest")
                }
                let length = Int(min(chunkSize, image.size - chunk.index * chunkSize))
                image.copy(from: chunk.index * chunkSize, count: length, into: &buffer)
                guard hexString(SHA256.hash(data: buffer.prefix(length))) == digest else {
                    throw SnapshotError("memory chunk \(chunk.index) (guest bytes \(chunk.index * chunkSize)...)", "does not match its SHA-256 (corrupted)")
                }
            }
        }
        return memory
    }

    private func readAll(_ descriptor: Int32, _ buffer: inout [UInt8], at offset: UInt64, path: String) throws(SnapshotError) {
        let count = buffer.count
        let got = buffer.withUnsafeMutableBytes { raw -> Int in
            var done = 0
            while done < count {
                let read = pread(descriptor, raw.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                if read < 0, errno == EINTR { continue }
                if read <= 0 { break }
                done += read
            }
            return done
        }
        guard got == count else { throw SnapshotError(path, "ends early at offset \(offset + UInt64(got)) (truncated)") }
    }
}
