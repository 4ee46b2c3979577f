# Sourced by docker-provider.sh (after lib.sh), and part of its inputs hash: a Go module built
# from a patched copy of its pinned version (kreuzwerker's provider; see docker-provider.sh).

# patch_module GO BUILD_MODULE_DIR MODULE COPY PATCH...: make COPY a copy of MODULE at the version
# BUILD_MODULE_DIR's go.mod pins, apply the patches (git apply -p1; each says why), and replace
# MODULE with COPY in that go.mod, so the pin and go.sum stay what they are.
patch_module() {
    local go_bin="$1" build_dir="$2" module="$3" copy="$4" module_dir patch_file
    shift 4
    (cd "$build_dir" && "$go_bin" mod download "$module") >&2
    module_dir="$(cd "$build_dir" && "$go_bin" list -mod=readonly -m \
        -f '{{if .Replace}}{{.Replace.Dir}}{{else}}{{.Dir}}{{end}}' "$module")"
    [ -d "$module_dir" ] || die "could not find the source of $module"
    mkdir -p "$(dirname "$copy")"
    cp -a "$module_dir" "$copy"
    chmod -R u+w "$copy"
    for patch_file in "$@"; do
        log "applying $module: $(basename "$patch_file")"
        (cd "$copy" && git apply -p1 "$patch_file") || die "$patch_file does not apply"
    done
    (cd "$build_dir" && "$go_bin" mod edit -replace "$module=$copy")
}

# patch_modules GO BUILD_MODULE_DIR PATCH_ROOT COPY_ROOT: patch_module for every module that has
# patches under PATCH_ROOT (PATCH_ROOT/<module path>/*.patch), its copy in COPY_ROOT/<module path>.
patch_modules() {
    local go_bin="$1" build_dir="$2" patch_root="$3" copy_root="$4" patch_dir module
    while IFS= read -r patch_dir; do
        module="${patch_dir#"$patch_root/"}"
        patch_module "$go_bin" "$build_dir" "$module" "$copy_root/$module" "$patch_dir"/*.patch
    done < <(find "$patch_root" -name '*.patch' -printf '%h\n' 2>/dev/null | sort -u)
}
