// A guest image as one file of bytes, for a VMM that cannot run HV's assembler itself: the
// bare-metal image embeds the demo guest this way (Documentation/BareMetal.md). Little-endian:
//
//   "HVGIMG01", memory size (u64), RIP, RSP, RFLAGS (u64 each),
//   CS, DS, ES, FS, GS, SS, TR, LDTR (each: base u64, limit u32, selector u16, SVM attributes u16),
//   GDTR and IDTR (base u64, limit u16), CR0, CR3, CR4, EFER (u64 each),
//   chunk count (u32), then per chunk: address (u64), zero fill (u64), length (u32), the bytes.
import HVModel

extension GuestImage {
    public static let fileMagic = Array("HVGIMG01".utf8)

    /// The image in the file layout above, for a VM of `memorySize` bytes.
    public func fileBytes(memorySize: UInt64) -> [UInt8] {
        var bytes = Self.fileMagic
        func put<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
        put(memorySize)
        put(registers.rip)
        put(registers.rsp)
        put(registers.rflags)
        let special = specialRegisters
        for segment in [special.cs, special.ds, special.es, special.fs, special.gs, special.ss, special.tr, special.ldt] {
            put(segment.base)
            put(segment.limit)
            put(segment.selector)
            put(segment.svmAttributes)
        }
        for table in [special.gdt, special.idt] {
            put(table.base)
            put(table.limit)
        }
        for value in [special.cr0, special.cr3, special.cr4, special.efer] { put(value) }
        put(UInt32(chunks.count))
        for chunk in chunks {
            put(chunk.address.rawValue)
            put(chunk.zeroFill)
            put(UInt32(chunk.bytes.count))
            bytes += chunk.bytes
        }
        return bytes
    }
}
