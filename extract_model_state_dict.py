r"""Stage 4, checkpoint extraction: take a network's weights out of a Lightning checkpoint.

Writes a plain state dict that ``main.py --restore-from`` (and the published DeepLabv2 code) loads
with a strict key match, saying in its metadata which network it is (``models/networks.py``), e.g. the best cross-domain distillation student as ``pretrained/basic.pth``
to start self-distillation from:

    python extract_model_state_dict.py --save-path ./pretrained/basic.pth \
        --pl-weight-path "experiments/baseline/NAME/checkpoint-step_...-miou_....ckpt"
"""
import argparse
import os

from utils.cli import ArgumentParser, UserError, run


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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --save-path file")
    return parser.parse_args(argv)


def default_save_path(checkpoint_path, keyname):
    stem = os.path.splitext(checkpoint_path)[0]
    return f"{stem}_{keyname}.pth"


def main(argv=None):
    args = parse_args(argv)
    from models.deeplabv2 import extract_state_dict
    from models.networks import network_of, save_weights

    save_path = args.save_path or default_save_path(args.pl_weight_path, args.model_weight_keyname)
    if os.path.abspath(save_path) == os.path.abspath(args.pl_weight_path):
        raise UserError(f"--save-path {save_path} would overwrite the checkpoint it reads")
    if os.path.isfile(save_path) and not args.overwrite:
        raise UserError(f"--save-path {save_path} exists: add --overwrite to replace it, or choose another name")
    state = extract_state_dict(args.pl_weight_path, args.model_weight_keyname)
    info = network_of(args.pl_weight_path)
    save_weights(save_path, state, info)
    said = f" ({info['arch']}, {info['num_classes']} classes, trained at {'x'.join(map(str, info['input_size']))})" \
        if info else ""
    print(f"wrote {len(state)} tensors ({args.model_weight_keyname}.*) from {args.pl_weight_path} to {save_path}{said}")
    return 0


if __name__ == "__main__":
    run(main)
