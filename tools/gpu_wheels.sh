#!/usr/bin/env bash
# Wheels of the requirements the device machine's image lacks (docs/benchmarks.md, "The prepared device
# run"), downloaded here into .whl/ (ignored by git), for a device `run` that names ".whl" in `carry`;
# tools/gpu_check.sh installs them there. The image holds torch, torchvision, pytorch-lightning,
# torchmetrics, numpy, pillow, opencv-python-headless, tqdm, tensorboard, onnx, onnxruntime, onnxscript,
# timm, huggingface-hub and safetensors (/work/.library/device/KINDS.md); not cityscapesScripts (the
# label table of utils/labels.py), its small dependencies, nor segmentation-models-pytorch (the students).
# All are pure Python: any platform's pip fetches them. The device's Python is 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
    cityscapesScripts==2.3.0 appdirs==1.4.4 coloredlogs==15.0.1 humanfriendly==10.0 pyquaternion==0.9.9 \
    segmentation-models-pytorch==0.6.0
ls -l .whl
du -sh .whl
