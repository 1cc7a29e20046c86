// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "HV",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "HVCore", targets: ["HVCore"]),
        // The Linux KVM backend, a target of its own as SwiftNIO keeps its platforms apart.
        .library(name: "HVKVM", targets: ["HVKVM"]),
        // The virtual TPM (libtpms engine, TIS device, swtpm-compatible server): vTPM.md's `import HVTPM`.
        .library(name: "HVTPM", targets: ["HVTPM"]),
        // A running VM's HTTP/JSON API (Documentation/Management.md), and its client.
        .library(name: "HVManagement", targets: ["HVManagement"]),
        .library(name: "HVManagementClient", targets: ["HVManagementClient"]),
        // Snapshots and restore (Documentation/Snapshots.md).
        .library(name: "HVSnapshot", targets: ["HVSnapshot"]),
        .executable(name: "hv", targets: ["hv"]),
        .executable(name: "hv-bench", targets: ["hv-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
        // YAML for `hv vmx plan --config` (JSON uses Foundation).
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
        // The vTPM server's sockets (TCP and Unix-domain), event loop and framing.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        // The management plane (Documentation/Management.md): HTTP server and client.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        // hv serve's own request metrics (swift-metrics through Hummingbird's MetricsMiddleware).
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.9.0"),
        // hv serve's metric history (SQLite; Debian libsqlite3-dev).
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        // Snapshots and migration streams: AES-GCM, HKDF, HMAC and SHA-256 (Documentation/Snapshots.md).
        .package(url: "https://github.com/apple/swift-crypto", "3.12.0"..<"5.0.0"),
    ],
    targets: [
        // Layer 1: the shared machine model. Pure Swift, compiled hosted and as Embedded Swift
        // (scripts/check-embedded.sh) for the bare-metal image.
        .target(name: "HVModel"),
        // Writing guests: an x86 assembler and the CPU-mode set-up (GDT, page tables, registers).
        .target(name: "HVGuest", dependencies: ["HVModel"]),
        // Layer 3: C shims (headers only, no logic).
        .target(name: "CKVM"),
        // libseccomp (Debian libseccomp-dev) and the SIGSYS report for HV's confinement.
        .target(name: "CSeccomp", linkerSettings: [.linkedLibrary("seccomp")]),
        // Test and benchmark support: counts malloc calls of this process (interposes malloc).
        .target(name: "CAllocationCounter"),
        // libtpms, the TPM 2.0 used by the virtual TPM (Debian libtpms-dev).
        .systemLibrary(name: "CLibTPMS", pkgConfig: "libtpms", providers: [.apt(["libtpms-dev"])]),
        // Layer 2: the hosted SDK.
        .target(
            name: "HVCore",
            dependencies: [
                "HVModel",
                "HVGuest",
                .target(name: "CKVM", condition: .when(platforms: [.linux])),
                .target(name: "CSeccomp", condition: .when(platforms: [.linux])),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The virtual TPM (Documentation/vTPM.md): engines, TIS device, swtpm-protocol server.
        // Its own target so that only what uses a TPM links libtpms.
        // Layer 3b: the Linux KVM backend (/dev/kvm), behind HVCore's Backend protocols.
        .target(name: "HVKVM", dependencies: ["HVCore", .target(name: "CKVM", condition: .when(platforms: [.linux]))]),
        .target(name: "HVTPM", dependencies: ["HVCore", "HVGuest", "CLibTPMS", .target(name: "CKVM", condition: .when(platforms: [.linux])),
                                       .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")]),
        // Snapshots, restore and live migration (Documentation/Snapshots.md): the file format,
        // its encryption, and the migration stream, on the state HVCore's Machine saves.
        .target(name: "HVSnapshot", dependencies: [
            "HVCore",
            .target(name: "CKVM", condition: .when(platforms: [.linux])),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Layer 3, beside the SDK: the management plane (Documentation/Management.md), a running
        // VM's HTTP/JSON API on a Unix socket.
        .target(name: "HVManagement", dependencies: [
            "HVCore",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Yams", package: "Yams"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], resources: [.copy("Resources/vm-api.yaml")]),
        // Its client on AsyncHTTPClient (a target of its own: servers need no TLS stack).
        .target(name: "HVManagementClient", dependencies: [
            "HVManagement",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        // The host daemon (`hv serve`): VMs from VM files, each in its own hv process, behind an
        // HTTP API with tokens and roles, events, audit log, metrics and a dashboard.
        .target(name: "HVDaemon", dependencies: [
            "HVManagement",
            "HVManagementClient",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Yams", package: "Yams"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], resources: [.copy("Resources/daemon-api.yaml"), .copy("Resources/dashboard.html")]),
        // Layer 5: tools.
        // The tools' shared error convention (one line per error), on ArgumentParser.
        .target(name: "HVCommandLine", dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "hv",
            dependencies: [
                "HVCore",
                "HVKVM",
                "HVTPM",
                "HVManagement",
                "HVManagementClient",
                "HVDaemon",
                "HVSnapshot",
                "HVCommandLine",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(name: "MinimalVMM", dependencies: ["HVCore", "HVKVM"], path: "Examples/MinimalVMM"),
        .executableTarget(name: "ExitTracer", dependencies: ["HVCore", "HVKVM"], path: "Examples/ExitTracer"),
        .executableTarget(name: "PCBoot", dependencies: ["HVCore", "HVKVM"], path: "Examples/PCBoot"),
        .executableTarget(name: "MicroVM", dependencies: ["HVCore", "HVKVM", "HVManagement", "HVCommandLine", .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          path: "Examples/MicroVM"),
        // Restore against a cold boot of the same guest, in the same run (Documentation/Snapshots.md).
        .executableTarget(name: "hv-snapshot-bench", dependencies: ["HVGuest"], path: "Benchmarks/snapshot-bench"),
        // Exit latency against a raw C KVM loop in the same run (Documentation/Benchmarks.md).
        // CKVMBaseline is by design a small C program, so it lives here, not with the shims.
        .target(name: "CKVMBaseline", path: "Benchmarks/CKVMBaseline"),
        .executableTarget(
            name: "hv-bench",
            dependencies: [
                "HVCore",
                "HVKVM",
                "CKVMBaseline",
                "CAllocationCounter",
                "HVCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Benchmarks/hv-bench"
        ),
        // Micro-benchmarks of the pure parts (`swift package benchmark`); one file per area.
        .executableTarget(
            name: "HVMicroBenchmarks",
            dependencies: ["HVCore", "HVKVM", .product(name: "Benchmark", package: "benchmark")],
            path: "Benchmarks/HVMicroBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Device-interrupt delivery latency per irqchip mode (`swift run -c release irq-latency`).
        .executableTarget(
            name: "irq-latency",
            dependencies: ["HVCore", "HVKVM", .product(name: "Histogram", package: "hdrhistogram-swift")],
            path: "Benchmarks/irq-latency"
        ),
        // Which missing resources the suites may skip, and the CI switches that forbid it.
        .target(name: "HVTestSupport", path: "Tests/HVTestSupport"),
        // A VMM whose device makes a forbidden system call (ConfinementTests); not a product.
        .executableTarget(name: "seccomp-probe", dependencies: ["HVCore", "HVKVM", "HVGuest"], path: "Tests/Fixtures/SeccompProbe"),
        // The host CPU as the oracle for the arithmetic emulation (x86-64 only; tests only).
        .target(name: "CX86Oracle", path: "Tests/CX86Oracle"),
        .testTarget(name: "HVModelTests", dependencies: ["HVModel", "CX86Oracle"]),
        .testTarget(name: "HVGuestTests", dependencies: ["HVGuest", "HVTestSupport"]),
        .testTarget(name: "HVCoreTests", dependencies: ["HVCore", "HVKVM", "CAllocationCounter", "HVTestSupport"]),
        .testTarget(name: "HVTPMTests", dependencies: ["HVTPM", "HVCore", "HVKVM", "HVGuest", "HVTestSupport"]),
        .testTarget(name: "hvTests", dependencies: ["hv", "HVGuest", "MinimalVMM", "ExitTracer", "PCBoot", "MicroVM", "hv-bench", "irq-latency", "seccomp-probe", "HVTPM", "HVManagement", "HVManagementClient", "HVDaemon", "HVTestSupport",
                                                       .product(name: "AsyncHTTPClient", package: "async-http-client")]),
    ]
)
