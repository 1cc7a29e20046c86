// A TAP interface on the host: the other end of a guest's virtio-net device. `hv` creates it
// itself (Documentation/networking/tuntap.rst in the kernel: open /dev/net/tun, TUNSETIFF with
// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) and can bring it up with an address, so the host side
// needs no separate `ip tuntap add`. With IFF_VNET_HDR every frame carries the same 12-byte
// virtio-net header the guest's driver uses (TUNSETVNETHDRSZ), so frames pass through as they are.
#if canImport(Glibc)
import Glibc
#endif
import CKVM

/// Why a TAP interface could not be created or configured.
public struct TAPError: Error, Equatable, CustomStringConvertible {
    public var interface: String
    public var problem: String
    public var description: String { "TAP \(interface): \(problem)" }
}

/// An IPv4 address with its prefix length, "10.0.2.1/24".
public struct IPv4Interface: Sendable, Equatable, CustomStringConvertible {
    public var address: (UInt8, UInt8, UInt8, UInt8)
    public var prefixLength: Int

    public init?(parsing text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return nil }
        let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false).compactMap { UInt8($0) }
        guard octets.count == 4 else { return nil }
        let prefix = parts.count == 2 ? Int(parts[1]) : 24
        guard let prefix, (0...32).contains(prefix) else { return nil }
        address = (octets[0], octets[1], octets[2], octets[3])
        prefixLength = prefix
    }

    public static func == (a: Self, b: Self) -> Bool { a.description == b.description }
    public var description: String { "\(address.0).\(address.1).\(address.2).\(address.3)/\(prefixLength)" }
    var netmask: UInt32 { prefixLength == 0 ? 0 : UInt32.max << UInt32(32 - prefixLength) }
}

public final class TAPDevice: Sendable {
    /// The size of the virtio-net header on every frame (struct virtio_net_hdr with num_buffers,
    /// the VIRTIO_F_VERSION_1 layout).
    public static let headerSize: Int32 = 12

    public let name: String
    /// Non-blocking; read by the network device's receive thread, written by vCPU threads.
    let fd: Int32

    /// Creates (or attaches to an existing persistent) TAP interface `name`. Needs
    /// CAP_NET_ADMIN, as every TAP user does.
    public init(name: String) throws(TAPError) {
        guard !name.isEmpty, name.utf8.count < Int(IFNAMSIZ), !name.contains("/") else {
            throw TAPError(interface: name, problem: "an interface name is 1-\(IFNAMSIZ - 1) characters without '/'")
        }
        let fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw TAPError(interface: name, problem: "/dev/net/tun: \(String(cString: strerror(errno)))") }
        var request = Self.request(name)
        request.ifr_ifru.ifru_flags = Int16(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        guard hv_ioctl_ptr(fd, HV_TUNSETIFF, &request) == 0 else {
            let code = errno
            close(fd)
            let hint = code == EPERM ? " (creating a TAP interface needs CAP_NET_ADMIN: run as root or give hv the capability)" : ""
            throw TAPError(interface: name, problem: "TUNSETIFF: \(String(cString: strerror(code)))\(hint)")
        }
        var size = Self.headerSize
        guard hv_ioctl_ptr(fd, HV_TUNSETVNETHDRSZ, &size) == 0 else {
            let code = errno
            close(fd)
            throw TAPError(interface: name, problem: "TUNSETVNETHDRSZ: \(String(cString: strerror(code)))")
        }
        self.fd = fd
        self.name = name
    }

    deinit { close(fd) }

    /// Tells the TAP which offloads the reader (the guest's driver) accepts, so the host may
    /// hand over partially checksummed frames and TCP segments up to 64 KiB (TUNSETOFFLOAD with
    /// TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6).
    public func setOffloads(checksum: Bool, tso4: Bool, tso6: Bool) throws(TAPError) {
        var flags: UInt32 = 0
        if checksum {
            flags |= UInt32(TUN_F_CSUM)
            if tso4 { flags |= UInt32(TUN_F_TSO4) }
            if tso6 { flags |= UInt32(TUN_F_TSO6) }
        }
        guard hv_ioctl_value(fd, HV_TUNSETOFFLOAD, UInt(flags)) == 0 else {
            throw TAPError(interface: name, problem: "TUNSETOFFLOAD: \(String(cString: strerror(errno)))")
        }
    }

    static func request(_ name: String) -> ifreq {
        var request = ifreq()
        withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { bytes in
            for (index, byte) in name.utf8.prefix(bytes.count - 1).enumerated() { bytes[index] = byte }
        }
        return request
    }

    /// Brings the interface up, with `address` on it when given (SIOCSIFADDR, SIOCSIFNETMASK,
    /// SIOCSIFFLAGS, as `ip addr add` and `ip link set up` do).
    public func bringUp(address: IPv4Interface?) throws(TAPError) {
        let socketFD = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard socketFD >= 0 else { throw TAPError(interface: name, problem: "socket: \(String(cString: strerror(errno)))") }
        defer { close(socketFD) }
        func call(_ operation: String, _ number: Int, _ request: inout ifreq) throws(TAPError) {
            guard hv_ioctl_ptr(socketFD, UInt(number), &request) == 0 else {
                throw TAPError(interface: name, problem: "\(operation): \(String(cString: strerror(errno)))")
            }
        }
        if let address {
            var request = Self.request(name)
            request.ifr_ifru.ifru_addr = Self.socketAddress(address.address)
            try call("SIOCSIFADDR \(address)", Int(SIOCSIFADDR), &request)
            let mask = address.netmask
            request.ifr_ifru.ifru_netmask = Self.socketAddress((UInt8(mask >> 24), UInt8(truncatingIfNeeded: mask >> 16),
                                                                UInt8(truncatingIfNeeded: mask >> 8), UInt8(truncatingIfNeeded: mask)))
            try call("SIOCSIFNETMASK", Int(SIOCSIFNETMASK), &request)
        }
        var request = Self.request(name)
        try call("SIOCGIFFLAGS", Int(SIOCGIFFLAGS), &request)
        request.ifr_ifru.ifru_flags |= Int16(IFF_UP)
        try call("SIOCSIFFLAGS", Int(SIOCSIFFLAGS), &request)
    }

    static func socketAddress(_ octets: (UInt8, UInt8, UInt8, UInt8)) -> sockaddr {
        var inet = sockaddr_in()
        inet.sin_family = sa_family_t(AF_INET)
        withUnsafeMutableBytes(of: &inet.sin_addr) { bytes in
            bytes[0] = octets.0; bytes[1] = octets.1; bytes[2] = octets.2; bytes[3] = octets.3
        }
        var generic = sockaddr()
        withUnsafeMutableBytes(of: &generic) { target in
            withUnsafeBytes(of: inet) { source in target.copyMemory(from: UnsafeRawBufferPointer(rebasing: source.prefix(target.count))) }
        }
        return generic
    }
}
