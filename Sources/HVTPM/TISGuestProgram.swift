// A tiny long-mode guest that talks to the TPM the way a TIS driver does (PTP 5.6.12,
// "Command Send/Receive" flow), for tests and demos: request locality 0, commandReady, write
// the command into the FIFO, tpmGo, wait for dataAvail, read the response.
import HVGuest
import HVModel

/// Guests that drive the TIS interface.
public enum TISGuestProgram {
    /// Sends TPM2_Startup(CLEAR) and TPM2_GetRandom(8) through locality 0 of the TIS window at
    /// `base` and prints on COM1:
    ///
    /// ```
    /// TPM2_Startup rc=00000000
    /// TPM2_GetRandom rc=00000000 bytes=0008 3A5F...
    /// ```
    ///
    /// then exits through the debug-exit port with code 0.
    public static func startupAndGetRandom(base: UInt64 = TISInterface.baseAddress) throws(AssemblerError) -> GuestProgram {
        try GuestProgram.longMode { asm throws(AssemblerError) in
            let startupCommand = asm.label("startup")
            let randomCommand = asm.label("getRandom")
            let sendCommand = asm.label("sendCommand")
            let readHeader = asm.label("readHeader")
            let printHex = asm.label("printHex")
            let done = asm.label("done")

            // r14 holds the window: the printing helpers clobber rbx.
            asm.mov(Register64.r14, Immediate(base))
            // Request locality 0 and wait until it is active (TPM_ACCESS_0.activeLocality).
            asm.mov(.byte, .at(Register64.r14, 0x00), 0x02)
            let waitLocality = asm.label("waitLocality")
            asm.bind(waitLocality)
            asm.mov(Register8.al, .at(Register64.r14, 0x00))
            asm.test(Register8.al, 0x20)
            asm.jz(waitLocality)

            // TPM2_Startup(CLEAR): the header is all a caller needs.
            asm.lea(Register64.rdi, .label(startupCommand))
            asm.mov(Register32.ecx, 12)
            asm.call(sendCommand)
            asm.call(readHeader)
            asm.printString("TPM2_Startup rc=")
            asm.mov(Register32.ecx, 8)
            asm.call(printHex)

            // TPM2_GetRandom(8): header, TPM2B size, the bytes.
            asm.lea(Register64.rdi, .label(randomCommand))
            asm.mov(Register32.ecx, 12)
            asm.call(sendCommand)
            asm.call(readHeader)
            asm.printString("\nTPM2_GetRandom rc=")
            asm.mov(Register32.ecx, 8)
            asm.call(printHex)
            asm.printString(" bytes=")
            asm.mov(Register8.al, .at(Register64.r14, 0x24))
            asm.mov(Register8.r8b, Register8.al)
            asm.shl(Register32.r8d, 8)
            asm.mov(Register8.al, .at(Register64.r14, 0x24))
            asm.mov(Register8.r8b, Register8.al)
            asm.shl(Register32.r8d, 16)
            asm.mov(Register32.ecx, 4)
            asm.call(printHex)
            asm.printString(" ")
            // The random bytes, while TPM_STS.dataAvail says there are more.
            let nextByte = asm.label("nextByte")
            asm.bind(nextByte)
            asm.mov(Register32.eax, .at(Register64.r14, 0x18))
            asm.test(Register8.al, 0x10)
            asm.jz(done)
            asm.mov(Register8.al, .at(Register64.r14, 0x24))
            asm.mov(Register8.r8b, Register8.al)
            asm.shl(Register32.r8d, 24)
            asm.mov(Register32.ecx, 2)
            asm.call(printHex)
            asm.jmp(nextByte)
            asm.bind(done)
            asm.printString("\n")
            asm.debugExit(code: 0)
            asm.hlt()

            // sendCommand: rdi = frame, ecx = length. commandReady, bytes into the FIFO, tpmGo,
            // then wait for dataAvail (TPM_STS bit 4).
            asm.bind(sendCommand)
            asm.mov(.byte, .at(Register64.r14, 0x18), 0x40)
            let nextCommandByte = asm.label("nextCommandByte")
            asm.bind(nextCommandByte)
            asm.mov(Register8.al, .at(Register64.rdi, 0))
            asm.mov(.at(Register64.r14, 0x24), Register8.al)
            asm.inc(Register64.rdi)
            asm.dec(Register32.ecx)
            asm.jnz(nextCommandByte)
            asm.mov(.byte, .at(Register64.r14, 0x18), 0x20)
            let waitData = asm.label("waitData")
            asm.bind(waitData)
            asm.mov(Register32.eax, .at(Register64.r14, 0x18))
            asm.test(Register8.al, 0x10)
            asm.jz(waitData)
            asm.ret()

            // readHeader: reads the 10-byte response header; r8d = response code (bytes 6-9).
            asm.bind(readHeader)
            asm.mov(Register32.ecx, 10)
            let nextHeaderByte = asm.label("nextHeaderByte")
            asm.bind(nextHeaderByte)
            asm.xor(Register32.eax, Register32.eax)
            asm.mov(Register8.al, .at(Register64.r14, 0x24))
            asm.shl(Register32.r8d, 8)
            asm.or(Register32.r8d, Register32.eax)
            asm.dec(Register32.ecx)
            asm.jnz(nextHeaderByte)
            asm.ret()

            // printHex: prints the top ecx hex digits of r8d on COM1.
            asm.bind(printHex)
            let nextDigit = asm.label("nextDigit")
            let isDecimal = asm.label("isDecimal")
            let waitTransmitter = asm.label("waitTransmitter")
            asm.bind(nextDigit)
            asm.mov(Register32.eax, Register32.r8d)
            asm.shr(Register32.eax, 28)
            asm.shl(Register32.r8d, 4)
            asm.cmp(Register8.al, 10)
            asm.jb(isDecimal)
            asm.add(Register8.al, Immediate(UInt8(ascii: "A") - 10 - UInt8(ascii: "0")))
            asm.bind(isDecimal)
            asm.add(Register8.al, Immediate(UInt8(ascii: "0")))
            asm.mov(Register8.bl, Register8.al)
            asm.mov(Register16.dx, Immediate(IOPort.com1.rawValue + 5))
            asm.bind(waitTransmitter)
            asm.in(Register8.al, Register16.dx)
            asm.test(Register8.al, 0x20)
            asm.jz(waitTransmitter)
            asm.mov(Register16.dx, Immediate(IOPort.com1.rawValue))
            asm.mov(Register8.al, Register8.bl)
            asm.out(Register16.dx, Register8.al)
            asm.dec(Register32.ecx)
            asm.jnz(nextDigit)
            asm.ret()

            asm.bind(startupCommand)
            asm.bytes(TPMCommand.startup(.clear))
            asm.bind(randomCommand)
            asm.bytes(TPMCommand.getRandom(8))
        }
    }
}
