"""Which files a resumable stage was started with: identified by content, not by path.

A data stage resumes only with the inputs it started with (its ``settings.json``, see
``utils/run_folder.py``'s ``claim_folder``). A path says nothing about what is there now: a weight
file retrained and saved under the same name, labels made again in place, images replaced would
mix results of two inputs in one folder. So each input is recorded by a fingerprint.
"""
import hashlib
import os

# Read at each end of a file: a weight file's first and last tensors, a PNG's header and last rows.
SAMPLE_BYTES = 1 << 20


def fingerprint(paths, names=None, sample=SAMPLE_BYTES):
    """A short digest of the files ``paths`` (in that order), under ``names`` (default: their base
    names): for each, its name, size, modification time and a hash of its first and last
    ``sample`` bytes (all of it when it is smaller; none with ``sample=0``).

    Size and time change when a file is written again; the sampled content catches what they miss:
    a file replaced within the file system's time resolution, or a copy that kept the time of its
    source (``cp -p``, ``rsync -t``, an unpacked archive). Whole files are not read, as every start
    of a stage would then read its whole data set. The digest changes also when a file is only
    written again with the same bytes: a resumed run asks for ``--overwrite`` then, rather than mix.
    """
    paths = list(paths)
    names = [os.path.basename(p) for p in paths] if names is None else list(names)
    digest = hashlib.sha256()
    for path, name in zip(paths, names, strict=True):
        status = os.stat(path)
        digest.update(f"{name}\0{status.st_size}\0{status.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
        if sample > 0:
            with open(path, "rb") as f:
                digest.update(f.read(sample))
                if status.st_size > sample:
                    f.seek(max(sample, status.st_size - sample))
                    digest.update(f.read(sample))
    return digest.hexdigest()[:20]
