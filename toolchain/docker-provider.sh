#!/usr/bin/env bash
# Builds (or finds in the cache) pulumi-resource-docker: our own Terraform-bridged build of
# the kreuzwerker Docker provider, schema-compatible with the PyPI pulumi-docker SDK at
# $DOCKER_PROVIDER_VERSION (tokens docker:index/..., same property names). Sources and the
# pinned module graph are in toolchain/docker-provider/ (see its go.mod for the why of each pin).
#
# Usage:  bin=$(toolchain/docker-provider.sh | tail -1)   # last stdout line = the bin dir
#         toolchain/docker-provider.sh --force             # rebuild even if cached
# Logs go to stderr. Idempotent: a cached build returns in well under a second.
#
# What a build does (in a temp dir, moved into place only when everything succeeded):
#   1. go build cmd/pulumi-tfgen-docker, run it: schema.json + bridge-metadata.json
#   2. schema.json + top-level "version" -> cmd/pulumi-resource-docker/schema-embed.json
#   3. go build cmd/pulumi-resource-docker (embeds both files), check -version and the schema
# Cache layout ($SIN_CACHE from versions.env):
#   $SIN_CACHE/docker-provider/<version>-<inputs hash>/bin/pulumi-resource-docker
#   $SIN_CACHE/docker-provider/<version>-<inputs hash>/schema.json     (what the binary serves)
#   $SIN_CACHE/docker-provider/<version>-<inputs hash>/.complete       (marker, written last)
# The inputs hash covers the Go sources, go.mod/go.sum and patches/ under docker-provider/, this
# script, go-patch.sh, the Go version and the build flags. Cold build (empty Go build cache): ~4.5 min on
# 2 idle cores, ~8 min next to another Go build; plus module downloads from the Go proxy
# the first time on a machine. A warm build cache makes a rebuild take ~30 s.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/lib.sh"
. "$here/go-patch.sh"

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

version="$(pin DOCKER_PROVIDER_VERSION)"
version="${version#v}"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "DOCKER_PROVIDER_VERSION='$DOCKER_PROVIDER_VERSION' is not X.Y.Z"

src="$here/docker-provider"
[ -f "$src/go.mod" ] || die "missing $src/go.mod"

go_bin="$(require_go)"

mod_path="$(sed -n 's/^module //p' "$src/go.mod")"
build_tags="no_compose"   # leaves out upstream's docker_compose (plugin-framework) resource
ldflags="-s -w -X ${mod_path}/version.Version=${version}"

# Everything that changes the output goes into the hash: the Go sources and module files
# (generated *.json are outputs and are left out), this script, flags and the Go version.
inputs_hash="$(
    {
        (cd "$src" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum -o -name '*.patch' \) -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum)
        cat "${BASH_SOURCE[0]}" "$here/go-patch.sh" | sha256sum
        echo "version=$version tags=$build_tags ldflags=$ldflags"
        "$go_bin" version
    } | sha256sum | cut -c1-16
)"
cache_root="$SIN_CACHE/docker-provider"
out="$cache_root/$version-$inputs_hash"

if [ "$force" = 0 ] && [ -f "$out/.complete" ] && [ -x "$out/bin/pulumi-resource-docker" ]; then
    log "cached: $out/bin"
    echo "$out/bin"
    exit 0
fi

mkdir -p "$cache_root"
# One build at a time per cache (a second caller waits, then finds the cache filled).
lock_build "$cache_root/.lock"
if [ "$force" = 0 ] && [ -f "$out/.complete" ] && [ -x "$out/bin/pulumi-resource-docker" ]; then
    log "cached (built by a concurrent run): $out/bin"
    echo "$out/bin"
    exit 0
fi

tmp="$(mktemp -d "$cache_root/.build-$version-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

# Work on a copy so the repo's work tree never gets generated files.
mkdir -p "$tmp/src" "$tmp/gen" "$tmp/out/bin"
cp -a "$src/." "$tmp/src/"
rm -f "$tmp/src/cmd/pulumi-resource-docker/schema-embed.json" \
      "$tmp/src/cmd/pulumi-resource-docker/bridge-metadata.json"

export CGO_ENABLED=0

# kreuzwerker's provider, replaced by a patched copy of its pinned version (patches/<module path>/
# *.patch, only fixes of defects that users of the official plugin hit too, each with its test and
# its report in docs/upstream-defects.md), so the pins and go.sum stay what they are. Pulumi's
# modules and the Terraform bridge are built as they are.
patch_modules "$go_bin" "$tmp/src" "$src/patches" "$tmp/replace"
# -mod=readonly: the committed go.sum must already cover the build (no silent re-resolution).
build() { (cd "$tmp/src" && "$go_bin" build -mod=readonly -trimpath -buildvcs=false \
    -tags "$build_tags" -ldflags "$ldflags" "$@"); }

log "building pulumi-tfgen-docker $version (Go: $("$go_bin" env GOVERSION), inputs $inputs_hash)"
build -o "$tmp/tfgen" ./cmd/pulumi-tfgen-docker

log "generating schema.json"
# --skip-docs/--skip-examples: descriptions come from the Terraform schema; no example
# conversion (that would need the pulumi-converter-terraform plugin, i.e. a download).
(cd "$tmp/gen" && "$tmp/tfgen" schema --out "$tmp/gen" --skip-docs --skip-examples >"$tmp/tfgen.log" 2>&1) \
    || { cat "$tmp/tfgen.log" >&2; die "tfgen failed"; }
[ -s "$tmp/gen/schema.json" ] || die "tfgen wrote no schema.json"

python3 - "$tmp/gen/schema.json" "$tmp/src/cmd/pulumi-resource-docker/schema-embed.json" "$version" <<'PY'
import json, sys
src, dst, version = sys.argv[1:4]
schema = json.load(open(src))
schema["version"] = version
with open(dst, "w") as f:
    json.dump(schema, f, indent=2, sort_keys=False)
    f.write("\n")
PY
if [ -f "$tmp/gen/bridge-metadata.json" ]; then
    cp "$tmp/gen/bridge-metadata.json" "$tmp/src/cmd/pulumi-resource-docker/bridge-metadata.json"
else
    echo '{}' > "$tmp/src/cmd/pulumi-resource-docker/bridge-metadata.json"
fi

log "building pulumi-resource-docker $version"
build -o "$tmp/out/bin/pulumi-resource-docker" ./cmd/pulumi-resource-docker
cp "$tmp/src/cmd/pulumi-resource-docker/schema-embed.json" "$tmp/out/schema.json"

# Sanity checks before the result is published.
got="$("$tmp/out/bin/pulumi-resource-docker" -version)"
[ "$got" = "$version" ] || die "built binary reports version '$got', want '$version'"
python3 - "$tmp/out/schema.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
need_res = {
    "docker:index/network:Network": ["ipamConfigs", "driver", "internal", "labels"],
    "docker:index/volume:Volume": ["driver", "labels"],
    "docker:index/container:Container": ["image", "networksAdvanced", "uploads", "healthcheck",
        "logOpts", "ports", "volumes", "securityOpts", "wait", "waitTimeout", "command"],
    "docker:index/remoteImage:RemoteImage": ["name", "keepLocally"],
}
missing = []
for tok, props in need_res.items():
    r = s["resources"].get(tok)
    if r is None:
        missing.append(tok); continue
    missing += [f"{tok}.{p}" for p in props if p not in r["inputProperties"]]
hc = s["types"].get("docker:index/ContainerHealthcheck:ContainerHealthcheck", {}).get("properties", {})
if "tests" not in hc: missing.append("ContainerHealthcheck.tests")
if "host" not in s["config"]["variables"]: missing.append("config docker:host")
if missing:
    sys.exit("schema is missing: " + ", ".join(missing))
PY

rm -rf "$out.new"
mv "$tmp/out" "$out.new"
rm -rf "$out"
mv "$out.new" "$out"
touch "$out/.complete"
log "built in $((SECONDS - start))s: $out/bin"
echo "$out/bin"
