// Small typed wrappers for the numbers that travel between a guest and its monitor.
// A `GuestPhysicalAddress` is never confused with a host pointer or an I/O port.

/// An address in the guest's physical address space (SDM Vol. 3A, 4.1: "physical address").
public struct GuestPhysicalAddress: RawRepresentable, Hashable, Comparable, Sendable,
    ExpressibleByIntegerLiteral
{
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(integerLiteral value: UInt64) { self.rawValue = value }

    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// This address plus `offset` bytes, or nil when the sum leaves the 64-bit space.
    @inlinable public func advanced(by offset: UInt64) -> GuestPhysicalAddress? {
        let (sum, overflow) = rawValue.addingReportingOverflow(offset)
        return overflow ? nil : GuestPhysicalAddress(sum)
    }
}

/// A guest virtual (linear) address, before paging translates it.
public struct GuestVirtualAddress: RawRepresentable, Hashable, Comparable, Sendable,
    ExpressibleByIntegerLiteral
{
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(integerLiteral value: UInt64) { self.rawValue = value }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// An x86 I/O port (SDM Vol. 1, 19.2: a 64 KiB port address space).
public struct IOPort: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public init(integerLiteral value: UInt16) { self.rawValue = value }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// COM1, the first PC serial port.
    public static let com1: IOPort = 0x3F8
    /// The conventional debug-exit port (QEMU's isa-debug-exit default in test kernels).
    public static let debugExit: IOPort = 0xF4
}
