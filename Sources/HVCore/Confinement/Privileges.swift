// Dropping root: a VMM started as root (to open /dev/kvm, a TAP, a disk) runs its guest as an
// unprivileged user, so a device model a guest subverts holds no more than that user does
// (setuid(2), setgroups(2); Firecracker's jailer does the same before it execs the VMM).
#if os(Linux)
import Glibc

/// A user to run as: looked up before set-up, switched to after it.
public struct UnprivilegedUser: Sendable, Hashable {
    public let name: String
    public let uid: uid_t
    public let gid: gid_t

    /// Looks `name` up in the user database (a name, or a numeric uid). Refuses root itself,
    /// and a process that is not root (it cannot switch).
    public init(_ name: String) throws(ConfinementError) {
        guard geteuid() == 0 else {
            throw ConfinementError(description: "only root can switch to another user; this process runs as uid \(geteuid())")
        }
        var entry = passwd(), result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        let status = getpwnam_r(name, &entry, &buffer, buffer.count, &result)
        if result == nil, status == 0, let number = uid_t(name) {
            _ = getpwuid_r(number, &entry, &buffer, buffer.count, &result)
        }
        guard result != nil else {
            throw ConfinementError(description: status == 0 ? "no user named \(name) in the user database" : "looking up \(name) failed: \(errnoText(Int32(status)))")
        }
        guard entry.pw_uid != 0 else {
            throw ConfinementError(description: "\(name) is root (uid 0); name an unprivileged user, such as nobody")
        }
        self.name = name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
    }

    /// Becomes this user for good: supplementary groups cleared, then the group, then the user
    /// (in that order: only root may change groups); then checks that root cannot be regained.
    /// glibc applies each to every thread of the process, not only the caller (setxid(7) in
    /// nptl(7)), and as root `setgid`/`setuid` set the real, effective and saved IDs alike.
    /// Descriptors opened before stay usable; new files are opened as this user.
    public func switchTo() throws(ConfinementError) {
        var group = gid
        guard setgroups(1, &group) == 0 else { throw ConfinementError(description: "setgroups(\(gid)): \(errnoText(errno))") }
        guard setgid(gid) == 0 else { throw ConfinementError(description: "setgid(\(gid)): \(errnoText(errno))") }
        guard setuid(uid) == 0 else { throw ConfinementError(description: "setuid(\(uid)): \(errnoText(errno))") }
        guard setuid(0) != 0, getuid() == uid, geteuid() == uid, getegid() == gid else {
            throw ConfinementError(description: "the process could regain root after switching to \(name); stopping")
        }
    }
}
#endif
