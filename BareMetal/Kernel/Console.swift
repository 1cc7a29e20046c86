// COM1, the 16550 UART at port 0x3F8 that QEMU, Bochs and PCs have: programmed for 115200 baud,
// 8 data bits, no parity, one stop bit (the 16550's registers: the National Semiconductor
// PC16550D data sheet). print() reaches it through putchar (Support/runtime.c).
import BareMetalSupport
import HVModel

enum Console {
    static let port: IOPort = 0x3F8

    static func initialise() {
        let base = port.rawValue
        hv_outb(base + 1, 0x00)  // IER: no interrupts
        hv_outb(base + 3, 0x80)  // LCR: DLAB, to set the divisor
        hv_outb(base + 0, 0x01)  // divisor 1: 115200 baud
        hv_outb(base + 1, 0x00)
        hv_outb(base + 3, 0x03)  // LCR: 8N1
        hv_outb(base + 2, 0xC7)  // FCR: FIFOs on and cleared
        hv_outb(base + 4, 0x03)  // MCR: DTR, RTS
    }
}

/// QEMU's isa-debug-exit device at port 0xF4: a 32-bit write of `code` ends QEMU with status
/// `(code << 1) | 1`. Elsewhere (a PC, Bochs) nothing listens, and the CPU halts.
enum DebugExit {
    static let port: IOPort = 0xF4

    static func leave(code: UInt32) -> Never {
        hv_outl(port.rawValue, code)
        // Bochs ends on "Shutdown" written to port 0x8900.
        for byte in "Shutdown".utf8 { hv_outb(0x8900, byte) }
        hv_halt_forever()
        while true {}
    }
}
