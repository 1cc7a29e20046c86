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
