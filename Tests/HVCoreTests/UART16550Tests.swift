// The 16550A register model as a guest driver sees it, and its host attachments.
// Expected values come from the TI PC16550D data sheet (register summary, interrupt control).
import CAllocationCounter
import Foundation
import HVCore
import Synchronization
import Testing

/// Register offsets from the base port.
private let rbr: UInt16 = 0, thr: UInt16 = 0, dll: UInt16 = 0, ier: UInt16 = 1, dlm: UInt16 = 1
private let iir: UInt16 = 2, fcr: UInt16 = 2, lcr: UInt16 = 3, mcr: UInt16 = 4, lsr: UInt16 = 5
private let msr: UInt16 = 6, scr: UInt16 = 7

extension UART16550 {
    /// A byte `OUT` as a guest driver issues it.
    fileprivate func out(_ offset: UInt16, _ value: UInt8) {
        #expect(portWrite(offset: offset, size: 1, value: UInt32(value)) == .resume)
    }

    /// A byte `IN`.
    fileprivate func `in`(_ offset: UInt16) -> UInt8 {
        UInt8(portRead(offset: offset, size: 1))
    }
}

/// Records interrupt levels reported by `onInterruptChange`.
private final class LevelRecorder: Sendable {
    private let storage = Mutex<[Bool]>([])
    func record(_ level: Bool) { storage.withLock { $0.append(level) } }
    var levels: [Bool] { storage.withLock { $0 } }
}

private func makeUART() -> (UART16550, SerialCapture) {
    let capture = SerialCapture()
    return (UART16550(output: .capture(capture)), capture)
}

@Suite struct UART16550Tests {
    @Test func pollingDriverSeesTHREmptyAndItsBytesReachTheOutput() {
        let (uart, capture) = makeUART()
        for byte in "Hi!\n".utf8 {
            // A polling driver waits for LSR bit 5 (THRE) before each byte.
            #expect(uart.in(lsr) & 0x20 != 0)
            uart.out(thr, byte)
        }
        #expect(uart.in(lsr) == 0x60)  // THRE | TEMT, no data ready
        #expect(capture.text == "Hi!\n")
        #expect(capture.bytes == [0x48, 0x69, 0x21, 0x0A])
        #expect(uart.transmittedByteCount == 4)
    }

    @Test func divisorLatchProgrammingSetsBaudRateAndLCRRestoresNormalRegisters() {
        let (uart, capture) = makeUART()
        #expect(uart.divisor == 12)
        #expect(uart.baudRate == 9600)
        uart.out(ier, 0x05)

        uart.out(lcr, 0x80)  // DLAB
        uart.out(dll, 0x01)
        uart.out(dlm, 0x00)
        #expect(uart.in(dll) == 0x01)
        #expect(uart.in(dlm) == 0x00)
        #expect(uart.divisor == 1)
        #expect(uart.baudRate == 115_200)

        uart.out(lcr, 0x03)  // 8N1, DLAB off
        #expect(uart.in(lcr) == 0x03)
        #expect(uart.in(ier) == 0x05)
        uart.out(thr, 0x41)
        #expect(capture.bytes == [0x41])
        #expect(uart.divisor == 1)

        uart.out(lcr, 0x83)
        uart.out(dll, 0x80)
        uart.out(dlm, 0x01)
        #expect(uart.divisor == 0x0180)
        #expect(uart.baudRate == 300)
        uart.out(dll, 0)
        uart.out(dlm, 0)
        #expect(uart.baudRate == nil)
    }

    @Test func scratchRegisterKeepsWhatIsWritten() {
        let (uart, _) = makeUART()
        #expect(uart.in(scr) == 0)
        uart.out(scr, 0x5A)
        #expect(uart.in(scr) == 0x5A)
        uart.out(scr, 0xA5)
        #expect(uart.in(scr) == 0xA5)
    }

    @Test func loopbackRoutesTHRToRBRAndModemStatusFollowsMCR() {
        let (uart, capture) = makeUART()
        #expect(uart.in(msr) == 0xB0)  // DCD, DSR, CTS: a present peer

        uart.out(mcr, 0x10)  // loopback, all outputs off: DCD, DSR and CTS drop
        #expect(uart.in(mcr) == 0x10)
        #expect(uart.in(msr) == 0x0B)  // DDCD, DDSR, DCTS
        #expect(uart.in(msr) == 0x00)  // deltas clear on read

        uart.out(thr, 0x7E)
        #expect(capture.bytes.isEmpty)
        #expect(uart.transmittedByteCount == 0)
        #expect(uart.in(lsr) == 0x61)  // DR | THRE | TEMT
        #expect(uart.in(rbr) == 0x7E)
        #expect(uart.in(lsr) == 0x60)

        uart.receive([0x55])  // the serial input is disconnected in loopback
        #expect(uart.in(lsr) & 0x01 == 0)
        #expect(uart.receiveSpace == 0)

        uart.out(mcr, 0x1F)  // DTR, RTS, OUT1, OUT2 -> DSR, CTS, RI, DCD
        #expect(uart.in(msr) == 0xFB)  // RI's rising edge sets no delta
        uart.out(mcr, 0x1B)  // OUT1 off: RI falls
        #expect(uart.in(msr) == 0xB4)  // TERI

        uart.out(mcr, 0x03)  // loopback off: lines back to the peer's, unchanged from 0xB0
        #expect(uart.in(msr) == 0xB0)
        uart.out(thr, 0x21)
        #expect(capture.bytes == [0x21])
    }

    @Test func receiveFIFOHoldsSixteenBytesInOrderAndFlagsOverrun() {
        let (uart, _) = makeUART()
        uart.out(fcr, 0x07)  // enable and clear FIFOs
        #expect(uart.receiveSpace == 16)
        #expect(uart.in(lsr) & 0x01 == 0)

        uart.receive("abc".utf8)
        #expect(uart.in(lsr) == 0x61)
        #expect([uart.in(rbr), uart.in(rbr), uart.in(rbr)] == [0x61, 0x62, 0x63])
        #expect(uart.in(lsr) == 0x60)

        uart.receive(0..<20)
        #expect(uart.receiveSpace == 0)
        #expect(uart.in(lsr) == 0x63)  // DR | OE | THRE | TEMT
        #expect(uart.in(lsr) == 0x61)  // reading LSR cleared OE
        var received: [UInt8] = []
        while uart.in(lsr) & 0x01 != 0 { received.append(uart.in(rbr)) }
        #expect(received == Array(0..<16))  // bytes 16-19 were lost
        #expect(uart.receiveSpace == 16)
    }

    @Test func withoutFIFOsAnUnreadByteIsOverwritten() {
        let (uart, _) = makeUART()
        #expect(uart.receiveSpace == 1)
        uart.receive([0x31, 0x32])
        #expect(uart.in(lsr) == 0x63)
        #expect(uart.in(rbr) == 0x32)
        #expect(uart.in(lsr) == 0x60)
    }

    @Test func interruptIdentificationFollowsDataSheetPriorities() {
        let (uart, _) = makeUART()
        uart.out(fcr, 0x01)
        uart.out(mcr, 0x10)  // loopback: modem lines drop, latching modem-status deltas
        uart.out(mcr, 0x00)
        uart.receive(0..<17)  // one byte too many: overrun
        #expect(uart.in(iir) == 0xC1)  // nothing enabled yet
        uart.out(ier, 0x0F)

        #expect(uart.in(iir) == 0xC6)  // receiver line status
        _ = uart.in(lsr)
        #expect(uart.in(iir) == 0xC4)  // received data available (at or above the trigger)
        while uart.in(lsr) & 0x01 != 0 { _ = uart.in(rbr) }
        #expect(uart.in(iir) == 0xC2)  // THR empty; this read clears it
        #expect(uart.in(iir) == 0xC0)  // modem status
        _ = uart.in(msr)
        #expect(uart.in(iir) == 0xC1)  // none
        #expect(!uart.interruptPending)
    }

    @Test func dataBelowTheTriggerLevelReportsCharacterTimeout() {
        let (uart, _) = makeUART()
        uart.out(fcr, 0xC1)  // FIFOs on, trigger at 14 bytes
        uart.out(ier, 0x01)
        uart.receive(Array(repeating: 0x20, count: 4))
        #expect(uart.in(iir) == 0xCC)
        uart.receive(Array(repeating: 0x20, count: 10))
        #expect(uart.in(iir) == 0xC4)
        _ = uart.in(rbr)
        #expect(uart.in(iir) == 0xCC)
    }

    @Test func interruptLevelChangesReachTheCallbackInOrder() {
        let (uart, _) = makeUART()
        let recorder = LevelRecorder()
        uart.onInterruptChange = { recorder.record($0) }

        uart.out(ier, 0x01)  // received-data interrupt enabled, nothing received: no change
        #expect(recorder.levels == [])
        uart.receive([0x78])
        #expect(uart.interruptPending)
        _ = uart.in(rbr)
        #expect(!uart.interruptPending)

        uart.out(ier, 0x03)  // enabling ETBEI while THR is empty raises THRE
        #expect(uart.interruptPending)
        #expect(uart.in(iir) == 0x02)  // identifying THRE clears it
        #expect(!uart.interruptPending)
        #expect(uart.in(iir) == 0x01)
        uart.out(thr, 0x41)  // the written byte leaves at once: THR is empty again
        #expect(uart.in(iir) == 0x02)
        uart.out(ier, 0x01)  // disabling ETBEI drops it
        #expect(!uart.interruptPending)

        #expect(recorder.levels == [true, false, true, false, true, false])
    }

    @Test func enablingFIFOsSetsIIRBits6And7AndClearsTheReceiver() {
        let (uart, _) = makeUART()
        #expect(uart.in(iir) == 0x01)
        uart.receive([0x61])
        uart.out(fcr, 0x01)
        #expect(uart.in(iir) == 0xC1)
        #expect(uart.in(lsr) & 0x01 == 0)  // changing FCR bit 0 reset the FIFOs

        uart.receive("xy".utf8)
        uart.out(fcr, 0x03)  // clear the receive FIFO, FIFOs stay on
        #expect(uart.in(lsr) & 0x01 == 0)
        #expect(uart.in(iir) == 0xC1)

        uart.out(fcr, 0x00)
        #expect(uart.in(iir) == 0x01)
    }

    @Test func offsetsPastTheRegistersReadAllOnesAndIgnoreWrites() {
        let (uart, capture) = makeUART()
        for offset: UInt16 in [8, 9, 0x10, 0xFFFF] {
            #expect(uart.portRead(offset: offset, size: 1) == 0xFF)
            #expect(uart.portWrite(offset: offset, size: 1, value: 0x41) == .resume)
        }
        #expect(capture.bytes.isEmpty)
    }

    @Test func wideAccessesActOnTheLowByte() {
        let (uart, capture) = makeUART()
        #expect(uart.portWrite(offset: thr, size: 2, value: 0x4142) == .resume)
        #expect(uart.portWrite(offset: thr, size: 4, value: 0x4443_4243) == .resume)
        #expect(capture.bytes == [0x42, 0x43])
        #expect(uart.portRead(offset: lsr, size: 4) == 0x60)
        #expect(uart.portRead(offset: lsr, size: 2) == 0x60)
    }

    @Test func resetRestoresPowerOnRegisters() {
        let (uart, _) = makeUART()
        uart.out(lcr, 0x83)
        uart.out(dll, 1)
        uart.out(lcr, 0x03)
        uart.out(scr, 0x99)
        uart.out(fcr, 0x01)
        uart.receive([1, 2])
        uart.reset()
        #expect(uart.in(lcr) == 0)
        #expect(uart.in(scr) == 0)
        #expect(uart.in(iir) == 0x01)
        #expect(uart.in(lsr) == 0x60)
        #expect(uart.baudRate == 9600)
    }

    @Test func guestAccessesAllocateNothing() throws {
        let uart = UART16550(output: try .file("/dev/null"))
        uart.out(ier, 0x0F)
        uart.out(fcr, 0x01)
        let input: [UInt8] = [0x61, 0x62]
        func driverRound(_ index: Int) {
            _ = uart.portRead(offset: lsr, size: 1)
            _ = uart.portWrite(offset: thr, size: 1, value: index % 64 == 0 ? 0x0A : 0x41)
            _ = uart.portRead(offset: iir, size: 1)
            uart.receive(input)
            _ = uart.portRead(offset: rbr, size: 1)
            _ = uart.portRead(offset: rbr, size: 1)
        }
        driverRound(0)  // the first call instantiates generic metadata once
        let before = hv_thread_allocation_count()
        for index in 1...1000 { driverRound(index) }
        let allocations = hv_thread_allocation_count() - before
        #expect(allocations == 0)
        #expect(uart.transmittedByteCount == 1001)
    }

    @Test func concurrentWritersLoseNoBytes() {
        let (uart, capture) = makeUART()
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for _ in 0..<1000 { _ = uart.portWrite(offset: thr, size: 1, value: UInt32(0x30 + worker)) }
        }
        #expect(uart.transmittedByteCount == 4000)
        #expect(capture.bytes.count == 4000)
        #expect(capture.bytes.filter { $0 == 0x32 }.count == 1000)
    }
}

extension UART16550Tests {
    @Suite struct SerialOutputTests {
        @Test func callbackOutputGetsEachByte() {
            let seen = SerialCapture()
            let uart = UART16550(output: .callback { byte in seen.append(byte) })
            uart.out(thr, 0x6F)
            uart.out(thr, 0x6B)
            #expect(seen.bytes == [0x6F, 0x6B])
            #expect(uart.transmittedByteCount == 2)
        }

        @Test func discardOutputCountsButKeepsNothing() {
            let uart = UART16550(output: .discard)
            uart.out(thr, 0x41)
            #expect(uart.transmittedByteCount == 1)
        }

        @Test func fileOutputIsTruncatedOrAppendedAndFlushed() throws {
            let path = FileManager.default.temporaryDirectory
                .appendingPathComponent("hv-serial-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).log").path
            defer { try? FileManager.default.removeItem(atPath: path) }
            try "old\n".write(toFile: path, atomically: false, encoding: .utf8)

            do {
                let uart = UART16550(output: try .file(path))
                for byte in "one\ntwo".utf8 { uart.out(thr, byte) }
                #expect(try String(contentsOfFile: path, encoding: .utf8) == "one\n")  // flushed at the newline
                uart.flush()
                #expect(try String(contentsOfFile: path, encoding: .utf8) == "one\ntwo")
            }
            do {
                let uart = UART16550(output: try .file(path, mode: .append))
                for byte in "!\n".utf8 { uart.out(thr, byte) }
            }
            #expect(try String(contentsOfFile: path, encoding: .utf8) == "one\ntwo!\n")
            do {
                let uart = UART16550(output: try .file(path))
                uart.out(thr, 0x78)
            }  // deinit flushes
            #expect(try String(contentsOfFile: path, encoding: .utf8) == "x")
        }

        @Test func unopenableFileNamesThePath() {
            let path = "/nonexistent-hv-directory/serial.log"
            #expect(throws: SerialOutputError.cannotOpen(path: path, errno: ENOENT)) {
                _ = try SerialOutput.file(path)
            }
            let error = SerialOutputError.cannotOpen(path: path, errno: ENOENT)
            #expect(error.description.contains(path))
            #expect(error.description.contains("No such file or directory"))
        }
    }
}
