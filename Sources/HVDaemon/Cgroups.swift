// Resource limits per VM through cgroup v2 (https://docs.kernel.org/admin-guide/cgroup-v2.html):
// cpu.max, cpuset.cpus, memory.max and io.max on a cgroup of the VM's own, which its `hv run`
// joins first thing (`--cgroup DIR`), before it allocates guest memory or starts a vCPU.
// hv serve needs a cgroup v2 subtree it may manage (a delegated one, as systemd gives a unit with
// Delegate=yes): it moves itself into a leaf of its own ("no internal processes") and enables the
// controllers for its VMs' cgroups. Where the host gives none, a VM that asks for limits is
// refused with the reason; a VM without limits runs as before.
import Foundation

/// What a VM file's `limits` may say, each written to the VM's cgroup as is.
public struct VMLimits: Codable, Sendable, Equatable {
    /// cpu.max: "QUOTA PERIOD" in microseconds ("50000 100000": half a CPU) or "max".
    public var cpuMax: String?
    /// cpuset.cpus: the host CPUs, as "0-1,3".
    public var cpuset: String?
    /// memory.max: bytes or a size ("512M"), or "max".
    public var memoryMax: String?
    /// io.max lines: "MAJOR:MINOR rbps=N wbps=N riops=N wiops=N".
    public var ioMax: [String]?

    static let fields = ["cpuMax", "cpuset", "memoryMax", "ioMax"]

    /// The controller each limit needs, and the file it goes to with its value.
    var settings: [(controller: String, file: String, value: String)] {
        var settings: [(String, String, String)] = []
        if let cpuMax { settings.append(("cpu", "cpu.max", cpuMax)) }
        if let cpuset { settings.append(("cpuset", "cpuset.cpus", cpuset)) }
        if let memoryMax { settings.append(("memory", "memory.max", Self.bytes(memoryMax))) }
        for line in ioMax ?? [] { settings.append(("io", "io.max", line)) }
        return settings
    }

    func validate() throws(VMDefinitionError) {
        if let cpuMax, cpuMax.wholeMatch(of: /(max|[0-9]+)( [0-9]+)?/) == nil {
            throw VMDefinitionError(field: "limits.cpuMax", problem: "'\(cpuMax)' is not QUOTA PERIOD in microseconds (\"50000 100000\") or max")
        }
        if let cpuset, cpuset.wholeMatch(of: /[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*/) == nil {
            throw VMDefinitionError(field: "limits.cpuset", problem: "'\(cpuset)' is not a CPU list (\"0-1,3\")")
        }
        if let memoryMax, memoryMax != "max", memoryMax.wholeMatch(of: /(?i)[0-9]+ *[kmgt]?/) == nil {
            throw VMDefinitionError(field: "limits.memoryMax", problem: "'\(memoryMax)' is not a size (\"512M\") or max")
        }
        for (index, line) in (ioMax ?? []).enumerated()
        where line.wholeMatch(of: /[0-9]+:[0-9]+( (rbps|wbps|riops|wiops)=([0-9]+|max))+/) == nil {
            throw VMDefinitionError(field: "limits.ioMax[\(index)]", problem: "'\(line)' is not MAJOR:MINOR followed by rbps=, wbps=, riops=, wiops=")
        }
    }

    /// "512M" -> "536870912"; "max" and plain numbers as they are.
    static func bytes(_ text: String) -> String {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        guard let last = text.uppercased().last, let unit = units[last],
              let value = UInt64(text.dropLast().trimmingCharacters(in: .whitespaces)) else { return text }
        return "\(value * unit)"
    }
}

/// The cgroup v2 subtree hv serve manages, once it has set it up.
public final class CgroupTree: @unchecked Sendable {
    // @unchecked Sendable: set up once under `lock`, then read.
    private let lock = NSLock()
    private var prepared: Result<(root: String, controllers: Set<String>), DaemonError>?

    public init() {}

    /// The daemon's own cgroup v2 directory: the cgroup2 mount (/proc/self/mountinfo) joined with
    /// the "0::" line of /proc/self/cgroup.
    public static func ownDirectory() throws(DaemonError) -> String {
        guard let mounts = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8),
              let mount = mounts.split(separator: "\n").map({ $0.split(separator: " ") })
                  .first(where: { fields in fields.firstIndex(of: "-").map { fields.count > $0 + 1 && fields[$0 + 1] == "cgroup2" } ?? false }) else {
            throw DaemonError.badRequest("this host has no cgroup v2 hierarchy mounted")
        }
        guard let own = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8))?
            .split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else {
            throw DaemonError.badRequest("this process is in no cgroup v2 group (/proc/self/cgroup has no 0:: line)")
        }
        let path = String(own.dropFirst(3))
        return String(mount[4]) + (path == "/" ? "" : path)
    }

    /// Sets the subtree up on first use: the daemon into a leaf of its own, the controllers it
    /// may use enabled for its children. The reason it cannot, once known, stays.
    func setUp() throws(DaemonError) -> (root: String, controllers: Set<String>) {
        lock.lock()
        defer { lock.unlock() }
        if let prepared { return try prepared.get() }
        let result: Result<(root: String, controllers: Set<String>), DaemonError>
        do throws(DaemonError) {
            let root = try Self.ownDirectory()
            let available = Set(((try? String(contentsOfFile: root + "/cgroup.controllers", encoding: .utf8)) ?? "").split(separator: " ")
                .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty })
            let wanted = available.intersection(["cpu", "cpuset", "memory", "io"])
            guard !wanted.isEmpty else {
                throw DaemonError.badRequest("its cgroup \(root) offers no cpu, cpuset, memory or io controller (it offers: \(available.isEmpty ? "none" : available.sorted().joined(separator: ", "))); run hv serve in a delegated cgroup (systemd Delegate=yes)")
            }
            let leaf = root + "/hv-serve"
            try? FileManager.default.createDirectory(atPath: leaf, withIntermediateDirectories: true)
            try Self.write("\(getpid())", to: leaf + "/cgroup.procs", what: "move hv serve into its own leaf cgroup")
            try Self.write(wanted.sorted().map { "+" + $0 }.joined(separator: " "), to: root + "/cgroup.subtree_control",
                           what: "enable the \(wanted.sorted().joined(separator: ", ")) controllers for the VMs")
            result = .success((root, wanted))
        } catch {
            result = .failure(error)
        }
        prepared = result
        return try result.get()
    }

    /// Makes `vm`'s cgroup with `limits` written, replacing one left from before; returns its path.
    public func prepare(vm: String, limits: VMLimits) throws(DaemonError) -> String {
        let (root, controllers): (String, Set<String>)
        do { (root, controllers) = try setUp() } catch {
            throw .badRequest("limits: hv serve cannot manage cgroups here: \(error.message)")
        }
        if let missing = limits.settings.first(where: { !controllers.contains($0.controller) }) {
            let offered = ((try? String(contentsOfFile: root + "/cgroup.controllers", encoding: .utf8)) ?? "")
                .trimmingCharacters(in: .whitespacesAndNewlines)
            throw .badRequest("limits: \(missing.file) needs cgroup v2's \(missing.controller) controller, which this host does not give hv serve (its cgroup \(root) offers: \(offered.isEmpty ? "none" : offered)); remove limits or run hv serve in a delegated cgroup (systemd Delegate=yes)")
        }
        let directory = root + "/vm-" + vm
        remove(vm: vm)
        do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false) } catch {
            throw DaemonError(status: 500, message: "limits: cannot create \(directory): \(error.localizedDescription)")
        }
        for setting in limits.settings {
            do { try Self.write(setting.value, to: directory + "/" + setting.file, what: "set \(setting.file)") } catch {
                remove(vm: vm)
                throw .badRequest("limits: \(setting.file) \(setting.value): \(error.message)")
            }
        }
        return directory
    }

    /// Removes `vm`'s cgroup (empty once its process ended).
    public func remove(vm: String) {
        guard let (root, _) = try? setUp() else { return }
        rmdir(root + "/vm-" + vm)
    }

    static func write(_ text: String, to file: String, what: String) throws(DaemonError) {
        let descriptor = open(file, O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw .badRequest("cannot \(what): \(file): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        let bytes = Array(text.utf8)
        guard Glibc.write(descriptor, bytes, bytes.count) == bytes.count else {
            throw .badRequest("cannot \(what): \(file): \(String(cString: strerror(errno)))")
        }
    }
}
