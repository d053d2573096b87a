#!/bin/sh
# Obtains the onnxruntime C/C++ API headers from Debian's libonnxruntime-dev (suite trixie: 1.21,
# MIT-licensed headers, 85 KB) without changing the system: a private apt configuration that reuses
# the machine's Debian archive, `apt-get download`, `dpkg-deb -x`. The result is cached; prints the
# include folder on stdout, logs on stderr.
set -eu
cache="${ONNX_SNN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/onnx_snn}/onnxruntime-headers"
include="$cache/usr/include/onnxruntime"
if [ -f "$include/onnxruntime_lite_custom_op.h" ]; then
  echo "$include"
  exit 0
fi
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "fetch_onnxruntime_headers: $tool not found (not a Debian system)" >&2; exit 1; }
done

# the machine's configured Debian archive (deb822 sources first, then the one-line format)
uri=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n' | grep -v security | head -n 1 || true)
if [ -z "$uri" ]; then
  uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\// && $i !~ /security/) { print $i; exit } }' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1 || true)
fi
[ -n "$uri" ] || { echo "fetch_onnxruntime_headers: no Debian archive configured in /etc/apt" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/prefs" "$work/state/lists/partial" "$work/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" >"$work/sources.list"
set -- -o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=/nonexistent \
  -o Dir::Etc::preferencesparts="$work/prefs" -o Dir::State="$work/state" -o Dir::Cache="$work/cache" \
  -o Debug::NoLocking=1 -o APT::Sandbox::User=root
echo "fetch_onnxruntime_headers: downloading libonnxruntime-dev (trixie) from $uri" >&2
apt-get "$@" -qq update >&2
(cd "$work" && apt-get "$@" -qq download libonnxruntime-dev >&2)
dpkg-deb -x "$work"/libonnxruntime-dev_*.deb "$work/root"
mkdir -p "$(dirname "$cache")"
rm -rf "$cache.tmp.$$"
mv "$work/root" "$cache.tmp.$$"
rm -rf "$cache"
mv "$cache.tmp.$$" "$cache"
echo "$include"
