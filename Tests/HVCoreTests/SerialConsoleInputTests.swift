// The host side of the interactive console: QEMU's escape keys and the paced feeder.
import Foundation
import Glibc
import HVCore
import Testing

@Suite("Serial console input")
struct SerialConsoleInputTests {
    private func feed(_ bytes: [UInt8]) -> [ConsoleEscape.Action] {
        var escape = ConsoleEscape()
        return bytes.map { escape.feed($0) }
    }

    @Test("ordinary keys go to the guest, Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A h asks for help")
    func escapes() {
        #expect(feed(Array("ls\r".utf8)) == [.send(0x6C), .send(0x73), .send(0x0D)])
        #expect(feed([0x01, UInt8(ascii: "x")]) == [.pending, .quit])
        #expect(feed([0x01, 0x01, UInt8(ascii: "a")]) == [.pending, .send(0x01), .send(0x61)])
        #expect(feed([0x01, UInt8(ascii: "h")]) == [.pending, .help])
        // An unknown escape drops its key and the next key is ordinary again; Ctrl-C is data.
        #expect(feed([0x01, UInt8(ascii: "q"), UInt8(ascii: "x"), 0x03]) == [.pending, .ignore, .send(0x78), .send(0x03)])
    }

    @Test("bytes piped in reach the receiver in order, paced by its FIFO: none lost to an overrun")
    func pipedInputIsPaced() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let uart = UART16550(output: .capture(SerialCapture()))
        uart.out(2, 0x01)  // FCR: FIFOs on (16 bytes)
        let input = SerialConsoleInput(uart: uart, fileDescriptor: fds[0], escapes: false, onQuit: {})
        input.start()
        let message = Array((0..<200).map { UInt8(truncatingIfNeeded: 0x20 + $0 % 90) })
        #expect(message.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) } == message.count)
        close(fds[1])
        var received: [UInt8] = []
        let deadline = Date(timeIntervalSinceNow: 10)
        while received.count < message.count, Date() < deadline {
            if uart.portRead(offset: 5, size: 1) & 1 != 0 {  // LSR data ready
                received.append(UInt8(uart.portRead(offset: 0, size: 1)))
            } else {
                usleep(100)
            }
        }
        #expect(received == message)
        #expect(uart.portRead(offset: 5, size: 1) & 0x02 == 0, "no overrun error")
        close(fds[0])
    }
}

extension UART16550 {
    fileprivate func out(_ offset: UInt16, _ value: UInt8) { _ = portWrite(offset: offset, size: 1, value: UInt32(value)) }
}
