#!/bin/sh
# Copy one demo out of this workspace into a new, standalone crate that
# builds and runs with no edit to any copied file:
#
#   sh tools/copy-demo.sh DEMO DEST     (from the repository root)
#   cd DEST && cargo run
#
# DEST/src        the demo's src/, as it is
# DEST/common     a crate named `common` holding just the modules the
#                 demo's header lists ("Uses `common` modules: ...;
#                 `nix` features: ..."), as they are, with a lib.rs that
#                 declares them, so `common::cli::Args` means what it does here
# DEST/Cargo.toml and DEST/common/Cargo.toml are written, not copied: the
# workspace's own manifests inherit from the workspace, a copy cannot.
set -eu
usage() { echo "usage: sh tools/copy-demo.sh DEMO DEST (e.g. shm-demo ../my-shm)" >&2; exit 2; }
[ $# -eq 2 ] || usage
demo=$1 dest=$2
main="$demo/src/main.rs"
[ -f "$main" ] && [ -d common/src ] || {
  echo "copy-demo: no demo '$demo' here: run this from the repository root" >&2; exit 2; }
[ ! -e "$dest" ] || { echo "copy-demo: '$dest' exists: name a new directory" >&2; exit 2; }

# The header's list: one sentence, which may run over several `//!` lines.
block=$(awk '/^\/\/! Uses `common` modules:/ { on = 1 }
             on { print; if (/\.$/ || !/^\/\/!/) exit }' "$main" | tr '\n' ' ')
case $block in
  *'`nix` features:'*) ;;
  *) echo "copy-demo: $main has no 'Uses \`common\` modules: ...; \`nix\` features: ...' line" >&2; exit 1 ;;
esac
words() { grep -o '`[a-z0-9_]*`' | tr -d '`'; }
modules=$(printf '%s\n' "${block%%\`nix\` features:*}" | words | grep -vx common || true)
features=$(printf '%s\n' "${block#*\`nix\` features:}" | words)
quoted=$(printf '"%s", ' $features)

mkdir -p "$dest/common/src"
cp -R "$demo/src" "$dest/src"
# The versions the workspace was tested with (cargo drops what is unused).
cp Cargo.lock "$dest/"
for m in $modules; do
  cp "common/src/$m.rs" "$dest/common/src/"
  echo "pub mod $m;" >> "$dest/common/src/lib.rs"
done

deps="anyhow = \"1\"
libc = \"0.2\"
nix = { version = \"0.32\", default-features = false, features = [${quoted%, }] }"

cat > "$dest/common/Cargo.toml" <<TOML
[package]
name = "common"
version = "0.1.0"
# The common modules build in edition 2021 as well as 2024.
edition = "2021"

[dependencies]
$deps
TOML

dev=""
grep -q proptest "$demo/Cargo.toml" && dev="
[dev-dependencies]
proptest = \"1\""

cat > "$dest/Cargo.toml" <<TOML
[package]
name = "$demo"
version = "0.1.0"
edition = "2024"

[dependencies]
$deps
common = { path = "common" }
$dev

# A workspace of its own, wherever DEST is.
[workspace]
TOML
echo "copied $demo to $dest (common modules: $(echo $modules); nix features: $(echo $features))"
