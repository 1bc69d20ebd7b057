"""The networks ``--arch`` chooses from, as plain data without torch: the flag's choices
(``modules/config.py``), what ``models/deeplabv2.py`` and ``models/students.py`` build for each name,
and the family that chooses the optimiser recipe. ``models/networks.py`` builds them."""

# DeepLabv2: blocks per layer (layer1..layer4) and the stem / first-layer width; the head sees 32 * width channels.
DEEPLABV2 = {
    "deeplabv2_r101": dict(blocks=(3, 4, 23, 3), width=64),  # the published network
    "deeplabv2_r50": dict(blocks=(3, 4, 6, 3), width=64),
    "deeplabv2_tiny": dict(blocks=(1, 1, 1, 1), width=16),  # same design, small enough for CPU tests and demos
}
# Students from segmentation-models-pytorch: SMP model class and encoder; "family" chooses the documented
# optimiser recipe.
STUDENTS = {
    **{f"segformer_b{i}": dict(model="Segformer", encoder=f"mit_b{i}", family="transformer") for i in range(6)},
    "deeplabv3plus_r50": dict(model="DeepLabV3Plus", encoder="resnet50", family="cnn"),
    "deeplabv3plus_r101": dict(model="DeepLabV3Plus", encoder="resnet101", family="cnn"),
}
ARCH_NAMES = tuple(DEEPLABV2) + tuple(STUDENTS)


def family(arch):
    """``deeplabv2``, ``transformer`` (SegFormer) or ``cnn`` (DeepLabV3+)."""
    return "deeplabv2" if arch in DEEPLABV2 else STUDENTS[arch]["family"]
