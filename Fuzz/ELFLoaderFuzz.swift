// libFuzzer target: `GuestImage.elf` on arbitrary bytes must return an image or throw a
// `LoaderError`, never trap (bounds, overflow) or allocate beyond guest memory.
// Built and run by scripts/fuzz-loaders.sh, compiled together with the HVGuest sources.

@_cdecl("LLVMFuzzerTestOneInput")
public func elfLoaderFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // unsafe: libFuzzer hands a raw buffer; it is copied once into a Swift array.
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let image = try? GuestImage.elf(bytes, memorySize: 4 << 20) {
        precondition(image.chunks.allSatisfy { $0.address.rawValue + $0.size <= 4 << 20 })
    }
    return 0
}
