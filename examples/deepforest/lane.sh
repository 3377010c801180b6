#!/usr/bin/env bash
# One training lane of the k-fold experiment: each "FOLD:SEED:ARMS" in turn on one thread, retried on failure.
#
#   nohup examples/deepforest/lane.sh "0:1:A5 C A1+" "2:1:A5 C A1+" > runs/lane_a.log 2>&1 &
#
# Two lanes fill this project's two cores. Each spec restores the fold's committed records that this machine lacks,
# except its seed's A1 and the runs descending from that A1's weights (--retrain-lineage): those train here as one
# lineage. Finished runs are skipped and stopped runs resume from their checkpoint, so a lane can be started again.
# A spec whose seed's lineage is already committed complete would retrain it: list only seeds still to train.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export SRF_UPSAMPLE_DATA_CACHE="${SRF_UPSAMPLE_DATA_CACHE:-$PWD/.cache/srf_upsample}"
mkdir -p runs
for spec in "$@"; do
    IFS=: read -r fold seed arms <<< "$spec"
    for attempt in 1 2 3; do
        echo "$(date -u +%H:%M:%S) block $fold seed $seed arms $arms (attempt $attempt)"
        # shellcheck disable=SC2086  # ARMS is a list of arm names
        if python examples/deepforest/run.py --profile cpu --split blocks --fold "$fold" --seeds "$seed" \
            --variants lite --arms $arms --jobs 1 --restore --retrain-lineage \
            > "runs/lane_block${fold}_seed${seed}.log" 2>&1; then
            break
        fi
    done
done
echo "$(date -u +%H:%M:%S) lane done"
