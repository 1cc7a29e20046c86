// When a test may skip for something missing, and when it must run (and fail) instead. CI
// (.ci/run) sets HV_REQUIRE_KVM where /dev/kvm exists, HV_REQUIRE_TOOLS because scripts/setup.sh
// installs every tool and file the tests use (GNU binutils, tpm2-tools, swtpm, iasl, Debian's
// kernel), and HV_REQUIRE_TESTBED for the hardware-assisted test bed: a CI machine whose KVM or
// set-up broke cannot pass by skipping.
import Glibc

public enum Requirement {
    /// Whether `variable` is set to 1.
    public static func isRequired(_ variable: String) -> Bool { getenv(variable).map { String(cString: $0) } == "1" }
    /// KVM tests run even where /dev/kvm cannot be opened.
    public static var kvm: Bool { isRequired("HV_REQUIRE_KVM") }
    /// Tests that need a tool or file the set-up script provides run even where it is missing.
    public static var tools: Bool { isRequired("HV_REQUIRE_TOOLS") }
}
