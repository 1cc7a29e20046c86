// The documentation stays self-contained: every relative link in README.md and Documentation/
// reaches a file of this repository (and a heading there, for a #anchor), and nothing in the
// repository points at files a clone does not have.
import Foundation
import Testing

@Suite("documentation")
struct DocumentationTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var documents: [URL] {
        let folder = root.appendingPathComponent("Documentation")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return [root.appendingPathComponent("README.md")] + names.filter { $0.hasSuffix(".md") }.sorted().map { folder.appendingPathComponent($0) }
    }

    /// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
    static func anchors(in text: String) -> Set<String> {
        var anchors = Set<String>()
        var fenced = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") { fenced.toggle() }
            guard !fenced, line.hasPrefix("#") else { continue }
            let title = line.drop { $0 == "#" }.trimmingCharacters(in: .whitespaces).lowercased()
            anchors.insert(String(title.compactMap { $0 == " " ? "-" : ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") ? $0 : nil }))
        }
        return anchors
    }

    @Test("every relative link in README.md and Documentation/ reaches a file, and its #anchor a heading")
    func linksResolve() throws {
        let link = /\]\(([^)\s]+)\)/
        var broken: [String] = []
        for document in Self.documents {
            let text = try String(contentsOf: document, encoding: .utf8)
            for match in text.matches(of: link) {
                let target = String(match.1)
                if target.hasPrefix("http://") || target.hasPrefix("https://") || target.hasPrefix("mailto:") { continue }
                let parts = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)
                let path = String(parts[0]), anchor = parts.count > 1 ? String(parts[1]) : nil
                let file = path.isEmpty ? document : document.deletingLastPathComponent().appendingPathComponent(path)
                guard FileManager.default.fileExists(atPath: file.path) else {
                    broken.append("\(document.lastPathComponent): \(target) (no such file)")
                    continue
                }
                if let anchor, file.pathExtension == "md" {
                    let headings = Self.anchors(in: try String(contentsOf: file, encoding: .utf8))
                    if !headings.contains(anchor) { broken.append("\(document.lastPathComponent): \(target) (no such heading)") }
                }
            }
        }
        #expect(broken.isEmpty, "\(broken.joined(separator: "\n"))")
    }

    /// A `$ hv ...` example in a fenced block: the command's arguments, the output the docs
    /// show (a line "..." stands for any number of lines), and the status `$ echo $?` shows.
    struct Example: CustomStringConvertible {
        var location: String
        var arguments: [String]
        var output: [String]
        var status: Int32?
        /// An argument names a file (a path or a name with a dot): the example runs in a scratch
        /// folder with its inputs made (`examplesWithFilesRunAsShown`).
        var needsFiles: Bool { arguments.contains { !$0.hasPrefix("-") && ($0.contains("/") || $0.contains(".")) } }
        /// The command ends with `&`: it runs in the background beside other commands.
        var background: Bool { arguments.last?.hasSuffix("&") == true }
        var description: String { "\(location): hv \(arguments.joined(separator: " "))" }
    }

    /// Splits a command line as the shell would for these examples: spaces, '...' and "...".
    static func words(_ line: String) -> [String] {
        var words: [String] = [], word = "", quote: Character? = nil, inWord = false
        for character in line {
            if let open = quote {
                if character == open { quote = nil } else { word.append(character) }
            } else if character == "\"" || character == "'" {
                quote = character; inWord = true
            } else if character == " " {
                if inWord { words.append(word); word = ""; inWord = false }
            } else {
                word.append(character); inWord = true
            }
        }
        if inWord { words.append(word) }
        return words
    }

    /// Every example whose command needs no file (no argument names a path) and runs in the
    /// foreground: the ones that read the same on any machine.
    static func examples() throws -> [Example] {
        try documents.flatMap { try steps(in: $0) }.compactMap { step in
            if case .example(let example) = step, !example.needsFiles, !example.background { example } else { nil }
        }
    }

    /// Runs `example` (in `folder`, else here) and checks its output, with `stable` applied to
    /// both sides, and its status.
    static func verify(_ example: Example, in folder: URL? = nil, stable: (String) -> String = { $0 }) throws {
        let result = try PackageExecutable.run(example.arguments, in: folder)
        var actual = (result.stdout + result.stderr).split(separator: "\n", omittingEmptySubsequences: false).map { stable(String($0)) }
        while actual.last == "" { actual.removeLast() }
        var expected = example.output.map(stable)
        while expected.last == "" { expected.removeLast() }
        #expect(matches(expected[...], actual[...]), "\(example) prints:\n\(actual.joined(separator: "\n"))")
        if let status = example.status { #expect(result.status == status, "\(example): status \(result.status)") }
    }

    /// Whether `actual` reads as `expected`, where an expected line "..." stands for any lines.
    static func matches(_ expected: ArraySlice<String>, _ actual: ArraySlice<String>) -> Bool {
        guard let first = expected.first else { return actual.isEmpty }
        if first == "..." {
            return (actual.startIndex...actual.endIndex).contains { matches(expected.dropFirst(), actual[$0...]) }
        }
        guard let line = actual.first, line == first else { return false }
        return matches(expected.dropFirst(), actual.dropFirst())
    }

    @Test("every self-contained `$ hv` example in the docs prints what the docs show, and exits as `echo $?` says")
    func examplesRunAsShown() throws {
        let examples = try Self.examples()
        #expect(examples.count >= 10, "the docs show at least ten such examples")
        for example in examples { try Self.verify(example) }
    }

    /// A `$ hv` example, or the file a `$ cat FILE` shows, in its document's order.
    enum Step {
        case file(name: String, lines: [String])
        case example(Example)
    }

    /// The examples the scratch-folder test leaves to other suites, by how their command starts,
    /// and why. Everything else that needs files runs there.
    static let runElsewhere: [(prefix: String, reason: String)] = [
        ("tpm serve --state vm1.tpm", "a TPM server in the background beside tpm2-tools; TPMToolsTests runs that session"),
        ("tpm info vm1.tpm", "reads the state the tpm2-tools session leaves (TPMToolsTests)"),
        ("run --kernel .build-kernel/", "boots Debian's Linux for half a minute; HVRunLinuxTests checks the lines shown"),
    ]

    /// Every `$ cat FILE` and every `$ hv` example of one document, in order.
    static func steps(in document: URL) throws -> [Step] {
        let lines = try String(contentsOf: document, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var steps: [Step] = [], fenced = false, index = 0
        while index < lines.count {
            let line = lines[index]
            if line.hasPrefix("```") { fenced.toggle(); index += 1; continue }
            guard fenced, line.hasPrefix("$ hv ") || line.hasPrefix("$ cat ") else { index += 1; continue }
            let location = "\(document.lastPathComponent):\(index + 1)"
            var command = String(line.dropFirst(2))
            while command.hasSuffix("\\"), index + 1 < lines.count {
                index += 1
                command = command.dropLast() + lines[index].trimmingCharacters(in: .whitespaces)
            }
            var output: [String] = []
            index += 1
            while index < lines.count, !lines[index].hasPrefix("$ "), !lines[index].hasPrefix("```") {
                output.append(lines[index]); index += 1
            }
            let words = Self.words(command)
            if words.first == "cat" {
                if words.count == 2 { steps.append(.file(name: words[1], lines: output)) }
                continue
            }
            let arguments = Array(words.dropFirst())
            var status: Int32?
            if index + 1 < lines.count, lines[index] == "$ echo $?", let value = Int32(lines[index + 1]) { status = value }
            steps.append(.example(Example(location: location, arguments: arguments, output: output, status: status)))
        }
        return steps
    }

    /// Makes the input file `name` in `folder` the way the documentation's text says it was made,
    /// or returns false when there is no recipe for it (an earlier example must write it).
    static func makeFixture(_ name: String, in folder: URL) throws -> Bool {
        func shell(_ command: String) throws {
            let result = try PackageExecutable.run(["-c", command], executable: "/bin/sh", in: folder)
            guard result.status == 0 else { throw FixtureError(name: name, output: result.stdout + result.stderr) }
        }
        let seeds = root.appendingPathComponent("Fuzz/Seeds").path
        let script = "printf 'ENTRY(_start)\\nSECTIONS { . = 0x400000; .text : { *(.text) } .data : { *(.data) } .bss : { *(.bss) } }\\n' > kernel.ld"
        switch name {
        case "env":
            try shell("echo KEY=VALUE > env")
        case "loop.bin":  // Management.md: out 0x80, al; jmp back
            try shell("printf '\\346\\200\\353\\374' > loop.bin")
        case "kernel.o":  // a relocatable object, which --elf refuses
            try shell("as --64 -o kernel.o \(seeds)/elf64.s")
        case "k32.elf", "mb2.elf":  // Loaders.md, "Building the test kernels by hand"
            let source = name == "k32.elf" ? "multiboot32.s" : "multiboot2.s"
            try shell("\(script) && as --32 -I \(seeds) -o \(name).o \(seeds)/\(source) && ld -m elf_i386 -T kernel.ld --build-id=none -o \(name) \(name).o 2> /dev/null")
        case "truncated.elf":  // ELF32, one PT_LOAD at file offset 0x1000 (0xA2 bytes), in a 100-byte file
            var bytes: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 1, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
            func half(_ value: UInt16) { bytes += [UInt8(value & 0xFF), UInt8(value >> 8)] }
            func word(_ value: UInt32) { bytes += (0..<4).map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) } }
            half(2); half(3); word(1); word(0x10_0000); word(52); word(0); word(0); half(52); half(32); half(1); half(0); half(0); half(0)
            for value: UInt32 in [1, 0x1000, 0x10_0000, 0x10_0000, 0xA2, 0xA2, 5, 0x1000] { word(value) }
            bytes += [UInt8](repeating: 0, count: 100 - bytes.count)
            try Data(bytes).write(to: folder.appendingPathComponent(name))
        case "broken.tpm", "trunc.tpm":  // a state the TIS guest made, then damaged
            let hv = PackageExecutable.binDirectory.appendingPathComponent("hv").path
            let damage = name == "broken.tpm"
                ? "printf '\\377' | dd of=broken.tpm/permanent.state bs=1 seek=100 conv=notrunc 2> /dev/null"
                : "truncate -s 200 trunc.tpm/permanent.state"
            try shell("\(hv) tpm guest fixture.bin > /dev/null && \(hv) run fixture.bin --tpm \(name) > /dev/null; \(damage)")
        default:
            return false
        }
        return true
    }

    struct FixtureError: Error { var name: String, output: String }

    /// A line with what changes from run to run (exit counts, times, random bytes) replaced.
    static func stable(_ line: String) -> String {
        line.replacing(/after [0-9]+ exits in [0-9.]+ s/, with: "after N exits in T s")
            .replacing(/bytes=([0-9A-F]{4}) [0-9A-F]+/) { "bytes=\($0.1) RANDOM" }
    }

    @Test("every `$ hv` example that needs files runs in a scratch folder, in its document's order, and prints what the docs show")
    func examplesWithFilesRunAsShown() throws {
        var ran = 0
        for document in Self.documents {
            let steps = try Self.steps(in: document)
            guard steps.contains(where: { if case .example(let example) = $0 { example.needsFiles || example.background } else { false } })
            else { continue }
            let folder = try PackageExecutable.temporaryDirectory()
            // Commands the document starts with `&` run beside the later ones until it ends.
            var background: [Process] = []
            defer {
                for process in background where process.isRunning { process.terminate() }
                for process in background { process.waitUntilExit() }
                try? FileManager.default.removeItem(at: folder)
            }
            for step in steps {
                switch step {
                case .file(let name, let lines):
                    try (lines.joined(separator: "\n") + "\n").write(to: folder.appendingPathComponent(name), atomically: true, encoding: .utf8)
                case .example(let example):
                    guard example.needsFiles || example.background else { continue }  // examplesRunAsShown runs it
                    let command = example.arguments.joined(separator: " ")
                    if Self.runElsewhere.contains(where: { command.hasPrefix($0.prefix) }) { continue }
                    for argument in example.arguments where !argument.hasPrefix("-")
                        && !FileManager.default.fileExists(atPath: folder.appendingPathComponent(argument).path) {
                        _ = try Self.makeFixture(argument, in: folder)
                    }
                    if example.background {
                        var arguments = example.arguments
                        arguments[arguments.count - 1].removeLast()  // the "&"
                        if arguments.last == "" { arguments.removeLast() }
                        let hv = PackageExecutable.binDirectory.appendingPathComponent("hv")
                        let started = try PackageExecutable.start(hv, arguments, in: folder)
                        background.append(started.process)
                        // Nothing is read from its pipes: the examples started this way print
                        // little, and only when they end.
                    } else {
                        try Self.verify(example, in: folder, stable: Self.stable)
                    }
                    ran += 1
                }
            }
        }
        #expect(ran >= 8, "the docs show at least eight examples with files; ran \(ran)")
    }

    @Test("no file of the repository points at documents outside it (STYLE.md, FACTS.md, ARCHITECTURE.md, ../shared)")
    func noOutsideReferences() throws {
        let outside = /STYLE\.md|FACTS\.md|ARCHITECTURE(\.md|:)|\.\.\/shared\//
        var found: [String] = []
        for folder in ["Sources", "Tests", "Examples", "Benchmarks", "Documentation", "scripts", "Fuzz", ".ci"] {
            let base = Self.root.appendingPathComponent(folder)
            guard let files = FileManager.default.enumerator(atPath: base.path) else { continue }
            for case let path as String in files {
                let url = base.appendingPathComponent(path)
                guard !path.hasSuffix("DocumentationTests.swift"),
                      let text = try? String(contentsOf: url, encoding: .utf8) else { continue }
                if text.contains(outside) { found.append("\(folder)/\(path)") }
            }
        }
        let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
        if readme.contains(outside) { found.append("README.md") }
        #expect(found.isEmpty, "\(found)")
    }
}
