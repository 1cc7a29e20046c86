// `hv ept walk`: one guest-physical access through freshly built EPT tables, step by step.
import ArgumentParser
import Foundation
import HVCore

struct EPTWalk: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "walk",
        abstract: "Walk one guest-physical access through EPT tables built from --map, printing each entry and the result.")

    @OptionGroup var mapping: EPTMappingOptions

    @Option(name: .long, help: ArgumentHelp("A range whose rights to change after mapping: GPA:SIZE:PERMS. Repeatable.", valueName: "range"))
    var protect: [EPTRangeSpec] = []

    @Option(name: .long, help: ArgumentHelp("A range to unmap after mapping: GPA:SIZE. Repeatable.", valueName: "range"))
    var unmap: [EPTRangeSpec] = []

    @Option(name: .long, help: "The guest-physical address to translate.")
    var address: Address

    @Option(name: .long, help: "The access: read, write or fetch.")
    var access: String = "read"

    @Flag(name: .long, help: "Enable EPT accessed/dirty flags (EPTP bit 6) and show the entries after the walk.")
    var accessedDirty = false

    mutating func validate() throws {
        guard ["read", "write", "fetch"].contains(access) else {
            throw ValidationError("--access must be read, write or fetch, not '\(access)'")
        }
        for spec in protect where spec.permissions == nil {
            throw ValidationError("--protect needs GPA:SIZE:PERMS, e.g. --protect 0x1000:4K:r")
        }
    }

    func run() throws {
        var builder = try mapping.build()
        for spec in unmap {
            do { try builder.unmap(GuestPhysicalAddress(spec.guest), size: spec.size) } catch {
                throw ValidationError("--unmap: \(describe(error))")
            }
        }
        for spec in protect {
            do { try builder.protect(GuestPhysicalAddress(spec.guest), size: spec.size, permissions: spec.permissions!) } catch {
                throw ValidationError("--protect: \(describe(error))")
            }
        }
        let walker = builder.walker(accessedDirty: accessedDirty)
        let kind: MemoryAccessKind = access == "write" ? .write : access == "fetch" ? .fetch : .read
        print("EPTP \(hex(walker.pointer.rawValue)): root \(hex(walker.pointer.root.rawValue)), \(walker.pointer.levels) levels, A/D \(accessedDirty ? "on" : "off")")
        print("\(access) of guest-physical \(hex(address.value))")
        var path = EPTWalkPath()
        var log: PageModificationLog? = nil
        let outcome: Result<EPTTranslation, EPTFault>
        do {
            outcome = .success(try walker.translate(GuestPhysicalAddress(address.value), EPTAccess(kind), memory: &builder.tables,
                                                    path: &path, log: &log))
        } catch {
            outcome = .failure(error)
        }
        for step in path.steps {
            let index = step.level.index(of: address.value)
            let after = (try? builder.tables.read64(at: step.entryAddress.rawValue)).map(EPTEntry.init(rawValue:)) ?? step.entry
            var line = "  \(pad(step.level.entryName, 5)) [\(pad(String(index), 3, right: true))] at \(hex(step.entryAddress.rawValue)) = \(pad(hex(step.entry.rawValue), 18)) \(decode(step.entry, step.level))"
            if after != step.entry { line += "  -> \(hex(after.rawValue)) after A/D" }
            print(line)
        }
        switch outcome {
        case .success(let t):
            print("=> host-physical \(hex(t.hostPhysical.rawValue)): \(byteText(t.pageSize.bytes)) page, rights \(t.permissions.letters), \(t.memoryType.shortName)\(t.ignorePAT ? " (ignore PAT)" : "")")
        case .failure(.violation(let v)):
            print("=> EPT violation (exit reason 48), exit qualification \(hex(v.qualification.rawValue)): \(qualificationText(v.qualification))")
            if let level = v.notPresentLevel { print("   the \(level.entryName) is not present (bits 2:0 = 000, SDM 29.3.2)") }
            else { print("   the rights ANDed over the walk do not allow a \(access) (SDM 29.3.3.2)") }
        case .failure(.misconfiguration(let m)):
            print("=> EPT misconfiguration (exit reason 49) at the \(m.level.entryName): \(m.reason) (SDM 29.3.3.1)")
        case .failure(let other):
            print("=> \(other)")
        }
    }

    /// The entry's fields in words.
    func decode(_ entry: EPTEntry, _ level: EPTLevel) -> String {
        guard entry.isPresent(modeBasedExecute: false) else { return "not present" }
        var text = entry.permissions.letters
        if entry.isLeaf(at: level) {
            text += " \(entry.memoryType?.shortName ?? "type \(entry.memoryTypeBits)") page \(hex(entry.address))"
            if level != .pageTable { text += " (\(byteText(level.entrySpan)) leaf)" }
            if entry.ignorePAT { text += " IPAT" }
        } else {
            text += " -> \(level.next?.tableName ?? "?") at \(hex(entry.address))"
        }
        if entry.accessed { text += " A" }
        if entry.dirty && entry.isLeaf(at: level) { text += " D" }
        return text
    }

    func qualificationText(_ q: EPTViolationQualification) -> String {
        let names: [(EPTViolationQualification, String)] = [
            (.dataRead, "read"), (.dataWrite, "write"), (.instructionFetch, "fetch"), (.readable, "readable"),
            (.writable, "writable"), (.executable, "executable"), (.userExecutable, "user-executable"),
            (.linearAddressValid, "linear-address-valid"), (.translationOfLinear, "translation-of-linear"),
        ]
        let parts = names.filter { q.contains($0.0) }.map(\.1)
        return parts.isEmpty ? "none" : parts.joined(separator: " | ")
    }
}
