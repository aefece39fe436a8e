#!/usr/bin/env bash
# Installs what Palisade needs on a fresh Debian machine: system packages for the lab and
# the dataplanes, and a Rust toolchain if there is none. Safe to run again (a no-op then).
set -euo pipefail

# iptables ships both iptables-legacy and iptables-nft (the iptables dataplane is tested on
# both); ipset holds its peer sets; iperf3 and conntrack serve the dataplane benchmarks.
packages=(nftables iptables ipset iproute2 iperf3 conntrack procps ca-certificates curl build-essential pkg-config graphviz
  # palisade-ebpf: clang compiles the tc programs at build time (kernel and libbpf headers);
  # libbpf-sys builds its vendored libbpf against libelf and zlib.
  clang llvm libbpf-dev libelf-dev zlib1g-dev linux-libc-dev bpftool)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
