// The table of exit kinds that `hv demo`, `hv run --stats` and `hv ctl SOCKET stats` print.
import HVCore
import HVManagement

enum ExitTable {
    /// "kind  count  median  p99  mean handling" with latencies in µs.
    static func render(_ statistics: ExitStatistics) -> String {
        render(StatisticsReport(state: .stopped, uptime: 0, statistics: statistics))
    }

    /// The same table from the management API's report.
    static func render(_ report: StatisticsReport) -> String {
        var rows: [[String]] = [["exit", "count", "median µs", "p99 µs", "handling µs"]]
        for kind in report.kinds {
            rows.append([
                kind.kind,
                "\(kind.count)",
                format(Double(kind.medianNanoseconds) / 1000),
                format(Double(kind.p99Nanoseconds) / 1000),
                format(kind.meanHandlingNanoseconds / 1000),
            ])
        }
        rows.append(["total", "\(report.exits)", "", "", ""])
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.enumerated().map { index, row in
            let cells = row.enumerated().map { column, cell in
                column == 0 ? cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[column] - cell.count) + cell
            }
            let line = cells.joined(separator: "  ")
            return index == 0 ? line + "\n" + String(repeating: "-", count: line.count) : line
        }.joined(separator: "\n")
    }

    private static func format(_ value: Double) -> String {
        let rounded = (value * 10).rounded() / 10
        return "\(rounded)"
    }
}
