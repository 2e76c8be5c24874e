#!/usr/bin/env bash
# What a session with a lent GPU measures for the open trainer work, in stages that each fit one
# 10-minute device call (device time is 30 minutes a session, so run the stages in this order and
# stop where it runs out):
#
#   bash benchmarks/gpu_session.sh throughput   # MIO and EMI pipeline/ceiling ratio, 3 repeats, peak memory
#   bash benchmarks/gpu_session.sh compile      # EMI with train.compile_loss=true (unmeasured on a GPU so far)
#   bash benchmarks/gpu_session.sh tests        # the CUDA tests (augmentation, graph replay, KSG, LARS, backends)
#   bash benchmarks/gpu_session.sh ops          # operator and sync counts per step part; hybrid augmentation cost
#   bash benchmarks/gpu_session.sh hessian      # Hessian top-1/trace/density vs PyHessian, ResNet-18 (CIFAR stem)
#   bash benchmarks/gpu_session.sh imagenet     # ImageNet-100 pipeline/ceiling (fake JPEGs): hybrid vs workers
#
# Tables go to $OUT/bench (the device tool brings $OUT back; default results/bench). The device
# image has its own torch and lacks some of our dependencies, so the repo goes on PYTHONPATH
# instead of being installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MITOOLS_NO_PROGRESS=1
out="${OUT:-results}/bench"
case "${1:-}" in
    throughput | compile | tests | ops | hessian | imagenet) ;;
    *)
        echo "usage: bash benchmarks/gpu_session.sh throughput|compile|tests|ops|hessian|imagenet" >&2
        exit 2
        ;;
esac
mkdir -p "$out"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

case "${1:-}" in
    throughput)
        python -m benchmarks.train_throughput --case cifar10_mio --case cifar10_emi --repeats 3 \
            --out "$out"
        ;;
    compile)
        python -m benchmarks.train_throughput --case cifar10_emi --repeats 3 \
            --set train.compile_loss=true --out "$out/compile_loss"
        ;;
    tests)
        python -m pytest -q -p no:cacheprovider -k "cuda or gpu or backends" tests
        ;;
    ops)
        python -m benchmarks.step_ops --case cifar10_emi --case cifar10_mio --out "$out"
        # ImageNet-100's hybrid augmentation: worker cost per image and the GPU's colour half
        python -m benchmarks.bench_worker_augment --device cuda --batch 256
        ;;
    hessian)
        # the device image has no pyhessian and no internet: bring its wheel along, made on the
        # dev machine with `pip download --no-deps pyhessian==0.1 -d .wheels` (carry: [".wheels"])
        if ! python -c "import pyhessian" 2>/dev/null; then
            if [ -d .wheels ]; then
                pip install -q --no-index --no-deps --find-links .wheels pyhessian
            else
                echo "pyhessian missing: pip download --no-deps pyhessian==0.1 -d .wheels, carry .wheels" >&2
                exit 2
            fi
        fi
        python -m benchmarks.bench_hessian --device cuda --configs resnet18_cifar_b64 --repeats 3 \
            --out "$out"
        ;;
    imagenet)
        # 14 of the 16 cores as DataLoader workers; is the 224 px ResNet-18 step worker-bound?
        for mode in hybrid workers; do
            python -m benchmarks.train_throughput --case imagenet100_mio --steps 10 \
                --set data.num_workers=14 --set data.augment=$mode --out "$out/imagenet100_$mode"
        done
        ;;
esac
