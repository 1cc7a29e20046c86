// GET /metrics: the VMs' figures in Prometheus' text exposition format
// (https://prometheus.io/docs/instrumenting/exposition_formats/). These are values each VM's own
// process measured and the daemon mirrors from its API, a collector's job, as node_exporter's:
// swift-prometheus' registry holds metrics a process records itself and has no way to set a
// histogram's buckets from outside, so the daemon writes the lines, one family at a time.
import HVManagement

struct PrometheusText {
    private(set) var text = ""

    /// A metric family's HELP and TYPE lines, then its samples.
    mutating func family(_ name: String, type: String, help: String, _ samples: [(labels: [(String, String)], value: Double)]) {
        guard !samples.isEmpty else { return }
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        for sample in samples { text += "\(name)\(Self.labels(sample.labels)) \(Self.number(sample.value))\n" }
    }

    /// A histogram family from cumulative bucket counts (upper bounds in the metric's unit).
    mutating func histogram(_ name: String, help: String, _ series: [(labels: [(String, String)], bounds: [Double], cumulative: [UInt64], count: UInt64, sum: Double)]) {
        guard !series.isEmpty else { return }
        text += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for one in series {
            for (bound, count) in zip(one.bounds, one.cumulative) {
                text += "\(name)_bucket\(Self.labels(one.labels + [("le", Self.number(bound))])) \(count)\n"
            }
            text += "\(name)_bucket\(Self.labels(one.labels + [("le", "+Inf")])) \(one.count)\n"
            text += "\(name)_sum\(Self.labels(one.labels)) \(Self.number(one.sum))\n"
            text += "\(name)_count\(Self.labels(one.labels)) \(one.count)\n"
        }
    }

    static func labels(_ labels: [(String, String)]) -> String {
        guard !labels.isEmpty else { return "" }
        return "{" + labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
    }

    /// Label values escape backslash, double quote and newline.
    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : "\(value)"
    }
}

extension PrometheusText {
    /// Every VM's state, exits by kind, exit latency histograms and RSS.
    static func render(_ vms: [VMStatus], statistics: [String: StatisticsReport]) -> String {
        var out = PrometheusText()
        let states = ["stopped", "starting", "running", "paused", "stopping", "restarting", "crashed"]
        out.family("hv_vm_state", type: "gauge", help: "1 for the VM's current state.",
                   vms.flatMap { vm in states.map { (labels: [("vm", vm.name), ("state", $0)], value: vm.state == $0 ? 1.0 : 0.0) } })
        out.family("hv_vm_vcpus", type: "gauge", help: "vCPUs of the VM.", vms.map { ([("vm", $0.name)], Double($0.vcpus)) })
        out.family("hv_vm_restarts_total", type: "counter", help: "Times the daemon restarted the VM's process by its restart policy.",
                   vms.map { ([("vm", $0.name)], Double($0.restarts)) })
        out.family("hv_vm_resident_memory_bytes", type: "gauge", help: "Resident set size of the VM's hv process.",
                   vms.compactMap { vm in vm.rssBytes.map { ([("vm", vm.name)], Double($0)) } })
        let running = vms.compactMap { vm in statistics[vm.name].map { (vm.name, $0) } }
        out.family("hv_vm_exits_total", type: "counter", help: "VM exits by kind since the VM's process started.",
                   running.flatMap { name, report in report.kinds.map { ([("vm", name), ("kind", $0.kind)], Double($0.count)) } })
        let bounds = StatisticsReport.bucketBoundaries.map { Double($0) / 1e9 }
        out.histogram("hv_vm_exit_round_trip_seconds", help: "Round trip of a VM exit (guest to monitor and back), from the TSC.",
                      running.flatMap { name, report in
                          report.kinds.map { kind in
                              (labels: [("vm", name), ("kind", kind.kind)], bounds: bounds, cumulative: kind.buckets, count: kind.count,
                               sum: Double(kind.count) * kind.meanNanoseconds / 1e9)
                          }
                      })
        return out.text
    }
}
