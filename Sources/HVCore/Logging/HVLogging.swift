// Categorised, levelled logging on swift-log. Each category is a logger labelled "hv.<name>";
// the CLI (--log-level, --log-category) or the environment (HV_LOG_LEVEL, HV_LOG_CATEGORIES)
// choose which categories speak at which level.
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// The logging categories of HV.
public enum LogCategory: String, CaseIterable, Sendable {
    /// The KVM backend: system calls, capabilities, VM and vCPU creation.
    case kvm
    /// vCPU threads: start, stop, pause, resume.
    case vcpu
    /// Every exit and its handling (trace level: one line per exit).
    case exits
    /// Devices and the device bus.
    case devices
    /// Loading guest images into memory.
    case loader
    /// Guest memory.
    case memory
    /// The management API (`hv run --api-socket`): requests and their answers.
    case api

    /// The logger for this category.
    public var logger: Logger { Logger(label: "hv.\(rawValue)") }
}

/// Sets up swift-log for HV.
public enum HVLogging {
    /// Installs HV's stderr handler: categories in `categories` (nil: all) log at `level`, the
    /// others at `.warning`. Call once, before creating machines. Later calls are ignored by
    /// swift-log, as its bootstrap allows only one.
    public static func bootstrap(level: Logger.Level, categories: Set<LogCategory>? = nil) {
        LoggingSystem.bootstrap { label in
            let name = label.hasPrefix("hv.") ? String(label.dropFirst(3)) : label
            let enabled = categories.map { set in set.contains { $0.rawValue == name } } ?? true
            return CategoryLogHandler(category: name, logLevel: enabled ? level : .warning)
        }
    }

    /// `bootstrap` from HV_LOG_LEVEL (trace, debug, info, notice, warning, error, critical) and
    /// HV_LOG_CATEGORIES (comma-separated names). Returns a description of a bad value, if any.
    @discardableResult
    public static func bootstrapFromEnvironment(defaultLevel: Logger.Level = .warning) -> String? {
        var level = defaultLevel
        var problem: String?
        if let text = getenv("HV_LOG_LEVEL").map({ String(cString: $0) }) {
            if let parsed = Logger.Level(rawValue: text.lowercased()) { level = parsed } else {
                problem = "HV_LOG_LEVEL=\(text) is not a level; use one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))"
            }
        }
        var categories: Set<LogCategory>?
        if let text = getenv("HV_LOG_CATEGORIES").map({ String(cString: $0) }) {
            switch parseCategories(text) {
            case .success(let set): categories = set
            case .failure(let error): problem = error.message
            }
        }
        bootstrap(level: level, categories: categories)
        return problem
    }

    public struct CategoryError: Error { public let message: String }

    /// Parses "kvm,exits" into categories; an unknown name is an error listing the valid ones.
    public static func parseCategories(_ text: String) -> Result<Set<LogCategory>, CategoryError> {
        var set = Set<LogCategory>()
        for part in text.split(separator: ",") {
            let name = part.trimmingCharacters()
            guard let category = LogCategory(rawValue: name) else {
                return .failure(CategoryError(message: "unknown log category '\(name)'; use one of \(LogCategory.allCases.map(\.rawValue).joined(separator: ", "))"))
            }
            set.insert(category)
        }
        return .success(set)
    }
}

/// Writes "LEVEL category: message key=value" lines to standard error.
struct CategoryLogHandler: LogHandler {
    let category: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        var text = "\(event.level.rawValue.uppercased()) \(category): \(event.message)"
        for (key, value) in all.sorted(by: { $0.key < $1.key }) { text += " \(key)=\(value)" }
        text += "\n"
        // One write(2) per line, so lines from several vCPU threads do not interleave.
        _ = text.withCString { write(2, $0, strlen($0)) }
    }
}
