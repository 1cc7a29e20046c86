// The demo guest, as `hv demo --write-image` wrote it at build time (HVGuest's GuestImage file
// layout) and the build embedded it: read back into HVModel's register types, every length
// checked against the bytes there are.
import HVModel

struct GuestImageFile {
    struct Chunk {
        var address: UInt64
        var zeroFill: UInt64
        var bytes: UnsafeRawBufferPointer
    }

    var memorySize: UInt64
    var registers = Registers()
    var special = SpecialRegisters()
    var chunks: [Chunk] = []

    /// Reads the file in `bytes`, or says what is wrong with it.
    static func read(_ bytes: UnsafeRawBufferPointer) -> Result<GuestImageFile, GuestImageFileError> {
        var offset = 0
        func take(_ count: Int) -> UnsafeRawBufferPointer? {
            guard count >= 0, offset + count <= bytes.count else { return nil }
            defer { offset += count }
            return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
        }
        func value<T: FixedWidthInteger>(_ type: T.Type) -> T? {
            guard let slice = take(MemoryLayout<T>.size) else { return nil }
            var result: T = 0
            for index in 0..<MemoryLayout<T>.size { result |= T(slice[index]) << (8 * index) }
            return result
        }
        guard let magic = take(8), Array(magic) == Array("HVGIMG01".utf8) else { return .failure(.notAnImage) }
        guard let memorySize = value(UInt64.self), let rip = value(UInt64.self), let rsp = value(UInt64.self),
              let rflags = value(UInt64.self) else { return .failure(.truncated) }
        var image = GuestImageFile(memorySize: memorySize)
        image.registers.rip = rip
        image.registers.rsp = rsp
        image.registers.rflags = rflags
        var segments: [Segment] = []
        for _ in 0..<8 {
            guard let base = value(UInt64.self), let limit = value(UInt32.self), let selector = value(UInt16.self),
                  let attributes = value(UInt16.self) else { return .failure(.truncated) }
            segments.append(Segment(selector: selector, base: base, limit: limit, svmAttributes: attributes))
        }
        image.special.cs = segments[0]; image.special.ds = segments[1]; image.special.es = segments[2]
        image.special.fs = segments[3]; image.special.gs = segments[4]; image.special.ss = segments[5]
        image.special.tr = segments[6]; image.special.ldt = segments[7]
        guard let gdtBase = value(UInt64.self), let gdtLimit = value(UInt16.self),
              let idtBase = value(UInt64.self), let idtLimit = value(UInt16.self),
              let cr0 = value(UInt64.self), let cr3 = value(UInt64.self), let cr4 = value(UInt64.self), let efer = value(UInt64.self),
              let count = value(UInt32.self) else { return .failure(.truncated) }
        image.special.gdt = DescriptorTable(base: gdtBase, limit: gdtLimit)
        image.special.idt = DescriptorTable(base: idtBase, limit: idtLimit)
        image.special.cr0 = cr0
        image.special.cr3 = cr3
        image.special.cr4 = cr4
        image.special.efer = efer
        for _ in 0..<count {
            guard let address = value(UInt64.self), let zeroFill = value(UInt64.self), let length = value(UInt32.self),
                  let contents = take(Int(length)) else { return .failure(.truncated) }
            let (end, overflow) = address.addingReportingOverflow(UInt64(length))
            guard !overflow, end <= memorySize, zeroFill <= memorySize - end else { return .failure(.chunkOutsideMemory(address)) }
            image.chunks.append(Chunk(address: address, zeroFill: zeroFill, bytes: contents))
        }
        return .success(image)
    }

    /// The chunks into guest RAM at `ram` (guest-physical 0), zero fill included.
    func load(into ram: UnsafeMutableRawPointer) {
        for chunk in chunks {
            if let base = chunk.bytes.baseAddress { (ram + Int(chunk.address)).copyMemory(from: base, byteCount: chunk.bytes.count) }
            (ram + Int(chunk.address) + chunk.bytes.count).initializeMemory(as: UInt8.self, repeating: 0, count: Int(chunk.zeroFill))
        }
    }
}

enum GuestImageFileError: Error {
    case notAnImage, truncated
    case chunkOutsideMemory(UInt64)

    var description: String {
        switch self {
        case .notAnImage: "not a guest image file (no HVGIMG01 magic)"
        case .truncated: "the guest image file ends early"
        case .chunkOutsideMemory(let address): "a chunk at \(hex(address)) does not fit the guest's memory"
        }
    }
}
