// libFuzzer target: `GuestImage.pvh` on arbitrary bytes (ELF headers, PT_NOTE walks, the start
// info and initrd placement) must return an image or throw a `LoaderError`, never trap.
// Built and run by scripts/fuzz-loaders.sh, compiled together with the HVGuest sources.

@_cdecl("LLVMFuzzerTestOneInput")
public func pvhLoaderFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // unsafe: libFuzzer hands a raw buffer; it is copied once into a Swift array.
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // The last input byte, when present, also sizes an initrd so its placement is fuzzed too.
    let initrd = size > 0 ? [UInt8](repeating: 0, count: Int(bytes[size - 1]) << 12) : nil
    if let image = try? GuestImage.pvh(bytes, commandLine: "console=ttyS0", initrd: initrd, rsdpAddress: 0xE_0000,
                                       memorySize: 4 << 20) {
        precondition(image.chunks.allSatisfy { $0.address.rawValue + $0.size <= 4 << 20 })
        precondition(image.registers.rbx == GuestImage.pvhStartInfoAddress)
    }
    return 0
}
