#!/usr/bin/env bash
# Build the kvsched OCI image (extender, controller, agent with NVML and PodResources) from
# Debian's and Python's packages only, with no Docker engine and no base image to pull:
#
#   hack/image/build.sh        # `make image`: build, then check (hack/image/check.sh)
#
# Output: build/kvsched-<version>.oci.tar, an OCI image layout in a tar (skopeo's and podman's
# "oci-archive:"), holding one image tagged <version>. Push it with
#   skopeo copy oci-archive:build/kvsched-<version>.oci.tar docker://REGISTRY/kvsched:<version>
# (docs/operations.md). The manifests and the chart name it localhost/kvsched:<version>.
#
# How (needs root: mmdebstrap's root mode, chroot; tools from Debian's packages):
#   1. base: `mmdebstrap --variant=essential --include=python3` of Debian bookworm (python3 =
#      3.11), merged /usr, no docs/man/locales, device nodes dropped; committed by umoci as the
#      image's first layer. Cached: ~/.cache/kvsched/image-base-<suite>-<arch>-<ISO week>-<hash
#      of packages, mirrors, options>/ (remade each week so Debian's security updates get in).
#   2. wheels: `pip download` of kvsched's requirements (+ the `agent` extra, the build backend and
#      pip itself) for the base's own Python (version, ABI, glibc, machine read from it). Cached:
#      ~/.cache/kvsched/image-wheels-<cpXY>-<machine>-<hash of pyproject.toml + target>/.
#   3. app layer: umoci unpacks the base; in a chroot the image's own python3 makes the venv
#      /opt/kvsched and pip (run from its wheel, not installed) installs kvsched[agent] from the
#      source tree, offline, from the wheelhouse; user kvsched (65532:65532) is added; umoci
#      repacks the difference as the second layer and sets user, entrypoint `kvsched`, PATH and
#      the org.opencontainers.image.* labels.
#
# Why umoci rather than buildah: the image is made from a root filesystem directory, which is
# exactly umoci's job (unpack/repack an OCI layout, computing the layer diff); it needs no
# container storage, storage driver or runtime (buildah's vfs storage would copy the root
# filesystem into its store and back out), and it writes the OCI layout that the archive is.
# Why mmdebstrap rather than debootstrap: one apt run with parallel downloads (seconds, not
# minutes), the essential variant (no apt, no perl in the image), dpkg path filters and a tar on
# stdout; both are Debian's own tools.
#
# Environment:
#   KVSCHED_CACHE                  cache root (default ~/.cache/kvsched)
#   KVSCHED_IMAGE_NAME             image name without tag, for the messages (default
#                                  localhost/kvsched, what manifests/ and the chart use)
#   KVSCHED_IMAGE_OUT              output folder (default build)
#   KVSCHED_IMAGE_SUITE            Debian suite (default bookworm)
#   KVSCHED_IMAGE_MIRROR           Debian mirror (default http://deb.debian.org/debian)
#   KVSCHED_IMAGE_SECURITY_MIRROR  security mirror (default http://deb.debian.org/debian-security)
#   KVSCHED_IMAGE_SOURCE           org.opencontainers.image.source (default: pyproject's
#                                  [project.urls] Source)
#   KVSCHED_IMAGE_REVISION         org.opencontainers.image.revision (default: git HEAD, with
#                                  -dirty when the work tree has changes)
#   KVSCHED_FORCE_REBUILD=1        remake the cached base and wheelhouse
#   KVSCHED_IMAGE_NO_CHECK=1       skip hack/image/check.sh (`make image-check` runs it alone)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO="$PWD"

# shellcheck source=../lib/gobuild.sh
source hack/lib/gobuild.sh # log, die, fail_with_log, CACHE
gb_init image/build.sh

PY="${PYTHON:-python3}"
TOOL=(nice -n "$NICE" "$PY" "$REPO/hack/image/imagetool.py")
SUITE="${KVSCHED_IMAGE_SUITE:-bookworm}"
MIRROR="${KVSCHED_IMAGE_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${KVSCHED_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
NAME="${KVSCHED_IMAGE_NAME:-$("${TOOL[@]}" image-name)}"
OUT_DIR="${KVSCHED_IMAGE_OUT:-build}"
EXTRA=agent
VARIANT=essential
# libstdc++6: grpcio's extension is C++ (the check imports it as the agent does).
PACKAGES=(python3 libstdc++6)
VENV_DIR=/opt/kvsched
T0=$SECONDS

step() { log "[$((SECONDS - T0))s] $*"; }

# --- preconditions ------------------------------------------------------------------------------
[[ "$(id -u)" == 0 ]] || die "needs root (mmdebstrap's root mode, chroot into the image); run as root"
missing=()
for tool in mmdebstrap mmtarfilter umoci tar chroot dpkg; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    printf '%s: ERROR: missing %s; install them with: apt-get install mmdebstrap umoci\n' \
        "$GB_NAME" "${missing[*]}" >&2
    exit 3
fi
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip (needed for pip download)"

VERSION="$("${TOOL[@]}" project pyproject.toml version)"
LICENSE="$("${TOOL[@]}" project pyproject.toml license)"
SOURCE="${KVSCHED_IMAGE_SOURCE:-$("${TOOL[@]}" project pyproject.toml source)}"
if [[ -n "${KVSCHED_IMAGE_REVISION:-}" ]]; then
    REVISION="$KVSCHED_IMAGE_REVISION"
elif git rev-parse --git-dir >/dev/null 2>&1; then
    REVISION="$(git rev-parse HEAD)"
    # Uncommitted or untracked files go into the image too: say so rather than claim the commit.
    [[ -z "$(git status --porcelain -- pyproject.toml README.md scheduler topology)" ]] ||
        REVISION="$REVISION-dirty"
else
    die "not a git checkout: set KVSCHED_IMAGE_REVISION to the source revision"
fi
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
# Through a variable: a failure inside <(...) would not stop the script.
labels_text="$("${TOOL[@]}" labels --version "$VERSION" --source "$SOURCE" \
    --license "$LICENSE" --revision "$REVISION" --created "$CREATED")"
mapfile -t LABELS <<<"$labels_text"
ARCH="$(dpkg --print-architecture)"
ARCHIVE="$OUT_DIR/kvsched-$VERSION.oci.tar"
step "kvsched $VERSION ($REVISION) -> $ARCHIVE as $NAME:$VERSION ($SUITE, $ARCH)"

# --- 1. base: Debian root filesystem as the first layer (cached) --------------------------------
MIRRORS=(
    "deb $MIRROR $SUITE main"
    "deb $MIRROR $SUITE-updates main"
    "deb $SECURITY_MIRROR $SUITE-security main"
)
# Docs, manuals and translations are dropped (the copyright files stay: licence notices).
MMDEBSTRAP_OPTS=(
    --variant="$VARIANT"
    --include="$(IFS=,; echo "${PACKAGES[*]}")"
    --components=main
    --architectures="$ARCH"
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
)
key_args=(--suite "$SUITE" --arch "$ARCH" --variant "$VARIANT")
for p in "${PACKAGES[@]}"; do key_args+=(--package "$p"); done
for m in "${MIRRORS[@]}"; do key_args+=(--mirror "$m"); done
for o in "${MMDEBSTRAP_OPTS[@]}"; do key_args+=("--option=$o"); done
BASE="$CACHE/image-base-$("${TOOL[@]}" base-key "${key_args[@]}")"

base_ok() { [[ -f "$BASE/done" && -f "$BASE/target.json" && -f "$BASE/oci/index.json" ]]; }
mkdir -p "$CACHE"
exec 8>"$CACHE/.image.lock"
flock 8 # one image build at a time per cache: the base and wheelhouse are shared
if [[ "${KVSCHED_FORCE_REBUILD:-0}" == 1 ]] || ! base_ok; then
    step "base: mmdebstrap $SUITE ($VARIANT + ${PACKAGES[*]}) -> $BASE (about 30 s)"
    stage="$BASE.partial.$$"
    rm -rf "$stage"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"
    if ! nice -n "$NICE" mmdebstrap "${MMDEBSTRAP_OPTS[@]}" "$SUITE" - "${MIRRORS[@]}" \
        2>"$stage/mmdebstrap.log" | mmtarfilter --path-exclude='/dev/*' >"$stage/rootfs.tar"; then
        fail_with_log "mmdebstrap $SUITE" "$stage/mmdebstrap.log"
    fi
    # What the image's python3 is (for the wheels) and which Debian packages it holds.
    mkdir "$stage/rootfs"
    tar -C "$stage/rootfs" -xf "$stage/rootfs.tar"
    chroot "$stage/rootfs" /usr/bin/python3 -c "$("${TOOL[@]}" target-probe)" >"$stage/target.json"
    chroot "$stage/rootfs" dpkg-query -W -f '${Package} ${Version}\n' >"$stage/packages.txt"
    rm -rf "$stage/rootfs"
    umoci init --layout "$stage/oci"
    umoci new --image "$stage/oci:base"
    umoci raw add-layer --image "$stage/oci:base" \
        --history.created_by "mmdebstrap ${MMDEBSTRAP_OPTS[*]} $SUITE" "$stage/rootfs.tar"
    rm "$stage/rootfs.tar"
    date -u +%Y-%m-%dT%H:%M:%SZ >"$stage/done"
    rm -rf "$BASE"
    mv "$stage" "$BASE"
    trap - EXIT
else
    step "base: cached $BASE (made $(cat "$BASE/done"))"
fi

# --- 2. wheels for the image's Python (cached) --------------------------------------------------
WHEELS="$CACHE/image-wheels-$("${TOOL[@]}" wheels-key pyproject.toml "$BASE/target.json" "$EXTRA")"
if [[ "${KVSCHED_FORCE_REBUILD:-0}" == 1 || ! -f "$WHEELS/done" ]]; then
    step "wheels: pip download kvsched[$EXTRA]'s requirements -> $WHEELS"
    stage="$WHEELS.partial.$$"
    rm -rf "$stage"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"
    reqs_text="$("${TOOL[@]}" requirements pyproject.toml "$EXTRA")"
    target_text="$("${TOOL[@]}" pip-target "$BASE/target.json")"
    mapfile -t REQS <<<"$reqs_text"
    mapfile -t TARGET <<<"$target_text"
    # pip itself: it installs the rest inside the image, run from its wheel (never installed).
    if ! nice -n "$NICE" "$PY" -m pip download --no-cache-dir --disable-pip-version-check \
        --progress-bar off "${TARGET[@]}" -d "$stage" "${REQS[@]}" pip >"$stage/download.log" 2>&1; then
        fail_with_log "pip download" "$stage/download.log"
    fi
    date -u +%Y-%m-%dT%H:%M:%SZ >"$stage/done"
    rm -rf "$WHEELS"
    mv "$stage" "$WHEELS"
    trap - EXIT
else
    step "wheels: cached $WHEELS ($(find "$WHEELS" -name '*.whl' | wc -l) wheels)"
fi
shopt -s nullglob
pip_wheels=("$WHEELS"/pip-*.whl)
shopt -u nullglob
((${#pip_wheels[@]} == 1)) || die "expected one pip wheel in $WHEELS, found ${#pip_wheels[@]}"
PIP_WHEEL="$(basename "${pip_wheels[0]}")"

# --- 3. the app layer: venv + kvsched[agent], user, config ---------------------------------------
WORK="$OUT_DIR/image-work"
rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
cp -a "$BASE/oci" "$WORK/oci"
step "app: unpack the base, install kvsched[$EXTRA] into $VENV_DIR with the image's python3"
umoci unpack --image "$WORK/oci:base" "$WORK/bundle" >/dev/null
ROOTFS="$WORK/bundle/rootfs"
BUILD_IN=/tmp/kvsched-build
mkdir -p "$ROOTFS$BUILD_IN/src"
cp -a "$WHEELS" "$ROOTFS$BUILD_IN/wheels"
tar -cf - --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md scheduler topology |
    tar -C "$ROOTFS$BUILD_IN/src" -xf -
in_image() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/bin:/bin HOME="$BUILD_IN" LANG=C.UTF-8 "$@"; }
in_image /usr/bin/python3 -m venv --without-pip "$VENV_DIR"
# Offline (--no-index): pip builds kvsched's wheel with the build backend from the wheelhouse
# and installs it with its requirements; it byte-compiles (the image's filesystem is read-only
# to the non-root user, so nothing could write .pyc files at run time).
if ! in_image "$VENV_DIR/bin/python" "$BUILD_IN/wheels/$PIP_WHEEL/pip" install --no-index \
    --find-links "$BUILD_IN/wheels" --no-cache-dir --disable-pip-version-check \
    --root-user-action=ignore --progress-bar off "$BUILD_IN/src[$EXTRA]" >"$WORK/pip.log" 2>&1; then
    fail_with_log "pip install kvsched[$EXTRA] in the image" "$WORK/pip.log"
fi
in_image "$VENV_DIR/bin/python" "$BUILD_IN/wheels/$PIP_WHEEL/pip" check --disable-pip-version-check >"$WORK/pip-check.log" 2>&1 ||
    fail_with_log "pip check in the image" "$WORK/pip-check.log"
rm -rf "${ROOTFS:?}$BUILD_IN"
find "$ROOTFS/tmp" "$ROOTFS/root" -mindepth 1 -delete
grep -q '^kvsched:' "$ROOTFS/etc/passwd" && die "the base already has a user kvsched"
echo 'kvsched:x:65532:65532:kvsched:/nonexistent:/usr/sbin/nologin' >>"$ROOTFS/etc/passwd"
echo 'kvsched:x:65532:' >>"$ROOTFS/etc/group"

step "app: commit the layer and the config (umoci repack/config)"
umoci repack --image "$WORK/oci:$VERSION" \
    --history.created_by "hack/image/build.sh: $VENV_DIR with kvsched[$EXTRA] $VERSION, user kvsched" \
    "$WORK/bundle"
config_args=(
    --config.user 65532:65532
    --config.entrypoint kvsched
    --config.env "PATH=$VENV_DIR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    --config.env LANG=C.UTF-8
    --config.workingdir /
    --created "$CREATED"
)
for kv in "${LABELS[@]}"; do config_args+=(--config.label "$kv" --manifest.annotation "$kv"); done
umoci config --image "$WORK/oci:$VERSION" --no-history "${config_args[@]}"
umoci rm --image "$WORK/oci:base"
umoci gc --layout "$WORK/oci"
"${TOOL[@]}" verify "$WORK/oci" "$VERSION" --version "$VERSION" >&2

# The archive: the OCI layout at the root of a tar (blobs are already compressed).
mkdir -p "$OUT_DIR"
tar -C "$WORK/oci" --sort=name --owner=0 --group=0 --numeric-owner -cf "$ARCHIVE.partial" .
mv "$ARCHIVE.partial" "$ARCHIVE"
unpacked_mb=$(du -sm "$ROOTFS" | cut -f1)
rm -rf "$WORK"
trap - EXIT
step "done: $ARCHIVE ($(du -m "$ARCHIVE" | cut -f1) MiB compressed, ${unpacked_mb} MiB unpacked), tag $VERSION"

if [[ "${KVSCHED_IMAGE_NO_CHECK:-0}" != 1 ]]; then
    hack/image/check.sh "$ARCHIVE"
fi
log "built $ARCHIVE in $((SECONDS - T0)) s; push: skopeo copy oci-archive:$ARCHIVE docker://REGISTRY/kvsched:$VERSION"
