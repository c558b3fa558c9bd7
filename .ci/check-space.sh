#!/usr/bin/env bash
# Usage: check-space.sh DIR [NEED_GB]
# Stops `make` before it creates the virtual environment in DIR when DIR's disk
# cannot hold it (torch and easyocr make it about 6 GB; pip needs room to unpack
# too). Without this, pip's "No space left on device" comes minutes into the
# downloads, in the middle of a long log, and leaves a half-made environment.
set -euo pipefail
dir=${1:?usage: check-space.sh DIR [NEED_GB]}
need_gb=${2:-8}
read -r free_kb mount < <(df -Pk "$dir" | awk 'NR == 2 {print $4, $6}')
if (( free_kb < need_gb * 1024 * 1024 )); then
    echo "error: the virtual environment needs about ${need_gb} GB free in ${dir}" \
         "(disk ${mount}), and only $(( free_kb / 1024 / 1024 )) GB are:" \
         "free some space, or set VENV to a folder on a larger disk (make test VENV=/big/venv)." >&2
    exit 1
fi
