// The local APIC as a register image: the first 1 KiB of the xAPIC page, the layout KVM uses for
// `kvm_lapic_state.regs` (KVM_GET_LAPIC / KVM_SET_LAPIC; offsets from SDM Table 11-1). Lets tools
// show an in-kernel APIC through this model, and snapshots move state between backends.

extension LocalAPIC {
    /// Bytes in a register image: offsets 0x000-0x3FF.
    public static let registerImageSize = 1024

    /// An APIC whose registers come from `image` (at least 1 KiB, little-endian dwords at the
    /// Table 11-1 offsets), in the mode `base` selects; nil when the image is too short.
    ///
    /// In x2APIC mode the ID is the configuration's (KVM with `KVM_X2APIC_API_USE_32BIT_IDS` keeps
    /// the same 32-bit value at 0x20). A running one-shot or periodic count restarts from the image's
    /// current count (0x390) at TSC cycle `now`.
    public init?(registerImage image: some Collection<UInt8>, configuration: Configuration, base: APICBase, now: UInt64 = 0) {
        guard image.count >= Self.registerImageSize else { return nil }
        var dwords = [UInt32](repeating: 0, count: Self.registerImageSize / 4)
        for (index, byte) in image.prefix(Self.registerImageSize).enumerated() {
            dwords[index >> 2] |= UInt32(byte) << UInt32((index & 3) * 8)
        }
        func register(_ offset: UInt32) -> UInt32 { dwords[Int(offset >> 2)] }

        self.init(configuration)
        self.base = base
        self.now = now
        let x2APIC = base.mode == .x2APIC
        xAPICID = x2APIC ? UInt8(truncatingIfNeeded: configuration.apicID) : UInt8(truncatingIfNeeded: register(0x20) >> 24)
        taskPriority = UInt8(truncatingIfNeeded: register(0x80))
        logicalDestination = x2APIC ? register(0xD0) : register(0xD0) & 0xFF00_0000
        destinationFormat = register(0xE0) | 0x0FFF_FFFF
        spuriousVectorRegister = register(0xF0) & (configuration.supportsEOIBroadcastSuppression ? 0x13FF : 0x03FF)
        for index in 0..<8 {
            isr.setRegister(index, register(0x100 + UInt32(index) * 0x10))
            tmr.setRegister(index, register(0x180 + UInt32(index) * 0x10))
            irr.setRegister(index, register(0x200 + UInt32(index) * 0x10))
        }
        errorStatus = APICErrorStatus(rawValue: register(0x280) & 0xFF)
        for entry in LocalVectorTableEntry.allCases where entry != .cmci || configuration.hasCMCI {
            setLVT(entry, raw: register(UInt32(entry.register.rawValue)) & (entry.writableBits | 1 << 14))
        }
        let low = UInt64(register(0x300) & InterruptCommand.writableLowBits)
        interruptCommand = InterruptCommand(rawValue: low | UInt64(register(0x310)) << 32)
        timer.initialCount = register(0x380)
        timer.divideConfiguration = register(0x3E0) & 0xB
        let current = register(0x390)
        if lvtEntry(.timer).timerMode != .tscDeadline && timer.initialCount != 0 && current != 0 {
            timer.isCounting = true
            timer.startCount = current
            timer.armedAt = now
        }
    }

    /// The 1 KiB register image of this APIC (the current count as of `now`), as KVM_SET_LAPIC
    /// takes it.
    public var registerImage: [UInt8] {
        var image = [UInt8](repeating: 0, count: Self.registerImageSize)
        for register in APICRegister.allCases where register != .selfIPI {
            if register == .lvtCMCI && !configuration.hasCMCI { continue }
            let value = value(of: register)
            let offset = Int(register.rawValue)
            for byte in 0..<4 { image[offset + byte] = UInt8(truncatingIfNeeded: value >> UInt32(byte * 8)) }
        }
        return image
    }
}
