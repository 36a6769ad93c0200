#!/usr/bin/env bash
# CI's image step (.ci/run): build and check the kvsched image (`make image`) where it can be.
#
#   - the tools (mmdebstrap, umoci; skopeo for the second reader) present and root: build;
#   - missing but root with apt-get: install them from Debian's packages first (about 15 s; they
#     are small: no daemon, no container storage), then build;
#   - otherwise (not root, or no apt-get): one loud line saying the image was not built, and why.
# A build or check that fails fails CI. Cold (no cache) the step takes about 4 min on 2 cores,
# warm about 2 min (docs/operations.md has the measured times).
set -euo pipefail
cd "$(dirname "$0")/../.."
MAKE="${MAKE:-make}"

skip() {
    echo "==> IMAGE NOT BUILT: $1. Build it with: make image (as root, with mmdebstrap and umoci)" >&2
    exit 0
}

need=()
for tool in mmdebstrap umoci skopeo; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
[[ "$(id -u)" == 0 ]] || skip "not root (mmdebstrap's root mode and chroot need it)"
if ((${#need[@]})); then
    command -v apt-get >/dev/null 2>&1 || skip "${need[*]} missing and no apt-get to install them"
    echo "hack/image/ci.sh: installing ${need[*]} from Debian's packages" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
start=$SECONDS
"$MAKE" image
echo "hack/image/ci.sh: image built and checked in $((SECONDS - start)) s" >&2
