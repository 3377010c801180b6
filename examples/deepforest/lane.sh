#!/usr/bin/env bash
# One training lane of the k-fold experiment: each "FOLD:SEED:ARMS[:VARIANTS]" in turn on one thread, retried on
# failure (VARIANTS: "lite" unless given).
#
#   nohup examples/deepforest/lane.sh "0:1:A5 C A1+" "0:0:A2 E2E:lite paper" > runs/lane_a.log 2>&1 &
#
# Two lanes fill this project's two cores. Each spec first restores the fold's committed records that this machine
# lacks. A spec whose arms start from their seed's A1 weights (A5, A5g, C, A1+) restores neither that A1 nor the runs
# descending from it (--retrain-lineage): they train here as one lineage, so list only seeds whose lineage is not
# committed complete. Finished runs are skipped and stopped runs resume from their checkpoint.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export SRF_UPSAMPLE_DATA_CACHE="${SRF_UPSAMPLE_DATA_CACHE:-$PWD/.cache/srf_upsample}"
mkdir -p runs
for spec in "$@"; do
    IFS=: read -r fold seed arms variants <<< "$spec"
    variants=${variants:-lite}
    lineage=()
    for arm in $arms; do
        case $arm in A5 | A5g | C | A1+) lineage=(--retrain-lineage) ;; esac
    done
    for attempt in 1 2 3; do
        echo "$(date -u +%H:%M:%S) block $fold seed $seed arms $arms (attempt $attempt)"
        # shellcheck disable=SC2086  # ARMS and VARIANTS are lists of names
        if python examples/deepforest/run.py --profile cpu --split blocks --fold "$fold" --seeds "$seed" \
            --variants $variants --arms $arms --jobs 1 --restore "${lineage[@]}" \
            > "runs/lane_block${fold}_seed${seed}_${variants// /-}.log" 2>&1; then
            break
        fi
    done
done
echo "$(date -u +%H:%M:%S) lane done"
