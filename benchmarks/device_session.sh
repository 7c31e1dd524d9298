#!/usr/bin/env bash
# Everything a GPU session checks, in one command that fits a short lease (about 8 minutes on
# an H100): the CUDA tests, then the device benchmark's parts, each under its own time limit so
# that one slow part cannot take the others' time. Results go to $OUT (or ./device-results).
#
#   PYTHONPATH=$PWD/src:$PWD/.peers bash benchmarks/device_session.sh
#
# .peers: the peers' pure-Python packages (zuko, nflows, normflows, FrEIA) copied from a
# machine that has the bench extra, for a device that cannot reach a package index.
set -u
out=${OUT:-device-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
run() {  # run LIMIT_S NAME COMMAND...: the command's output to $out/NAME.log and the screen
    local limit=$1 name=$2
    shift 2
    timeout "$limit" "$@" 2>&1 | grep -v -i "warn" | tee "$out/$name.log"
}
nvidia-smi -L
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
run 150 tests python3 -m pytest -q -p no:cacheprovider -o addopts= -n 8 tests/test_cuda.py
run 200 device python3 benchmarks/device.py --out "$out/device.json" --eval-batches 10000 \
    --rounds 5
for m in maf:90 realnvp:80; do
    run "${m#*:}" "compiled_${m%:*}" python3 benchmarks/device.py --parts compiled \
        --libs flowforge --compile-models "${m%:*}" --rounds 5 --out "$out/compiled_${m%:*}.json"
done
