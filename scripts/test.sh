#!/usr/bin/env bash
# The whole test suite: installs redis-server/redis-tools when missing (Debian), then runs
# formatting and lint checks and every test against real redis-server processes.
set -euo pipefail
cd "$(dirname "$0")/.."

need_install=()
command -v redis-server >/dev/null 2>&1 || need_install+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_install+=(redis-tools)
if [ ${#need_install[@]} -gt 0 ]; then
  echo "installing ${need_install[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools
fi

# Tests start their own servers on free ports; a system redis on 6379 is never used.
export RUST_BACKTRACE=1
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Two cores: keep test binaries from running all at once on top of their redis-servers.
cargo test --all-targets -- --test-threads=4
