#!/usr/bin/env bash
# Before and after on one GPU machine, beside the reference, in one run (issue 9's GPU rows).
# From the project root, after ../shared/tools/gpu-bench/prepare laid out .gpu/ and the code before
# the change was put in .gpu/base:   mkdir -p .gpu/base && git archive REV translate recipes | tar -x -C .gpu/base
#
#   bash bench/gpu_compare.sh [infer] [net] [train]      (each part about 2-3 minutes on an H200)
#
# infer: `translate run` over 2000 JPEGs of 256x256 (200 horse photos x 10), resnet_9blocks, before and
#        after, whole command; the reference's test.py over the first 500 of them; PSNR to the reference.
# net:   the network alone by variant (bench/net_variants.py).
# train: CycleGAN 200 iterations and pix2pix 172 iterations at batch 1: reference, before, after.
set -u
ROOT=$(pwd); G=$ROOT/.gpu
export PYTHONUNBUFFERED=1
[ -d /tmp/site/kornia ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$G"/whl/*.whl || exit 1
NEW=/tmp/site:$ROOT; OLD=/tmp/site:$G/base; REFPATH=$G/shims:/tmp/site
T() { local s; s=$(date +%s.%N); "$@"; local rc=$?; echo "TIME $(python3 -c "import time;print(round(time.time()-$s,2))") s rc=$rc :: ${*: -6}"; return $rc; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch,os;print('torch',torch.__version__,'| cpus',len(os.sched_getaffinity(0)))"
cd "$G" || exit 1
if [ ! -f g.safetensors ]; then
  mkdir -p in2000 in500; i=0
  for r in $(seq 1 10); do for f in data/h2z/trainA/*.jpg; do i=$((i+1)); cp "$f" "in2000/$(printf %05d $i).jpg"; done; done
  ls in2000 | head -500 | while read -r f; do cp "in2000/$f" in500/; done
  python3 make_ckpt.py ck/bench/latest_net_G.pth >/dev/null && PYTHONPATH=$NEW python3 -m translate import ck/bench/latest_net_G.pth -o g.safetensors
fi

infer() {
  echo "== reference test.py, 500 images (batch 1, fp32; writes real and fake PNGs and an HTML page)"
  rm -rf res; (cd ref && PYTHONPATH=$REFPATH T python3 test.py --dataroot ../in500 --name bench --model test --netG resnet_9blocks \
     --norm instance --no_dropout --checkpoints_dir ../ck --results_dir ../res --num_test 500 --load_size 256 --crop_size 256 2>&1 | grep TIME)
  for v in ${INFER_VERSIONS:-old new}; do
    P=$OLD; [ $v = new ] && P=$NEW
    echo "== $v: translate run, 2000 JPEGs -> JPEG (auto precision)"
    rm -rf out_$v; PYTHONPATH=$P T python3 -m translate run in2000 out_$v --weights g.safetensors
    echo "== $v: again into a fresh folder (warm file cache)"
    rm -rf out_$v; PYTHONPATH=$P T python3 -m translate run in2000 out_$v --weights g.safetensors
    echo "== $v: 2000 JPEGs -> PNG"
    rm -rf png_$v; PYTHONPATH=$P T python3 -m translate run in2000 png_$v --weights g.safetensors --format png
  done
  python3 - <<'PY'
import numpy as np
from pathlib import Path
from PIL import Image
for v in [v for v in ["old", "new"] if Path(f"png_{v}").is_dir()]:
    ps = []
    for f in sorted(Path("res/bench/test_latest/images").glob("*_fake.png"))[:200]:
        a = np.asarray(Image.open(f).convert("RGB"), float); b = np.asarray(Image.open(f"png_{v}/" + f.name[:-9] + ".png").convert("RGB"), float)
        m = ((a - b) ** 2).mean(); ps.append(99.0 if m == 0 else 10 * np.log10(255 ** 2 / m))
    print(f"PSNR of {v} translate run (png, auto precision) to the reference's output: min {min(ps):.1f} dB, mean {np.mean(ps):.1f} dB over {len(ps)} images")
PY
}

net() {
  echo "== the network alone"
  PYTHONPATH=$NEW python3 "$ROOT/bench/net_variants.py" g.safetensors --batches 16,64,128 --seconds 1.5 ${COMPILE:+--compile}
  PYTHONPATH=$NEW python3 "$ROOT/bench/net_variants.py" g.safetensors --batches 64 --seconds 1.5 --precision fp32
}

train() {
  local FL="--no_html --display_freq 1000000000 --update_html_freq 1000000000 --print_freq 50 --save_latest_freq 1000000000 --save_epoch_freq 1000000000 --n_epochs_decay 0 --checkpoints_dir ../ckt"
  echo "== CycleGAN, 200 iterations, batch 1: reference, then translate before and after (auto precision)"
  (cd ref && PYTHONPATH=$REFPATH T python3 train.py --dataroot ../data/h2z --name c --model cycle_gan --netG resnet_9blocks --batch_size 1 \
     --load_size 286 --crop_size 256 --max_dataset_size 200 --n_epochs 1 $FL 2>&1 | grep -E "TIME|Time Taken")
  rm -rf runs
  for v in old new; do
    P=$OLD; [ $v = new ] && P=$NEW
    PYTHONPATH=$P T python3 -m translate train --recipe cyclegan --data data/h2z --out runs/c_$v --set train.max_steps=200 2>&1 | grep -E "TIME|done|step 200/"
  done
  echo "== pix2pix, 172 iterations (2 epochs of 86), batch 1: reference, then before and after"
  (cd ref && PYTHONPATH=$REFPATH T python3 train.py --dataroot ../data/p2o --name p --model pix2pix --netG unet_256 --direction AtoB \
     --batch_size 1 --load_size 286 --crop_size 256 --n_epochs 2 $FL 2>&1 | grep -E "TIME|Time Taken")
  for v in old new; do
    P=$OLD; [ $v = new ] && P=$NEW
    PYTHONPATH=$P T python3 -m translate train --recipe pix2pix --data data/p2o --out runs/p_$v --set train.max_steps=172 2>&1 | grep -E "TIME|done|step 172/"
  done
  echo "== losses at the end (log.jsonl, last line)"
  for r in runs/*; do echo "$r $(tail -1 "$r/log.jsonl")"; done
}

for part in "${@:-infer net train}"; do for p in $part; do $p; done; done
