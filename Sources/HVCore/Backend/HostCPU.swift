// Facts about the host processor that change what a guest costs.
#if canImport(Glibc)
import Glibc
#endif

/// The host CPU as /proc/cpuinfo describes it.
public struct HostCPU: Sendable {
    /// The model name ("AMD EPYC ...").
    public var modelName: String
    /// Whether the CPU advertises VMX (Intel VT-x) or SVM (AMD-V). Without either, KVM here
    /// runs guest code by software emulation (Documentation/HostFacts.md), roughly 1 µs per instruction.
    public var hasHardwareVirtualization: Bool
    public var logicalCPUs: Int

    public static let current: HostCPU = {
        var model = "unknown"
        var virtualization = false
        var count = 0
        if let file = fopen("/proc/cpuinfo", "r") {
            defer { fclose(file) }
            var line: UnsafeMutablePointer<CChar>? = nil
            var capacity = 0
            while getline(&line, &capacity, file) > 0, let line {
                let text = String(cString: line)
                if text.hasPrefix("model name"), model == "unknown", let colon = text.firstIndex(of: ":") {
                    model = text[text.index(after: colon)...].trimmingCharacters()
                } else if text.hasPrefix("flags") {
                    let flags = text.split(whereSeparator: \.isWhitespace)
                    if flags.contains(where: { $0 == "vmx" || $0 == "svm" }) { virtualization = true }
                } else if text.hasPrefix("processor") {
                    count += 1
                }
            }
            free(line)
        }
        return HostCPU(modelName: model, hasHardwareVirtualization: virtualization, logicalCPUs: count)
    }()
}

extension Substring {
    func trimmingCharacters() -> String {
        var s = self
        while let first = s.first, first.isWhitespace { s.removeFirst() }
        while let last = s.last, last.isWhitespace { s.removeLast() }
        return String(s)
    }
}
