// Branch relaxation and fixups: where every byte ends up once jump sizes are known.

extension X86Assembler {
    /// Sizes of the variable items and the resulting label addresses.
    struct Layout {
        var origin: UInt64
        var itemSizes: [Int]
        /// prefix[i] = total size of items 0..<i.
        var prefix: [Int]
        var labelAddresses: [UInt64?]

        func address(codeOffset: Int, itemIndex: Int) -> UInt64 {
            origin &+ UInt64(codeOffset + prefix[itemIndex])
        }

        func offset(of position: Position) -> Int { position.codeOffset + prefix[position.itemIndex] }
    }

    /// Lays out the program. Every branch starts short; one that cannot reach its target grows
    /// and the layout is redone. Branches only grow, so this ends after at most one pass per
    /// branch (the same scheme as GNU `as` relaxation).
    func resolveLayout() throws(AssemblerError) -> Layout {
        if let firstError { throw firstError }
        for item in items {
            if case .branch(let label, _, let instruction) = item.kind {
                try checkLabel(label, usedBy: instruction)
            }
        }
        for fixup in fixups {
            try checkLabel(fixup.label, usedBy: fixup.instruction)
        }

        var isNear = [Bool](repeating: false, count: items.count)
        while true {
            var layout = Layout(origin: origin, itemSizes: [], prefix: [0], labelAddresses: [])
            for (index, item) in items.enumerated() {
                let address = layout.address(codeOffset: item.codeOffset, itemIndex: index)
                let size: Int
                switch item.kind {
                case .branch(_, let condition, _):
                    size = isNear[index] ? nearBranchSize(conditional: condition != nil) : 2
                case .align(let boundary, _):
                    let remainder = Int(address % UInt64(boundary))
                    size = remainder == 0 ? 0 : boundary - remainder
                }
                layout.itemSizes.append(size)
                layout.prefix.append(layout.prefix[index] + size)
            }
            layout.labelAddresses = labels.map { state in
                state.position.map { layout.address(codeOffset: $0.codeOffset, itemIndex: $0.itemIndex) }
            }

            var grew = false
            for (index, item) in items.enumerated() where !isNear[index] {
                guard case .branch(let label, _, _) = item.kind else { continue }
                let end = layout.address(codeOffset: item.codeOffset, itemIndex: index) &+ 2
                let distance = Int64(bitPattern: layout.labelAddresses[label.id]! &- end)
                if !(-128...127).contains(distance) {
                    isNear[index] = true
                    grew = true
                }
            }
            if grew { continue }

            for (index, item) in items.enumerated() where isNear[index] {
                guard case .branch(let label, _, let instruction) = item.kind else { continue }
                let size = layout.itemSizes[index]
                let end = layout.address(codeOffset: item.codeOffset, itemIndex: index) &+ UInt64(size)
                let distance = Int64(bitPattern: layout.labelAddresses[label.id]! &- end)
                let bits = codeSize == .bits16 ? 16 : 32
                if !relativeFits(distance, bits: bits) {
                    throw .branchOutOfRange(instruction: instruction, label: labelName(label),
                                            distance: distance, displacementBits: bits)
                }
            }
            return layout
        }
    }

    /// jmp rel16/32 is E9 + displacement; jcc is 0F 80+cc + displacement (SDM Vol. 2A, JMP, Jcc).
    func nearBranchSize(conditional: Bool) -> Int {
        let displacement = codeSize == .bits16 ? 2 : 4
        return (conditional ? 2 : 1) + displacement
    }

    func branchBytes(condition: Condition?, size: Int, distance: Int64) -> [UInt8] {
        if size == 2 {
            let opcode: UInt8 = condition.map { 0x70 | $0.rawValue } ?? 0xEB
            return [opcode, UInt8(truncatingIfNeeded: distance)]
        }
        var bytes: [UInt8] = condition.map { [0x0F, 0x80 | $0.rawValue] } ?? [0xE9]
        let displacementSize = codeSize == .bits16 ? 2 : 4
        bytes += littleEndian(UInt64(bitPattern: distance), count: displacementSize)
        return bytes
    }

    /// rel16 in 16-bit code wraps at 64 KiB like IP itself, so any distance below 64 KiB works.
    func relativeFits(_ distance: Int64, bits: Int) -> Bool {
        switch bits {
        case 8: (-128...127).contains(distance)
        case 16: (-0xFFFF...0xFFFF).contains(distance)
        default: (Int64(Int32.min)...Int64(Int32.max)).contains(distance)
        }
    }

    func patch(_ fixup: Fixup, in output: inout [UInt8], layout: Layout) throws(AssemblerError) {
        let target = layout.labelAddresses[fixup.label.id]! &+ UInt64(bitPattern: fixup.addend)
        let offset = layout.offset(of: fixup.position)
        let value: UInt64
        switch fixup.kind {
        case .absolute(let signExtended):
            let limit: UInt64 = switch (fixup.size, signExtended) {
            case (8, _): .max
            case (4, true): 0x7FFF_FFFF
            default: (1 << UInt64(fixup.size * 8)) - 1
            }
            guard target <= limit else {
                throw .addressOutOfRange(instruction: fixup.instruction, label: labelName(fixup.label),
                                         address: target, fieldBits: fixup.size * 8)
            }
            value = target
        case .relative(let instructionEnd):
            let end = origin &+ UInt64(offset + instructionEnd)
            let distance = Int64(bitPattern: target &- end)
            guard relativeFits(distance, bits: fixup.size * 8) else {
                throw .branchOutOfRange(instruction: fixup.instruction, label: labelName(fixup.label),
                                        distance: distance, displacementBits: fixup.size * 8)
            }
            value = UInt64(bitPattern: distance)
        }
        for index in 0..<fixup.size {
            output[offset + index] = UInt8(truncatingIfNeeded: value >> UInt64(index * 8))
        }
    }
}

/// The low `count` bytes of `value`, least significant first.
func littleEndian(_ value: UInt64, count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: value >> UInt64($0 * 8)) }
}

extension Array where Element == UInt8 {
    /// Writes the low `count` bytes of `value`, least significant first, at `offset` (boot
    /// structures the loaders fill in place: zero page, Multiboot info, hvm_start_info).
    mutating func putLittleEndian(_ value: UInt64, at offset: Int, count: Int) {
        for index in 0..<count { self[offset + index] = UInt8(truncatingIfNeeded: value >> UInt64(index * 8)) }
    }
}
