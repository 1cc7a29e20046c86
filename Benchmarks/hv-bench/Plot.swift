// `--plot FILE.svg`: one panel per kind, HVCore's and C's latency against percentile, both axes
// logarithmic (the HdrHistogram percentile-distribution view: x = 1 / (1 - percentile)), written
// as plain SVG so any browser shows it without a plotting dependency.
import Foundation
import Histogram

extension Report {
    static let hvcoreColor = "#1f6fb4"
    static let baselineColor = "#e8710a"

    func svg() -> String {
        let columns = results.count > 1 ? 2 : 1
        let panelWidth = 470.0, panelHeight = 280.0, top = 56.0
        let rows = (results.count + columns - 1) / columns
        let width = Double(columns) * panelWidth + 20
        let height = top + Double(rows) * panelHeight + 10
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            viewBox="0 0 \(Int(width)) \(Int(height))" font-family="Helvetica, Arial, sans-serif" font-size="11">
            <rect width="100%" height="100%" fill="white"/>
            <text x="10" y="20" font-size="15" font-weight="bold">hv-bench: exit latency by percentile, HVCore vs raw C (log-log)</text>
            <text x="10" y="38" fill="#555">\(Self.escape(host.cpu)), Linux \(Self.escape(host.kernel)), TSC \(String(format: "%.3f", cyclesPerNanosecond)) GHz\
            \(host.guestCodeEmulated ? ", guest code emulated (no VMX/SVM)" : "")</text>
            <line x1="\(Int(width) - 190)" y1="16" x2="\(Int(width) - 170)" y2="16" stroke="\(Self.hvcoreColor)" stroke-width="2.5"/>
            <text x="\(Int(width) - 165)" y="20">HVCore</text>
            <line x1="\(Int(width) - 110)" y1="16" x2="\(Int(width) - 90)" y2="16" stroke="\(Self.baselineColor)" stroke-width="2.5"/>
            <text x="\(Int(width) - 85)" y="20">raw C</text>

            """
        for (index, result) in results.enumerated() {
            let x = 10 + Double(index % columns) * panelWidth
            let y = top + Double(index / columns) * panelHeight
            svg += panel(result, x: x, y: y, width: panelWidth - 20, height: panelHeight - 20)
        }
        return svg + "</svg>\n"
    }

    private func panel(_ result: KindResult, x: Double, y: Double, width: Double, height: Double) -> String {
        let left = x + 58, right = x + width - 8, top = y + 26, bottom = y + height - 30
        var sides: [(String, SideResult)] = [(Self.hvcoreColor, result.hvcore)]
        if let baseline = result.baseline { sides.append((Self.baselineColor, baseline)) }
        sides = sides.filter { $0.1.samples > 0 }
        let samples = sides.map(\.1.samples).max() ?? 1
        // x: u = log10(1 / (1 - p)); the last decade shown is the one the sample count supports.
        let maxU = min(6, max(2, ceil(log10(Double(max(samples, 10))))))
        let toNs = { (cycles: UInt64) in max(Double(cycles) / cyclesPerNanosecond, 0.1) }
        let low = sides.map { toNs($0.1.histogram.valueAtPercentile(0)) }.min() ?? 1
        let high = sides.map { toNs($0.1.histogram.max) }.max() ?? 10
        let lowDecade = floor(log10(low)), highDecade = max(ceil(log10(high)), lowDecade + 1)
        func px(_ u: Double) -> Double { left + (right - left) * u / maxU }
        func py(_ ns: Double) -> Double { bottom - (bottom - top) * (log10(ns) - lowDecade) / (highDecade - lowDecade) }

        let ratio = result.ratio.map { String(format: " (HVCore/C p50 %.3f)", $0) } ?? " (user space only, no C baseline)"
        var out = "<g>\n<text x=\"\(f(x + 4))\" y=\"\(f(y + 14))\" font-size=\"13\" font-weight=\"bold\">\(result.kind.rawValue)\(Self.escape(ratio))</text>\n"
        out += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(right - left))\" height=\"\(f(bottom - top))\" fill=\"none\" stroke=\"#999\"/>\n"
        for u in 0...Int(maxU) {
            let gx = px(Double(u))
            let label = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"][u]
            out += "<line x1=\"\(f(gx))\" y1=\"\(f(top))\" x2=\"\(f(gx))\" y2=\"\(f(bottom))\" stroke=\"#e4e4e4\"/>\n"
            out += "<text x=\"\(f(gx))\" y=\"\(f(bottom + 14))\" text-anchor=\"middle\" fill=\"#444\">\(label)</text>\n"
        }
        for decade in Int(lowDecade)...Int(highDecade) {
            let gy = py(pow(10, Double(decade)))
            out += "<line x1=\"\(f(left))\" y1=\"\(f(gy))\" x2=\"\(f(right))\" y2=\"\(f(gy))\" stroke=\"#e4e4e4\"/>\n"
            out += "<text x=\"\(f(left - 4))\" y=\"\(f(gy + 4))\" text-anchor=\"end\" fill=\"#444\">\(Self.durationLabel(decade))</text>\n"
        }
        out += "<text x=\"\(f((left + right) / 2))\" y=\"\(f(bottom + 27))\" text-anchor=\"middle\" fill=\"#444\">percentile</text>\n"
        for (color, side) in sides {
            var points: [String] = []
            for step in 0...Int(maxU * 20) {
                let u = Double(step) / 20
                let percentile = 100 * (1 - pow(10, -u))
                points.append("\(f(px(u))),\(f(py(toNs(side.histogram.valueAtPercentile(percentile)))))")
            }
            out += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.8\" points=\"\(points.joined(separator: " "))\"/>\n"
        }
        return out + "</g>\n"
    }

    private func f(_ value: Double) -> String { String(format: "%.1f", value) }

    static func durationLabel(_ decade: Int) -> String {
        switch decade {
        case ..<0: "0.\(String(repeating: "0", count: -decade - 1))1 ns"
        case 0..<3: "\(Int(pow(10, Double(decade)))) ns"
        case 3..<6: "\(Int(pow(10, Double(decade - 3)))) µs"
        case 6..<9: "\(Int(pow(10, Double(decade - 6)))) ms"
        default: "\(Int(pow(10, Double(decade - 9)))) s"
        }
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;")
    }
}
