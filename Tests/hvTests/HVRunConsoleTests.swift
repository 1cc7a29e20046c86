// `hv run`'s interactive console on a real terminal: util-linux `script` gives hv a
// pseudo-terminal, as a person's terminal would be.
import Foundation
import HVGuest
import HVTestSupport
import Testing

@Suite("hv run: the interactive console")
struct HVRunConsoleTests {
    @Test("on a terminal hv enters raw mode, Ctrl-A x quits with status 0, and the terminal comes back as it was",
          .needsKVM, .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script") || Requirement.tools, "skipped: no util-linux script"))
    func ctrlAXQuits() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let guest = folder.appendingPathComponent("spin.bin")
        try Data([0xEB, 0xFE]).write(to: guest)  // jmp $ in real mode: runs until stopped
        let hv = PackageExecutable.binDirectory.appendingPathComponent("hv").path
        // The terminal's settings before and after hv, then hv's own status.
        let inner = "stty -g; \(hv) run \(guest.path) --mode real --timeout 60; echo \"status=$?\"; stty -g"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/script")
        process.arguments = ["-qfec", inner, "/dev/null"]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = StreamBox()
        let reader = Thread { [output] in
            while case let chunk = output.fileHandleForReading.availableData, !chunk.isEmpty { text.append(chunk) }
            text.finish()
        }
        reader.start()
        // Type Ctrl-A x once hv says the terminal is the guest's console.
        let deadline = Date(timeIntervalSinceNow: 30)
        while !text.text.contains("C-a x quits"), Date() < deadline, process.isRunning { usleep(20_000) }
        input.fileHandleForWriting.write(Data([0x01, UInt8(ascii: "x")]))
        text.waitForEnd()
        process.waitUntilExit()
        let lines = text.text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(text.text.contains("hv: quit from the console (C-a x)"), "\(text.text)")
        #expect(lines.contains("status=0"), "\(text.text)")
        let settings = lines.filter { $0.split(separator: ":").count > 30 }  // stty -g: colon-separated fields
        #expect(settings.count == 2 && settings[0] == settings[1], "terminal before and after: \(settings)")
    }

    @Test("when the reader of hv's output goes away (hv run | head -1), the guest stops cleanly: status 0, no SIGPIPE death", .needsKVM)
    func closedOutputStopsTheGuest() throws {
        let program = try GuestProgram.realMode { a in
            let again = a.label()
            a.bind(again)
            a.printString("a line of guest output\n")
            a.jmp(again)
        }
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let image = folder.appendingPathComponent("chatty.bin")
        try Data(program.code).write(to: image)
        let (process, out, err) = try PackageExecutable.start(PackageExecutable.binDirectory.appendingPathComponent("hv"),
                                                              ["run", image.path, "--mode", "real", "--mem", "1M", "--timeout", "60"])
        // Read one chunk, then close the read end, as `head -1` does.
        let first = out.fileHandleForReading.availableData
        try out.fileHandleForReading.close()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let stderr = String(decoding: errors, as: UTF8.self)
        #expect(String(decoding: first, as: UTF8.self).hasPrefix("a line of guest output"))
        #expect(process.terminationReason == .exit, "hv died of signal \(process.terminationStatus)")
        #expect(process.terminationStatus == 0, "\(stderr)")
        #expect(stderr.contains("hv: standard output was closed; stopping the guest"), "\(stderr)")
    }
}
