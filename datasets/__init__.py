"""Datasets in the on-disk layouts of Cityscapes, GTA5, SYNTHIA and the mined hard patches."""
