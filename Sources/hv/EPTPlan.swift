// `hv ept plan`: the table layout a set of mappings needs.
import ArgumentParser
import Foundation
import HVCore

struct EPTPlan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Build EPT tables for --map ranges and print entries per level and table pages used.")

    @OptionGroup var mapping: EPTMappingOptions

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    struct Report: Codable {
        struct Level: Codable {
            var level: String
            var tables: Int
            var presentEntries: Int
            var leaves: Int
            var leafPageSize: String?
        }
        var eptp: String
        var levels: [Level]
        var tablePages: Int
        var tableBytes: UInt64
        var mappedBytes: UInt64
    }

    func run() throws {
        var builder = try mapping.build()
        let pointer = builder.pointer()
        let layout = try EPTLayout.census(of: pointer, memory: &builder.tables)
        let report = Report(
            eptp: hex(pointer.rawValue),
            levels: layout.levels.map {
                Report.Level(level: $0.level.tableName, tables: $0.tables, presentEntries: $0.presentEntries,
                             leaves: $0.leaves, leafPageSize: $0.level.leafPageSize.map { byteText($0.bytes) })
            },
            tablePages: layout.tablePages, tableBytes: layout.tableBytes, mappedBytes: layout.mappedBytes)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
            return
        }
        print("EPTP \(report.eptp): \(mapping.levels)-level walk, WB paging structures, root at \(hex(pointer.root.rawValue))")
        print("huge pages: \(mapping.hugePages ? "on (2 MiB and 1 GiB leaves)" : "off (4 KiB leaves only)")")
        for spec in mapping.map {
            print("map \(hex(spec.guest))..\(hex(spec.guest + spec.size)) (\(byteText(spec.size))) -> \(hex(spec.host)) \(spec.permissions.letters) \(spec.type.shortName)")
        }
        print("")
        print(pad("level", 6) + pad("tables", 10, right: true) + pad("entries", 12, right: true) + pad("leaves", 12, right: true) + "  leaf size")
        for level in report.levels {
            print(pad(level.level, 6) + pad("\(level.tables)", 10, right: true) + pad("\(level.presentEntries)", 12, right: true)
                + pad("\(level.leaves)", 12, right: true) + "  " + (level.leafPageSize ?? "-"))
        }
        print("")
        print("table pages: \(report.tablePages) (\(byteText(report.tableBytes))) mapping \(byteText(report.mappedBytes))")
    }
}

/// `text` padded with spaces to `width`, on the left when `right`.
func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
    let fill = String(repeating: " ", count: max(0, width - text.count))
    return right ? fill + text : text + fill
}
