// A VM file (JSON or YAML): what `hv serve` runs, one `hv run` process per VM.
// Documentation/Management.md, "VM files". Decoding is strict: an unknown field, a wrong type or
// a missing one is an error naming the field and what would be valid.
import Foundation
import Yams

/// What a VM file may say. Paths are absolute, or relative to the VM file's folder.
public struct VMDefinition: Codable, Sendable, Equatable {
    /// 1-40 characters: lower-case letters, digits and '-', starting with a letter or digit.
    public var name: String
    /// Exactly one of the five: a flat binary, a Linux kernel, a Multiboot 1 or 2 kernel, an ELF.
    public var image: String?
    public var kernel: String?
    public var multiboot: String?
    public var multiboot2: String?
    public var elf: String?
    /// The Linux command line (with `kernel`), or the Multiboot command line's arguments.
    public var cmdline: String?
    public var initrd: String?
    /// Guest RAM as `hv run --mem` takes it: "256M", "1G", or bytes. Default 16M.
    public var memory: String?
    /// vCPUs, 1-64. Default 1.
    public var cpus: Int?
    /// none, kernel or split (hv run --irqchip).
    public var irqchip: String?
    /// pc or none (hv run --platform).
    public var platform: String?
    /// virtio-blk disks as `hv run --disk` takes them: "root.img,ro".
    public var disks: [String]?
    /// A virtio-rng device.
    public var rng: Bool?
    /// vCPU pinning as `hv run --pin-vcpu` takes it, one string each: "0=2", "1=0-1,3".
    public var pin: [String]?
    /// What a guest reset does: restart (default) or stop.
    public var onReset: String?
    /// What HLT does without an interrupt controller: stop (default) or resume.
    public var onHalt: String?
    /// When hv serve starts the VM's process again after it ends: never (default), on-failure
    /// (ended with a status other than 0: a crash, a host failure, a signal) or always.
    public var restart: RestartPolicy?
    /// Start the VM when it is created (default true).
    public var autostart: Bool?
    /// Resource limits through cgroup v2 (Cgroups.swift); refused where the host gives none.
    public var limits: VMLimits?

    public enum RestartPolicy: String, Codable, Sendable, CaseIterable {
        case never
        case onFailure = "on-failure"
        case always
    }

    public init(name: String, image: String) {
        self.name = name
        self.image = image
    }

    static let fields = ["name", "image", "kernel", "multiboot", "multiboot2", "elf", "cmdline", "initrd", "memory", "cpus", "irqchip",
                         "platform", "disks", "rng", "pin", "onReset", "onHalt", "restart", "autostart", "limits"]
}

/// Why a VM definition was refused: the field and the problem, for a 400 answer or a one-line error.
public struct VMDefinitionError: Error, CustomStringConvertible, Sendable, Equatable {
    public var field: String
    public var problem: String
    public var description: String { field.isEmpty ? problem : "\(field): \(problem)" }
}

extension VMDefinition {
    /// Decodes JSON (or YAML, with `yaml`), refusing unknown fields, wrong types and missing ones.
    public static func decode(_ data: Data, yaml: Bool = false) throws(VMDefinitionError) -> VMDefinition {
        let object: Any
        do {
            object = yaml ? try Yams.load(yaml: String(decoding: data, as: UTF8.self)) as Any
                : try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? Self.firstLine(of: error)
            throw VMDefinitionError(field: "", problem: "not valid \(yaml ? "YAML" : "JSON"): \(detail)")
        }
        guard let fields = object as? [String: Any] else {
            throw VMDefinitionError(field: "", problem: "a VM definition is an object of fields (\(fields.joined(separator: ", ")))")
        }
        if let unknown = fields.keys.sorted().first(where: { !Self.fields.contains($0) }) {
            throw VMDefinitionError(field: unknown, problem: "unknown field; a VM definition has \(Self.fields.joined(separator: ", "))")
        }
        if let limits = fields["limits"] as? [String: Any], let unknown = limits.keys.sorted().first(where: { !VMLimits.fields.contains($0) }) {
            throw VMDefinitionError(field: "limits.\(unknown)", problem: "unknown field; limits has \(VMLimits.fields.joined(separator: ", "))")
        }
        do {
            // Re-encoded from what was parsed, so that YAML goes through the same checks as JSON.
            let json = try JSONSerialization.data(withJSONObject: fields)
            let definition = try JSONDecoder().decode(VMDefinition.self, from: json)
            try definition.validate()
            return definition
        } catch let error as VMDefinitionError {
            throw error
        } catch let error as DecodingError {
            throw Self.explain(error)
        } catch {
            throw VMDefinitionError(field: "", problem: "\(error)")
        }
    }

    /// Reads a VM file: YAML for .yaml/.yml, JSON otherwise.
    public static func load(file path: String) throws(VMDefinitionError) -> VMDefinition {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw VMDefinitionError(field: "", problem: "\(path): cannot be read (no such file, or permission denied)")
        }
        let yaml = path.hasSuffix(".yaml") || path.hasSuffix(".yml")
        var definition = try decode(data, yaml: yaml)
        definition.resolvePaths(relativeTo: URL(fileURLWithPath: path).deletingLastPathComponent().path)
        return definition
    }

    /// Checks what decoding cannot: the name's form, one image, ranges and words.
    public func validate() throws(VMDefinitionError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-")
        guard (1...40).contains(name.count), name.allSatisfy({ allowed.contains($0) }), name.first != "-" else {
            throw VMDefinitionError(field: "name", problem: "'\(name)' is not a VM name; use 1-40 lower-case letters, digits and '-', not starting with '-'")
        }
        let images = [("image", image), ("kernel", kernel), ("multiboot", multiboot), ("multiboot2", multiboot2), ("elf", elf)]
        let given = images.filter { $0.1 != nil }.map(\.0)
        guard given.count == 1 else {
            throw VMDefinitionError(field: given.count > 1 ? given[1] : "image",
                                    problem: given.isEmpty ? "missing; give one of image, kernel, multiboot, multiboot2, elf"
                                        : "only one of image, kernel, multiboot, multiboot2, elf may be given (also \(given[0]))")
        }
        if let cpus, !(1...64).contains(cpus) { throw VMDefinitionError(field: "cpus", problem: "\(cpus) is out of range; use 1-64") }
        try Self.check("irqchip", irqchip, among: ["none", "kernel", "split"])
        try Self.check("platform", platform, among: ["pc", "none"])
        try Self.check("onReset", onReset, among: ["restart", "stop"])
        try Self.check("onHalt", onHalt, among: ["stop", "resume"])
        if initrd != nil, kernel == nil { throw VMDefinitionError(field: "initrd", problem: "needs kernel") }
        try limits?.validate()
        if let memory, memory.wholeMatch(of: /(?i)(0x[0-9a-f]+|[0-9]+ *([kmgt](i?b)?|b)?)/) == nil {
            throw VMDefinitionError(field: "memory", problem: "'\(memory)' is not a size; use bytes or a number with K, M, G (\"256M\", \"1G\")")
        }
    }

    private static func check(_ field: String, _ value: String?, among words: [String]) throws(VMDefinitionError) {
        if let value, !words.contains(value) {
            throw VMDefinitionError(field: field, problem: "'\(value)' is not one of \(words.joined(separator: ", "))")
        }
    }

    /// Makes every file path absolute against `folder` (a VM file's own folder).
    mutating func resolvePaths(relativeTo folder: String) {
        func absolute(_ path: String?) -> String? {
            guard let path, !path.hasPrefix("/") else { return path }
            return URL(fileURLWithPath: folder).appendingPathComponent(path).standardizedFileURL.path
        }
        image = absolute(image); kernel = absolute(kernel); multiboot = absolute(multiboot)
        multiboot2 = absolute(multiboot2); elf = absolute(elf); initrd = absolute(initrd)
        disks = disks?.map { disk in
            var parts = disk.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            if let first = parts.first { parts[0] = absolute(first) ?? first }
            return parts.joined(separator: ",")
        }
    }

    /// Every path the definition names, for the "must be absolute" check of definitions that
    /// come over the API (there is no folder to resolve them against).
    var relativePaths: [(field: String, path: String)] {
        var paths: [(String, String)] = [("image", image), ("kernel", kernel), ("multiboot", multiboot), ("multiboot2", multiboot2),
                                         ("elf", elf), ("initrd", initrd)].compactMap { field, path in path.map { (field, $0) } }
        for (index, disk) in (disks ?? []).enumerated() { paths.append(("disks[\(index)]", String(disk.prefix { $0 != "," }))) }
        return paths.filter { !$0.1.hasPrefix("/") }
    }

    /// `hv run`'s arguments for this VM, its API on `apiSocket` and its COM1 in `console`.
    public func runArguments(apiSocket: String, console: String) -> [String] {
        var arguments = ["run"]
        if let image { arguments.append(image) }
        if let kernel { arguments += ["--kernel", kernel] }
        if let multiboot { arguments += ["--multiboot", multiboot] }
        if let multiboot2 { arguments += ["--multiboot2", multiboot2] }
        if let elf { arguments += ["--elf", elf] }
        if let cmdline { arguments += [kernel != nil ? "--cmdline" : "--append", cmdline] }
        if let initrd { arguments += ["--initrd", initrd] }
        if let memory { arguments += ["--mem", memory] }
        if let cpus { arguments += ["--cpus", "\(cpus)"] }
        if let irqchip { arguments += ["--irqchip", irqchip] }
        if let platform { arguments += ["--platform", platform] }
        for disk in disks ?? [] { arguments += ["--disk", disk] }
        if rng == true { arguments.append("--rng") }
        for pinning in pin ?? [] { arguments += ["--pin-vcpu", pinning] }
        if let onReset { arguments += ["--on-reset", onReset] }
        if let onHalt { arguments += ["--on-halt", onHalt] }
        arguments += ["--api-socket", apiSocket, "--serial", "file:\(console)"]
        return arguments
    }

    /// `hv run`'s options and the fields that set them, to turn its messages into the file's words.
    static let optionFields = ["--kernel": "kernel", "--multiboot": "multiboot", "--multiboot2": "multiboot2", "--elf": "elf",
                               "--cmdline": "cmdline", "--append": "cmdline", "--initrd": "initrd", "--mem": "memory",
                               "--cpus": "cpus", "--irqchip": "irqchip", "--platform": "platform", "--disk": "disks",
                               "--on-reset": "onReset", "--on-halt": "onHalt", "--pin-vcpu": "pin", "IMAGE": "image"]

    private static func explain(_ error: DecodingError) -> VMDefinitionError {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
        }
        switch error {
        case .typeMismatch(let type, let context):
            return VMDefinitionError(field: path(context), problem: "wrong type; expected \(Self.typeName(type))")
        case .valueNotFound(let type, let context):
            return VMDefinitionError(field: path(context), problem: "null; expected \(Self.typeName(type))")
        case .keyNotFound(let key, let context):
            let field = (context.codingPath.map(\.stringValue) + [key.stringValue]).joined(separator: ".")
            return VMDefinitionError(field: field, problem: "missing")
        case .dataCorrupted(let context):
            if context.codingPath.last?.stringValue == "restart" {
                return VMDefinitionError(field: "restart", problem: "not one of \(RestartPolicy.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return VMDefinitionError(field: path(context), problem: context.debugDescription)
        @unknown default:
            return VMDefinitionError(field: "", problem: "\(error)")
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type: "an integer"
        case is Bool.Type: "true or false"
        case is [String].Type: "a list of strings"
        default: "\(type)"
        }
    }

    private static func firstLine(of error: any Error) -> String {
        String("\(error)".split(separator: "\n").first ?? "")
    }
}
