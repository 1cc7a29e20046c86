#!/usr/bin/env bash
# Compiles every ```swift block of README.md and Documentation/*.md in a package outside this
# repository that depends on it by path, as a user's package would: each block is the main.swift
# of an executable target that imports the library products (HVCore, HVKVM, HVTPM, HVSnapshot). A block may use the
# names a surrounding text gives it (`machine`, `tpm`, `bytes`, ...): Context.swift declares
# each one the block does not declare itself, so a block that no longer matches the API fails to
# build, naming its file and line.
#
#   scripts/check-doc-snippets.sh      (build folder: .build-snippets, ignored by git)
set -euo pipefail
repository=$(cd "$(dirname "$0")/.." && pwd)
package=$(mktemp -d /tmp/hv-doc-snippets.XXXXXX)
trap 'rm -rf "$package"' EXIT

# Names the documentation's blocks take from their text, and what they stand for.
context() {
    case $1 in
        machine) echo 'let machine: Machine<KVMBackend> = try! Machine(configuration: .init(memorySize: 16 << 20, interruptController: .kernel), backend: KVMBackend())' ;;
        configuration) echo 'let configuration = VirtualMachineConfiguration(memorySize: 64 << 20, interruptController: .kernel)' ;;
        disk) echo 'let disk: VirtioBlock = try! VirtioBlock(path: "root.img")' ;;
        tpm) echo 'let tpm: LibTPMSEngine = try! LibTPMSEngine.open(directory: nil)' ;;
        bytes|env|kernelBytes|initrdBytes) echo "let $1: [UInt8] = []" ;;
        icrLow) echo 'let icrLow: UInt32 = 0' ;;
        ioapic) echo 'nonisolated(unsafe) var ioapic = IOAPIC()' ;;
        route) echo 'func route(_ message: APICInterruptMessage) {}' ;;
        armHostTimer) echo 'func armHostTimer(at deadline: UInt64?) {}' ;;
    esac
}
names=(machine configuration disk tpm bytes env kernelBytes initrdBytes icrLow ioapic route armHostTimer)

targets=()
for document in "$repository/README.md" "$repository"/Documentation/*.md; do
    relative=${document#"$repository"/}
    base=$(basename "$document" .md | tr -c 'A-Za-z0-9\n' '_')
    # Each block: its first line number and its text.
    mkdir -p "$package/blocks"
    awk -v out="$package/blocks" -v base="$base" '
        /^```swift[[:space:]]*$/ { inside = 1; n++; file = sprintf("%s/%s_%d.%d", out, base, n, NR + 1); printf "" > file; next }
        /^```/ && inside { inside = 0; close(file); next }
        inside { print >> file }
    ' "$document"
    for block in "$package/blocks/${base}"_*; do
        [ -e "$block" ] || continue
        line=${block##*.}
        name=$(basename "${block%.*}")
        target="Snippet_$name"
        mkdir -p "$package/Sources/$target"
        {
            echo "// $relative, the block at line $line"
            cat "$block"
        } > "$package/Sources/$target/main.swift"
        {
            echo "// Names $relative's text gives the block at line $line."
            echo "import Foundation"
            echo "import HVCore"
            echo "import HVKVM"
            echo "import HVTPM"
            for symbol in "${names[@]}"; do
                if grep -qE "\\b$symbol\\b" "$block" && ! grep -qE "\\b(let|var|func) $symbol\\b" "$block"; then context "$symbol"; fi
            done
        } > "$package/Sources/$target/Context.swift"
        # The block's own imports are kept; one for each product the block may use is added.
        grep -q '^import HVTPM' "$block" || sed -i '2i import HVTPM' "$package/Sources/$target/main.swift"
        grep -q '^import HVKVM' "$block" || sed -i '2i import HVKVM' "$package/Sources/$target/main.swift"
        grep -q '^import HVCore' "$block" || sed -i '2i import HVCore' "$package/Sources/$target/main.swift"
        grep -q '^import Foundation' "$block" || sed -i '2i import Foundation' "$package/Sources/$target/main.swift"
        targets+=("$target")
    done
    rm -rf "$package/blocks"
done

{
    echo '// swift-tools-version:6.0'
    echo 'import PackageDescription'
    echo 'let package = Package('
    echo '    name: "HVDocSnippets",'
    echo '    platforms: [.macOS(.v15)],'
    echo "    dependencies: [.package(name: \"HV\", path: \"$repository\")],"
    echo '    targets: ['
    for target in "${targets[@]}"; do
        echo "        .executableTarget(name: \"$target\", dependencies: [.product(name: \"HVCore\", package: \"HV\"), .product(name: \"HVKVM\", package: \"HV\"), .product(name: \"HVTPM\", package: \"HV\"), .product(name: \"HVSnapshot\", package: \"HV\")]),"
    done
    echo '    ]'
    echo ')'
} > "$package/Package.swift"

[ ${#targets[@]} -gt 0 ] || { echo "check-doc-snippets: no \`\`\`swift blocks found" >&2; exit 1; }
echo "check-doc-snippets: ${#targets[@]} blocks from README.md and Documentation/"
if ! swift build --package-path "$package" --scratch-path "$repository/.build-snippets" > "$package/build.log" 2>&1; then
    grep -E "error:" -A3 "$package/build.log" | sed "s|$package/Sources/Snippet_||" >&2
    for failing in $(grep -oE "Sources/Snippet_[A-Za-z0-9_]+/main.swift:[0-9]+:[0-9]+: error" "$package/build.log" | cut -d: -f1 | sort -u); do
        echo "check-doc-snippets: $(basename "$(dirname "$failing")" | sed 's/^Snippet_//') is $(head -1 "$package/$failing" | sed 's|^// ||')" >&2
    done
    echo "check-doc-snippets: a documented Swift block does not compile (each file's first line names its document and line)" >&2
    exit 1
fi
echo "check-doc-snippets: every block compiles"
