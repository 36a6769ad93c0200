#!/usr/bin/env bash
# Check the built kvsched image really runs (`make image-check`; `make image` ends with it):
#
#   hack/image/check.sh [ARCHIVE]     default build/kvsched-<version>.oci.tar
#
#   1. the image config: user 65532:65532, entrypoint ["kvsched"], PATH with /opt/kvsched/bin,
#      the org.opencontainers.image.{version,source,licenses,revision} labels;
#   2. with skopeo present, skopeo (the tool that pushes it) reads the archive and agrees;
#   3. umoci unpacks it as a runtime bundle, and the bundle's process (its args, env, cwd and
#      user, as a container runtime would take them from config.json) runs chrooted into the
#      image's root filesystem as uid 65532: `kvsched --version`, `kvsched extender --help`,
#      `kvsched controller --help`, `kvsched agent --help`, and the image's own Python
#      importing the agent's NVML and PodResources (grpc, protobuf) dependencies.
# Needs root (umoci unpack keeps file owners; chroot) and umoci. No namespaces, no network.
set -euo pipefail
cd "$(dirname "$0")/../.."

# shellcheck source=../lib/gobuild.sh
source hack/lib/gobuild.sh
gb_init image/check.sh
PY="${PYTHON:-python3}"
TOOL=("$PY" hack/image/imagetool.py)

VERSION="$("${TOOL[@]}" project pyproject.toml version)"
ARCHIVE="${1:-${KVSCHED_IMAGE_OUT:-build}/kvsched-$VERSION.oci.tar}"
[[ -f "$ARCHIVE" ]] || die "no image archive $ARCHIVE; build it with make image"
[[ "$(id -u)" == 0 ]] || die "needs root (umoci unpack with file owners, chroot)"
command -v umoci >/dev/null 2>&1 || die "umoci is missing; apt-get install umoci"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kvsched-image-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/oci"
tar -C "$WORK/oci" -xf "$ARCHIVE"
"${TOOL[@]}" verify "$WORK/oci" "$VERSION" --version "$VERSION"

if command -v skopeo >/dev/null 2>&1; then
    # A second OCI implementation (containers/image, what skopeo copy and podman use) reads it.
    skopeo inspect --config "oci-archive:$ARCHIVE:$VERSION" >"$WORK/skopeo.json" ||
        die "skopeo cannot read oci-archive:$ARCHIVE:$VERSION"
    "$PY" - "$WORK/skopeo.json" "$VERSION" <<'EOF' || die "skopeo reads a different config"
import json, sys
with open(sys.argv[1]) as f:
    cfg = json.load(f)["config"]
want = sys.argv[2]
got = (cfg.get("User"), cfg.get("Entrypoint"), cfg["Labels"]["org.opencontainers.image.version"])
assert got == ("65532:65532", ["kvsched"], want), got
print(f"ok   skopeo inspect: user {got[0]}, entrypoint {got[1]}, version label {got[2]}")
EOF
else
    log "skopeo not installed: the archive is checked with umoci only (apt-get install skopeo)"
fi

umoci unpack --image "$WORK/oci:$VERSION" "$WORK/bundle" >/dev/null
"${TOOL[@]}" run-checks "$WORK/bundle" --version "$VERSION"
log "image $ARCHIVE: all checks passed"
