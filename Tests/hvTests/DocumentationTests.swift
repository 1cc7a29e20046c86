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
        var examples: [Example] = []
        for document in documents {
            let lines = try String(contentsOf: document, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            var fenced = false, index = 0
            while index < lines.count {
                let line = lines[index]
                if line.hasPrefix("```") { fenced.toggle(); index += 1; continue }
                guard fenced, line.hasPrefix("$ hv ") else { index += 1; continue }
                let location = "\(document.lastPathComponent):\(index + 1)"
                var command = String(line.dropFirst(5))
                while command.hasSuffix("\\"), index + 1 < lines.count {
                    index += 1
                    command = command.dropLast() + lines[index].trimmingCharacters(in: .whitespaces)
                }
                let arguments = words(command)
                var output: [String] = []
                index += 1
                while index < lines.count, !lines[index].hasPrefix("$ "), !lines[index].hasPrefix("```") {
                    output.append(lines[index]); index += 1
                }
                var status: Int32?
                if index + 1 < lines.count, lines[index] == "$ echo $?", let value = Int32(lines[index + 1]) { status = value }
                let needsFiles = arguments.contains { !$0.hasPrefix("-") && ($0.contains("/") || $0.contains(".")) }
                if !needsFiles && command.last != "&" {
                    examples.append(Example(location: location, arguments: arguments, output: output, status: status))
                }
            }
        }
        return examples
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
        for example in examples {
            let result = try PackageExecutable.run(example.arguments)
            var actual = (result.stdout + result.stderr).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            while actual.last == "" { actual.removeLast() }
            var expected = example.output
            while expected.last == "" { expected.removeLast() }
            #expect(Self.matches(expected[...], actual[...]), "\(example) prints:\n\(actual.joined(separator: "\n"))")
            if let status = example.status { #expect(result.status == status, "\(example)") }
        }
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
