import HVCore
import HVKVM
import Testing

@Suite("KVM availability")
struct KVMAvailabilityTests {
    @Test("a missing device is reported as missing, with what to do")
    func missingDevice() {
        #expect {
            _ = try KVMBackend(path: "/nonexistent/kvm")
        } throws: { error in
            guard let error = error as? HVError, case .hypervisorUnavailable(let path, _) = error else { return false }
            return path == "/nonexistent/kvm" && error.description.contains("does not exist")
        }
    }

    @Test("a device the user may not open says so and names the fix")
    func permissionText() {
        let text = HVError.hypervisorUnavailable(path: "/dev/kvm", errno: 13).description
        #expect(text.contains("not accessible"))
        #expect(text.contains("group"))
    }

    @Test("a file that is not a KVM device fails at the first KVM ioctl, naming it")
    func notADevice() throws {
        #expect {
            _ = try KVMBackend(path: "/proc/self/status")
        } throws: { error in
            "\(error)".contains("KVM_GET_API_VERSION failed")
        }
    }
}
