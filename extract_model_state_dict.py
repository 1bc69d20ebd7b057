r"""Stage 4, checkpoint extraction: take a network's weights out of a Lightning checkpoint.

Writes a plain state dict that ``main.py --restore-from`` (and the published DeepLabv2 code) loads
with a strict key match, e.g. the best cross-domain distillation student as ``pretrained/basic.pth``
to start self-distillation from:

    python extract_model_state_dict.py --save-path ./pretrained/basic.pth \
        --pl-weight-path "experiments/baseline/NAME/checkpoint-step_...-miou_....ckpt"
"""
import argparse
import io
import os

import torch

from models.deeplabv2 import extract_state_dict
from utils.cli import ArgumentParser, UserError, run
from utils.io import atomic_write_bytes


def parse_args(argv=None):
    parser = ArgumentParser(prog="extract_model_state_dict.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pl-weight-path", required=True, help="Lightning checkpoint (.ckpt) written by main.py")
    parser.add_argument("--model-weight-keyname", default="net", choices=("net", "ema_net"),
                        help="which network to take: net (the student) or ema_net (the EMA teacher of "
                             "spatial_mix / smhm); default: %(default)s")
    parser.add_argument("--save-path", default=None,
                        help="output state dict; default: next to the checkpoint, named "
                             "<checkpoint stem>_<keyname>.pth")
    return parser.parse_args(argv)


def default_save_path(checkpoint_path, keyname):
    stem = os.path.splitext(checkpoint_path)[0]
    return f"{stem}_{keyname}.pth"


def main(argv=None):
    args = parse_args(argv)
    save_path = args.save_path or default_save_path(args.pl_weight_path, args.model_weight_keyname)
    if os.path.abspath(save_path) == os.path.abspath(args.pl_weight_path):
        raise UserError(f"--save-path {save_path} would overwrite the checkpoint it reads")
    state = extract_state_dict(args.pl_weight_path, args.model_weight_keyname)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(save_path, buffer.getvalue())
    print(f"wrote {len(state)} tensors ({args.model_weight_keyname}.*) from {args.pl_weight_path} to {save_path}")
    return 0


if __name__ == "__main__":
    run(main)
