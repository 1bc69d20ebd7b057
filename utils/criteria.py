"""The label-free scores by name (``--select-by``, the columns of ``label_free_record.csv``), without
torch, so that a command's flags need none; ``utils/label_free.py`` says what each one is and computes it."""

CRITERIA = ("flip_im", "mix_im", "flip", "mix", "im", "diversity", "confidence")
DEFAULT_CRITERION = "confidence"  # chosen by measurement (docs/demo.md)
