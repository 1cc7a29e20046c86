// `hv ept`: build EPT hierarchies with HVModel's builder and look inside them: the table layout
// a set of mappings needs (`plan`) and the walk of one guest-physical access (`walk`).
import ArgumentParser
import Foundation
import HVCore

struct EPT: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ept",
        abstract: "Plan EPT tables and walk guest-physical addresses through them (SDM 29.3).",
        discussion: """
            Both subcommands build real EPT tables in memory from --map options, then either count \
            them (plan) or walk one access through them (walk). Documentation/EPT.md is a guided tour.
            """,
        subcommands: [EPTPlan.self, EPTWalk.self])
}

/// One `--map GPA:SIZE:PERMS[:TYPE[:HPA]]`: identity-mapped unless HPA is given.
struct EPTMapSpec: ExpressibleByArgument {
    var guest: UInt64
    var size: UInt64
    var permissions: EPTPermissions
    var type: MemoryType
    var host: UInt64

    init?(argument: String) {
        let parts = argument.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard (3...5).contains(parts.count), let guest = Address(argument: parts[0])?.value,
              let size = ByteSize(argument: parts[1])?.bytes, let permissions = EPTPermissions(letters: parts[2])
        else { return nil }
        self.guest = guest
        self.size = size
        self.permissions = permissions
        type = .writeBack
        host = guest
        if parts.count >= 4 {
            guard let type = MemoryType(shortName: parts[3]) else { return nil }
            self.type = type
        }
        if parts.count == 5 {
            guard let host = Address(argument: parts[4])?.value else { return nil }
            self.host = host
        }
    }

    static var defaultCompletionKind: CompletionKind { .default }
}

/// A `GPA:SIZE[:PERMS]` range for --protect and --unmap.
struct EPTRangeSpec: ExpressibleByArgument {
    var guest: UInt64
    var size: UInt64
    var permissions: EPTPermissions?

    init?(argument: String) {
        let parts = argument.split(separator: ":").map(String.init)
        guard (2...3).contains(parts.count), let guest = Address(argument: parts[0])?.value,
              let size = ByteSize(argument: parts[1])?.bytes else { return nil }
        self.guest = guest
        self.size = size
        if parts.count == 3 {
            guard let permissions = EPTPermissions(letters: parts[2]) else { return nil }
            self.permissions = permissions
        }
    }
}

/// The mapping options both subcommands share.
struct EPTMappingOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "A guest-physical range to map: GPA:SIZE:PERMS[:TYPE[:HPA]], e.g. 0:64G:rwx or 0xfee00000:4K:rw:UC. PERMS from r, w, x (u: user-execute); TYPE one of UC, WC, WT, WP, WB (default WB); HPA defaults to GPA. Repeatable; later maps replace earlier ones.",
        valueName: "range"))
    var map: [EPTMapSpec] = []

    @Flag(name: .long, help: "Use 2 MiB and 1 GiB pages where a range allows.")
    var hugePages = false

    @Option(name: .long, help: "EPT walk length: 4 or 5.")
    var levels = 4

    mutating func validate() throws {
        if map.isEmpty { throw ValidationError("give at least one --map GPA:SIZE:PERMS, e.g. --map 0:1G:rwx") }
        if levels != 4 && levels != 5 { throw ValidationError("--levels must be 4 or 5") }
    }

    /// The most table pages `build` makes (1 GiB of tables): 4 KiB pages over 512 GiB or more.
    static let maximumTablePages: UInt64 = 1 << 18

    /// Builds the tables.
    func build() throws -> EPTBuilder<PageTablePool> {
        var tablesNeeded: UInt64 = 0
        for spec in map {
            let name = "--map \(hex(spec.guest)):\(hex(spec.size)):\(spec.permissions.letters)"
            if spec.guest.addingReportingOverflow(spec.size).overflow {
                throw ValidationError("\(name): the range \(hex(spec.guest)) + \(hex(spec.size)) runs past 2^64")
            }
            if spec.host.addingReportingOverflow(spec.size).overflow {
                throw ValidationError("\(name): the host range \(hex(spec.host)) + \(hex(spec.size)) runs past 2^64")
            }
            // A page table maps 2 MiB with 4 KiB pages: without huge pages, that is the bulk of it.
            if !hugePages { tablesNeeded &+= spec.size / (2 << 20) + 1 }
        }
        if tablesNeeded > Self.maximumTablePages {
            throw ValidationError("with 4 KiB pages these maps need about \(tablesNeeded) page tables (\(byteText(tablesNeeded << 12)) of tables), more than the \(Self.maximumTablePages) (1 GiB) hv builds; add --huge-pages or map less than 512 GiB")
        }
        var builder = try EPTBuilder(tables: PageTablePool(), options: EPTBuilderOptions(levels: levels, hugePages: hugePages))
        for spec in map {
            do {
                try builder.map(GuestPhysicalAddress(spec.guest), size: spec.size, to: HostPhysicalAddress(spec.host),
                                permissions: spec.permissions, memoryType: .fixed(spec.type))
            } catch {
                throw ValidationError("--map \(hex(spec.guest)):\(hex(spec.size)):\(spec.permissions.letters): \(describe(error))")
            }
        }
        return builder
    }
}

/// 0x-prefixed lower-case hex.
func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

/// A byte count in the largest binary unit that divides it.
func byteText(_ bytes: UInt64) -> String { ByteSize(bytes: bytes).description }

func describe(_ error: EPTBuildError) -> String {
    switch error {
    case .misaligned(let value): "\(hex(value)) is not 4 KiB aligned"
    case .emptyRange: "the range is empty"
    case .outOfRange(let value): "\(hex(value)) is beyond what the EPT walk (or MAXPHYADDR) reaches"
    case .writeWithoutRead: "write without read is an EPT misconfiguration (SDM 29.3.3.1); add r"
    case .executeOnlyUnsupported: "execute-only is not supported by this processor"
    case .outOfTablePages: "out of table pages"
    case .tableUnreadable(let address): "table page \(hex(address.rawValue)) is unreadable"
    }
}
