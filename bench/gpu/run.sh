#!/usr/bin/env bash
# The GPU kit in one call on the GPU machine (README.md beside this file):
#   bash bench/gpu/run.sh --out "$OUT"      with bench/gpu/wheels carried along
# Installs the carried wheels into /tmp/site (no index, no dependencies resolved), then runs
# bench/gpu/run.py with the machine's python3; the arguments go to run.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
export KIT_T0=${KIT_T0:-$(date +%s.%N)}
shopt -s nullglob
wheels=(bench/gpu/wheels/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${wheels[@]}"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "run.sh: no wheels in bench/gpu/wheels: fetch them here with bench/gpu/fetch_wheels.py" \
         "and carry the folder (README.md)" >&2
fi
KIT_INSTALL_S=$(python3 -c "import time; print(round(time.time() - $KIT_T0, 1))")
export KIT_INSTALL_S PYTHONUNBUFFERED=1
echo "run.sh: ${#wheels[@]} wheels installed into /tmp/site in ${KIT_INSTALL_S} s"
exec python3 bench/gpu/run.py "$@"
