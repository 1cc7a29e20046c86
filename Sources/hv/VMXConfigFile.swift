// `hv vmx plan --config FILE`: a VMXConfiguration read from JSON (Foundation's JSONDecoder) or
// YAML (Yams). Keys are the knob names of --enable/--disable (true/false) plus value keys;
// an unknown key is an error that lists the valid ones.
import Foundation
import HVCore
import Yams

/// The settings of one configuration file, applied over `VMXConfiguration()` defaults.
struct VMXConfigFile: Decodable {
    /// Knob name -> on/off, in `VMXConfiguration.knobNames` order when applied.
    var knobs: [String: Bool] = [:]
    var guestMode: VMXGuestMode?
    var preemptionTimerTSC: UInt64?
    var hugePages: EPTHugePages?
    var eptMemoryType: UInt8?
    var vpidValue: UInt16?
    var hostStackSize: UInt64?
    var guestStackSize: UInt64?
    var passThroughMSRs: [UInt32]?
    var trappedMSRs: [UInt32]?
    var exceptionBitmap: UInt32?
    var cr0GuestHostMask: UInt64?
    var cr4GuestHostMask: UInt64?
    var io: String?
    var trappedPorts: [ClosedRange<UInt16>]?
    var postedInterruptVector: UInt8?
    var guestEntry: UInt64?
    var structureBase: UInt64?
    var hostEntry: UInt64?

    /// The keys that carry values rather than on/off knobs, with what they take.
    static let valueKeys: [(key: String, help: String)] = [
        ("guest-mode", "long, protected or real"),
        ("preemption-timer-tsc", "timer interval in TSC ticks (turns the timer on)"),
        ("huge-pages", "none, 2m or 1g"),
        ("ept-memory-type", "WB (6) or UC (0)"),
        ("vpid-value", "the VPID, 1-65535"),
        ("host-stack-size", "bytes, e.g. 16384 or \"16K\""),
        ("guest-stack-size", "bytes"),
        ("pass-through-msrs", "list of MSR indexes the guest reads and writes directly"),
        ("trapped-msrs", "list of MSR indexes that always exit"),
        ("exception-bitmap", "32-bit mask of exception vectors that exit"),
        ("cr0-guest-host-mask", "CR0 bits the VMM owns"),
        ("cr4-guest-host-mask", "CR4 bits the VMM owns"),
        ("io", "bitmap, unconditional or none"),
        ("trapped-ports", "list of ports or \"FIRST-LAST\" ranges that exit (implies io: bitmap)"),
        ("posted-interrupt-vector", "0-255"),
        ("guest-entry", "guest RIP"),
        ("structure-base", "host-physical base of the VMM's 4-KByte structures"),
        ("host-entry", "host RIP after a VM exit"),
    ]

    /// Every key a file may use.
    static var validKeys: [String] { VMXConfiguration.knobNames + valueKeys.map(\.key) }

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// A number given as an integer or as a string in hex (`"0x3f8"`) or with a size suffix (`"16K"`).
    struct Number: Decodable {
        var value: UInt64
        init(from decoder: Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let value = try? container.decode(UInt64.self) {
                self.value = value
                return
            }
            let text = try container.decode(String.self)
            if let value = VMXText.number(text) ?? ByteSize(argument: text)?.bytes {
                self.value = value
            } else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "'\(text)' is not a number (decimal, 0x hex, or a size such as 16K)")
            }
        }
    }

    /// A port (`0xf4`) or a port range (`"0x3f8-0x3ff"`).
    struct PortRange: Decodable {
        var range: ClosedRange<UInt16>
        init(from decoder: Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let port = try? container.decode(Number.self), port.value <= 0xFFFF {
                range = UInt16(port.value)...UInt16(port.value)
                return
            }
            let text = try container.decode(String.self)
            let parts = text.split(separator: "-").map { VMXText.number(String($0).trimmingCharacters(in: .whitespaces)) }
            guard parts.count == 2, let first = parts[0], let last = parts[1], first <= last, last <= 0xFFFF else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "'\(text)' is not a port or a FIRST-LAST port range within 0-0xffff")
            }
            range = UInt16(first)...UInt16(last)
        }
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        func number<T: FixedWidthInteger>(_ key: Key, as type: T.Type) throws -> T {
            let value = try container.decode(Number.self, forKey: key).value
            guard let narrowed = T(exactly: value) else {
                throw DecodingError.dataCorruptedError(forKey: key, in: container, debugDescription: "\(value) does not fit \(T.bitWidth) bits")
            }
            return narrowed
        }
        func choice<T>(_ key: Key, _ options: [(String, T)]) throws -> T {
            let text = try container.decode(String.self, forKey: key)
            guard let match = options.first(where: { $0.0.lowercased() == text.lowercased() }) else {
                throw DecodingError.dataCorruptedError(forKey: key, in: container, debugDescription: "'\(text)' is not one of \(options.map(\.0).joined(separator: ", "))")
            }
            return match.1
        }
        for key in container.allKeys {
            let name = key.stringValue
            if VMXConfiguration.knobNames.contains(name) {
                knobs[name] = try container.decode(Bool.self, forKey: key)
                continue
            }
            switch name {
            case "guest-mode": guestMode = try choice(key, VMXGuestMode.allCases.map { ($0.rawValue, $0) })
            case "preemption-timer-tsc": preemptionTimerTSC = try number(key, as: UInt64.self)
            case "huge-pages": hugePages = try choice(key, EPTHugePages.allCases.map { ($0.rawValue, $0) })
            case "ept-memory-type":
                if let text = try? container.decode(String.self, forKey: key), VMXText.number(text) == nil {
                    eptMemoryType = try choice(key, [("WB", 6), ("UC", 0)])
                } else {
                    eptMemoryType = try number(key, as: UInt8.self)
                }
            case "vpid-value": vpidValue = try number(key, as: UInt16.self)
            case "host-stack-size": hostStackSize = try number(key, as: UInt64.self)
            case "guest-stack-size": guestStackSize = try number(key, as: UInt64.self)
            case "pass-through-msrs", "trapped-msrs":
                let values = try container.decode([Number].self, forKey: key).map(\.value)
                guard values.allSatisfy({ $0 <= UInt64(UInt32.max) }) else {
                    throw DecodingError.dataCorruptedError(forKey: key, in: container, debugDescription: "an MSR index must fit 32 bits")
                }
                if name == "pass-through-msrs" { passThroughMSRs = values.map { UInt32($0) } } else { trappedMSRs = values.map { UInt32($0) } }
            case "exception-bitmap": exceptionBitmap = try number(key, as: UInt32.self)
            case "cr0-guest-host-mask": cr0GuestHostMask = try number(key, as: UInt64.self)
            case "cr4-guest-host-mask": cr4GuestHostMask = try number(key, as: UInt64.self)
            case "io": io = try choice(key, [("bitmap", "bitmap"), ("unconditional", "unconditional"), ("none", "none")])
            case "trapped-ports": trappedPorts = try container.decode([PortRange].self, forKey: key).map(\.range)
            case "posted-interrupt-vector": postedInterruptVector = try number(key, as: UInt8.self)
            case "guest-entry": guestEntry = try number(key, as: UInt64.self)
            case "structure-base": structureBase = try number(key, as: UInt64.self)
            case "host-entry": hostEntry = try number(key, as: UInt64.self)
            default:
                throw DecodingError.dataCorruptedError(forKey: key, in: container,
                    debugDescription: "unknown key '\(name)'; valid keys: \(Self.validKeys.joined(separator: ", "))")
            }
        }
    }

    /// Applies the file to `configuration`: knobs first, then values (a value overrides a knob).
    func apply(to configuration: inout VMXConfiguration) {
        for name in VMXConfiguration.knobNames {
            if let on = knobs[name] { _ = configuration.set(name, on) }
        }
        if let guestMode { configuration.guestMode = guestMode }
        if let preemptionTimerTSC { configuration.preemptionTimerTSC = preemptionTimerTSC }
        if let hugePages { configuration.hugePages = hugePages }
        if let eptMemoryType { configuration.eptMemoryType = eptMemoryType }
        if let vpidValue { configuration.vpidValue = vpidValue }
        if let hostStackSize { configuration.hostStackSize = hostStackSize }
        if let guestStackSize { configuration.guestStackSize = guestStackSize }
        if let passThroughMSRs { configuration.passThroughMSRs = passThroughMSRs }
        if let trappedMSRs { configuration.trappedMSRs = trappedMSRs }
        if let exceptionBitmap { configuration.exceptionBitmap = exceptionBitmap }
        if let cr0GuestHostMask { configuration.cr0GuestHostMask = cr0GuestHostMask }
        if let cr4GuestHostMask { configuration.cr4GuestHostMask = cr4GuestHostMask }
        switch io {
        case "unconditional": configuration.io = .unconditional
        case "none": configuration.io = .none
        case "bitmap" where trappedPorts == nil:
            if case .bitmap = configuration.io {} else { configuration.io = VMXConfiguration().io }
        default: break
        }
        if let trappedPorts { configuration.io = .bitmap(trappedPorts: trappedPorts) }
        if let postedInterruptVector { configuration.apic.postedInterruptVector = postedInterruptVector }
        if let guestEntry { configuration.guestEntry = guestEntry }
        if let structureBase { configuration.structureBase = structureBase }
        if let hostEntry { configuration.hostEntry = hostEntry }
    }

    /// Reads `path`: JSON for `.json`, YAML otherwise. The error is one line naming the file.
    static func load(path: String) -> Result<VMXConfigFile, VMXConfigFileError> {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            return .failure(VMXConfigFileError(message: "--config \(path): cannot read the file (\(describeFileError(error, path: path)))"))
        }
        let isJSON = path.lowercased().hasSuffix(".json")
        do {
            if isJSON { return .success(try JSONDecoder().decode(VMXConfigFile.self, from: data)) }
            return .success(try YAMLDecoder().decode(VMXConfigFile.self, from: String(decoding: data, as: UTF8.self)))
        } catch let error as DecodingError {
            return .failure(VMXConfigFileError(message: "\(path): \(describe(error))"))
        } catch {
            // Syntax errors: Yams's YamlError and JSONSerialization's NSError name line and column.
            let text = "\(error)".replacingOccurrences(of: "\n", with: " ")
            return .failure(VMXConfigFileError(message: "\(path): not valid \(isJSON ? "JSON" : "YAML"): \(text)"))
        }
    }

    /// A decoding error in one line: the key path and what is wrong.
    static func describe(_ error: DecodingError) -> String {
        func path(_ codingPath: [CodingKey]) -> String {
            codingPath.isEmpty ? "" : "'" + codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".") + "': "
        }
        switch error {
        case .dataCorrupted(let context):
            return path(context.codingPath) + context.debugDescription
        case .typeMismatch(let type, let context):
            if context.codingPath.isEmpty { return "the file must be a mapping of keys to values" }
            let wanted = type == Bool.self ? "true or false" : type == String.self ? "a string" : "\(type)"
            return path(context.codingPath) + "expected \(wanted)"
        case .valueNotFound(_, let context):
            return path(context.codingPath) + "missing value"
        case .keyNotFound(let key, let context):
            return path(context.codingPath) + "missing key '\(key.stringValue)'"
        @unknown default:
            return "\(error)"
        }
    }
}

struct VMXConfigFileError: Error {
    var message: String
}
