// libFuzzer target: `GuestImage.multiboot` on arbitrary bytes (with a command line and one
// module) must return an image or throw a `LoaderError`, never trap.
// Built and run by scripts/fuzz-loaders.sh, compiled together with the HVGuest sources.

@_cdecl("LLVMFuzzerTestOneInput")
public func multibootLoaderFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // unsafe: libFuzzer hands a raw buffer; it is copied once into a Swift array.
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let module = MultibootModule(name: "env", bytes: Array("KEY=VALUE\n".utf8))
    if let image = try? GuestImage.multiboot(bytes, name: "kernel", arguments: "a b", modules: [module],
                                             memorySize: 4 << 20) {
        precondition(image.registers.rax == 0x2BAD_B002 && image.registers.rbx == GuestImage.multibootInfoAddress)
        precondition(image.chunks.allSatisfy { $0.address.rawValue + $0.size <= 4 << 20 })
    }
    return 0
}
