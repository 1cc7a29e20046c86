// The only file that calls open, ioctl and mmap on KVM file descriptors (Documentation/Architecture.md,
// Conventions: after swift-system): one small function per call, -1 turned into a typed error right here.
#if os(Linux)
import CKVM
import HVCore
import Glibc

enum KVMSyscall {
    /// open(2) of the KVM device. Retries EINTR.
    static func openDevice(_ path: String) throws(HVError) -> Int32 {
        while true {
            let fd = hv_open(path, O_RDWR | O_CLOEXEC)
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw .hypervisorUnavailable(path: path, errno: errno)
        }
    }

    /// An ioctl whose argument is an integer; returns the kernel's non-negative result.
    /// Retries EINTR (these calls are not KVM_RUN).
    @discardableResult
    static func ioctl(_ fd: Int32, _ request: UInt, value: UInt = 0, _ name: StaticString) throws(HVError) -> Int32 {
        while true {
            let result = hv_ioctl_value(fd, request, value)
            if result >= 0 { return result }
            if errno == EINTR { continue }
            throw .systemCall(operation: "\(name)", errno: errno)
        }
    }

    /// An ioctl whose argument points at a structure. Retries EINTR.
    @discardableResult
    static func ioctl(_ fd: Int32, _ request: UInt, pointer: UnsafeMutableRawPointer, _ name: StaticString) throws(HVError) -> Int32 {
        while true {
            let result = hv_ioctl_ptr(fd, request, pointer)
            if result >= 0 { return result }
            if errno == EINTR { continue }
            throw .systemCall(operation: "\(name)", errno: errno)
        }
    }

    /// An ioctl whose argument is `value`'s storage, read and/or written by the kernel.
    @discardableResult
    static func ioctl<T>(_ fd: Int32, _ request: UInt, _ value: inout T, _ name: StaticString) throws(HVError) -> Int32 {
        let result: Result<Int32, HVError> = withUnsafeMutablePointer(to: &value) { pointer in
            do throws(HVError) {
                return .success(try ioctl(fd, request, pointer: UnsafeMutableRawPointer(pointer), name))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// KVM_RUN: no EINTR retry. An interrupted run is a normal outcome (returns false).
    /// The corresponding ioctl is `KVM_RUN`.
    @inline(__always)
    static func run(_ fd: Int32) throws(HVError) -> Bool {
        if hv_ioctl_value(fd, HV_KVM_RUN, 0) == 0 { return true }
        let code = errno
        if code == EINTR || code == EAGAIN { return false }
        throw .systemCall(operation: "KVM_RUN", errno: code)
    }

    /// mmap(2) of a vCPU's `kvm_run` area.
    static func mapShared(_ fd: Int32, size: Int, _ name: StaticString) throws(HVError) -> UnsafeMutableRawPointer {
        let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let pointer, pointer != MAP_FAILED else { throw .systemCall(operation: "\(name)", errno: errno) }
        return pointer
    }

    static func unmap(_ pointer: UnsafeMutableRawPointer, size: Int) {
        munmap(pointer, size)
    }

    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }
}
#endif
