// Instruction sequences every demo guest needs: print over the COM1 UART and report an exit
// code through the debug-exit port.

import HVModel

extension X86Assembler {
    /// Prints the NUL-terminated string at `label` on the 16550 UART at `port` by polling: for
    /// each byte, wait until the line status register (port + 5) has THRE (bit 5) set, then
    /// write the byte to the transmit register (port + 0).
    ///
    /// Clobbers al, bl, dx, (r/e)si and the flags, and clears DF. In 64-bit code the string is
    /// found RIP-relative; in 16-bit code through DS:SI with SI = the label's address.
    public mutating func serialPrint(label: Label, port: IOPort = .com1) {
        let next = self.label("serialPrint.next")
        let waitForTransmitter = self.label("serialPrint.wait")
        let done = self.label("serialPrint.done")
        cld()
        switch codeSize {
        case .bits16: mov(Register16.si, label)
        case .bits32: mov(Register32.esi, label)
        case .bits64: lea(Register64.rsi, .label(label))
        }
        bind(next)
        lodsb()
        test(Register8.al, Register8.al)
        jz(done)
        mov(Register8.bl, Register8.al)
        mov(Register16.dx, Immediate(port.rawValue &+ 5))
        bind(waitForTransmitter)
        self.in(Register8.al, Register16.dx)
        test(Register8.al, 0x20)
        jz(waitForTransmitter)
        mov(Register16.dx, Immediate(port.rawValue))
        mov(Register8.al, Register8.bl)
        out(Register16.dx, Register8.al)
        jmp(next)
        bind(done)
    }

    /// Prints `text` on the UART: the text is placed inline (jumped over) and printed with
    /// `serialPrint(label:port:)`, with the same clobbers.
    public mutating func printString(_ text: String, port: IOPort = .com1) {
        let message = label("printString.text")
        let after = label("printString.after")
        jmp(after)
        bind(message)
        asciz(text)
        bind(after)
        serialPrint(label: message, port: port)
    }

    /// Writes `code` to the debug-exit port with a 32-bit `out` (eax = code; through dx when
    /// the port is above 0xFF). Clobbers eax (and dx). Nothing follows it: add `hlt()` if the
    /// monitor may resume the guest.
    public mutating func debugExit(code: UInt32, port: IOPort = .debugExit) {
        mov(Register32.eax, Immediate(code))
        if port.rawValue <= 0xFF {
            out(UInt8(port.rawValue), Register32.eax)
        } else {
            mov(Register16.dx, Immediate(port.rawValue))
            out(Register16.dx, Register32.eax)
        }
    }
}
