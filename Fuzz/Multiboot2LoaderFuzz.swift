// libFuzzer target: `GuestImage.multiboot2` on arbitrary bytes (the header search, the tag walk,
// the address tag, ELF program headers, the boot information) must return an image or throw a
// `LoaderError`, never trap. Built and run by scripts/fuzz-loaders.sh with the HVGuest sources.

@_cdecl("LLVMFuzzerTestOneInput")
public func multiboot2LoaderFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // unsafe: libFuzzer hands a raw buffer; it is copied once into a Swift array.
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let rsdp = Array("RSD PTR ".utf8) + [UInt8](repeating: 0, count: 28)
    let modules = [MultibootModule(name: "env", bytes: [1, 2, 3])]
    if let image = try? GuestImage.multiboot2(bytes, commandLine: "console=ttyS0", modules: modules, rsdp: rsdp,
                                              memorySize: 4 << 20) {
        precondition(image.chunks.allSatisfy { $0.address.rawValue + $0.size <= 4 << 20 })
        precondition(image.registers.rbx == GuestImage.multiboot2InfoAddress)
    }
    return 0
}
