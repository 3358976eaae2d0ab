#!/usr/bin/env bash
# The whole test suite: installs redis-server/redis-tools when missing (Debian) and the
# manifest validators (PyPI, into target/ops-venv), then runs formatting and lint checks and
# every test against real redis-server processes.
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

# Python tools for tests/ops.rs (k8s/validate.py): Kubernetes schemas (kubernetes-validate
# ships them, so validation needs no network) and a PromQL parser, from PyPI, in a venv
# under target/. Debian's python3 needs python3-venv for that.
OPS_VENV=target/ops-venv
OPS_PACKAGES=(kubernetes-validate==1.37.0 promql-parser==0.11.0)
if ! "$OPS_VENV/bin/python" -c 'import kubernetes_validate, promql_parser' >/dev/null 2>&1; then
  echo "installing ${OPS_PACKAGES[*]} into $OPS_VENV"
  rm -rf "$OPS_VENV"
  mkdir -p target
  if ! python3 -m venv "$OPS_VENV" >/dev/null 2>&1; then
    rm -rf "$OPS_VENV"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
    python3 -m venv "$OPS_VENV"
  fi
  "$OPS_VENV/bin/python" -m pip install -q --disable-pip-version-check "${OPS_PACKAGES[@]}"
fi

# Tests start their own servers on free ports; a system redis on 6379 is never used.
export RUST_BACKTRACE=1
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Two cores: keep test binaries from running all at once on top of their redis-servers.
cargo test --all-targets -- --test-threads=4
