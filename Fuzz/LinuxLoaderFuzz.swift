// libFuzzer target: `GuestImage.linux` on arbitrary bytes (with a command line and an initrd)
// must return an image or throw a `LoaderError`, never trap.
// Built and run by scripts/fuzz-loaders.sh, compiled together with the HVGuest sources.

@_cdecl("LLVMFuzzerTestOneInput")
public func linuxLoaderFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // unsafe: libFuzzer hands a raw buffer; it is copied once into a Swift array.
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let image = try? GuestImage.linux(bytes, commandLine: "console=ttyS0", initrd: [1, 2, 3], memorySize: 32 << 20) {
        precondition(image.registers.rsi == GuestImage.linuxZeroPageAddress)
        precondition(image.chunks.allSatisfy { $0.address.rawValue + $0.size <= 32 << 20 })
    }
    return 0
}
