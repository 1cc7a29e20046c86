// Taking a snapshot of a machine into a directory and opening one again (Documentation/Snapshots.md).
//
//   DIR/state    magic, manifest (JSON) + checksum, sections (each with its SHA-256)
//   DIR/memory   guest RAM: plain, a sparse image of the regions end to end (zero pages are
//                holes, so the file can be mapped copy-on-write); encrypted, one sealed record
//                per chunk that holds anything but zeros
//
// A snapshot is written into a temporary directory beside DIR, synced, and only then takes
// DIR's place (renameat2 RENAME_EXCHANGE when DIR holds an older snapshot), so a kill at any
// moment leaves the old snapshot or the new one.
import Crypto
import Foundation
import HVCore
#if canImport(CKVM)
import CKVM
#endif

/// What `Snapshot.take` did, for the caller's report.
public struct SnapshotReport: Sendable {
    public var directory: String
    public var memoryBytes: UInt64
    /// 4 KiB pages written (the rest were zeros).
    public var dataPages: UInt64
    public var stateBytes: UInt64
    public var encrypted: Bool
    /// From the pause to the end of writing (the guest is paused all along).
    public var seconds: Double
}

public enum Snapshot {
    /// Chunks of guest memory are hashed (plain) or sealed (encrypted) 2 MiB at a time.
    public static let chunkSize: UInt64 = 2 << 20
    /// An encrypted memory file's record: UInt64 chunk index, UInt32 sealed length, then the sealed chunk.
    static let chunkRecordHeader = 12
    static let pageSize: UInt64 = 4096

    /// Pauses `machine` (if it runs), writes its state and memory to `directory` atomically,
    /// and lets it run again. `arguments` are what builds the same machine again (hv run's
    /// command line); they travel in the snapshot, encrypted with the rest.
    public static func take<B: Backend>(_ machine: Machine<B>, to directory: String, key: SnapshotKey?,
                                        arguments: [String]) throws(SnapshotError) -> SnapshotReport {
        let started = Date()
        let wasRunning = machine.state == .running
        do throws(HVError) { if wasRunning { try machine.pause() } } catch { throw SnapshotError("VM", error.description) }
        defer { if wasRunning { try? machine.resume() } }
        let saved: SavedMachine
        do throws(HVError) { saved = try machine.saveMachine() } catch { throw SnapshotError("VM", error.description) }
        var report = try write(saved, memory: machine.memory, arguments: arguments, to: directory, key: key)
        report.seconds = Date().timeIntervalSince(started)
        return report
    }

    /// Writes `saved` and `memory` as a snapshot in `directory` (replacing an older snapshot
    /// there atomically). The machine must stay paused while this runs.
    public static func write(_ saved: SavedMachine, memory: GuestMemory, arguments: [String], to directory: String,
                             key: SnapshotKey?) throws(SnapshotError) -> SnapshotReport {
        let target = URL(fileURLWithPath: directory).standardizedFileURL.path
        let parent = (target as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: target, isDirectory: &isDirectory) {
            guard isDirectory.boolValue, FileManager.default.fileExists(atPath: target + "/state") else {
                throw SnapshotError(target, "exists and is not a snapshot; give a new path or an older snapshot's directory")
            }
        }
        guard FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw SnapshotError(target, "its parent directory \(parent) does not exist")
        }
        let id = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let temporary = "\(target).tmp-\(getpid())-\(hexString(id.prefix(4)))"
        guard mkdir(temporary, 0o700) == 0 else { throw SnapshotError(temporary, "cannot be created: \(String(cString: strerror(errno)))") }
        var published = false
        defer { if !published { try? FileManager.default.removeItem(atPath: temporary) } }

        let image = MemoryImage(memory)
        let memoryManifest = try writeMemory(image, to: temporary + "/memory", key: key, id: id)
        let sections = SnapshotSections.sections(of: saved, arguments: arguments)
        var stored: [SnapshotManifest.Section] = []
        var body: [UInt8] = []
        for section in sections {
            let bytes = try key.map { (key) throws(SnapshotError) in
                try Sealing.seal(section.bytes, key: key.derived("section", salt: id), context: id + Array(section.name.utf8))
            } ?? section.bytes
            stored.append(SnapshotManifest.Section(name: section.name, offset: UInt64(body.count), length: UInt64(bytes.count),
                                                   sha256: hexString(SHA256.hash(data: bytes))))
            body += bytes
        }
        let manifest = SnapshotManifest(
            format: SnapshotManifest.currentFormat, hv: SnapshotManifest.currentHV, id: hexString(id),
            created: ISO8601DateFormatter().string(from: Date()), encryption: key == nil ? nil : "AES-256-GCM",
            keyCheck: key.map { hexString($0.check(salt: id)) }, cpuCount: saved.cpuCount, memory: memoryManifest, sections: stored)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let json: [UInt8]
        do { json = Array(try encoder.encode(manifest)) } catch { throw SnapshotError("manifest", "cannot be encoded: \(error)") }
        var header = StateEncoder()
        header.write(UInt32(SnapshotManifest.currentFormat))
        header.write(UInt32(json.count))
        let state = StateFile.magic + header.bytes + json + SnapshotManifest.checksum(of: json, key: key, id: id) + body
        try writeFile(temporary + "/state", state)
        try syncPath(temporary)
        // The new snapshot takes the old one's place in one step, or takes the free name.
        if FileManager.default.fileExists(atPath: target) {
            guard hv_rename_exchange(temporary, target) == 0 else {
                throw SnapshotError(target, "cannot be replaced: \(String(cString: strerror(errno)))")
            }
            // `temporary` now holds the old snapshot: the deferred removal takes it away.
        } else {
            guard rename(temporary, target) == 0 else { throw SnapshotError(target, "cannot be created: \(String(cString: strerror(errno)))") }
            published = true
        }
        try syncPath(parent)
        return SnapshotReport(directory: target, memoryBytes: memory.size, dataPages: memoryManifest.dataPages,
                              stateBytes: UInt64(state.count), encrypted: key != nil, seconds: 0)
    }

    /// Guest RAM into `path`: the plain sparse image, or sealed chunk records.
    private static func writeMemory(_ image: MemoryImage, to path: String, key: SnapshotKey?, id: [UInt8]) throws(SnapshotError) -> SnapshotManifest.Memory {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw SnapshotError(path, "cannot be created: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var chunks: [SnapshotManifest.Chunk] = []
        var dataPages: UInt64 = 0
        var fileOffset: UInt64 = 0
        let memoryKey = key?.derived("memory", salt: id)
        var buffer = [UInt8](repeating: 0, count: Int(chunkSize))
        for index in 0..<image.chunkCount(chunkSize) {
            let start = index * chunkSize, length = min(chunkSize, image.size - start)
            var chunkPages: UInt64 = 0
            // Page by page: a zero page is skipped (a hole in the plain file).
            var page = start
            while page < start + length {
                let pointer = image.pointer(at: page)
                if !isZeroPage(pointer) {
                    chunkPages += 1
                    if memoryKey == nil { try writeAll(descriptor, UnsafeRawBufferPointer(start: pointer, count: Int(pageSize)), at: page, path: path) }
                }
                page += pageSize
            }
            guard chunkPages > 0 else { continue }
            dataPages += chunkPages
            image.copy(from: start, count: Int(length), into: &buffer)
            let bytes = buffer.prefix(Int(length))
            if let memoryKey {
                let sealed = try Sealing.seal(bytes, key: memoryKey, context: Sealing.context(id, index))
                var record = StateEncoder()
                record.write(index)
                record.write(UInt32(sealed.count))
                let full = record.bytes + sealed
                try writeAll(descriptor, full, at: fileOffset, path: path)
                chunks.append(SnapshotManifest.Chunk(index: index, sha256: nil, fileOffset: fileOffset))
                fileOffset += UInt64(full.count)
            } else {
                chunks.append(SnapshotManifest.Chunk(index: index, sha256: hexString(SHA256.hash(data: bytes)), fileOffset: nil))
            }
        }
        let fileSize = memoryKey == nil ? image.size : fileOffset
        guard ftruncate(descriptor, off_t(fileSize)) == 0, fsync(descriptor) == 0 else {
            throw SnapshotError(path, "cannot be completed: \(String(cString: strerror(errno)))")
        }
        return SnapshotManifest.Memory(size: image.size, regions: image.manifestRegions, chunkSize: chunkSize, chunks: chunks,
                                       fileSize: fileSize, dataPages: dataPages)
    }

    /// A page of zeros to compare with: libc's `memcmp` is vectorised, and fast in a debug
    /// build too (a 2 GiB guest is half a million pages). Never written after it is made.
    nonisolated(unsafe) private static let zeroPage = UnsafeMutableRawPointer.allocate(byteCount: Int(pageSize), alignment: 4096)
        .initializeMemory(as: UInt8.self, repeating: 0, count: Int(pageSize))

    static func isZeroPage(_ pointer: UnsafeRawPointer) -> Bool {
        memcmp(pointer, zeroPage, Int(pageSize)) == 0
    }

    static func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: String) throws(SnapshotError) {
        var done = 0
        while done < bytes.count {
            let written = pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { throw SnapshotError(path, "write failed: \(String(cString: strerror(errno)))") }
            done += written
        }
    }

    static func writeAll(_ descriptor: Int32, _ bytes: [UInt8], at offset: UInt64, path: String) throws(SnapshotError) {
        let failure: Int32? = bytes.withUnsafeBytes { raw in
            do throws(SnapshotError) { try writeAll(descriptor, raw, at: offset, path: path) } catch { return errno == 0 ? EIO : errno }
            return nil
        }
        if let failure { throw SnapshotError(path, "write failed: \(String(cString: strerror(failure)))") }
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) throws(SnapshotError) {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw SnapshotError(path, "cannot be created: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        try writeAll(descriptor, bytes, at: 0, path: path)
        guard fsync(descriptor) == 0 else { throw SnapshotError(path, "cannot be synced: \(String(cString: strerror(errno)))") }
    }

    /// fsync of a directory: its entries (a new file, a rename) are on disk.
    static func syncPath(_ path: String) throws(SnapshotError) {
        let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { throw SnapshotError(path, "cannot be opened to sync: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        guard fsync(descriptor) == 0 else { throw SnapshotError(path, "cannot be synced: \(String(cString: strerror(errno)))") }
    }
}

/// Guest RAM as one run of bytes: the regions end to end, in guest-address order (the memory
/// file's layout).
struct MemoryImage {
    struct Piece {
        let offset: UInt64
        let size: UInt64
        let host: UnsafeMutableRawPointer
        let guestAddress: UInt64
    }

    let pieces: [Piece]
    let size: UInt64

    init(_ memory: GuestMemory) {
        var offset: UInt64 = 0
        var pieces: [Piece] = []
        for region in memory.regions {
            pieces.append(Piece(offset: offset, size: region.size, host: region.hostAddress, guestAddress: region.guestAddress.rawValue))
            offset += region.size
        }
        self.pieces = pieces
        size = offset
    }

    var manifestRegions: [SnapshotManifest.Region] {
        pieces.map { SnapshotManifest.Region(guestAddress: $0.guestAddress, size: $0.size, offset: $0.offset) }
    }

    func chunkCount(_ chunk: UInt64) -> UInt64 { (size + chunk - 1) / chunk }

    /// The host address of image byte `offset` (< size). Regions are page multiples, so a page
    /// never straddles two.
    func pointer(at offset: UInt64) -> UnsafeMutableRawPointer {
        let piece = pieces.last { $0.offset <= offset }!
        return piece.host + Int(offset - piece.offset)
    }

    /// `count` bytes from image offset `start` (possibly across regions) into `buffer`.
    func copy(from start: UInt64, count: Int, into buffer: inout [UInt8]) {
        buffer.withUnsafeMutableBytes { target in
            var done = 0
            while done < count {
                let offset = start + UInt64(done)
                let piece = pieces.last { $0.offset <= offset }!
                let run = min(count - done, Int(piece.offset + piece.size - offset))
                target.baseAddress!.advanced(by: done).copyMemory(from: piece.host + Int(offset - piece.offset), byteCount: run)
                done += run
            }
        }
    }

    /// The reverse: `bytes` into the image at `start`.
    func store(_ bytes: UnsafeRawBufferPointer, at start: UInt64) {
        var done = 0
        while done < bytes.count {
            let offset = start + UInt64(done)
            let piece = pieces.last { $0.offset <= offset }!
            let run = min(bytes.count - done, Int(piece.offset + piece.size - offset))
            (piece.host + Int(offset - piece.offset)).copyMemory(from: bytes.baseAddress! + done, byteCount: run)
            done += run
        }
    }
}
