"""Export a trained network to an ONNX file that is only run: your own black box, or the adapted
model to deploy, handed over without its weight file and without this toolkit's network code. (The
weights are inside the exported file, as in any model file: exporting is no protection of them.)

    python -m tools.export_provider --restore-from ./pretrained/gta5_only.pth --onnx ./gta5_only.onnx
    python -m tools.export_provider --restore-from W --arch deeplabv2_tiny --num-classes 19 \\
        --input-size 1024x512 --onnx OUT.onnx
    python -m tools.export_provider --restore-from student.pth --resize-input --full-resolution \\
        --onnx adapted.onnx       # any image size in, logits at its own resolution out: ready to deploy

The files follow the provider contract that ``generate_pseudo_labels.py --restore-from`` and
``construct_hard_patch.py --restore-from`` accept (docs/providers.md): one input, RGB images
as float32 in 0..255, N×3×H×W; the first output is logits N×C×h×w (DeepLabv2's, at 1/8 of the
input; the stages upsample them), or N×C×H×W at the input's resolution with ``--full-resolution``
(upsampled inside the file as the network upsamples in evaluation: bilinear, corners aligned). The
input normalisation (RGB to BGR, minus the Caffe mean) is inside the file. The batch size is free; so
are the height and width unless ``--fixed-size``. ``--input-size`` is the size of the example image
the network is traced with and checked on; with ``--resize-input`` the file first resizes every
image to it, as the stages and ``main.py --mode predict`` do with the default ``--resize-backend pil``
(PIL's bicubic on 8-bit images, :func:`resized_rgb`), so that an image of any size is seen at the
scale the network learnt and labelled as predict mode labels it; the tool then also checks an image
of another size and shape against predict mode's path.

After writing, the file is read back the way the stages read it and run on a test image: the
tool prints the share of pixels whose label equals the weight file's and the largest logit
difference. It takes its name only once that check has run: a file that fails it is removed, and
an existing ``--onnx`` stays as it was.
"""
import argparse
import io
import os
import sys

from modules.config import add_network_args
from utils.cli import ArgumentParser, UserError, run

ONNX_OPSET = 18


def build_parser():
    parser = ArgumentParser(prog="python -m tools.export_provider", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restore-from", required=True, metavar="W",
                        help="the provider's weights: a state dict or a Lightning checkpoint, as for "
                             "generate_pseudo_labels.py (read as data, nothing in it runs)")
    out = parser.add_argument_group("output")
    out.add_argument("--onnx", required=True, metavar="OUT.onnx",
                     help="write an ONNX model (opset %d) here, run by onnxruntime" % ONNX_OPSET)
    out.add_argument("--full-resolution", action="store_true",
                     help="output logits at the input's height and width (upsampled inside the file), for "
                          "deployment; by default at the network's own output resolution, as a provider's")
    out.add_argument("--resize-input", action="store_true",
                     help="resize every image to --input-size inside the file before the network (as the stages "
                          "resize), so that any image size is seen at the scale the network was trained at; "
                          "with --full-resolution the logits come back at the image's own size")
    out.add_argument("--overwrite", action="store_true", help="replace an existing --onnx file")
    out.add_argument("--fixed-size", action="store_true",
                     help="export for --input-size images only (for runtimes that need fixed shapes); by default "
                          "the height and width are free, as the batch size always is")
    group = add_network_args(parser, "provider network (as it was trained)")
    for action in group._group_actions:
        if action.dest == "input_size":
            action.help = ("WIDTHxHEIGHT of the test image the network is traced with and checked on, and the only "
                           "size the file takes with --fixed-size (default: 1024x512)")
    return parser


def resized_rgb(rgb, input_size):
    """RGB 0..255 images N×3×H×W resized to ``input_size=(W, H)`` as PIL resizes 8-bit images with
    bicubic: antialiased when shrinking, the width first, each pass clipped and rounded to 0..255.
    The same values as PIL but for a rare 1 where a value falls half-way, except where PIL does the
    height first (it does when the height shrinks far more than the width): there 1 apart on smooth
    images and up to about 15 on pixel noise."""
    import torch.nn.functional as F

    width, height = input_size
    for size in ((rgb.shape[-2], width), (height, width)):
        rgb = F.interpolate(rgb, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 255).round()
    return rgb


def exported_provider(net, full_resolution=False, resize_to=None):
    """``net`` (any network of the registry, taking BGR minus the Caffe mean) behind the provider
    contract's input: RGB float32 in 0..255, converted inside the exported graph by
    ``datasets/pixels.py``; ``resize_to=(W, H)``: every image resized to it first
    (:func:`resized_rgb`); ``full_resolution``: logits upsampled to the input's size."""
    import torch.nn as nn

    from datasets.pixels import rgb255_to_network_input

    class Provider(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, rgb):
            size = rgb.shape[-2:]
            if resize_to is not None:
                rgb = resized_rgb(rgb, resize_to)
            return self.net(rgb255_to_network_input(rgb), size=size if full_resolution else None)

    return Provider(net).eval()


def _check_path(path, restore_from, overwrite):
    from models.provider_files import has_provider_ending

    if not has_provider_ending(path):
        raise UserError(f"--onnx {path}: the name must be NAME.onnx (the stages tell a provider file by its ending)")
    if os.path.isdir(path):
        raise UserError(f"--onnx {path} is a folder: the file to write cannot replace it")
    if os.path.abspath(path) == os.path.abspath(restore_from):
        raise UserError(f"--onnx {path} would overwrite the weight file it reads")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"--onnx {path} exists: add --overwrite to replace it, or choose another name")


def export_program(provider, input_size, fixed_size):
    """``torch.export`` of ``provider`` traced on a batch of two images at ``input_size=(W, H)``, with a
    free batch size (and free height and width unless ``fixed_size``)."""
    import torch

    width, height = input_size
    ones = [side for side, n in (("height", height), ("width", width)) if n == 1]
    if ones and not fixed_size:  # torch.export takes a side of 1 as a constant
        raise UserError(f"--input-size {width}x{height}: an image {' and '.join(ones)} of 1 would be fixed in the "
                        "file; trace at a size of at least 2x2, or add --fixed-size for a file of that size only")
    example = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    dims = {0: torch.export.Dim("batch", min=1)}
    if not fixed_size:
        dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
    try:
        with torch.no_grad():
            return torch.export.export(provider, (example,), dynamic_shapes=(dims,)), example
    except Exception as err:  # torch.export's own errors name what it could not trace
        raise UserError(f"torch.export could not trace the network ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})") from None


def onnx_bytes(program, num_classes, arch, full_resolution=False, resize_to=None):
    """The exported program as ONNX (one file, weights inside), with the contract in its metadata."""
    import contextlib

    import torch

    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        raise UserError("--onnx needs onnx and onnxscript: pip install -r requirements.txt") from None
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter reports its progress on stdout
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False, input_names=["images"],
                                         output_names=["scores"], opset_version=ONNX_OPSET, external_data=False)
    model = onnx_program.model_proto
    resized = f", resized to {resize_to[0]}x{resize_to[1]} inside" if resize_to else ""
    for key, value in (("provider_input", f"RGB images, float32 in 0..255, N×3×H×W{resized}"),
                       ("provider_output", f"logits N×{num_classes}×H×W (the input's resolution)" if full_resolution
                        else f"logits N×{num_classes}×h×w (the network's output resolution)"),
                       ("num_classes", str(num_classes)), ("arch", arch)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def agreement_with_predict_mode(provider, net, input_size):
    """Share of pixels that ``provider`` (the file made with ``--resize-input --full-resolution``, read
    back) labels as ``main.py --mode predict`` does (PIL's resizing, then the network) on a random test
    image of another size and shape than ``input_size``."""
    import numpy as np
    import torch

    from datasets.pixels import resize_image, rgb255_to_network_input

    width, height = input_size
    image = np.random.default_rng(0).integers(0, 256, (height * 3 // 2 + 1, width * 5 // 4 + 3, 3), np.uint8)
    as_predict = torch.from_numpy(resize_image(image, input_size, "pil")).permute(2, 0, 1)[None].float()
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = net(rgb255_to_network_input(as_predict), size=image.shape[:2])
        got = provider(rgb255_to_network_input(rgb))
    return (got.argmax(1) == expected.argmax(1)).double().mean().item(), image.shape[1], image.shape[0]


def check_file(provider, net, example, full_resolution=False, resize_to=None):
    """Run ``provider`` (the file read back as the stages read it) on ``example`` and compare with
    ``net``: ``(share of equal argmax labels, largest logit difference, largest logit)`` at the file's
    output resolution."""
    import torch

    from datasets.pixels import rgb255_to_network_input

    with torch.no_grad():
        seen = resized_rgb(example, resize_to) if resize_to is not None else example
        expected = net(rgb255_to_network_input(seen), size=example.shape[-2:] if full_resolution else None)
        got = provider(rgb255_to_network_input(example))
    same = (got.argmax(1) == expected.argmax(1)).double().mean().item()
    return same, (got - expected).abs().max().item(), expected.abs().max().item()


def main(argv=None):
    args = build_parser().parse_args(argv)
    from models.networks import network_flags_from_file

    network_flags_from_file(args, argv or [])
    if not os.path.isfile(args.restore_from):
        what = "is a folder, not a weight file" if os.path.isdir(args.restore_from) else "weight file not found"
        raise UserError(f"--restore-from: {what}: {args.restore_from}")
    _check_path(args.onnx, args.restore_from, args.overwrite)
    if args.fixed_size and args.resize_input:
        raise UserError("--resize-input does nothing with --fixed-size (the file then takes --input-size images "
                        "only): drop one")

    from models.networks import get_network
    from utils.io import atomic_write_bytes

    net = get_network(num_classes=args.num_classes, restore_from=args.restore_from, arch=args.arch,
                      head_branches=args.head_branches).eval()
    resize_to = args.input_size if args.resize_input else None
    program, example = export_program(exported_provider(net, args.full_resolution, resize_to), args.input_size,
                                      args.fixed_size)
    data = onnx_bytes(program, args.num_classes, args.arch, args.full_resolution, resize_to)
    size = "N×3×H×W" if not args.fixed_size else f"N×3×{args.input_size[1]}×{args.input_size[0]}"
    if resize_to:
        size += f" (resized to {resize_to[0]}x{resize_to[1]} inside)"
    from modules.providers import ProviderNetwork
    from models.provider_files import open_provider_file

    # Read back and checked as the stages read it before it takes the name: a file that fails
    # leaves nothing behind, and an existing --onnx stays as it was.
    folder, name = os.path.split(args.onnx)
    checked = os.path.join(folder, f".{name}.checking.onnx")
    atomic_write_bytes(checked, data)
    try:
        provider = ProviderNetwork(open_provider_file(checked), args.num_classes)
        same, diff, largest = check_file(provider, net, example[:1], args.full_resolution, resize_to)
    except BaseException as err:
        os.remove(checked)
        if isinstance(err, UserError):  # (a ProviderFileError is one) named by the name it was to have
            raise UserError(str(err).replace(checked, args.onnx)) from None
        raise
    os.replace(checked, args.onnx)
    print(f"wrote {args.onnx}: ONNX model, {len(data) / 2 ** 20:.1f} MiB; input RGB float32 0..255 {size}, output "
          f"logits N×{args.num_classes}×{'H×W' if args.full_resolution else 'h×w'}; checked on a test image: "
          f"{100 * same:.2f}% of pixels labelled as by {args.restore_from}, largest logit difference {diff:.2g} "
          f"(logits up to {largest:.3g})")
    if resize_to and args.full_resolution:
        share, width, height = agreement_with_predict_mode(provider, net, args.input_size)
        print(f"checked on a {width}x{height} test image: {100 * share:.2f}% of pixels labelled as main.py --mode "
              "predict labels them")
    return 0


if __name__ == "__main__":
    run(main, sys.argv[1:])
