#!/usr/bin/env bash
# Build the REAL kube-apiserver and etcd from their upstream Go modules, once
# per machine, into a cache folder outside the repo.
#
#   scripts/build-k8s.sh                    build if needed (no-op when the stamps match)
#   scripts/build-k8s.sh --force            rebuild both binaries
#   scripts/build-k8s.sh --print-env        print the KEY=VALUE lines only (fast path or build)
#   scripts/build-k8s.sh pin [K8S] [ETCD]   regenerate scripts/k8s/*/go.mod + go.sum
#                                           (defaults: newest k8s.io/kubernetes, newest etcd v3.6.x)
#
# Pinned versions live in the wrapper modules:
#   scripts/k8s/apiserver/go.mod   require k8s.io/kubernetes vX.Y.Z + replace of every
#                                  k8s.io staging module to its published v0.Y.Z
#   scripts/k8s/etcd/go.mod        require go.etcd.io/etcd/server/v3 v3.6.Z
#
# Environment:
#   PALISADE_K8S_CACHE   cache dir (default /var/cache/palisade-k8s)
#   PALISADE_K8S_NOSUMDB set to 1 to build with GOSUMDB=off (only matters when
#                        go.sum lacks an entry; the committed go.sum is complete)
#
# Output: $CACHE/bin/kube-apiserver, $CACHE/bin/etcd, $CACHE/versions.env
# (KEY=VALUE lines, sourceable by shells and test harnesses).
set -euo pipefail

# Bump when the build recipe (flags, ldflags, layout) changes: forces a rebuild.
RECIPE=2

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WRAP_DIR="$SCRIPT_DIR/k8s"
CACHE="${PALISADE_K8S_CACHE:-/var/cache/palisade-k8s}"
BIN="$CACHE/bin"
STAMPS="$CACHE/stamps"

log() { printf '[build-k8s] %s\n' "$*" >&2; }
die() { printf '[build-k8s] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not installed (need Go >= the 'go' line of scripts/k8s/*/go.mod)"

# --- versions & stamps ------------------------------------------------------

# mod_version GOMOD MODULE -> version required in GOMOD (require lines only)
mod_version() {
    awk -v m="$2" '
        $1 == "replace" || $0 ~ /^replace[ \t]*\(/ { inrep = ($0 ~ /\($/); next }
        inrep && $0 ~ /^\)/ { inrep = 0; next }
        inrep { next }
        $1 == "require" && $2 == m { print $3; exit }
        $1 == m && $2 ~ /^v/ { print $2; exit }
    ' "$1"
}

GO_VERSION_LINE="$(go version)"

# stamp_for NAME -> the text that must be in $STAMPS/NAME for the binary to be current
stamp_for() {
    local name="$1" dir mod ver hash
    case "$name" in
        kube-apiserver) dir="$WRAP_DIR/apiserver"; mod=k8s.io/kubernetes ;;
        etcd)           dir="$WRAP_DIR/etcd";      mod=go.etcd.io/etcd/server/v3 ;;
        *) die "unknown binary $name" ;;
    esac
    [[ -f "$dir/go.mod" ]] || die "missing $dir/go.mod"
    ver="$(mod_version "$dir/go.mod" "$mod")"
    [[ -n "$ver" ]] || die "no 'require $mod' in $dir/go.mod"
    hash="$(cd "$dir" && cat go.mod go.sum ./*.go 2>/dev/null | sha256sum | cut -d' ' -f1)"
    printf 'recipe=%s\nmodule=%s\nversion=%s\ngo=%s\ninputs=%s\n' \
        "$RECIPE" "$mod" "$ver" "$GO_VERSION_LINE" "$hash"
}

stamp_version() { sed -n 's/^version=//p' <<<"$1"; }

is_current() { # NAME WANT
    [[ -x "$BIN/$1" && -f "$STAMPS/$1" ]] && [[ "$(<"$STAMPS/$1")" == "$2" ]]
}

print_env() {
    cat <<EOF
PALISADE_K8S_CACHE=$CACHE
PALISADE_KUBE_APISERVER=$BIN/kube-apiserver
PALISADE_ETCD=$BIN/etcd
KUBE_APISERVER_VERSION=$(stamp_version "$WANT_APISERVER")
ETCD_VERSION=$(stamp_version "$WANT_ETCD")
EOF
}

report() {
    if [[ "$PRINT_ENV_ONLY" == 1 ]]; then
        print_env
    else
        log "kube-apiserver $(stamp_version "$WANT_APISERVER"): $BIN/kube-apiserver"
        log "etcd           $(stamp_version "$WANT_ETCD"): $BIN/etcd"
        print_env
    fi
}

# --- Go environment (only set up when we actually have to run go) -----------

setup_go_env() {
    mkdir -p "$CACHE/gopath" "$CACHE/gocache" "$CACHE/work" "$BIN" "$STAMPS"
    export GOPATH="$CACHE/gopath"
    export GOMODCACHE="$CACHE/gopath/pkg/mod"
    export GOCACHE="$CACHE/gocache"
    # Keep whatever GOFLAGS the machine has (e.g. -buildvcs=false), drop any -mod=,
    # add -mod=mod; -modcacherw so the cache dir can be removed with plain rm -rf.
    local f flags=()
    for f in $(go env GOFLAGS); do
        case "$f" in -mod=*|-modcacherw) ;; *) flags+=("$f") ;; esac
    done
    flags+=(-mod=mod -modcacherw)
    export GOFLAGS="${flags[*]}"
    if [[ -z "$(go env GOPROXY)" ]]; then
        export GOPROXY=https://proxy.golang.org,direct
    fi
    if [[ "${PALISADE_K8S_NOSUMDB:-0}" == 1 ]]; then
        export GOSUMDB=off
        log "NOTE: GOSUMDB=off (PALISADE_K8S_NOSUMDB=1): go.sum entries are still checked"
    fi
    export CGO_ENABLED=0
    log "go: $GO_VERSION_LINE; GOPROXY=$(go env GOPROXY) GOSUMDB=$(go env GOSUMDB) GOFLAGS=$GOFLAGS"
}

# Copy a wrapper module into the cache work dir so -mod=mod never edits the repo.
stage_module() { # SRC_DIR NAME -> prints work dir
    local src="$1" dst="$CACHE/work/$2"
    rm -rf "$dst"
    mkdir -p "$dst"
    cp "$src"/go.mod "$dst"/
    [[ -f "$src/go.sum" ]] && cp "$src/go.sum" "$dst"/
    cp "$src"/*.go "$dst"/
    printf '%s\n' "$dst"
}

build_apiserver() {
    local ver="$1" work major minor date pkgs ld=()
    work="$(stage_module "$WRAP_DIR/apiserver" apiserver)"
    major="${ver#v}"; major="${major%%.*}"
    minor="${ver#v*.}"; minor="${minor%%.*}"
    # buildDate = the module's publication time, so rebuilds are reproducible.
    date="$(cd "$work" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes 2>/dev/null || true)"
    [[ -n "$date" ]] || date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    # Same version variables hack/lib/version.sh stamps into an official build.
    for pkgs in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=("-X" "$pkgs.gitVersion=$ver"
             "-X" "$pkgs.gitMajor=$major"
             "-X" "$pkgs.gitMinor=$minor"
             "-X" "$pkgs.gitTreeState=clean"
             "-X" "$pkgs.buildDate=$date")
    done
    log "building kube-apiserver $ver (k8s.io/kubernetes/cmd/kube-apiserver) in $work"
    local t0=$SECONDS tmp="$BIN/.kube-apiserver.tmp.$$"
    (cd "$work" && go build -trimpath -ldflags "-s -w ${ld[*]}" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver)
    mv -f "$tmp" "$BIN/kube-apiserver"
    log "kube-apiserver built in $((SECONDS - t0))s"
}

build_etcd() {
    local ver="$1" work
    work="$(stage_module "$WRAP_DIR/etcd" etcd)"
    log "building etcd $ver (go.etcd.io/etcd/server/v3/etcdmain) in $work"
    local t0=$SECONDS tmp="$BIN/.etcd.tmp.$$"
    (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$tmp" .)
    mv -f "$tmp" "$BIN/etcd"
    log "etcd built in $((SECONDS - t0))s"
}

write_stamp() { # NAME CONTENT
    printf '%s' "$2" >"$STAMPS/.$1.tmp.$$"
    mv -f "$STAMPS/.$1.tmp.$$" "$STAMPS/$1"
}

# --- pin: regenerate the wrapper go.mod files --------------------------------

pin() {
    local k8s="${1:-}" etcd="${2:-}" k8smod etcdmod dir minor
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    setup_go_env
    local tmp; tmp="$(mktemp -d)"
    PIN_TMP="$tmp"
    trap 'rm -rf "$PIN_TMP"' EXIT
    (cd "$tmp" && go mod init palisade.local/pin >/dev/null 2>&1)
    if [[ -z "$k8s" ]]; then
        k8s="$(cd "$tmp" && go list -m -f '{{.Version}}' k8s.io/kubernetes@latest)"
    fi
    if [[ -z "$etcd" ]]; then
        etcd="$(cd "$tmp" && go list -m -versions go.etcd.io/etcd/server/v3 | tr ' ' '\n' \
                | grep -E '^v3\.6\.[0-9]+$' | sort -V | tail -1)"
    fi
    [[ "$k8s" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "not a k8s release version: $k8s"
    minor="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
    log "pinning k8s.io/kubernetes $k8s (staging modules $minor), etcd $etcd"

    k8smod="$(cd "$tmp" && go mod download -json "k8s.io/kubernetes@$k8s" \
              | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
    [[ -f "$k8smod" ]] || die "could not download k8s.io/kubernetes@$k8s go.mod"

    dir="$WRAP_DIR/apiserver"
    {
        echo "// Generated by scripts/build-k8s.sh pin $k8s $etcd -- do not edit by hand."
        echo "// Builds k8s.io/kubernetes/cmd/kube-apiserver from the upstream module."
        echo
        echo "module palisade.local/k8s/apiserver"
        echo
        # Same go/godebug lines as upstream, so the binary behaves like an official build.
        grep -E '^(go|godebug) ' "$k8smod"
        echo
        echo "require k8s.io/kubernetes $k8s"
        echo
        echo "// Every 'k8s.io/X => ./staging/src/k8s.io/X' replace of k8s.io/kubernetes@$k8s,"
        echo "// mapped to the published k8s.io/X $minor."
        echo "replace ("
        sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/k8s\.io/.*$#\1#p' "$k8smod" \
            | sort -u | while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$minor"; done
        echo ")"
    } >"$dir/go.mod.new"
    mv -f "$dir/go.mod.new" "$dir/go.mod"
    rm -f "$dir/go.sum"
    (cd "$dir" && go mod tidy)

    etcdmod="$(cd "$tmp" && go mod download -json "go.etcd.io/etcd/server/v3@$etcd" \
              | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
    [[ -f "$etcdmod" ]] || die "could not download go.etcd.io/etcd/server/v3@$etcd go.mod"

    dir="$WRAP_DIR/etcd"
    {
        echo "// Generated by scripts/build-k8s.sh pin $k8s $etcd -- do not edit by hand."
        echo "// Builds etcd from go.etcd.io/etcd/server/v3/etcdmain."
        echo
        echo "module palisade.local/k8s/etcd"
        echo
        grep -E '^go ' "$etcdmod"
        echo
        echo "require go.etcd.io/etcd/server/v3 $etcd"
    } >"$dir/go.mod.new"
    mv -f "$dir/go.mod.new" "$dir/go.mod"
    rm -f "$dir/go.sum"
    (cd "$dir" && go mod tidy)
    log "pinned; now run scripts/build-k8s.sh"
}

# --- main ---------------------------------------------------------------------

FORCE=0
PRINT_ENV_ONLY=0
case "${1:-}" in
    pin) shift; pin "$@"; exit 0 ;;
    --force) FORCE=1 ;;
    --print-env) PRINT_ENV_ONLY=1 ;;
    ""|build) ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
esac

WANT_APISERVER="$(stamp_for kube-apiserver)"
WANT_ETCD="$(stamp_for etcd)"

# Fast path: nothing to do, no lock, no go env.
if [[ "$FORCE" == 0 ]] && is_current kube-apiserver "$WANT_APISERVER" && is_current etcd "$WANT_ETCD"; then
    report
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    log "waiting for another build-k8s.sh holding $CACHE/.lock ..."
    flock 9
fi

# Re-check under the lock: a concurrent run may have just built them.
FORCE_A=$FORCE FORCE_E=$FORCE
if [[ "$FORCE" == 0 ]] && is_current kube-apiserver "$WANT_APISERVER" && is_current etcd "$WANT_ETCD"; then
    report
    exit 0
fi

setup_go_env
trap 'rm -f "$BIN"/.*.tmp.$$ "$STAMPS"/.*.tmp.$$' EXIT

T0=$SECONDS
if [[ "$FORCE_E" == 1 ]] || ! is_current etcd "$WANT_ETCD"; then
    build_etcd "$(stamp_version "$WANT_ETCD")"
    write_stamp etcd "$WANT_ETCD"
fi
if [[ "$FORCE_A" == 1 ]] || ! is_current kube-apiserver "$WANT_APISERVER"; then
    build_apiserver "$(stamp_version "$WANT_APISERVER")"
    write_stamp kube-apiserver "$WANT_APISERVER"
fi
print_env >"$CACHE/versions.env.tmp.$$" && mv -f "$CACHE/versions.env.tmp.$$" "$CACHE/versions.env"
log "done in $((SECONDS - T0))s"
report
