#!/bin/sh
# build.sh (make deb): build the gatehouse Debian package into $OUT
# (default bin/). Run from the repository root. Needs Go, help2man and gzip;
# nfpm comes through the Go module proxy at the pinned version.
set -eu

NFPM_VERSION=${NFPM_VERSION:-v2.45.2}
OUT=${OUT:-bin}
GO=${GO:-go}

# The package version from git describe: v1.2.3 → 1.2.3, v1.2.3-4-gabc →
# 1.2.3+git4.gabc; without a tag 0~git<commit date>.<commit>; a dirty tree
# appends .dirty. Debian versions must begin with a digit.
desc=$(git describe --tags --always --dirty 2>/dev/null || echo unknown)
if git describe --tags --abbrev=0 >/dev/null 2>&1; then
	DEB_VERSION=$(echo "${desc#v}" | sed -e 's/-/+git/' -e 's/-/./g')
else
	date=$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date -u +%Y%m%d)
	DEB_VERSION="0~git$date.$(echo "$desc" | sed 's/-/./g')"
fi
case "$DEB_VERSION" in
[0-9]*) ;;
*) echo "build.sh: version $DEB_VERSION (from tag $desc) does not begin with a digit" >&2; exit 1 ;;
esac
DEB_ARCH=$($GO env GOARCH)

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# A static binary (no cgo): it runs on any Debian from 12 on, and in the
# chroot of the package test.
CGO_ENABLED=0 $GO build -trimpath -ldflags "-s -w -X main.version=$desc" \
	-o "$STAGE/gatehouse" ./cmd/gatehouse

# The packaged unit is deploy/gatehouse.service with the binary at /usr/bin
# and its install note naming the package; nothing else changes.
sed -e 's|/usr/local/bin/gatehouse|/usr/bin/gatehouse|g' \
	-e 's|^# Install:   make install   (binary in /usr/local/bin, this unit, an example|# Install:   the Debian package gatehouse (binary in /usr/bin, this unit, an example|' \
	deploy/gatehouse.service >"$STAGE/gatehouse.service"
if grep -q /usr/local "$STAGE/gatehouse.service"; then
	echo "build.sh: the packaged unit still names /usr/local" >&2
	exit 1
fi

# The man page, from the command's own --help.
help2man --no-info --section 8 --version-string "$desc" \
	--name "DMZ admission daemon (XDP, nftables, mutual-TLS proxies)" \
	"$STAGE/gatehouse" | gzip -9n >"$STAGE/gatehouse.8.gz"

# A native package's changelog: one entry for this build, from git.
{
	echo "gatehouse ($DEB_VERSION) unstable; urgency=medium"
	echo
	echo "  * Build of $(git rev-parse --short HEAD 2>/dev/null || echo unknown): $(git log -1 --format=%s 2>/dev/null | cut -c1-50)"
	echo
	echo " -- gatehouse developers <gatehouse@example.net>  $(date -R -u -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")"
} | gzip -9n >"$STAGE/changelog.gz"

# nfpm expands variables in some fields only: fill them all in here.
sed -e "s|\${STAGE}|$STAGE|g" -e "s|\${DEB_VERSION}|$DEB_VERSION|g" -e "s|\${DEB_ARCH}|$DEB_ARCH|g" \
	deploy/deb/nfpm.yaml >"$STAGE/nfpm.yaml"
mkdir -p "$OUT"
$GO run "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION" package \
	--config "$STAGE/nfpm.yaml" --packager deb \
	--target "$OUT/gatehouse_${DEB_VERSION}_${DEB_ARCH}.deb"
echo "$OUT/gatehouse_${DEB_VERSION}_${DEB_ARCH}.deb"
