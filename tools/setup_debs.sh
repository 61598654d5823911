#!/usr/bin/env bash
# Install the Debian packages voxd needs, but only those that are missing.
#
#   tools/setup_debs.sh PKG...        (the Makefile passes $(DEB_PACKAGES))
#
# Environment: PYTHON (default python3) and VENV (default .venv). When no working $VENV exists yet and
# "$PYTHON -m venv" cannot create one (Debian's python3 without ensurepip), python3-venv is added.
# Nothing is installed and apt-get update is not run when everything is already there.
set -euo pipefail

python=${PYTHON:-python3}
venv=${VENV:-.venv}
wanted=("$@")

if ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    probe=$(mktemp -d)
    if ! "$python" -m venv "$probe/venv" >/dev/null 2>&1; then
        wanted+=(python3-venv)
    fi
    rm -rf "$probe"
fi

missing=()
for pkg in "${wanted[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done
((${#missing[@]} == 0)) && exit 0

echo "setup_debs: installing missing Debian packages: ${missing[*]}" >&2
sudo=()
if ((EUID != 0)); then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "setup_debs: need root to install: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
for attempt in 1 2 3; do
    # apt-get update takes the lists lock, which DPkg::Lock::Timeout does not cover: retry.
    "${apt[@]}" -q update && break
    ((attempt == 3)) && exit 1
    echo "setup_debs: apt-get update failed (attempt $attempt), retrying" >&2
    sleep 10
done
"${apt[@]}" -q -y install --no-install-recommends "${missing[@]}" </dev/null
