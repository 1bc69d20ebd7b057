"""Is another stage's output finished? One rule for every stage that reads one.

The data stages keep the state of a run beside their results while they work, and write their
summary last, after every other file:

- ``generate_pseudo_labels.py --save S``: ``S/.state/<split>/settings.json`` when the run starts,
  ``S/summary.json`` (``summary_<split>.json`` for another split) at the end;
- ``construct_hard_patch.py --save S``: ``S/.state/settings.json`` when mining starts (and
  ``S/.pseudo_labels/`` before, when it computes the labels with ``--restore-from``),
  ``S/summary.json`` at the end.

So such a folder is *finished* when its summary exists, and *unfinished* when the state exists
without the summary: the run was killed part-way, or it is still running. An unfinished folder
is refused with one line that names the command finishing it (rerunning the same command resumes
it). A folder with neither was made by hand or by another tool: it is accepted as it is, and its
consumer checks its files as usual (every listed image needs its label, every patch its label).
"""
import os

from utils.cli import UserError


def check_finished(flag, given, save, state_paths, summary_path, command):
    """Raise a :class:`UserError` when ``given`` (the value of ``flag``) is the output of an
    unfinished ``command --save save`` run: one of ``state_paths`` exists, ``summary_path`` not."""
    if os.path.isfile(summary_path):
        return
    state = next((path for path in state_paths if os.path.exists(path)), None)
    if state is None:
        return
    raise UserError(f"{flag} {given} is unfinished: {command} started it ({state}) but has not written its "
                    f"{os.path.basename(summary_path)} yet (stopped part-way, or still running); rerun that "
                    f"{command} command (--save {save}) to finish it")


def pseudo_label_save_folder(root, split="train"):
    """The ``--save`` folder of the pseudo-labelling run behind ``root``, which may be that folder,
    its ``label_ids`` folder or its ``label_ids/<split>`` folder (see ``resolve_pseudo_label_root``)."""
    path = os.path.realpath(root)  # a link to label_ids/ is the folder of the run that wrote it
    head, tail = os.path.split(path)
    if tail == split and os.path.basename(head) == "label_ids":
        return os.path.dirname(head)
    if tail == "label_ids":
        return head
    return path


def check_pseudo_labels_finished(root, split="train", flag="--pseudo-label-root"):
    """Refuse the pseudo-labels in ``root`` while ``generate_pseudo_labels.py`` has not finished them."""
    from modules.pseudo_labels import report_names, state_dir

    save = pseudo_label_save_folder(root, split)
    check_finished(flag, root, save, [os.path.join(state_dir(save, split), "settings.json")],
                   report_names(save, split)["summary"], "generate_pseudo_labels.py")


def check_hard_patches_finished(root, flag="--hard-patches-root"):
    """Refuse the hard patches in ``root`` while ``construct_hard_patch.py`` has not finished them."""
    # The layout modules/hard_patches.py writes: the state first, the summary last.
    state = [os.path.join(root, ".state", "settings.json"), os.path.join(root, ".pseudo_labels")]
    check_finished(flag, root, root, state, os.path.join(root, "summary.json"), "construct_hard_patch.py")
