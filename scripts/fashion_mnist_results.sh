#!/usr/bin/env bash
# Reproduces the README's results: FID table and rate-distortion of the shipped Fashion-MNIST model, and
# the bits/dim comparison of L_simple vs L_hybrid (and linear vs cosine) on the digits data.
#
#   scripts/fashion_mnist_results.sh            # everything, one part after the other
#   scripts/fashion_mnist_results.sh fid        # parts: fid (= fid_fast fid_ddpm floor fid_ablation) | rd | bpd | table
#
# The README's FID rows ran one after the other with 2 threads (`fid`: about 30 minutes on a Zen 4 EPYC,
# 7 of them the 1000-step DDPM row at n = 200); `rd` and `bpd` ran separately. Only the times depend on that.
#
# Environment: CKPT (default pretrained:fashion-mnist), N (samples per FID row, default 1000),
# N_DDPM (samples for the 1000-step DDPM row, default 200: ~2 s an image),
# RD_N (test images for rate-distortion / bits/dim, default 50), BPD_SCHEDULES (default "cosine linear"),
# OUT (default benchmarks/results/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
DDPMKIT=${DDPMKIT:-.venv/bin/ddpmkit}
PY=${PY:-.venv/bin/python}
CKPT=${CKPT:-pretrained:fashion-mnist}
N=${N:-1000}
N_DDPM=${N_DDPM:-200}
RD_N=${RD_N:-50}
BPD_SCHEDULES=${BPD_SCHEDULES:-cosine linear}
OUT=${OUT:-benchmarks/results/fashion-mnist}
mkdir -p "$OUT"

fid_one() {  # sampler steps [json suffix] [extra eval-fid options...]; n = $FID_N (default $N)
    local sampler=$1 steps=$2 suffix=${3:-}
    shift $(($# < 3 ? $# : 3))
    "$DDPMKIT" eval fid --checkpoint "$CKPT" --sampler "$sampler" --steps "$steps" -n "${FID_N:-$N}" --seed 0 --no-progress \
        --json "$OUT/fid_${sampler/++/pp}_$steps$suffix.json" "$@"
}

fid_ddpm() { FID_N=$N_DDPM fid_one ddpm 1000; }

fid_fast() {
    for spec in "ddim 10" "ddim 20" "ddim 50" "ddim 100" "dpm++ 10" "dpm++ 20"; do fid_one $spec; done
}

floor() {  # one floor per sample count the rows use
    local n
    for n in $(printf '%s\n' "$N" "$N_DDPM" | sort -un); do
        "$PY" benchmarks/fid_floor.py --n "$n" --datasets fashion-mnist --out "$OUT/fid_floor_n$n.json"
    done
}

fid_ablation() {  # DDIM-50 with other step spacings, with eta = 1 noise, and without clipping the predicted x0
    fid_one ddim 50 _eta1 --eta 1
    fid_one ddim 50 _quadratic --spacing quadratic
    fid_one ddim 50 _logsnr --spacing logsnr
    fid_one ddim 50 _noclip --no-clip
}

fid() { fid_fast; fid_ddpm; floor; fid_ablation; }

rd() {
    "$DDPMKIT" eval rate-distortion --checkpoint "$CKPT" -n "$RD_N" --seed 0 --no-progress --out "$OUT/rate_distortion"
}

bpd() {  # digits: L_simple vs L_hybrid, cosine vs linear; same network, steps and seed
    local base=(--config configs/digits.toml --no-progress --set train.sample_every=0)
    local schedule v
    for schedule in $BPD_SCHEDULES; do for v in "simple fixed_small" "hybrid learned_range"; do
        set -- $v $schedule
        local run="runs/bpd-digits-$1-$3"
        if [ ! -d "$run/checkpoints" ]; then
            "$DDPMKIT" train "${base[@]}" --set "run.out_dir=\"$run\"" --set "diffusion.loss=\"$1\"" \
                --set "diffusion.variance=\"$2\"" --set "diffusion.schedule=\"$3\""
        fi
        "$DDPMKIT" eval nll --checkpoint "$run" -n 360 --seed 0 --no-progress --json "$OUT/bpd_digits_$1_$3.json"
    done; done
}

table() {
    "$PY" scripts/results_table.py "$OUT"
}

if [ $# -eq 0 ]; then fid; rd; bpd; table; else for part in "$@"; do "$part"; done; fi
