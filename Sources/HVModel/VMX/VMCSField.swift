// VMCS field encodings (SDM Vol. 3C, 25.11.2 "VMREAD, VMWRITE, and Encodings of VMCS Fields";
// Vol. 3D, Appendix B) and a formatter that dumps a VMCS field by field.

/// A VMCS field encoding: the operand of VMREAD and VMWRITE.
///
/// Bit 0 is the access type (1 = the high 32 bits of a 64-bit field), bits 9:1 the index,
/// bits 11:10 the type, bits 14:13 the width; bit 12 and bits 31:15 are reserved (SDM Table 25-21).
public struct VMCSField: RawRepresentable, Hashable, Comparable, Sendable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// How many bits a field holds (encoding bits 14:13).
    public enum Width: Int, Sendable, CaseIterable {
        case bits16 = 0, bits64 = 1, bits32 = 2, natural = 3
        /// "16-bit", "64-bit", "32-bit", "natural-width".
        public var name: String {
            switch self {
            case .bits16: "16-bit"
            case .bits64: "64-bit"
            case .bits32: "32-bit"
            case .natural: "natural-width"
            }
        }
        /// The mask of bits a value of this width keeps (natural width is 64 bits on Intel 64).
        public var mask: UInt64 {
            switch self {
            case .bits16: 0xFFFF
            case .bits32: 0xFFFF_FFFF
            case .bits64, .natural: UInt64.max
            }
        }
    }

    /// What a field describes (encoding bits 11:10).
    public enum Kind: Int, Sendable, CaseIterable {
        case control = 0, exitInformation = 1, guestState = 2, hostState = 3
        /// The SDM's name for the kind.
        public var name: String {
            switch self {
            case .control: "control"
            case .exitInformation: "VM-exit information"
            case .guestState: "guest state"
            case .hostState: "host state"
            }
        }
    }

    /// The field's width.
    @inlinable public var width: Width { Width(rawValue: Int((rawValue >> 13) & 3))! }
    /// The field's kind.
    @inlinable public var kind: Kind { Kind(rawValue: Int((rawValue >> 10) & 3))! }
    /// The index within its width and kind.
    @inlinable public var index: Int { Int((rawValue >> 1) & 0x1FF) }
    /// Whether this encoding names the high 32 bits of a 64-bit field.
    @inlinable public var isHighAccess: Bool { rawValue & 1 != 0 }
    /// Whether the encoding sets a reserved bit (VMREAD/VMWRITE fail with error 12).
    @inlinable public var hasReservedBits: Bool { rawValue & 0xFFFF_9000 != 0 || (isHighAccess && width != .bits64) }
    /// The full-access encoding of this field (clears the high-access bit).
    @inlinable public var full: VMCSField { VMCSField(rawValue & ~1) }
    /// The high-access encoding of a 64-bit field.
    @inlinable public var high: VMCSField { VMCSField(rawValue | 1) }

    /// Builds an encoding from its parts.
    public init(width: Width, kind: Kind, index: Int, high: Bool = false) {
        rawValue = UInt32(width.rawValue) << 13 | UInt32(kind.rawValue) << 10 | UInt32(index & 0x1FF) << 1 | (high ? 1 : 0)
    }

    /// The position of this field's full encoding in `all`, or nil for an unknown encoding.
    @inlinable public var tableIndex: Int? {
        let key = full.rawValue
        guard key < 0x8000 else { return nil }
        let index = Self.indexByEncoding[Int(key >> 1)]
        return index < 0 ? nil : Int(index)
    }

    /// `all`'s index for each full encoding below 8000H (by encoding >> 1), -1 where none: built
    /// once so that every VMCS read is one load instead of a binary search.
    @usableFromInline static let indexByEncoding: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x4000)
        for (index, entry) in all.enumerated() { table[Int(entry.field.rawValue >> 1)] = Int16(index) }
        return table
    }()

    /// The SDM name ("guest CR0"; "guest IA32_EFER (high)" for a high access), or nil if unknown.
    public var name: String? {
        guard let index = tableIndex else { return nil }
        return Self.all[index].name + (isHighAccess ? " (high)" : "")
    }

    /// The field whose SDM name is `name` (case-insensitive), or nil.
    public init?(name: String) {
        let wanted = asciiUppercased(name)
        guard let match = Self.all.first(where: { asciiUppercased($0.name) == wanted }) else { return nil }
        self = match.field
    }

    /// "0x6800 guest CR0 (natural-width guest state)".
    public var description: String {
        "\(hexString(UInt64(rawValue), digits: 4)) \(name ?? "unknown field") (\(width.name) \(kind.name))"
    }
}

/// A VMCS as values by field: what a plan writes and what the entry checks read.
/// Unwritten fields read as 0, as in a VMCS region after VMCLEAR of zeroed memory.
public struct VMCSImage: Sendable, Hashable {
    @usableFromInline var values: [UInt64]
    @usableFromInline var written: [Bool]

    public init() {
        values = Array(repeating: 0, count: VMCSField.all.count)
        written = Array(repeating: false, count: VMCSField.all.count)
    }

    /// The field's value (0 if never written or unknown). Writing an unknown field is ignored.
    @inlinable public subscript(field: VMCSField) -> UInt64 {
        get {
            guard let index = field.tableIndex else { return 0 }
            return field.isHighAccess ? values[index] >> 32 : values[index]
        }
        set {
            guard let index = field.tableIndex else { return }
            let masked = newValue & field.width.mask
            if field.isHighAccess {
                values[index] = values[index] & 0xFFFF_FFFF | (newValue & 0xFFFF_FFFF) << 32
            } else {
                values[index] = masked
            }
            written[index] = true
        }
    }

    /// Whether the field has been written.
    public func wasWritten(_ field: VMCSField) -> Bool {
        field.tableIndex.map { written[$0] } ?? false
    }

    /// The written fields with their values, in encoding order.
    public var writtenFields: [(field: VMCSField, value: UInt64)] {
        var result: [(field: VMCSField, value: UInt64)] = []
        for index in 0..<values.count where written[index] { result.append((VMCSField.all[index].field, values[index])) }
        return result
    }
}

/// Dumps a VMCS through `read` (which returns nil for a field it cannot read, as VMREAD fails for
/// a field the processor does not support), one line per field: encoding, name, value.
public func formatVMCS(
    fields: [VMCSField] = VMCSField.all.map { $0.field },
    read: (VMCSField) -> UInt64?
) -> String {
    var lines: [String] = []
    var kind: VMCSField.Kind? = nil
    for field in fields {
        guard let value = read(field) else { continue }
        if field.kind != kind {
            kind = field.kind
            lines.append("# \(field.kind.name)")
        }
        let digits = field.width == .bits16 ? 4 : field.width == .bits32 ? 8 : 16
        let name = field.name ?? "unknown field"
        let padded = name.count < 48 ? name + String(repeating: " ", count: 48 - name.count) : name
        lines.append("\(hexString(UInt64(field.rawValue), digits: 4))  \(padded) \(hexString(value, digits: digits))")
    }
    return lines.joined(separator: "\n")
}
