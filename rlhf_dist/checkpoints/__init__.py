"""Checkpoints and run directories: atomic files, manifests with hashes, which run dir a run may use
and which checkpoint a resume continues from."""
